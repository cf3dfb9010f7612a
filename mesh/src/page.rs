//! Keyset pagination with opaque page tokens (AIP-158).
//!
//! A token encodes the sort key of the last item served, so the next page starts right after it
//! whatever was inserted meanwhile: the sort time (8 bytes, big-endian) and the id (the mesh's
//! ids are 128-bit, 32 hex digits) as 32 characters of unpadded base64url. Every such string is
//! a position in the list, so the OpenAPI document can state exactly which tokens are valid
//! (`^[A-Za-z0-9_-]{32}$`); anything else is INVALID_ARGUMENT naming `page_token`. A token
//! reveals nothing the page did not show: the last item's id and creation time.

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
            let cursor = rows.last().map(cursor_of);
            let token = match cursor.as_ref().map(|c| (c, c.encode())) {
                Some((_, Some(token))) => token,
                Some((cursor, None)) => {
                    // Every id the services make is 32 hex digits; a row breaking that is a
                    // bug to see, not a reason to fail the page.
                    tracing::error!(id = %cursor.id, "a listed row's id is not a mesh id; no next page");
                    String::new()
                }
                None => String::new(),
            };
            (rows, token)
        } else {
            (rows, String::new())
        }
    }
}

/// Bytes in a decoded token: the sort time, then the id.
const TOKEN_BYTES: usize = 8 + 16;

impl Cursor {
    /// The opaque token form, or `None` when the id is not one of the mesh's 32-hex-digit ids.
    pub fn encode(&self) -> Option<String> {
        if self.id.len() != 32 {
            return None;
        }
        let id = u128::from_str_radix(&self.id, 16).ok()?;
        let mut bytes = [0u8; TOKEN_BYTES];
        bytes[..8].copy_from_slice(&self.time.to_be_bytes());
        bytes[8..].copy_from_slice(&id.to_be_bytes());
        Some(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Parses a token made by [`Cursor::encode`] (or any 32 base64url characters: each is a
    /// position in the list).
    pub fn decode(token: &str) -> Option<Self> {
        if token.len() != 32 {
            return None;
        }
        let bytes: [u8; TOKEN_BYTES] = URL_SAFE_NO_PAD.decode(token).ok()?.try_into().ok()?;
        let (time, id) = bytes.split_at(8);
        Some(Self {
            time: i64::from_be_bytes(time.try_into().ok()?),
            id: format!("{:032x}", u128::from_be_bytes(id.try_into().ok()?)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for time in [1_700_000_000_000_000, 0, -1, i64::MIN, i64::MAX] {
            let cursor = Cursor {
                time,
                id: "0a1b2c3d4e5f60718293a4b5c6d7e8f9".into(),
            };
            let token = cursor.encode().unwrap();
            assert_eq!(token.len(), 32);
            assert_eq!(Cursor::decode(&token), Some(cursor));
        }
    }

    #[test]
    fn every_token_of_the_documented_shape_is_a_position() {
        for token in [
            "A".repeat(32),
            "_".repeat(32),
            "-".repeat(32),
            "Zz09-_".repeat(5) + "ab",
        ] {
            let cursor = Cursor::decode(&token).unwrap();
            assert_eq!(cursor.id.len(), 32, "{token}");
            assert_eq!(cursor.encode().as_deref(), Some(token.as_str()));
        }
    }

    #[test]
    fn ids_that_are_not_mesh_ids_have_no_token() {
        for id in ["abc", "", "0a1b2c3d4e5f60718293a4b5c6d7e8fZ"] {
            let cursor = Cursor {
                time: 1,
                id: id.into(),
            };
            assert_eq!(cursor.encode(), None, "{id}");
        }
    }

    #[test]
    fn sizes_default_and_cap() {
        assert_eq!(PageRequest::parse(0, "").unwrap().size, 50);
        assert_eq!(PageRequest::parse(9999, "").unwrap().size, 500);
        assert_eq!(PageRequest::parse(-1, "").unwrap_err().field, "page_size");
    }

    #[test]
    fn malformed_tokens_name_the_field() {
        for bad in [
            "%%%",
            "bm9wZQ",
            "djF8eHx5",
            &"A".repeat(31),
            &"A".repeat(33),
            &"A".repeat(600),
            &format!("{}=", "A".repeat(31)),
        ] {
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
            id: format!("{n:032x}"),
        };
        let (rows, token) = page.finish(vec![1, 2, 3], cursor);
        assert_eq!(rows, [1, 2]);
        assert_eq!(Cursor::decode(&token).unwrap().time, 2);
        let (rows, token) = page.finish(vec![1, 2], cursor);
        assert_eq!((rows.len(), token.as_str()), (2, ""));
    }
}
