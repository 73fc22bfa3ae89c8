//! A plan loaded and run: its decode throughput measured, to set against
//! the plan's prediction.

use std::time::Instant;

use hetero_core::{Error, Result, SharedDevice};
use hetero_models::llama::KvCacheDtype;
use hetero_models::{Checkpoint, KvCache, LlamaModel, StageBusy, StageSpec, WeightFormat};
use serde::Serialize;

use super::plan::{SplitChoice, StageChoice};

/// The stages of a plan (one pipeline's [`StageChoice`]s) on `devices`
/// (the plan's devices, in the profiles' order).
pub fn stage_specs(stages: &[StageChoice], devices: &[SharedDevice]) -> Result<Vec<StageSpec>> {
    stages
        .iter()
        .map(|s| {
            let device = devices.get(s.device_index).cloned().ok_or_else(|| {
                Error::invalid(
                    "plan",
                    format!("names device {} of {}", s.device_index, devices.len()),
                )
            })?;
            Ok(StageSpec {
                device,
                layers: s.layers[0]..s.layers[1] + 1,
            })
        })
        .collect()
}

/// Load `checkpoint` as `choice` says over `devices` (the plan's devices,
/// in the profiles' order), its KV caches in `kv`: one pipeline of all the
/// plan's stages (a plan of pipelines side by side loads each of
/// [`SplitChoice::pipelines`] as [`measure_side_by_side`] does).
pub fn load_plan(
    checkpoint: &Checkpoint,
    devices: &[SharedDevice],
    choice: &SplitChoice,
    kv: KvCacheDtype,
    progress: &mut dyn FnMut(hetero_models::llama::LoadProgress),
) -> Result<LlamaModel> {
    load_pipeline(checkpoint, devices, &choice.stages, kv, progress)
}

/// One pipeline of `stages` over `devices`, its KV caches in `kv`.
fn load_pipeline(
    checkpoint: &Checkpoint,
    devices: &[SharedDevice],
    stages: &[StageChoice],
    kv: KvCacheDtype,
    progress: &mut dyn FnMut(hetero_models::llama::LoadProgress),
) -> Result<LlamaModel> {
    let specs = stage_specs(stages, devices)?;
    let mut model = LlamaModel::load_split(checkpoint, &specs, WeightFormat::Native, progress)?;
    model.set_kv_cache_dtype(kv)?;
    Ok(model)
}

/// A pipeline's measured decode: its rate, and how each stage worked,
/// to set against the plan's per-stage seconds (a stage slower than its
/// profile while the others run points at devices that share a
/// processor; a stage idle much of the time, at imbalance or hand-offs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecodeMeasurement {
    pub tokens_per_s: f64,
    /// Seconds from the first decode step to the last.
    pub seconds: f64,
    /// Each stage of the pipeline, in order: its calls (steps of one
    /// group), the seconds they took, the mean call and the fraction of
    /// `seconds` it worked.
    pub stages: Vec<StageWork>,
}

/// One stage's share of a [`DecodeMeasurement`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StageWork {
    pub calls: u64,
    pub busy_s: f64,
    pub mean_call_s: f64,
    pub busy_fraction: f64,
}

impl StageWork {
    fn of(busy: StageBusy, seconds: f64) -> Self {
        StageWork {
            calls: busy.calls,
            busy_s: busy.busy_s,
            mean_call_s: busy.mean_call_s(),
            busy_fraction: if seconds > 0.0 {
                busy.busy_s / seconds
            } else {
                0.0
            },
        }
    }
}

/// Decode tokens/s of `model` with one group of `batch` sequences per
/// stage in flight (`batch x stages` sequences; one group on a single
/// device), so every stage call is a step of `batch` sequences, as in the
/// profiles the plan was made from. Each sequence gets a synthetic prompt
/// of `context - steps / 2` tokens (at least one), then `steps` greedy
/// tokens are decoded with the groups circulating through the stages,
/// until `steps` steps or, after four at least, `max_seconds`: the steps
/// see `context` cached positions on average, as the profiles' timed
/// calls do. Timed from the first decode step to the last, with each
/// stage's work (see [`DecodeMeasurement`]).
pub fn measure_decode(
    model: &LlamaModel,
    batch: usize,
    context: usize,
    steps: usize,
    max_seconds: f64,
) -> Result<DecodeMeasurement> {
    if batch == 0 || steps == 0 {
        return Err(Error::invalid(
            "decode measurement",
            "needs sequences and steps",
        ));
    }
    let vocab = model.config().vocab;
    let groups_n = model.stages().len();
    let total = batch * groups_n;
    let mut caches = (0..total)
        .map(|_| model.new_cache(context + steps + 1))
        .collect::<Result<Vec<KvCache>>>()?;
    let mut next = Vec::with_capacity(total);
    for (i, c) in caches.iter_mut().enumerate() {
        let prompt: Vec<u32> = (0..context.saturating_sub(steps / 2).max(1))
            .map(|t| ((t * 7 + i * 13 + 1) % vocab) as u32)
            .collect();
        let logits = model.forward(c, &prompt, hetero_models::Logits::Last)?;
        next.push(hetero_models::sampling::argmax(&logits));
    }
    let groups: Vec<std::ops::Range<usize>> =
        (0..groups_n).map(|g| g * batch..(g + 1) * batch).collect();
    let mut fed = vec![0usize; total];
    let start = Instant::now();
    let busy = model.decode_pipelined(&mut caches, &next, &groups, &mut |_, seqs, logits| {
        seqs.iter()
            .zip(logits)
            .map(|(&i, l)| {
                fed[i] += 1;
                let out_of_time = fed[i] >= 4 && start.elapsed().as_secs_f64() > max_seconds;
                (fed[i] < steps && !out_of_time).then(|| hetero_models::sampling::argmax(&l))
            })
            .collect()
    })?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(DecodeMeasurement {
        tokens_per_s: fed.iter().sum::<usize>() as f64 / seconds,
        seconds,
        stages: busy
            .into_iter()
            .map(|b| StageWork::of(b, seconds))
            .collect(),
    })
}

