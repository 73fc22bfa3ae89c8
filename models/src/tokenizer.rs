//! The tokenizer: byte-level BPE, built on Hugging Face's `tokenizers`
//! crate (the reference implementation) from a GGUF file's
//! `tokenizer.ggml.*` metadata or from a `tokenizer.json`.
//!
//! From GGUF ([`Tokenizer::from_gguf`]): a BPE model from
//! `tokenizer.ggml.tokens` and `tokenizer.ggml.merges` (model "gpt2"), the
//! split regex chosen by `tokenizer.ggml.pre` as llama.cpp chooses it
//! ("gpt2": GPT-2's byte-level split; "smollm": every `\p{N}` isolated
//! first, then GPT-2's split), byte-level decoding, and the tokens whose
//! `tokenizer.ggml.token_type` is control (3) added as special tokens, so
//! that they match whole wherever they appear in the text, as Hugging
//! Face's tokenizer matches them (user-defined tokens, 4, match whole too,
//! as plain added tokens). BOS and EOS are `tokenizer.ggml.bos_token_id`
//! and `eos_token_id`.
//!
//! Decoding streams through [`StreamDecoder`]: a byte-level token may end
//! inside a UTF-8 character, so the decoder keeps the bytes of an
//! incomplete character until the tokens that complete it arrive, and never
//! yields a fragment of one.

use std::path::{Path, PathBuf};

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// The `tokenizer.ggml.pre` names this tokenizer knows.
pub const SUPPORTED_PRE: &str = "gpt2, smollm";

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// A byte-level BPE tokenizer, with its BOS and EOS ids.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source: PathBuf,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
}

impl Tokenizer {
    /// The tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let md = file.metadata();
        let path = file.path();
        let invalid = |field: &str, reason: String| ModelError::Invalid {
            file: path.to_path_buf(),
            field: format!("metadata {field}"),
            reason,
        };

