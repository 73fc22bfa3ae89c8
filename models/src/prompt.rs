//! Turning what a user typed into prompt ids the way the model's own
//! tooling does: a chat is rendered by the file's template and encoded
//! without adding a BOS (templates write `bos_token` themselves, and
//! transformers encodes their output without special tokens); raw text
//! gets the BOS when the file says to (GGUF `tokenizer.ggml.add_bos_token`,
//! Hugging Face `add_bos_token` in `tokenizer_config.json`).

use hetero_core::{Error, Result};

use crate::chat::{ChatTemplate, Message};
use crate::checkpoint::Checkpoint;
use crate::tokenizer::Tokenizer;

/// Whether raw text given to this checkpoint starts with the BOS id.
pub fn adds_bos(checkpoint: &Checkpoint) -> bool {
    if let Some(f) = checkpoint.gguf() {
        return f
            .metadata()
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| match v {
                crate::gguf::Value::Bool(b) => Some(*b),
                _ => None,
            })
            .unwrap_or(false);
    }
    let config = checkpoint.path().join("tokenizer_config.json");
    std::fs::read(&config)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|j| j.get("add_bos_token").and_then(|v| v.as_bool()))
        .unwrap_or(false)
}

/// The prompt: the ids of `text` as raw text, or, with `chat`, of a
/// conversation of an optional system message and `text` as the user's,
/// rendered by the checkpoint's template with the assistant's turn opened.
/// Returns the text the ids encode too.
pub fn prompt_ids(
    checkpoint: &Checkpoint,
    tokenizer: &Tokenizer,
    text: &str,
    chat: bool,
    system: Option<&str>,
) -> Result<(String, Vec<u32>)> {
    if !chat {
        if system.is_some() {
            return Err(Error::invalid("system", "a system message needs chat mode"));
        }
        let ids = tokenizer.encode(text, adds_bos(checkpoint) && tokenizer.bos_id().is_some())?;
        return Ok((text.to_string(), ids));
    }
    let template = ChatTemplate::for_checkpoint(checkpoint, tokenizer)?.ok_or_else(|| {
        Error::unsupported_in(
            "chat",
            format!(
                "{} carries no chat template; give the prompt as raw text (without chat mode)",
                checkpoint.path().display()
            ),
        )
    })?;
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(Message::new("system", s));
    }
    messages.push(Message::new("user", text));
    let rendered = template.render(&messages, true)?;
    let ids = tokenizer.encode(&rendered, false)?;
    Ok((rendered, ids))
}
