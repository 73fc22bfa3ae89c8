//! Prompt ids of a request, as the model's own tooling makes them: a chat
//! rendered by the checkpoint's template (its BOS written by the
//! template), raw text with the BOS when the file asks for it; and the
//! ids that end generation.

use hetero_models::{ChatTemplate, Checkpoint, Message, Tokenizer, adds_bos};

use crate::api::{ApiError, Input};

/// What turns requests into ids for one checkpoint.
#[derive(Debug)]
pub struct Prompter {
    template: Option<ChatTemplate>,
    adds_bos: bool,
    stop_ids: Vec<u32>,
}

impl Prompter {
    pub fn new(checkpoint: &Checkpoint, tokenizer: &Tokenizer) -> hetero_core::Result<Self> {
        Ok(Prompter {
            template: ChatTemplate::for_checkpoint(checkpoint, tokenizer)?,
            adds_bos: adds_bos(checkpoint) && tokenizer.bos_id().is_some(),
            stop_ids: checkpoint.stop_ids(tokenizer)?,
        })
    }

    /// The ids that end generation (the checkpoint's EOS ids).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Whether chat requests can be served (the file has a template).
    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// The prompt ids of `input`.
    pub fn ids(&self, tokenizer: &Tokenizer, input: &Input) -> Result<Vec<u32>, ApiError> {
        match input {
            Input::Text(text) => tokenizer
                .encode(text, self.adds_bos)
                .map_err(|e| ApiError::invalid("prompt", e.to_string())),
            Input::Chat(messages) => {
                let Some(template) = &self.template else {
                    return Err(ApiError::invalid(
                        "messages",
                        "this model carries no chat template; use /v1/completions with a prompt",
                    ));
                };
                let messages: Vec<Message> = messages
                    .iter()
                    .map(|m| Message::new(m.role.clone(), m.content.clone()))
                    .collect();
                let text = template
                    .render(&messages, true)
                    .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
                tokenizer
                    .encode(&text, false)
                    .map_err(|e| ApiError::invalid("messages", e.to_string()))
            }
        }
    }
}
