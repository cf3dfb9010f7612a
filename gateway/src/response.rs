//! The HTTP answer type of every handler in the gateway, and the JSON answer most of them make.
//!
//! Every answer is a whole body in memory (`Full<Bytes>`): JSON, a document or an asset.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// An answer of the gateway.
pub type HttpResponse = Response<Full<Bytes>>;

/// A JSON answer: `status`, `Content-Type: application/json` and `body`.
pub fn json_response(status: StatusCode, body: Bytes) -> HttpResponse {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
