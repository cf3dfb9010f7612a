//! The gateway's own endpoints, answered without any upstream call: `/healthz` (the process
//! answers), `/readyz` (every upstream's gRPC health is SERVING), `/metrics` (Prometheus),
//! `/openapi.json` (the document of every route, rendered once at start) and the `/docs` page
//! with its vendored assets (see `assets/README.md`), so that the docs load nothing from
//! outside the gateway.
//!
//! They answer GET and HEAD only. They are never counted against the gateway's cap on requests
//! in flight, so probes answer under overload, and are not traced.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tonic::Code;

use crate::{
    error::ApiError,
    metrics::Metrics,
    openapi,
    response::{HttpResponse, json_response},
    table::RouteTable,
    upstream::Upstream,
};

const DOCS_HTML: &str = include_str!("../assets/docs.html");

/// The docs page's vendored assets (see assets/README.md), served under `/docs/`: path,
/// content type and bytes.
const DOCS_ASSETS: [(&str, &str, &[u8]); 4] = [
    (
        "/docs/swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/swagger-ui-bundle.js"),
    ),
    (
        "/docs/swagger-ui.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/swagger-ui.css"),
    ),
    (
        "/docs/docs.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/docs.js"),
    ),
    (
        "/docs/swagger-ui-bundle.js.LICENSE.txt",
        "text/plain; charset=utf-8",
        include_bytes!("../assets/swagger-ui-bundle.js.LICENSE.txt"),
    ),
];

/// The operations endpoints: always served on the admin listener (`gateway.admin_listen`),
/// and on the API's listener as `is_own_route` says.
pub(crate) const OPERATIONS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Whether `path` is one of the gateway's own endpoints on the API's listener: `/readyz` and
/// `/metrics` only with `public_operations` (`gateway.public_operations`), since they tell an
/// outsider the mesh's upstreams, routes and load.
pub(crate) fn is_own_route(path: &str, public_operations: bool) -> bool {
    match path {
        "/readyz" | "/metrics" => public_operations,
        "/healthz" | "/openapi.json" | "/docs" | "/docs/" => true,
        _ => DOCS_ASSETS.iter().any(|(asset, _, _)| *asset == path),
    }
}

/// What the gateway's own endpoints answer with that is made once, at start.
pub(crate) struct OwnRoutes {
    /// `/openapi.json`.
    openapi: Bytes,
}

impl OwnRoutes {
    /// Renders the OpenAPI document of `table`.
    pub(crate) fn new(table: &RouteTable) -> Self {
        Self {
            openapi: Bytes::from(openapi::document(table).to_string()),
        }
    }

    /// The answer to `req` if its path is one of the gateway's own endpoints, else `None`;
    /// `/metrics` renders `metrics`, `/readyz` asks `upstreams`.
    pub(crate) async fn answer(
        &self,
        req: &Request<Incoming>,
        metrics: &Metrics,
        upstreams: &[Upstream],
    ) -> Option<Result<HttpResponse, ApiError>> {
        let path = req.uri().path();
        if !is_own_route(path, true) {
            return None;
        }
        let asset = DOCS_ASSETS.iter().find(|(asset, _, _)| *asset == path);
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Some(Err(ApiError::with_status(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::Unimplemented,
                format!("{path} answers GET only"),
            )
            .header(header::ALLOW, HeaderValue::from_static("GET, HEAD"))));
        }
        if let Some((_, content_type, bytes)) = asset {
            let mut response = Response::new(Full::new(Bytes::from_static(bytes)));
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            );
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            return Some(Ok(response));
        }
        Some(Ok(match path {
            "/healthz" => json_response(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}")),
            "/readyz" => readiness(upstreams).await,
            "/metrics" => {
                let mut response = Response::new(Full::new(Bytes::from(metrics.render())));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            "/openapi.json" => json_response(StatusCode::OK, self.openapi.clone()),
            "/docs/" => {
                // The page's URLs are relative to `/docs`; relative so it works behind a prefix.
                let mut response = Response::new(Full::new(Bytes::new()));
                *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
                response
                    .headers_mut()
                    .insert(header::LOCATION, HeaderValue::from_static("../docs"));
                response
            }
            _ => {
                let mut response =
                    Response::new(Full::new(Bytes::from_static(DOCS_HTML.as_bytes())));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                response
            }
        }))
    }
}

/// 200 when every upstream's gRPC health answers SERVING, 503 otherwise, with each state.
async fn readiness(upstreams: &[Upstream]) -> HttpResponse {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let checks = upstreams.iter().map(|upstream| async move {
        let mut client = HealthClient::new(upstream.channel());
        let mut request = tonic::Request::new(HealthCheckRequest::default());
        request.set_timeout(std::time::Duration::from_secs(1));
        let state =
            match tokio::time::timeout(std::time::Duration::from_secs(1), client.check(request))
                .await
            {
                Ok(Ok(reply)) => match reply.into_inner().status {
                    1 => "SERVING",
                    _ => "NOT_SERVING",
                },
                // A server without the health service is up as far as we can tell.
                Ok(Err(status)) if status.code() == Code::Unimplemented => "SERVING",
                Ok(Err(_)) | Err(_) => "UNREACHABLE",
            };
        (upstream.name.clone(), state)
    });
    let states = futures::future::join_all(checks).await;
    let (certificate_ok, certificate) =
        weft_mesh::admin::certificate_readiness(weft_mesh::mtls::current().as_ref());
    let ready = certificate_ok && states.iter().all(|(_, state)| *state == "SERVING");
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "certificate": certificate.trim(),
        "upstreams": states.into_iter().map(|(name, state)| (name, serde_json::Value::from(state))).collect::<serde_json::Map<_, _>>(),
    });
    json_response(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Bytes::from(body.to_string()),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_docs_page_loads_nothing_from_outside_the_gateway() {
        let html = super::DOCS_HTML;
        let script = include_str!("../assets/docs.js");
        for text in [html, script] {
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("\"//") && !text.contains("'//"));
        }
        for asset in [
            "docs/swagger-ui.css",
            "docs/swagger-ui-bundle.js",
            "docs/docs.js",
        ] {
            assert!(html.contains(asset), "{asset}");
        }
        assert!(script.contains("validatorUrl: null"));
        assert!(script.contains("url: \"openapi.json\""));
    }
}
