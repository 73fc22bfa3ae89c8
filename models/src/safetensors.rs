//! Hugging Face safetensors weights: one `model.safetensors`, or the shards
//! a `model.safetensors.index.json` names. Each file is memory-mapped and
//! its header parsed and validated by the `safetensors` crate (Hugging
//! Face's own: the header is bounded at 100 MB, and every tensor's offsets
//! are checked against the file before any is read); tensors are read in
//! place and widened to f32 (F32, F16, BF16).
//!
//! Before the crate sees a file, its 8-byte header length is checked
//! against the file's size (a length claiming more than the file holds is
//! [`ModelError::CountTooLarge`]); when the crate refuses a header without
//! saying which tensor is at fault, the header is read again here to name
//! it (data past the end of the file is [`ModelError::DataOutOfBounds`],
//! a size that disagrees with dtype and shape is `Invalid` for that tensor).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensorError, SafeTensors, tensor::Metadata};

use crate::error::{ModelError, Result};

/// The dtypes [`SafetensorsWeights::to_f32`] widens.
pub const SUPPORTED_DTYPES: &str = "F32, F16 and BF16";

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
        let meta = file.metadata().map_err(|e| io("stat", e))?;
        if !meta.is_file() {
            return Err(io(
                "open (not a regular file)",
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        // SAFETY: the mapping is read-only and private to this process; a
        // file truncated under us by another process is the one case memmap
        // cannot guard, as for every mapped reader (llama.cpp, candle).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io("map", e))?;
        let file_len = map.len() as u64;
        let Some(len_bytes) = map.get(..8) else {
            return Err(ModelError::Truncated {
                file: path.to_path_buf(),
                field: "safetensors header length".into(),
                offset: 0,
                needed: 8,
                available: file_len,
            });
        };
        let mut len = [0u8; 8];
        len.copy_from_slice(len_bytes);
        let header_len = u64::from_le_bytes(len);
        if header_len > file_len - 8 {
            return Err(ModelError::CountTooLarge {
                file: path.to_path_buf(),
                field: "safetensors header length".into(),
                count: header_len,
                max: file_len - 8,
                available: file_len - 8,
            });
        }
        let (header_len, metadata) = SafeTensors::read_metadata(&map)
            .map_err(|e| header_error(path, &map, header_len as usize, e))?;
        Ok(Shard {
            path: path.to_path_buf(),
            map,
            data_start: 8 + header_len,
            metadata,
        })
    }
}

/// The error for a header the `safetensors` crate refused: naming the
/// tensor at fault when the crate's error does not (its size disagreeing
/// with its dtype and shape, its data past the end of the file), else the
/// crate's own message.
fn header_error(path: &Path, map: &[u8], header_len: usize, e: SafeTensorError) -> ModelError {
    let invalid = |field: String, reason: String| ModelError::Invalid {
        file: path.to_path_buf(),
        field,
        reason,
    };
    match &e {
        SafeTensorError::InvalidOffset(name) => {
            return invalid(
                format!("tensor {name}"),
                "data_offsets do not start where the previous tensor ends (overlapping, a gap, or end before start)".into(),
            );
        }
        SafeTensorError::TensorInvalidInfo
        | SafeTensorError::MetadataIncompleteBuffer
        | SafeTensorError::InvalidHeaderDeserialization(_)
        | SafeTensorError::ValidationOverflow
        | SafeTensorError::MisalignedSlice => {
            let data_len = (map.len() - 8 - header_len) as u64;
            if let Some(found) = find_bad_tensor(path, &map[8..8 + header_len], data_len) {
                return found;
            }
        }
        _ => {}
    }
    invalid("safetensors header".into(), e.to_string())
}

/// The first tensor of a (bounded, already length-checked) header that is
/// at fault: a dtype, shape or data_offsets that does not parse, data past
/// the end of the file, or a byte size that disagrees with its dtype and
/// shape; `None` when no single tensor is (the crate's message stands).
fn find_bad_tensor(path: &Path, header: &[u8], data_len: u64) -> Option<ModelError> {
    let json: serde_json::Value = serde_json::from_slice(header).ok()?;
    let invalid = |name: &str, reason: String| ModelError::Invalid {
        file: path.to_path_buf(),
        field: format!("tensor {name}"),
        reason,
    };
    let offsets = |v: &serde_json::Value| -> Option<(u64, u64)> {
        let o = v.get("data_offsets")?.as_array()?;
        match o.as_slice() {
            [s, e] => Some((s.as_u64()?, e.as_u64()?)),
            _ => None,
        }
    };
    let mut tensors = Vec::new();
    for (name, v) in json.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let dtype = match v.get("dtype") {
            Some(d) => match serde_json::from_value::<Dtype>(d.clone()) {
                Ok(dtype) => dtype,
                Err(_) => {
                    return Some(invalid(
                        name,
                        format!("dtype {d} is not a safetensors dtype"),
                    ));
                }
            },
            None => return Some(invalid(name, "no dtype".into())),
        };
        let shape: Option<Vec<u64>> = v
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().map(|d| d.as_u64()).collect());
        let Some(shape) = shape else {
            return Some(invalid(
                name,
                "shape is not a list of non-negative integers".into(),
            ));
        };
        let Some((start, end)) = offsets(v) else {
            return Some(invalid(
                name,
                "data_offsets is not a pair of non-negative integers".into(),
            ));
        };
        tensors.push((name, dtype, shape, start, end));
    }
    tensors.sort_by_key(|t| (t.3, t.4));
    let header_bytes = 8 + header.len() as u64;
    for (name, dtype, shape, start, end) in &tensors {
        let (start, end) = (*start, *end);
        if end > data_len || start > end {
            return Some(ModelError::DataOutOfBounds {
                file: path.to_path_buf(),
                tensor: name.to_string(),
                start: header_bytes.saturating_add(start),
                end: header_bytes.saturating_add(end),
                file_len: header_bytes + data_len,
            });
        }
        let bits = shape
            .iter()
            .try_fold(dtype.bitsize() as u64, |a, &d| a.checked_mul(d));
        if bits != Some((end - start).saturating_mul(8)) {
            return Some(invalid(
                name,
                format!(
                    "data_offsets {start}..{end} hold {} bytes, but dtype {dtype:?} and shape {shape:?} need {}",
                    end - start,
                    bits.map_or("more than 2^61".into(), |b| b.div_ceil(8).to_string())
                ),
            ));
        }
    }
    let last = tensors.iter().map(|t| t.4).max().unwrap_or(0);
    (last < data_len).then(|| ModelError::Invalid {
        file: path.to_path_buf(),
        field: "safetensors header".into(),
        reason: format!(
            "the tensors end at data byte {last}, but the file holds {data_len} data bytes after the header"
        ),
    })
}

