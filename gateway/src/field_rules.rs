//! A field's `weft.api.v1.field` rules (what its value must be) as JSON Schema keywords, so that
//! the OpenAPI document states exactly what the services refuse: a client generated from it, or
//! a fuzzer reading it, never meets a refusal the document did not announce.
//!
//! The keywords follow the service-side checks (`weft_mesh::validate`) one for one: lengths count
//! Unicode scalar values as sent, `text` is a pattern (white space around it is trimmed by the
//! service, what is left has no control characters), and a 64-bit integer's range is also a
//! pattern over its decimal string form, since proto3 JSON sends those as strings.

use prost_reflect::{FieldDescriptor, Kind, Value as ProtoValue};
use serde_json::{Value, json};
use weft_mesh_proto::{FIELD_RULES_OPTION, FieldRules};

/// What `char::is_whitespace` (Unicode White_Space, what `str::trim` removes) matches, as a
/// regex class body.
const WHITE_SPACE: &str =
    r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// What `char::is_control` matches. (No surrogate range: Rust-based validators cannot compile
/// one, and a Rust string cannot hold a lone surrogate anyway.)
const CONTROL: &str = r"\x00-\x1f\x7f-\x9f";
/// [`CONTROL`] without tab, line feed and carriage return: what prose may not contain.
const CONTROL_IN_PROSE: &str = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f";
/// A page token: 24 bytes as unpadded base64url (see `weft_mesh::page`).
const PAGE_TOKEN_PATTERN: &str = "^(?:[A-Za-z0-9_-]{32})?$";
/// Longest email address the services take (RFC 5321's path limit).
const MAX_EMAIL_LENGTH: u32 = 254;

/// The rules `field` declares, if any.
pub fn of(field: &FieldDescriptor) -> Option<FieldRules> {
    let extension = field
        .parent_pool()
        .get_extension_by_name(FIELD_RULES_OPTION)?;
    let options = field.options();
    if !options.has_extension(&extension) {
        return None;
    }
    match options.get_extension(&extension).as_ref() {
        ProtoValue::Message(rules) => rules.transcode_to().ok(),
        _ => None,
    }
}

/// Whether the rules refuse the field's default value, which is what an absent field or a JSON
/// `null` means: such a field must be present in a request, and is never `null`.
pub fn refuse_default(rules: &FieldRules) -> bool {
    rules.required
        || rules.min_length > 0
        || rules.minimum.is_some_and(|min| min > 0)
        || rules.maximum.is_some_and(|max| max < 0)
}

