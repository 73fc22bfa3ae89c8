//! A real greedy decode step of a decoder-only transformer on any device.
//!
//! Pre-layer-norm blocks (as OPT-125m): `x += Wo attn(LN1 x)`,
//! `x += W2 act(W1 LN2 x)`, then the final layer norm and logits against
//! the tied token embedding, and the next token by argmax. Weights are
//! synthetic and deterministic (a seeded generator, scaled like a fresh
//! initialisation), computed in f32 whatever the model's storage dtype, so
//! the same model gives the same numbers on every backend.
//!
//! Positions: learned position embeddings only
//! ([`PositionScheme::Learned`]), position `p` reading table row
//! `p + offset` (OPT's offset is 2). ALiBi (BLOOM) is not implemented:
//! [`DecodeModel::new`] and [`DecodeModel::from_safetensors`] refuse such a
//! shape with [`Error::Unsupported`], and only
//! [`DecodeModel::synthetic_stand_in`], which profiling and synthetic
//! serving use for the shape's memory and GEMM sizes, builds it (without
//! any position term, so its numbers are not BLOOM's).

use hetero_core::{
    Activation, AttentionSpec, BoxedBuffer, DType, DynDevice, DynDeviceExt, Error, GemmSpec,
    HostSlice, ReduceOp, Result,
};

use crate::workload::{ModelShape, PositionScheme};

struct Layer {
    ln1: (BoxedBuffer, BoxedBuffer),
    w_qkv: BoxedBuffer,
    b_qkv: BoxedBuffer,
    w_o: BoxedBuffer,
    b_o: BoxedBuffer,
    ln2: (BoxedBuffer, BoxedBuffer),
    w_up: BoxedBuffer,
    b_up: BoxedBuffer,
    w_down: BoxedBuffer,
    b_down: BoxedBuffer,
    k_cache: BoxedBuffer,
    v_cache: BoxedBuffer,
}

/// A model resident on one device with a KV cache for `batch` sequences of
/// up to `max_len` tokens.
pub struct DecodeModel<'d> {
    device: &'d dyn DynDevice,
    shape: ModelShape,
    batch: usize,
    max_len: usize,
    layers: Vec<Layer>,
    embed: BoxedBuffer,
    positions: Option<BoxedBuffer>,
    /// Position `p` reads row `p + position_offset` of `positions`.
    position_offset: usize,
    ln_f: (BoxedBuffer, BoxedBuffer),
    /// Tokens already in each sequence's cache.
    lens: Vec<u32>,
}

impl std::fmt::Debug for DecodeModel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeModel")
            .field("device", &self.device.id())
            .field("model", &self.shape.name)
            .field("batch", &self.batch)
            .field("max_len", &self.max_len)
            .finish()
    }
}

/// How a synthetic tensor is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Ones,
    Zeros,
    /// Uniform in `[-scale, scale)`.
    Uniform(f32),
}

/// Deterministic values for tensor `name` (splitmix64 seeded by the name,
/// so every tensor has the same values whatever the order of creation).
pub fn synthetic(name: &str, len: usize, init: Init) -> Vec<f32> {
    let scale = match init {
        Init::Ones => return vec![1.0; len],
        Init::Zeros => return vec![0.0; len],
        Init::Uniform(s) => s,
    };
    // FNV-1a of the name.
    let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut rng = hetero_core::rng::SplitMix64::new(seed);
    (0..len).map(|_| rng.signed_unit_f32() * scale).collect()
}

