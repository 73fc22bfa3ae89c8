//! Text generation: a prompt's ids through one batched prefill, then one
//! decode step per token, each token chosen by a [`Sampler`], text
//! streamed as whole UTF-8 characters, stopping at an end-of-sequence id,
//! at a stop string (text that might still become one is held back, never
//! streamed and then taken back), at `max_tokens`, or when the context is
//! full. Prefill and decode are timed separately.

use std::time::Instant;

use hetero_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::llama::{LlamaModel, Logits};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{Tokenizer, Utf8Stream};

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateOptions {
    /// New tokens at most.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends before the first occurrence of any of these.
    pub stop: Vec<String>,
    /// Ids that end generation (the checkpoint's EOS ids); not part of the output.
    pub stop_ids: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            stop_ids: Vec::new(),
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced one of the stop ids (this one).
    EndOfSequence(u32),
    /// The text reached a stop string (this one).
    StopString(String),
    /// `max_tokens` were generated.
    Length,
    /// The model's context (its trained positions) is full.
    ContextFull,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    /// The generated ids (without a final stop id).
    pub ids: Vec<u32>,
    /// Their text, cut before a stop string.
    pub text: String,
    pub finish_reason: FinishReason,
    pub prefill_seconds: f64,
    /// Decode steps run after the prefill (each yields one token).
    pub decode_steps: usize,
    pub decode_seconds: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
}

/// Holds back streamed text that might be the start of a stop string.
#[derive(Debug, Clone)]
struct StopScanner {
    stops: Vec<String>,
    text: String,
    emitted: usize,
}

impl StopScanner {
    fn new(stops: Vec<String>) -> Self {
        StopScanner {
            stops,
            text: String::new(),
            emitted: 0,
        }
    }

    /// Add `piece`; returns the text now safe to emit and the stop string
    /// reached, if any (the text is then cut before it).
    fn push(&mut self, piece: &str) -> (String, Option<String>) {
        let from = self.emitted;
        self.text.push_str(piece);
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        // A stop string can only begin at most `longest - 1` bytes before
        // what was already emitted; earlier text was searched before.
        let mut search = from.saturating_sub(longest.saturating_sub(1));
        while !self.text.is_char_boundary(search) {
            search -= 1;
        }
        let found = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| {
                self.text[search..]
                    .find(s.as_str())
                    .map(|at| (search + at, s))
            })
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = found {
            let out = self.text[self.emitted.min(at)..at].to_string();
            let stop = stop.clone();
            self.text.truncate(at);
            self.emitted = at;
            return (out, Some(stop));
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        let mut keep_from = self.text.len();
        for start in (self.emitted..self.text.len()).rev() {
            if self.text.len() - start >= longest {
                break;
            }
            if self.text.is_char_boundary(start) {
                let tail = &self.text[start..];
                if self.stops.iter().any(|s| s.starts_with(tail)) {
                    keep_from = start;
                }
            }
        }
        let out = self.text[self.emitted..keep_from].to_string();
        self.emitted = keep_from;
        (out, None)
    }

    /// Everything not yet emitted.
    fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }
}

/// What one [`Continuation::step`] produced. `text` is the text now final
/// (possibly empty: a held-back character or stop-string prefix).
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Generation goes on: feed `next_id` to the model.
    Continue { text: String, next_id: u32 },
    /// Generation ended, for `reason`; `text` is the last of it.
    Finished { text: String, reason: FinishReason },
}

/// The token-by-token state of one sequence's generation: its sampler,
/// the UTF-8 and stop-string holding back of its text, the ids so far.
/// [`generate()`] drives one of these per call; a server keeps one per
/// running request and steps them all after each batched forward pass, so
/// both end generation by exactly the same rules.
#[derive(Debug, Clone)]
pub struct Continuation {
    options: GenerateOptions,
    sampler: Sampler,
    utf8: Utf8Stream,
    scanner: StopScanner,
    ids: Vec<u32>,
    finish: Option<FinishReason>,
}

impl Continuation {
    /// Check `options` (sampling values in range) and start empty.
    pub fn new(options: GenerateOptions) -> Result<Self> {
        let sampler = Sampler::new(options.sampling)?;
        Ok(Continuation {
            scanner: StopScanner::new(options.stop.clone()),
            options,
            sampler,
            utf8: Utf8Stream::default(),
            ids: Vec::new(),
            finish: None,
        })
    }

    /// The ids generated so far (a final stop id excluded).
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The text so far, cut before a stop string.
    pub fn text(&self) -> &str {
        &self.scanner.text
    }

    /// Why generation ended, once it has.
    pub fn finish_reason(&self) -> Option<&FinishReason> {
        self.finish.as_ref()
    }

