//! An upstream's reply bytes -> the JSON answer, without decoding into a `DynamicMessage`.
//!
//! # Why
//!
//! The gateway used to decode every reply into a prost-reflect `DynamicMessage` (a map of
//! boxed values, allocated field by field), write the JSON from it, and drop it: about 19,000
//! instructions of the 122,000 the gateway spent on a `GET /v1/products/{id}` (callgrind).
//! The JSON is a function of the bytes and the descriptor alone. A [`ReplyWriter`], made once
//! per route at start, holds a [`Layout`] of each message type the reply can contain (JSON
//! keys escaped, enum names, the JSON of absent fields); writing a reply is then one pass
//! over its bytes per message.
//!
//! # The same JSON as [`message_json::render_response`], or none
//!
//! The answer must be what the decoded message renders to (tests compare the two on random
//! messages of every field kind). Where the bytes leave room for doubt (a wire type that does
//! not fit the field, invalid UTF-8, a message field sent twice, which protobuf merges, more
//! nesting than [`MAX_DEPTH`], a `Timestamp` out of JSON's range, a message with extensions,
//! a large map) this writer gives up and [`ReplyWriter::write`] decodes the message as before,
//! with its errors. Well-known types other than `Timestamp` are decoded on their own and
//! written by `message_json`, as before.

use std::sync::Arc;

use base64::Engine as _;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

use crate::message_json;

/// Nesting deeper than this is left to prost-reflect (whose decoder stops at 100 levels).
const MAX_DEPTH: usize = 64;
/// Maps with more entries than this are left to prost-reflect (duplicate keys are found by
/// comparing every pair).
const MAX_MAP_ENTRIES: usize = 64;

// === ReplyWriter ===

/// Writes the JSON answer of one route from its upstream's reply bytes.
#[derive(Debug)]
pub struct ReplyWriter {
    output: MessageDescriptor,
    response_body: Option<FieldDescriptor>,
    layouts: Arc<[Layout]>,
}

impl ReplyWriter {
    /// The writer of replies of type `output`, answering `response_body` when set.
    pub fn new(output: MessageDescriptor, response_body: Option<FieldDescriptor>) -> Self {
        let layouts = Layouts::build(&output);
        Self {
            output,
            response_body,
            layouts: layouts.into(),
        }
    }

    /// The JSON body for the reply `bytes`; an error when they are not a valid message.
    pub fn write(&self, bytes: &[u8]) -> Result<Vec<u8>, prost::DecodeError> {
        if self.response_body.is_none() {
            // A product's JSON is about twice its protobuf size.
            let mut out = Vec::with_capacity(bytes.len() * 2 + 64);
            let writer = Writer {
                layouts: &self.layouts,
            };
            if writer.message(0, bytes, &mut out, 0).is_some() {
                return Ok(out);
            }
        }
        let message = DynamicMessage::decode(self.output.clone(), bytes)?;
        Ok(message_json::render_response(
            self.response_body.as_ref(),
            &message,
        ))
    }
}

// === Layout ===

