//! `LlamaModel`: the weights of a Llama-family model on one device and its
//! forward pass, built only from core's `DynDevice` kernels (`embedding`,
//! `rms_norm`, `gemm`, `bias_activation`, `rope`, `attention_causal`,
//! `silu_mul`, `reduce`, `copy`), so it runs on every backend that has
//! them. Quantized matrices of a GGUF file stay in their blocks on a
//! device with kernels for the format ([`WeightFormat::Native`], the
//! default: resident memory is the file's tensor bytes); everything else,
//! and every weight under [`WeightFormat::F32`], is widened to f32.
//!
//! A forward call takes any number of sequences, each with any number of
//! new tokens after what its [`KvCache`] holds: a prompt is one call of all
//! its tokens (every GEMM over all of them at once), a decode step one
//! token per sequence, and both may mix. The matrices run once over the
//! rows of every sequence together; attention runs per sequence over its
//! own cache.

use hetero_core::{
    Activation, BoxedBuffer, CausalAttentionSpec, DType, DynBuffer, DynDevice, DynDeviceExt, Error,
    GemmSpec, HostSlice, QuantMatmulSpec, QuantType, ReduceOp, Result, RopeSpec, SharedDevice,
};

use super::config::LlamaConfig;
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
enum Matrix {
    F32(BoxedBuffer),
    Blocks { buf: BoxedBuffer, quant: QuantType },
}

