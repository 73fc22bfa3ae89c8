//! The workload: a decoder-only transformer described by its shape, and
//! what that shape costs in memory per batch.

use serde::{Deserialize, Serialize};

use hetero_core::{Activation, DType, Error, Result};

/// How a model tells the attention where each token is.
///
/// [`crate::DecodeModel`] implements [`PositionScheme::Learned`] only; a
/// shape with any other scheme is a memory and GEMM shape stand-in, not a
/// model it can decode (see [`crate::DecodeModel::synthetic_stand_in`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PositionScheme {
    /// A learned table of [`ModelShape::max_positions`] rows added to the
    /// token embedding; position `p` reads row `p + offset`. OPT's table
    /// starts with `offset = 2` rows the positions never use (a relic of
    /// fairseq's padding index), so OPT-125M has 2050 rows for 2048
    /// positions.
    Learned { offset: usize },
    /// ALiBi (Press et al. 2022, used by BLOOM): no table, a per-head linear
    /// bias on the attention scores. Not implemented by the decode step.
    Alibi,
}

impl PositionScheme {
    /// The scheme's name in messages.
    pub fn name(&self) -> &'static str {
        match self {
            PositionScheme::Learned { .. } => "learned position embeddings",
            PositionScheme::Alibi => "ALiBi attention biases",
        }
    }
}

/// Shape of a decoder-only transformer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelShape {
    pub name: String,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    /// Rows of the learned position table (0 for ALiBi, like BLOOM). With
    /// [`PositionScheme::Learned`]`{ offset }` a sequence can hold
    /// `max_positions - offset` tokens.
    pub max_positions: usize,
    /// How positions enter the model.
    pub positions: PositionScheme,
    pub dtype: DType,
    /// The MLP's activation (OPT: ReLU; BLOOM: GELU).
    pub activation: Activation,
}

impl ModelShape {
    /// A two-layer model for tests (learned positions without an offset,
    /// GELU). Not any published architecture: only the project's own
    /// synthetic or safetensors weights.
    pub fn tiny() -> Self {
        ModelShape {
            name: "tiny".into(),
            layers: 2,
            hidden: 64,
            heads: 4,
            ffn: 256,
            vocab: 512,
            max_positions: 2048,
            positions: PositionScheme::Learned { offset: 0 },
            dtype: DType::F32,
            activation: Activation::Gelu,
        }
    }

    /// OPT-125m (Zhang et al. 2022), as in the HASC paper: pre-LN blocks,
    /// ReLU MLP, learned positions read at `p + 2` (2050 rows, 2048
    /// positions), output tied to the token embedding. The decode step
    /// computes this architecture; the weights are still synthetic or the
    /// project's own tensor names (no published checkpoint's names load).
    pub fn opt_125m() -> Self {
        ModelShape {
            name: "opt-125m".into(),
            layers: 12,
            hidden: 768,
            heads: 12,
            ffn: 3072,
            vocab: 50272,
            max_positions: 2050,
            positions: PositionScheme::Learned { offset: 2 },
            dtype: DType::F16,
            activation: Activation::Relu,
        }
    }

    /// BLOOM-3b (BigScience), as in the HASC paper: its parameter count,
    /// memory and GEMM shapes, for profiling and batch planning. BLOOM
    /// uses ALiBi, which the decode step does not implement (nor BLOOM's
    /// embedding layer norm), so this is a shape stand-in only:
    /// [`crate::DecodeModel::new`] and [`crate::DecodeModel::from_safetensors`]
    /// refuse it, and [`crate::DecodeModel::synthetic_stand_in`] times it
    /// with numerics that are not BLOOM's.
    pub fn bloom_3b() -> Self {
        ModelShape {
            name: "bloom-3b".into(),
            layers: 30,
            hidden: 2560,
            heads: 32,
            ffn: 10240,
            vocab: 250880,
            max_positions: 0,
            positions: PositionScheme::Alibi,
            dtype: DType::F16,
            activation: Activation::Gelu,
        }
    }

