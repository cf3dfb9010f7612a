//! `weft bench`'s REST load: one HTTP/1.1 keep-alive connection per worker (hyper's client),
//! requests built from a [`HttpPlan`] (path template with `{id}`, body template with `{uuid}`),
//! and the one-off requests before the run (`--ids-from`'s listing, `--login`).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::{bench_args::IdOrder, bench_stats::Outcome};

/// What every REST request of a run looks like.
#[derive(Debug, Clone)]
pub struct HttpPlan {
    /// `host:port` to connect to (and the `Host` header).
    pub authority: String,
    pub method: Method,
    /// Path with `{id}` in it, or without.
    pub path: String,
    /// Body with `{uuid}` and `{id}` in it, or without.
    pub body: Option<String>,
    /// Headers sent with every request (authorization included).
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
    /// Ids for `{id}`.
    pub ids: Vec<String>,
    pub id_order: IdOrder,
}

// === impl HttpPlan ===

impl HttpPlan {
    /// The request with sequence number `seq`.
    pub fn request(&self, seq: u64) -> Request<Full<Bytes>> {
        let id = self.id(seq);
        let path = match id {
            Some(id) if self.path.contains("{id}") => self.path.replace("{id}", id),
            _ => self.path.clone(),
        };
        let body = match &self.body {
            Some(template) => {
                let mut body = template.clone();
                while body.contains("{uuid}") {
                    body = body.replacen("{uuid}", &uuid::Uuid::new_v4().to_string(), 1);
                }
                if let Some(id) = id {
                    body = body.replace("{id}", id);
                }
                Bytes::from(body)
            }
            None => Bytes::new(),
        };
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(path)
            .header(header::HOST, &self.authority);
        let mut has_content_type = false;
        for (name, value) in &self.headers {
            has_content_type |= name == header::CONTENT_TYPE;
            builder = builder.header(name, value);
        }
        if self.body.is_some() && !has_content_type {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        // The path was checked at start (a bad one is a usage error): building cannot fail
        // but for an id with characters a URI cannot hold, which then goes as `/`.
        builder.body(Full::new(body)).unwrap_or_else(|_| {
            let mut request = Request::new(Full::new(Bytes::new()));
            *request.method_mut() = self.method.clone();
            request
        })
    }

    fn id(&self, seq: u64) -> Option<&str> {
        if self.ids.is_empty() {
            return None;
        }
        let index = match self.id_order {
            IdOrder::RoundRobin => (seq % self.ids.len() as u64) as usize,
            IdOrder::Random => fastrand::usize(..self.ids.len()),
        };
        Some(&self.ids[index])
    }
}

/// One worker's connection.
pub struct HttpWorker {
    plan: Arc<HttpPlan>,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
}

// === impl HttpWorker ===

impl HttpWorker {
    /// A worker that connects on its first request.
    pub fn new(plan: Arc<HttpPlan>) -> Self {
        Self { plan, sender: None }
    }

    /// Sends request `seq` and reads the whole answer.
    pub async fn call(&mut self, seq: u64) -> Outcome {
        let mut sender = match self.sender.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => match connect(&self.plan.authority).await {
                Ok(sender) => sender,
                Err(e) => {
                    // Do not spin on a refused connection.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    return Outcome::Transport(e);
                }
            },
        };
        if sender.ready().await.is_err() {
            return Outcome::Transport("connection closed".into());
        }
        let response = match sender.send_request(self.plan.request(seq)).await {
            Ok(response) => response,
            Err(e) => return Outcome::Transport(hyper_error(&e)),
        };
        let status = response.status();
        if let Err(e) = response.into_body().collect().await {
            return Outcome::Transport(hyper_error(&e));
        }
        self.sender = Some(sender);
        if status.as_u16() >= 400 {
            Outcome::Http(status.as_u16())
        } else {
            Outcome::Ok
        }
    }
}

/// A short name for a hyper error.
fn hyper_error(e: &hyper::Error) -> String {
    if e.is_incomplete_message() {
        "connection closed before the answer".into()
    } else if e.is_parse() {
        "bad HTTP answer".into()
    } else if e.is_closed() || e.is_canceled() {
        "connection closed".into()
    } else {
        "connection error".into()
    }
}

