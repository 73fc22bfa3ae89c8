//! The speed benchmark of a loaded model on its device, in the shapes
//! llama.cpp's own tools measure so the figures compare one to one:
//! prefill of a 128-token prompt in one batched pass (`llama-bench -p
//! 128`), and decode throughput, total over sequences, of 1, 8 and 32
//! sequences after a 32-token prompt for 64 generated tokens
//! (`llama-batched-bench -npp 32 -ntg 64 -npl 1,8,32`: the rate of the
//! generation phase only). Token ids are seeded random ids of the
//! vocabulary (speed does not depend on them); each generated token is the
//! argmax of its logits, as greedy decoding picks it. Every figure is the
//! median of `repeats` runs after one warm-up run.

use std::collections::BTreeMap;
use std::time::Instant;

use hetero_core::rng::SplitMix64;
use hetero_core::{Error, Result};
use serde::Serialize;

use crate::llama::{LlamaModel, Logits};
use crate::sampling::argmax;

/// What to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchOptions {
    /// Prompt tokens of the prefill measurement.
    pub prefill_tokens: usize,
    /// Sequence counts of the decode measurements.
    pub decode_batches: Vec<usize>,
    /// Prompt tokens of each sequence before decoding.
    pub decode_prompt: usize,
    /// Tokens generated per sequence.
    pub decode_tokens: usize,
    /// Measured runs per figure (the median is reported), after a warm-up.
    pub repeats: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            prefill_tokens: 128,
            decode_batches: vec![1, 8, 32],
            decode_prompt: 32,
            decode_tokens: 64,
            repeats: 3,
        }
    }
}

/// Measured speeds of one model on one device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// Prompt tokens per second of one batched prefill.
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second, total over the sequences, by sequence count.
    pub decode_tokens_per_s: BTreeMap<String, f64>,
    /// Bytes of the weights on the device.
    pub resident_weight_bytes: u64,
    /// Bytes of KV cache per position of one sequence.
    pub kv_bytes_per_position: u64,
}

/// Progress of a benchmark: the phase now measured.
pub type BenchProgress<'a> = &'a mut dyn FnMut(&str);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measure `model` on its device.
pub fn bench(
    model: &LlamaModel,
    options: &BenchOptions,
    progress: BenchProgress<'_>,
) -> Result<BenchReport> {
    let c = model.config();
    let longest = options
        .prefill_tokens
        .max(options.decode_prompt + options.decode_tokens);
    if options.prefill_tokens == 0 || options.decode_prompt == 0 || options.decode_tokens == 0 {
        return Err(Error::invalid(
            "benchmark",
            "every token count must be at least 1",
        ));
    }
    // Before any measurement: the prefill alone takes minutes on a slow device.
    if options.decode_batches.contains(&0) {
        return Err(Error::invalid(
            "benchmark",
            "a decode batch of 0 sequences was asked for; every decode batch needs at least 1",
        ));
    }
    if longest > c.max_positions {
        return Err(Error::invalid(
            "benchmark",
            format!(
                "needs {longest} positions; the model has {}",
                c.max_positions
            ),
        ));
    }
    let repeats = options.repeats.max(1);
    let mut rng = SplitMix64::new(0x5eed);
    let mut prompt = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.below(c.vocab) as u32).collect() };

    progress(&format!("prefill of {} tokens", options.prefill_tokens));
    let ids = prompt(options.prefill_tokens);
    let mut cache = model.new_cache(options.prefill_tokens)?;
    let mut rates = Vec::new();
    for run in 0..=repeats {
        cache.clear();
        let t = Instant::now();
        model.forward(&mut cache, &ids, Logits::Last)?;
        if run > 0 {
            rates.push(ids.len() as f64 / t.elapsed().as_secs_f64());
        }
    }
    let prefill_tokens_per_s = median(rates);

    let mut decode = BTreeMap::new();
    for &batch in &options.decode_batches {
        progress(&format!(
            "decode of {batch} sequence{} x {} tokens",
            if batch == 1 { "" } else { "s" },
            options.decode_tokens
        ));
        let len = options.decode_prompt + options.decode_tokens;
        let mut caches = (0..batch)
            .map(|_| model.new_cache(len))
            .collect::<Result<Vec<_>>>()?;
        let prompts: Vec<Vec<u32>> = (0..batch).map(|_| prompt(options.decode_prompt)).collect();
        let mut rates = Vec::new();
        for run in 0..=repeats {
            caches.iter_mut().for_each(|c| c.clear());
            let mut seqs: Vec<_> = caches
                .iter_mut()
                .zip(&prompts)
                .map(|(c, p)| (c, p.as_slice()))
                .collect();
            let logits = model.forward_batch(&mut seqs, Logits::Last)?;
            let mut next: Vec<[u32; 1]> = logits.iter().map(|l| [argmax(l)]).collect();
            let t = Instant::now();
            for _ in 0..options.decode_tokens {
                let mut seqs: Vec<_> = caches
                    .iter_mut()
                    .zip(&next)
                    .map(|(c, t)| (c, t.as_slice()))
                    .collect();
                let logits = model.forward_batch(&mut seqs, Logits::Last)?;
                next = logits.iter().map(|l| [argmax(l)]).collect();
            }
            if run > 0 {
                let tokens = (batch * options.decode_tokens) as f64;
                rates.push(tokens / t.elapsed().as_secs_f64());
            }
        }
        decode.insert(batch.to_string(), median(rates));
    }
    Ok(BenchReport {
        prefill_tokens_per_s,
        decode_tokens_per_s: decode,
        resident_weight_bytes: model.weight_bytes(),
        kv_bytes_per_position: model.kv_bytes_per_position(),
    })
}