impl Matrix {
    /// `x W^T` for `rows` rows of `x` (`rows x inp`), into a new buffer.
    fn apply(
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
    fn gather(&self, d: &dyn DynDevice, ids: &[u32], out: &mut dyn DynBuffer) -> Result<()> {
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
struct Layer {
    attn_norm: BoxedBuffer,
    q: Matrix,
    k: Matrix,
    v: Matrix,
    biases: Option<[BoxedBuffer; 3]>,
    o: Matrix,
    ffn_norm: BoxedBuffer,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

/// Progress of a model load: weights uploaded so far.
#[derive(Debug, Clone, Copy)]
pub struct LoadProgress {
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// A Llama-family model resident on one device.
pub struct LlamaModel {
    device: SharedDevice,
    config: LlamaConfig,
    embedding: Matrix,
    layers: Vec<Layer>,
    output_norm: BoxedBuffer,
    /// `None` when tied to the embedding.
    output: Option<Matrix>,
    inv_freq: BoxedBuffer,
    format: WeightFormat,
    weight_bytes: u64,
}

impl std::fmt::Debug for LlamaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaModel")
            .field("device", &self.device.id())
            .field("config", &self.config)
            .finish()
    }
}

/// The keys and values of one sequence's past positions, per layer, on
/// the model's device.
pub struct KvCache {
    k: Vec<BoxedBuffer>,
    v: Vec<BoxedBuffer>,
    len: usize,
    max_len: usize,
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
        let config = checkpoint.config().clone();
        let keep = format.kept_formats(device.as_ref());
        let total_bytes = checkpoint.resident_weight_bytes(&keep);
        let mut done_bytes = 0u64;
        let mut upload = |w: Weight, keep: &[QuantType]| -> Result<Matrix> {
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
        let embedding = upload(Weight::Embedding, &keep)?;
        let mut layers = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let attn_norm = vector(upload(Weight::AttnNorm(l), &[])?)?;
            let (q, k, v) = (
                upload(Weight::Q(l), &keep)?,
                upload(Weight::K(l), &keep)?,
                upload(Weight::V(l), &keep)?,
            );
            let biases = if config.architecture.qkv_bias() {
                Some([
                    vector(upload(Weight::QBias(l), &[])?)?,
                    vector(upload(Weight::KBias(l), &[])?)?,
                    vector(upload(Weight::VBias(l), &[])?)?,
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
                o: upload(Weight::O(l), &keep)?,
                ffn_norm: vector(upload(Weight::FfnNorm(l), &[])?)?,
                gate: upload(Weight::Gate(l), &keep)?,
                up: upload(Weight::Up(l), &keep)?,
                down: upload(Weight::Down(l), &keep)?,
            });
        }
        let output_norm = vector(upload(Weight::OutputNorm, &[])?)?;
        let output = if config.tied_embeddings {
            None
        } else {
            Some(upload(Weight::Output, &keep)?)
        };
        let inv_freq = device.alloc_from(HostSlice::new(&config.inv_freq()))?;
        Ok(LlamaModel {
            device,
            format,
            weight_bytes: total_bytes,
            config,
            embedding,
            layers,
            output_norm,
            output,
            inv_freq,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// How the weights are held.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// Bytes of the weights on the device (blocks as stored, f32 for the rest).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    pub fn device(&self) -> &SharedDevice {
        &self.device
    }

    /// Put the first `n` positions of `from` into the empty cache `to` (a
    /// device-side copy per layer): a sequence whose tokens begin with the
    /// `n` tokens `from` was fed starts after them (prefix caching). The
    /// keys and values of a position depend only on the tokens up to it,
    /// so what follows is computed as if those tokens had been fed to `to`.
    pub fn copy_prefix(&self, from: &KvCache, n: usize, to: &mut KvCache) -> Result<()> {
        let c = &self.config;
        if from.k.len() != c.layers || to.k.len() != c.layers {
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
        let d: &dyn DynDevice = self.device.as_ref();
        for l in 0..c.layers {
            d.copy(from.k[l].as_ref(), 0..width, to.k[l].as_mut(), 0)?;
            d.copy(from.v[l].as_ref(), 0..width, to.v[l].as_mut(), 0)?;
        }
        to.len = n;
        Ok(())
    }

    /// An empty cache for one sequence of up to `max_len` positions.
    pub fn new_cache(&self, max_len: usize) -> Result<KvCache> {
        if max_len == 0 {
            return Err(Error::invalid("kv cache length", "must be at least 1"));
        }
        let width = max_len
            .checked_mul(self.config.kv_heads * self.config.head_dim)
            .ok_or_else(|| Error::invalid("kv cache length", format!("{max_len} overflows")))?;
        let alloc = || self.device.alloc(DType::F32, width);
        let k = (0..self.config.layers)
            .map(|_| alloc())
            .collect::<Result<_>>()?;
        let v = (0..self.config.layers)
            .map(|_| alloc())
            .collect::<Result<_>>()?;
        Ok(KvCache {
            k,
            v,
            len: 0,
            max_len,
        })
    }

    /// Run `tokens` of one sequence after what `cache` holds; the logits
    /// (`rows x vocab`, row-major) of the rows `which` asks for.
    pub fn forward(&self, cache: &mut KvCache, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        let mut out = self.forward_batch(&mut [(cache, tokens)], which)?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Run several sequences at once, each with its new tokens; per
    /// sequence, the logits of the rows `which` asks for. Caches are
    /// advanced only if the whole call succeeds.
    pub fn forward_batch(
        &self,
        seqs: &mut [(&mut KvCache, &[u32])],
        which: Logits,
    ) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let d: &dyn DynDevice = self.device.as_ref();
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        for (i, (cache, tokens)) in seqs.iter().enumerate() {
            if tokens.is_empty() {
                return Err(Error::invalid(format!("sequence {i}"), "has no new tokens"));
            }
            if cache.k.len() != c.layers {
                return Err(Error::invalid(
                    format!("sequence {i} cache"),
                    "belongs to another model",
                ));
            }
            if cache.len + tokens.len() > cache.max_len {
                return Err(Error::invalid(
                    format!("sequence {i}"),
                    format!(
                        "{} cached + {} new positions exceed its KV cache of {}",
                        cache.len,
                        tokens.len(),
                        cache.max_len
                    ),
                ));
            }
            if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
                return Err(Error::invalid(
                    format!("sequence {i} tokens"),
                    format!("id {bad} is past the vocabulary of {}", c.vocab),
                ));
            }
            ids.extend_from_slice(tokens);
            positions.extend((cache.len..cache.len + tokens.len()).map(|p| p as u32));
        }
        let rows = ids.len();
        let (h, qw, kvw) = (c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let alloc = |n: usize| d.alloc(DType::F32, n);
        // y = x W^T for a weight stored [out, in].
        let linear =
            |x: &dyn DynBuffer, w: &Matrix, out: usize, inp: usize| w.apply(d, x, rows, out, inp);
        let rope = |x: &mut dyn DynBuffer, heads: usize| -> Result<()> {
            let spec = RopeSpec {
                tokens: rows,
                heads,
                head_dim: c.head_dim,
                layout: c.rope_layout,
            };
            d.rope(&spec, x, &positions, self.inv_freq.as_ref())
        };
        // Row offset of each sequence's tokens.
        let offsets: Vec<usize> = seqs
            .iter()
            .scan(0, |acc, (_, t)| {
                let start = *acc;
                *acc += t.len();
                Some(start)
            })
            .collect();

        let mut x = alloc(rows * h)?;
        self.embedding.gather(d, &ids, x.as_mut())?;
        let mut normed = alloc(rows * h)?;
        for (l, layer) in self.layers.iter().enumerate() {
            d.rms_norm(
                x.as_ref(),
                layer.attn_norm.as_ref(),
                normed.as_mut(),
                c.rms_eps,
            )?;
            let mut q = linear(normed.as_ref(), &layer.q, qw, h)?;
            let mut k = linear(normed.as_ref(), &layer.k, kvw, h)?;
            let mut v = linear(normed.as_ref(), &layer.v, kvw, h)?;
            if let Some([bq, bk, bv]) = &layer.biases {
                d.bias_activation(q.as_mut(), bq.as_ref(), Activation::Identity)?;
                d.bias_activation(k.as_mut(), bk.as_ref(), Activation::Identity)?;
                d.bias_activation(v.as_mut(), bv.as_ref(), Activation::Identity)?;
            }
            rope(q.as_mut(), c.heads)?;
            rope(k.as_mut(), c.kv_heads)?;
            let mut att = alloc(rows * qw)?;
            for ((cache, tokens), &r0) in seqs.iter_mut().zip(&offsets) {
                let n = tokens.len();
                let rows_kv = r0 * kvw..(r0 + n) * kvw;
                d.copy(
                    k.as_ref(),
                    rows_kv.clone(),
                    cache.k[l].as_mut(),
                    cache.len * kvw,
                )?;
                d.copy(v.as_ref(), rows_kv, cache.v[l].as_mut(), cache.len * kvw)?;
                let spec = CausalAttentionSpec {
                    batch: 1,
                    q_len: n,
                    heads: c.heads,
                    kv_heads: c.kv_heads,
                    head_dim: c.head_dim,
                    max_len: cache.max_len,
                };
                let lens = [(cache.len + n) as u32];
                if n == rows {
                    d.attention_causal(
                        &spec,
                        q.as_ref(),
                        cache.k[l].as_ref(),
                        cache.v[l].as_ref(),
                        &lens,
                        att.as_mut(),
                    )?;
                } else {
                    // The kernel reads one sequence's rows: stage them.
                    let mut qi = alloc(n * qw)?;
                    d.copy(q.as_ref(), r0 * qw..(r0 + n) * qw, qi.as_mut(), 0)?;
                    let mut oi = alloc(n * qw)?;
                    d.attention_causal(
                        &spec,
                        qi.as_ref(),
                        cache.k[l].as_ref(),
                        cache.v[l].as_ref(),
                        &lens,
                        oi.as_mut(),
                    )?;
                    d.copy(oi.as_ref(), 0..n * qw, att.as_mut(), r0 * qw)?;
                }
            }
            let o = linear(att.as_ref(), &layer.o, h, qw)?;
            d.reduce(ReduceOp::Sum, x.as_mut(), o.as_ref())?;
            d.rms_norm(
                x.as_ref(),
                layer.ffn_norm.as_ref(),
                normed.as_mut(),
                c.rms_eps,
            )?;
            let mut gate = linear(normed.as_ref(), &layer.gate, c.intermediate, h)?;
            let up = linear(normed.as_ref(), &layer.up, c.intermediate, h)?;
            d.silu_mul(gate.as_mut(), up.as_ref())?;
            let down = linear(gate.as_ref(), &layer.down, h, c.intermediate)?;
            d.reduce(ReduceOp::Sum, x.as_mut(), down.as_ref())?;
        }
        for (cache, tokens) in seqs.iter_mut() {
            cache.len += tokens.len();
        }

        // The rows whose logits are wanted.
        let (picked, picked_rows) = match which {
            Logits::All => (x, rows),
            Logits::Last if seqs.len() == 1 && rows == 1 => (x, 1),
            Logits::Last => {
                let mut last = alloc(seqs.len() * h)?;
                for (i, ((_, tokens), &r0)) in seqs.iter().zip(&offsets).enumerate() {
                    let r = r0 + tokens.len() - 1;
                    d.copy(x.as_ref(), r * h..(r + 1) * h, last.as_mut(), i * h)?;
                }
                (last, seqs.len())
            }
        };
        let mut final_norm = d.alloc(DType::F32, picked_rows * h)?;
        d.rms_norm(
            picked.as_ref(),
            self.output_norm.as_ref(),
            final_norm.as_mut(),
            c.rms_eps,
        )?;
        let out_w = self.output.as_ref().unwrap_or(&self.embedding);
        let logits = out_w.apply(d, final_norm.as_ref(), picked_rows, c.vocab, h)?;
        let all: Vec<f32> = d.to_vec(logits.as_ref())?;
        Ok(match which {
            Logits::Last => all.chunks(c.vocab).map(<[f32]>::to_vec).collect(),
            Logits::All => offsets
                .iter()
                .zip(seqs.iter())
                .map(|(&r0, (_, t))| all[r0 * c.vocab..(r0 + t.len()) * c.vocab].to_vec())
                .collect(),
        })
    }
}