/// What the writer knows of one message type.
#[derive(Debug)]
struct Layout {
    descriptor: MessageDescriptor,
    form: Form,
    /// In the order `message_json` writes them (the descriptor's).
    fields: Vec<FieldLayout>,
    /// (field number, index in `fields`), sorted by number.
    by_number: Vec<(u32, usize)>,
    /// Real (not synthetic) oneofs.
    oneofs: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Form {
    /// Written field by field here.
    Fields,
    /// `google.protobuf.Timestamp`: an RFC 3339 string.
    Timestamp,
    /// Another well-known type: decoded and written by `message_json`.
    Decoded,
    /// A message with extensions: the whole reply is decoded.
    Unsupported,
}

#[derive(Debug)]
struct FieldLayout {
    /// `"jsonName":`.
    key: Box<[u8]>,
    kind: FieldKind,
    repeated: bool,
    /// Unset is written `null` (message fields, `optional`, oneof members).
    presence: bool,
    /// Index of its real oneof: unset members are left out.
    oneof: Option<usize>,
    /// The JSON of the field when absent from the bytes and without presence.
    absent: Box<[u8]>,
}

#[derive(Debug)]
enum FieldKind {
    Scalar(Scalar),
    /// Index of the message's layout.
    Message(usize),
    /// A map: key scalar, value kind, and the JSON of a missing value.
    Map {
        key: Scalar,
        value: Box<FieldKind>,
        absent_value: Box<[u8]>,
    },
}

#[derive(Debug)]
enum Scalar {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
    Enum(EnumNames),
}

/// An enum's values as JSON strings, by number; `google.protobuf.NullValue` is `null`.
#[derive(Debug)]
struct EnumNames {
    null_value: bool,
    names: Vec<(i32, Box<[u8]>)>,
}

impl Scalar {
    fn of(kind: &Kind) -> Option<Self> {
        Some(match kind {
            Kind::Double => Self::Double,
            Kind::Float => Self::Float,
            Kind::Int32 => Self::Int32,
            Kind::Int64 => Self::Int64,
            Kind::Uint32 => Self::Uint32,
            Kind::Uint64 => Self::Uint64,
            Kind::Sint32 => Self::Sint32,
            Kind::Sint64 => Self::Sint64,
            Kind::Fixed32 => Self::Fixed32,
            Kind::Fixed64 => Self::Fixed64,
            Kind::Sfixed32 => Self::Sfixed32,
            Kind::Sfixed64 => Self::Sfixed64,
            Kind::Bool => Self::Bool,
            Kind::String => Self::String,
            Kind::Bytes => Self::Bytes,
            Kind::Enum(e) => {
                let mut names: Vec<(i32, Box<[u8]>)> = e
                    .values()
                    .map(|v| (v.number(), json_string(v.name())))
                    .collect();
                names.sort_by_key(|(number, _)| *number);
                // Aliases: the first value declared with a number names it.
                names.dedup_by_key(|(number, _)| *number);
                let first = |number: i32| e.get_value(number).map(|v| json_string(v.name()));
                for (number, name) in &mut names {
                    if let Some(first) = first(*number) {
                        *name = first;
                    }
                }
                Self::Enum(EnumNames {
                    null_value: e.full_name() == "google.protobuf.NullValue",
                    names,
                })
            }
            Kind::Message(_) => return None,
        })
    }

    /// The wire type of one value.
    fn wire_type(&self) -> u8 {
        match self {
            Self::Double | Self::Fixed64 | Self::Sfixed64 => WIRE_FIXED64,
            Self::Float | Self::Fixed32 | Self::Sfixed32 => WIRE_FIXED32,
            Self::String | Self::Bytes => WIRE_LEN,
            _ => WIRE_VARINT,
        }
    }
}

/// Builds the layouts of a message type and of every type reachable from it.
struct Layouts {
    layouts: Vec<Layout>,
}

impl Layouts {
    /// `root`'s layout first.
    fn build(root: &MessageDescriptor) -> Vec<Layout> {
        let mut this = Self {
            layouts: Vec::new(),
        };
        this.index_of(root);
        this.layouts
    }

    fn index_of(&mut self, descriptor: &MessageDescriptor) -> usize {
        if let Some(at) = self
            .layouts
            .iter()
            .position(|l| &l.descriptor == descriptor)
        {
            return at;
        }
        let at = self.layouts.len();
        let name = descriptor.full_name();
        let form = if name == "google.protobuf.Timestamp" {
            Form::Timestamp
        } else if name.starts_with("google.protobuf.") {
            Form::Decoded
        } else if descriptor.extensions().next().is_some() {
            Form::Unsupported
        } else {
            Form::Fields
        };
        self.layouts.push(Layout {
            descriptor: descriptor.clone(),
            form,
            fields: Vec::new(),
            by_number: Vec::new(),
            oneofs: descriptor.oneofs().filter(|o| !o.is_synthetic()).count(),
        });
        if form != Form::Fields {
            return at;
        }
        let oneofs: Vec<_> = descriptor.oneofs().filter(|o| !o.is_synthetic()).collect();
        let mut fields = Vec::new();
        for field in descriptor.fields() {
            let kind = self.kind_of(&field);
            let absent = if field.is_list() {
                b"[]".to_vec().into_boxed_slice()
            } else if field.is_map() {
                b"{}".to_vec().into_boxed_slice()
            } else {
                rendered(&field.default_value(), &field.kind())
            };
            fields.push(FieldLayout {
                key: {
                    let mut key = json_string(field.json_name()).into_vec();
                    key.push(b':');
                    key.into_boxed_slice()
                },
                kind,
                repeated: field.is_list(),
                presence: field.supports_presence(),
                oneof: field
                    .containing_oneof()
                    .and_then(|o| oneofs.iter().position(|r| *r == o)),
                absent,
            });
        }
        let mut by_number: Vec<(u32, usize)> = descriptor
            .fields()
            .enumerate()
            .map(|(i, f)| (f.number(), i))
            .collect();
        by_number.sort_unstable();
        let layout = &mut self.layouts[at];
        layout.fields = fields;
        layout.by_number = by_number;
        at
    }

