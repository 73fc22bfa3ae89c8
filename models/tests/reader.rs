//! The reader against files written by the test writer (tests/common):
//! round trips of every metadata type and every tensor type, hand-computed
//! dequantization of the simple types, and one test per kind of bad input,
//! each a typed error naming the file and the field.

mod common;

use common::{Writer, f16, sample, string};
use hetero_models::gguf::{GgmlType, Value, ValueType};
use hetero_models::{GgufFile, ModelError};

fn every_value() -> Vec<(&'static str, Value)> {
    vec![
        ("u8", Value::U8(255)),
        ("i8", Value::I8(-128)),
        ("u16", Value::U16(65535)),
        ("i16", Value::I16(-32768)),
        ("u32", Value::U32(u32::MAX)),
        ("i32", Value::I32(i32::MIN)),
        ("f32", Value::F32(-0.125)),
        ("bool", Value::Bool(false)),
        ("string", Value::String("ünïcode".into())),
        ("u64", Value::U64(u64::MAX)),
        ("i64", Value::I64(i64::MIN)),
        ("f64", Value::F64(1e300)),
        (
            "array_f32",
            Value::Array(ValueType::F32, vec![Value::F32(1.0), Value::F32(2.0)]),
        ),
        ("array_empty", Value::Array(ValueType::U64, vec![])),
        (
            "array_bool",
            Value::Array(ValueType::Bool, vec![Value::Bool(true)]),
        ),
        (
            "array_nested",
            Value::Array(
                ValueType::Array,
                vec![
                    Value::Array(
                        ValueType::String,
                        vec![Value::String("x".into()), Value::String(String::new())],
                    ),
                    Value::Array(ValueType::I64, vec![Value::I64(-1)]),
                ],
            ),
        ),
    ]
}

#[test]
fn every_metadata_type_round_trips_in_v2_and_v3() {
    for version in [2, 3] {
        let mut w = Writer::new(version);
        for (k, v) in every_value() {
            w = w.kv(k, v);
        }
        let f = GgufFile::from_bytes("mem.gguf", w.bytes()).expect("parses");
        assert_eq!(f.version(), version);
        assert_eq!(f.metadata().len(), every_value().len());
        for (k, v) in every_value() {
            assert_eq!(f.metadata().get(k), Some(&v), "{k}");
        }
        assert!(f.tensors().is_empty());
    }
}

#[test]
fn a_value_is_at_most_32_bytes() {
    // The bound on what an array of n elements allocates (value.rs).
    assert!(size_of::<Value>() <= 32);
}

#[test]
fn typed_getters_widen_integers_and_name_missing_keys() {
    let w = Writer::new(3)
        .kv("a", Value::U8(7))
        .kv("b", Value::I32(-1))
        .kv("c", Value::Array(ValueType::I16, vec![Value::I16(-3)]));
    let f = GgufFile::from_bytes("mem.gguf", w.bytes()).expect("parses");
    let md = f.metadata();
    assert_eq!(md.get_u32("a").expect("u8 widens"), 7);
    assert!(matches!(md.get_u32("b"), Err(ModelError::WrongType { .. })));
    assert_eq!(md.get_i64_array("c").expect("i16 array"), vec![-3]);
    let err = md.get_u32("missing").expect_err("absent");
    assert!(matches!(err, ModelError::MissingKey { .. }));
    assert!(err.to_string().contains("mem.gguf") && err.to_string().contains("missing"));
}

/// Bytes of `blocks` blocks of a type, from a simple pattern.
fn blocks(ty: GgmlType, n: usize) -> Vec<u8> {
    let (_, size) = ty.block().expect("known type");
    (0..n * size as usize)
        .map(|i| (i * 37 % 251) as u8)
        .collect()
}

