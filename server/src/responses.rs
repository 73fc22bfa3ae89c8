//! The JSON bodies this server answers with, in OpenAI's formats: whole
//! completions, streamed chunks, the model list.

use hetero_models::FinishReason;
use hetero_scheduler::live::Usage;
use serde_json::{Value, json};

/// Which route a response belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Chat,
    Completion,
}

/// Fields every body of one response shares.
#[derive(Debug, Clone)]
pub struct Meta {
    pub route: Route,
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// OpenAI's finish reasons: `stop` (a stop id or string), `length`
/// (max_tokens, or the context).
pub fn finish_reason(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::EndOfSequence(_) | FinishReason::StopString(_) => "stop",
        FinishReason::Length | FinishReason::ContextFull => "length",
    }
}

pub fn usage(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

/// A whole (non-streamed) completion.
pub fn completion(meta: &Meta, text: &str, reason: &FinishReason, u: &Usage) -> Value {
    let choice = match meta.route {
        Route::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": finish_reason(reason),
        }),
        Route::Completion => json!({
            "index": 0,
            "text": text,
            "logprobs": null,
            "finish_reason": finish_reason(reason),
        }),
    };
    json!({
        "id": meta.id,
        "object": match meta.route { Route::Chat => "chat.completion", Route::Completion => "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
        "usage": usage(u),
    })
}

/// A streamed chunk: `text` (chat: the delta's content; `role` on the
/// first), the finish reason on the last, and the usage where given.
pub fn chunk(
    meta: &Meta,
    role: bool,
    text: Option<&str>,
    reason: Option<&FinishReason>,
    u: Option<&Usage>,
) -> Value {
    let finish = reason.map(finish_reason);
    let choice = match meta.route {
        Route::Chat => {
            let mut delta = serde_json::Map::new();
            if role {
                delta.insert("role".into(), "assistant".into());
            }
            if let Some(t) = text {
                delta.insert("content".into(), t.into());
            }
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        }
        Route::Completion => json!({
            "index": 0,
            "text": text.unwrap_or(""),
            "logprobs": null,
            "finish_reason": finish,
        }),
    };
    let mut v = json!({
        "id": meta.id,
        "object": match meta.route { Route::Chat => "chat.completion.chunk", Route::Completion => "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
    });
    if let Some(u) = u {
        v["usage"] = usage(u);
    }
    v
}

/// The chunk of `stream_options.include_usage`: no choices, the usage.
pub fn usage_chunk(meta: &Meta, u: &Usage) -> Value {
    json!({
        "id": meta.id,
        "object": match meta.route { Route::Chat => "chat.completion.chunk", Route::Completion => "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "choices": [],
        "usage": usage(u),
    })
}

/// `GET /v1/models`.
pub fn models(id: &str, created: u64) -> Value {
    json!({
        "object": "list",
        "data": [{"id": id, "object": "model", "created": created, "owned_by": "hetero"}],
    })
}