    fn kind_of(&mut self, field: &FieldDescriptor) -> FieldKind {
        match field.kind() {
            Kind::Message(entry) if field.is_map() => {
                let key_field = entry.map_entry_key_field();
                let value_field = entry.map_entry_value_field();
                let key = Scalar::of(&key_field.kind()).unwrap_or(Scalar::String);
                let absent_value = match value_field.kind() {
                    Kind::Message(m) => rendered(
                        &Value::Message(DynamicMessage::new(m.clone())),
                        &value_field.kind(),
                    ),
                    kind => rendered(&value_field.default_value(), &kind),
                };
                FieldKind::Map {
                    key,
                    value: Box::new(self.kind_of(&value_field)),
                    absent_value,
                }
            }
            Kind::Message(message) => FieldKind::Message(self.index_of(&message)),
            kind => FieldKind::Scalar(Scalar::of(&kind).unwrap_or(Scalar::Bytes)),
        }
    }
}

/// `value` as `message_json` writes it; `null` if it cannot.
fn rendered(value: &Value, kind: &Kind) -> Box<[u8]> {
    let mut out = Vec::new();
    if message_json::write_value(&mut out, value, kind).is_err() {
        out = b"null".to_vec();
    }
    out.into_boxed_slice()
}

fn json_string(text: &str) -> Box<[u8]> {
    let mut out = Vec::new();
    message_json::write_str(&mut out, text);
    out.into_boxed_slice()
}

// === the wire ===

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

/// One value as the wire carries it.
#[derive(Debug, Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
}

impl Wire<'_> {
    fn wire_type(&self) -> u8 {
        match self {
            Self::Varint(_) => WIRE_VARINT,
            Self::Fixed64(_) => WIRE_FIXED64,
            Self::Fixed32(_) => WIRE_FIXED32,
            Self::Len(_) => WIRE_LEN,
        }
    }
}

/// Reads fields off a message's bytes; `None` on anything malformed.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for (i, byte) in self.bytes.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.bytes = &self.bytes[i + 1..];
                return Some(value);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    /// The next field: its number and value.
    fn field(&mut self) -> Option<(u32, Wire<'a>)> {
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).ok().filter(|n| *n > 0)?;
        let value = match (key & 7) as u8 {
            WIRE_VARINT => Wire::Varint(self.varint()?),
            WIRE_FIXED64 => Wire::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            WIRE_LEN => {
                let len = usize::try_from(self.varint()?).ok()?;
                Wire::Len(self.take(len)?)
            }
            WIRE_FIXED32 => Wire::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().ok()?)),
            // Groups (3, 4) and invalid wire types.
            _ => return None,
        };
        Some((number, value))
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

// === Writer ===

struct Writer<'l> {
    layouts: &'l [Layout],
}

