//! A plan loaded and run: its decode throughput measured, to set against
//! the plan's prediction.

use std::time::Instant;

use hetero_core::{Error, Result, SharedDevice};
use hetero_models::{Checkpoint, KvCache, LlamaModel, StageSpec, WeightFormat};

use super::plan::SplitChoice;

/// Load `checkpoint` as `choice` says over `devices` (the plan's devices,
/// in the profiles' order).
pub fn load_plan(
    checkpoint: &Checkpoint,
    devices: &[SharedDevice],
    choice: &SplitChoice,
    progress: &mut dyn FnMut(hetero_models::llama::LoadProgress),
) -> Result<LlamaModel> {
    let stages = choice
        .stages
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
        .collect::<Result<Vec<_>>>()?;
    LlamaModel::load_split(checkpoint, &stages, WeightFormat::Native, progress)
}

/// Decode tokens/s of `model` over `batch` sequences: each gets a
/// `context`-token synthetic prompt, then `steps` greedy tokens are
/// decoded with the sequences in one group per stage circulating through
/// the stages (one group on a single device). Timed from the first decode
/// step to the last.
pub fn measure_decode(
    model: &LlamaModel,
    batch: usize,
    context: usize,
    steps: usize,
) -> Result<f64> {
    if batch == 0 || steps == 0 {
        return Err(Error::invalid(
            "decode measurement",
            "needs sequences and steps",
        ));
    }
    let vocab = model.config().vocab;
    let mut caches = (0..batch)
        .map(|_| model.new_cache(context + steps + 1))
        .collect::<Result<Vec<KvCache>>>()?;
    let mut next = Vec::with_capacity(batch);
    for (i, c) in caches.iter_mut().enumerate() {
        let prompt: Vec<u32> = (0..context.max(1))
            .map(|t| ((t * 7 + i * 13 + 1) % vocab) as u32)
            .collect();
        let logits = model.forward(c, &prompt, hetero_models::Logits::Last)?;
        next.push(hetero_models::sampling::argmax(&logits));
    }
    let groups_n = model.stages().len().min(batch);
    let per = batch.div_ceil(groups_n);
    let groups: Vec<std::ops::Range<usize>> = (0..groups_n)
        .map(|g| g * per..((g + 1) * per).min(batch))
        .filter(|r| !r.is_empty())
        .collect();
    let mut fed = vec![0usize; batch];
    let start = Instant::now();
    model.decode_pipelined(&mut caches, &next, &groups, &mut |_, seqs, logits| {
        seqs.iter()
            .zip(logits)
            .map(|(&i, l)| {
                fed[i] += 1;
                (fed[i] < steps).then(|| hetero_models::sampling::argmax(&l))
            })
            .collect()
    })?;
    let secs = start.elapsed().as_secs_f64();
    Ok(fed.iter().sum::<usize>() as f64 / secs)
}