        let model = md.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(ModelError::UnsupportedTokenizer {
                file: path.to_path_buf(),
                field: "metadata tokenizer.ggml.model".into(),
                name: model.into(),
                supported: "gpt2 (byte-level BPE)",
            });
        }
        let pre = md.get_str("tokenizer.ggml.pre")?;
        let pre_tokenizer = pre_tokenizer(pre)
            .map_err(|reason| invalid("tokenizer.ggml.pre", reason))?
            .ok_or_else(|| ModelError::UnsupportedTokenizer {
                file: path.to_path_buf(),
                field: "metadata tokenizer.ggml.pre".into(),
                name: pre.into(),
                supported: SUPPORTED_PRE,
            })?;

        let tokens = md.get_string_array("tokenizer.ggml.tokens")?;
        let mut vocab = tokenizers::models::bpe::Vocab::with_capacity(tokens.len());
        for (id, token) in tokens.iter().enumerate() {
            let id = u32::try_from(id)
                .map_err(|_| invalid("tokenizer.ggml.tokens", "more than 2^32 tokens".into()))?;
            if let Some(first) = vocab.insert((*token).to_string(), id) {
                return Err(invalid(
                    "tokenizer.ggml.tokens",
                    format!("token {token:?} appears at ids {first} and {id}"),
                ));
            }
        }
        let mut merges = Vec::new();
        for (i, merge) in md
            .get_string_array("tokenizer.ggml.merges")?
            .iter()
            .enumerate()
        {
            let (a, b) = merge.split_once(' ').ok_or_else(|| {
                invalid(
                    "tokenizer.ggml.merges",
                    format!("merge {i} ({merge:?}) is not two tokens separated by a space"),
                )
            })?;
            merges.push((a.to_string(), b.to_string()));
        }
        let types = match md.get("tokenizer.ggml.token_type") {
            None => Vec::new(),
            Some(_) => {
                let types = md.get_i64_array("tokenizer.ggml.token_type")?;
                if types.len() != tokens.len() {
                    return Err(invalid(
                        "tokenizer.ggml.token_type",
                        format!("{} types for {} tokens", types.len(), tokens.len()),
                    ));
                }
                types
            }
        };

        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| invalid("tokenizer.ggml.merges", e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevel::default()));
        let added = |kind| {
            tokens
                .iter()
                .zip(&types)
                .filter(|&(_, t)| *t == kind)
                .map(|(token, _)| {
                    AddedToken::from((*token).to_string(), kind == TOKEN_TYPE_CONTROL)
                })
                .collect::<Vec<_>>()
        };
        inner.add_special_tokens(&added(TOKEN_TYPE_CONTROL));
        inner.add_tokens(&added(TOKEN_TYPE_USER_DEFINED));

        let n = tokens.len();
        let id_key = |key: &str| -> Result<Option<u32>> {
            if md.get(key).is_none() {
                return Ok(None);
            }
            let id = md.get_u32(key)?;
            if id as usize >= n {
                return Err(invalid(key, format!("{id} is not below the {n} tokens")));
            }
            Ok(Some(id))
        };
        Ok(Tokenizer {
            bos_id: id_key("tokenizer.ggml.bos_token_id")?,
            eos_id: id_key("tokenizer.ggml.eos_token_id")?,
            inner,
            source: path.to_path_buf(),
        })
    }

    /// A Hugging Face `tokenizer.json` whose decoder is byte-level. BOS and
    /// EOS are the `bos_token` and `eos_token` of the `tokenizer_config.json`
    /// beside it, when there is one (`tokenizer.json` itself does not name
    /// them).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |file: &Path, source| ModelError::Io {
            file: file.to_path_buf(),
            context: "read",
            source,
        };
        let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| ModelError::Invalid {
            file: path.to_path_buf(),
            field: "tokenizer.json".into(),
            reason: e.to_string(),
        })?;
        match inner.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => {}
            other => {
                return Err(ModelError::UnsupportedTokenizer {
                    file: path.to_path_buf(),
                    field: "decoder".into(),
                    name: match other {
                        None => "none".into(),
                        Some(d) => serde_json::to_value(d)
                            .ok()
                            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(String::from))
                            .unwrap_or_else(|| "unknown".into()),
                    },
                    supported: "ByteLevel",
                });
            }
        }
        let mut tok = Tokenizer {
            inner,
            source: path.to_path_buf(),
            bos_id: None,
            eos_id: None,
        };
        let config = path.with_file_name("tokenizer_config.json");
        if config.is_file() {
            let text = std::fs::read(&config).map_err(|e| io(&config, e))?;
            let json: serde_json::Value =
                serde_json::from_slice(&text).map_err(|e| ModelError::Invalid {
                    file: config.clone(),
                    field: "tokenizer_config.json".into(),
                    reason: e.to_string(),
                })?;
            let id_of = |key: &str| -> Result<Option<u32>> {
                let content = match json.get(key) {
                    None | Some(serde_json::Value::Null) => return Ok(None),
                    Some(serde_json::Value::String(s)) => Some(s.as_str()),
                    Some(v) => v.get("content").and_then(|c| c.as_str()),
                };
                let content = content.ok_or_else(|| ModelError::Invalid {
                    file: config.clone(),
                    field: key.into(),
                    reason: "neither a string nor an object with a string \"content\"".into(),
                })?;
                tok.inner
                    .token_to_id(content)
                    .map(Some)
                    .ok_or_else(|| ModelError::Invalid {
                        file: config.clone(),
                        field: key.into(),
                        reason: format!("{content:?} is not a token of {}", path.display()),
                    })
            };
            let (bos, eos) = (id_of("bos_token")?, id_of("eos_token")?);
            tok.bos_id = bos;
            tok.eos_id = eos;
        }
        Ok(tok)
    }

    /// The ids of `text`, after the BOS id when `add_bos`. Control tokens
    /// in the text are matched whole.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if add_bos {
            ids.push(self.bos_id.ok_or_else(|| ModelError::Invalid {
                file: self.source.clone(),
                field: "bos_token_id".into(),
                reason: "a BOS token was asked for, but the tokenizer defines none".into(),
            })?);
        }
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| ModelError::Invalid {
                file: self.source.clone(),
                field: "text to encode".into(),
                reason: e.to_string(),
            })?;
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// The text of `ids`, control tokens included; bytes that are no valid
    /// UTF-8 become U+FFFD. An id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        for &id in ids {
            self.token(id)?;
        }
        self.inner
            .decode(ids, false)
            .map_err(|e| ModelError::Invalid {
                file: self.source.clone(),
                field: "token ids to decode".into(),
                reason: e.to_string(),
            })
    }

    /// A decoder fed one id at a time.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            text: Utf8Stream::default(),
        }
    }

    /// The BOS id, when the file names one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The EOS id, when the file names one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token (a control token's text, or a byte-level string).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The Hugging Face tokenizer underneath.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    fn token(&self, id: u32) -> Result<String> {
        self.inner
            .id_to_token(id)
            .ok_or_else(|| ModelError::Invalid {
                file: self.source.clone(),
                field: "token ids to decode".into(),
                reason: format!(
                    "{id} is not a token id (the vocabulary has {})",
                    self.vocab_size()
                ),
            })
    }

    /// The bytes a token stands for, as the byte-level decoder maps them: a
    /// token made only of byte-level characters is those bytes, any other
    /// (an added token holding a plain space, say) its own UTF-8.
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>> {
        let token = self.token(id)?;
        let mapped: Option<Vec<u8>> = token.chars().map(byte_of_char).collect();
        Ok(mapped.unwrap_or_else(|| token.into_bytes()))
    }
}