impl Writer<'_> {
    /// Writes the message of layout `at` held in `bytes`.
    fn message(&self, at: usize, bytes: &[u8], out: &mut Vec<u8>, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        let layout = &self.layouts[at];
        match layout.form {
            Form::Fields => self.fields(layout, bytes, out, depth),
            Form::Timestamp => timestamp(bytes, out),
            Form::Decoded => {
                let message = DynamicMessage::decode(layout.descriptor.clone(), bytes).ok()?;
                message_json::write_message(out, &message).ok()
            }
            Form::Unsupported => None,
        }
    }

    fn fields(&self, layout: &Layout, bytes: &[u8], out: &mut Vec<u8>, depth: usize) -> Option<()> {
        // The fields present, in the order of the bytes: (index in `layout.fields`, value).
        let mut present: Vec<(usize, Wire<'_>)> = Vec::with_capacity(layout.fields.len());
        // Per real oneof, the member set last.
        let mut oneof_members = vec![usize::MAX; layout.oneofs];
        let mut reader = Reader { bytes };
        while !reader.is_empty() {
            let (number, value) = reader.field()?;
            let Ok(at) = layout.by_number.binary_search_by_key(&number, |(n, _)| *n) else {
                // Unknown fields have no JSON.
                continue;
            };
            let index = layout.by_number[at].1;
            let field = &layout.fields[index];
            let fits = match &field.kind {
                FieldKind::Scalar(scalar) => {
                    value.wire_type() == scalar.wire_type()
                        || (field.repeated && value.wire_type() == WIRE_LEN)
                }
                FieldKind::Message(_) | FieldKind::Map { .. } => value.wire_type() == WIRE_LEN,
            };
            if !fits {
                return None;
            }
            if matches!(field.kind, FieldKind::Message(_))
                && !field.repeated
                && present.iter().any(|(i, _)| *i == index)
            {
                // A second part of a message to merge into the first.
                return None;
            }
            if let Some(oneof) = field.oneof {
                oneof_members[oneof] = index;
            }
            present.push((index, value));
        }

        // By field, each field's values still in the order of the bytes (a stable sort).
        present.sort_by_key(|(index, _)| *index);
        let mut next = 0;
        out.push(b'{');
        let mut first = true;
        for (index, field) in layout.fields.iter().enumerate() {
            let start = next;
            while next < present.len() && present[next].0 == index {
                next += 1;
            }
            if field
                .oneof
                .is_some_and(|oneof| oneof_members[oneof] != index)
            {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&field.key);
            let mut values = present[start..next].iter().map(|(_, v)| *v);
            if let FieldKind::Map {
                key,
                value,
                absent_value,
            } = &field.kind
            {
                self.map(key, value, absent_value, values, out, depth)?;
            } else if field.repeated {
                out.push(b'[');
                let mut first = true;
                for wire in values {
                    self.list_values(&field.kind, wire, &mut first, out, depth)?;
                }
                out.push(b']');
            } else {
                match values.next_back() {
                    Some(wire) => self.value(&field.kind, wire, out, depth)?,
                    None if field.presence => out.extend_from_slice(b"null"),
                    None => out.extend_from_slice(&field.absent),
                }
            }
        }
        out.push(b'}');
        Some(())
    }

    /// Writes the elements of a repeated field carried by `wire`: one, or a packed run.
    fn list_values(
        &self,
        kind: &FieldKind,
        wire: Wire<'_>,
        first: &mut bool,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Option<()> {
        let mut element = |wire: Wire<'_>, out: &mut Vec<u8>| {
            if !std::mem::take(first) {
                out.push(b',');
            }
            self.value(kind, wire, out, depth)
        };
        match (kind, wire) {
            (FieldKind::Scalar(scalar), Wire::Len(packed)) if scalar.wire_type() != WIRE_LEN => {
                let mut reader = Reader { bytes: packed };
                while !reader.is_empty() {
                    let value = match scalar.wire_type() {
                        WIRE_VARINT => Wire::Varint(reader.varint()?),
                        WIRE_FIXED64 => {
                            Wire::Fixed64(u64::from_le_bytes(reader.take(8)?.try_into().ok()?))
                        }
                        _ => Wire::Fixed32(u32::from_le_bytes(reader.take(4)?.try_into().ok()?)),
                    };
                    element(value, out)?;
                }
                Some(())
            }
            _ => element(wire, out),
        }
    }

    /// Writes a map from its entries, the last of a key winning.
    fn map<'a>(
        &self,
        key: &Scalar,
        value: &FieldKind,
        absent_value: &[u8],
        entries: impl Iterator<Item = Wire<'a>>,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Option<()> {
        let mut parsed: Vec<(Vec<u8>, Option<Wire<'a>>)> = Vec::new();
        for entry in entries {
            let Wire::Len(bytes) = entry else { return None };
            let (mut k, mut v) = (None, None);
            let mut reader = Reader { bytes };
            while !reader.is_empty() {
                match reader.field()? {
                    (1, wire) if wire.wire_type() == key.wire_type() => k = Some(wire),
                    (2, wire) => v = Some(wire),
                    (1, _) => return None,
                    _ => {}
                }
            }
            let mut key_json = Vec::new();
            match k {
                Some(wire) => write_map_key(key, wire, &mut key_json)?,
                // A missing key is the key type's default.
                None => key_json.extend_from_slice(match key {
                    Scalar::String => b"\"\"".as_slice(),
                    Scalar::Bool => b"\"false\"",
                    _ => b"\"0\"",
                }),
            }
            parsed.push((key_json, v));
            if parsed.len() > MAX_MAP_ENTRIES {
                return None;
            }
        }
        out.push(b'{');
        let mut first = true;
        for (i, (key_json, wire)) in parsed.iter().enumerate() {
            if parsed[i + 1..].iter().any(|(later, _)| later == key_json) {
                continue;
            }
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            out.extend_from_slice(key_json);
            out.push(b':');
            match wire {
                Some(wire) => self.value(value, *wire, out, depth)?,
                None => out.extend_from_slice(absent_value),
            }
        }
        out.push(b'}');
        Some(())
    }

    /// Writes one value of `kind`.
    fn value(
        &self,
        kind: &FieldKind,
        wire: Wire<'_>,
        out: &mut Vec<u8>,
        depth: usize,
    ) -> Option<()> {
        match (kind, wire) {
            (FieldKind::Message(at), Wire::Len(bytes)) => self.message(*at, bytes, out, depth + 1),
            (FieldKind::Scalar(scalar), wire) => write_scalar(scalar, wire, out),
            _ => None,
        }
    }
}