    /// Choose the next token from `logits` (the last position's row) and
    /// decide whether generation goes on. `room` says whether the
    /// sequence's cache can take one more position (false: the context is
    /// full). After the step that finishes, further calls are an error.
    pub fn step(&mut self, tokenizer: &Tokenizer, logits: &[f32], room: bool) -> Result<Step> {
        if self.finish.is_some() {
            return Err(Error::invalid(
                "continuation",
                "generation has already ended",
            ));
        }
        let mut text = String::new();
        let reason = 'finish: {
            if self.ids.len() == self.options.max_tokens {
                break 'finish FinishReason::Length;
            }
            let id = self.sampler.sample(logits)?;
            if self.options.stop_ids.contains(&id) {
                break 'finish FinishReason::EndOfSequence(id);
            }
            self.ids.push(id);
            if let Some(piece) = self.utf8.push(&tokenizer.token_bytes(id)?) {
                let (out, stop) = self.scanner.push(&piece);
                text = out;
                if let Some(stop) = stop {
                    break 'finish FinishReason::StopString(stop);
                }
            }
            if self.ids.len() == self.options.max_tokens {
                break 'finish FinishReason::Length;
            }
            if !room {
                break 'finish FinishReason::ContextFull;
            }
            return Ok(Step::Continue { text, next_id: id });
        };
        if !matches!(reason, FinishReason::StopString(_)) {
            // The end of the text: an incomplete character, then whatever
            // was held back as a possible stop prefix.
            let rest = self.utf8.finish();
            let (out, stop) = self.scanner.push(&rest);
            text.push_str(&out);
            if stop.is_none() {
                text.push_str(&self.scanner.flush());
            }
        }
        self.finish = Some(reason.clone());
        Ok(Step::Finished { text, reason })
    }
}

/// Generate from `prompt_ids`, calling `on_text` with each piece of text as
/// it becomes final.
pub fn generate(
    model: &LlamaModel,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    options: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    let config = model.config();
    if prompt_ids.is_empty() {
        return Err(Error::invalid("prompt", "has no tokens"));
    }
    if prompt_ids.len() >= config.max_positions {
        return Err(Error::invalid(
            "prompt",
            format!(
                "{} tokens leave no room in the model's context of {} positions",
                prompt_ids.len(),
                config.max_positions
            ),
        ));
    }
    let mut continuation = Continuation::new(options.clone())?;
    let max_len = (prompt_ids.len() + options.max_tokens).min(config.max_positions);
    let mut cache = model.new_cache(max_len)?;

    let started = Instant::now();
    let mut logits = model.forward(&mut cache, prompt_ids, Logits::Last)?;
    let prefill_seconds = started.elapsed().as_secs_f64();

    let mut decode_steps = 0;
    let decode_started = Instant::now();
    let finish_reason = loop {
        match continuation.step(tokenizer, &logits, cache.len() < cache.max_len())? {
            Step::Continue { text, next_id } => {
                if !text.is_empty() {
                    on_text(&text);
                }
                logits = model.forward(&mut cache, &[next_id], Logits::Last)?;
                decode_steps += 1;
            }
            Step::Finished { text, reason } => {
                if !text.is_empty() {
                    on_text(&text);
                }
                break reason;
            }
        }
    };
    let decode_seconds = decode_started.elapsed().as_secs_f64();
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    Ok(Generation {
        prompt_ids: prompt_ids.to_vec(),
        ids: continuation.ids,
        text: continuation.scanner.text,
        finish_reason,
        prefill_seconds,
        decode_steps,
        decode_seconds,
        prefill_tokens_per_s: rate(prompt_ids.len(), prefill_seconds),
        decode_tokens_per_s: rate(decode_steps, decode_seconds),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(stops: &[&str], pieces: &[&str]) -> (String, Option<String>, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = StopScanner::new(stops);
        let mut streamed = String::new();
        for p in pieces {
            let (out, stop) = s.push(p);
            streamed.push_str(&out);
            if stop.is_some() {
                return (streamed, stop, s.text);
            }
        }
        streamed.push_str(&s.flush());
        (streamed, None, s.text)
    }

    #[test]
    fn stop_strings_cut_the_text_and_are_never_streamed() {
        // Split across pieces.
        let (out, stop, text) = scan(&["\n\nUser:"], &["Hello", "\n", "\nUs", "er: hi"]);
        assert_eq!(
            (out.as_str(), stop.as_deref(), text.as_str()),
            ("Hello", Some("\n\nUser:"), "Hello")
        );
        // A held-back prefix that does not become a stop is released.
        let (out, stop, _) = scan(&["END"], &["a E", "N", "x"]);
        assert_eq!((out.as_str(), stop), ("a ENx", None));
        // The earliest of several stops wins; multi-byte text around them.
        let (out, stop, _) = scan(&["é!", "b"], &["aé", "!b"]);
        assert_eq!((out.as_str(), stop.as_deref()), ("a", Some("é!")));
        // No stops: everything streams as it comes.
        let (out, _, _) = scan(&[], &["x", "y"]);
        assert_eq!(out, "xy");
    }
}
