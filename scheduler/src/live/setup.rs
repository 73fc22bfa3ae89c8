//! Starting a live engine on real devices: load the checkpoint on each,
//! measure how many KV positions each holds next to its weights, measure
//! step times when there is more than one device, and let the allocation
//! policy split the concurrent sequences.
//!
//! Memory: `B*` sequences of `max_len` positions really allocated next to
//! the weights, with the activations of a round of `slots + prefill_chunk`
//! rows ([`real_model::profile_memory`]); the device's KV budget is then
//! `B* x max_len` positions, counted per token at admission. Speed: the
//! fitted step-time curve of [`real_model::profile_speed`]. The policy
//! splits `slots` sequences by speed; it is not capped by `B*`, because
//! the KV budget, not a sequence count, is what binds memory at admission
//! (short requests pack more sequences into the same positions).

use std::sync::Arc;

use hetero_core::{Error, Result, SharedDevice};
use hetero_models::Checkpoint;
use serde::Serialize;

use super::engine::{Engine, LiveConfig, LiveDevice};
use super::remote::RemoteRank;
use crate::policy::{AllocationPolicy, DeviceProfile, Policy, StepModel};
use crate::real_model::{self, ModelInfo};

/// What to start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveSetup {
    /// Sequences running at once, over all devices.
    pub slots: usize,
    /// Longest request (prompt + max_tokens), positions; at most the
    /// model's context.
    pub max_len: usize,
    pub policy: Policy,
    pub config: LiveConfig,
    /// The KV caches' dtype on every model the engine runs (`Auto`: f16
    /// where the devices read f16 caches); the memory profile (`B*`)
    /// measures caches of this dtype.
    pub kv_dtype: hetero_models::llama::KvCacheDtype,
}

/// One device of the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedDevice {
    pub device: String,
    pub name: String,
    /// Its share of the concurrent sequences.
    pub slots: usize,
    /// KV positions it holds (`max_batch x max_len`).
    pub kv_tokens: usize,
    /// `B*`: sequences of `max_len` positions that fit next to the weights.
    pub max_batch: usize,
    /// Measured step time (only with several devices).
    pub step: Option<StepModel>,
    pub resident_weight_bytes: u64,
}

/// Where the engine runs, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LivePlan {
    pub model: ModelInfo,
    pub policy: String,
    pub max_len: usize,
    pub devices: Vec<PlannedDevice>,
    /// Devices left out, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Load, profile and start; `log` hears progress. `ranks` (connected by
/// [`accept_ranks`](super::accept_ranks)) join as devices after the local
/// ones, with the slots and KV positions each measured for itself.
pub fn start(
    checkpoint: &Checkpoint,
    devices: &[SharedDevice],
    ranks: Vec<RemoteRank>,
    setup: &LiveSetup,
    log: &mut dyn FnMut(&str),
) -> Result<(Engine, LivePlan)> {
    check_setup(checkpoint, setup)?;
    let mut skipped = Vec::new();
    let loaded = real_model::load_all(checkpoint, devices, &mut |g, e| {
        skipped.push((devices[g].id().to_string(), e.to_string()));
    })?;
    let loaded = loaded
        .into_iter()
        .map(|(g, model)| (devices[g].id().to_string(), devices[g].info().name, model))
        .collect();
    start_models(checkpoint, loaded, skipped, ranks, setup, log)
}

/// Like [`start`], with one model split by layers over `stages` (a
/// pipeline) as the engine's one device: its rounds run as batches on
/// the model's line, one batch per stage in flight.
pub fn start_split(
    checkpoint: &Checkpoint,
    stages: &[hetero_models::StageSpec],
    setup: &LiveSetup,
    log: &mut dyn FnMut(&str),
) -> Result<(Engine, LivePlan)> {
    start_pipelines(checkpoint, &[stages.to_vec()], setup, log)
}

/// Several pipelines side by side (replicas of pipelines, as
/// [`crate::pipeline::SplitReport::pipelines`] plans them): each split
/// model is one of the engine's devices, measured like a replica, and the
/// policy splits the sequences between them by their measured speed. A
/// pipeline of one stage is a whole-model replica.
pub fn start_pipelines(
    checkpoint: &Checkpoint,
    pipelines: &[Vec<hetero_models::StageSpec>],
    setup: &LiveSetup,
    log: &mut dyn FnMut(&str),
) -> Result<(Engine, LivePlan)> {
    check_setup(checkpoint, setup)?;
    if pipelines.iter().any(Vec::is_empty) || pipelines.is_empty() {
        return Err(Error::invalid("pipelines", "each needs at least one stage"));
    }
    let mut loaded = Vec::with_capacity(pipelines.len());
    for stages in pipelines {
        let model = hetero_models::LlamaModel::load_split(
            checkpoint,
            stages,
            hetero_models::WeightFormat::Native,
            &mut |_| {},
        )?;
        let label = |f: &dyn Fn(&hetero_models::StageSpec) -> String| {
            stages.iter().map(f).collect::<Vec<_>>().join("+")
        };
        let id = label(&|s| s.device.id().to_string());
        let name = label(&|s| {
            format!(
                "{} layers {}-{}",
                s.device.info().name,
                s.layers.start,
                s.layers.end - 1
            )
        });
        loaded.push((id, name, model));
    }
    start_models(checkpoint, loaded, Vec::new(), Vec::new(), setup, log)
}

