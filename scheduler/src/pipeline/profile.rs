//! Per-layer cost profiles of a real model on a device.
//!
//! All blocks of a Llama-family model have the same shapes, so layers
//! whose weights have the same formats cost the same; one representative
//! per such group is timed. A part holding layer `k` alone costs
//! `boundary + layer` (its input uploaded, its output read back); a part
//! holding `k` and `k + 1` costs `boundary + 2 layer`; the difference is
//! the layer, the rest the boundary. The part holding layer 0 has the
//! embedding instead of an upload, the one holding the last layer the
//! head (and its logits read back) instead of the hidden state's.
//!
//! Small parts flatter a device whose caches hold their weights between
//! calls, where the whole model streams its weights from memory every
//! step; where the whole model fits on the device for a timing, the
//! parts' figures are scaled so their sum is its measured time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use hetero_core::{Result, SharedDevice};
use hetero_models::llama::{KvCacheDtype, Weight};
use hetero_models::{Checkpoint, LlamaModel, StageSpec, WeightFormat};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProfileOptions {
    /// Sequences decoded together.
    pub batch: usize,
    /// Cached positions of each when a step is timed.
    pub context: usize,
    /// Timed calls per measurement.
    pub repetitions: usize,
    /// Which of them a measurement is (a profile cached before this
    /// option took the best; it reads as `best`).
    #[serde(default = "Timing::best")]
    pub timing: Timing,
    /// The KV cache the parts are timed with, and whose bytes the plan
    /// counts (a profile cached before this option was measured on f32
    /// caches; it reads as `auto`).
    #[serde(default)]
    pub kv_dtype: KvCacheDtype,
}

impl Default for ProfileOptions {
    fn default() -> Self {
        ProfileOptions {
            batch: 8,
            context: 64,
            repetitions: 7,
            timing: Timing::Median,
            kv_dtype: KvCacheDtype::Auto,
        }
    }
}

/// Which of a measurement's timed calls counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timing {
    /// The fastest: the call that met no interference. Predicted
    /// pipelines measured 0.77-0.88 of such a prediction (2026-12-03).
    Best,
    /// The median: what a sustained run gets per call on a shared
    /// machine, which is what the plans' predictions are set against.
    Median,
}

impl Timing {
    fn best() -> Timing {
        Timing::Best
    }
}

/// A model's costs on one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerProfile {
    pub device: String,
    pub device_name: String,
    /// The model it was measured with (file name).
    pub model: String,
    pub options: ProfileOptions,
    /// Seconds of each layer in a decode step of the batch.
    pub layer_s: Vec<f64>,
    /// Seconds of the embedding gather, and of the output norm and head
    /// with the logits read back.
    pub embed_s: f64,
    pub head_s: f64,
    /// Seconds to take a batch's hidden state in from the host, or hand it
    /// out, at a stage boundary (each side pays its own).
    pub boundary_s: f64,
    /// Weight bytes of each layer in this device's formats.
    pub layer_bytes: Vec<u64>,
    pub embed_bytes: u64,
    /// Output norm and head (without a tied embedding's copy).
    pub head_bytes: u64,
    /// A tied embedding's copy on the last stage of a split (0 if untied).
    pub tied_copy_bytes: u64,
    /// KV cache bytes of one position of one sequence in one layer.
    pub kv_bytes_per_position_layer: u64,
    /// Threads of the host's processor the device keeps busy while it
    /// works ([`hetero_core::DeviceInfo::host_threads`]), and how many the
    /// processor has: devices that share it slow each other (see
    /// `contention.rs`). Not measurements: refreshed from the device when
    /// a profile comes from a cache.
    #[serde(default)]
    pub host_threads: Option<u32>,
    #[serde(default)]
    pub host_cores: Option<u32>,
}

impl LayerProfile {
    /// Seconds of the whole model on this device (one decode step).
    pub fn whole_s(&self) -> f64 {
        self.embed_s + self.layer_s.iter().sum::<f64>() + self.head_s
    }
}

