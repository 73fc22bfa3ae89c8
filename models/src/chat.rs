//! Chat templates: the Jinja template a model file carries (GGUF's
//! `tokenizer.chat_template`, Hugging Face's `tokenizer_config.json` or
//! `chat_template.jinja`) rendered with `minijinja` the way transformers'
//! `apply_chat_template` renders it: `trim_blocks` and `lstrip_blocks` on,
//! loop controls, Python's string methods (minijinja-contrib's pycompat),
//! `raise_exception` and `strftime_now`, and the variables `messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token`.

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde::Serialize;

use hetero_core::{Error, Result};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

fn raise_exception(message: String) -> std::result::Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `strftime_now(format)`: today's date (UTC) for the `%d %m %Y %b %B %y`
/// directives templates use (Llama 3's "Today Date").
fn strftime_now(format: String) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(ch) = chars.next() {
        if ch != '%' {
            out.push(ch);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

impl ChatTemplate {
    /// Compile `source`; a template that does not parse is an error naming
    /// where.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::invalid("chat template", format!("does not parse: {e:#}")))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// The template of `checkpoint`, with BOS and EOS spelled as its
    /// tokenizer spells them; `None` when the file carries no template.
    pub fn for_checkpoint(
        checkpoint: &crate::Checkpoint,
        tokenizer: &crate::Tokenizer,
    ) -> Result<Option<Self>> {
        let Some(source) = checkpoint.chat_template()? else {
            return Ok(None);
        };
        let spell = |id: Option<u32>| {
            id.and_then(|id| tokenizer.inner().id_to_token(id))
                .unwrap_or_default()
        };
        Self::new(
            &source,
            &spell(tokenizer.bos_id()),
            &spell(tokenizer.eos_id()),
        )
        .map(Some)
    }

    /// The text of `messages`, followed by the assistant's turn opening
    /// when `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| Error::invalid("chat template", e.to_string()))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| Error::invalid("chat template", format!("rendering failed: {e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_the_civil_calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_697), (2026, 9, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn python_methods_exceptions_and_whitespace_as_transformers() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n  {% if m.role == 'bad' %}{{ raise_exception('no ' + m.role) }}{% endif %}\n{{ bos_token }}{{ m.content.strip() }}|\n{% endfor %}{% if add_generation_prompt %}>{% endif %}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let text = t
            .render(
                &[
                    Message::new("user", "  hi  "),
                    Message::new("assistant", "yo"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(text, "<s>hi|\n<s>yo|\n>");
        let err = t.render(&[Message::new("bad", "x")], false).unwrap_err();
        assert!(err.to_string().contains("no bad"), "{err}");
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
