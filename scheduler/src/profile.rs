//! Measuring what a device can hold and how fast it steps.
//!
//! Memory: the largest batch `B*` whose weights, KV cache and step
//! activations really allocate on the device, found by doubling then
//! bisection; a failed allocation is an `OutOfMemory` error that only
//! shrinks the batch, never a crash (the device keeps working).
//!
//! Speed: the time of a real decode step ([`DecodeModel`]) at a context of
//! [`SPEED_CONTEXT`] tokens for a few batch sizes, fitted by
//! [`StepModel::fit`].

use std::time::Instant;

use serde::{Deserialize, Serialize};

use hetero_core::{BoxedBuffer, DType, DeviceId, DynDevice, Error, Result};

use crate::decode::DecodeModel;
use crate::policy::{DeviceProfile, StepFit, StepModel};
use crate::workload::ModelShape;

/// What memory profiling found on one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryProfile {
    pub device: DeviceId,
    pub model: String,
    /// Maximum sequence length profiled (L_max).
    pub max_len: usize,
    /// Largest batch that allocated (B*).
    pub max_batch: usize,
    /// Allocation attempts that failed with out-of-memory on the way.
    pub failed_attempts: usize,
}

/// The buffers of one decode step at a batch: per-layer K and V caches and
/// two activation buffers. Dropping them frees the memory.
struct StepBuffers {
    _buffers: Vec<BoxedBuffer>,
}

fn elements(bytes: u64, dtype: DType) -> Result<usize> {
    usize::try_from(bytes / dtype.size_bytes() as u64)
        .map_err(|_| Error::invalid("model", "buffer larger than the address space"))
}

fn allocate_step(
    device: &dyn DynDevice,
    model: &ModelShape,
    batch: usize,
    len: usize,
) -> Result<StepBuffers> {
    let dtype = model.dtype;
    let per_layer_kv = elements(
        model.kv_bytes_per_sequence(len) / model.layers as u64,
        dtype,
    )?
    .checked_mul(batch)
    .ok_or_else(|| Error::invalid("batch", "too large"))?;
    let mut buffers = Vec::with_capacity(2 * model.layers + 2);
    for _ in 0..model.layers {
        // Keys and values of one layer, as a runtime holds them.
        buffers.push(device.alloc(dtype, per_layer_kv / 2)?);
        buffers.push(device.alloc(dtype, per_layer_kv / 2)?);
    }
    let act = elements(model.activation_bytes(batch, len) / 2, dtype)?;
    buffers.push(device.alloc(dtype, act)?);
    buffers.push(device.alloc(dtype, act)?);
    Ok(StepBuffers { _buffers: buffers })
}

/// The weights, allocated as a runtime would (one buffer per matrix).
pub struct Weights {
    buffers: Vec<BoxedBuffer>,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("buffers", &self.buffers.len())
            .finish()
    }
}

/// Allocate `model`'s weights on `device` (zero-filled; values do not matter
/// for memory or timing). Out of memory here means the model does not fit.
pub fn allocate_weights(device: &dyn DynDevice, model: &ModelShape) -> Result<Weights> {
    model.validate()?;
    let (h, f) = (model.hidden, model.ffn);
    let mut buffers = Vec::new();
    let mut push = |n: usize| -> Result<()> {
        buffers.push(device.alloc(model.dtype, n).map_err(|e| match e {
            Error::OutOfMemory { .. } => Error::invalid(
                "model",
                format!(
                    "{} needs {} bytes of weights; {} cannot hold them ({e})",
                    model.name,
                    model.weight_bytes(),
                    device.id()
                ),
            ),
            other => other,
        })?);
        Ok(())
    };
    for _ in 0..model.layers {
        push(3 * h * h + 3 * h)?; // QKV
        push(h * h + h)?; // attention output
        push(h * f + f)?; // MLP up
        push(f * h + h)?; // MLP down
        push(4 * h)?; // two layer norms
    }
    push((model.vocab + model.max_positions) * h)?;
    push(2 * h)?;
    Ok(Weights { buffers })
}

