//! The OpenAI request bodies this server reads, checked field by field so
//! that every refusal names the field (`param`) as OpenAI's errors do, and
//! the error objects it answers with.
//!
//! Bodies are parsed into a JSON value first and each field read with its
//! own type check, rather than deserialized into a struct in one go: a
//! serde error says where in the text it failed, not which field was wrong.

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

/// An error answered to the client: its HTTP status and OpenAI's error
/// object (`{"error": {"message", "type", "param", "code"}}`).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 naming the field at fault.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: None,
        }
    }

    /// A 400 about the body as a whole.
    pub fn body(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The JSON body.
    pub fn to_json(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

/// One message of a chat.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// What to complete.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// `/v1/chat/completions`: rendered by the model's chat template.
    Chat(Vec<ChatMessage>),
    /// `/v1/completions`: raw text.
    Text(String),
}

/// A checked request of either route.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub input: Input,
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage alone.
    pub include_usage: bool,
}

/// Stop strings a request may give (OpenAI allows 4).
pub const MAX_STOP: usize = 16;

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::body(format!(
            "the body is not valid JSON ({e}); send a JSON object"
        ))
    })?;
    match value {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::body(format!(
            "the body is JSON {}, not an object",
            kind_of(&other)
        ))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads the fields of one body; absent and `null` are the same.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(ApiError::invalid(
                name,
                format!("`{name}` must be a string, not {}", kind_of(v)),
            )),
        }
    }

    fn bool(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(ApiError::invalid(
                name,
                format!("`{name}` must be a boolean, not {}", kind_of(v)),
            )),
        }
    }

    fn number(&self, name: &str, default: f64, min: f64, max: f64) -> Result<f64, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if (min..=max).contains(&x) => Ok(x),
                _ => Err(ApiError::invalid(
                    name,
                    format!("`{name}` is {n}; it must be between {min} and {max}"),
                )),
            },
            Some(v) => Err(ApiError::invalid(
                name,
                format!("`{name}` must be a number, not {}", kind_of(v)),
            )),
        }
    }

    fn unsigned(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
                ApiError::invalid(
                    name,
                    format!("`{name}` is {n}; it must be a whole number >= 0"),
                )
            }),
            Some(v) => Err(ApiError::invalid(
                name,
                format!("`{name}` must be an integer, not {}", kind_of(v)),
            )),
        }
    }

    /// `stop`: a string or an array of strings.
    fn stop(&self) -> Result<Vec<String>, ApiError> {
        let stops = match self.get("stop") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(ApiError::invalid(
                        "stop",
                        format!("`stop` holds {}, not only strings", kind_of(other)),
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(v) => Err(ApiError::invalid(
                "stop",
                format!(
                    "`stop` must be a string or an array of strings, not {}",
                    kind_of(v)
                ),
            ))?,
        };
        if stops.len() > MAX_STOP {
            return Err(ApiError::invalid(
                "stop",
                format!("{} stop strings; at most {MAX_STOP}", stops.len()),
            ));
        }
        if stops.iter().any(String::is_empty) {
            return Err(ApiError::invalid("stop", "a stop string is empty"));
        }
        Ok(stops)
    }
}

/// The text of a message's `content`: a string, or an array of parts of
/// which the `text` ones are joined.
fn content(i: usize, v: Option<&Value>) -> Result<String, ApiError> {
    let param = format!("messages[{i}].content");
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for (j, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str);
                match (kind, part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    _ => {
                        return Err(ApiError::invalid(
                            &format!("{param}[{j}]"),
                            "only text parts ({\"type\": \"text\", \"text\": ...}) are supported: \
                             this server runs text models",
                        ));
                    }
                }
            }
            Ok(out)
        }
        Some(other) => Err(ApiError::invalid(
            &param,
            format!(
                "must be a string or an array of parts, not {}",
                kind_of(other)
            ),
        )),
    }
}