/// Every tensor of `shape`: name, dimensions and synthetic initialisation.
/// This is also the naming a safetensors file must follow.
pub fn tensor_specs(shape: &ModelShape) -> Vec<(String, Vec<usize>, Init)> {
    let (h, f) = (shape.hidden, shape.ffn);
    let init = Init::Uniform(1.0 / (h as f32).sqrt());
    let mut specs = Vec::new();
    for i in 0..shape.layers {
        let p = format!("layers.{i}");
        specs.extend([
            (format!("{p}.ln1.weight"), vec![h], Init::Ones),
            (format!("{p}.ln1.bias"), vec![h], Init::Zeros),
            (format!("{p}.attn.qkv.weight"), vec![h, 3 * h], init),
            (
                format!("{p}.attn.qkv.bias"),
                vec![3 * h],
                Init::Uniform(0.02),
            ),
            (format!("{p}.attn.out.weight"), vec![h, h], init),
            (format!("{p}.attn.out.bias"), vec![h], Init::Uniform(0.02)),
            (format!("{p}.ln2.weight"), vec![h], Init::Ones),
            (format!("{p}.ln2.bias"), vec![h], Init::Zeros),
            (format!("{p}.mlp.up.weight"), vec![h, f], init),
            (format!("{p}.mlp.up.bias"), vec![f], Init::Uniform(0.02)),
            (
                format!("{p}.mlp.down.weight"),
                vec![f, h],
                Init::Uniform(1.0 / (f as f32).sqrt()),
            ),
            (format!("{p}.mlp.down.bias"), vec![h], Init::Uniform(0.02)),
        ]);
    }
    specs.push((
        "embed.weight".into(),
        vec![shape.vocab, h],
        Init::Uniform(1.0),
    ));
    if matches!(shape.positions, PositionScheme::Learned { .. }) {
        specs.push((
            "positions.weight".into(),
            vec![shape.max_positions, h],
            Init::Uniform(0.1),
        ));
    }
    specs.push(("ln_f.weight".into(), vec![h], Init::Ones));
    specs.push(("ln_f.bias".into(), vec![h], Init::Zeros));
    specs
}

/// The synthetic weights of `shape` as `(name, dims, values)`, e.g. to
/// write a safetensors file.
pub fn synthetic_tensors(shape: &ModelShape) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    tensor_specs(shape)
        .into_iter()
        .map(|(name, dims, init)| {
            let values = synthetic(&name, dims.iter().product(), init);
            (name, dims, values)
        })
        .collect()
}

/// Values of `view` as f32 (f32, f16 and bf16 files are accepted).
fn to_f32(name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>> {
    use safetensors::Dtype;
    let bytes = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| hetero_core::half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| hetero_core::half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::invalid(
                format!("tensor {name}"),
                format!("dtype {other:?}; expected F32, F16 or BF16"),
            ));
        }
    })
}

impl<'d> DecodeModel<'d> {
    /// Whether the decode step computes `shape`'s architecture: `Ok` for
    /// learned positions, [`Error::Unsupported`] naming the model and what
    /// is missing otherwise (ALiBi).
    pub fn implements(shape: &ModelShape) -> Result<()> {
        match shape.positions {
            PositionScheme::Learned { .. } => Ok(()),
            PositionScheme::Alibi => Err(Error::unsupported_in(
                "hetero-scheduler decode",
                format!(
                    "model {}: {} are not implemented, so the decode step would compute \
                     another model; DecodeModel::synthetic_stand_in times its shape only",
                    shape.name,
                    shape.positions.name()
                ),
            )),
        }
    }

    /// Put `shape` on `device` with synthetic weights and room for
    /// `batch` x `max_len` tokens (computes in f32). A shape whose
    /// architecture the step does not implement ([`Self::implements`]:
    /// ALiBi, like `bloom-3b`) is [`Error::Unsupported`].
    pub fn new(
        device: &'d dyn DynDevice,
        shape: &ModelShape,
        batch: usize,
        max_len: usize,
    ) -> Result<Self> {
        Self::implements(shape)?;
        Self::synthetic_stand_in(device, shape, batch, max_len)
    }

    /// Like [`Self::new`], but also for a shape whose architecture the step
    /// does not implement, for timing and memory only: the weights, KV
    /// cache and GEMMs have `shape`'s sizes, but an ALiBi model (`bloom-3b`)
    /// runs with no position term at all, so its logits and tokens are not
    /// that model's. Profiling and synthetic-weight serving use this; for
    /// learned positions it is exactly [`Self::new`].
    pub fn synthetic_stand_in(
        device: &'d dyn DynDevice,
        shape: &ModelShape,
        batch: usize,
        max_len: usize,
    ) -> Result<Self> {
        Self::build(device, shape, batch, max_len, |name, dims, init| {
            Ok(synthetic(name, dims.iter().product(), init))
        })
    }

