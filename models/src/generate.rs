//! Text generation: a prompt's ids through one batched prefill, then one
//! decode step per token, each token chosen by a [`Sampler`], text
//! streamed as whole UTF-8 characters, stopping at an end-of-sequence id,
//! at a stop string (text that might still become one is held back, never
//! streamed and then taken back), at `max_tokens`, or when the context is
//! full. Prefill and decode are timed separately.

use std::time::Instant;

use hetero_core::{Error, Result};
use serde::Serialize;

use crate::llama::{LlamaModel, Logits};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::Tokenizer;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
struct StopScanner<'a> {
    stops: &'a [String],
    text: String,
    emitted: usize,
}

impl StopScanner<'_> {
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
            self.text.truncate(at);
            self.emitted = at;
            return (out, Some(stop.clone()));
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
    let mut sampler = Sampler::new(options.sampling)?;
    let max_len = (prompt_ids.len() + options.max_tokens).min(config.max_positions);
    let mut cache = model.new_cache(max_len)?;

    let started = Instant::now();
    let mut logits = model.forward(&mut cache, prompt_ids, Logits::Last)?;
    let prefill_seconds = started.elapsed().as_secs_f64();

    let mut decoder = tokenizer.stream_decoder();
    let mut scanner = StopScanner {
        stops: &options.stop,
        text: String::new(),
        emitted: 0,
    };
    let mut ids = Vec::new();
    let mut decode_steps = 0;
    let decode_started = Instant::now();
    let finish_reason = loop {
        if ids.len() == options.max_tokens {
            break FinishReason::Length;
        }
        let id = sampler.sample(&logits)?;
        if options.stop_ids.contains(&id) {
            break FinishReason::EndOfSequence(id);
        }
        ids.push(id);
        if let Some(piece) = decoder.step(id)? {
            let (out, stop) = scanner.push(&piece);
            if !out.is_empty() {
                on_text(&out);
            }
            if let Some(stop) = stop {
                break FinishReason::StopString(stop);
            }
        }
        if ids.len() == options.max_tokens {
            break FinishReason::Length;
        }
        if cache.len() == cache.max_len() {
            break FinishReason::ContextFull;
        }
        logits = model.forward(&mut cache, &[id], Logits::Last)?;
        decode_steps += 1;
    };
    let decode_seconds = decode_started.elapsed().as_secs_f64();
    if !matches!(finish_reason, FinishReason::StopString(_)) {
        let rest = decoder.finish();
        let (mut out, stop) = scanner.push(&rest);
        if stop.is_none() {
            out.push_str(&scanner.flush());
        }
        if !out.is_empty() {
            on_text(&out);
        }
    }
    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    Ok(Generation {
        prompt_ids: prompt_ids.to_vec(),
        ids,
        text: scanner.text,
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
        let mut s = StopScanner {
            stops: &stops,
            text: String::new(),
            emitted: 0,
        };
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