fn messages(fields: &Fields<'_>) -> Result<Vec<ChatMessage>, ApiError> {
    let Some(value) = fields.get("messages") else {
        return Err(ApiError::invalid("messages", "`messages` is required"));
    };
    let Value::Array(items) = value else {
        return Err(ApiError::invalid(
            "messages",
            format!("`messages` must be an array, not {}", kind_of(value)),
        ));
    };
    if items.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` is empty"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let Value::Object(m) = m else {
                return Err(ApiError::invalid(
                    &format!("messages[{i}]"),
                    format!("a message must be an object, not {}", kind_of(m)),
                ));
            };
            let role = match m.get("role") {
                Some(Value::String(r))
                    if matches!(r.as_str(), "system" | "developer" | "user" | "assistant") =>
                {
                    // The templates of the Llama family know `system`.
                    if r == "developer" {
                        "system".to_string()
                    } else {
                        r.clone()
                    }
                }
                Some(Value::String(r)) => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].role"),
                        format!("role {r:?} is not one of system, developer, user, assistant"),
                    ));
                }
                _ => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].role"),
                        "every message needs a string `role`",
                    ));
                }
            };
            Ok(ChatMessage {
                role,
                content: content(i, m.get("content"))?,
            })
        })
        .collect()
}

/// Check a `/v1/chat/completions` (`chat`) or `/v1/completions` body.
pub fn parse(body: &[u8], chat: bool) -> Result<CompletionRequest, ApiError> {
    let map = object(body)?;
    let f = Fields(&map);
    let input = if chat {
        Input::Chat(messages(&f)?)
    } else {
        match f.get("prompt") {
            None => return Err(ApiError::invalid("prompt", "`prompt` is required")),
            Some(Value::String(s)) => Input::Text(s.clone()),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                Input::Text(a[0].as_str().unwrap_or_default().to_string())
            }
            Some(v) => {
                return Err(ApiError::invalid(
                    "prompt",
                    format!(
                        "`prompt` must be a string (or an array of one string), not {}",
                        kind_of(v)
                    ),
                ));
            }
        }
    };
    // OpenAI's newer name for max_tokens, on chat.
    let max_tokens = match f.unsigned("max_completion_tokens")? {
        Some(n) => Some(n),
        None => f.unsigned("max_tokens")?,
    };
    if max_tokens == Some(0) {
        return Err(ApiError::invalid(
            "max_tokens",
            "`max_tokens` must be at least 1",
        ));
    }
    if let Some(n) = f.unsigned("n")?
        && n != 1
    {
        return Err(ApiError::invalid(
            "n",
            format!("n = {n}: this server returns one choice per request; send n = 1"),
        ));
    }
    let temperature = f.number("temperature", 1.0, 0.0, 2.0)? as f32;
    let top_p = f.number("top_p", 1.0, 0.0, 1.0)? as f32;
    if top_p == 0.0 {
        return Err(ApiError::invalid("top_p", "`top_p` must be above 0"));
    }
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => Fields(o).bool("include_usage")?,
        Some(v) => {
            return Err(ApiError::invalid(
                "stream_options",
                format!("`stream_options` must be an object, not {}", kind_of(v)),
            ));
        }
    };
    Ok(CompletionRequest {
        model: f.string("model")?,
        input,
        max_tokens: max_tokens.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        temperature,
        top_p,
        seed: f.unsigned("seed")?,
        stop: f.stop()?,
        stream: f.bool("stream")?,
        include_usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(body: &str, chat: bool) -> Option<String> {
        parse(body.as_bytes(), chat).err().and_then(|e| e.param)
    }

    #[test]
    fn fields_are_read_with_their_defaults() {
        let r = parse(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"seed":7,"stop":"\n"}"#,
            true,
        )
        .unwrap();
        assert_eq!(r.model.as_deref(), Some("m"));
        assert_eq!(
            r.input,
            Input::Chat(vec![ChatMessage {
                role: "user".into(),
                content: "hi".into()
            }])
        );
        assert!(r.stream);
        assert_eq!((r.seed, r.temperature, r.top_p), (Some(7), 1.0, 1.0));
        assert_eq!(r.stop, vec!["\n".to_string()]);
        let r = parse(
            br#"{"prompt":"Once","max_tokens":5,"temperature":0,"stop":["a","b"],
                "messages":null}"#,
            false,
        )
        .unwrap();
        assert_eq!(r.input, Input::Text("Once".into()));
        assert_eq!((r.max_tokens, r.temperature), (Some(5), 0.0));
        // Content parts.
        let r = parse(
            br#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
            true,
        )
        .unwrap();
        assert_eq!(
            r.input,
            Input::Chat(vec![ChatMessage {
                role: "user".into(),
                content: "ab".into()
            }])
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        assert_eq!(param(r#"{}"#, true).as_deref(), Some("messages"));
        assert_eq!(
            param(r#"{"messages":[]}"#, true).as_deref(),
            Some("messages")
        );
        assert_eq!(
            param(r#"{"messages":[{"role":"robot","content":"x"}]}"#, true).as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            param(r#"{"messages":[{"role":"user","content":7}]}"#, true).as_deref(),
            Some("messages[0].content")
        );
        assert_eq!(param(r#"{}"#, false).as_deref(), Some("prompt"));
        for (body, field) in [
            (r#"{"prompt":"x","max_tokens":-1}"#, "max_tokens"),
            (r#"{"prompt":"x","max_tokens":0}"#, "max_tokens"),
            (r#"{"prompt":"x","max_tokens":"5"}"#, "max_tokens"),
            (r#"{"prompt":"x","temperature":3}"#, "temperature"),
            (r#"{"prompt":"x","top_p":0}"#, "top_p"),
            (r#"{"prompt":"x","seed":1.5}"#, "seed"),
            (r#"{"prompt":"x","stop":[1]}"#, "stop"),
            (r#"{"prompt":"x","stream":"yes"}"#, "stream"),
            (r#"{"prompt":"x","n":2}"#, "n"),
            (r#"{"prompt":"x","model":3}"#, "model"),
        ] {
            assert_eq!(param(body, false).as_deref(), Some(field), "{body}");
        }
        // Not JSON, not an object: no field, a message saying so.
        for body in ["{", "[1]", ""] {
            let e = parse(body.as_bytes(), false).unwrap_err();
            assert_eq!((e.status, e.param), (StatusCode::BAD_REQUEST, None));
        }
    }
}