#[test]
fn every_tensor_type_round_trips_its_info_and_bytes() {
    let types = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Bf16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];
    for alignment in [None, Some(64u32), Some(1)] {
        let mut w = Writer::new(3);
        if let Some(a) = alignment {
            w = w.kv("general.alignment", Value::U32(a));
        }
        for (i, ty) in types.iter().enumerate() {
            let (block, _) = ty.block().expect("known");
            let data = blocks(*ty, 3);
            w = w.tensor(&format!("t{i}"), &[block * 3, 1], ty.id(), data);
        }
        let offsets = w.offsets();
        let f = GgufFile::from_bytes("mem.gguf", w.bytes()).expect("parses");
        assert_eq!(f.alignment(), alignment.map_or(32, u64::from));
        assert_eq!(f.data_offset() % f.alignment(), 0);
        for (i, ty) in types.iter().enumerate() {
            let name = format!("t{i}");
            let info = f.tensor(&name).expect("present");
            let (block, _) = ty.block().expect("known");
            assert_eq!(info.ggml_type, *ty);
            assert_eq!(info.dims, vec![block * 3, 1]);
            assert_eq!(info.offset, offsets[i]);
            assert_eq!(info.elements, block * 3);
            assert_eq!(f.tensor_bytes(&name).expect("bytes"), &blocks(*ty, 3)[..]);
            assert_eq!(
                f.dequantize(&name).expect("dequantizes").len() as u64,
                block * 3
            );
        }
    }
}

#[test]
fn simple_types_dequantize_to_hand_computed_values() {
    // Q4_0: low nibbles are elements 0..16, high nibbles 16..32; (q - 8) * d.
    let mut q4_0 = f16(0.5).to_vec();
    q4_0.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
    // Q4_1: q * d + m.
    let mut q4_1 = f16(2.0).to_vec();
    q4_1.extend_from_slice(&f16(-1.0));
    q4_1.extend((0..16u8).map(|i| i | (i << 4)));
    // Q8_0: q * d.
    let mut q8_0 = f16(0.25).to_vec();
    q8_0.extend((0..32i8).map(|i| (i - 16) as u8));
    let w = Writer::new(2)
        .tensor("q4_0", &[32], GgmlType::Q4_0.id(), q4_0)
        .tensor("q4_1", &[32], GgmlType::Q4_1.id(), q4_1)
        .tensor("q8_0", &[32], GgmlType::Q8_0.id(), q8_0)
        .tensor(
            "bf16",
            &[2],
            GgmlType::Bf16.id(),
            vec![0x80, 0x3f, 0x00, 0xc0],
        );
    let f = GgufFile::from_bytes("mem.gguf", w.bytes()).expect("parses");
    let want: Vec<f32> = (0..16)
        .map(|i| (i as f32 - 8.0) * 0.5)
        .chain((0..16).map(|i| ((15 - i) as f32 - 8.0) * 0.5))
        .collect();
    assert_eq!(f.dequantize("q4_0").expect("q4_0"), want);
    let want: Vec<f32> = (0..32).map(|i| (i % 16) as f32 * 2.0 - 1.0).collect();
    assert_eq!(f.dequantize("q4_1").expect("q4_1"), want);
    let want: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.25).collect();
    assert_eq!(f.dequantize("q8_0").expect("q8_0"), want);
    assert_eq!(f.dequantize("bf16").expect("bf16"), vec![1.0, -2.0]);
}

#[test]
fn other_types_are_unsupported_by_name_and_number() {
    let w =
        Writer::new(3)
            .tensor("q5_0", &[32], 6, vec![0; 22])
            .tensor("future", &[32], 99, vec![]);
    let f = GgufFile::from_bytes("mem.gguf", w.bytes()).expect("parses");
    // A known type is still readable as bytes.
    assert_eq!(f.tensor_bytes("q5_0").expect("bytes").len(), 22);
    let err = f.dequantize("q5_0").expect_err("no Q5_0 dequantization");
    assert!(matches!(
        err,
        ModelError::UnsupportedType { type_id: 6, .. }
    ));
    assert!(err.to_string().contains("Q5_0 (6)"), "{err}");
    assert_eq!(err.file(), std::path::Path::new("mem.gguf"));
    assert_eq!(err.field(), "tensor q5_0");
    let err = f.tensor_bytes("future").expect_err("unknown size");
    assert!(err.to_string().contains("unknown (99)"), "{err}");
    let core: hetero_core::Error = err.into();
    assert!(core.is_unsupported());
    assert!(matches!(
        f.dequantize("nope"),
        Err(ModelError::NoSuchTensor { .. })
    ));
}