/// The weights of a Hugging Face checkpoint folder.
pub struct SafetensorsWeights {
    /// The index file, or the single file: what a missing tensor is reported against.
    source: PathBuf,
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
        if map.is_empty() {
            return Err(invalid("weight_map", "names no tensor".into()));
        }
        // The shards in name order; each named once however many tensors it holds.
        let mut files: BTreeMap<&str, ()> = BTreeMap::new();
        for (name, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| invalid(&format!("weight_map.{name}"), "not a file name".into()))?;
            if file.is_empty()
                || file == "."
                || file == ".."
                || file.contains(['/', '\\', '\0'])
                || Path::new(file).is_absolute()
            {
                return Err(invalid(
                    &format!("weight_map.{name}"),
                    format!("{file:?} is not a file name in the folder"),
                ));
            }
            files.insert(file, ());
        }
        let paths: Vec<PathBuf> = files.keys().map(|f| dir.join(f)).collect();
        let mut weights = Self::from_files(&paths)?;
        weights.source = index_path.clone();
        // Every tensor the index names must be in the shard it names.
        for (name, file) in map {
            let want = dir.join(file.as_str().unwrap_or_default());
            match weights.index.get(name) {
                Some(&i) if weights.shards[i].path == want => {}
                Some(&i) => {
                    return Err(invalid(
                        &format!("weight_map.{name}"),
                        format!(
                            "tensor is not in {} but in {}",
                            want.display(),
                            weights.shards[i].path.display()
                        ),
                    ));
                }
                None => {
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
        let Some(first) = paths.first() else {
            return Err(ModelError::Invalid {
                file: PathBuf::new(),
                field: "safetensors files".into(),
                reason: "no file given".into(),
            });
        };
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
        Ok(SafetensorsWeights {
            source: first.clone(),
            shards,
            index,
        })
    }

    /// Whether a tensor of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let (_, info) = self.info(name)?;
        Ok(info.shape.clone())
    }

    /// The file holding tensor `name`, its shape, and whether
    /// [`to_f32`](Self::to_f32) reads its dtype (an error naming the tensor
    /// and its dtype if not); reads no data.
    pub fn check_readable(&self, name: &str) -> Result<(&Path, Vec<usize>)> {
        let (shard, info) = self.info(name)?;
        dtype_supported(shard, name, info.dtype)?;
        Ok((&shard.path, info.shape.clone()))
    }

    fn info(&self, name: &str) -> Result<(&Shard, &safetensors::tensor::TensorInfo)> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| ModelError::NoSuchTensor {
                file: self.source.clone(),
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
        // read_metadata checked the offsets against the file length (and
        // their difference against dtype x shape); `get` keeps a slip from
        // being a panic.
        let bytes = shard
            .map
            .get(shard.data_start + start..shard.data_start + end)
            .ok_or_else(|| ModelError::DataOutOfBounds {
                file: shard.path.clone(),
                tensor: name.into(),
                start: (shard.data_start + start) as u64,
                end: (shard.data_start + end) as u64,
                file_len: shard.map.len() as u64,
            })?;
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
            other => return Err(dtype_error(shard, name, other)),
        };
        Ok((info.shape.clone(), values))
    }
}

fn dtype_supported(shard: &Shard, name: &str, dtype: Dtype) -> Result<()> {
    match dtype {
        Dtype::F32 | Dtype::F16 | Dtype::BF16 => Ok(()),
        other => Err(dtype_error(shard, name, other)),
    }
}

fn dtype_error(shard: &Shard, name: &str, dtype: Dtype) -> ModelError {
    ModelError::Invalid {
        file: shard.path.clone(),
        field: format!("tensor {name}"),
        reason: format!("dtype {dtype:?} is not supported ({SUPPORTED_DTYPES} are)"),
    }
}
