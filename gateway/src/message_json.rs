//! A decoded protobuf message -> its JSON answer, in the canonical proto3 JSON mapping.
//!
//! Answers are written with every field present, defaults included (grpc-gateway's
//! `EmitUnpopulated`), int64 as strings and enums as names. This is the reference writer:
//! `wire_json` writes most replies straight from their bytes, must produce the same JSON, and
//! falls back to [`render_response`] (or, for well-known types, [`write_message`]) when the
//! bytes leave room for doubt. prost-reflect's serializer stays the writer of well-known types
//! other than `Timestamp` and of messages with extensions.

use base64::Engine as _;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, ReflectMessage, SerializeOptions, Value,
};

/// Renders a response message (or its `response_body` field) as the JSON body. Replies are
/// written from their bytes by `wire_json`, which falls back to this.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        route::Match,
        test_messages::{Rng, kitchen_sink, random_message},
    };

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