#[test]
fn open_maps_a_file_and_names_a_missing_one() {
    let path = std::env::temp_dir().join(format!("hetero-models-{}.gguf", std::process::id()));
    let bytes = sample().bytes();
    std::fs::write(&path, &bytes).expect("write");
    let mapped = GgufFile::open(&path).expect("opens");
    let owned = GgufFile::from_bytes("mem", bytes).expect("parses");
    assert_eq!(mapped.tensors(), owned.tensors());
    assert_eq!(
        mapped.dequantize("w").expect("w"),
        owned.dequantize("w").expect("w")
    );
    assert_eq!(
        mapped.dequantize("v").expect("v"),
        vec![1.0, -2.0, 3.5, 0.0]
    );
    std::fs::remove_file(&path).expect("remove");
    let err = GgufFile::open(&path).expect_err("gone");
    assert!(matches!(err, ModelError::Io { .. }));
    assert!(err.to_string().contains("hetero-models-"), "{err}");
    let core: hetero_core::Error = err.into();
    assert!(matches!(core, hetero_core::Error::Io { .. }));
}

fn parse(bytes: Vec<u8>) -> ModelError {
    GgufFile::from_bytes("bad.gguf", bytes).expect_err("must be refused")
}

fn header(version: u32, tensors: u64, kvs: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&tensors.to_le_bytes());
    b.extend_from_slice(&kvs.to_le_bytes());
    b
}

#[test]
fn bad_headers_are_typed_errors_naming_file_and_field() {
    let e = parse(vec![]);
    assert!(
        matches!(e, ModelError::Truncated { ref field, .. } if field == "magic"),
        "{e}"
    );
    let e = parse(b"GGML\x03\0\0\0".to_vec());
    assert!(matches!(e, ModelError::BadMagic { found, .. } if &found == b"GGML"));
    for v in [1, 4, 0x0300_0000] {
        let e = parse(header(v, 0, 0));
        assert!(matches!(e, ModelError::UnsupportedVersion { version, .. } if version == v));
    }
    let e = parse(header(3, 0, 0)[..12].to_vec());
    assert!(e.to_string().contains("tensor count"), "{e}");

    let e = parse(header(3, 1 << 60, 0));
    assert!(
        matches!(e, ModelError::CountTooLarge { count, ref field, .. } if count == 1 << 60 && field == "tensor count"),
        "{e}"
    );
    let e = parse(header(3, 0, u64::MAX));
    assert!(matches!(e, ModelError::CountTooLarge { .. }), "{e}");

    // A 2^40-byte key.
    let mut b = header(3, 0, 1);
    b.extend_from_slice(&(1u64 << 40).to_le_bytes());
    b.extend_from_slice(&[0; 64]);
    let e = parse(b);
    assert!(
        matches!(e, ModelError::Truncated { needed, ref field, .. } if needed == 1 << 40 && field == "metadata key #0"),
        "{e}"
    );

    // An array of 2^62 u32s.
    let mut b = header(3, 0, 1);
    string(&mut b, "big");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&(1u64 << 62).to_le_bytes());
    b.extend_from_slice(&[0; 64]);
    let e = parse(b);
    assert!(
        matches!(e, ModelError::CountTooLarge { ref field, .. } if field.contains("big")),
        "{e}"
    );

    // An unknown value type, at the top and inside an array.
    let mut b = header(3, 0, 1);
    string(&mut b, "odd");
    b.extend_from_slice(&13u32.to_le_bytes());
    b.extend_from_slice(&[0; 16]);
    let e = parse(b);
    assert!(
        matches!(e, ModelError::UnknownValueType { type_id: 13, ref field, .. } if field.contains("odd")),
        "{e}"
    );
    let mut b = header(3, 0, 1);
    string(&mut b, "odd");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&77u32.to_le_bytes());
    b.extend_from_slice(&[0; 16]);
    assert!(matches!(
        parse(b),
        ModelError::UnknownValueType { type_id: 77, .. }
    ));

    // A bool that is neither 0 nor 1; invalid UTF-8.
    let mut b = header(3, 0, 1);
    string(&mut b, "flag");
    b.extend_from_slice(&7u32.to_le_bytes());
    b.push(2);
    let e = parse(b);
    assert!(
        matches!(e, ModelError::Invalid { ref field, .. } if field.contains("flag")),
        "{e}"
    );
    let mut b = header(3, 0, 1);
    b.extend_from_slice(&2u64.to_le_bytes());
    b.extend_from_slice(&[0xff, 0xfe]);
    b.extend_from_slice(&[0; 16]);
    let e = parse(b);
    assert!(
        matches!(e, ModelError::Invalid { .. }) && e.to_string().contains("UTF-8"),
        "{e}"
    );

    // Arrays nested past the depth limit.
    let mut b = header(3, 0, 1);
    string(&mut b, "deep");
    b.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..100 {
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
    }
    b.extend_from_slice(&[0; 64]);
    let e = parse(b);
    assert!(e.to_string().contains("nested deeper"), "{e}");

    // Converted into hetero-core's error, the field names file and field.
    let core: hetero_core::Error = parse(header(3, 1 << 60, 0)).into();
    match core {
        hetero_core::Error::InvalidInput { field, .. } => {
            assert_eq!(field, "bad.gguf: tensor count")
        }
        other => panic!("expected InvalidInput, got {other}"),
    }
}