/// Largest batch `B*` at length `max_len` whose step buffers allocate next
/// to `weights`, trying at most `limit` sequences.
pub fn profile_memory(
    device: &dyn DynDevice,
    model: &ModelShape,
    _weights: &Weights,
    max_len: usize,
    limit: usize,
) -> Result<MemoryProfile> {
    if max_len == 0 {
        return Err(Error::invalid("max_len", "must be at least 1"));
    }
    let mut failed = 0;
    let mut fits = |b: usize| -> Result<bool> {
        match allocate_step(device, model, b, max_len) {
            Ok(_) => Ok(true),
            Err(e) if e.is_out_of_memory() => {
                failed += 1;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    };
    // Doubling finds a failing batch, bisection the boundary.
    let (mut good, mut bad) = (0usize, None);
    let mut b = 1usize;
    while b <= limit {
        if fits(b)? {
            good = b;
            b = b.saturating_mul(2);
        } else {
            bad = Some(b);
            break;
        }
    }
    let mut bad = bad
        .unwrap_or(limit.saturating_add(1))
        .min(limit.saturating_add(1));
    if good == limit {
        bad = good + 1;
    }
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        if fits(mid)? {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Ok(MemoryProfile {
        device: device.id(),
        model: model.name.clone(),
        max_len,
        max_batch: good,
        failed_attempts: failed,
    })
}

/// Time of one real decode step (see [`DecodeModel`]) for `batch`
/// sequences whose context is `context` tokens (best of `repetitions`).
/// The step computes in f32 whatever the model's storage dtype, with
/// synthetic weights as a [`DecodeModel::synthetic_stand_in`]: only the
/// shape's sizes matter to the time, so an ALiBi shape (`bloom-3b`), whose
/// numerics the step does not compute, is timed too.
pub fn decode_step_time(
    device: &dyn DynDevice,
    model: &ModelShape,
    batch: usize,
    context: usize,
    repetitions: usize,
) -> Result<f64> {
    let mut shape = model.clone();
    shape.dtype = DType::F32;
    let mut m = DecodeModel::synthetic_stand_in(device, &shape, batch, context + 2)?;
    let tokens: Vec<u32> = (0..batch).map(|b| (b % shape.vocab) as u32).collect();
    m.set_context(context)?;
    m.step(&tokens)?;
    let mut best = f64::INFINITY;
    for _ in 0..repetitions.max(1) {
        m.set_context(context)?;
        let start = Instant::now();
        m.step(&tokens)?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Context length at which step times are measured.
pub const SPEED_CONTEXT: usize = 128;

/// Measure the step-time curve at `batches` (context [`SPEED_CONTEXT`]) and fit it.
pub fn profile_speed(
    device: &dyn DynDevice,
    model: &ModelShape,
    batches: &[usize],
    repetitions: usize,
) -> Result<(StepFit, Vec<(usize, f64)>)> {
    let samples = batches
        .iter()
        .map(|&b| decode_step_time(device, model, b, SPEED_CONTEXT, repetitions).map(|t| (b, t)))
        .collect::<Result<Vec<_>>>()?;
    Ok((StepModel::fit(&samples)?, samples))
}

/// Both profiles of one device, as the policies take them. Memory is
/// profiled for the shape the decode step really runs
/// ([`ModelShape::executed`]: f32 storage), so a batch the policies give
/// never runs out of memory when served.
pub fn profile_device(
    device: &dyn DynDevice,
    model: &ModelShape,
    max_len: usize,
    batch_limit: usize,
    speed_batches: &[usize],
) -> Result<(DeviceProfile, MemoryProfile, StepFit)> {
    let model = &model.executed();
    let weights = allocate_weights(device, model)?;
    let memory = profile_memory(device, model, &weights, max_len, batch_limit)?;
    drop(weights);
    with_speed(device, model, memory, speed_batches)
}

/// Measure the step-time curve (executed shape) and pair it with `memory`.
fn with_speed(
    device: &dyn DynDevice,
    model: &ModelShape,
    memory: MemoryProfile,
    speed_batches: &[usize],
) -> Result<(DeviceProfile, MemoryProfile, StepFit)> {
    let (fit, _) = profile_speed(device, &model.executed(), speed_batches, 3)?;
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

/// Like [`profile_device`], with `B*` taken from `cache` when it holds this
/// device's profile for the model and length ([`ProfileCache::get`]); a
/// fresh memory profile is added to it. The step-time curve is always
/// measured: it depends on what else the machine is doing. The last value
/// says whether `B*` came from the cache.
pub fn profile_device_cached(
    device: &dyn DynDevice,
    model: &ModelShape,
    max_len: usize,
    batch_limit: usize,
    speed_batches: &[usize],
    cache: &mut ProfileCache,
) -> Result<(DeviceProfile, MemoryProfile, StepFit, bool)> {
    let Some(memory) = cache.get(device, &model.name, max_len).cloned() else {
        let (profile, memory, fit) =
            profile_device(device, model, max_len, batch_limit, speed_batches)?;
        cache.insert(device, memory.clone());
        return Ok((profile, memory, fit, false));
    };
    let (profile, memory, fit) = with_speed(device, model, memory, speed_batches)?;
    Ok((profile, memory, fit, true))
}

/// [`profile_buckets`] through `cache`, for the executed shape (f32, as
/// [`profile_device`]): weights are allocated and lengths
/// profiled only for the buckets the cache does not hold; new profiles are
/// added to it. Returned in the order of `lengths`.
pub fn profile_buckets_cached(
    device: &dyn DynDevice,
    model: &ModelShape,
    lengths: &[usize],
    limit: usize,
    cache: &mut ProfileCache,
) -> Result<Vec<MemoryProfile>> {
    let model = &model.executed();
    let missing: Vec<usize> = lengths
        .iter()
        .copied()
        .filter(|&len| cache.get(device, &model.name, len).is_none())
        .collect();
    if !missing.is_empty() {
        let weights = allocate_weights(device, model)?;
        for profile in profile_buckets(device, model, &weights, &missing, limit)? {
            cache.insert(device, profile);
        }
    }
    lengths
        .iter()
        .map(|&len| {
            cache
                .get(device, &model.name, len)
                .cloned()
                .ok_or_else(|| Error::invalid("profile cache", "a bucket just profiled is missing"))
        })
        .collect()
}

/// `B*` at several maximum lengths (buckets such as 512 / 1024 / 2048):
/// shorter requests can then be batched more densely.
pub fn profile_buckets(
    device: &dyn DynDevice,
    model: &ModelShape,
    weights: &Weights,
    lengths: &[usize],
    limit: usize,
) -> Result<Vec<MemoryProfile>> {
    lengths
        .iter()
        .map(|&len| profile_memory(device, model, weights, len, limit))
        .collect()
}

/// Memory profiles saved as JSON, keyed by the device's identity (id and
/// name), so a profile is reused only on the device it was measured on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileCache {
    pub entries: Vec<CachedProfile>,
}

/// One cached profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedProfile {
    pub device: DeviceId,
    pub device_name: String,
    /// Memory the device had when profiled: a different budget invalidates it.
    pub memory_total_bytes: u64,
    pub profile: MemoryProfile,
}

impl ProfileCache {
    /// The cached profile of `device` for `model` at `max_len`, if any.
    pub fn get(
        &self,
        device: &dyn DynDevice,
        model: &str,
        max_len: usize,
    ) -> Option<&MemoryProfile> {
        let info = device.info();
        self.entries
            .iter()
            .find(|e| {
                e.device == info.id
                    && e.device_name == info.name
                    && e.memory_total_bytes == info.memory_total_bytes
                    && e.profile.model == model
                    && e.profile.max_len == max_len
            })
            .map(|e| &e.profile)
    }

    /// Remember `profile` for `device`, replacing an older one.
    pub fn insert(&mut self, device: &dyn DynDevice, profile: MemoryProfile) {
        let info = device.info();
        self.entries.retain(|e| {
            !(e.device == info.id
                && e.profile.model == profile.model
                && e.profile.max_len == profile.max_len)
        });
        self.entries.push(CachedProfile {
            device: info.id,
            device_name: info.name,
            memory_total_bytes: info.memory_total_bytes,
            profile,
        });
    }

    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::invalid(format!("profile cache {}", path.display()), e.to_string()))
    }

    /// Write atomically (a temporary file, then a rename).
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::invalid("profile cache", e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))
    }
}
