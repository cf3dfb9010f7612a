//! The viewer's web server, on loopback only: the page (embedded assets) and its API.
//!
//! - `GET /`: the page; `GET /app.js`, `GET /style.css`: its script and style;
//! - `GET /api/requests?q=&failed=1&limit=`: recent requests, newest first, and the store's
//!   counts ([`RequestList`](crate::model::RequestList));
//! - `GET /api/traces/{id}`: one trace by trace id or request id
//!   ([`TraceView`](crate::model::TraceView)); 400 for a malformed id, 404 for an unknown one;
//! - `GET /api/events`: server-sent events, one `request` event per changed request summary.
//!
//! Requests whose `Host` is not a loopback name are refused (403), so that a web page elsewhere
//! cannot reach the viewer through DNS rebinding.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use futures::StreamExt as _;
use http::{Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{body::Frame, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::{net::TcpListener, sync::broadcast};

use crate::{error::ViewerError, hub::Hub, store::Query};

/// The page.
const INDEX_HTML: &str = include_str!("../assets/index.html");
/// The page's script.
const APP_JS: &str = include_str!("../assets/app.js");
/// The page's style.
const STYLE_CSS: &str = include_str!("../assets/style.css");

/// How often an idle event stream gets a comment, so that proxies and browsers keep it open.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Most requests one list answer holds.
const MAX_LIST: usize = 500;
/// Longest request or trace id accepted.
pub const MAX_ID_LEN: usize = 128;

type Body = BoxBody<Bytes, Infallible>;

/// Binds `listen` (a loopback address, else [`ViewerError::NotLoopback`]) and serves the page
/// and API of `hub` there until the runtime stops; returns the bound address.
pub async fn serve(hub: Hub, listen: SocketAddr) -> Result<SocketAddr, ViewerError> {
    if !listen.ip().is_loopback() {
        return Err(ViewerError::NotLoopback(listen));
    }
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| ViewerError::Bind(listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ViewerError::Bind(listen, e))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors, most often: wait instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let hub = hub.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let hub = hub.clone();
                    async move { Ok::<_, Infallible>(handle(&hub, &request)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The answer to one request.
pub fn handle<B>(hub: &Hub, request: &http::Request<B>) -> Response<Body> {
    if !loopback_host(request) {
        return error(
            StatusCode::FORBIDDEN,
            "the trace viewer answers loopback hosts only",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "the trace viewer is read-only",
        );
    }
    let path = request.uri().path();
    let query = request.uri().query().unwrap_or("");
    match path {
        "/" | "/index.html" => asset(INDEX_HTML, "text/html; charset=utf-8"),
        "/app.js" => asset(APP_JS, "text/javascript; charset=utf-8"),
        "/style.css" => asset(STYLE_CSS, "text/css; charset=utf-8"),
        "/api/requests" => json(StatusCode::OK, &hub.requests(&list_query(query))),
        "/api/stats" => json(StatusCode::OK, &hub.stats()),
        "/api/events" => events(hub.subscribe()),
        _ => match path.strip_prefix("/api/traces/") {
            Some(id) => trace(hub, &percent_decode(id)),
            None => error(StatusCode::NOT_FOUND, "no such page"),
        },
    }
}

fn trace(hub: &Hub, id: &str) -> Response<Body> {
    if !valid_id(id) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "{id:?} is not a request id or trace id (1 to {MAX_ID_LEN} letters, digits, \
                 '-', '_' or '.')"
            ),
        );
    }
    match hub.trace(id) {
        Some(trace) => json(StatusCode::OK, &trace),
        None => error(
            StatusCode::NOT_FOUND,
            &format!(
                "no request or trace {id} among the {} kept (the oldest are dropped first, and \
                 spans take a moment to arrive)",
                hub.stats().traces
            ),
        ),
    }
}

/// Whether `id` can be a request id or trace id.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The list query of `?q=...&failed=1&limit=N`.
fn list_query(query: &str) -> Query {
    let mut list = Query {
        limit: MAX_LIST,
        ..Query::default()
    };
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        match key {
            "q" => list.text = value.chars().take(200).collect(),
            "failed" => list.failed_only = value == "1" || value == "true",
            "limit" => {
                list.limit = value
                    .parse::<usize>()
                    .unwrap_or(MAX_LIST)
                    .clamp(1, MAX_LIST);
            }
            _ => {}
        }
    }
    list
}

/// `%XX` and `+` decoded; invalid escapes kept as they are.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the request's `Host` (if any) names the loopback interface.
fn loopback_host<B>(request: &http::Request<B>) -> bool {
    let Some(host) = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn asset(text: &'static str, content_type: &str) -> Response<Body> {
    response(
        StatusCode::OK,
        content_type,
        Bytes::from_static(text.as_bytes()),
    )
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => response(status, "application/json", Bytes::from(body)),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the answer",
        ),
    }
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    response(status, "application/json", Bytes::from(body))
}

