//! A plan loaded and run: its decode throughput measured, to set against
//! the plan's prediction.

use std::time::Instant;

use hetero_core::{Error, Result, SharedDevice};
use hetero_models::llama::KvCacheDtype;
use hetero_models::{Checkpoint, KvCache, LlamaModel, StageSpec, WeightFormat};

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
/// in the profiles' order), its KV caches in `kv`.
pub fn load_plan(
    checkpoint: &Checkpoint,
    devices: &[SharedDevice],
    choice: &SplitChoice,
    kv: KvCacheDtype,
    progress: &mut dyn FnMut(hetero_models::llama::LoadProgress),
) -> Result<LlamaModel> {
    let stages = stage_specs(&choice.stages, devices)?;
    let mut model = LlamaModel::load_split(checkpoint, &stages, WeightFormat::Native, progress)?;
    model.set_kv_cache_dtype(kv)?;
    Ok(model)
}

/// Decode tokens/s of `model` with one group of `batch` sequences per
/// stage in flight (`batch x stages` sequences; one group on a single
/// device), so every stage call is a step of `batch` sequences, as in the
/// profiles the plan was made from. Each sequence gets a synthetic prompt
/// of `context - steps / 2` tokens (at least one), then `steps` greedy
/// tokens are decoded with the groups circulating through the stages,
/// until `steps` steps or, after four at least, `max_seconds`: the steps
/// see `context` cached positions on average, as the profiles' timed
/// calls do. Timed from the first decode step to the last.
pub fn measure_decode(
    model: &LlamaModel,
    batch: usize,
    context: usize,
    steps: usize,
    max_seconds: f64,
) -> Result<f64> {
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
    model.decode_pipelined(&mut caches, &next, &groups, &mut |_, seqs, logits| {
        seqs.iter()
            .zip(logits)
            .map(|(&i, l)| {
                fed[i] += 1;
                let out_of_time = fed[i] >= 4 && start.elapsed().as_secs_f64() > max_seconds;
                (fed[i] < steps && !out_of_time).then(|| hetero_models::sampling::argmax(&l))
            })
            .collect()
    })?;
    let secs = start.elapsed().as_secs_f64();
    Ok(fed.iter().sum::<usize>() as f64 / secs)
}

/// Decode tokens/s of a plan of several pipelines side by side
/// (`choice.groups`: "replicas", "pipelines"; one group when empty): each
/// pipeline loaded and measured as [`measure_decode`] does, all at once on
/// threads of their own (they share the machine as they would serving),
/// and their rates summed.
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
) -> Result<f64> {
    let models = choice
        .pipelines()?
        .into_iter()
        .map(|group| {
            let stages = stage_specs(group, devices)?;
            let mut model =
                LlamaModel::load_split(checkpoint, &stages, WeightFormat::Native, &mut |_| {})?;
            model.set_kv_cache_dtype(kv)?;
            Ok(model)
        })
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
            .collect::<Result<Vec<f64>>>()
    })?;
    Ok(rates.iter().sum())
}
