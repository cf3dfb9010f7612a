//! Every error the gateway answers, in the contract's one JSON shape:
//! `{"code": <grpc code>, "message": "...", "details": [...], "requestId": "..."}`.
//!
//! gRPC codes map to HTTP statuses as grpc-gateway maps them; errors the gateway finds itself
//! (unknown route, bad JSON, body too large) use the gRPC code a service would have used, so a
//! client handles both alike.
//!
//! Every 429 and 503 carries `Retry-After` in whole seconds: the upstream's
//! `grpc-retry-pushback-ms` rounded up when it sent one (a shedding server asks for 1 s), else
//! 1, so that clients back off instead of retrying at once.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use tonic::Code;
use tonic_types::{BadRequest, StatusExt as _};

use crate::response::{HttpResponse, json_response};

/// An error answer: HTTP status, gRPC code, message and extra headers.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The gRPC code reported in the body.
    pub code: Code,
    /// What went wrong, safe to show.
    pub message: String,
    /// `details` of the body (google.rpc.Status details in JSON form).
    pub details: Vec<serde_json::Value>,
    /// Headers to add (`Allow`, `WWW-Authenticate`, `Retry-After`).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error with the status that grpc-gateway gives `code`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            status: http_status(code),
            code,
            message: message.into(),
            details: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// An error with an explicit HTTP status (413, 415, 405, ...) and the closest gRPC code.
    pub fn with_status(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        Self {
            status,
            ..Self::new(code, message)
        }
    }

    /// Adds a response header.
    pub fn header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The upstream's answer, as the client should see it; an UNAVAILABLE or
    /// RESOURCE_EXHAUSTED one carries `Retry-After` (see [`retry_after_secs`]).
    pub fn from_status(status: &tonic::Status) -> Self {
        let mut error = Self::new(status.code(), status.message());
        error.details = json_details(status);
        if status.code() == Code::Unavailable || status.code() == Code::ResourceExhausted {
            error.headers.push((
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(status)),
            ));
        }
        error
    }

    /// The HTTP response, with the request id in the body (the header is added by the caller).
    pub fn into_response(self, request_id: &str) -> HttpResponse {
        let body = serde_json::json!({
            "code": self.code as i32,
            "message": self.message,
            "details": self.details,
            "requestId": request_id,
        });
        let mut response = json_response(self.status, Bytes::from(body.to_string()));
        let headers = response.headers_mut();
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        let busy = self.status == StatusCode::TOO_MANY_REQUESTS
            || self.status == StatusCode::SERVICE_UNAVAILABLE;
        if busy && !headers.contains_key(header::RETRY_AFTER) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The status's `google.rpc` details the gateway knows, in their proto3 JSON form (an `Any`
/// with its `@type`): today `BadRequest`, whose field violations tell a client which input
/// field to fix. Details of other types are left out rather than shown as opaque bytes.
fn json_details(status: &tonic::Status) -> Vec<serde_json::Value> {
    if status.details().is_empty() {
        return Vec::new();
    }
    let details = status.get_error_details();
    let Some(bad_request) = details.bad_request() else {
        return Vec::new();
    };
    let violations: Vec<_> = bad_request
        .field_violations
        .iter()
        .map(|v| serde_json::json!({"field": v.field, "description": v.description}))
        .collect();
    vec![serde_json::json!({"@type": BadRequest::TYPE_URL, "fieldViolations": violations})]
}

/// Seconds a client should wait before retrying after `status`: the upstream's
/// `grpc-retry-pushback-ms` (trailers-only metadata) rounded up to whole seconds, at least 1;
/// 1 when it sent none or a negative one ("do not retry" is for gRPC clients; an HTTP client
/// is still better off waiting than hammering).
pub fn retry_after_secs(status: &tonic::Status) -> u64 {
    match weft_mesh::grpc::retry_pushback(status.metadata().as_ref()) {
        Some(Some(wait)) => weft_mesh::ratelimit::whole_seconds(wait),
        _ => 1,
    }
}

/// The HTTP status grpc-gateway uses for a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status"),
        Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::Aborted => StatusCode::CONFLICT,
        Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_like_grpc_gateway() {
        let table = [
            (Code::Cancelled, 499),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::Unauthenticated, 401),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unknown, 500),
        ];
        for (code, status) in table {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
    }

    fn status_with_pushback(code: Code, pushback: &'static str) -> tonic::Status {
        let mut status = tonic::Status::new(code, "overloaded: 8 calls already in flight");
        status.metadata_mut().insert(
            weft_mesh::grpc::RETRY_PUSHBACK,
            tonic::metadata::MetadataValue::from_static(pushback),
        );
        status
    }

    #[test]
    fn overload_answers_carry_the_upstreams_pushback_as_retry_after() {
        let retry_after = |status: &tonic::Status| {
            let response = ApiError::from_status(status).into_response("r");
            let values: Vec<_> = response
                .headers()
                .get_all(header::RETRY_AFTER)
                .iter()
                .cloned()
                .collect();
            assert_eq!(values.len(), 1, "one Retry-After");
            (
                response.status().as_u16(),
                values[0].to_str().unwrap().to_owned(),
            )
        };
        assert_eq!(
            retry_after(&status_with_pushback(Code::Unavailable, "2500")),
            (503, "3".into()),
            "2.5 s rounds up to 3"
        );
        assert_eq!(
            retry_after(&status_with_pushback(Code::ResourceExhausted, "1000")),
            (429, "1".into())
        );
        assert_eq!(
            retry_after(&status_with_pushback(Code::Unavailable, "0")),
            (503, "1".into())
        );
        assert_eq!(
            retry_after(&status_with_pushback(Code::Unavailable, "-1")),
            (503, "1".into()),
            "do-not-retry still asks HTTP clients to wait"
        );
        assert_eq!(
            retry_after(&tonic::Status::unavailable("down")),
            (503, "1".into())
        );
        let timeout =
            ApiError::from_status(&tonic::Status::deadline_exceeded("slow")).into_response("r");
        assert_eq!(timeout.status(), 504);
        assert!(timeout.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn every_429_and_503_the_gateway_makes_itself_carries_retry_after() {
        let response = ApiError::new(Code::Unavailable, "cannot verify tokens").into_response("r");
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let response = ApiError::new(Code::ResourceExhausted, "limited")
            .header(header::RETRY_AFTER, HeaderValue::from_static("7"))
            .into_response("r");
        assert_eq!(
            response.headers()[header::RETRY_AFTER],
            "7",
            "an explicit value is kept"
        );
        let response = ApiError::with_status(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::ResourceExhausted,
            "big",
        )
        .into_response("r");
        assert!(
            response.headers().get(header::RETRY_AFTER).is_none(),
            "413 is no overload"
        );
    }

    #[tokio::test]
    async fn the_body_has_the_contract_shape() {
        use http_body_util::BodyExt;
        let response = ApiError::new(Code::NotFound, "product x not found").into_response("r-1");
        assert_eq!(response.status(), 404);
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"code": 5, "message": "product x not found", "details": [], "requestId": "r-1"})
        );
    }
}
