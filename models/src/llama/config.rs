//! `LlamaConfig`: the shape and numerics of a Llama-family model, read from
//! GGUF metadata (`{arch}.*` keys) or a Hugging Face `config.json`, checked
//! for consistency before any weight is read.

use std::path::Path;

use hetero_core::RopeLayout;

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

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
    pub fn parameters(&self) -> u64 {
        let (h, i, v) = (
            self.hidden as u64,
            self.intermediate as u64,
            self.vocab as u64,
        );
        let q = (self.heads * self.head_dim) as u64;
        let kv = (self.kv_heads * self.head_dim) as u64;
        let bias = if self.architecture.qkv_bias() {
            q + 2 * kv
        } else {
            0
        };
        let layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h + bias;
        let output = if self.tied_embeddings { 0 } else { v * h };
        v * h + self.layers as u64 * layer + h + output
    }

    /// Bytes of f32 KV cache per position of one sequence.
    pub fn kv_bytes_per_position(&self) -> u64 {
        (2 * self.layers * self.kv_heads * self.head_dim * 4) as u64
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
        let usize_of = |k: &str| -> Result<usize> { Ok(md.get_u64(&key(k))? as usize) };
        let hidden = usize_of("embedding_length")?;
        let heads = usize_of("attention.head_count")?;
        let kv_heads = match md.get(&key("attention.head_count_kv")) {
            Some(_) => usize_of("attention.head_count_kv")?,
            None => heads,
        };
        let head_dim = match md.get(&key("attention.key_length")) {
            Some(_) => usize_of("attention.key_length")?,
            None => hidden / heads.max(1),
        };
        let embd = file.tensor("token_embd.weight")?;
        let vocab = match md.get(&key("vocab_size")) {
            Some(_) => usize_of("vocab_size")?,
            None => embd.dims.get(1).copied().unwrap_or(0) as usize,
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
        config.check(file.path(), rope_dims, &key("rope.dimension_count"))?;
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
        let model_type = json
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| missing("model_type"))?;
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
        if let Some(act) = json.get("hidden_act").and_then(|v| v.as_str())
            && act != "silu"
        {
            return Err(invalid(
                "hidden_act",
                format!("{act:?} is not supported (silu is)"),
            ));
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
        let head_dim = if json.get("head_dim").is_some_and(|v| !v.is_null()) {
            uint("head_dim")?
        } else {
            hidden / heads
        };
        let rope_scaling = match json.get("rope_scaling") {
            None | Some(serde_json::Value::Null) => None,
            Some(s) => {
                let kind = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("default");
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
                            "rope_scaling.rope_type",
                            format!(
                                "{other:?} is not supported (supported: default, linear, llama3)"
                            ),
                        ));
                    }
                }
            }
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
            tied_embeddings: json
                .get("tie_word_embeddings")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            max_positions: if json.get("max_position_embeddings").is_some() {
                uint("max_position_embeddings")?
            } else {
                4096
            },
        };
        config.check(path, head_dim, "head_dim")?;
        Ok(config)
    }

    /// Shapes that cannot be computed are refused here, naming the field.
    fn check(&self, file: &Path, rope_dims: usize, rope_field: &str) -> Result<()> {
        let invalid = |field: &str, reason: String| ModelError::Invalid {
            file: file.to_path_buf(),
            field: field.into(),
            reason,
        };
        for (field, v) in [
            ("hidden size", self.hidden),
            ("intermediate size", self.intermediate),
            ("layers", self.layers),
            ("attention heads", self.heads),
            ("kv heads", self.kv_heads),
            ("head dim", self.head_dim),
            ("vocabulary size", self.vocab),
            ("context length", self.max_positions),
        ] {
            if v == 0 || v >= 1 << 32 {
                return Err(invalid(field, format!("{v} is not in 1..2^32")));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(invalid(
                "kv heads",
                format!(
                    "{} query heads do not split into groups over {} kv heads",
                    self.heads, self.kv_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(invalid(
                "head dim",
                format!("{} is odd; rotary needs pairs", self.head_dim),
            ));
        }
        if rope_dims != self.head_dim {
            return Err(invalid(
                rope_field,
                format!(
                    "rotary over {rope_dims} of {} head dims (partial rotary) is not supported",
                    self.head_dim
                ),
            ));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return Err(invalid(
                "rms norm epsilon",
                format!("{} is not positive", self.rms_eps),
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(invalid(
                "rope theta",
                format!("{} is not above 1", self.rope_theta),
            ));
        }
        if let Some(RopeScaling::Divisors(d)) = &self.rope_scaling
            && (d.len() != self.head_dim / 2 || d.iter().any(|v| !(v.is_finite() && *v > 0.0)))
        {
            return Err(invalid(
                "tensor rope_freqs.weight",
                format!(
                    "{} divisors, head dim {} needs {} positive ones",
                    d.len(),
                    self.head_dim,
                    self.head_dim / 2
                ),
            ));
        }
        Ok(())
    }
}
