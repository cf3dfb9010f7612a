//! Test fixtures shared by the JSON writers' tests: a message type with a field of every kind,
//! and random messages of any type, edge cases favoured.

use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, Value};

/// A proto3 message with a field of every kind: scalars, enum, nested and recursive
/// messages, well-known types, repeated fields, maps, a oneof and a proto3 `optional`.
pub(crate) fn kitchen_sink() -> MessageDescriptor {
    use prost_reflect::{
        DescriptorPool,
        prost_types::{
            DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto,
            FileDescriptorProto, MessageOptions, OneofDescriptorProto,
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

/// A random valid message of type `descriptor`, `depth` levels below the top one.
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
        if rng.next().is_multiple_of(3) || (depth > 2 && matches!(field.kind(), Kind::Message(_))) {
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
