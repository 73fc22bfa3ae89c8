//! hetero-models against an independent reference: `fixtures/quants.gguf`
//! and the expected f32 values beside it were written by gguf-py
//! (`fixtures/make_fixtures.py`), with gguf-py's own quantize / dequantize.
//! Every tensor must dequantize bit for bit to gguf-py's values, and the
//! metadata gguf-py wrote must read back as written.

use std::path::PathBuf;

use hetero_models::GgufFile;
use hetero_models::gguf::{GgmlType, Value, ValueType};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn open() -> GgufFile {
    GgufFile::open(fixture("quants.gguf")).expect("fixture opens")
}

#[test]
fn every_tensor_matches_gguf_py_bit_for_bit() {
    let f = open();
    let expected_types = [
        ("f32", GgmlType::F32),
        ("f16", GgmlType::F16),
        ("bf16_bits", GgmlType::Bf16),
        ("bf16", GgmlType::Bf16),
        ("q8_0", GgmlType::Q8_0),
        ("q4_0", GgmlType::Q4_0),
        ("q4_1", GgmlType::Q4_1),
        ("q4_k", GgmlType::Q4K),
        ("q5_k", GgmlType::Q5K),
        ("q6_k", GgmlType::Q6K),
    ];
    assert_eq!(f.tensors().len(), expected_types.len());
    for (name, ty) in expected_types {
        let info = f.tensor(name).expect("tensor present");
        assert_eq!(info.ggml_type, ty, "{name}");
        let raw = std::fs::read(fixture(&format!("{name}.f32"))).expect("expected values");
        let expected: Vec<u32> = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let got: Vec<u32> = f
            .dequantize(name)
            .expect("dequantizes")
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(got.len() as u64, info.elements, "{name}");
        assert_eq!(got.len(), expected.len(), "{name}");
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(
                g,
                e,
                "{name}[{i}]: {} vs gguf-py {}",
                f32::from_bits(*g),
                f32::from_bits(*e)
            );
        }
    }
}

#[test]
fn shapes_are_in_ggml_order() {
    let f = open();
    assert_eq!(f.version(), 3);
    assert_eq!(f.tensor("q8_0").expect("q8_0").dims, vec![64, 2]);
    assert_eq!(f.tensor("q6_k").expect("q6_k").dims, vec![256, 2]);
    assert_eq!(f.tensor_bytes("q6_k").expect("bytes").len(), 2 * 210);
    assert_eq!(f.data_offset() % 32, 0);
}

#[test]
fn metadata_of_every_type_reads_as_gguf_py_wrote_it() {
    let f = open();
    let md = f.metadata();
    assert_eq!(md.get_str("general.architecture").expect("arch"), "fixture");
    assert_eq!(md.get("t.u8"), Some(&Value::U8(200)));
    assert_eq!(md.get("t.i8"), Some(&Value::I8(-100)));
    assert_eq!(md.get("t.u16"), Some(&Value::U16(60000)));
    assert_eq!(md.get("t.i16"), Some(&Value::I16(-30000)));
    assert_eq!(md.get_u32("t.u32").expect("u32"), 4_000_000_000);
    assert_eq!(md.get("t.i32"), Some(&Value::I32(-2_000_000_000)));
    assert_eq!(md.get_f32("t.f32").expect("f32"), 1.5);
    assert!(md.get_bool("t.bool").expect("bool"));
    assert_eq!(md.get_str("t.string").expect("string"), "héllo");
    assert_eq!(md.get_u64("t.u64").expect("u64"), (1 << 63) + 5);
    assert_eq!(md.get("t.i64"), Some(&Value::I64(-(1 << 62))));
    assert_eq!(md.get("t.f64"), Some(&Value::F64(-2.25)));
    assert_eq!(
        md.get_string_array("t.strings").expect("strings"),
        vec!["a", "", "ünï"]
    );
    assert_eq!(
        md.get("t.nested"),
        Some(&Value::Array(
            ValueType::Array,
            vec![
                Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(2)]),
                Value::Array(ValueType::I32, vec![Value::I32(3)]),
            ]
        ))
    );
    // A getter asked for the wrong type names the key and both types.
    let err = md.get_str("t.u8").expect_err("u8 is no string").to_string();
    assert!(
        err.contains("t.u8") && err.contains("string") && err.contains("u8"),
        "{err}"
    );
}
