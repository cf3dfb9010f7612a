//! Every error the gateway answers, in the contract's one JSON shape:
//! `{"code": <grpc code>, "message": "...", "details": [...], "requestId": "..."}`.
//!
//! gRPC codes map to HTTP statuses as grpc-gateway maps them; errors the gateway finds itself
//! (unknown route, bad JSON, body too large) use the gRPC code a service would have used, so a
//! client handles both alike.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::Full;
use tonic::Code;

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

    /// The upstream's answer, as the client should see it.
    pub fn from_status(status: &tonic::Status) -> Self {
        let mut error = Self::new(status.code(), status.message());
        if status.code() == Code::Unavailable || status.code() == Code::ResourceExhausted {
            error
                .headers
                .push((header::RETRY_AFTER, HeaderValue::from_static("1")));
        }
        error
    }

    /// The HTTP response, with the request id in the body (the header is added by the caller).
    pub fn into_response(self, request_id: &str) -> http::Response<Full<Bytes>> {
        let body = serde_json::json!({
            "code": self.code as i32,
            "message": self.message,
            "details": self.details,
            "requestId": request_id,
        });
        let mut response = http::Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        response
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
