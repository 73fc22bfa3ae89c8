//! `LlamaConfig`: the shape and numerics of a Llama-family model, read from
//! GGUF metadata (`{arch}.*` keys) or a Hugging Face `config.json`, checked
//! for consistency before any weight is read.

use std::path::Path;

use hetero_core::{DType, RopeLayout};

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// Where each config value came from, for error messages: the GGUF
/// metadata key or the `config.json` key.
struct Fields {
    hidden: String,
    intermediate: String,
    layers: String,
    heads: String,
    kv_heads: String,
    head_dim: String,
    vocab: String,
    context: String,
    rms_eps: String,
    rope_theta: String,
    rope_scaling: String,
    rope_dims: String,
}

/// Architectures this crate computes. Each differs from Llama only where
/// its variant says; anything else in a file is
/// [`ModelError::UnsupportedArchitecture`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3, TinyLlama, SmolLM/SmolLM2, Mistral without sliding window.
    Llama,
    /// Qwen2: Llama with biases on the Q, K and V projections.
    Qwen2,
}

impl Architecture {
    /// The names this crate accepts, for error messages.
    pub const SUPPORTED: &'static str =
        "llama (LlamaForCausalLM, MistralForCausalLM), qwen2 (Qwen2ForCausalLM)";

    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }

    /// Whether Q, K and V carry biases.
    pub fn qkv_bias(self) -> bool {
        self == Architecture::Qwen2
    }
}

/// How the rotary frequencies are scaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Every inverse frequency divided by `factor` (position interpolation).
    Linear { factor: f32 },
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept,
    /// a smooth blend between (transformers' `_compute_llama3_parameters`).
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_positions: f32,
    },
    /// Per-frequency divisors stored in the file (GGUF's `rope_freqs.weight`,
    /// how llama.cpp's converter stores Llama 3's scaling).
    Divisors(Vec<f32>),
}

/// Everything the forward pass needs to know about a model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub architecture: Architecture,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    /// Adjacent pairs for GGUF `llama` (its converter permuted Q and K),
    /// halves for Hugging Face checkpoints and GGUF `qwen2`.
    pub rope_layout: RopeLayout,
    /// The output matrix is the embedding table.
    pub tied_embeddings: bool,
    /// Positions the model was trained for (the KV cache's default bound).
    pub max_positions: usize,
}

/// Upper bounds on a config's sizes, far above any published model (the
/// largest have ~128 layers, hidden widths of 16-25k, vocabularies of
/// 256k), so that a header claiming more is refused before anything is
/// sized from it. Within them every per-layer list, weight shape and byte
/// count the config implies fits in u64 without overflow, and nothing is
/// allocated from the claim alone: each weight's shape is also checked
/// against the file holding it before its data is read.
impl LlamaConfig {
    /// Transformer blocks.
    pub const MAX_LAYERS: usize = 4096;
    /// Hidden (embedding) width.
    pub const MAX_HIDDEN: usize = 1 << 20;
    /// Feed-forward width.
    pub const MAX_INTERMEDIATE: usize = 1 << 22;
    /// Attention (query) heads; kv heads divide them.
    pub const MAX_HEADS: usize = 1 << 16;
    /// Width of one head.
    pub const MAX_HEAD_DIM: usize = 1 << 14;
    /// Query width, heads x head dim.
    pub const MAX_ATTENTION_WIDTH: usize = 1 << 20;
    /// Vocabulary entries.
    pub const MAX_VOCAB: usize = 1 << 24;
    /// Trained context length.
    pub const MAX_CONTEXT: usize = 1 << 26;
}