fn response(status: StatusCode, content_type: &str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body).boxed());
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

/// The event stream of `events`: `event: request` with a summary as JSON, a comment when idle.
fn events(events: broadcast::Receiver<crate::model::RequestSummary>) -> Response<Body> {
    let stream = futures::stream::unfold(events, |mut events| async move {
        let text = loop {
            match tokio::time::timeout(KEEPALIVE, events.recv()).await {
                Err(_) => break ": keep-alive\n\n".to_owned(),
                Ok(Ok(summary)) => match serde_json::to_string(&summary) {
                    Ok(json) => break format!("event: request\ndata: {json}\n\n"),
                    Err(_) => continue,
                },
                // Too slow: tell the page to reload its list.
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    break "event: lagged\ndata: {}\n\n".to_owned();
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
            }
        };
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(text))), events))
    });
    let first = futures::stream::once(async { Ok(Frame::data(Bytes::from_static(b": open\n\n"))) });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(first.chain(stream))));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Limits;

    fn get(hub: &Hub, uri: &str, host: &str) -> (StatusCode, String) {
        let request = http::Request::get(uri)
            .header(header::HOST, host)
            .body(())
            .unwrap();
        let response = handle(hub, &request);
        let status = response.status();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let body = runtime
            .block_on(response.into_body().collect())
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[test]
    fn serves_the_page_and_refuses_foreign_hosts() {
        let hub = Hub::new(Limits::default(), None);
        let (status, body) = get(&hub, "/", "127.0.0.1:16686");
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("<script src=\"app.js\""), "{body}");
        assert_eq!(get(&hub, "/app.js", "localhost:16686").0, StatusCode::OK);
        assert_eq!(get(&hub, "/style.css", "[::1]:16686").0, StatusCode::OK);
        assert_eq!(
            get(&hub, "/", "evil.example:16686").0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(get(&hub, "/nope", "127.0.0.1").0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn a_malformed_id_is_a_bad_request_and_an_unknown_one_not_found() {
        let hub = Hub::new(Limits::default(), None);
        let (status, body) = get(&hub, "/api/traces/a%20b", "127.0.0.1");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("is not a request id or trace id"), "{body}");
        let (status, body) = get(&hub, "/api/traces/0af7651916cd43dd", "127.0.0.1");
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            body.contains("no request or trace 0af7651916cd43dd"),
            "{body}"
        );
        let (status, body) = get(&hub, "/api/requests?q=x&failed=1", "127.0.0.1");
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\"dropped_traces\":0"), "{body}");
    }

    #[test]
    fn queries_are_decoded() {
        assert_eq!(percent_decode("%2Fv1%2Forders+x%"), "/v1/orders x%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        let query = list_query("q=POST%20%2Fv1&failed=1&limit=5000");
        assert_eq!(query.text, "POST /v1");
        assert!(query.failed_only);
        assert_eq!(query.limit, MAX_LIST);
    }

    #[test]
    fn a_non_loopback_listen_address_is_refused() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let hub = Hub::new(Limits::default(), None);
        let err = runtime
            .block_on(serve(hub, "0.0.0.0:16686".parse().unwrap()))
            .unwrap_err();
        assert!(err.to_string().contains("loopback only"), "{err}");
    }
}