    /// Put `shape` on `device` with the weights of a safetensors file (names
    /// as in [`tensor_specs`]; f32, f16 or bf16). A missing tensor or a
    /// wrong shape is an error naming the tensor; a shape the step does not
    /// implement ([`Self::implements`]) is [`Error::Unsupported`], as real
    /// weights would be decoded wrongly.
    pub fn from_safetensors(
        device: &'d dyn DynDevice,
        shape: &ModelShape,
        bytes: &[u8],
        batch: usize,
        max_len: usize,
    ) -> Result<Self> {
        Self::implements(shape)?;
        let file = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| Error::invalid("safetensors file", e.to_string()))?;
        Self::build(device, shape, batch, max_len, |name, dims, _| {
            let view = file.tensor(name).map_err(|_| {
                Error::invalid(
                    format!("tensor {name}"),
                    format!("missing from the file; a {} model needs it", shape.name),
                )
            })?;
            if view.shape() != dims {
                return Err(Error::invalid(
                    format!("tensor {name}"),
                    format!("has shape {:?}, the model needs {dims:?}", view.shape()),
                ));
            }
            to_f32(name, &view)
        })
    }

    fn build(
        device: &'d dyn DynDevice,
        shape: &ModelShape,
        batch: usize,
        max_len: usize,
        mut tensor: impl FnMut(&str, &[usize], Init) -> Result<Vec<f32>>,
    ) -> Result<Self> {
        shape.validate()?;
        if batch == 0 || max_len == 0 {
            return Err(Error::invalid(
                "batch",
                "batch and max_len must be at least 1",
            ));
        }
        // Every position a sequence of max_len can reach must be a row of
        // the table past the offset (checked again per step).
        let position_offset = match shape.positions {
            PositionScheme::Learned { offset } => {
                let limit = shape.max_positions.saturating_sub(offset);
                if max_len > limit {
                    return Err(Error::invalid(
                        "max_len",
                        format!(
                            "{max_len} exceeds the model's {limit} positions \
                             ({} table rows from offset {offset})",
                            shape.max_positions
                        ),
                    ));
                }
                offset
            }
            PositionScheme::Alibi => 0,
        };
        let h = shape.hidden;
        let mut loaded = std::collections::HashMap::new();
        for (name, dims, init) in tensor_specs(shape) {
            let values = tensor(&name, &dims, init)?;
            loaded.insert(name, device.alloc_from(HostSlice::new(&values))?);
        }
        let mut take = |name: &str| -> Result<BoxedBuffer> {
            loaded
                .remove(name)
                .ok_or_else(|| Error::invalid(format!("tensor {name}"), "missing"))
        };
        let mut layers = Vec::with_capacity(shape.layers);
        for i in 0..shape.layers {
            let p = format!("layers.{i}");
            layers.push(Layer {
                ln1: (
                    take(&format!("{p}.ln1.weight"))?,
                    take(&format!("{p}.ln1.bias"))?,
                ),
                w_qkv: take(&format!("{p}.attn.qkv.weight"))?,
                b_qkv: take(&format!("{p}.attn.qkv.bias"))?,
                w_o: take(&format!("{p}.attn.out.weight"))?,
                b_o: take(&format!("{p}.attn.out.bias"))?,
                ln2: (
                    take(&format!("{p}.ln2.weight"))?,
                    take(&format!("{p}.ln2.bias"))?,
                ),
                w_up: take(&format!("{p}.mlp.up.weight"))?,
                b_up: take(&format!("{p}.mlp.up.bias"))?,
                w_down: take(&format!("{p}.mlp.down.weight"))?,
                b_down: take(&format!("{p}.mlp.down.bias"))?,
                k_cache: device.alloc(DType::F32, batch * max_len * h)?,
                v_cache: device.alloc(DType::F32, batch * max_len * h)?,
            });
        }
        let embed = take("embed.weight")?;
        let positions = if matches!(shape.positions, PositionScheme::Learned { .. }) {
            Some(take("positions.weight")?)
        } else {
            None
        };
        let ln_f = (take("ln_f.weight")?, take("ln_f.bias")?);
        Ok(DecodeModel {
            device,
            shape: shape.clone(),
            batch,
            max_len,
            layers,
            embed,
            positions,
            position_offset,
            ln_f,
            lens: vec![0; batch],
        })
    }

    /// Tokens in each sequence's cache.
    pub fn lens(&self) -> &[u32] {
        &self.lens
    }

    /// Treat the first `len` cache positions of every sequence as filled
    /// (with whatever the cache holds): profiling uses this to time a step
    /// at a given context length without decoding up to it.
    pub fn set_context(&mut self, len: usize) -> Result<()> {
        if len >= self.max_len {
            return Err(Error::invalid(
                "context",
                format!(
                    "{len} leaves no room in a cache of {} positions",
                    self.max_len
                ),
            ));
        }
        self.lens.iter_mut().for_each(|l| *l = len as u32);
        Ok(())
    }

    /// Forget sequence `slot` (continuous batching: a new request takes it).
    pub fn reset_slot(&mut self, slot: usize) -> Result<()> {
        let batch = self.batch;
        let len = self.lens.get_mut(slot).ok_or_else(|| {
            Error::invalid(
                "slot",
                format!("{slot} is not below the batch size {batch}"),
            )
        })?;
        *len = 0;
        Ok(())
    }

    /// Forget every sequence (the cache is reused).
    pub fn reset(&mut self) {
        self.lens.iter_mut().for_each(|l| *l = 0);
    }

    fn gemm(
        &self,
        x: &BoxedBuffer,
        w: &BoxedBuffer,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<BoxedBuffer> {
        let mut y = self.device.alloc(DType::F32, m * n)?;
        self.device
            .gemm(&GemmSpec::new(m, n, k), x.as_ref(), w.as_ref(), y.as_mut())?;
        Ok(y)
    }

    /// The input of the next step's first layer (`batch x hidden`): the
    /// embedding of `tokens[b]` plus, for learned positions, row
    /// `lens[b] + offset` of the position table. Nothing is appended.
    pub fn embed_tokens(&self, tokens: &[u32]) -> Result<BoxedBuffer> {
        let d = self.device;
        let (b, h) = (self.batch, self.shape.hidden);
        if tokens.len() != b {
            return Err(Error::invalid(
                "tokens",
                format!("{} tokens for a batch of {b}", tokens.len()),
            ));
        }
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= self.shape.vocab) {
            return Err(Error::invalid(
                "tokens",
                format!(
                    "token {t} is not below the vocabulary size {}",
                    self.shape.vocab
                ),
            ));
        }
        if let Some(s) = self.lens.iter().position(|&l| l as usize >= self.max_len) {
            return Err(Error::invalid(
                "tokens",
                format!("sequence {s} is full ({} tokens)", self.max_len),
            ));
        }
        // Embedding (+ learned position), gathered row by row on the device.
        let mut x = d.alloc(DType::F32, b * h)?;
        for (s, &t) in tokens.iter().enumerate() {
            let t = t as usize;
            d.copy(self.embed.as_ref(), t * h..(t + 1) * h, x.as_mut(), s * h)?;
        }
        if let Some(pos) = &self.positions {
            let mut p = d.alloc(DType::F32, b * h)?;
            for (s, &l) in self.lens.iter().enumerate() {
                // OPT's table starts `offset` rows before position 0.
                let row = l as usize + self.position_offset;
                if row >= self.shape.max_positions {
                    return Err(Error::invalid(
                        "tokens",
                        format!(
                            "position {l} of sequence {s} reads row {row} of a table of {} rows",
                            self.shape.max_positions
                        ),
                    ));
                }
                d.copy(pos.as_ref(), row * h..(row + 1) * h, p.as_mut(), s * h)?;
            }
            d.reduce(ReduceOp::Sum, x.as_mut(), p.as_ref())?;
        }
        Ok(x)
    }

    /// Run one decode step: append `tokens[b]` to sequence `b` and return
    /// the logits (`batch x vocab`) and each sequence's next token (argmax).
    pub fn step_with_logits(&mut self, tokens: &[u32]) -> Result<(BoxedBuffer, Vec<u32>)> {
        let d = self.device;
        let (b, h, heads) = (self.batch, self.shape.hidden, self.shape.heads);
        let mut x = self.embed_tokens(tokens)?;
        let new_lens: Vec<u32> = self.lens.iter().map(|l| l + 1).collect();
        let spec = AttentionSpec {
            batch: b,
            heads,
            head_dim: h / heads,
            max_len: self.max_len,
        };
        let mut a = d.alloc(DType::F32, b * h)?;
        for layer in 0..self.layers.len() {
            let l = &self.layers[layer];
            d.layer_norm(
                x.as_ref(),
                l.ln1.0.as_ref(),
                l.ln1.1.as_ref(),
                a.as_mut(),
                1e-5,
            )?;
            let mut qkv = self.gemm(&a, &l.w_qkv, b, h, 3 * h)?;
            d.bias_activation(qkv.as_mut(), l.b_qkv.as_ref(), Activation::Identity)?;
            let mut q = d.alloc(DType::F32, b * h)?;
            let l = &mut self.layers[layer];
            for s in 0..b {
                let row = s * 3 * h;
                let at = (s * self.max_len + self.lens[s] as usize) * h;
                d.copy(qkv.as_ref(), row..row + h, q.as_mut(), s * h)?;
                d.copy(qkv.as_ref(), row + h..row + 2 * h, l.k_cache.as_mut(), at)?;
                d.copy(
                    qkv.as_ref(),
                    row + 2 * h..row + 3 * h,
                    l.v_cache.as_mut(),
                    at,
                )?;
            }
            let l = &self.layers[layer];
            let mut attn = d.alloc(DType::F32, b * h)?;
            d.attention_decode(
                &spec,
                q.as_ref(),
                l.k_cache.as_ref(),
                l.v_cache.as_ref(),
                &new_lens,
                attn.as_mut(),
            )?;
            let mut o = self.gemm(&attn, &l.w_o, b, h, h)?;
            d.bias_activation(o.as_mut(), l.b_o.as_ref(), Activation::Identity)?;
            d.reduce(ReduceOp::Sum, x.as_mut(), o.as_ref())?;
            d.layer_norm(
                x.as_ref(),
                l.ln2.0.as_ref(),
                l.ln2.1.as_ref(),
                a.as_mut(),
                1e-5,
            )?;
            let mut up = self.gemm(&a, &l.w_up, b, h, self.shape.ffn)?;
            d.bias_activation(up.as_mut(), l.b_up.as_ref(), self.shape.activation)?;
            let mut down = self.gemm(&up, &l.w_down, b, self.shape.ffn, h)?;
            d.bias_activation(down.as_mut(), l.b_down.as_ref(), Activation::Identity)?;
            d.reduce(ReduceOp::Sum, x.as_mut(), down.as_ref())?;
        }
        d.layer_norm(
            x.as_ref(),
            self.ln_f.0.as_ref(),
            self.ln_f.1.as_ref(),
            a.as_mut(),
            1e-5,
        )?;
        let vocab = self.shape.vocab;
        let mut logits = d.alloc(DType::F32, b * vocab)?;
        let spec = GemmSpec {
            trans_b: true,
            ..GemmSpec::new(b, vocab, h)
        };
        d.gemm(&spec, a.as_ref(), self.embed.as_ref(), logits.as_mut())?;
        let next = d.argmax_rows(logits.as_ref(), b)?;
        self.lens = new_lens;
        Ok((logits, next))
    }

    /// One decode step; returns each sequence's next token.
    pub fn step(&mut self, tokens: &[u32]) -> Result<Vec<u32>> {
        let (_, next) = self.step_with_logits(tokens)?;
        self.device.synchronize()?;
        Ok(next)
    }
}
