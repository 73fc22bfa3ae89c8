//! The tokenizer of the real SmolLM2 file (at the path in
//! `HETERO_TEST_GGUF`) against `fixtures/smollm2_tokens.json`, written by
//! `fixtures/make_token_fixtures.py` with Hugging Face's Python
//! `tokenizers` from the same GGUF's tokens and merges: the ids of every
//! string, decode(encode(s)) == s, and streaming decode one id at a time
//! concatenating to s with no piece ending inside a character. Without the
//! file the test is listed as ignored, with the reason.

use hetero_models::{GgufFile, Tokenizer};
use libtest_mimic::{Arguments, Failed, Trial};

const FIXTURE: &str = include_str!("fixtures/smollm2_tokens.json");

fn check(path: &str) -> Result<(), Failed> {
    let tok = Tokenizer::from_gguf(&GgufFile::open(path)?)?;
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert_eq!(tok.vocab_size(), 49152);
    let cases: Vec<serde_json::Value> = serde_json::from_str(FIXTURE)?;
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().ok_or("fixture text")?;
        let want: Vec<u32> = case["ids"]
            .as_array()
            .ok_or("fixture ids")?
            .iter()
            .map(|v| v.as_u64().and_then(|x| u32::try_from(x).ok()))
            .collect::<Option<_>>()
            .ok_or("fixture id")?;
        let ids = tok.encode(text, false)?;
        if ids != want {
            return Err(format!("{text:?}: ids {ids:?}, reference {want:?}").into());
        }
        let with_bos = tok.encode(text, true)?;
        assert_eq!(with_bos[0], 1);
        assert_eq!(&with_bos[1..], &ids[..]);
        let decoded = tok.decode(&ids)?;
        if decoded != text {
            return Err(format!("{text:?}: decodes to {decoded:?}").into());
        }
        let mut stream = tok.stream_decoder();
        let mut streamed = String::new();
        for &id in &ids {
            if let Some(piece) = stream.step(id)? {
                if piece.contains(char::REPLACEMENT_CHARACTER) {
                    return Err(format!("{text:?}: streamed a broken fragment {piece:?}").into());
                }
                streamed.push_str(&piece);
            }
        }
        if !stream.pending().is_empty() {
            return Err(format!("{text:?}: bytes left pending at the end").into());
        }
        streamed.push_str(&stream.finish());
        if streamed != text {
            return Err(format!("{text:?}: streams to {streamed:?}").into());
        }
    }
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let name = "smollm2_tokenizer_against_hf_tokenizers";
    let trial = match std::env::var("HETERO_TEST_GGUF") {
        Ok(path) if std::path::Path::new(&path).is_file() => {
            Trial::test(name, move || check(&path))
        }
        _ => Trial::test(name, || Ok(()))
            .with_ignored_flag(true)
            .with_kind("skipped: HETERO_TEST_GGUF does not name a file"),
    };
    libtest_mimic::run(&args, vec![trial]).exit();
}
