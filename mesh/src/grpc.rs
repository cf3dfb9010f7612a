//! Small facts of the gRPC wire protocol that several layers read or write.
//!
//! Layers of the mesh answer a call they refuse (shed, throttled, past its deadline) with a
//! *trailers-only* response carrying the status, exactly as a server would: the caller's tonic
//! client then shows that status and message, and layers above can read the outcome from the
//! response headers without looking at the body. Only a transport failure (no connection) is
//! an `Err`.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use tonic::{Code, Status, body::Body};

/// Metadata key by which a server asks its clients to wait before retrying (gRPC's retry
/// design, A6): a number of milliseconds, or a negative value for "do not retry".
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

// Header names as constants: a lookup by `&str` parses the name again on every call.

/// [`RETRY_PUSHBACK`] as a header name.
pub const RETRY_PUSHBACK_HEADER: HeaderName = HeaderName::from_static(RETRY_PUSHBACK);
/// The header (or trailer) carrying a call's status code.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// The header (or trailer) carrying a call's status message.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Whether the call at `path` is the server's own infrastructure (health checks, reflection):
/// polled all the time, so never traced and never shed.
pub fn is_infrastructure(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

/// The status code in `headers` (a trailers-only answer) or trailers, if any.
pub fn status_code(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get(&GRPC_STATUS)?;
    // Nearly every status is one digit: no need to go through `str::parse`.
    if let &[digit @ b'0'..=b'9'] = value.as_bytes() {
        return Some(Code::from_i32(i32::from(digit - b'0')));
    }
    let code = std::str::from_utf8(value.as_bytes())
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(code))
}

/// What the server asked of a retry: `Some(Some(d))` wait `d`, `Some(None)` do not retry,
/// `None` it said nothing.
pub fn retry_pushback(headers: &HeaderMap) -> Option<Option<Duration>> {
    let value = headers.get(&RETRY_PUSHBACK_HEADER)?.to_str().ok()?.trim();
    Some(match value.parse::<i64>() {
        Ok(ms) if ms >= 0 => Some(Duration::from_millis(ms as u64)),
        _ => None,
    })
}

/// The code named `name` as in the gRPC spec (`"UNAVAILABLE"`, `"DEADLINE_EXCEEDED"`, ...;
/// case and surrounding blanks do not matter).
pub fn code_from_name(name: &str) -> Option<Code> {
    let name = name.trim();
    CODE_NAMES
        .iter()
        .position(|known| known.eq_ignore_ascii_case(name))
        .map(|i| Code::from_i32(i as i32))
}

/// The spec's name of `code` (`Code::Unavailable` -> `"UNAVAILABLE"`).
pub fn code_name(code: Code) -> &'static str {
    CODE_NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

/// Whether the config list `names` names `code`.
pub fn names_code(names: &[String], code: Code) -> bool {
    names.iter().any(|name| code_from_name(name) == Some(code))
}

/// Checks a config list of error code names under `key`: known names, and not `OK`; the error
/// names the entry (`key[i]`) and lists the valid names.
pub fn validate_error_codes(key: &str, names: &[String]) -> Result<(), (String, String)> {
    for (i, name) in names.iter().enumerate() {
        if let Err(reason) = error_code(name) {
            return Err((format!("{key}[{i}]"), reason));
        }
    }
    Ok(())
}

/// The error code named `name`, or why it is not one.
pub fn error_code(name: &str) -> Result<Code, String> {
    match code_from_name(name) {
        Some(Code::Ok) => Err("OK is not an error code".into()),
        Some(code) => Ok(code),
        None => Err(format!(
            "`{name}` is not a gRPC status code; valid codes: {}",
            CODE_NAMES[1..].join(", ")
        )),
    }
}

/// The names of the codes, indexed by their number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A trailers-only response carrying `status`.
pub fn refusal(status: Status) -> http::Response<Body> {
    status.into_http()
}

/// A trailers-only response carrying `status` that asks the caller to wait `pushback` before
/// retrying (`None`: not to retry).
pub fn refusal_with_pushback(status: Status, pushback: Option<Duration>) -> http::Response<Body> {
    let mut response = status.into_http();
    let value = match pushback {
        Some(wait) => HeaderValue::from(wait.as_millis().min(i64::MAX as u128) as i64),
        None => HeaderValue::from_static("-1"),
    };
    response.headers_mut().insert(RETRY_PUSHBACK_HEADER, value);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_the_specs() {
        assert_eq!(code_from_name("UNAVAILABLE"), Some(Code::Unavailable));
        assert_eq!(code_from_name(" unavailable "), Some(Code::Unavailable));
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
        assert!(names_code(&["INTERNAL".into()], Code::Internal));
        let err =
            validate_error_codes("retry_on", &["UNAVAILABLE".into(), "NOPE".into()]).unwrap_err();
        assert_eq!(err.0, "retry_on[1]");
        assert!(
            err.1.contains("NOPE") && err.1.contains("UNAVAILABLE"),
            "{}",
            err.1
        );
        let err = validate_error_codes("codes", &["OK".into()]).unwrap_err();
        assert_eq!(err, ("codes[0]".into(), "OK is not an error code".into()));
    }

    #[test]
    fn status_codes_parse_as_numbers_with_blanks_and_signs() {
        let code = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(GRPC_STATUS, HeaderValue::from_static(value));
            status_code(&headers)
        };
        assert_eq!(code("0"), Some(Code::Ok));
        assert_eq!(code("5"), Some(Code::NotFound));
        assert_eq!(code("14"), Some(Code::Unavailable));
        assert_eq!(code(" 4 "), Some(Code::DeadlineExceeded));
        assert_eq!(code("+3"), Some(Code::InvalidArgument));
        assert_eq!(code("99"), Some(Code::Unknown));
        assert_eq!(code("-1"), Some(Code::Unknown));
        for bad in ["", "x", "1x", "1.0"] {
            assert_eq!(code(bad), None, "{bad}");
        }
        assert_eq!(status_code(&HeaderMap::new()), None);
    }

    #[test]
    fn refusals_carry_their_status_and_pushback_in_the_headers() {
        let response = refusal_with_pushback(
            Status::unavailable("busy"),
            Some(Duration::from_millis(250)),
        );
        assert_eq!(status_code(response.headers()), Some(Code::Unavailable));
        assert_eq!(
            retry_pushback(response.headers()),
            Some(Some(Duration::from_millis(250)))
        );
        let response = refusal_with_pushback(Status::unavailable("open"), None);
        assert_eq!(retry_pushback(response.headers()), Some(None));
        assert_eq!(
            retry_pushback(refusal(Status::internal("x")).headers()),
            None
        );
    }
}
