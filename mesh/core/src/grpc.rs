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

// === unary calls without tonic's codec ===
//
// A caller that already holds the message's bytes (the gateway encodes its dynamic requests
// itself, and writes JSON straight from the reply's bytes) sends one frame and reads one back;
// tonic's client codec, built for streams, cost it about 9,000 instructions per call. These
// follow what tonic's `Grpc::unary` does, error for error.

/// The largest reply message [`unary_reply`] reads: tonic's default decoding limit.
pub const MAX_REPLY_MESSAGE: usize = 4 * 1024 * 1024;

/// A unary call to `path` (`/package.Service/Method`) carrying `frame` (see [`frame`]) as its
/// one message; `headers` are its metadata.
pub fn unary_request(
    path: http::uri::PathAndQuery,
    frame: bytes::Bytes,
    mut headers: HeaderMap,
) -> http::Request<Body> {
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    let mut request = http::Request::new(Body::new(http_body_util::Full::new(frame)));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from(path);
    *request.version_mut() = http::Version::HTTP_2;
    *request.headers_mut() = headers;
    request
}

/// The message of a unary call's `response`, or the call's status.
pub async fn unary_reply(response: http::Response<Body>) -> Result<bytes::Bytes, Status> {
    let (parts, body) = response.into_parts();
    // Looked up before parsing: `from_header_map` builds a status from every grpc-* header.
    if parts.headers.contains_key(GRPC_STATUS)
        && let Some(status) = Status::from_header_map(&parts.headers)
    {
        // Trailers-only: a status and no message.
        return Err(if status.code() == Code::Ok {
            Status::internal("Missing response message.")
        } else {
            status
        });
    }
    let (data, trailers) =
        read_body(body, MAX_REPLY_MESSAGE + 5)
            .await
            .map_err(|error| match error {
                BodyError::TooLarge => too_large(),
                BodyError::Failed(status) => status,
            })?;
    if let Some(status) = trailer_status(trailers.as_ref(), parts.status) {
        return Err(status);
    }
    // Anything after the first message is ignored, as tonic's unary client does.
    first_message(&data, MAX_REPLY_MESSAGE).map_err(|error| match error {
        FrameError::Empty => Status::internal("Missing response message."),
        FrameError::CutShort => Status::internal("protocol error: a reply frame cut short"),
        FrameError::TooLarge(_) => too_large(),
        error => Status::internal(format!("protocol error: {error}")),
    })
}

/// Why [`read_body`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body went past its limit.
    #[error("the body is larger than its limit")]
    TooLarge,
    /// The body failed midway.
    #[error(transparent)]
    Failed(#[from] Status),
}

/// A unary call's body: its bytes (refused past `limit`) and trailers. A body in one data
/// frame, the usual case, is that frame's bytes, not a copy (what `Limited`, `BodyExt::collect`
/// and `Collected::to_bytes` would make of it cost the gateway about 500 instructions a reply,
/// and a service about 300 a request).
pub async fn read_body(
    mut body: Body,
    limit: usize,
) -> Result<(bytes::Bytes, Option<HeaderMap>), BodyError> {
    use http_body_util::BodyExt as _;

    let mut first = bytes::Bytes::new();
    let mut joined: Option<bytes::BytesMut> = None;
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(chunk) => {
                let len = joined.as_ref().map_or(first.len(), |joined| joined.len());
                if len + chunk.len() > limit {
                    return Err(BodyError::TooLarge);
                }
                if let Some(joined) = &mut joined {
                    joined.extend_from_slice(&chunk);
                } else if first.is_empty() {
                    first = chunk;
                } else {
                    let mut both = bytes::BytesMut::with_capacity(len + chunk.len());
                    both.extend_from_slice(&first);
                    both.extend_from_slice(&chunk);
                    joined = Some(both);
                }
            }
            Err(frame) => {
                if let Ok(more) = frame.into_trailers() {
                    match &mut trailers {
                        Some(trailers) => trailers.extend(more),
                        None => trailers = Some(more),
                    }
                }
            }
        }
    }
    Ok((joined.map_or(first, bytes::BytesMut::freeze), trailers))
}

/// Why a unary call's body holds no usable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// No bytes at all.
    #[error("no message")]
    Empty,
    /// Fewer bytes than the frame's header or length says.
    #[error("a frame cut short")]
    CutShort,
    /// The compressed flag, without a `grpc-encoding` (Weft compresses nothing).
    #[error("received message with compressed-flag but no grpc-encoding was specified")]
    Compressed,
    /// A flag other than 0 and 1.
    #[error("received message with invalid compression flag: {0} (valid flags are 0 and 1)")]
    BadFlag(u8),
    /// A message longer than the limit; its length.
    #[error("message of {0} bytes")]
    TooLarge(usize),
}

