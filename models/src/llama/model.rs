//! `LlamaModel`: the weights of a Llama-family model on one device and its
//! forward pass, built only from core's `DynDevice` kernels (`embedding`,
//! `rms_norm`, `gemm`, `bias_activation`, `rope`, `attention_causal`,
//! `silu_mul`, `reduce`, `copy`), so it runs on every backend that has
//! them. Quantized matrices of a GGUF file stay in their blocks on a
//! device with kernels for the format ([`WeightFormat::Native`], the
//! default: resident memory is the file's tensor bytes); everything else,
//! and every weight under [`WeightFormat::F32`], is widened to f32.
//!
//! The forward pass is in `forward.rs`.

use std::ops::Range;

use hetero_core::{
    BoxedBuffer, DType, DynBuffer, DynDevice, DynDeviceExt, Error, GemmSpec, HostSlice,
    QuantMatmulSpec, QuantType, Result, SharedDevice,
};

use super::config::LlamaConfig;
use super::kv_dtype::KvCacheDtype;
use super::remote::{RemoteTail, next_cache_id};
use super::weights::Weight;
use crate::checkpoint::{Checkpoint, StoredWeight};

/// How a model's matrices are held on its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// Quantized GGUF tensors stay in their blocks where the device has
    /// kernels for their format (`Capabilities::quant_types`); the rest
    /// are widened to f32.
    #[default]
    Native,
    /// Every weight widened to f32 (the reference path; 4-8x the memory
    /// of a quantized file).
    F32,
}

impl WeightFormat {
    /// The block formats a model loaded this way keeps on `device`.
    pub fn kept_formats(self, device: &dyn DynDevice) -> Vec<QuantType> {
        match self {
            WeightFormat::Native => device.capabilities().quant_types,
            WeightFormat::F32 => Vec::new(),
        }
    }
}

/// A `[out, in]` matrix on the device.
pub(super) enum Matrix {
    F32(BoxedBuffer),
    Blocks { buf: BoxedBuffer, quant: QuantType },
}

impl Matrix {
    /// `x W^T` for `rows` rows of `x` (`rows x inp`), into a new buffer.
    pub(super) fn apply(
        &self,
        d: &dyn DynDevice,
        x: &dyn DynBuffer,
        rows: usize,
        out: usize,
        inp: usize,
    ) -> Result<BoxedBuffer> {
        let mut y = d.alloc(DType::F32, rows * out)?;
        match self {
            Matrix::F32(w) => {
                let spec = GemmSpec {
                    trans_b: true,
                    ..GemmSpec::new(rows, out, inp)
                };
                d.gemm(&spec, x, w.as_ref(), y.as_mut())?;
            }
            Matrix::Blocks { buf, quant } => {
                let spec = QuantMatmulSpec {
                    rows,
                    out,
                    inp,
                    quant: *quant,
                };
                d.matmul_quant(&spec, x, buf.as_ref(), y.as_mut())?;
            }
        }
        Ok(y)
    }

    /// Rows `ids` of the matrix into `out` (f32).
    pub(super) fn gather(
        &self,
        d: &dyn DynDevice,
        ids: &[u32],
        out: &mut dyn DynBuffer,
    ) -> Result<()> {
        match self {
            Matrix::F32(table) => d.embedding(table.as_ref(), ids, out),
            Matrix::Blocks { buf, quant } => d.embedding_quant(*quant, buf.as_ref(), ids, out),
        }
    }
}

/// A norm or bias vector: always f32 (`upload` with no kept formats).
fn vector(m: Matrix) -> Result<BoxedBuffer> {
    match m {
        Matrix::F32(b) => Ok(b),
        Matrix::Blocks { quant, .. } => Err(Error::invalid(
            "model vector",
            format!("was loaded as {quant} blocks instead of f32"),
        )),
    }
}

/// One layer's weights on the device.
pub(super) struct Layer {
    pub(super) attn_norm: BoxedBuffer,
    pub(super) q: Matrix,
    pub(super) k: Matrix,
    pub(super) v: Matrix,
    pub(super) biases: Option<[BoxedBuffer; 3]>,
    pub(super) o: Matrix,
    pub(super) ffn_norm: BoxedBuffer,
    pub(super) gate: Matrix,
    pub(super) up: Matrix,
    pub(super) down: Matrix,
}