/// Measure `checkpoint`'s costs on `device` (see the module docs). Layers
/// are grouped by their weights' sizes in the device's formats (equal
/// sizes, equal formats); one group member is timed per group.
pub fn profile_layers(
    checkpoint: &Checkpoint,
    device: &SharedDevice,
    options: ProfileOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<LayerProfile> {
    let c = checkpoint.config();
    let n = c.layers;
    let keep = WeightFormat::Native.kept_formats(device.as_ref());
    let kv_dtype = options.kv_dtype.resolve([device.as_ref()])?;
    let layer_bytes: Vec<u64> = (0..n)
        .map(|l| checkpoint.stage_weight_bytes(&keep, l..l + 1, false, false, false))
        .collect();
    let signature = |l: usize| -> Vec<u64> {
        per_layer_weights(l)
            .into_iter()
            .map(|w| checkpoint.weight_bytes(w, &keep))
            .collect()
    };
    let mut groups: BTreeMap<Vec<u64>, Vec<usize>> = BTreeMap::new();
    for l in 0..n {
        groups.entry(signature(l)).or_default().push(l);
    }
    let time = |layers: std::ops::Range<usize>| -> Result<f64> {
        let mut part = LlamaModel::load_split(
            checkpoint,
            &[StageSpec {
                device: device.clone(),
                layers,
            }],
            WeightFormat::Native,
            &mut |_| {},
        )?;
        part.set_kv_cache_dtype(options.kv_dtype)?;
        match options.timing {
            Timing::Best => part.time_call(options.batch, 1, options.context, options.repetitions),
            Timing::Median => {
                part.time_call_median(options.batch, 1, options.context, options.repetitions)
            }
        }
    };
    let mut layer_s = vec![0.0; n];
    let mut boundary = Vec::new();
    for (g, members) in groups.values().enumerate() {
        progress(&format!(
            "{}: timing layer group {}/{} ({} layers)",
            device.id(),
            g + 1,
            groups.len(),
            members.len()
        ));
        // A run of up to four consecutive members, from the middle where
        // there is one: one layer alone and the run, their difference
        // over the extra layers is the layer (three layers of signal
        // against the timer's noise), the rest the boundary.
        let k = members
            .iter()
            .copied()
            .find(|&k| k > 0 && k + 2 < n && members.contains(&(k + 1)))
            .or_else(|| members.iter().copied().find(|&k| k > 0 && k + 1 < n))
            .unwrap_or(members[0]);
        let run = (1..4)
            .take_while(|i| k + i < n && members.contains(&(k + i)))
            .count()
            + 1;
        let one = time(k..k + 1)?;
        let layer = if run > 1 {
            let more = time(k..k + run)?;
            let layer = ((more - one) / (run - 1) as f64).max(0.0);
            boundary.push((one - layer).max(0.0));
            layer
        } else {
            one
        };
        for &l in members {
            layer_s[l] = layer;
        }
    }
    // Without a two-layer measurement, no boundary either: count none.
    let boundary_s = if boundary.is_empty() {
        0.0
    } else {
        boundary.iter().sum::<f64>() / boundary.len() as f64
    };
    progress(&format!(
        "{}: timing the embedding and the head",
        device.id()
    ));
    let first = time(0..1)?;
    let embed_s = (first - layer_s[0] - boundary_s / 2.0).max(0.0);
    let last = if n == 1 { first } else { time(n - 1..n)? };
    let head_s = (last - layer_s[n - 1] - boundary_s / 2.0).max(0.0);
    let (mut embed_s, mut head_s) = (embed_s, head_s);
    // Parts of a layer or a few keep their weights in the processor's
    // caches between calls; a whole model streams them from memory every
    // step. Where the whole model fits for a timing, scale the parts'
    // figures to its measured time.
    progress(&format!(
        "{}: timing the whole model to calibrate",
        device.id()
    ));
    match time(0..n) {
        Ok(whole) => {
            let parts = embed_s + layer_s.iter().sum::<f64>() + head_s;
            if parts > 0.0 {
                let scale = whole / parts;
                layer_s.iter_mut().for_each(|t| *t *= scale);
                embed_s *= scale;
                head_s *= scale;
            }
        }
        Err(e) if e.is_out_of_memory() => progress(&format!(
            "{}: the whole model does not fit for a timing; parts uncalibrated",
            device.id()
        )),
        Err(e) => return Err(e),
    }
    let head_bytes = checkpoint.stage_weight_bytes(&keep, 0..0, false, true, false);
    let tied_copy_bytes = if c.tied_embeddings {
        checkpoint.weight_bytes(Weight::Embedding, &keep)
    } else {
        0
    };
    Ok(LayerProfile {
        device: device.id().to_string(),
        device_name: device.info().name,
        model: checkpoint
            .path()
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        options,
        layer_s,
        embed_s,
        head_s,
        boundary_s,
        layer_bytes,
        embed_bytes: checkpoint.weight_bytes(Weight::Embedding, &keep),
        head_bytes,
        tied_copy_bytes,
        kv_bytes_per_position_layer: c.kv_bytes_per_position_as(kv_dtype) / n.max(1) as u64,
        host_threads: device.info().host_threads,
        host_cores: host_cores(),
    })
}

/// Processor threads of this machine, as the contention term counts them.
pub(crate) fn host_cores() -> Option<u32> {
    std::thread::available_parallelism()
        .ok()
        .and_then(|n| u32::try_from(n.get()).ok())
}

/// The weights of layer `l` (biases too; absent ones cost nothing).
fn per_layer_weights(l: usize) -> Vec<Weight> {
    vec![
        Weight::AttnNorm(l),
        Weight::Q(l),
        Weight::K(l),
        Weight::V(l),
        Weight::O(l),
        Weight::FfnNorm(l),
        Weight::Gate(l),
        Weight::Up(l),
        Weight::Down(l),
    ]
}