/// Decode tokens/s of a plan of several pipelines side by side
/// (`choice.groups`: "replicas", "pipelines"; one group when empty): each
/// pipeline loaded and measured as [`measure_decode`] does, all at once on
/// threads of their own (they share the machine as they would serving),
/// and their rates summed (a plan of one pipeline: that pipeline, as
/// [`measure_decode`] measures it); the stages are every pipeline's in the plan's
/// order (each busy fraction of its own pipeline's run), the seconds the
/// longest run's.
#[allow(clippy::too_many_arguments)] // what to load, then measure_decode's four
pub fn measure_side_by_side(
    checkpoint: &Checkpoint,
    devices: &[SharedDevice],
    choice: &SplitChoice,
    kv: KvCacheDtype,
    batch: usize,
    context: usize,
    steps: usize,
    max_seconds: f64,
) -> Result<DecodeMeasurement> {
    let models = choice
        .pipelines()?
        .into_iter()
        .map(|group| load_pipeline(checkpoint, devices, group, kv, &mut |_| {}))
        .collect::<Result<Vec<_>>>()?;
    let rates = std::thread::scope(|scope| {
        let handles: Vec<_> = models
            .iter()
            .map(|m| scope.spawn(move || measure_decode(m, batch, context, steps, max_seconds)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::invalid("pipeline", "its thread panicked")))
            })
            .collect::<Result<Vec<DecodeMeasurement>>>()
    })?;
    Ok(DecodeMeasurement {
        tokens_per_s: rates.iter().map(|r| r.tokens_per_s).sum(),
        seconds: rates.iter().map(|r| r.seconds).fold(0.0, f64::max),
        stages: rates.into_iter().flat_map(|r| r.stages).collect(),
    })
}

/// A plan's stages each timed alone on its device just before the plan
/// is measured, and the plan's prediction taken again from them: on a
/// machine whose speed drifts (a shared VM), the measured rate set
/// against this prediction tells what running the stages as a pipeline
/// costs, apart from how far the machine has drifted since the profiles
/// (each stage's `stage_s` over its profiled `seconds`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retimed {
    /// Each stage's seconds a step of `batch` sequences, alone, in the
    /// plan's order; stages on the host's processor times the plan's
    /// `host_contention`, as its prediction counts them.
    pub stage_s: Vec<f64>,
    /// [`SplitChoice::rate_with`] these seconds.
    pub predicted_tokens_per_s: f64,
}

/// Time each stage of `choice` alone on its device (loaded by itself,
/// the median of `repetitions` calls of `batch` sequences at `context`
/// cached positions, as [`super::profile_layers`] times a part: a stage
/// with the first layer embeds, one with the last runs the head), and
/// the plan's prediction from these seconds (see [`Retimed`]).
#[allow(clippy::too_many_arguments)] // what to load, then how to time it
pub fn retime_stages(
    checkpoint: &Checkpoint,
    devices: &[SharedDevice],
    choice: &SplitChoice,
    kv: KvCacheDtype,
    batch: usize,
    context: usize,
    repetitions: usize,
) -> Result<Retimed> {
    let factor = choice.host_contention.unwrap_or(1.0);
    let stage_s = choice
        .stages
        .iter()
        .map(|s| {
            let part = load_pipeline(
                checkpoint,
                devices,
                std::slice::from_ref(s),
                kv,
                &mut |_| {},
            )?;
            let alone = part.time_call_median(batch, 1, context, repetitions)?;
            // stage_specs found the device, so the index is in range.
            let shares_processor = devices[s.device_index].info().host_threads.is_some();
            Ok(if shares_processor {
                alone * factor
            } else {
                alone
            })
        })
        .collect::<Result<Vec<f64>>>()?;
    let predicted_tokens_per_s = choice.rate_with(&stage_s, batch)?;
    Ok(Retimed {
        stage_s,
        predicted_tokens_per_s,
    })
}
