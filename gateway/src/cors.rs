//! CORS: which browser origins may read the gateway's answers (`gateway.cors`, following
//! reloads), the headers that tell them so, and the answer to their preflight requests.
//!
//! CORS is off while `gateway.cors.allowed_origins` is empty: then no answer carries CORS
//! headers and an `OPTIONS` request is routed like any other.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use weft_mesh::config::CorsConfig;

use crate::response::HttpResponse;

/// Whether CORS is on: some origin is allowed.
pub(crate) fn enabled(cors: &CorsConfig) -> bool {
    !cors.allowed_origins.is_empty()
}

fn origin_allowed(cors: &CorsConfig, origin: &HeaderValue) -> bool {
    cors.allowed_origins
        .iter()
        .any(|a| a == "*" || a.as_bytes() == origin.as_bytes())
}

/// Lets a request's `origin` read `response`, if that origin is allowed.
pub(crate) fn add_headers(cors: &CorsConfig, origin: &HeaderValue, response: &mut HttpResponse) {
    if !enabled(cors) || !origin_allowed(cors, origin) {
        return;
    }
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "x-request-id, retry-after, www-authenticate, ratelimit-limit, \
             ratelimit-remaining, ratelimit-reset",
        ),
    );
}

/// The answer to a preflight request with `headers`: 204, with the methods and headers the API
/// accepts when its origin is allowed.
pub(crate) fn preflight(cors: &CorsConfig, headers: &HeaderMap) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let Some(origin) = headers.get(header::ORIGIN) else {
        return response;
    };
    if !origin_allowed(cors, origin) {
        return response;
    }
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "authorization, content-type, x-request-id, traceparent, tracestate, baggage",
        ),
    );
    if cors.max_age_secs > 0 {
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(cors.max_age_secs),
        );
    }
    response
}