/// Progress of a model load: weights uploaded so far.
#[derive(Debug, Clone, Copy)]
pub struct LoadProgress {
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// One device's part of a model split across devices: the layers it
/// holds. The first stage also holds the embedding, the last the output
/// norm and head.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub device: SharedDevice,
    pub layers: Range<usize>,
}

/// What one stage of a loaded model holds.
#[derive(Debug, Clone)]
pub struct StageInfo {
    /// The stage's device, in this process; `None` for a stage that runs
    /// in another process (see `rank`).
    pub device: Option<SharedDevice>,
    /// The device's id ("host:0"; "rank 1 host:0" for another process's).
    pub device_id: String,
    pub device_name: String,
    /// The rank of the process that runs a remote stage.
    pub rank: Option<usize>,
    pub layers: Range<usize>,
    /// Bytes of the weights on this stage's device.
    pub weight_bytes: u64,
}

/// The output norm and matrix, on the last stage's device.
pub(super) struct Head {
    pub(super) norm: BoxedBuffer,
    /// `None` when tied to the embedding on the same device; a split model
    /// (or a part without the embedding) with tied embeddings holds a
    /// second copy of the embedding here.
    pub(super) output: Option<Matrix>,
}

/// One stage on its device.
pub(super) struct Stage {
    pub(super) device: SharedDevice,
    pub(super) layers: Range<usize>,
    /// RoPE's inverse frequencies, on this stage's device.
    pub(super) inv_freq: BoxedBuffer,
    pub(super) weight_bytes: u64,
}

/// A Llama-family model resident on one device, or split by layers
/// across several (each stage on its own device, activations moved
/// between them through the host).
pub struct LlamaModel {
    pub(super) config: LlamaConfig,
    pub(super) stages: Vec<Stage>,
    /// On the first stage's device; `None` for a part that does not start
    /// at layer 0.
    pub(super) embedding: Option<Matrix>,
    pub(super) layers: Vec<Layer>,
    /// On the last stage's device; `None` for a part that does not end at
    /// the last layer.
    pub(super) head: Option<Head>,
    /// The stages after the local ones, in other processes (rank 0 of a
    /// pipeline over processes); they hold the head then.
    pub(super) tail: Option<RemoteTail>,
    /// Micro-batches a call of a split model is cut into.
    pub(super) micro_batches: usize,
    format: WeightFormat,
    weight_bytes: u64,
    /// The dtype of the caches [`LlamaModel::new_cache`] makes.
    kv_dtype: DType,
}

impl std::fmt::Debug for LlamaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stages: Vec<String> = self
            .stages
            .iter()
            .map(|s| format!("{}: {:?}", s.device.id(), s.layers))
            .collect();
        f.debug_struct("LlamaModel")
            .field("stages", &stages)
            .field("config", &self.config)
            .finish()
    }
}

/// The keys and values of one sequence's past positions, per layer, each
/// on the device of the stage that holds the layer.
pub struct KvCache {
    pub(super) k: Vec<BoxedBuffer>,
    pub(super) v: Vec<BoxedBuffer>,
    pub(super) len: usize,
    pub(super) max_len: usize,
    /// Names the sequence to the stages in other processes, which hold
    /// the rest of its keys and values.
    pub(super) id: u64,
    /// Where the id goes when the cache is dropped, so those stages free
    /// theirs (with the next message down the line).
    release: Option<std::sync::Arc<std::sync::Mutex<Vec<u64>>>>,
}

impl Drop for KvCache {
    fn drop(&mut self) {
        if let Some(Ok(mut freed)) = self.release.as_ref().map(|r| r.lock()) {
            freed.push(self.id);
        }
    }
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("len", &self.len)
            .field("max_len", &self.max_len)
            .finish()
    }
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions it can hold.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// A cache of no layers, standing in for one that is away (in a
    /// batch on a [`Line`](super::Line)).
    pub(super) fn detached() -> KvCache {
        KvCache {
            k: Vec::new(),
            v: Vec::new(),
            len: 0,
            max_len: 0,
            id: 0,
            release: None,
        }
    }

    /// Forget every position (the buffers stay allocated for the next sequence).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// Which rows' logits a forward call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// The last new token of each sequence (what generation samples from).
    Last,
    /// Every new token of every sequence (tests, scoring).
    All,
}