impl LlamaConfig {
    /// The rotary inverse frequencies, scaling applied, in f32 as
    /// transformers computes them (`theta^(-2i/d)`).
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let mut f: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / (self.rope_theta as f64).powf(2.0 * i as f64 / d as f64) as f32)
            .collect();
        match &self.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => f.iter_mut().for_each(|v| *v /= factor),
            Some(RopeScaling::Divisors(div)) => {
                f.iter_mut().zip(div).for_each(|(v, d)| *v /= d);
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_positions,
            }) => {
                let low_wavelen = original_max_positions / low_freq_factor;
                let high_wavelen = original_max_positions / high_freq_factor;
                for v in &mut f {
                    let wavelen = 2.0 * std::f32::consts::PI / *v;
                    if wavelen > low_wavelen {
                        *v /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (original_max_positions / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        *v = (1.0 - smooth) * *v / factor + smooth * *v;
                    }
                }
            }
        }
        f
    }

    /// Parameters in the weights (for memory estimates and reports).
    /// Saturates rather than overflows for a config built by hand outside
    /// the `MAX_*` bounds (a config read from a file is within them, where the
    /// count fits in u64).
    pub fn parameters(&self) -> u64 {
        let n = |x: usize| x as u64;
        let (h, i, v) = (n(self.hidden), n(self.intermediate), n(self.vocab));
        let q = n(self.heads).saturating_mul(n(self.head_dim));
        let kv = n(self.kv_heads).saturating_mul(n(self.head_dim));
        let bias = if self.architecture.qkv_bias() {
            q.saturating_add(kv.saturating_mul(2))
        } else {
            0
        };
        let sum = |xs: &[u64]| xs.iter().fold(0u64, |a, &x| a.saturating_add(x));
        let layer = sum(&[
            h.saturating_mul(q).saturating_mul(2),
            h.saturating_mul(kv).saturating_mul(2),
            h.saturating_mul(i).saturating_mul(3),
            h.saturating_mul(2),
            bias,
        ]);
        let embedding = v.saturating_mul(h);
        let output = if self.tied_embeddings { 0 } else { embedding };
        sum(&[embedding, n(self.layers).saturating_mul(layer), h, output])
    }

    /// Bytes of f32 KV cache per position of one sequence.
    pub fn kv_bytes_per_position(&self) -> u64 {
        self.kv_bytes_per_position_as(DType::F32)
    }

    /// Bytes of KV cache per position of one sequence held in `dtype`
    /// (see `LlamaModel::kv_cache_dtype`).
    pub fn kv_bytes_per_position_as(&self, dtype: DType) -> u64 {
        [
            2,
            self.layers as u64,
            self.kv_heads as u64,
            self.head_dim as u64,
            dtype.size_bytes() as u64,
        ]
        .iter()
        .fold(1u64, |a, &x| a.saturating_mul(x))
    }

    /// Read from a GGUF file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let md = file.metadata();
        let arch_name = md.get_str("general.architecture")?;
        let (architecture, rope_layout) = match arch_name {
            "llama" => (Architecture::Llama, RopeLayout::Adjacent),
            "qwen2" => (Architecture::Qwen2, RopeLayout::Halves),
            other => {
                return Err(ModelError::UnsupportedArchitecture {
                    file: file.path().to_path_buf(),
                    field: "general.architecture".into(),
                    name: other.into(),
                    supported: Architecture::SUPPORTED,
                });
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        // Saturates on a 32-bit target: the bounds check below refuses it.
        let usize_of = |k: &str| -> Result<usize> {
            Ok(usize::try_from(md.get_u64(&key(k))?).unwrap_or(usize::MAX))
        };
        let hidden = usize_of("embedding_length")?;
        let heads = usize_of("attention.head_count")?;
        let kv_heads = match md.get(&key("attention.head_count_kv")) {
            Some(_) => usize_of("attention.head_count_kv")?,
            None => heads,
        };
        let derived_head_dim = md.get(&key("attention.key_length")).is_none();
        let head_dim = if derived_head_dim {
            hidden / heads.max(1)
        } else {
            usize_of("attention.key_length")?
        };
        let embd = file.tensor("token_embd.weight")?;
        let (vocab, vocab_field) = match md.get(&key("vocab_size")) {
            Some(_) => (usize_of("vocab_size")?, key("vocab_size")),
            None => (
                embd.dims
                    .get(1)
                    .map_or(0, |&d| usize::try_from(d).unwrap_or(usize::MAX)),
                "tensor token_embd.weight".into(),
            ),
        };
        let rope_theta = match md.get(&key("rope.freq_base")) {
            Some(_) => md.get_f32(&key("rope.freq_base"))?,
            None => 10_000.0,
        };
        let rope_scaling = if file.tensor("rope_freqs.weight").is_ok() {
            Some(RopeScaling::Divisors(file.dequantize("rope_freqs.weight")?))
        } else {
            match md.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
                None | Some("none") => None,
                Some("linear") => Some(RopeScaling::Linear {
                    factor: md.get_f32(&key("rope.scaling.factor"))?,
                }),
                Some(other) => {
                    return Err(ModelError::Invalid {
                        file: file.path().to_path_buf(),
                        field: key("rope.scaling.type"),
                        reason: format!(
                            "rope scaling {other:?} is not supported (supported: none, linear, Llama 3's rope_freqs)"
                        ),
                    });
                }
            }
        };
        let rope_dims = match md.get(&key("rope.dimension_count")) {
            Some(_) => usize_of("rope.dimension_count")?,
            None => head_dim,
        };
        let fields = Fields {
            hidden: key("embedding_length"),
            intermediate: key("feed_forward_length"),
            layers: key("block_count"),
            heads: key("attention.head_count"),
            kv_heads: key("attention.head_count_kv"),
            head_dim: if derived_head_dim {
                key("embedding_length")
            } else {
                key("attention.key_length")
            },
            vocab: vocab_field,
            context: key("context_length"),
            rms_eps: key("attention.layer_norm_rms_epsilon"),
            rope_theta: key("rope.freq_base"),
            rope_scaling: if matches!(rope_scaling, Some(RopeScaling::Divisors(_))) {
                "tensor rope_freqs.weight".into()
            } else {
                key("rope.scaling.factor")
            },
            rope_dims: key("rope.dimension_count"),
        };
        let config = LlamaConfig {
            architecture,
            hidden,
            intermediate: usize_of("feed_forward_length")?,
            layers: usize_of("block_count")?,
            heads,
            kv_heads,
            head_dim,
            vocab,
            rms_eps: md.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta,
            rope_scaling,
            rope_layout,
            tied_embeddings: file.tensor("output.weight").is_err(),
            max_positions: usize_of("context_length")?,
        };
        config.check(file.path(), &fields, rope_dims, derived_head_dim)?;
        Ok(config)
    }

    /// Read from a Hugging Face `config.json`.
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            file: path.to_path_buf(),
            context: "read",
            source,
        })?;
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ModelError::Invalid {
                file: path.to_path_buf(),
                field: "config.json".into(),
                reason: e.to_string(),
            })?;
        let invalid = |field: &str, reason: String| ModelError::Invalid {
            file: path.to_path_buf(),
            field: field.into(),
            reason,
        };
        if !json.is_object() {
            return Err(invalid("config.json", format!("{json} is not an object")));
        }
        let missing = |key: &str| ModelError::MissingKey {
            file: path.to_path_buf(),
            key: key.into(),
        };
        let uint = |key: &str| -> Result<usize> {
            let v = json.get(key).ok_or_else(|| missing(key))?;
            v.as_u64()
                .filter(|&n| n > 0 && n < 1 << 32)
                .map(|n| n as usize)
                .ok_or_else(|| invalid(key, format!("{v} is not a positive integer below 2^32")))
        };
        let float = |key: &str, default: f64| -> Result<f32> {
            match json.get(key) {
                None | Some(serde_json::Value::Null) => Ok(default as f32),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .map(|x| x as f32)
                    .ok_or_else(|| invalid(key, format!("{v} is not a positive number"))),
            }
        };
        let model_type = match json.get("model_type") {
            None | Some(serde_json::Value::Null) => return Err(missing("model_type")),
            Some(v) => v
                .as_str()
                .ok_or_else(|| invalid("model_type", format!("{v} is not a string")))?,
        };
        let architecture = match model_type {
            "llama" | "mistral" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(ModelError::UnsupportedArchitecture {
                    file: path.to_path_buf(),
                    field: "model_type".into(),
                    name: other.into(),
                    supported: Architecture::SUPPORTED,
                });
            }
        };
        if let Some(w) = json.get("sliding_window").filter(|v| !v.is_null()) {
            let used = json
                .get("use_sliding_window")
                .and_then(|v| v.as_bool())
                .unwrap_or(model_type == "mistral");
            if used {
                return Err(invalid(
                    "sliding_window",
                    format!("sliding-window attention ({w}) is not supported"),
                ));
            }
        }
        if let Some(act) = json.get("hidden_act").filter(|v| !v.is_null()) {
            match act.as_str() {
                Some("silu") => {}
                Some(other) => {
                    return Err(invalid(
                        "hidden_act",
                        format!("{other:?} is not supported (silu is)"),
                    ));
                }
                None => return Err(invalid("hidden_act", format!("{act} is not a string"))),
            }
        }
        let hidden = uint("hidden_size")?;
        let heads = uint("num_attention_heads")?;
        let kv_heads = if json
            .get("num_key_value_heads")
            .is_some_and(|v| !v.is_null())
        {
            uint("num_key_value_heads")?
        } else {
            heads
        };
        let derived_head_dim = json.get("head_dim").is_none_or(|v| v.is_null());
        let head_dim = if derived_head_dim {
            hidden / heads
        } else {
            uint("head_dim")?
        };
        let rope_scaling = match json.get("rope_scaling") {
            None | Some(serde_json::Value::Null) => None,
            Some(s) if !s.is_object() => {
                return Err(invalid(
                    "rope_scaling",
                    format!("{s} is not an object (null or {{\"rope_type\": ..., ...}})"),
                ));
            }
            Some(s) => {
                let (kind_key, kind) = match s.get("rope_type").filter(|v| !v.is_null()) {
                    Some(v) => ("rope_scaling.rope_type", v),
                    None => (
                        "rope_scaling.type",
                        s.get("type").unwrap_or(&serde_json::Value::Null),
                    ),
                };
                let kind = match kind {
                    serde_json::Value::Null => "default",
                    v => v
                        .as_str()
                        .ok_or_else(|| invalid(kind_key, format!("{v} is not a string")))?,
                };
                let num = |k: &str| -> Result<f32> {
                    s.get(k)
                        .and_then(|v| v.as_f64())
                        .filter(|x| x.is_finite() && *x > 0.0)
                        .map(|x| x as f32)
                        .ok_or_else(|| {
                            invalid(
                                &format!("rope_scaling.{k}"),
                                "missing or not a positive number".into(),
                            )
                        })
                };
                match kind {
                    "default" => None,
                    "linear" => Some(RopeScaling::Linear {
                        factor: num("factor")?,
                    }),
                    "llama3" => Some(RopeScaling::Llama3 {
                        factor: num("factor")?,
                        low_freq_factor: num("low_freq_factor")?,
                        high_freq_factor: num("high_freq_factor")?,
                        original_max_positions: num("original_max_position_embeddings")?,
                    }),
                    other => {
                        return Err(invalid(
                            kind_key,
                            format!(
                                "{other:?} is not supported (supported: default, linear, llama3)"
                            ),
                        ));
                    }
                }
            }
        };
        let tied_embeddings = match json.get("tie_word_embeddings") {
            None | Some(serde_json::Value::Null) => false,
            Some(v) => v.as_bool().ok_or_else(|| {
                invalid("tie_word_embeddings", format!("{v} is not true or false"))
            })?,
        };
        let fields = Fields {
            hidden: "hidden_size".into(),
            intermediate: "intermediate_size".into(),
            layers: "num_hidden_layers".into(),
            heads: "num_attention_heads".into(),
            kv_heads: "num_key_value_heads".into(),
            head_dim: if derived_head_dim {
                "hidden_size".into()
            } else {
                "head_dim".into()
            },
            vocab: "vocab_size".into(),
            context: "max_position_embeddings".into(),
            rms_eps: "rms_norm_eps".into(),
            rope_theta: "rope_theta".into(),
            rope_scaling: "rope_scaling".into(),
            rope_dims: "head_dim".into(),
        };
        let config = LlamaConfig {
            architecture,
            hidden,
            intermediate: uint("intermediate_size")?,
            layers: uint("num_hidden_layers")?,
            heads,
            kv_heads,
            head_dim,
            vocab: uint("vocab_size")?,
            rms_eps: float("rms_norm_eps", 1e-6)?,
            rope_theta: float("rope_theta", 10_000.0)?,
            rope_scaling,
            rope_layout: RopeLayout::Halves,
            tied_embeddings,
            max_positions: if json.get("max_position_embeddings").is_some() {
                uint("max_position_embeddings")?
            } else {
                4096
            },
        };
        config.check(path, &fields, head_dim, derived_head_dim)?;
        Ok(config)
    }

    /// Shapes that cannot be computed, or sizes beyond the `MAX_*` bounds,
    /// are refused here, naming the key they came from. `derived_head_dim`:
    /// the head dim is hidden / heads (no key gave it), so heads must
    /// divide hidden.
    fn check(
        &self,
        file: &Path,
        fields: &Fields,
        rope_dims: usize,
        derived_head_dim: bool,
    ) -> Result<()> {
        let invalid = |field: &str, reason: String| ModelError::Invalid {
            file: file.to_path_buf(),
            field: field.into(),
            reason,
        };
        for (field, v, max) in [
            (&fields.hidden, self.hidden, Self::MAX_HIDDEN),
            (
                &fields.intermediate,
                self.intermediate,
                Self::MAX_INTERMEDIATE,
            ),
            (&fields.layers, self.layers, Self::MAX_LAYERS),
            (&fields.heads, self.heads, Self::MAX_HEADS),
            (&fields.kv_heads, self.kv_heads, Self::MAX_HEADS),
            (&fields.vocab, self.vocab, Self::MAX_VOCAB),
            (&fields.context, self.max_positions, Self::MAX_CONTEXT),
        ] {
            if v == 0 || v > max {
                return Err(invalid(
                    field,
                    format!("{v} is not in 1..={max} (the bound this loader sets)"),
                ));
            }
        }
        if derived_head_dim && !self.hidden.is_multiple_of(self.heads) {
            return Err(invalid(
                &fields.heads,
                format!(
                    "{} heads do not divide the hidden size {} (and no head dim is given)",
                    self.heads, self.hidden
                ),
            ));
        }
        if self.head_dim == 0 || self.head_dim > Self::MAX_HEAD_DIM {
            return Err(invalid(
                &fields.head_dim,
                format!(
                    "head dim {} is not in 1..={}",
                    self.head_dim,
                    Self::MAX_HEAD_DIM
                ),
            ));
        }
        // Both factors are bounded above, so neither product overflows.
        if self.heads * self.head_dim > Self::MAX_ATTENTION_WIDTH {
            return Err(invalid(
                &fields.heads,
                format!(
                    "{} heads of {} dims are wider than {}",
                    self.heads,
                    self.head_dim,
                    Self::MAX_ATTENTION_WIDTH
                ),
            ));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(invalid(
                &fields.kv_heads,
                format!(
                    "{} query heads do not split into groups over {} kv heads",
                    self.heads, self.kv_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(invalid(
                &fields.head_dim,
                format!("head dim {} is odd; rotary needs pairs", self.head_dim),
            ));
        }
        if rope_dims != self.head_dim {
            return Err(invalid(
                &fields.rope_dims,
                format!(
                    "rotary over {rope_dims} of {} head dims (partial rotary) is not supported",
                    self.head_dim
                ),
            ));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return Err(invalid(
                &fields.rms_eps,
                format!("{} is not positive", self.rms_eps),
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(invalid(
                &fields.rope_theta,
                format!("{} is not above 1", self.rope_theta),
            ));
        }
        let positive = |x: f32| x.is_finite() && x > 0.0;
        match &self.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) if !positive(*factor) => {
                return Err(invalid(
                    &fields.rope_scaling,
                    format!("linear factor {factor} is not positive"),
                ));
            }
            Some(RopeScaling::Linear { .. }) => {}
            Some(RopeScaling::Llama3 {
                low_freq_factor,
                high_freq_factor,
                ..
            }) if high_freq_factor <= low_freq_factor => {
                // inv_freq divides by their difference.
                return Err(invalid(
                    &fields.rope_scaling,
                    format!(
                        "high_freq_factor {high_freq_factor} is not above low_freq_factor {low_freq_factor}"
                    ),
                ));
            }
            Some(RopeScaling::Llama3 { .. }) => {}
            Some(RopeScaling::Divisors(d))
                if d.len() != self.head_dim / 2 || d.iter().any(|&v| !positive(v)) =>
            {
                return Err(invalid(
                    &fields.rope_scaling,
                    format!(
                        "{} divisors, head dim {} needs {} positive ones",
                        d.len(),
                        self.head_dim,
                        self.head_dim / 2
                    ),
                ));
            }
            Some(RopeScaling::Divisors(_)) => {}
        }
        Ok(())
    }
}
