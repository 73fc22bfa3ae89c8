//! The HASC profiling and serving of a real checkpoint (a GGUF file or a
//! Hugging Face folder, read by `hetero-models`) instead of a synthetic
//! [`ModelShape`](crate::ModelShape): the policies take the same
//! [`DeviceProfile`]s, made here from a [`LlamaModel`] loaded on each
//! device.
//!
//! Memory: the model's f32 weights really loaded once per device, then
//! `B` KV caches of `max_len` positions ([`LlamaModel::new_cache`]) and the
//! activations of one forward call of `max(B, prompt_rows)` rows
//! ([`activation_bytes`]), doubling then bisection; an out-of-memory error
//! only shrinks `B` ([`profile_memory`]). [`footprint`] is the same sum
//! computed, for reports and errors.
//!
//! Speed: `forward_batch` timed for `B` sequences of one new token each
//! after a context of `context` tokens, fitted by [`StepModel::fit`]
//! ([`profile_speed`]).
//!
//! Serving ([`serve`]): a fixed batch of real prompts split by an
//! allocation; each device prefills its share (batched, at most
//! `max(B_g, prompt_rows)` rows per call, which the memory profile
//! covered), then all devices decode greedily in lock-step rounds, one
//! token per sequence per round.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use hetero_core::{DType, DynDevice, Error, QuantType, Result, SharedDevice};
use hetero_models::{Checkpoint, KvCache, LlamaConfig, LlamaModel, Logits, WeightFormat};

use crate::policy::{Allocation, DeviceProfile, StepFit, StepModel};
use crate::profile::MemoryProfile;

/// Prompts used when none are given: varied English, a few words to a
/// sentence or two each.
pub const DEFAULT_PROMPTS: &[&str] = &[
    "The capital of France is",
    "Write a short poem about the sea.",
    "Explain why the sky is blue in one sentence.",
    "Once upon a time, in a small village at the edge of a forest,",
    "List three uses of a paperclip:",
    "What is the difference between a virus and a bacterium?",
    "Translate to French: The weather is nice today.",
    "def fibonacci(n):",
    "My favourite recipe for a rainy evening is",
    "Summarize the plot of Romeo and Juliet.",
    "How many legs does a spider have?",
    "The three laws of thermodynamics state that",
];

/// What was loaded, for reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The name profiles are keyed by (the file or folder name).
    pub name: String,
    pub path: String,
    /// "gguf" or "huggingface".
    pub format: String,
    pub architecture: String,
    pub parameters: u64,
    /// Bytes the model takes on a device with kernels for every block
    /// format of the file (weights as stored, rotary table).
    pub resident_bytes: u64,
    /// Bytes it takes on a device that widens every weight to f32.
    pub f32_resident_bytes: u64,
    pub kv_bytes_per_position: u64,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub max_positions: usize,
}

impl ModelInfo {
    pub fn of(checkpoint: &Checkpoint) -> Self {
        let c = checkpoint.config();
        let path = checkpoint.path();
        ModelInfo {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string()),
            path: path.display().to_string(),
            format: checkpoint.format_name().into(),
            architecture: c.architecture.name().into(),
            parameters: c.parameters(),
            resident_bytes: resident_bytes(checkpoint, &QuantType::ALL),
            f32_resident_bytes: resident_bytes(checkpoint, &[]),
            kv_bytes_per_position: c.kv_bytes_per_position(),
            layers: c.layers,
            hidden: c.hidden,
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            vocab: c.vocab,
            max_positions: c.max_positions,
        }
    }
}

/// Bytes [`LlamaModel::load`] allocates on a device that keeps the block
/// formats `keep` as stored (its `quant_types`, see
/// [`WeightFormat::kept_formats`]): the weights and the rotary inverse
/// frequencies.
pub fn resident_bytes(checkpoint: &Checkpoint, keep: &[QuantType]) -> u64 {
    checkpoint.resident_weight_bytes(keep) + (checkpoint.config().head_dim / 2) as u64 * 4
}