/// Check that `stages` cover consecutive non-empty ranges of layers, in
/// order, within the model's `layers`.
fn check_stages(stages: &[StageSpec], layers: usize) -> Result<()> {
    let Some(first) = stages.first() else {
        return Err(Error::invalid("model split", "names no device"));
    };
    let mut next = first.layers.start;
    for (i, s) in stages.iter().enumerate() {
        if s.layers.start != next || s.layers.end <= s.layers.start || s.layers.end > layers {
            return Err(Error::invalid(
                format!("model split stage {i} ({})", s.device.id()),
                format!(
                    "holds layers {:?}; stages hold consecutive non-empty ranges of the \
                     model's {layers} layers (this one should start at layer {next})",
                    s.layers
                ),
            ));
        }
        next = s.layers.end;
    }
    Ok(())
}

impl LlamaModel {
    /// Load `checkpoint`'s weights onto `device` in the default
    /// [`WeightFormat::Native`], calling `progress` after each tensor.
    pub fn load(
        checkpoint: &Checkpoint,
        device: SharedDevice,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        Self::load_as(checkpoint, device, WeightFormat::Native, progress)
    }

    /// Load `checkpoint`'s weights onto `device` in `format`.
    pub fn load_as(
        checkpoint: &Checkpoint,
        device: SharedDevice,
        format: WeightFormat,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let layers = 0..checkpoint.config().layers;
        Self::load_split(
            checkpoint,
            &[StageSpec { device, layers }],
            format,
            progress,
        )
    }

