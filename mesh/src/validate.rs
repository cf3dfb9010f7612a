//! Input validation that names the field at fault.
//!
//! Handlers check their input with these helpers and return a [`FieldError`], which becomes
//! INVALID_ARGUMENT with a message like `items[3].quantity: must be between 1 and 1000` and a
//! `google.rpc.BadRequest` detail, the shape gRPC and REST clients know.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// An invalid input field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// The field's path in the request (`items[3].quantity`).
    pub field: String,
    /// What is wrong, for humans.
    pub reason: String,
}

impl FieldError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<FieldError> for Status {
    fn from(err: FieldError) -> Status {
        let details = ErrorDetails::with_bad_request_violation(&err.field, &err.reason);
        Status::with_error_details(Code::InvalidArgument, err.to_string(), details)
    }
}

/// Ids longer than this name nothing (real ids are 32 characters): a store may answer
/// NOT_FOUND for them without a query.
pub const MAX_ID_LEN: usize = 128;

/// Whether an id could name anything: at most [`MAX_ID_LEN`] bytes and no control characters
/// (real ids are 32 hex digits). One that cannot is NOT_FOUND without a query; PostgreSQL
/// could not even compare a NUL character.
pub fn can_exist(id: &str) -> bool {
    id.len() <= MAX_ID_LEN && !id.chars().any(char::is_control)
}

/// An id as it may be echoed in an error message: ids past [`MAX_ID_LEN`] bytes are cut, so a
/// huge id cannot blow up the message (and the gRPC trailer that carries it).
pub fn shown_id(id: &str) -> std::borrow::Cow<'_, str> {
    if id.len() <= MAX_ID_LEN {
        return id.into();
    }
    let mut end = MAX_ID_LEN;
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &id[..end]).into()
}

/// A resource id: present. Any other shape is left to the store, which answers NOT_FOUND for
/// an id that names nothing "whatever its shape", as the contract asks.
pub fn id<'a>(field: &str, value: &'a str) -> Result<&'a str, FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    Ok(value)
}

/// Text of at most `max` characters (Unicode scalar values) as sent, and at least `min` after
/// trimming the white space around it; returned trimmed. (Counting the maximum as sent keeps
/// the rule one that a JSON Schema `maxLength` states exactly.)
pub fn text<'a>(
    field: &str,
    value: &'a str,
    min: usize,
    max: usize,
) -> Result<&'a str, FieldError> {
    let sent = value.chars().count();
    let value = value.trim();
    if value.chars().count() < min || sent > max {
        let reason = if min == 0 {
            format!("must be at most {max} characters")
        } else {
            format!("must be between {min} and {max} characters")
        };
        return Err(FieldError::new(field, reason));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value)
}

/// An email address, trimmed and lower-cased: one `@`, a non-empty local part, a domain with a
/// dot and no spaces, at most 254 characters.
pub fn email(field: &str, value: &str) -> Result<String, FieldError> {
    let email = value.trim().to_lowercase();
    let invalid = || FieldError::new(field, "must be an email address like name@example.com");
    if email.is_empty() || email.len() > 254 {
        return Err(invalid());
    }
    let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '.');
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '@');
    if domain_ok && local_ok {
        Ok(email)
    } else {
        Err(invalid())
    }
}

/// An integer within `min..=max`.
pub fn range(field: &str, value: i64, min: i64, max: i64) -> Result<i64, FieldError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(FieldError::new(
            field,
            format!("must be between {min} and {max}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_or_refused() {
        assert_eq!(
            email("email", "  Ada@Example.COM ").unwrap(),
            "ada@example.com"
        );
        for bad in [
            "", "ada", "ada@", "@x.io", "a@b", "a b@x.io", "a@x..io", "a@@x.io",
        ] {
            assert_eq!(email("email", bad).unwrap_err().field, "email", "{bad:?}");
        }
    }

    #[test]
    fn a_field_error_is_invalid_argument_with_a_bad_request_detail() {
        let status = Status::from(FieldError::new("items[3].quantity", "must be at least 1"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "items[3].quantity: must be at least 1");
        let details = status.get_error_details();
        let violations = &details
            .bad_request()
            .expect("a BadRequest")
            .field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "items[3].quantity");
        assert_eq!(violations[0].description, "must be at least 1");
    }

    #[test]
    fn text_counts_the_maximum_as_sent_and_the_minimum_trimmed() {
        assert_eq!(text("f", " ab ", 1, 4).unwrap(), "ab");
        assert!(text("f", " ab  ", 1, 4).is_err(), "5 characters sent");
        assert!(text("f", "   ", 1, 4).is_err(), "blank");
    }

    #[test]
    fn text_counts_characters_not_bytes() {
        assert!(text("name", "ééé", 1, 3).is_ok());
        assert!(text("name", "   ", 1, 3).is_err());
        assert!(text("name", "a\u{0}b", 1, 3).is_err());
        assert_eq!(
            text("name", "abcd", 1, 3).unwrap_err().to_string(),
            "name: must be between 1 and 3 characters"
        );
    }

    #[test]
    fn long_ids_are_cut_when_shown() {
        assert_eq!(shown_id("abc"), "abc");
        let long = "é".repeat(1000);
        let shown = shown_id(&long);
        assert!(
            shown.len() <= MAX_ID_LEN + 3 && shown.ends_with("..."),
            "{shown}"
        );
    }

    #[test]
    fn ids_with_control_characters_or_too_long_cannot_exist() {
        assert!(can_exist("0a1b2c3d4e5f60718293a4b5c6d7e8f9"));
        assert!(can_exist("any:printable/thing"));
        for id in ["a\0b", "tab\there", "\u{85}", &"x".repeat(MAX_ID_LEN + 1)] {
            assert!(!can_exist(id), "{id:?}");
        }
    }

    #[test]
    fn ids_must_be_present() {
        assert!(id("id", "").is_err());
        assert!(
            id("id", &"x".repeat(129)).is_ok(),
            "shape is the store's business"
        );
        assert_eq!(id("id", "nope").unwrap(), "nope");
    }
}