/// The block formats `device` keeps as stored when it loads a model.
pub fn kept_formats(device: &dyn DynDevice) -> Vec<QuantType> {
    WeightFormat::Native.kept_formats(device)
}

/// Bytes of the buffers one `forward_batch` call of `rows` new tokens over
/// `seqs` sequences holds at once, bounded from above: a layer's
/// residual, normed input, Q, K, V, attention output and its staging,
/// output projection, gate, up and down; then the picked rows, their norm
/// and the logits.
pub fn activation_bytes(config: &LlamaConfig, rows: usize, seqs: usize) -> u64 {
    let (h, i) = (config.hidden as u64, config.intermediate as u64);
    let qw = (config.heads * config.head_dim) as u64;
    let kvw = (config.kv_heads * config.head_dim) as u64;
    let (rows, seqs) = (rows as u64, seqs as u64);
    let layer = rows * (4 * h + 2 * qw + 2 * kvw + 2 * i) + 2 * rows * qw;
    let head = seqs * (2 * h + config.vocab as u64);
    4 * (layer + head)
}

/// Rows a forward call of a device holding `batch` sequences may take:
/// a decode step's `batch`, or a prefill of up to `prompt_rows` tokens.
pub fn step_rows(batch: usize, prompt_rows: usize) -> usize {
    batch.max(prompt_rows)
}

/// What `batch` sequences of `max_len` positions take on a device that
/// keeps the block formats `keep`, the model included: what
/// [`profile_memory`] allocates.
pub fn footprint(
    checkpoint: &Checkpoint,
    keep: &[QuantType],
    kv: DType,
    batch: usize,
    max_len: usize,
    prompt_rows: usize,
) -> u64 {
    let c = checkpoint.config();
    resident_bytes(checkpoint, keep)
        + batch as u64 * max_len as u64 * c.kv_bytes_per_position_as(kv)
        + if batch == 0 {
            0
        } else {
            activation_bytes(c, step_rows(batch, prompt_rows), batch)
        }
}

