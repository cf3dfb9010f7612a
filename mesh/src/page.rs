//! Keyset pagination with opaque page tokens (AIP-158).
//!
//! A token encodes the sort key of the last item served, so the next page starts right after it
//! whatever was inserted meanwhile. Tokens are base64url text; anything that does not decode is
//! INVALID_ARGUMENT naming `page_token`.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::validate::FieldError;

/// Page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: i64 = 50;
/// Largest page served; larger requests are served this many (AIP-158 coerces, not refuses).
pub const MAX_PAGE_SIZE: i64 = 500;

/// Where the next page starts: after the item with this sort time and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The sort time (microseconds since the epoch) of the last item served.
    pub time: i64,
    /// The id of the last item served (breaks ties between equal times).
    pub id: String,
}

/// A validated page request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Items to return, 1..=500.
    pub size: i64,
    /// Start after this item, or from the beginning.
    pub after: Option<Cursor>,
}

impl PageRequest {
    /// Validates a request's `page_size` and `page_token`.
    pub fn parse(page_size: i32, page_token: &str) -> Result<Self, FieldError> {
        let size = match i64::from(page_size) {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => return Err(FieldError::new("page_size", "must not be negative")),
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(Cursor::decode(page_token).ok_or_else(|| {
                FieldError::new("page_token", "is not a token returned by this method")
            })?)
        };
        Ok(Self { size, after })
    }

    /// Rows to fetch: one more than the page, to learn whether another page follows.
    pub fn fetch_limit(&self) -> i64 {
        self.size + 1
    }

    /// Trims `rows` (fetched with [`PageRequest::fetch_limit`]) to the page and makes the next
    /// page's token from the last row kept.
    pub fn finish<T>(
        &self,
        mut rows: Vec<T>,
        cursor_of: impl Fn(&T) -> Cursor,
    ) -> (Vec<T>, String) {
        if rows.len() as i64 > self.size {
            rows.truncate(self.size as usize);
            let token = rows
                .last()
                .map(|r| cursor_of(r).encode())
                .unwrap_or_default();
            (rows, token)
        } else {
            (rows, String::new())
        }
    }
}

impl Cursor {
    /// The opaque token form.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1|{}|{}", self.time, self.id))
    }

    /// Parses a token made by [`Cursor::encode`].
    pub fn decode(token: &str) -> Option<Self> {
        if token.len() > 512 {
            return None;
        }
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
        let mut parts = raw.splitn(3, '|');
        if parts.next()? != "v1" {
            return None;
        }
        let time = parts.next()?.parse().ok()?;
        let id = parts.next()?.to_string();
        (!id.is_empty()).then_some(Self { time, id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let cursor = Cursor {
            time: 1_700_000_000_000_000,
            id: "abc".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
    }

    #[test]
    fn sizes_default_and_cap() {
        assert_eq!(PageRequest::parse(0, "").unwrap().size, 50);
        assert_eq!(PageRequest::parse(9999, "").unwrap().size, 500);
        assert_eq!(PageRequest::parse(-1, "").unwrap_err().field, "page_size");
    }

    #[test]
    fn malformed_tokens_name_the_field() {
        for bad in ["%%%", "bm9wZQ", "djF8eHx5", &"A".repeat(600)] {
            assert_eq!(
                PageRequest::parse(10, bad).unwrap_err().field,
                "page_token",
                "{bad}"
            );
        }
    }

    #[test]
    fn finish_emits_a_token_only_when_more_rows_exist() {
        let page = PageRequest {
            size: 2,
            after: None,
        };
        let cursor = |n: &i64| Cursor {
            time: *n,
            id: n.to_string(),
        };
        let (rows, token) = page.finish(vec![1, 2, 3], cursor);
        assert_eq!(rows, [1, 2]);
        assert_eq!(Cursor::decode(&token).unwrap().time, 2);
        let (rows, token) = page.finish(vec![1, 2], cursor);
        assert_eq!((rows.len(), token.as_str()), (2, ""));
    }
}
