//! Step-synchronous decoding across devices: every round, each device runs
//! one decode step for its share of the batch, and the round ends when the
//! slowest device is done (the barrier is the join of the round's threads;
//! across processes it would be a collective). Prompts are fed through the
//! same decode steps, one token per round (there is no prefill kernel).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use hetero_core::{DynDevice, Error, Result};

use crate::decode::DecodeModel;
use crate::workload::ModelShape;

/// One device's step: its next tokens and how long the step took.
type StepResult = (Vec<u32>, f64);

/// What one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServeReport {
    /// Sequences per device.
    pub batches: Vec<usize>,
    /// Generated tokens per second over all devices (generation rounds only).
    pub tokens_per_s: f64,
    /// Mean wall time of a generation round: the per-token latency, seconds.
    pub per_token_latency_s: f64,
    /// Mean time of each device's own step in generation rounds, seconds.
    pub device_step_s: Vec<f64>,
    /// The tokens each device generated for its first sequence (a check
    /// that the output is real, and the same on every run).
    pub first_sequence_tokens: Vec<Vec<u32>>,
}

/// Decode `prompt_len` prompt tokens then `gen_len` new tokens for
/// `batches[g]` sequences on device `g`, all devices in lock-step.
/// Weights are synthetic and each model is a
/// [`DecodeModel::synthetic_stand_in`]: for a shape the step does not
/// implement (ALiBi, `bloom-3b`) the timings are of its sizes and the
/// tokens are not that model's.
pub fn serve(
    devices: &[&dyn DynDevice],
    model: &ModelShape,
    batches: &[usize],
    prompt_len: usize,
    gen_len: usize,
) -> Result<ServeReport> {
    if devices.len() != batches.len() {
        return Err(Error::invalid(
            "batches",
            format!("{} batches for {} devices", batches.len(), devices.len()),
        ));
    }
    if gen_len == 0 || prompt_len == 0 {
        return Err(Error::invalid(
            "lengths",
            "prompt and generation lengths must be at least 1",
        ));
    }
    let shape = model.executed();
    let max_len = prompt_len + gen_len;
    // Devices with no sequences take no part.
    let mut models: Vec<Option<DecodeModel<'_>>> = Vec::with_capacity(devices.len());
    for (&d, &b) in devices.iter().zip(batches) {
        models.push(if b == 0 {
            None
        } else {
            Some(DecodeModel::synthetic_stand_in(d, &shape, b, max_len)?)
        });
    }
    // Deterministic prompts: sequence s of device g starts from token (g * 131 + s * 7).
    let mut tokens: Vec<Vec<u32>> = batches
        .iter()
        .enumerate()
        .map(|(g, &b)| {
            (0..b)
                .map(|s| ((g * 131 + s * 7) % shape.vocab) as u32)
                .collect()
        })
        .collect();
    let mut first: Vec<Vec<u32>> = vec![Vec::new(); devices.len()];
    let mut step_sum = vec![0.0f64; devices.len()];
    let mut gen_time = 0.0f64;
    for round in 0..max_len - 1 {
        let generating = round + 1 >= prompt_len;
        let start = Instant::now();
        let results: Vec<Result<Option<StepResult>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = models
                .iter_mut()
                .zip(&tokens)
                .map(|(m, t)| {
                    scope.spawn(move || -> Result<Option<StepResult>> {
                        let Some(m) = m else { return Ok(None) };
                        let s = Instant::now();
                        let next = m.step(t)?;
                        Ok(Some((next, s.elapsed().as_secs_f64())))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::invalid("serve", "a device thread panicked"))
                    })
                })
                .collect()
        });
        let round_time = start.elapsed().as_secs_f64();
        for (g, r) in results.into_iter().enumerate() {
            if let Some((next, t)) = r? {
                if generating {
                    step_sum[g] += t;
                    first[g].push(next[0]);
                }
                // During the prompt the next input is the prompt's own next
                // token (here: the previous one plus one); then the model's.
                tokens[g] = if generating {
                    next
                } else {
                    tokens[g]
                        .iter()
                        .map(|t| (t + 1) % shape.vocab as u32)
                        .collect()
                };
            }
        }
        if generating {
            gen_time += round_time;
        }
    }
    let rounds = gen_len as f64;
    let total: usize = batches.iter().sum();
    Ok(ServeReport {
        batches: batches.to_vec(),
        tokens_per_s: total as f64 * rounds / gen_time.max(f64::MIN_POSITIVE),
        per_token_latency_s: gen_time / rounds,
        device_step_s: step_sum.iter().map(|s| s / rounds).collect(),
        first_sequence_tokens: first,
    })
}
