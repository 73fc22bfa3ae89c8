//! The tokenizer on a tiny vocabulary built here, through the same path as
//! a real file (GGUF metadata written by tests/common, then
//! `Tokenizer::from_gguf`), and `Tokenizer::from_file` on the
//! `tokenizer.json` that the GGUF one serializes to.

mod common;

use common::Writer;
use hetero_models::gguf::{Value, ValueType};
use hetero_models::{GgufFile, ModelError, Tokenizer};

// Byte-level strings: "Ġ" is the space, "Ã" "©" are the bytes C3 A9 of "é".
const TOKENS: &[&str] = &[
    "<|bos|>", "<|eos|>", "h", "e", "l", "o", "Ġ", "w", "1", "2", "he", "ll", "hell", "hello",
    "Ġw", "12", "Ã", "©", "Ã©",
];
const MERGES: &[&str] = &["h e", "l l", "he ll", "hell o", "Ġ w", "1 2", "Ã ©"];

fn strings(items: &[&str]) -> Value {
    Value::Array(
        ValueType::String,
        items.iter().map(|s| Value::String((*s).into())).collect(),
    )
}

fn writer(pre: &str) -> Writer {
    let types = (0..TOKENS.len())
        .map(|i| Value::I32(if i < 2 { 3 } else { 1 }))
        .collect();
    Writer::new(3)
        .kv("tokenizer.ggml.model", Value::String("gpt2".into()))
        .kv("tokenizer.ggml.pre", Value::String(pre.into()))
        .kv("tokenizer.ggml.tokens", strings(TOKENS))
        .kv("tokenizer.ggml.merges", strings(MERGES))
        .kv(
            "tokenizer.ggml.token_type",
            Value::Array(ValueType::I32, types),
        )
        .kv("tokenizer.ggml.bos_token_id", Value::U32(0))
        .kv("tokenizer.ggml.eos_token_id", Value::U32(1))
}

fn build(w: &Writer) -> Result<Tokenizer, ModelError> {
    Tokenizer::from_gguf(&GgufFile::from_bytes("tiny.gguf", w.bytes())?)
}

fn tiny(pre: &str) -> Tokenizer {
    build(&writer(pre)).expect("tiny tokenizer")
}

fn replace(mut w: Writer, key: &str, value: Value) -> Writer {
    for kv in &mut w.kvs {
        if kv.0 == key {
            kv.1 = value.clone();
        }
    }
    w
}

#[test]
fn encodes_merges_and_control_tokens() {
    let t = tiny("smollm");
    assert_eq!(t.bos_id(), Some(0));
    assert_eq!(t.eos_id(), Some(1));
    assert_eq!(t.encode("hello who", false).unwrap(), [13, 14, 2, 5]);
    assert_eq!(t.encode("hello", true).unwrap(), [0, 13]);
    // Control tokens match whole inside the text.
    assert_eq!(t.encode("<|bos|>hello<|eos|>", false).unwrap(), [0, 13, 1]);
    assert_eq!(t.encode("é", false).unwrap(), [18]);
    assert_eq!(
        t.decode(&[0, 13, 14, 5, 1, 18]).unwrap(),
        "<|bos|>hello wo<|eos|>é"
    );
}

#[test]
fn smollm_isolates_digits_gpt2_does_not() {
    assert_eq!(tiny("smollm").encode("12", false).unwrap(), [8, 9]);
    assert_eq!(tiny("gpt2").encode("12", false).unwrap(), [15]);
}

#[test]
fn streaming_holds_a_split_character() {
    let t = tiny("gpt2");
    let mut s = t.stream_decoder();
    assert_eq!(s.step(13).unwrap().as_deref(), Some("hello"));
    assert_eq!(s.step(16).unwrap(), None);
    assert_eq!(s.pending(), [0xc3]);
    assert_eq!(s.step(17).unwrap().as_deref(), Some("é"));
    assert_eq!(s.step(0).unwrap().as_deref(), Some("<|bos|>"));
    assert_eq!(s.finish(), "");
    // A character never completed: U+FFFD, as decode gives it.
    let mut s = t.stream_decoder();
    assert_eq!(s.step(16).unwrap(), None);
    assert_eq!(s.step(13).unwrap().as_deref(), Some("\u{fffd}hello"));
    assert_eq!(t.decode(&[16, 13]).unwrap(), "\u{fffd}hello");
    let mut s = t.stream_decoder();
    assert_eq!(s.step(16).unwrap(), None);
    assert_eq!(s.finish(), "\u{fffd}");
    // An id outside the vocabulary is an error, not a panic or a skip.
    assert!(t.stream_decoder().step(999).is_err());
    assert!(t.decode(&[2, 999]).is_err());
}

#[test]
fn unsupported_pre_names_it() {
    let e = build(&writer("llama3")).unwrap_err();
    assert!(matches!(&e, ModelError::UnsupportedTokenizer { name, .. } if name == "llama3"));
    assert_eq!(e.field(), "metadata tokenizer.ggml.pre");
    assert!(e.to_string().contains("llama3"), "{e}");
    let e = build(&replace(
        writer("gpt2"),
        "tokenizer.ggml.model",
        Value::String("llama".into()),
    ))
    .unwrap_err();
    assert!(matches!(&e, ModelError::UnsupportedTokenizer { name, .. } if name == "llama"));
}

#[test]
fn bad_metadata_is_a_typed_error_naming_the_field() {
    let cases = [
        ("tokenizer.ggml.merges", strings(&["hx"])),
        ("tokenizer.ggml.merges", strings(&["h q"])),
        ("tokenizer.ggml.tokens", strings(&["h", "h"])),
        (
            "tokenizer.ggml.token_type",
            Value::Array(ValueType::I32, vec![Value::I32(1)]),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(19)),
        ("tokenizer.ggml.tokens", Value::U32(1)),
    ];
    for (key, value) in cases {
        let e = build(&replace(writer("gpt2"), key, value)).unwrap_err();
        assert_eq!(e.file(), std::path::Path::new("tiny.gguf"));
        assert_eq!(e.field(), format!("metadata {key}"), "{e}");
    }
    let mut w = writer("gpt2");
    w.kvs.retain(|(k, _)| k != "tokenizer.ggml.merges");
    assert!(matches!(build(&w), Err(ModelError::MissingKey { .. })));
}

#[test]
fn from_file_reads_the_serialized_tokenizer() {
    let t = tiny("smollm");
    let dir = std::env::temp_dir().join(format!("hetero-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("tokenizer.json");
    std::fs::write(&json, t.inner().to_string(false).unwrap()).unwrap();
    let f = Tokenizer::from_file(&json).unwrap();
    assert_eq!((f.bos_id(), f.eos_id()), (None, None));
    for text in ["hello who", "<|bos|>hello<|eos|>", "é12"] {
        assert_eq!(
            f.encode(text, false).unwrap(),
            t.encode(text, false).unwrap()
        );
    }
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"bos_token": "<|bos|>", "eos_token": {"content": "<|eos|>"}}"#,
    )
    .unwrap();
    let f = Tokenizer::from_file(&json).unwrap();
    assert_eq!((f.bos_id(), f.eos_id()), (Some(0), Some(1)));
    std::fs::write(&json, "{ not json").unwrap();
    let e = Tokenizer::from_file(&json).unwrap_err();
    assert_eq!(e.file(), json);
    assert!(matches!(
        Tokenizer::from_file(dir.join("missing.json")),
        Err(ModelError::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