/// Opens one HTTP/1.1 connection.
pub async fn connect(authority: &str) -> Result<http1::SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect: {}", io_kind(&e)))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| hyper_error(&e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// An I/O error's kind, without the OS's wording (for counting).
fn io_kind(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        std::io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

/// One request outside the load: status and body.
pub async fn fetch(
    authority: &str,
    method: Method,
    path: &str,
    headers: &[(http::HeaderName, HeaderValue)],
    body: Option<String>,
) -> Result<(u16, Bytes), String> {
    let mut sender = connect(authority).await?;
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, authority);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    if body.is_some() {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    let request = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| format!("bad request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| hyper_error(&e))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| hyper_error(&e))?
        .to_bytes();
    Ok((status, body))
}

/// The `id` fields of the first JSON array of objects with ids in `json` (the document itself,
/// or a value of it, searched depth-first).
pub fn ids_in(json: &serde_json::Value) -> Vec<String> {
    fn id_of(v: &serde_json::Value) -> Option<String> {
        match v.get("id")? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
    match json {
        serde_json::Value::Array(items) => {
            let ids: Vec<String> = items.iter().filter_map(id_of).collect();
            if !ids.is_empty() {
                return ids;
            }
            items
                .iter()
                .map(ids_in)
                .find(|ids| !ids.is_empty())
                .unwrap_or_default()
        }
        serde_json::Value::Object(map) => map
            .values()
            .map(ids_in)
            .find(|ids| !ids.is_empty())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// GETs the listing at `path` and returns its ids.
pub async fn ids_from(
    authority: &str,
    path: &str,
    headers: &[(http::HeaderName, HeaderValue)],
) -> Result<Vec<String>, String> {
    let (status, body) = fetch(authority, Method::GET, path, headers, None)
        .await
        .map_err(|e| format!("--ids-from: GET http://{authority}{path}: {e}"))?;
    if status != 200 {
        return Err(format!(
            "--ids-from: GET http://{authority}{path} answered {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    let json: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| format!("--ids-from: the answer of {path} is no JSON: {e}"))?;
    let ids = ids_in(&json);
    if ids.is_empty() {
        return Err(format!(
            "--ids-from: the answer of {path} holds no array of objects with an `id`"
        ));
    }
    Ok(ids)
}

/// `POST /v1/auth/login` and the answer's `accessToken`.
pub async fn login(authority: &str, email: &str, password: &str) -> Result<String, String> {
    let body = serde_json::json!({ "email": email, "password": password }).to_string();
    let (status, answer) = fetch(authority, Method::POST, "/v1/auth/login", &[], Some(body))
        .await
        .map_err(|e| format!("--login: POST http://{authority}/v1/auth/login: {e}"))?;
    if status != 200 {
        return Err(format!(
            "--login: POST /v1/auth/login answered {status}: {}",
            String::from_utf8_lossy(&answer)
                .chars()
                .take(200)
                .collect::<String>()
        ));
    }
    serde_json::from_slice::<serde_json::Value>(&answer)
        .ok()
        .and_then(|v| v.get("accessToken")?.as_str().map(str::to_owned))
        .ok_or_else(|| "--login: the answer has no accessToken".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_listings() {
        let v = serde_json::json!({"products":[{"id":"a"},{"id":"b"}],"nextPageToken":""});
        assert_eq!(ids_in(&v), ["a", "b"]);
        let v = serde_json::json!([{"id":1},{"id":2}]);
        assert_eq!(ids_in(&v), ["1", "2"]);
        let v = serde_json::json!({"x":{"items":[{"id":"z"}]}});
        assert_eq!(ids_in(&v), ["z"]);
        assert!(ids_in(&serde_json::json!({"products":[]})).is_empty());
    }

    #[test]
    fn requests_fill_their_templates() {
        let plan = HttpPlan {
            authority: "h:1".into(),
            method: Method::POST,
            path: "/p/{id}".into(),
            body: Some(r#"{"k":"{uuid}","id":"{id}"}"#.into()),
            headers: vec![],
            ids: vec!["a".into(), "b".into()],
            id_order: IdOrder::RoundRobin,
        };
        let r0 = plan.request(0);
        let r1 = plan.request(1);
        assert_eq!(r0.uri().path(), "/p/a");
        assert_eq!(r1.uri().path(), "/p/b");
        assert_eq!(r0.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(r0.headers()[header::HOST], "h:1");
    }
}