    /// A preset by name: `tiny`, `opt-125m`, `bloom-3b`.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "opt-125m" => Ok(Self::opt_125m()),
            "bloom-3b" => Ok(Self::bloom_3b()),
            other => Err(Error::invalid(
                "model",
                format!("unknown preset {other:?}; choose tiny, opt-125m or bloom-3b"),
            )),
        }
    }

    /// Check the shape is usable.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("layers", self.layers),
            ("hidden", self.hidden),
            ("heads", self.heads),
            ("ffn", self.ffn),
            ("vocab", self.vocab),
        ] {
            if v == 0 {
                return Err(Error::invalid(field, "must be at least 1"));
            }
        }
        if !self.hidden.is_multiple_of(self.heads) {
            return Err(Error::invalid(
                "heads",
                format!(
                    "{} heads do not divide hidden size {}",
                    self.heads, self.hidden
                ),
            ));
        }
        match self.positions {
            PositionScheme::Learned { offset } if self.max_positions <= offset => {
                return Err(Error::invalid(
                    "max_positions",
                    format!(
                        "a table of {} rows read from offset {offset} leaves no position",
                        self.max_positions
                    ),
                ));
            }
            PositionScheme::Alibi if self.max_positions != 0 => {
                return Err(Error::invalid(
                    "max_positions",
                    "ALiBi has no position table; max_positions must be 0",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// The longest sequence the positions can index: the table's rows past
    /// the offset for learned positions, `None` (no table limit) for ALiBi.
    pub fn position_limit(&self) -> Option<usize> {
        match self.positions {
            PositionScheme::Learned { offset } => Some(self.max_positions.saturating_sub(offset)),
            PositionScheme::Alibi => None,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Parameters of one layer: QKV and output projections with biases, the
    /// two MLP matrices with biases, two layer norms (scale and shift).
    pub fn layer_params(&self) -> u64 {
        let (h, f) = (self.hidden as u64, self.ffn as u64);
        4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h
    }

    /// All parameters: layers, token (and position) embeddings, final norm.
    /// The output projection is tied to the token embedding.
    pub fn params(&self) -> u64 {
        let h = self.hidden as u64;
        self.layers as u64 * self.layer_params()
            + (self.vocab as u64 + self.max_positions as u64) * h
            + 2 * h
    }

    /// The shape as [`crate::DecodeModel`] really runs it: weights, KV cache
    /// and activations stored in f32 whatever the preset's dtype (16-bit
    /// storage is not implemented). Profile memory with this shape, or a
    /// batch that fits 16-bit storage would run out of memory in f32.
    pub fn executed(&self) -> ModelShape {
        ModelShape {
            dtype: DType::F32,
            ..self.clone()
        }
    }

    pub fn weight_bytes(&self) -> u64 {
        self.params() * self.dtype.size_bytes() as u64
    }

    /// KV-cache bytes of one sequence at length `len` (keys and values of every layer).
    pub fn kv_bytes_per_sequence(&self, len: usize) -> u64 {
        2 * self.layers as u64 * self.hidden as u64 * len as u64 * self.dtype.size_bytes() as u64
    }

    /// Working memory of one decode step for `batch` sequences of length up
    /// to `len`: the widest intermediate per sequence (the MLP's `ffn`
    /// activations, the attention scores over `len` positions of every
    /// head, the logits), counted twice for input and output of a kernel.
    pub fn activation_bytes(&self, batch: usize, len: usize) -> u64 {
        let widest = self.ffn.max(self.heads * len).max(self.vocab) + 3 * self.hidden;
        2 * batch as u64 * widest as u64 * self.dtype.size_bytes() as u64
    }

    /// Device memory one decode step needs: weights, KV cache, activations.
    pub fn step_bytes(&self, batch: usize, len: usize) -> u64 {
        self.weight_bytes()
            + batch as u64 * self.kv_bytes_per_sequence(len)
            + self.activation_bytes(batch, len)
    }

    /// Floating-point operations of one decode step for one sequence whose
    /// context is `len` tokens: 2 per weight multiply-add, plus attention.
    pub fn flops_per_token(&self, len: usize) -> f64 {
        let (h, f, l) = (self.hidden as f64, self.ffn as f64, self.layers as f64);
        let per_layer = 2.0 * (4.0 * h * h + 2.0 * h * f) + 4.0 * h * len as f64;
        l * per_layer + 2.0 * h * self.vocab as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_published_models() {
        // OPT-125m is published as 125M parameters, BLOOM-3b as 3.0B.
        let opt = ModelShape::opt_125m().params() as f64 / 1e6;
        assert!((opt - 125.2).abs() < 1.0, "{opt}M");
        let bloom = ModelShape::bloom_3b().params() as f64 / 1e9;
        assert!((bloom - 3.0).abs() < 0.05, "{bloom}B");
    }

    #[test]
    fn memory_grows_with_batch_and_length() {
        let m = ModelShape::opt_125m();
        assert_eq!(m.kv_bytes_per_sequence(2048), 2 * 12 * 768 * 2048 * 2);
        assert!(m.step_bytes(2, 2048) > m.step_bytes(1, 2048));
        assert!(m.step_bytes(1, 2048) > m.step_bytes(1, 512));
        assert!(ModelShape::preset("gpt-5").is_err());
        let mut bad = ModelShape::tiny();
        bad.heads = 3;
        assert!(bad.validate().unwrap_err().to_string().contains("heads"));
    }

    #[test]
    fn presets_name_their_position_scheme() {
        let opt = ModelShape::opt_125m();
        assert_eq!(opt.positions, PositionScheme::Learned { offset: 2 });
        assert_eq!(opt.position_limit(), Some(2048));
        assert_eq!(
            ModelShape::tiny().positions,
            PositionScheme::Learned { offset: 0 }
        );
        assert_eq!(ModelShape::bloom_3b().positions, PositionScheme::Alibi);
        assert_eq!(ModelShape::bloom_3b().position_limit(), None);
        for name in ["tiny", "opt-125m", "bloom-3b"] {
            ModelShape::preset(name).unwrap().validate().unwrap();
        }
        // A table no longer than its offset holds no position.
        let mut bad = ModelShape::opt_125m();
        bad.max_positions = 2;
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("max_positions"), "{err}");
        let mut bad = ModelShape::bloom_3b();
        bad.max_positions = 16;
        assert!(bad.validate().is_err());
    }
}
