//! `Checkpoint`: a model on disk, either one GGUF file or a Hugging Face
//! folder (`config.json`, safetensors weights, `tokenizer.json`,
//! `tokenizer_config.json`), behind one interface: its config, its
//! weights by role (checked against the config's shapes), its tokenizer,
//! chat template and end-of-sequence ids.

use std::path::{Path, PathBuf};

use hetero_core::QuantType;

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::llama::{LlamaConfig, Weight};
use crate::safetensors::SafetensorsWeights;
use crate::tokenizer::Tokenizer;

/// What a checkpoint is stored as.
#[derive(Debug)]
enum Format {
    Gguf(GgufFile),
    HuggingFace {
        dir: PathBuf,
        weights: SafetensorsWeights,
    },
}

/// A weight as a device will hold it (see [`Checkpoint::stored_weight`]).
#[derive(Debug)]
pub enum StoredWeight<'a> {
    /// Blocks of a quantized format, in place in the file's mapping.
    Blocks { quant: QuantType, bytes: &'a [u8] },
    /// Values widened to f32.
    F32(Vec<f32>),
}

/// An open checkpoint and its config.
#[derive(Debug)]
pub struct Checkpoint {
    format: Format,
    config: LlamaConfig,
    path: PathBuf,
}

impl Checkpoint {
    /// Open `path`: a `.gguf` file (or any file starting with the GGUF
    /// magic), or a Hugging Face folder with a `config.json`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|source| ModelError::Io {
            file: path.to_path_buf(),
            context: "open the model (a .gguf file or a Hugging Face folder)",
            source,
        })?;
        if meta.is_dir() {
            let config = LlamaConfig::from_hf_config(&path.join("config.json"))?;
            let weights = SafetensorsWeights::open_dir(path)?;
            let checkpoint = Checkpoint {
                format: Format::HuggingFace {
                    dir: path.to_path_buf(),
                    weights,
                },
                config,
                path: path.to_path_buf(),
            };
            checkpoint.check_weights()?;
            return Ok(checkpoint);
        }
        let file = GgufFile::open(path)?;
        let config = LlamaConfig::from_gguf(&file)?;
        let checkpoint = Checkpoint {
            format: Format::Gguf(file),
            config,
            path: path.to_path_buf(),
        };
        checkpoint.check_weights()?;
        Ok(checkpoint)
    }

    /// Every weight the config needs is in the files, with the config's
    /// shape and a type this crate reads: checked from the headers alone,
    /// so that a bad checkpoint fails at open, naming the tensor, before
    /// any weight is read or anything sized from the config is allocated
    /// (the config's own sizes are bounded by `LlamaConfig::MAX_*`).
    fn check_weights(&self) -> Result<()> {
        for w in Weight::all(&self.config) {
            let want = w.shape(&self.config);
            let (file, name, shape) = match &self.format {
                Format::Gguf(f) => {
                    let name = w.gguf_name();
                    let info = f.tensor(&name)?;
                    if !info.ggml_type.can_dequantize() {
                        // dequantize names the type and why.
                        f.dequantize(&name)?;
                    }
                    (f.path(), name, gguf_shape(&info.dims))
                }
                Format::HuggingFace { weights, .. } => {
                    let name = w.hf_name();
                    let (file, shape) = weights.check_readable(&name)?;
                    (file, name, shape)
                }
            };
            if shape != want {
                return Err(shape_error(file, &name, &shape, &want));
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// "gguf" or "huggingface".
    pub fn format_name(&self) -> &'static str {
        match self.format {
            Format::Gguf(_) => "gguf",
            Format::HuggingFace { .. } => "huggingface",
        }
    }

    /// The GGUF file, when this is one.
    pub fn gguf(&self) -> Option<&GgufFile> {
        match &self.format {
            Format::Gguf(f) => Some(f),
            Format::HuggingFace { .. } => None,
        }
    }

    /// Weight `w` as f32, row-major, after checking its shape against the
    /// config (before its data is read, so nothing is allocated for a
    /// tensor of the wrong size).
    pub fn weight(&self, w: Weight) -> Result<Vec<f32>> {
        let want = w.shape(&self.config);
        match &self.format {
            Format::Gguf(f) => {
                let name = w.gguf_name();
                let shape = gguf_shape(&f.tensor(&name)?.dims);
                if shape != want {
                    return Err(shape_error(f.path(), &name, &shape, &want));
                }
                f.dequantize(&name)
            }
            Format::HuggingFace { weights, .. } => {
                let name = w.hf_name();
                let (file, shape) = weights.check_readable(&name)?;
                if shape != want {
                    return Err(shape_error(file, &name, &shape, &want));
                }
                Ok(weights.to_f32(&name)?.1)
            }
        }
    }

    /// Weight `w` as a device should hold it: its blocks as stored, when
    /// it is a GGUF tensor of a format in `keep` (the device's
    /// `quant_types`), else widened to f32. The shape is checked first.
    pub fn stored_weight(&self, w: Weight, keep: &[QuantType]) -> Result<StoredWeight<'_>> {
        if let Format::Gguf(f) = &self.format {
            let name = w.gguf_name();
            let info = f.tensor(&name)?;
            if let Some(quant) = info.ggml_type.quant().filter(|q| keep.contains(q)) {
                let shape = gguf_shape(&info.dims);
                let want = w.shape(&self.config);
                if shape != want {
                    return Err(shape_error(f.path(), &name, &shape, &want));
                }
                return Ok(StoredWeight::Blocks {
                    quant,
                    bytes: f.tensor_bytes(&name)?,
                });
            }
        }
        Ok(StoredWeight::F32(self.weight(w)?))
    }

    /// Bytes of every weight once widened to f32.
    pub fn f32_weight_bytes(&self) -> u64 {
        self.config.parameters().saturating_mul(4)
    }

    /// Bytes of the weights on a device that keeps the formats in `keep`
    /// as blocks (see [`Self::stored_weight`]) and widens the rest to f32:
    /// what [`crate::LlamaModel::load`] allocates for them.
    pub fn resident_weight_bytes(&self, keep: &[QuantType]) -> u64 {
        Weight::all(&self.config)
            .into_iter()
            .map(|w| self.weight_bytes(w, keep))
            .sum()
    }

    /// Bytes of weight `w` on a device keeping the block formats `keep`
    /// (its blocks as stored, or f32).
    pub fn weight_bytes(&self, w: Weight, keep: &[QuantType]) -> u64 {
        let elems = w.shape(&self.config).iter().product::<usize>() as u64;
        let blocks = match &self.format {
            Format::Gguf(f) => f.tensor(&w.gguf_name()).ok().and_then(|t| {
                let q = t.ggml_type.quant().filter(|q| keep.contains(q))?;
                Some(elems / q.block_elems() as u64 * q.block_bytes() as u64)
            }),
            Format::HuggingFace { .. } => None,
        };
        blocks.unwrap_or(elems * 4)
    }

    /// Bytes of the weights of one stage of a split model: the layers
    /// `layers`, the embedding on the `first` stage, the output norm and
    /// head on the `last` (with `tied_copy`, a second copy of a tied
    /// embedding, which a split model's last device needs for the head).
    pub fn stage_weight_bytes(
        &self,
        keep: &[QuantType],
        layers: std::ops::Range<usize>,
        first: bool,
        last: bool,
        tied_copy: bool,
    ) -> u64 {
        Weight::all(&self.config)
            .into_iter()
            .filter(|w| match w.layer() {
                Some(l) => layers.contains(&l),
                None if *w == Weight::Embedding => first,
                None => last,
            })
            .chain((last && tied_copy).then_some(Weight::Embedding))
            .map(|w| self.weight_bytes(w, keep))
            .sum()
    }

    /// The tokenizer: GGUF metadata, or the folder's `tokenizer.json`.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        match &self.format {
            Format::Gguf(f) => Tokenizer::from_gguf(f),
            Format::HuggingFace { dir, .. } => Tokenizer::from_file(dir.join("tokenizer.json")),
        }
    }

    /// The chat template the file carries, if any: GGUF's
    /// `tokenizer.chat_template`, or the folder's `chat_template.jinja` or
    /// the `chat_template` of its `tokenizer_config.json`.
    pub fn chat_template(&self) -> Result<Option<String>> {
        match &self.format {
            Format::Gguf(f) => Ok(f
                .metadata()
                .get("tokenizer.chat_template")
                .and_then(|v| v.as_str())
                .map(String::from)),
            Format::HuggingFace { dir, .. } => {
                let jinja = dir.join("chat_template.jinja");
                if jinja.is_file() {
                    return std::fs::read_to_string(&jinja).map(Some).map_err(|source| {
                        ModelError::Io {
                            file: jinja,
                            context: "read",
                            source,
                        }
                    });
                }
                let config = dir.join("tokenizer_config.json");
                if !config.is_file() {
                    return Ok(None);
                }
                let json = read_json(&config)?;
                match json.get("chat_template") {
                    None | Some(serde_json::Value::Null) => Ok(None),
                    Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                    // A list of named templates: the "default" one.
                    Some(serde_json::Value::Array(list)) => Ok(list
                        .iter()
                        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                        .and_then(|t| t.get("template"))
                        .and_then(|t| t.as_str())
                        .map(String::from)),
                    Some(_) => Err(ModelError::Invalid {
                        file: config,
                        field: "chat_template".into(),
                        reason: "neither a string nor a list of named templates".into(),
                    }),
                }
            }
        }
    }

    /// Ids that end a generation: the tokenizer's EOS, GGUF's end-of-turn
    /// token, and every `eos_token_id` of a Hugging Face `config.json`
    /// (Llama 3 lists several).
    pub fn stop_ids(&self, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = tokenizer.eos_id().into_iter().collect();
        match &self.format {
            Format::Gguf(f) => {
                for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
                    if let Some(id) = f.metadata().get(key).and_then(|v| v.as_u64()) {
                        ids.push(id as u32);
                    }
                }
            }
            Format::HuggingFace { dir, .. } => {
                let json = read_json(&dir.join("config.json"))?;
                match json.get("eos_token_id") {
                    Some(serde_json::Value::Number(n)) => ids.extend(n.as_u64().map(|v| v as u32)),
                    Some(serde_json::Value::Array(list)) => {
                        ids.extend(list.iter().filter_map(|v| v.as_u64()).map(|v| v as u32))
                    }
                    _ => {}
                }
            }
        }
        ids.retain(|&id| (id as usize) < self.config.vocab);
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}

/// A GGUF shape in row-major order (ggml lists the contiguous axis first).
fn gguf_shape(dims: &[u64]) -> Vec<usize> {
    dims.iter()
        .rev()
        .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
        .collect()
}

fn shape_error(file: &Path, name: &str, shape: &[usize], want: &[usize]) -> ModelError {
    ModelError::Invalid {
        file: file.to_path_buf(),
        field: format!("tensor {name}"),
        reason: format!("shape {shape:?} disagrees with the config, which needs {want:?}"),
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        file: path.to_path_buf(),
        context: "read",
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ModelError::Invalid {
        file: path.to_path_buf(),
        field: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        reason: e.to_string(),
    })
}