#[test]
fn bad_tensor_infos_are_typed_errors() {
    // Data past the end of the file.
    let mut b = Writer::new(3).tensor("w", &[64], 0, vec![0; 256]).bytes();
    b.truncate(b.len() - 1);
    let e = parse(b);
    assert!(
        matches!(e, ModelError::DataOutOfBounds { ref tensor, .. } if tensor == "w"),
        "{e}"
    );
    // An offset near u64::MAX: start + length overflows.
    let mut b = Writer::new(3).tensor("w", &[8], 0, vec![0; 32]).bytes();
    let pos = b
        .windows(1 + 4 + 8 + 4)
        .position(|s| s[0] == b'w' && s[1..5] == 1u32.to_le_bytes())
        .expect("info");
    let off_at = pos + 1 + 4 + 8 + 4;
    b[off_at..off_at + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    assert!(matches!(parse(b), ModelError::DataOutOfBounds { .. }));
    // A dims product that overflows.
    let e = parse(
        Writer::new(3)
            .tensor("w", &[1 << 32, 1 << 32, 2], 0, vec![])
            .bytes(),
    );
    assert!(e.to_string().contains("overflows"), "{e}");
    // Too many dimensions; a row not a multiple of the block; a duplicate.
    let e = parse(
        Writer::new(3)
            .tensor("w", &[1, 1, 1, 1, 1], 0, vec![0; 4])
            .bytes(),
    );
    assert!(e.to_string().contains("n_dims"), "{e}");
    let e = parse(Writer::new(3).tensor("w", &[16], 2, vec![0; 9]).bytes());
    assert!(e.to_string().contains("block size"), "{e}");
    let e = parse(
        Writer::new(3)
            .tensor("w", &[1], 0, vec![0; 4])
            .tensor("w", &[1], 0, vec![0; 4])
            .bytes(),
    );
    assert!(e.to_string().contains("twice"), "{e}");
    // An alignment that is no power of two.
    let e = parse(
        Writer::new(3)
            .kv("general.alignment", Value::U32(24))
            .bytes(),
    );
    assert!(e.to_string().contains("general.alignment"), "{e}");
    // A duplicate metadata key.
    let e = parse(
        Writer::new(3)
            .kv("k", Value::U8(1))
            .kv("k", Value::U8(2))
            .bytes(),
    );
    assert!(e.to_string().contains("twice"), "{e}");
}