fn write_scalar(scalar: &Scalar, wire: Wire<'_>, out: &mut Vec<u8>) -> Option<()> {
    match (scalar, wire) {
        (Scalar::Int32, Wire::Varint(v)) => {
            message_json::write_int(out, i128::from(v as i32), false)
        }
        (Scalar::Int64, Wire::Varint(v)) => {
            message_json::write_int(out, i128::from(v as i64), true)
        }
        (Scalar::Uint32, Wire::Varint(v)) => {
            message_json::write_int(out, i128::from(v as u32), false)
        }
        (Scalar::Uint64, Wire::Varint(v)) => message_json::write_int(out, i128::from(v), true),
        (Scalar::Sint32, Wire::Varint(v)) => {
            let v = v as u32;
            let v = ((v >> 1) as i32) ^ -((v & 1) as i32);
            message_json::write_int(out, i128::from(v), false)
        }
        (Scalar::Sint64, Wire::Varint(v)) => {
            let v = ((v >> 1) as i64) ^ -((v & 1) as i64);
            message_json::write_int(out, i128::from(v), true)
        }
        (Scalar::Bool, Wire::Varint(v)) => {
            out.extend_from_slice(if v != 0 { b"true" } else { b"false" })
        }
        (Scalar::Enum(names), Wire::Varint(v)) => {
            let number = v as i32;
            if names.null_value {
                out.extend_from_slice(b"null");
            } else {
                match names.names.binary_search_by_key(&number, |(n, _)| *n) {
                    Ok(at) => out.extend_from_slice(&names.names[at].1),
                    Err(_) => message_json::write_int(out, i128::from(number), false),
                }
            }
        }
        (Scalar::Fixed32, Wire::Fixed32(v)) => message_json::write_int(out, i128::from(v), false),
        (Scalar::Sfixed32, Wire::Fixed32(v)) => {
            message_json::write_int(out, i128::from(v as i32), false)
        }
        (Scalar::Float, Wire::Fixed32(v)) => {
            let v = f32::from_bits(v);
            if v.is_finite() {
                serde_json::to_writer(&mut *out, &v).ok()?;
            } else {
                message_json::write_non_finite(out, f64::from(v));
            }
        }
        (Scalar::Fixed64, Wire::Fixed64(v)) => message_json::write_int(out, i128::from(v), true),
        (Scalar::Sfixed64, Wire::Fixed64(v)) => {
            message_json::write_int(out, i128::from(v as i64), true)
        }
        (Scalar::Double, Wire::Fixed64(v)) => {
            let v = f64::from_bits(v);
            if v.is_finite() {
                serde_json::to_writer(&mut *out, &v).ok()?;
            } else {
                message_json::write_non_finite(out, v);
            }
        }
        (Scalar::String, Wire::Len(bytes)) => {
            message_json::write_str(out, std::str::from_utf8(bytes).ok()?);
        }
        (Scalar::Bytes, Wire::Len(bytes)) => {
            out.push(b'"');
            let engine = &base64::engine::general_purpose::STANDARD;
            let start = out.len();
            out.resize(start + base64::encoded_len(bytes.len(), true)?, 0);
            let written = engine.encode_slice(bytes, &mut out[start..]).ok()?;
            out.truncate(start + written);
            out.push(b'"');
        }
        _ => return None,
    }
    Some(())
}