/// Adds the keywords of `rules` to `schema`, the value schema of `field`.
pub fn apply(schema: &mut Value, field: &FieldDescriptor, rules: &FieldRules) {
    if rules.output_only {
        schema["readOnly"] = Value::Bool(true);
    }
    let min_length = if rules.required {
        rules.min_length.max(1)
    } else {
        rules.min_length
    };
    if field.is_list() || field.is_map() {
        if min_length > 0 {
            schema[if field.is_list() {
                "minItems"
            } else {
                "minProperties"
            }] = min_length.into();
        }
        if rules.max_length > 0 {
            schema[if field.is_list() {
                "maxItems"
            } else {
                "maxProperties"
            }] = rules.max_length.into();
        }
        return;
    }
    match field.kind() {
        Kind::String => {
            if min_length > 0 {
                schema["minLength"] = min_length.into();
            }
            let max_length = match (rules.max_length, rules.email) {
                (0, true) => MAX_EMAIL_LENGTH,
                (max, true) => max.min(MAX_EMAIL_LENGTH),
                (max, false) => max,
            };
            if max_length > 0 {
                schema["maxLength"] = max_length.into();
            }
            if rules.email {
                schema["format"] = "email".into();
            }
            if let Some(pattern) = string_pattern(rules) {
                schema["pattern"] = pattern.into();
            }
        }
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => {
            if let Some(min) = rules.minimum {
                schema["minimum"] = min.into();
            }
            if let Some(max) = rules.maximum {
                schema["maximum"] = max.into();
            }
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64
            if rules.minimum.or(rules.maximum).is_some() =>
        {
            let min = rules.minimum.unwrap_or(i64::MIN);
            let max = rules.maximum.unwrap_or(i64::MAX);
            // proto3 JSON writes 64-bit integers as strings and reads numbers too: the range
            // holds for both forms.
            *schema = json!({
                "type": ["string", "integer"],
                "format": "int64",
                "minimum": min,
                "maximum": max,
                "pattern": integer_pattern(min, max),
            });
        }
        _ => {}
    }
}

/// The pattern of a string field's rules, if they have one.
fn string_pattern(rules: &FieldRules) -> Option<String> {
    if rules.page_token {
        return Some(PAGE_TOKEN_PATTERN.to_owned());
    }
    if !rules.pattern.is_empty() {
        let optional = if refuse_default(rules) { "" } else { "?" };
        return Some(format!("^(?:{}){optional}$", rules.pattern));
    }
    if rules.printable {
        let repeat = if refuse_default(rules) { "+" } else { "*" };
        return Some(format!("^[^{CONTROL}]{repeat}$"));
    }
    rules
        .text
        .then(|| text_pattern(rules.multiline, refuse_default(rules)))
}

/// Text as the services take it: any white space around it, and inside no control characters
/// (tabs and line breaks allowed in prose), not blank; empty too unless `required`.
fn text_pattern(multiline: bool, required: bool) -> String {
    let control = if multiline { CONTROL_IN_PROSE } else { CONTROL };
    let inner = format!("[^{control}]");
    let edge = format!("[^{WHITE_SPACE}{control}]");
    let text = format!("[{WHITE_SPACE}]*{edge}(?:{inner}*{edge})?[{WHITE_SPACE}]*");
    if required {
        format!("^{text}$")
    } else {
        format!("^(?:{text})?$")
    }
}

/// The decimal strings of the integers in `min..=max` as Rust's integer parsing reads them
/// (an optional sign, leading zeros allowed).
fn integer_pattern(min: i64, max: i64) -> String {
    let mut alternatives = Vec::new();
    if max >= 0 {
        let from = min.max(0).unsigned_abs();
        let digits = unsigned_range(from, max.unsigned_abs());
        alternatives.push(format!(r"\+?0*(?:{})", digits.join("|")));
    }
    if min < 0 {
        // The magnitudes of min..=min(max, -1).
        let from = max.min(-1).unsigned_abs();
        let digits = unsigned_range(from, min.unsigned_abs());
        alternatives.push(format!("-0*(?:{})", digits.join("|")));
    }
    format!("^(?:{})$", alternatives.join("|"))
}

/// Regex alternatives matching the decimal forms (no leading zeros) of `from..=to`.
fn unsigned_range(from: u64, to: u64) -> Vec<String> {
    let mut alternatives = Vec::new();
    let mut low = from;
    loop {
        let digits = low.to_string().len() as u32;
        let longest = 10u64.checked_pow(digits).map_or(u64::MAX, |p| p - 1);
        let high = to.min(longest);
        same_length(&low.to_string(), &high.to_string(), &mut alternatives);
        if high >= to {
            return alternatives;
        }
        low = high + 1;
    }
}

/// Regex alternatives matching the numbers from `low` to `high`, both of the same length.
fn same_length(low: &str, high: &str, out: &mut Vec<String>) {
    if low == high {
        out.push(low.to_owned());
        return;
    }
    let (first_low, rest_low) = low.split_at(1);
    let (first_high, rest_high) = high.split_at(1);
    let rest = rest_low.len();
    if first_low == first_high {
        let mut tails = Vec::new();
        same_length(rest_low, rest_high, &mut tails);
        out.extend(tails.into_iter().map(|tail| format!("{first_low}{tail}")));
        return;
    }
    let digit = |s: &str| s.as_bytes()[0] - b'0';
    let (mut first_full, mut last_full) = (digit(first_low), digit(first_high));
    if rest_low.bytes().any(|b| b != b'0') {
        let mut tails = Vec::new();
        same_length(rest_low, &"9".repeat(rest), &mut tails);
        out.extend(tails.into_iter().map(|tail| format!("{first_low}{tail}")));
        first_full += 1;
    }
    let mut upper = Vec::new();
    if rest_high.bytes().any(|b| b != b'9') {
        let mut tails = Vec::new();
        same_length(&"0".repeat(rest), rest_high, &mut tails);
        upper.extend(tails.into_iter().map(|tail| format!("{first_high}{tail}")));
        last_full -= 1;
    }
    if first_full <= last_full {
        let head = if first_full == last_full {
            first_full.to_string()
        } else {
            format!("[{first_full}-{last_full}]")
        };
        let tail = match rest {
            0 => String::new(),
            1 => "[0-9]".to_owned(),
            n => format!("[0-9]{{{n}}}"),
        };
        out.push(format!("{head}{tail}"));
    }
    out.extend(upper);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pattern` compiled by the regex crate: the patterns use only syntax that it, ECMA-262 and
    /// Python agree on.
    fn regex(pattern: &str) -> regex::Regex {
        regex::Regex::new(pattern).unwrap()
    }

    #[test]
    fn integer_patterns_match_exactly_their_range() {
        for (min, max) in [
            (0, 0),
            (1, 1000),
            (0, 2000),
            (7, 93),
            (15, 3_417),
            (999, 1001),
            (-120, 35),
            (-50, -7),
        ] {
            let pattern = regex(&integer_pattern(min, max));
            for n in min - 60..=max + 60 {
                assert_eq!(
                    pattern.is_match(&n.to_string()),
                    (min..=max).contains(&n),
                    "{n} in {min}..={max}: {pattern}"
                );
            }
        }
        let quantity = regex(&integer_pattern(1, 1000));
        for (text, ok) in [
            ("+7", true),
            ("0007", true),
            ("1000", true),
            ("01001", false),
            ("", false),
            ("1e3", false),
            (" 5", false),
        ] {
            assert_eq!(quantity.is_match(text), ok, "{text}");
        }
    }

    #[test]
    fn integer_patterns_reach_the_limits_of_i64() {
        let everything = regex(&integer_pattern(i64::MIN, i64::MAX));
        for n in [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX] {
            assert!(everything.is_match(&n.to_string()), "{n}");
        }
        for text in [
            "9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999",
        ] {
            assert!(!everything.is_match(text), "{text}");
        }
    }

    #[test]
    fn text_patterns_follow_the_services_trimming_and_control_rules() {
        let name = regex(&text_pattern(false, true));
        for (text, ok) in [
            ("Ada", true),
            ("  Ada Lovelace \n", true),
            ("\u{3000}名前\u{a0}", true),
            ("", false),
            (" \t\n", false),
            ("A\nB", false),
            ("A\u{85}B", false),
            ("\u{1c}Ada", false),
        ] {
            assert_eq!(name.is_match(text), ok, "{text:?}");
        }
        let description = regex(&text_pattern(true, false));
        for (text, ok) in [
            ("", true),
            ("   ", false),
            (" line\nline\ttab\n", true),
            ("bell\u{7}", false),
        ] {
            assert_eq!(description.is_match(text), ok, "{text:?}");
        }
    }

    #[test]
    fn printable_values_have_no_control_characters() {
        let rules = FieldRules {
            printable: true,
            ..FieldRules::default()
        };
        let key = regex(&string_pattern(&rules).unwrap());
        for (text, ok) in [
            ("", true),
            (" key 1 ", true),
            ("a\0b", false),
            ("\u{9f}", false),
        ] {
            assert_eq!(key.is_match(text), ok, "{text:?}");
        }
    }

    #[test]
    fn page_tokens_are_32_base64url_characters_or_nothing() {
        let token = regex(PAGE_TOKEN_PATTERN);
        assert!(token.is_match(""));
        assert!(token.is_match(&"A-_z".repeat(8)));
        assert!(!token.is_match(&"A".repeat(31)));
        assert!(!token.is_match(&format!("{}=", "A".repeat(31))));
    }
}
