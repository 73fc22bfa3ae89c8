//! Hugging Face safetensors weights: one `model.safetensors`, or the shards
//! a `model.safetensors.index.json` names. Each file is memory-mapped and
//! its header parsed and validated by the `safetensors` crate (Hugging
//! Face's own: the header is bounded at 100 MB, and every tensor's offsets
//! are checked against the file before any is read); tensors are read in
//! place and widened to f32 (F32, F16, BF16).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors, tensor::Metadata};

use crate::error::{ModelError, Result};

/// One memory-mapped safetensors file.
struct Shard {
    path: PathBuf,
    map: memmap2::Mmap,
    /// Bytes before the data: the 8-byte length and the JSON header.
    data_start: usize,
    metadata: Metadata,
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let io = |context, source| ModelError::Io {
            file: path.to_path_buf(),
            context,
            source,
        };
        let file = File::open(path).map_err(|e| io("open", e))?;
        // SAFETY: the mapping is read-only and private to this process; a
        // file truncated under us by another process is the one case memmap
        // cannot guard, as for every mapped reader (llama.cpp, candle).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io("map", e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&map).map_err(|e| ModelError::Invalid {
                file: path.to_path_buf(),
                field: "safetensors header".into(),
                reason: e.to_string(),
            })?;
        Ok(Shard {
            path: path.to_path_buf(),
            map,
            data_start: 8 + header_len,
            metadata,
        })
    }
}

/// The weights of a Hugging Face checkpoint folder.
pub struct SafetensorsWeights {
    shards: Vec<Shard>,
    /// Tensor name -> index of the shard holding it.
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for SafetensorsWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsWeights")
            .field(
                "shards",
                &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.index.len())
            .finish()
    }
}

impl SafetensorsWeights {
    /// The weights of folder `dir`: `model.safetensors.index.json` when
    /// present (every shard it names must exist), else `model.safetensors`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        if !index_path.is_file() {
            let single = dir.join("model.safetensors");
            if !single.is_file() {
                return Err(ModelError::Io {
                    file: single,
                    context: "open (neither model.safetensors nor model.safetensors.index.json is in the folder)",
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
            return Self::from_files(&[single]);
        }
        let bytes = std::fs::read(&index_path).map_err(|source| ModelError::Io {
            file: index_path.clone(),
            context: "read",
            source,
        })?;
        let invalid = |field: &str, reason: String| ModelError::Invalid {
            file: index_path.clone(),
            field: field.into(),
            reason,
        };
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| invalid("index", e.to_string()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| invalid("weight_map", "missing or not an object".into()))?;
        // The shards in name order; each named once however many tensors it holds.
        let mut files: BTreeMap<&str, ()> = BTreeMap::new();
        for (name, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| invalid(&format!("weight_map.{name}"), "not a file name".into()))?;
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(invalid(
                    &format!("weight_map.{name}"),
                    format!("{file:?} is not a file name in the folder"),
                ));
            }
            files.insert(file, ());
        }
        let paths: Vec<PathBuf> = files.keys().map(|f| dir.join(f)).collect();
        let weights = Self::from_files(&paths)?;
        // Every tensor the index names must be in the shard it names.
        for (name, file) in map {
            let want = dir.join(file.as_str().unwrap_or_default());
            match weights.index.get(name) {
                Some(&i) if weights.shards[i].path == want => {}
                _ => {
                    return Err(invalid(
                        &format!("weight_map.{name}"),
                        format!("tensor is not in {}", want.display()),
                    ));
                }
            }
        }
        Ok(weights)
    }

    /// The weights of these files (a tensor in two files is an error).
    pub fn from_files(paths: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let shard = Shard::open(path)?;
            for name in shard.metadata.tensors().keys() {
                if let Some(&j) = index.get(name) {
                    let first: &Shard = &shards[j];
                    return Err(ModelError::Invalid {
                        file: path.clone(),
                        field: format!("tensor {name}"),
                        reason: format!("also in {}", first.path.display()),
                    });
                }
                index.insert(name.clone(), i);
            }
            shards.push(shard);
        }
        Ok(SafetensorsWeights { shards, index })
    }

    /// Whether a tensor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let (shard, info) = self.info(name)?;
        let _ = shard;
        Ok(info.shape.clone())
    }

    fn info(&self, name: &str) -> Result<(&Shard, &safetensors::tensor::TensorInfo)> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| ModelError::NoSuchTensor {
                file: self
                    .shards
                    .first()
                    .map(|s| s.path.clone())
                    .unwrap_or_default(),
                name: name.into(),
            })?;
        let shard = &self.shards[i];
        let info = shard
            .metadata
            .info(name)
            .ok_or_else(|| ModelError::NoSuchTensor {
                file: shard.path.clone(),
                name: name.into(),
            })?;
        Ok((shard, info))
    }

    /// Tensor `name` widened to f32, with its shape.
    pub fn to_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (shard, info) = self.info(name)?;
        let (start, end) = info.data_offsets;
        // read_metadata checked the offsets against the file length.
        let bytes = &shard.map[shard.data_start + start..shard.data_start + end];
        let values = match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::Invalid {
                    file: shard.path.clone(),
                    field: format!("tensor {name}"),
                    reason: format!("dtype {other:?} is not supported (F32, F16 and BF16 are)"),
                });
            }
        };
        Ok((info.shape.clone(), values))
    }
}