/// The first length-prefixed message of `data` (a whole unary body), at most `limit` bytes.
pub fn first_message(data: &bytes::Bytes, limit: usize) -> Result<bytes::Bytes, FrameError> {
    let Some(header) = data.get(..5) else {
        return Err(if data.is_empty() {
            FrameError::Empty
        } else {
            FrameError::CutShort
        });
    };
    match header[0] {
        0 => {}
        1 => return Err(FrameError::Compressed),
        flag => return Err(FrameError::BadFlag(flag)),
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > limit {
        return Err(FrameError::TooLarge(len));
    }
    if data.len() < 5 + len {
        return Err(FrameError::CutShort);
    }
    Ok(data.slice(5..5 + len))
}

/// `message` as one length-prefixed frame.
pub fn frame(message: &impl prost::Message) -> bytes::Bytes {
    // Straight into the frame, which has room for it: `encode` would measure the message a
    // second time (for a gateway's dynamic message, about 1,500 instructions) to check that.
    frame_with(message.encoded_len(), |frame| message.encode_raw(frame))
}

/// An uncompressed gRPC frame holding the `len` bytes of a message that `write` appends.
pub fn frame_with(len: usize, write: impl FnOnce(&mut bytes::BytesMut)) -> bytes::Bytes {
    let mut frame = bytes::BytesMut::with_capacity(5 + len);
    frame.extend_from_slice(&[0]);
    // A message larger than 4 GiB cannot be framed; it would not have been sent either.
    frame.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    write(&mut frame);
    debug_assert_eq!(frame.len(), 5 + len, "the message is as long as announced");
    frame.freeze()
}

fn too_large() -> Status {
    Status::resource_exhausted(format!(
        "reply message larger than the limit of {MAX_REPLY_MESSAGE} bytes"
    ))
}

/// The status a response's trailers (or, without one, its HTTP status) give, unless OK: gRPC's
/// HTTP-to-gRPC status mapping, as tonic applies it.
fn trailer_status(trailers: Option<&HeaderMap>, http_status: http::StatusCode) -> Option<Status> {
    // The common case, without building a `Status` (which copies the trailers as metadata).
    if trailers
        .and_then(|t| t.get(GRPC_STATUS))
        .is_some_and(|code| code == "0")
    {
        return None;
    }
    if let Some(status) = trailers.and_then(Status::from_header_map) {
        return (status.code() != Code::Ok).then_some(status);
    }
    let code = match http_status {
        http::StatusCode::OK => return None,
        http::StatusCode::BAD_REQUEST => Code::Internal,
        http::StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        http::StatusCode::FORBIDDEN => Code::PermissionDenied,
        http::StatusCode::NOT_FOUND => Code::Unimplemented,
        http::StatusCode::TOO_MANY_REQUESTS
        | http::StatusCode::BAD_GATEWAY
        | http::StatusCode::SERVICE_UNAVAILABLE
        | http::StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    };
    Some(Status::new(
        code,
        format!(
            "grpc-status header missing, mapped from HTTP status code {}",
            http_status.as_u16()
        ),
    ))
}

/// Whether the call at `path` is the server's own infrastructure (health checks, reflection):
/// polled all the time, so never traced and never shed; outside every contract, and open to
/// probes and tools without a token.
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

// === grpc-timeout ===

/// The gRPC metadata key that carries a call's remaining budget.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";
/// [`GRPC_TIMEOUT`] as a header name (a lookup by `&str` parses the name on every call).
pub const GRPC_TIMEOUT_HEADER: HeaderName = HeaderName::from_static(GRPC_TIMEOUT);

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Encodes `budget` as a `grpc-timeout` value, rounded down to whole milliseconds, or
/// microseconds under 100 ms, so it never promises more than there is.
pub fn encode_timeout(budget: Duration) -> HeaderValue {
    const MAX: u64 = 99_999_999;
    let micros = budget.as_micros().min(u64::MAX as u128) as u64;
    let (mut amount, unit) = if micros < 100_000 {
        (micros, b'u')
    } else if micros / 1000 <= MAX {
        (micros / 1000, b'm')
    } else {
        ((micros / 1_000_000).min(MAX), b'S')
    };
    // Digits written right to left on the stack: `format!` cost an allocation and the
    // formatting machinery on every outgoing call. `amount` has at most 8 digits.
    let mut text = [0u8; 9];
    text[8] = unit;
    let mut start = 8;
    for slot in text[..8].iter_mut().rev() {
        *slot = b'0' + (amount % 10) as u8;
        amount /= 10;
        start -= 1;
        if amount == 0 {
            break;
        }
    }
    HeaderValue::from_bytes(&text[start..])
        .expect("digits and a unit letter are a valid header value")
}

/// The deadline an inbound request's `grpc-timeout` sets, if any.
pub fn inbound_deadline(headers: &HeaderMap) -> Option<tokio::time::Instant> {
    let budget = parse_timeout(headers.get(&GRPC_TIMEOUT_HEADER)?)?;
    tokio::time::Instant::now().checked_add(budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response with `frames` as its body and `trailers` after them.
    fn response(
        http_status: u16,
        headers: &[(&'static str, &'static str)],
        frames: &[u8],
        trailers: &[(&'static str, &'static str)],
    ) -> http::Response<Body> {
        let mut trailer_map = HeaderMap::new();
        for (name, value) in trailers {
            trailer_map.insert(*name, HeaderValue::from_static(value));
        }
        let data = bytes::Bytes::copy_from_slice(frames);
        let mut parts: Vec<Result<http_body::Frame<bytes::Bytes>, Status>> = Vec::new();
        if !data.is_empty() {
            parts.push(Ok(http_body::Frame::data(data)));
        }
        if !trailers.is_empty() {
            parts.push(Ok(http_body::Frame::trailers(trailer_map)));
        }
        let body = http_body_util::StreamBody::new(futures::stream::iter(parts));
        let mut response = http::Response::new(Body::new(body));
        *response.status_mut() = http::StatusCode::from_u16(http_status).unwrap();
        for (name, value) in headers {
            response
                .headers_mut()
                .insert(*name, HeaderValue::from_static(value));
        }
        response
    }

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    #[tokio::test]
    async fn a_unary_reply_is_its_message_or_its_status_as_tonic_reads_them() {
        let ok = [("grpc-status", "0")];
        let message = unary_reply(response(200, &[], &frame(b"hello"), &ok)).await;
        assert_eq!(message.unwrap(), &b"hello"[..]);

        // Trailers-only error, as servers and the mesh's layers refuse calls.
        let refused = [
            ("content-type", "application/grpc"),
            ("grpc-status", "5"),
            ("grpc-message", "no such product"),
        ];
        let status = unary_reply(response(200, &refused, &[], &[]))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::NotFound, "no such product")
        );
        assert!(!status.metadata().is_empty(), "the answer's headers stay");

        // An error in the trailers wins over a message.
        let failed = [("grpc-status", "13"), ("grpc-message", "boom")];
        let status = unary_reply(response(200, &[], &frame(b"x"), &failed))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal);

        // No grpc-status: the HTTP status says what happened.
        let status = unary_reply(response(503, &[], b"", &[])).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        let status = unary_reply(response(404, &[], b"", &[])).await.unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented);

        // No message at all, or half of one.
        let status = unary_reply(response(200, &[], b"", &ok)).await.unwrap_err();
        assert_eq!(status.message(), "Missing response message.");
        let status = unary_reply(response(200, &ok, b"", &[])).await.unwrap_err();
        assert_eq!(status.message(), "Missing response message.");
        let mut cut = frame(b"hello");
        cut.truncate(7);
        let status = unary_reply(response(200, &[], &cut, &ok))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal);

        // Compressed without a negotiated encoding, or beyond the size limit.
        let mut compressed = frame(b"hello");
        compressed[0] = 1;
        let status = unary_reply(response(200, &[], &compressed, &ok))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        let mut huge = vec![0];
        huge.extend_from_slice(&(MAX_REPLY_MESSAGE as u32 + 1).to_be_bytes());
        let status = unary_reply(response(200, &[], &huge, &ok))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn a_reply_split_over_data_frames_is_joined_and_a_broken_body_is_its_status() {
        let framed = frame(b"hello world");
        let body = |chunks: Vec<Result<http_body::Frame<bytes::Bytes>, Status>>| {
            let stream = http_body_util::StreamBody::new(futures::stream::iter(chunks));
            http::Response::new(Body::new(stream))
        };
        let data = |range: std::ops::Range<usize>| {
            Ok(http_body::Frame::data(bytes::Bytes::copy_from_slice(
                &framed[range],
            )))
        };
        let mut ok = HeaderMap::new();
        ok.insert("grpc-status", HeaderValue::from_static("0"));
        let split = vec![
            data(0..4),
            data(4..9),
            data(9..framed.len()),
            Ok(http_body::Frame::trailers(ok)),
        ];
        assert_eq!(unary_reply(body(split)).await.unwrap(), &b"hello world"[..]);

        let broken = vec![data(0..4), Err(Status::unavailable("connection reset"))];
        let status = unary_reply(body(broken)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "connection reset");
    }

    #[tokio::test]
    async fn a_unary_request_is_one_frame_with_grpcs_headers() {
        let mut metadata = HeaderMap::new();
        metadata.insert("x-request-id", HeaderValue::from_static("r1"));
        let message = String::from("abc");
        let request = unary_request(
            http::uri::PathAndQuery::from_static("/weft.order.v1.OrderService/GetProduct"),
            super::frame(&message),
            metadata,
        );
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(request.uri(), "/weft.order.v1.OrderService/GetProduct");
        assert_eq!(request.headers()["content-type"], "application/grpc");
        assert_eq!(request.headers()["te"], "trailers");
        assert_eq!(request.headers()["x-request-id"], "r1");
        let body = http_body_util::BodyExt::collect(request.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(
            &body[..],
            &frame(&prost::Message::encode_to_vec(&message))[..]
        );
    }

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
