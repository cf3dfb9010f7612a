//! The id of every request: the client's `X-Request-Id` when it is acceptable, else a new one.
//!
//! The gateway answers with it (`X-Request-Id`, and `requestId` in error bodies) and passes it
//! on to the upstream call and into the trace's baggage, so that one id finds a request in the
//! logs of every process it went through.

use http::HeaderValue;
use weft_mesh::propagate;

/// The incoming request id if acceptable, else a new one; as text and as a header value.
pub(crate) fn request_id(headers: &http::HeaderMap) -> (String, HeaderValue) {
    if let Some(incoming) = propagate::incoming_request_id(headers) {
        return incoming;
    }
    let id = new_request_id();
    let value = HeaderValue::from_str(&id).expect("request ids are header-safe");
    (id, value)
}

/// A new request id: 32 hex digits, a per-thread random prefix (drawn once from the OS) and a
/// counter scrambled by a bijection, so ids never repeat within a thread and collide across
/// threads and processes only if 64 random bits do. Ids correlate logs and are no secret;
/// `Uuid::new_v4` cost a `getrandom` system call on every request without a client id.
fn new_request_id() -> String {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<(u64, u64)> = Cell::new({
            let seed = uuid::Uuid::new_v4().as_u128();
            ((seed >> 64) as u64, seed as u64)
        });
    }
    let (prefix, count) = STATE.with(|state| {
        let (prefix, count) = state.get();
        state.set((prefix, count.wrapping_add(1)));
        (prefix, count)
    });
    // splitmix64's finaliser: a bijection on u64, so distinct counts give distinct ids.
    let mut z = count.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let value = (u128::from(prefix) << 64) | u128::from(z);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for shift in (0..32).rev() {
        id.push(char::from(HEX[((value >> (shift * 4)) & 0xf) as usize]));
    }
    id
}

#[cfg(test)]
mod tests {
    use weft_mesh::propagate::REQUEST_ID_HEADER;

    use super::*;

    #[test]
    fn new_request_ids_are_valid_and_distinct() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(
            ids.iter()
                .all(|id| id.len() == 32 && propagate::is_valid_request_id(id))
        );
        assert!(
            ids.iter()
                .all(|id| id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        );
        // Another thread draws another prefix.
        let other = std::thread::spawn(new_request_id).join().unwrap();
        let mine = new_request_id();
        assert_ne!(other[..16], mine[..16]);
    }

    #[test]
    fn a_valid_client_request_id_is_kept() {
        let mut headers = http::HeaderMap::new();
        let mut sensitive = HeaderValue::from_static("abc-123");
        sensitive.set_sensitive(true);
        headers.insert(REQUEST_ID_HEADER, sensitive);
        let (id, value) = request_id(&headers);
        assert_eq!(
            (id.as_str(), &value),
            ("abc-123", &HeaderValue::from_static("abc-123"))
        );
        assert!(
            !value.is_sensitive(),
            "as a value made from the id would be"
        );
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("bad id!"));
        let (id, value) = request_id(&headers);
        assert_eq!(id.len(), 32);
        assert_eq!(value, id.as_str());
    }
}
