//! Mutated headers never panic: a valid small file (tests/common's sample)
//! truncated at every length, with random bit flips, and with counts and
//! lengths overwritten by huge values, must open to `Ok` or a typed error;
//! whatever opens must then read and dequantize every tensor without
//! panicking. A panic fails the test through the harness.

mod common;

use hetero_models::GgufFile;
use proptest::prelude::*;

/// Opens `bytes` and, if that works, touches every tensor.
fn exercise(bytes: Vec<u8>) {
    if let Ok(f) = GgufFile::from_bytes("mutated.gguf", bytes) {
        let _ = f.metadata().get_string_array("tokenizer.ggml.tokens");
        for t in f.tensors() {
            if let (Ok(b), Some(len)) = (f.tensor_bytes(&t.name), t.byte_len) {
                assert_eq!(b.len() as u64, len);
            }
            if let Ok(v) = f.dequantize(&t.name) {
                assert_eq!(v.len() as u64, t.elements);
            }
        }
    }
}

#[test]
fn truncation_at_every_length_is_an_error() {
    let bytes = common::sample().bytes();
    assert!(GgufFile::from_bytes("whole.gguf", bytes.clone()).is_ok());
    for len in 0..bytes.len() {
        let e = GgufFile::from_bytes("cut.gguf", bytes[..len].to_vec())
            .expect_err("a truncated file cannot open");
        assert!(e.to_string().starts_with("cut.gguf: "), "{e}");
    }
}

/// Values that break counts and lengths: huge, near overflow, off by one.
fn nasty_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(u64::MAX),
        Just(1u64 << 60),
        Just(1u64 << 40),
        Just(1u64 << 32),
        Just(u64::MAX - 31),
        0u64..64,
        any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn bit_flips_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..8)) {
        let mut bytes = common::sample().bytes();
        let n = bytes.len();
        for (i, bit) in flips {
            bytes[i.index(n)] ^= 1 << bit;
        }
        exercise(bytes);
    }

    #[test]
    fn inflated_counts_never_panic(at in any::<prop::sample::Index>(), value in nasty_u64(), wide in any::<bool>()) {
        let mut bytes = common::sample().bytes();
        let width = if wide { 8 } else { 4 };
        let pos = at.index(bytes.len() - width + 1);
        bytes[pos..pos + width].copy_from_slice(&value.to_le_bytes()[..width]);
        exercise(bytes);
    }

    #[test]
    fn random_truncation_and_garbage_tail_never_panic(len in any::<prop::sample::Index>(), tail in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = common::sample().bytes();
        bytes.truncate(len.index(bytes.len() + 1));
        bytes.extend_from_slice(&tail);
        exercise(bytes);
    }
}