/// Like [`start`], with a model already loaded as the engine's one device
/// (rank 0's model of a split over processes, whose later stages run in
/// the other ranks; its KV memory is measured on this process's devices).
pub fn start_loaded(
    checkpoint: &Checkpoint,
    model: hetero_models::LlamaModel,
    setup: &LiveSetup,
    log: &mut dyn FnMut(&str),
) -> Result<(Engine, LivePlan)> {
    check_setup(checkpoint, setup)?;
    let stages = model.stages();
    let id = stages
        .iter()
        .map(|s| s.device_id.clone())
        .collect::<Vec<_>>()
        .join("+");
    let name = stages
        .iter()
        .map(|s| {
            format!(
                "{} layers {}-{}",
                s.device_name,
                s.layers.start,
                s.layers.end - 1
            )
        })
        .collect::<Vec<_>>()
        .join("+");
    start_models(
        checkpoint,
        vec![(id, name, model)],
        Vec::new(),
        Vec::new(),
        setup,
        log,
    )
}

fn check_setup(checkpoint: &Checkpoint, setup: &LiveSetup) -> Result<()> {
    if setup.slots == 0 {
        return Err(Error::invalid("slots", "must be at least 1"));
    }
    let context = checkpoint.config().max_positions;
    if setup.max_len < 2 || setup.max_len > context {
        return Err(Error::invalid(
            "max_len",
            format!(
                "{} is not in 2..={context} (the model's context)",
                setup.max_len
            ),
        ));
    }
    Ok(())
}

/// Measure the loaded models (`(device id, name, model)`) and start.
fn start_models(
    checkpoint: &Checkpoint,
    loaded: Vec<(String, String, hetero_models::LlamaModel)>,
    mut skipped: Vec<(String, String)>,
    ranks: Vec<RemoteRank>,
    setup: &LiveSetup,
    log: &mut dyn FnMut(&str),
) -> Result<(Engine, LivePlan)> {
    let info = ModelInfo::of(checkpoint);
    let tokenizer = Arc::new(checkpoint.tokenizer()?);
    let several = loaded.len() > 1;
    let rows = setup.slots + setup.config.prefill_chunk;
    let mut measured = Vec::new();
    for (id, name, mut model) in loaded {
        model.set_kv_cache_dtype(setup.kv_dtype)?;
        log(&format!(
            "measuring the KV memory of {id} ({name}, {} cache)...",
            model.kv_cache_dtype()
        ));
        let memory =
            real_model::profile_memory(&model, &info.name, setup.max_len, rows, setup.slots)?;
        if memory.max_batch == 0 {
            let reason = format!(
                "not one sequence of {} positions fits next to the weights",
                setup.max_len
            );
            if several {
                skipped.push((id, reason));
                continue;
            }
            return Err(Error::invalid(
                "max_len",
                format!("{} on {id}: {reason}; lower it", setup.max_len),
            ));
        }
        measured.push(((id, name), model, memory.max_batch));
    }
    if measured.is_empty() {
        return Err(Error::invalid(
            "device",
            format!(
                "no device can hold a sequence of {} positions next to the model: {}",
                setup.max_len,
                skipped
                    .iter()
                    .map(|(d, r)| format!("{d}: {r}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ));
    }
    let mut steps: Vec<Option<StepModel>> = vec![None; measured.len()];
    let slots: Vec<usize> = if measured.len() == 1 {
        vec![setup.slots]
    } else {
        let mut profiles = Vec::new();
        for (i, ((id, _), model, max_batch)) in measured.iter().enumerate() {
            log(&format!("measuring the step time of {id}..."));
            let (fit, _) = real_model::profile_speed(
                model,
                &[1, 4, 16],
                setup.slots,
                (setup.max_len / 4).clamp(1, 256),
                2,
            )?;
            steps[i] = Some(fit.model);
            profiles.push(DeviceProfile {
                device: model.device().id(),
                name: model.device().info().name,
                // Not capped by B*: memory binds per token at admission.
                max_batch: setup.slots.max(*max_batch),
                step: fit.model,
            });
        }
        setup.policy.allocate(&profiles, setup.slots)?.batches
    };
    let mut planned = Vec::new();
    let mut live = Vec::new();
    for (i, (((id, name), model, max_batch), slots)) in measured.into_iter().zip(slots).enumerate()
    {
        if slots == 0 {
            skipped.push((
                id,
                format!("the {} policy gave it no sequences", setup.policy),
            ));
            continue;
        }
        let kv_tokens = max_batch * setup.max_len;
        planned.push(PlannedDevice {
            device: id,
            name,
            slots,
            kv_tokens,
            max_batch,
            step: steps[i],
            resident_weight_bytes: model.weight_bytes(),
        });
        live.push(LiveDevice {
            model,
            slots,
            kv_tokens,
        });
    }
    let config = LiveConfig {
        max_request_len: setup.max_len,
        ..setup.config
    };
    for r in &ranks {
        let h = &r.hello;
        planned.push(PlannedDevice {
            device: h.device.clone(),
            name: format!("rank {}", h.rank),
            slots: h.slots,
            kv_tokens: h.kv_tokens,
            max_batch: h.kv_tokens / setup.max_len.max(1),
            step: None,
            resident_weight_bytes: 0,
        });
    }
    let engine = Engine::start_with_ranks(live, ranks, tokenizer, config)?;
    Ok((
        engine,
        LivePlan {
            model: info,
            policy: setup.policy.name().into(),
            max_len: setup.max_len,
            devices: planned,
            skipped,
        },
    ))
}
