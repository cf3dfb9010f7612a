//! JSON <-> protobuf for one call: the request message from path variables, query parameters
//! and body; the JSON body from the response message.
//!
//! The body is read with the canonical proto3 JSON mapping (lowerCamelCase or original field
//! names, int64 as strings or numbers, enums by name or number, well-known types in their JSON
//! form) and unknown fields are refused. Path variables and query parameters are then set on
//! the message directly, field by field, so the common GET with a path id builds its request
//! without any JSON at all. Responses are written with every field present, defaults
//! included (grpc-gateway's `EmitUnpopulated`), int64 as strings and enums as names.

use base64::Engine as _;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage, SerializeOptions, Value,
};

use crate::table::{BodyRule, Endpoint};

/// Why a request could not be turned into a message: always the client's fault (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// The body is not JSON, has trailing data, or does not fit the message.
    #[error("invalid JSON body: {0}")]
    Body(String),
    /// The body nests deeper than allowed.
    #[error("invalid JSON body: nested deeper than {0} levels")]
    TooDeep(usize),
    /// A query parameter names no field, or its value does not fit the field.
    #[error("invalid query parameter `{name}`: {reason}")]
    Query {
        /// The parameter as sent.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A path variable's value does not fit its field.
    #[error("invalid path value for `{name}`: {reason}")]
    Path {
        /// The field path.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

const WRAPPERS: [&str; 9] = [
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
];

/// Whether a message type has a scalar JSON form (Timestamp, Duration, FieldMask, wrappers),
/// so that a path or query value can set it.
pub fn is_scalar_like(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp" | "google.protobuf.Duration" | "google.protobuf.FieldMask"
    ) || WRAPPERS.contains(&message.full_name())
}

/// Builds the request message of `endpoint`.
pub fn build_request(
    endpoint: &Endpoint,
    bindings: Vec<(&[String], String)>,
    query: Option<&str>,
    body: &[u8],
    max_depth: usize,
) -> Result<DynamicMessage, BadRequest> {
    let input = endpoint.method.input();
    let mut message = match &endpoint.body {
        BodyRule::None => DynamicMessage::new(input),
        BodyRule::Whole => parse_body(input, body, max_depth)?,
        BodyRule::Field(field) => {
            let mut message = DynamicMessage::new(input);
            if !body_is_empty(body) {
                let value = parse_field_body(field, body, max_depth)?;
                message.set_field(field, value);
            }
            message
        }
    };
    for (path, raw) in bindings {
        set_path(&mut message, path, &raw, false).map_err(|reason| BadRequest::Path {
            name: path.join("."),
            reason,
        })?;
    }
    if let Some(query) = query {
        let mut seen: Vec<String> = Vec::new();
        for (name, raw) in form_urlencoded::parse(query.as_bytes()) {
            let path: Vec<String> = name.split('.').map(str::to_owned).collect();
            let repeated_twice = seen.contains(&name.to_string());
            set_path(&mut message, &path, &raw, repeated_twice).map_err(|reason| {
                BadRequest::Query {
                    name: name.to_string(),
                    reason,
                }
            })?;
            seen.push(name.into_owned());
        }
    }
    Ok(message)
}

/// Renders a response message (or its `response_body` field) as the JSON body. Replies are
/// written from their bytes by [`crate::wire_json`], which falls back to this.
pub fn render_response(
    response_body: Option<&FieldDescriptor>,
    message: &DynamicMessage,
) -> Vec<u8> {
    let options = SerializeOptions::new().skip_default_fields(false);
    let mut out = Vec::with_capacity(256);
    let result = match response_body {
        None => write_message(&mut out, message),
        Some(field) => match message.get_field(field).as_ref() {
            Value::Message(inner) => write_message(&mut out, inner),
            _ => {
                // A scalar or repeated field: render the whole message, then pick the field.
                let mut whole = Vec::new();
                let ok = message
                    .serialize_with_options(&mut serde_json::Serializer::new(&mut whole), &options);
                if ok.is_ok()
                    && let Ok(serde_json::Value::Object(mut map)) =
                        serde_json::from_slice::<serde_json::Value>(&whole)
                    && let Some(value) = map.remove(field.json_name())
                {
                    out = serde_json::to_vec(&value).unwrap_or_default();
                }
                return out;
            }
        },
    };
    if result.is_err() {
        // Only a well-known value outside its JSON range (a Timestamp before year 1) fails.
        out.clear();
        out.extend_from_slice(b"{}");
    }
    out
}

// === response JSON ===

/// Writes a message as canonical proto3 JSON with every field present: the same bytes as
/// prost-reflect's serializer with `skip_default_fields(false)`, which stays the writer of
/// well-known types (but `Timestamp`) and of messages with extensions. This runs on every
/// response; prost-reflect spent about 6,700 instructions on a `Timestamp` alone (re-encoding
/// it to `prost_types::Timestamp`, then `fmt`), [`timestamp_text`] about 150.
pub(crate) fn write_message(
    out: &mut Vec<u8>,
    message: &DynamicMessage,
) -> Result<(), serde_json::Error> {
    let descriptor = message.descriptor();
    let name = descriptor.full_name();
    if name == "google.protobuf.Timestamp"
        && let Some(text) = timestamp_text(message)
    {
        out.push(b'"');
        out.extend_from_slice(text.as_str().as_bytes());
        out.push(b'"');
        return Ok(());
    }
    if name.starts_with("google.protobuf.") || message.extensions().next().is_some() {
        let options = SerializeOptions::new().skip_default_fields(false);
        return message.serialize_with_options(&mut serde_json::Serializer::new(out), &options);
    }
    // Field-number order. Every field is present (grpc-gateway's EmitUnpopulated): an unset
    // message or `optional` field as `null`; only unset members of a real oneof are left out.
    out.push(b'{');
    let mut first = true;
    for field in descriptor.fields() {
        let unset = field.supports_presence() && !message.has_field(&field);
        if unset
            && field
                .containing_oneof()
                .is_some_and(|oneof| !oneof.is_synthetic())
        {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_str(out, field.json_name());
        out.push(b':');
        if unset {
            out.extend_from_slice(b"null");
        } else {
            write_value(out, message.get_field(&field).as_ref(), &field.kind())?;
        }
    }
    out.push(b'}');
    Ok(())
}

/// Writes one value of a field of `kind`.
pub(crate) fn write_value(
    out: &mut Vec<u8>,
    value: &Value,
    kind: &Kind,
) -> Result<(), serde_json::Error> {
    match value {
        Value::Bool(v) => out.extend_from_slice(if *v { b"true" } else { b"false" }),
        Value::I32(v) => write_int(out, i128::from(*v), false),
        Value::U32(v) => write_int(out, i128::from(*v), false),
        Value::I64(v) => write_int(out, i128::from(*v), true),
        Value::U64(v) => write_int(out, i128::from(*v), true),
        Value::F32(v) if v.is_finite() => serde_json::to_writer(&mut *out, v)?,
        Value::F64(v) if v.is_finite() => serde_json::to_writer(&mut *out, v)?,
        Value::F32(v) => write_non_finite(out, f64::from(*v)),
        Value::F64(v) => write_non_finite(out, *v),
        Value::String(v) => write_str(out, v),
        Value::Bytes(v) => {
            out.push(b'"');
            let engine = &base64::engine::general_purpose::STANDARD;
            out.extend_from_slice(engine.encode(v).as_bytes());
            out.push(b'"');
        }
        Value::EnumNumber(number) => match kind {
            Kind::Enum(e) if e.full_name() == "google.protobuf.NullValue" => {
                out.extend_from_slice(b"null")
            }
            Kind::Enum(e) => match e.get_value(*number) {
                Some(value) => write_str(out, value.name()),
                None => write_int(out, i128::from(*number), false),
            },
            _ => write_int(out, i128::from(*number), false),
        },
        Value::Message(message) => write_message(out, message)?,
        Value::List(values) => {
            out.push(b'[');
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, value, kind)?;
            }
            out.push(b']');
        }
        Value::Map(entries) => {
            let value_kind = match kind {
                Kind::Message(entry) if entry.is_map_entry() => {
                    entry.map_entry_value_field().kind()
                }
                _ => {
                    let error = std::io::Error::other("a map value without a map entry type");
                    return Err(serde_json::Error::io(error));
                }
            };
            out.push(b'{');
            for (i, (key, value)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match key {
                    MapKey::Bool(k) => write_str(out, if *k { "true" } else { "false" }),
                    MapKey::I32(k) => write_int(out, i128::from(*k), true),
                    MapKey::I64(k) => write_int(out, i128::from(*k), true),
                    MapKey::U32(k) => write_int(out, i128::from(*k), true),
                    MapKey::U64(k) => write_int(out, i128::from(*k), true),
                    MapKey::String(k) => write_str(out, k),
                }
                out.push(b':');
                write_value(out, value, &value_kind)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// A JSON string, escaped as serde_json escapes it.
pub(crate) fn write_str(out: &mut Vec<u8>, text: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// An integer in decimal, quoted when `quoted` (64-bit integers and map keys). `value` is a
/// protobuf integer: an `i64` or a `u64`.
pub(crate) fn write_int(out: &mut Vec<u8>, value: i128, quoted: bool) {
    debug_assert!(value.unsigned_abs() <= u128::from(u64::MAX), "{value}");
    let mut digits = [0u8; 40];
    let mut at = digits.len();
    // Every protobuf integer's magnitude fits in 64 bits, where division is one instruction
    // (128-bit division is a library call: about 130 instructions a digit).
    let mut rest = u64::try_from(value.unsigned_abs()).unwrap_or(u64::MAX);
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if value < 0 {
        at -= 1;
        digits[at] = b'-';
    }
    if quoted {
        out.push(b'"');
    }
    out.extend_from_slice(&digits[at..]);
    if quoted {
        out.push(b'"');
    }
}

/// NaN and the infinities, which JSON numbers cannot hold, as proto3 JSON's strings.
pub(crate) fn write_non_finite(out: &mut Vec<u8>, value: f64) {
    out.extend_from_slice(if value.is_nan() {
        b"\"NaN\""
    } else if value > 0.0 {
        b"\"Infinity\""
    } else {
        b"\"-Infinity\""
    });
}

/// The RFC 3339 text of a `Timestamp` as prost-reflect writes it (`Z`, and 0, 3, 6 or 9
/// fraction digits), or `None` outside 0001..=9999 or with un-normalised nanos (left to
/// prost-reflect, which reports those).
fn timestamp_text(message: &DynamicMessage) -> Option<TimestampText> {
    let seconds = message.get_field_by_number(1)?.as_i64()?;
    let nanos = message.get_field_by_number(2)?.as_i32()?;
    timestamp_text_of(seconds, nanos)
}

/// [`timestamp_text`] of a `Timestamp`'s two fields.
pub(crate) fn timestamp_text_of(seconds: i64, nanos: i32) -> Option<TimestampText> {
    const MIN_SECONDS: i64 = -62_135_596_800; // 0001-01-01T00:00:00Z
    const MAX_SECONDS: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&seconds) || !(0..1_000_000_000).contains(&nanos) {
        return None;
    }
    let (days, secs_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);

    let mut text = TimestampText {
        bytes: *b"0000-00-00T00:00:00.000000000Z",
        len: 0,
    };
    let digits = |out: &mut [u8], mut value: i64| {
        for byte in out.iter_mut().rev() {
            *byte = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    digits(&mut text.bytes[0..4], year);
    digits(&mut text.bytes[5..7], month);
    digits(&mut text.bytes[8..10], day);
    digits(&mut text.bytes[11..13], secs_of_day / 3_600);
    digits(&mut text.bytes[14..16], secs_of_day / 60 % 60);
    digits(&mut text.bytes[17..19], secs_of_day % 60);
    let nanos = i64::from(nanos);
    let fraction = if nanos == 0 {
        0
    } else if nanos % 1_000_000 == 0 {
        digits(&mut text.bytes[20..23], nanos / 1_000_000);
        4
    } else if nanos % 1_000 == 0 {
        digits(&mut text.bytes[20..26], nanos / 1_000);
        7
    } else {
        digits(&mut text.bytes[20..29], nanos);
        10
    };
    text.len = 19 + fraction + 1;
    text.bytes[text.len - 1] = b'Z';
    Some(text)
}

/// A formatted timestamp, on the stack.
pub(crate) struct TimestampText {
    bytes: [u8; 30],
    len: usize,
}

impl TimestampText {
    /// The text.
    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

fn body_is_empty(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

fn parse_body(
    descriptor: MessageDescriptor,
    body: &[u8],
    max_depth: usize,
) -> Result<DynamicMessage, BadRequest> {
    if body_is_empty(body) {
        return Ok(DynamicMessage::new(descriptor));
    }
    check_depth(body, max_depth)?;
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let message = DynamicMessage::deserialize_with_options(descriptor, &mut deserializer, &options)
        .map_err(|e| BadRequest::Body(e.to_string()))?;
    deserializer
        .end()
        .map_err(|e| BadRequest::Body(e.to_string()))?;
    Ok(message)
}

fn parse_field_body(
    field: &FieldDescriptor,
    body: &[u8],
    max_depth: usize,
) -> Result<Value, BadRequest> {
    match field.kind() {
        Kind::Message(message) if !field.is_list() && !field.is_map() => {
            Ok(Value::Message(parse_body(message, body, max_depth)?))
        }
        _ => {
            // A scalar or repeated body field: parse it as the value of that field of the parent.
            check_depth(body, max_depth)?;
            let value: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| BadRequest::Body(e.to_string()))?;
            let wrapper = serde_json::json!({ field.json_name(): value });
            let parent = DynamicMessage::deserialize_with_options(
                field.parent_message().clone(),
                wrapper,
                &DeserializeOptions::new().deny_unknown_fields(true),
            )
            .map_err(|e| BadRequest::Body(e.to_string()))?;
            Ok(parent.get_field(field).into_owned())
        }
    }
}

/// Refuses JSON nested deeper than `max` before parsing it (a parser would recurse).
fn check_depth(body: &[u8], max: usize) -> Result<(), BadRequest> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in body {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(BadRequest::TooDeep(max));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Sets the field at `path` (names or JSON names) from a path or query value.
fn set_path(
    message: &mut DynamicMessage,
    path: &[String],
    raw: &str,
    again: bool,
) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty field path")?;
    let mut current = message;
    for (i, name) in parents.iter().enumerate() {
        let field = find_field(&current.descriptor(), name)
            .ok_or_else(|| format!("no field `{}`", path[..=i].join(".")))?;
        if field.is_list() || field.is_map() {
            return Err(format!(
                "`{}` is repeated and cannot be traversed",
                path[..=i].join(".")
            ));
        }
        match current.get_field_mut(&field) {
            Value::Message(inner) if !is_scalar_like(&inner.descriptor()) => current = inner,
            _ => return Err(format!("`{}` is not a message", path[..=i].join("."))),
        }
    }
    let field = find_field(&current.descriptor(), last).ok_or_else(|| {
        format!(
            "no field `{}` in {}",
            path.join("."),
            current.descriptor().name()
        )
    })?;
    if field.is_map() {
        return Err("map fields cannot be set from the path or query".into());
    }
    let value = parse_scalar(&field, raw)?;
    if field.is_list() {
        if let Value::List(list) = current.get_field_mut(&field) {
            list.push(value);
        }
    } else if again {
        // A field mask may come as several parameters, each adding paths.
        match (current.get_field_mut(&field), value) {
            (Value::Message(mask), Value::Message(more))
                if mask.descriptor().full_name() == "google.protobuf.FieldMask" =>
            {
                if let (Some(Value::List(paths)), Some(Value::List(extra))) = (
                    mask.get_field_by_name_mut("paths"),
                    more.get_field_by_name("paths").map(|v| v.into_owned()),
                ) {
                    paths.extend(extra);
                }
            }
            _ => return Err("given more than once, but the field is not repeated".into()),
        }
    } else {
        current.set_field(&field, value);
    }
    Ok(())
}

fn find_field(message: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    message
        .get_field_by_name(name)
        .or_else(|| message.get_field_by_json_name(name))
}

/// Parses one path or query value as a (singular) value of `field`'s type.
fn parse_scalar(field: &FieldDescriptor, raw: &str) -> Result<Value, String> {
    fn num<T: std::str::FromStr>(raw: &str, what: &str) -> Result<T, String> {
        raw.trim()
            .parse()
            .map_err(|_| format!("`{raw}` is not {what}"))
    }
    Ok(match field.kind() {
        Kind::String => Value::String(raw.to_owned()),
        Kind::Bool => Value::Bool(match raw {
            "true" => true,
            "false" => false,
            _ => return Err(format!("`{raw}` is not true or false")),
        }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(num(raw, "a 32-bit integer")?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(num(raw, "a 64-bit integer")?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(num(raw, "an unsigned 32-bit integer")?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(num(raw, "an unsigned 64-bit integer")?),
        Kind::Float => Value::F32(num(raw, "a number")?),
        Kind::Double => Value::F64(num(raw, "a number")?),
        Kind::Bytes => {
            let engines = [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::URL_SAFE,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                &base64::engine::general_purpose::STANDARD_NO_PAD,
            ];
            let bytes = engines
                .iter()
                .find_map(|engine| engine.decode(raw).ok())
                .ok_or_else(|| format!("`{raw}` is not base64"))?;
            Value::Bytes(bytes.into())
        }
        Kind::Enum(enumeration) => {
            match enumeration.get_value_by_name(raw) {
                Some(value) => Value::EnumNumber(value.number()),
                None => Value::EnumNumber(raw.parse().map_err(|_| {
                    format!("`{raw}` is not a value of {}", enumeration.full_name())
                })?),
            }
        }
        Kind::Message(message) if message.full_name() == "google.protobuf.FieldMask" => {
            Value::Message(field_mask(message, raw)?)
        }
        Kind::Message(message) if is_scalar_like(&message) => {
            let json = match message.full_name() {
                "google.protobuf.BoolValue" => match raw {
                    "true" => serde_json::Value::Bool(true),
                    "false" => serde_json::Value::Bool(false),
                    _ => return Err(format!("`{raw}` is not true or false")),
                },
                _ => serde_json::Value::String(raw.to_owned()),
            };
            let value = DynamicMessage::deserialize(message.clone(), json)
                .map_err(|e| format!("`{raw}` is not a valid {}: {e}", message.name()))?;
            Value::Message(value)
        }
        Kind::Message(message) => {
            return Err(format!(
                "is a {} message; set its fields with dotted names",
                message.name()
            ));
        }
    })
}

/// A `FieldMask` from a query or path value: comma-separated paths in the JSON form
/// (`displayName`) or as field names (`display_name`), as grpc-gateway accepts both.
fn field_mask(descriptor: MessageDescriptor, raw: &str) -> Result<DynamicMessage, String> {
    let paths: Vec<Value> = raw
        .split(',')
        .map(str::trim)
        .filter(|path| !path.is_empty())
        .map(|path| {
            if !path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
            {
                return Err(format!("`{path}` is not a field path"));
            }
            let mut snake = String::with_capacity(path.len() + 4);
            for c in path.chars() {
                if c.is_ascii_uppercase() {
                    snake.push('_');
                    snake.push(c.to_ascii_lowercase());
                } else {
                    snake.push(c);
                }
            }
            Ok(Value::String(snake))
        })
        .collect::<Result<_, _>>()?;
    let mut mask = DynamicMessage::new(descriptor);
    mask.set_field_by_name("paths", Value::List(paths));
    Ok(mask)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{route::Match, table::RouteTable};
    use weft_mesh::MeshConfig;

    fn request(
        method: &str,
        path: &str,
        query: Option<&str>,
        body: &str,
    ) -> Result<DynamicMessage, BadRequest> {
        let table = crate::test_support::weft_table();
        let Ok(Match::Found {
            value, bindings, ..
        }) = table.router.match_path(method, path)
        else {
            panic!("{method} {path} must match");
        };
        build_request(value, bindings, query, body.as_bytes(), 64)
    }

    fn json(message: &DynamicMessage) -> serde_json::Value {
        let options = SerializeOptions::new().skip_default_fields(false);
        let mut out = Vec::new();
        message
            .serialize_with_options(&mut serde_json::Serializer::new(&mut out), &options)
            .unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn path_variables_fill_fields() {
        let message = request("GET", "/v1/products/p%201", None, "").unwrap();
        assert_eq!(json(&message)["id"], "p 1");
    }

    #[test]
    fn nested_path_variables_body_field_and_update_mask_from_query() {
        let message = request(
            "PATCH",
            "/v1/users/u1",
            Some("updateMask=displayName"),
            r#"{"display_name":"Ada"}"#,
        )
        .unwrap();
        let json = json(&message);
        assert_eq!(json["user"]["id"], "u1");
        assert_eq!(json["user"]["displayName"], "Ada");
        assert_eq!(json["updateMask"], "displayName");
    }

    #[test]
    fn update_masks_take_json_or_field_names() {
        for query in [
            "updateMask=displayName,role",
            "update_mask=display_name,role",
            "updateMask=displayName&updateMask=role",
        ] {
            let message = request("PATCH", "/v1/users/u1", Some(query), "{}").unwrap();
            assert_eq!(json(&message)["updateMask"], "displayName,role", "{query}");
        }
        let err = request("PATCH", "/v1/users/u1", Some("updateMask=a%20b"), "{}").unwrap_err();
        assert!(err.to_string().contains("not a field path"), "{err}");
    }

    #[test]
    fn camel_and_snake_case_bodies_are_both_accepted_and_int64_as_string_or_number() {
        for body in [
            r#"{"idempotencyKey":"k","items":[{"productId":"p","quantity":"2"}]}"#,
            r#"{"idempotency_key":"k","items":[{"product_id":"p","quantity":2}]}"#,
        ] {
            let json = json(&request("POST", "/v1/orders", None, body).unwrap());
            assert_eq!(json["idempotencyKey"], "k");
            assert_eq!(json["items"][0]["quantity"], "2");
        }
    }

    #[test]
    fn query_parameters_fill_fields_and_unknown_ones_are_refused() {
        let json =
            json(&request("GET", "/v1/products", Some("page_size=2&pageToken=abc"), "").unwrap());
        assert_eq!(
            (json["pageSize"].as_i64(), json["pageToken"].as_str()),
            (Some(2), Some("abc"))
        );

        let err = request("GET", "/v1/products", Some("nope=1"), "").unwrap_err();
        assert!(
            matches!(&err, BadRequest::Query { name, .. } if name == "nope"),
            "{err}"
        );
        let err = request("GET", "/v1/products", Some("pageSize=two"), "").unwrap_err();
        assert!(err.to_string().contains("pageSize"), "{err}");
        let err = request("GET", "/v1/products", Some("pageSize=1&pageSize=2"), "").unwrap_err();
        assert!(err.to_string().contains("more than once"), "{err}");
    }

    #[test]
    fn bad_bodies_are_bad_requests() {
        for body in [
            "{",
            r#"{"email":"a@b.c"} trailing"#,
            r#"{"email":5}"#,
            r#"{"unknownField":1}"#,
            "[]",
        ] {
            let err = request("POST", "/v1/auth/login", None, body).unwrap_err();
            assert!(matches!(err, BadRequest::Body(_)), "{body}: {err}");
        }
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        let err = request("POST", "/v1/auth/login", None, &deep).unwrap_err();
        assert_eq!(err, BadRequest::TooDeep(64));
    }

    #[test]
    fn depth_counting_ignores_brackets_in_strings() {
        let body = format!(r#"{{"email":"{}"}}"#, "[".repeat(500));
        assert!(check_depth(body.as_bytes(), 2).is_ok());
        assert!(check_depth(br#"{"a":{"b":{}}}"#, 2).is_err());
    }

    /// prost-reflect's rendering, which [`write_message`] must match byte for byte (`None`
    /// when it refuses the message, e.g. a Duration out of range: then so must we).
    fn reference(message: &DynamicMessage) -> Option<String> {
        let options = SerializeOptions::new().skip_default_fields(false);
        let mut out = Vec::new();
        message
            .serialize_with_options(&mut serde_json::Serializer::new(&mut out), &options)
            .ok()?;
        Some(String::from_utf8(out).unwrap())
    }

    fn fast(message: &DynamicMessage) -> Option<String> {
        let mut out = Vec::new();
        write_message(&mut out, message).ok()?;
        Some(String::from_utf8(out).unwrap())
    }

    /// JSON text as a value with every `null` member removed: prost-reflect leaves unset
    /// message fields out where the gateway writes `null`, and that is the only difference.
    fn without_nulls(text: &str) -> serde_json::Value {
        fn strip(value: &mut serde_json::Value) {
            match value {
                serde_json::Value::Object(map) => {
                    map.retain(|_, v| !v.is_null());
                    map.values_mut().for_each(strip);
                }
                serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
                _ => {}
            }
        }
        let mut value = serde_json::from_str(text).expect("valid JSON");
        strip(&mut value);
        value
    }

    /// Compares the gateway's rendering with prost-reflect's, nulls aside.
    fn same_json(got: Option<String>, want: Option<String>) -> bool {
        match (got, want) {
            (Some(got), Some(want)) => without_nulls(&got) == without_nulls(&want),
            (got, want) => got == want,
        }
    }

    /// A proto3 message with a field of every kind: scalars, enum, nested and recursive
    /// messages, well-known types, repeated fields, maps, a oneof and a proto3 `optional`.
    pub(crate) fn kitchen_sink() -> MessageDescriptor {
        use prost_reflect::{
            DescriptorPool,
            prost_types::{
                DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto,
                FieldDescriptorProto, FileDescriptorProto, MessageOptions, OneofDescriptorProto,
                field_descriptor_proto::{Label, Type},
            },
        };
        let field = |name: &str, number: i32, ty: Type, type_name: &str| FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(number),
            r#type: Some(ty as i32),
            label: Some(Label::Optional as i32),
            type_name: (!type_name.is_empty()).then(|| type_name.into()),
            ..Default::default()
        };
        let repeated = |f: FieldDescriptorProto| FieldDescriptorProto {
            label: Some(Label::Repeated as i32),
            ..f
        };
        let in_oneof = |f: FieldDescriptorProto, index: i32| FieldDescriptorProto {
            oneof_index: Some(index),
            ..f
        };
        let entry = |name: &str, key: Type, value: Type, value_type: &str| DescriptorProto {
            name: Some(name.into()),
            field: vec![
                field("key", 1, key, ""),
                field("value", 2, value, value_type),
            ],
            options: Some(MessageOptions {
                map_entry: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sink = DescriptorProto {
            name: Some("Sink".into()),
            field: vec![
                field("f_double", 1, Type::Double, ""),
                field("f_float", 2, Type::Float, ""),
                field("f_int64", 3, Type::Int64, ""),
                field("f_uint64", 4, Type::Uint64, ""),
                field("f_int32", 5, Type::Int32, ""),
                field("f_fixed64", 6, Type::Fixed64, ""),
                field("f_fixed32", 7, Type::Fixed32, ""),
                field("f_bool", 8, Type::Bool, ""),
                field("f_string", 9, Type::String, ""),
                field("f_bytes", 10, Type::Bytes, ""),
                field("f_uint32", 11, Type::Uint32, ""),
                field("f_enum", 12, Type::Enum, ".t.Color"),
                field("f_sfixed32", 13, Type::Sfixed32, ""),
                field("f_sfixed64", 14, Type::Sfixed64, ""),
                field("f_sint32", 15, Type::Sint32, ""),
                field("f_sint64", 16, Type::Sint64, ""),
                field("f_time", 17, Type::Message, ".google.protobuf.Timestamp"),
                field("f_child", 18, Type::Message, ".t.Sink"),
                repeated(field("r_int64", 19, Type::Int64, "")),
                repeated(field("r_string", 20, Type::String, "")),
                repeated(field("r_child", 21, Type::Message, ".t.Sink")),
                repeated(field(
                    "m_str_int",
                    22,
                    Type::Message,
                    ".t.Sink.MStrIntEntry",
                )),
                repeated(field(
                    "m_int_child",
                    23,
                    Type::Message,
                    ".t.Sink.MIntChildEntry",
                )),
                repeated(field(
                    "m_bool_enum",
                    24,
                    Type::Message,
                    ".t.Sink.MBoolEnumEntry",
                )),
                field("f_duration", 25, Type::Message, ".google.protobuf.Duration"),
                field(
                    "f_wrapper",
                    26,
                    Type::Message,
                    ".google.protobuf.Int64Value",
                ),
                in_oneof(field("o_string", 27, Type::String, ""), 0),
                in_oneof(field("o_int", 28, Type::Int32, ""), 0),
                FieldDescriptorProto {
                    proto3_optional: Some(true),
                    ..in_oneof(field("p_int", 29, Type::Int32, ""), 1)
                },
                repeated(field(
                    "r_time",
                    30,
                    Type::Message,
                    ".google.protobuf.Timestamp",
                )),
                field("f_null", 31, Type::Enum, ".google.protobuf.NullValue"),
                repeated(field("m_u64", 32, Type::Message, ".t.Sink.MU64Entry")),
                repeated(field("r_float", 33, Type::Float, "")),
            ],
            nested_type: vec![
                entry("MStrIntEntry", Type::String, Type::Int64, ""),
                entry("MIntChildEntry", Type::Int32, Type::Message, ".t.Sink"),
                entry("MBoolEnumEntry", Type::Bool, Type::Enum, ".t.Color"),
                entry("MU64Entry", Type::Uint64, Type::String, ""),
            ],
            oneof_decl: vec![
                OneofDescriptorProto {
                    name: Some("choice".into()),
                    ..Default::default()
                },
                OneofDescriptorProto {
                    name: Some("_p_int".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let color = EnumDescriptorProto {
            name: Some("Color".into()),
            value: ["COLOR_UNSPECIFIED", "RED", "GREEN"]
                .iter()
                .enumerate()
                .map(|(n, name)| EnumValueDescriptorProto {
                    name: Some((*name).into()),
                    number: Some(n as i32),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let file = FileDescriptorProto {
            name: Some("t/sink.proto".into()),
            package: Some("t".into()),
            syntax: Some("proto3".into()),
            dependency: [
                "google/protobuf/timestamp.proto",
                "google/protobuf/duration.proto",
                "google/protobuf/wrappers.proto",
                "google/protobuf/struct.proto",
            ]
            .map(String::from)
            .to_vec(),
            message_type: vec![sink],
            enum_type: vec![color],
            ..Default::default()
        };
        let mut pool = DescriptorPool::global();
        pool.add_file_descriptor_proto(file).unwrap();
        pool.get_message_by_name("t.Sink").unwrap()
    }

    /// A small deterministic generator (no dependency for a test).
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<T: Copy>(&mut self, from: &[T]) -> T {
            from[(self.next() % from.len() as u64) as usize]
        }
    }

    /// A value for one (non-list, non-map) field of `kind`, often the edge cases.
    fn random_value(rng: &mut Rng, kind: &Kind, depth: usize) -> Value {
        let wide = rng.next();
        match kind {
            Kind::Double => Value::F64(rng.pick(&[
                0.0,
                -0.0,
                1.5,
                -2e-300,
                1e300,
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                wide as f64 / 7.0,
            ])),
            Kind::Float => Value::F32(rng.pick(&[
                0.0,
                0.1,
                -3.25,
                f32::MAX,
                f32::NAN,
                f32::NEG_INFINITY,
                wide as f32 / 3.0,
            ])),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                Value::I64(rng.pick(&[0, -1, i64::MIN, i64::MAX, wide as i64]))
            }
            Kind::Uint64 | Kind::Fixed64 => Value::U64(rng.pick(&[0, u64::MAX, wide])),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                Value::I32(rng.pick(&[0, -7, i32::MIN, i32::MAX, wide as i32]))
            }
            Kind::Uint32 | Kind::Fixed32 => Value::U32(rng.pick(&[0, u32::MAX, wide as u32])),
            Kind::Bool => Value::Bool(wide.is_multiple_of(2)),
            Kind::String => Value::String(
                rng.pick(&[
                    "",
                    "plain",
                    "quote \" back \\ slash",
                    "ctl \u{1}\n\t",
                    "ünï ✓ 😀",
                ])
                .to_owned(),
            ),
            Kind::Bytes => Value::Bytes(wide.to_le_bytes()[..(wide % 9) as usize].to_vec().into()),
            Kind::Enum(e) => match e.full_name() {
                "google.protobuf.NullValue" => Value::EnumNumber(0),
                _ => Value::EnumNumber(rng.pick(&[0, 1, 2, 77])),
            },
            Kind::Message(m) => Value::Message(random_message(rng, m, depth + 1)),
        }
    }

    pub(crate) fn random_message(
        rng: &mut Rng,
        descriptor: &MessageDescriptor,
        depth: usize,
    ) -> DynamicMessage {
        let mut message = DynamicMessage::new(descriptor.clone());
        if descriptor.full_name() == "google.protobuf.Timestamp" {
            let wide = (rng.next() % 315_537_897_600) as i64 - 62_135_596_800;
            let seconds = rng.pick(&[
                0,
                -1,
                -62_135_596_800,
                253_402_300_799,
                951_782_400, // 2000-02-29
                4_107_542_399,
                wide,
            ]);
            let nanos = rng.pick(&[0, 1, 999_999_999, 5_000_000, 123_000, 42]);
            message.set_field_by_number(1, Value::I64(seconds));
            message.set_field_by_number(2, Value::I32(nanos));
            return message;
        }
        if descriptor.full_name() == "google.protobuf.Duration" {
            let seconds = rng.pick(&[0, 1, -90, 315_576_000_000]);
            message.set_field_by_number(1, Value::I64(seconds));
            message.set_field_by_number(2, Value::I32(if seconds < 0 { -5 } else { 5_000 }));
            return message;
        }
        for field in descriptor.fields() {
            // Leave about a third unset; nest only so deep.
            if rng.next().is_multiple_of(3)
                || (depth > 2 && matches!(field.kind(), Kind::Message(_)))
            {
                continue;
            }
            let kind = field.kind();
            let value = if field.is_map() {
                let Kind::Message(entry) = &kind else {
                    unreachable!()
                };
                let (key_kind, value_kind) = (
                    entry.map_entry_key_field().kind(),
                    entry.map_entry_value_field().kind(),
                );
                let mut map = std::collections::HashMap::new();
                for _ in 0..rng.next() % 3 {
                    if let Some(key) = random_value(rng, &key_kind, depth).into_map_key() {
                        map.insert(key, random_value(rng, &value_kind, depth));
                    }
                }
                Value::Map(map)
            } else if field.is_list() {
                let n = rng.next() % 4;
                Value::List((0..n).map(|_| random_value(rng, &kind, depth)).collect())
            } else {
                random_value(rng, &kind, depth)
            };
            message.set_field(&field, value);
        }
        message
    }

    #[test]
    fn response_json_matches_prost_reflect_for_every_kind_of_field() {
        let sink = kitchen_sink();
        // Every field at its default, then many random messages.
        let empty = DynamicMessage::new(sink.clone());
        assert!(same_json(fast(&empty), reference(&empty)));
        assert!(fast(&empty).is_some());
        let mut rng = Rng(0x5eed_cafe_f00d_0001);
        let mut rendered = 0;
        for _ in 0..2_000 {
            let message = random_message(&mut rng, &sink, 0);
            let (got, want) = (fast(&message), reference(&message));
            rendered += usize::from(want.is_some());
            assert!(same_json(got, want), "{message:?}");
        }
        assert_eq!(
            rendered, 2_000,
            "every generated message is valid JSON material"
        );
    }

    #[test]
    fn response_json_matches_prost_reflect_for_every_weft_response() {
        let table = crate::test_support::weft_table();
        let mut rng = Rng(0x0dd_ba11_0002);
        for service in table.pools[0].services() {
            for method in service.methods() {
                for _ in 0..50 {
                    let message = random_message(&mut rng, &method.output(), 0);
                    let want = reference(&message);
                    assert!(want.is_some(), "{}", method.full_name());
                    assert!(same_json(fast(&message), want), "{}", method.full_name());
                }
            }
        }
    }

    #[test]
    fn out_of_range_timestamps_are_left_to_prost_reflect() {
        let mut rng = Rng(3);
        let mut message = random_message(&mut rng, &kitchen_sink(), 0);
        let time = prost_reflect::DescriptorPool::global()
            .get_message_by_name("google.protobuf.Timestamp")
            .unwrap();
        for (seconds, nanos) in [
            (-62_135_596_801, 0),
            (253_402_300_800, 0),
            (0, -1),
            (0, 1_000_000_000),
        ] {
            let mut t = DynamicMessage::new(time.clone());
            t.set_field_by_number(1, Value::I64(seconds));
            t.set_field_by_number(2, Value::I32(nanos));
            assert!(timestamp_text(&t).is_none(), "{seconds} {nanos}");
            message.set_field_by_number(17, Value::Message(t));
            assert!(
                same_json(fast(&message), reference(&message)),
                "{seconds} {nanos}"
            );
        }
    }

    #[test]
    fn unset_message_and_optional_fields_are_null_and_unset_oneof_members_absent() {
        let sink = kitchen_sink();
        let json: serde_json::Value =
            serde_json::from_str(&fast(&DynamicMessage::new(sink.clone())).unwrap()).unwrap();
        let object = json.as_object().unwrap();
        for field in sink.fields() {
            let oneof = field.containing_oneof();
            let present = object.get(field.json_name());
            match oneof {
                Some(oneof) if !oneof.is_synthetic() => {
                    assert!(present.is_none(), "{} is a oneof member", field.name())
                }
                _ if field.supports_presence() => {
                    assert_eq!(present, Some(&serde_json::Value::Null), "{}", field.name())
                }
                // google.protobuf.NullValue is `null` by definition.
                _ if matches!(field.kind(), Kind::Enum(e) if e.full_name() == "google.protobuf.NullValue") =>
                {
                    assert!(present.is_some(), "{}", field.name())
                }
                _ => assert!(present.is_some_and(|v| !v.is_null()), "{}", field.name()),
            }
        }
    }

    #[test]
    fn responses_emit_defaults_int64_as_strings_and_enums_as_names() {
        let table = crate::test_support::weft_table();
        let Ok(Match::Found {
            value: endpoint, ..
        }) = table.router.match_path("GET", "/v1/products/x")
        else {
            panic!()
        };
        let product = DynamicMessage::new(endpoint.method.output());
        let body: serde_json::Value =
            serde_json::from_slice(&render_response(endpoint.response_body.as_ref(), &product))
                .unwrap();
        assert_eq!(body["stock"], "0");
        assert_eq!(body["name"], "");
        assert!(body.get("unitPriceCents").is_some());
    }
}