/// Streaming decode: [`StreamDecoder::step`] takes one id and yields the
/// text completed by it, holding back the bytes of a UTF-8 character that a
/// later token completes. The pieces concatenated (with
/// [`StreamDecoder::finish`]) equal [`Tokenizer::decode`] of all the ids.
#[derive(Debug)]
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    text: Utf8Stream,
}

impl StreamDecoder<'_> {
    /// The text that `id` completes, or `None` while a character is
    /// incomplete (or the token is empty). Bytes that can never be valid
    /// UTF-8 are yielded as U+FFFD, as [`Tokenizer::decode`] does.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        let bytes = self.tokenizer.token_bytes(id)?;
        Ok(self.text.push(&bytes))
    }

    /// Bytes of a character still incomplete.
    pub fn pending(&self) -> &[u8] {
        self.text.pending()
    }

    /// The end of the stream: an incomplete character left over becomes
    /// U+FFFD (empty when none is).
    pub fn finish(mut self) -> String {
        self.text.finish()
    }
}

/// Text from a stream of byte pieces (tokens' bytes), released a whole
/// UTF-8 character at a time: the owned half of [`StreamDecoder`], for
/// callers that keep one per sequence next to a shared [`Tokenizer`] (a
/// server's running requests) and pass [`Tokenizer::token_bytes`] in.
#[derive(Debug, Clone, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// The text `bytes` complete (`None` while a character is incomplete);
    /// bytes that can never be valid UTF-8 become U+FFFD.
    pub fn push(&mut self, bytes: &[u8]) -> Option<String> {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix up to `valid` is UTF-8, by the error.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        None => {
                            self.pending.drain(..valid);
                            break;
                        }
                    }
                }
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// Bytes of a character still incomplete.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// The end of the stream: an incomplete character left over becomes
    /// U+FFFD (empty when none is); the stream is empty afterwards.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// GPT-2's split: contractions, letters, numbers, other symbols, each with
/// an optional leading space, and runs of whitespace.
fn gpt2_byte_level() -> ByteLevel {
    ByteLevel::new(false, true, true)
}

/// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre` = `name`;
/// `None` for a name it does not know.
fn pre_tokenizer(name: &str) -> Result<Option<PreTokenizerWrapper>, String> {
    Ok(match name {
        "gpt2" => Some(gpt2_byte_level().into()),
        // llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM: each \p{N} first split
        // off alone, then GPT-2's expression on every piece.
        "smollm" => {
            let digits = Split::new(
                SplitPattern::Regex(r"\p{N}".into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| format!("the split expression of \"smollm\": {e}"))?;
            Some(Sequence::new(vec![digits.into(), gpt2_byte_level().into()]).into())
        }
        _ => None,
    })
}

/// GPT-2's byte-to-character table, inverted: the printable bytes
/// `!`..=`~`, `¡`..=`¬`, `®`..=`ÿ` stand for themselves, the other 68
/// bytes for U+0100.. in byte order.
fn byte_of_char(c: char) -> Option<u8> {
    let printable = |b: u32| matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
    let code = u32::from(c);
    if code < 0x100 {
        return printable(code).then_some(code as u8);
    }
    let n = code - 0x100;
    (0u32..0x100)
        .filter(|&b| !printable(b))
        .nth(n as usize)
        .map(|b| b as u8)
}