    /// Load `checkpoint` split by layers over `stages` (consecutive
    /// ranges covering every layer, in order), each stage's weights on
    /// its device in `format`.
    pub fn load_split(
        checkpoint: &Checkpoint,
        stages: &[StageSpec],
        format: WeightFormat,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let config = checkpoint.config().clone();
        check_stages(stages, config.layers)?;
        let has_embedding = stages[0].layers.start == 0;
        let has_head = stages[stages.len() - 1].layers.end == config.layers;
        let keeps: Vec<Vec<QuantType>> = stages
            .iter()
            .map(|s| format.kept_formats(s.device.as_ref()))
            .collect();
        // The head needs its own copy of a tied embedding unless the
        // embedding is on the same (only) device.
        let tied_copy = config.tied_embeddings && (stages.len() > 1 || !has_embedding);
        let mut stage_bytes = vec![0u64; stages.len()];
        let total_bytes: u64 = {
            let mut total = 0;
            for (i, s) in stages.iter().enumerate() {
                let b = checkpoint.stage_weight_bytes(
                    &keeps[i],
                    s.layers.clone(),
                    i == 0 && has_embedding,
                    i + 1 == stages.len() && has_head,
                    tied_copy,
                );
                stage_bytes[i] = b;
                total += b;
            }
            total
        };
        let mut done_bytes = 0u64;
        let mut upload = |w: Weight, s: usize, quantized: bool| -> Result<Matrix> {
            let device = &stages[s].device;
            let keep: &[QuantType] = if quantized { &keeps[s] } else { &[] };
            let (m, bytes) = match checkpoint.stored_weight(w, keep)? {
                StoredWeight::Blocks { quant, bytes } => (
                    Matrix::Blocks {
                        buf: device.alloc_from(HostSlice::new(bytes))?,
                        quant,
                    },
                    bytes.len(),
                ),
                StoredWeight::F32(values) => (
                    Matrix::F32(device.alloc_from(HostSlice::new(&values))?),
                    values.len() * 4,
                ),
            };
            done_bytes += bytes as u64;
            progress(LoadProgress {
                done_bytes,
                total_bytes,
            });
            Ok(m)
        };
        let last = stages.len() - 1;
        let embedding = if has_embedding {
            Some(upload(Weight::Embedding, 0, true)?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(config.layers);
        for (s, stage) in stages.iter().enumerate() {
            for l in stage.layers.clone() {
                let attn_norm = vector(upload(Weight::AttnNorm(l), s, false)?)?;
                let (q, k, v) = (
                    upload(Weight::Q(l), s, true)?,
                    upload(Weight::K(l), s, true)?,
                    upload(Weight::V(l), s, true)?,
                );
                let biases = if config.architecture.qkv_bias() {
                    Some([
                        vector(upload(Weight::QBias(l), s, false)?)?,
                        vector(upload(Weight::KBias(l), s, false)?)?,
                        vector(upload(Weight::VBias(l), s, false)?)?,
                    ])
                } else {
                    None
                };
                layers.push(Layer {
                    attn_norm,
                    q,
                    k,
                    v,
                    biases,
                    o: upload(Weight::O(l), s, true)?,
                    ffn_norm: vector(upload(Weight::FfnNorm(l), s, false)?)?,
                    gate: upload(Weight::Gate(l), s, true)?,
                    up: upload(Weight::Up(l), s, true)?,
                    down: upload(Weight::Down(l), s, true)?,
                });
            }
        }
        let head = if has_head {
            let norm = vector(upload(Weight::OutputNorm, last, false)?)?;
            let output = if !config.tied_embeddings {
                Some(upload(Weight::Output, last, true)?)
            } else if tied_copy {
                Some(upload(Weight::Embedding, last, true)?)
            } else {
                None
            };
            Some(Head { norm, output })
        } else {
            None
        };
        let inv_freq = config.inv_freq();
        let stages = stages
            .iter()
            .zip(stage_bytes)
            .map(|(s, weight_bytes)| {
                Ok(Stage {
                    inv_freq: s.device.alloc_from(HostSlice::new(&inv_freq))?,
                    device: s.device.clone(),
                    layers: s.layers.clone(),
                    weight_bytes,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let kv_dtype = KvCacheDtype::Auto.resolve(stages.iter().map(|s| s.device.as_ref()))?;
        Ok(LlamaModel {
            kv_dtype,
            tail: None,
            micro_batches: stages.len(),
            format,
            weight_bytes: total_bytes,
            config,
            stages,
            embedding,
            layers,
            head,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// How the weights are held.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// The dtype of the KV caches [`new_cache`](Self::new_cache) makes:
    /// f16 where every device of the model reads f16 caches, unless set.
    pub fn kv_cache_dtype(&self) -> DType {
        self.kv_dtype
    }

    /// Hold the caches made from now on in `dtype` (caches made before
    /// keep theirs); `F16` on a device without f16 caches is `Unsupported`.
    pub fn set_kv_cache_dtype(&mut self, dtype: KvCacheDtype) -> Result<()> {
        self.kv_dtype = dtype.resolve(self.stages.iter().map(|s| s.device.as_ref()))?;
        Ok(())
    }

    /// Bytes of KV cache per position of one sequence, over every layer,
    /// in this model's cache dtype.
    pub fn kv_bytes_per_position(&self) -> u64 {
        self.config.kv_bytes_per_position_as(self.kv_dtype)
    }

    /// Bytes of the weights on every device together (blocks as stored,
    /// f32 for the rest).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// The device of the first stage: the model's only device unless it is
    /// split (see [`stages`](Self::stages)).
    pub fn device(&self) -> &SharedDevice {
        &self.stages[0].device
    }

    /// The stages in order: one holding every layer unless the model is
    /// split (those of other processes last).
    pub fn stages(&self) -> Vec<StageInfo> {
        let local = self.stages.iter().map(|s| {
            let info = s.device.info();
            StageInfo {
                device: Some(s.device.clone()),
                device_id: info.id.to_string(),
                device_name: info.name,
                rank: None,
                layers: s.layers.clone(),
                weight_bytes: s.weight_bytes,
            }
        });
        let remote = self
            .tail
            .iter()
            .flat_map(|t| t.stages())
            .map(|r| StageInfo {
                device: None,
                device_id: format!("rank {} {}", r.rank, r.device),
                device_name: r.device_name.clone(),
                rank: Some(r.rank),
                layers: r.layers.clone(),
                weight_bytes: r.weight_bytes,
            });
        local.chain(remote).collect()
    }

    /// Stages of the pipeline, this process's and the others' (1 for a
    /// model on one device).
    pub fn pipeline_len(&self) -> usize {
        self.stages.len() + self.tail.as_ref().map_or(0, |t| t.stages().len())
    }

    /// Continue this model (the embedding and the first layers, no head)
    /// with stages in other processes that hold the remaining layers and
    /// the head: calls go down the line and the logits come back (see
    /// [`serve_stage`](Self::serve_stage) for the other end). Micro-batches
    /// per call become one per stage of the whole pipeline.
    pub fn attach_remote(mut self, tail: RemoteTail) -> Result<Self> {
        let held = self.layers_held();
        if self.embedding.is_none() || self.head.is_some() || self.tail.is_some() {
            return Err(Error::invalid(
                "model",
                "only a part holding the embedding and no head can be continued by remote stages",
            ));
        }
        if tail.layers() != (held.end..self.config.layers) {
            return Err(Error::invalid(
                "remote stages",
                format!(
                    "hold layers {:?}; after this part's {held:?} they must hold {:?}",
                    tail.layers(),
                    held.end..self.config.layers
                ),
            ));
        }
        self.tail = Some(tail);
        self.micro_batches = self.pipeline_len();
        Ok(self)
    }

    /// Stop the stages in other processes (each returns from
    /// `serve_stage`), waiting until the last has passed the stop on;
    /// nothing without them. The model can run no call through them after.
    pub fn stop_remote(&self) -> Result<()> {
        match &self.tail {
            Some(t) => t.stop(),
            None => Ok(()),
        }
    }

    /// Cut the sequences of each call of a split model into `n`
    /// micro-batches (default: one per stage; more shortens the pipeline's
    /// fill and drain, at smaller matrix products per stage).
    pub fn set_micro_batches(&mut self, n: usize) {
        self.micro_batches = n.max(1);
    }

    /// The layers this model holds: all of them, unless it is a part
    /// loaded for one stage of a pipeline (or to be profiled).
    pub fn layers_held(&self) -> Range<usize> {
        self.stages[0].layers.start..self.stages[self.stages.len() - 1].layers.end
    }

    /// True when it holds the embedding, every layer and the head (some
    /// of them possibly in stages of other processes).
    pub fn is_whole(&self) -> bool {
        self.embedding.is_some() && (self.head.is_some() || self.tail.is_some())
    }

    /// The stage holding layer `l`.
    fn stage_of(&self, l: usize) -> &Stage {
        self.stages
            .iter()
            .find(|s| s.layers.contains(&l))
            .unwrap_or(&self.stages[0])
    }

    /// Put the first `n` positions of `from` into the empty cache `to` (a
    /// device-side copy per layer): a sequence whose tokens begin with the
    /// `n` tokens `from` was fed starts after them (prefix caching). The
    /// keys and values of a position depend only on the tokens up to it,
    /// so what follows is computed as if those tokens had been fed to `to`.
    pub fn copy_prefix(&self, from: &KvCache, n: usize, to: &mut KvCache) -> Result<()> {
        let c = &self.config;
        if from.k.len() != self.layers.len() || to.k.len() != self.layers.len() {
            return Err(Error::invalid("kv cache", "belongs to another model"));
        }
        if n > from.len || n > to.max_len || !to.is_empty() {
            return Err(Error::invalid(
                "kv cache prefix",
                format!(
                    "{n} positions from a cache holding {} into one of {} (holding {})",
                    from.len, to.max_len, to.len
                ),
            ));
        }
        let width = n * c.kv_heads * c.head_dim;
        for (i, l) in self.layers_held().enumerate() {
            let d: &dyn DynDevice = self.stage_of(l).device.as_ref();
            d.copy(from.k[i].as_ref(), 0..width, to.k[i].as_mut(), 0)?;
            d.copy(from.v[i].as_ref(), 0..width, to.v[i].as_mut(), 0)?;
        }
        if let Some(tail) = &self.tail {
            tail.copy(from.id, to.id, n, to.max_len)?;
        }
        to.len = n;
        Ok(())
    }

    /// An empty cache for one sequence of up to `max_len` positions, each
    /// layer's part on the device of its stage.
    pub fn new_cache(&self, max_len: usize) -> Result<KvCache> {
        if max_len == 0 {
            return Err(Error::invalid("kv cache length", "must be at least 1"));
        }
        let width = max_len
            .checked_mul(self.config.kv_heads * self.config.head_dim)
            .ok_or_else(|| Error::invalid("kv cache length", format!("{max_len} overflows")))?;
        let alloc = |l: usize| self.stage_of(l).device.alloc(self.kv_dtype, width);
        let k = self.layers_held().map(alloc).collect::<Result<_>>()?;
        let v = self.layers_held().map(alloc).collect::<Result<_>>()?;
        Ok(KvCache {
            k,
            v,
            len: 0,
            max_len,
            id: next_cache_id(),
            release: self.tail.as_ref().map(|t| t.freed.clone()),
        })
    }

    /// Run `tokens` of one sequence after what `cache` holds; the logits
    /// (`rows x vocab`, row-major) of the rows `which` asks for.
    pub fn forward(&self, cache: &mut KvCache, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        let mut out = self.forward_batch(&mut [(cache, tokens)], which)?;
        Ok(out.pop().unwrap_or_default())
    }
}