/// Load `checkpoint` on `device`. A device too small is an
/// `InvalidInput` error naming the device, its memory and the model's
/// bytes (checked before reading any weight when the device reports less
/// memory than the model needs).
pub fn load(checkpoint: &Checkpoint, device: SharedDevice) -> Result<LlamaModel> {
    let info = ModelInfo::of(checkpoint);
    let dev = device.info();
    let need = resident_bytes(checkpoint, &kept_formats(device.as_ref()));
    let too_small = |detail: String| {
        Error::invalid(
            "model",
            format!(
                "{} needs {} bytes ({:.1} MiB) of weights; {} ({}) has {} bytes ({:.1} MiB){detail}",
                info.name,
                need,
                mib(need),
                dev.id,
                dev.name,
                dev.memory_total_bytes,
                mib(dev.memory_total_bytes),
            ),
        )
    };
    if dev.memory_total_bytes < need {
        return Err(too_small(String::new()));
    }
    LlamaModel::load(checkpoint, device.clone(), &mut |_| {}).map_err(|e| {
        if e.is_out_of_memory() {
            too_small(format!(" ({e})"))
        } else {
            e
        }
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// The largest `b` in `1..=limit` for which `fits(b)` (0 when none),
/// assuming `fits` is monotone: doubling, then bisection.
fn largest_fitting(limit: usize, fits: &mut dyn FnMut(usize) -> Result<bool>) -> Result<usize> {
    let (mut good, mut bad) = (0usize, limit.saturating_add(1));
    let mut b = 1usize;
    while b <= limit {
        if fits(b)? {
            good = b;
            b = b.saturating_mul(2);
        } else {
            bad = b;
            break;
        }
    }
    if good == limit {
        return Ok(good);
    }
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        if fits(mid)? {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Ok(good)
}

/// Largest batch `B*` next to `model`'s weights: `B` real KV caches of
/// `max_len` positions plus the activations of a call of
/// [`step_rows`]`(B, prompt_rows)` rows, at most `limit`. `name` keys the
/// profile (see [`ModelInfo::name`]).
pub fn profile_memory(
    model: &LlamaModel,
    name: &str,
    max_len: usize,
    prompt_rows: usize,
    limit: usize,
) -> Result<MemoryProfile> {
    if max_len == 0 {
        return Err(Error::invalid("max_len", "must be at least 1"));
    }
    let device: &dyn DynDevice = model.device().as_ref();
    let config = model.config();
    let mut failed = 0;
    let mut fits = |b: usize| -> Result<bool> {
        let attempt = (|| -> Result<()> {
            let mut held = Vec::with_capacity(b);
            for _ in 0..b {
                held.push(model.new_cache(max_len)?);
            }
            let act = activation_bytes(config, step_rows(b, prompt_rows), b) / 4;
            let act = usize::try_from(act)
                .map_err(|_| Error::invalid("batch", "activations beyond the address space"))?;
            let _act = device.alloc(DType::F32, act)?;
            Ok(())
        })();
        match attempt {
            Ok(()) => Ok(true),
            Err(e) if e.is_out_of_memory() => {
                failed += 1;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    };
    let max_batch = largest_fitting(limit, &mut fits)?;
    Ok(MemoryProfile {
        device: device.id(),
        model: name.into(),
        max_len,
        max_batch,
        failed_attempts: failed,
    })
}

/// Index of the largest logit (the first of equal ones): greedy decoding,
/// as `hetero_models::generate` chooses.
pub use hetero_models::sampling::argmax;

/// Time of one decode call of `batch` sequences, one new token each, after
/// `context` tokens of each are in the cache (best of `repetitions`; the
/// context grows by one per repetition). The context is prefilled one
/// sequence at a time, so no call is wider than `context` rows or `batch`.
pub fn step_time(
    model: &LlamaModel,
    batch: usize,
    context: usize,
    repetitions: usize,
) -> Result<f64> {
    if batch == 0 {
        return Err(Error::invalid("batch", "must be at least 1"));
    }
    let vocab = model.config().vocab;
    let reps = repetitions.max(1);
    let prompt: Vec<u32> = (0..context.max(1))
        .map(|i| ((i * 7 + 1) % vocab) as u32)
        .collect();
    let mut caches = (0..batch)
        .map(|_| model.new_cache(prompt.len() + reps + 2))
        .collect::<Result<Vec<KvCache>>>()?;
    let mut next = Vec::with_capacity(batch);
    for c in &mut caches {
        next.push(argmax(&model.forward(c, &prompt, Logits::Last)?));
    }
    // One untimed step warms up whatever the device caches.
    decode_step(model, &mut caches, &mut next)?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let start = Instant::now();
        decode_step(model, &mut caches, &mut next)?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// One greedy decode call: each sequence's `next` token in, its next out.
fn decode_step(model: &LlamaModel, caches: &mut [KvCache], next: &mut [u32]) -> Result<()> {
    let inputs = next.to_vec();
    let mut seqs: Vec<(&mut KvCache, &[u32])> = caches
        .iter_mut()
        .zip(&inputs)
        .map(|(c, t)| (c, std::slice::from_ref(t)))
        .collect();
    let logits = model.forward_batch(&mut seqs, Logits::Last)?;
    for (n, l) in next.iter_mut().zip(&logits) {
        *n = argmax(l);
    }
    Ok(())
}

/// Step times at `batches` (each at most `max_batch`; duplicates merged),
/// fitted. With a single batch size left (`B* = 1`) the curve is flat at
/// the measured time (no per-sequence slope can be fitted).
pub fn profile_speed(
    model: &LlamaModel,
    batches: &[usize],
    max_batch: usize,
    context: usize,
    repetitions: usize,
) -> Result<(StepFit, Vec<(usize, f64)>)> {
    let mut sizes: Vec<usize> = batches
        .iter()
        .map(|&b| b.clamp(1, max_batch.max(1)))
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    let samples = sizes
        .iter()
        .map(|&b| step_time(model, b, context, repetitions).map(|t| (b, t)))
        .collect::<Result<Vec<_>>>()?;
    let fit = if samples.len() == 1 {
        StepFit {
            model: StepModel {
                fixed_s: samples[0].1,
                per_sequence_s: 0.0,
            },
            max_relative_error: 0.0,
            rms_relative_error: 0.0,
        }
    } else {
        StepModel::fit(&samples)?
    };
    Ok((fit, samples))
}

/// Both profiles of the device `model` is on, as the policies take them.
/// With `cached` (a memory profile of this device, model and length, from
/// a [`ProfileCache`](crate::ProfileCache)) memory is not profiled again.
#[allow(clippy::too_many_arguments)]
pub fn profile_device(
    model: &LlamaModel,
    name: &str,
    max_len: usize,
    prompt_rows: usize,
    batch_limit: usize,
    speed_batches: &[usize],
    speed_context: usize,
    cached: Option<MemoryProfile>,
) -> Result<(DeviceProfile, MemoryProfile, StepFit)> {
    let memory = match cached {
        Some(m) => m,
        None => profile_memory(model, name, max_len, prompt_rows, batch_limit)?,
    };
    let device = model.device();
    if memory.max_batch == 0 {
        let free = device.memory().ok().and_then(|m| m.free_bytes);
        return Err(Error::invalid(
            "model",
            format!(
                "{name} loads on {} but not one sequence of {max_len} positions fits next to it \
                 ({} bytes free)",
                device.id(),
                free.map_or_else(|| "unknown".into(), |f| f.to_string())
            ),
        ));
    }
    let (fit, _) = profile_speed(model, speed_batches, memory.max_batch, speed_context, 2)?;
    Ok((
        DeviceProfile {
            device: device.id(),
            name: device.info().name,
            max_batch: memory.max_batch,
            step: fit.model,
        },
        memory,
        fit,
    ))
}

/// Like [`Allocation::check_fits`] for a checkpoint: the out-of-memory
/// error that serving the allocation would end in on the first device
/// given more than its `B*`, with the bytes it would need (`kept[g]`:
/// the block formats device `g` keeps, see [`kept_formats`]; `kv[g]` its
/// models' KV cache dtype, `LlamaModel::kv_cache_dtype`).
pub fn check_fits(
    allocation: &Allocation,
    devices: &[DeviceProfile],
    kept: &[Vec<QuantType>],
    kv: &[DType],
    checkpoint: &Checkpoint,
    max_len: usize,
    prompt_rows: usize,
) -> Result<()> {
    let Some(&g) = allocation.overflows.first() else {
        return Ok(());
    };
    let (Some(d), Some(&batch)) = (devices.get(g), allocation.batches.get(g)) else {
        return Err(Error::invalid(
            "allocation",
            format!("overflows names device {g} of {}", devices.len()),
        ));
    };
    Err(Error::OutOfMemory {
        device: d.device,
        requested_bytes: footprint(
            checkpoint,
            kept.get(g).map_or(&[][..], Vec::as_slice),
            kv.get(g).copied().unwrap_or(DType::F32),
            batch,
            max_len,
            prompt_rows,
        ),
        available_bytes: None,
    })
}

/// Prompts from text: one per non-empty line.
pub fn prompt_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// `prompts` as token ids: encoded with the checkpoint's tokenizer (BOS
/// first when the file asks for it, `hetero_models::adds_bos`). A checkpoint without a
/// tokenizer takes lines of token ids separated by spaces or commas.
/// Every id is checked against the vocabulary.
pub fn tokenize_prompts(checkpoint: &Checkpoint, prompts: &[String]) -> Result<Vec<Vec<u32>>> {
    if prompts.is_empty() {
        return Err(Error::invalid("prompts", "none given"));
    }
    let vocab = checkpoint.config().vocab;
    let ids: Vec<Vec<u32>> = match checkpoint.tokenizer() {
        Ok(tok) => {
            let add_bos = hetero_models::adds_bos(checkpoint) && tok.bos_id().is_some();
            prompts
                .iter()
                .map(|p| tok.encode(p, add_bos).map_err(Error::from))
                .collect::<Result<_>>()?
        }
        Err(no_tokenizer) => {
            let why = no_tokenizer.to_string();
            prompts
                .iter()
                .map(|p| {
                    p.split(|c: char| c.is_whitespace() || c == ',')
                        .filter(|s| !s.is_empty())
                        .map(|s| s.parse::<u32>())
                        .collect::<std::result::Result<Vec<u32>, _>>()
                        .map_err(|_| {
                            Error::invalid(
                                "prompts",
                                format!(
                                    "{} has no tokenizer ({}), so prompts must be token ids \
                                 separated by spaces; got {p:?}",
                                    checkpoint.path().display(),
                                    why
                                ),
                            )
                        })
                })
                .collect::<Result<_>>()?
        }
    };
    for (p, tokens) in prompts.iter().zip(&ids) {
        if tokens.is_empty() {
            return Err(Error::invalid("prompts", format!("{p:?} has no tokens")));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid(
                "prompts",
                format!("{p:?}: token id {bad} is past the vocabulary of {vocab}"),
            ));
        }
    }
    Ok(ids)
}

/// `total` prompts: `prompts` repeated in order.
pub fn fill_batch(prompts: &[Vec<u32>], total: usize) -> Vec<Vec<u32>> {
    prompts.iter().cycle().take(total).cloned().collect()
}

/// What one real serving run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RealServeReport {
    /// Sequences per device.
    pub batches: Vec<usize>,
    /// Tokens generated by the decode rounds over all devices per second
    /// of their wall time (the first token of each sequence comes from its
    /// prefill and is counted in `prefill_s`).
    pub tokens_per_s: f64,
    /// Mean wall time of a decode round: the per-token latency, seconds.
    pub per_token_latency_s: f64,
    /// Mean time of each device's own decode call, seconds.
    pub device_step_s: Vec<f64>,
    /// Each device's decode tokens per second of its own calls.
    pub device_tokens_per_s: Vec<f64>,
    /// Wall time of the prefill round (every device's prompts): the time
    /// to the first token, seconds.
    pub prefill_s: f64,
    /// Prompt tokens over all sequences.
    pub prompt_tokens: usize,
    /// Generated tokens of each sequence, in request order (device 0's
    /// share first).
    pub outputs: Vec<Vec<u32>>,
}

/// One device's share of the batch.
struct Lane<'m> {
    model: &'m LlamaModel,
    prompts: Vec<Vec<u32>>,
    caches: Vec<KvCache>,
    out: Vec<Vec<u32>>,
}

impl Lane<'_> {
    /// The prompts in calls of at most `max_rows` rows (one prompt longer
    /// than that goes alone); each sequence's first token.
    fn prefill(&mut self, max_rows: usize) -> Result<()> {
        let mut start = 0;
        while start < self.prompts.len() {
            let mut end = start;
            let mut rows = 0;
            while end < self.prompts.len()
                && (end == start || rows + self.prompts[end].len() <= max_rows)
            {
                rows += self.prompts[end].len();
                end += 1;
            }
            let mut seqs: Vec<(&mut KvCache, &[u32])> = self.caches[start..end]
                .iter_mut()
                .zip(&self.prompts[start..end])
                .map(|(c, p)| (c, p.as_slice()))
                .collect();
            let logits = self.model.forward_batch(&mut seqs, Logits::Last)?;
            for (o, l) in self.out[start..end].iter_mut().zip(&logits) {
                o.push(argmax(l));
            }
            start = end;
        }
        Ok(())
    }

    fn decode(&mut self) -> Result<()> {
        let mut next: Vec<u32> = self.out.iter().filter_map(|o| o.last().copied()).collect();
        decode_step(self.model, &mut self.caches, &mut next)?;
        for (o, n) in self.out.iter_mut().zip(next) {
            o.push(n);
        }
        Ok(())
    }
}

/// Run `f` on every lane at once, one thread per device; each lane's time.
fn round<'m>(
    lanes: &mut [Option<Lane<'m>>],
    f: &(dyn Fn(&mut Lane<'m>) -> Result<()> + Sync),
) -> Result<Vec<f64>> {
    let results: Vec<Result<f64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .iter_mut()
            .map(|lane| {
                scope.spawn(move || -> Result<f64> {
                    let Some(lane) = lane else { return Ok(0.0) };
                    let start = Instant::now();
                    f(lane)?;
                    Ok(start.elapsed().as_secs_f64())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::invalid("serve", "a device thread panicked")))
            })
            .collect()
    });
    results.into_iter().collect()
}

/// Serve `prompts` (one per sequence, `batches` of them per device in
/// order) on `models` (one per device, the same checkpoint): prefill, then
/// `gen_len - 1` greedy decode rounds in lock-step, so each sequence gets
/// `gen_len` tokens. Caches hold the longest prompt plus `gen_len`, as
/// profiled with `max_len` = that and `prompt_rows` = the longest prompt.
pub fn serve(
    models: &[&LlamaModel],
    batches: &[usize],
    prompts: &[Vec<u32>],
    gen_len: usize,
) -> Result<RealServeReport> {
    if models.len() != batches.len() {
        return Err(Error::invalid(
            "batches",
            format!("{} batches for {} devices", batches.len(), models.len()),
        ));
    }
    let total: usize = batches.iter().sum();
    if prompts.len() != total {
        return Err(Error::invalid(
            "prompts",
            format!("{} prompts for a batch of {total}", prompts.len()),
        ));
    }
    if gen_len < 2 {
        return Err(Error::invalid(
            "gen_len",
            "at least 2: the first token comes from the prefill, the rest are timed",
        ));
    }
    let prompt_rows = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let max_len = prompt_rows + gen_len;
    let mut lanes: Vec<Option<Lane<'_>>> = Vec::with_capacity(models.len());
    let mut offset = 0;
    for (&model, &b) in models.iter().zip(batches) {
        lanes.push(if b == 0 {
            None
        } else {
            let caches = (0..b)
                .map(|_| model.new_cache(max_len))
                .collect::<Result<Vec<_>>>()?;
            Some(Lane {
                model,
                prompts: prompts[offset..offset + b].to_vec(),
                caches,
                out: vec![Vec::with_capacity(gen_len); b],
            })
        });
        offset += b;
    }
    let start = Instant::now();
    round(&mut lanes, &|lane: &mut Lane<'_>| {
        let rows = step_rows(lane.prompts.len(), prompt_rows);
        lane.prefill(rows)
    })?;
    let prefill_s = start.elapsed().as_secs_f64();
    let mut step_sum = vec![0.0f64; models.len()];
    let mut decode_s = 0.0;
    for _ in 1..gen_len {
        let start = Instant::now();
        let times = round(&mut lanes, &Lane::decode)?;
        decode_s += start.elapsed().as_secs_f64();
        for (s, t) in step_sum.iter_mut().zip(times) {
            *s += t;
        }
    }
    let rounds = (gen_len - 1) as f64;
    let outputs = lanes
        .into_iter()
        .flatten()
        .flat_map(|lane| lane.out)
        .collect();
    Ok(RealServeReport {
        batches: batches.to_vec(),
        tokens_per_s: total as f64 * rounds / decode_s.max(f64::MIN_POSITIVE),
        per_token_latency_s: decode_s / rounds,
        device_step_s: step_sum.iter().map(|s| s / rounds).collect(),
        device_tokens_per_s: step_sum
            .iter()
            .zip(batches)
            .map(|(&s, &b)| {
                if b == 0 {
                    0.0
                } else {
                    b as f64 * rounds / s.max(f64::MIN_POSITIVE)
                }
            })
            .collect(),
        prefill_s,
        prompt_tokens: prompts.iter().map(Vec::len).sum(),
        outputs,
    })
}

/// `gen_len` greedy tokens of `prompt` alone (one sequence, one token per
/// call after the prompt): the reference a batched run must equal.
pub fn greedy(model: &LlamaModel, prompt: &[u32], gen_len: usize) -> Result<Vec<u32>> {
    let mut cache = model.new_cache(prompt.len() + gen_len)?;
    let mut out = Vec::with_capacity(gen_len);
    let mut next = argmax(&model.forward(&mut cache, prompt, Logits::Last)?);
    out.push(next);
    while out.len() < gen_len {
        next = argmax(&model.forward(&mut cache, &[next], Logits::Last)?);
        out.push(next);
    }
    Ok(out)
}

/// What `--model` names: a preset shape, or a checkpoint on disk.
#[derive(Debug, Clone)]
pub enum ModelSource {
    Preset(crate::workload::ModelShape),
    Checkpoint(std::path::PathBuf),
}

impl ModelSource {
    /// A preset name first (so the presets work as ever), else an
    /// existing path; anything else is the preset error, naming paths too.
    pub fn resolve(name: &str) -> Result<Self> {
        match crate::workload::ModelShape::preset(name) {
            Ok(shape) => Ok(ModelSource::Preset(shape)),
            Err(_) if std::path::Path::new(name).exists() => {
                Ok(ModelSource::Checkpoint(name.into()))
            }
            Err(e) => Err(Error::invalid(
                "--model",
                format!(
                    "{e}, or give the path of a .gguf file or a Hugging Face folder \
                     ({name:?} is neither)"
                ),
            )),
        }
    }
}

/// Open a checkpoint named by `--model`: an error says the path is not a
/// model, and why.
pub fn open(path: &std::path::Path) -> Result<Checkpoint> {
    Checkpoint::open(path).map_err(|e| {
        Error::invalid(
            "--model",
            format!(
                "{} is not a model this crate reads (a .gguf file or a Hugging Face folder \
                 with config.json and safetensors weights): {}",
                path.display(),
                e
            ),
        )
    })
}

/// Load `checkpoint` on every device that can hold it; `skipped` hears of
/// each that cannot. Returns the indices of the devices used and their
/// models; none is an error naming every device's memory and the model's
/// bytes.
pub fn load_all(
    checkpoint: &Checkpoint,
    devices: &[SharedDevice],
    skipped: &mut dyn FnMut(usize, &Error),
) -> Result<Vec<(usize, LlamaModel)>> {
    let mut loaded = Vec::new();
    let mut failures = Vec::new();
    for (g, d) in devices.iter().enumerate() {
        match load(checkpoint, d.clone()) {
            Ok(m) => loaded.push((g, m)),
            Err(e @ (Error::InvalidInput { .. } | Error::Unsupported { .. }))
                if devices.len() > 1 =>
            {
                skipped(g, &e);
                let info = d.info();
                failures.push(format!(
                    "{} ({}) has {} bytes",
                    info.id, info.name, info.memory_total_bytes
                ));
            }
            Err(e) => return Err(e),
        }
    }
    if loaded.is_empty() {
        let info = ModelInfo::of(checkpoint);
        return Err(Error::invalid(
            "device",
            format!(
                "no device can hold {} ({} bytes of weights as stored, {} in f32): {}",
                info.name,
                info.resident_bytes,
                info.f32_resident_bytes,
                failures.join("; ")
            ),
        ));
    }
    Ok(loaded)
}