/// A map key as proto3 JSON writes it: always a string.
fn write_map_key(key: &Scalar, wire: Wire<'_>, out: &mut Vec<u8>) -> Option<()> {
    match key {
        Scalar::String => {
            let Wire::Len(bytes) = wire else { return None };
            message_json::write_str(out, std::str::from_utf8(bytes).ok()?);
        }
        Scalar::Bool => {
            let Wire::Varint(v) = wire else { return None };
            out.extend_from_slice(if v != 0 { b"\"true\"" } else { b"\"false\"" });
        }
        _ => {
            let mut number = Vec::new();
            write_scalar(key, wire, &mut number)?;
            if number.first() != Some(&b'"') {
                out.push(b'"');
                out.extend_from_slice(&number);
                out.push(b'"');
            } else {
                out.extend_from_slice(&number);
            }
        }
    }
    Some(())
}

/// Writes a `Timestamp` from its bytes, or gives up when it is outside JSON's range.
fn timestamp(bytes: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let (mut seconds, mut nanos) = (0i64, 0i32);
    let mut reader = Reader { bytes };
    while !reader.is_empty() {
        match reader.field()? {
            (1, Wire::Varint(v)) => seconds = v as i64,
            (2, Wire::Varint(v)) => nanos = v as i32,
            (1 | 2, _) => return None,
            _ => {}
        }
    }
    let text = message_json::timestamp_text_of(seconds, nanos)?;
    out.push(b'"');
    out.extend_from_slice(text.as_str().as_bytes());
    out.push(b'"');
    Some(())
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_reflect::ReflectMessage as _;

    use super::*;
    use crate::test_messages::{Rng, kitchen_sink, random_message};

    /// The JSON `message_json` writes for `message` (its reference), and this module's from its
    /// bytes: `None` when this module gave up.
    fn both(message: &DynamicMessage) -> (Option<String>, Option<String>) {
        let bytes = message.encode_to_vec();
        let mut want = Vec::new();
        let want = message_json::write_message(&mut want, message)
            .ok()
            .map(|()| String::from_utf8(want).unwrap());
        let layouts = Layouts::build(&message.descriptor());
        let writer = Writer { layouts: &layouts };
        let mut got = Vec::new();
        let got = writer
            .message(0, &bytes, &mut got, 0)
            .map(|()| String::from_utf8(got).unwrap());
        (got, want)
    }

    fn parsed(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn replies_of_every_field_kind_are_written_as_message_json_writes_them() {
        let sink = kitchen_sink();
        let mut rng = Rng(0x05ee_d0fb_17e5);
        let mut written = 0;
        for _ in 0..2_000 {
            let message = random_message(&mut rng, &sink, 0);
            let (got, want) = both(&message);
            let Some(want) = want else { continue };
            match got {
                // Map entries come in another order; objects compare as sets.
                Some(got) => {
                    assert_eq!(parsed(&got), parsed(&want), "{message:?}");
                    written += 1;
                }
                None => panic!("gave up on a valid message: {message:?}"),
            }
        }
        assert!(written > 1_900, "only {written} of 2000 written");
    }

    #[test]
    fn replies_without_maps_are_the_same_bytes() {
        let table = crate::test_support::weft_table();
        let mut rng = Rng(0x0dd_ba11_0003);
        for service in table.pools[0].services() {
            for method in service.methods() {
                for _ in 0..50 {
                    let message = random_message(&mut rng, &method.output(), 0);
                    let (got, want) = both(&message);
                    assert!(want.is_some(), "{}", method.full_name());
                    assert_eq!(got, want, "{}", method.full_name());
                }
            }
        }
    }

    #[test]
    fn doubtful_bytes_are_left_to_prost_reflect() {
        let sink = kitchen_sink();
        let writer = ReplyWriter::new(sink.clone(), None);
        let layouts = Layouts::build(&sink);
        let fast = |bytes: &[u8]| {
            let mut out = Vec::new();
            Writer { layouts: &layouts }
                .message(0, bytes, &mut out, 0)
                .map(|()| out)
        };
        let string_field = sink
            .fields()
            .find(|f| f.kind() == Kind::String && !f.is_list())
            .unwrap();
        let message_field = sink
            .fields()
            .find(|f| {
                matches!(f.kind(), Kind::Message(m) if !m.full_name().starts_with("google."))
                    && !f.is_list()
                    && !f.is_map()
            })
            .unwrap();
        // `field`'s key with `wire` type, then `rest`.
        let bytes = |field: &FieldDescriptor, wire: u64, rest: &[u8]| {
            let mut out = Vec::new();
            prost::encoding::encode_varint(u64::from(field.number()) << 3 | wire, &mut out);
            out.extend_from_slice(rest);
            out
        };
        // Invalid UTF-8 in a string: an error, as before.
        let bad_utf8 = bytes(&string_field, 2, &[2, 0xff, 0xfe]);
        assert!(fast(&bad_utf8).is_none());
        assert!(writer.write(&bad_utf8).is_err());
        // A string sent as a varint: the wire type does not fit.
        let wrong_wire = bytes(&string_field, 0, &[1]);
        assert!(fast(&wrong_wire).is_none());
        assert!(writer.write(&wrong_wire).is_err());
        // A message field in two parts, which protobuf merges: decoded, and merged.
        let twice = [
            bytes(&message_field, 2, &[0]),
            bytes(&message_field, 2, &[0]),
        ]
        .concat();
        assert!(fast(&twice).is_none());
        let merged = writer.write(&twice);
        assert!(merged.is_ok(), "{merged:?} {}", message_field.name());
        // Cut short.
        assert!(fast(&bytes(&string_field, 2, &[5, b'a'])).is_none());
        // Nesting beyond the limit is given up, not recursed into without end.
        let recursive = sink
            .fields()
            .find(|f| matches!(f.kind(), Kind::Message(m) if m == sink) && !f.is_list())
            .expect("the kitchen sink holds itself");
        let mut deep = Vec::new();
        for _ in 0..(MAX_DEPTH + 2) {
            let mut len = Vec::new();
            prost::encoding::encode_varint(deep.len() as u64, &mut len);
            deep = bytes(&recursive, 2, &[len, deep].concat());
        }
        assert!(fast(&deep).is_none());
    }

    #[test]
    fn a_product_reply_is_written_from_its_bytes() {
        let table = crate::test_support::weft_table();
        let Ok(crate::route::Match::Found { value, .. }) =
            table.router.match_path("GET", "/v1/products/x")
        else {
            panic!("the product route")
        };
        let mut product = DynamicMessage::new(value.method.output());
        product.set_field_by_name("id", Value::String("p1".into()));
        product.set_field_by_name("stock", Value::I64(7));
        let json = parsed(
            std::str::from_utf8(&value.reply.write(&product.encode_to_vec()).unwrap()).unwrap(),
        );
        assert_eq!(json["id"], "p1");
        assert_eq!(json["stock"], "7");
        assert_eq!(json["name"], "", "defaults are written");
    }
}
