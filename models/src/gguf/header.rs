//! Parsing the front of a GGUF file: header, metadata, tensor infos, and
//! the aligned start of the data section. Every count is bounded by the
//! bytes left before anything is allocated for it, and every tensor's data
//! range is checked against the file length here, once, so that reading a
//! tensor later is a slice that cannot fail.

use std::collections::HashMap;
use std::path::Path;

use super::reader::Reader;
use super::types::GgmlType;
use super::value::{Metadata, Value, ValueType, read_value};
use crate::error::{ModelError, Result};

/// `GGUF` as the first four bytes.
pub const MAGIC: [u8; 4] = *b"GGUF";

/// The alignment of the data section and of every tensor when the file
/// does not set `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// ggml's GGML_MAX_DIMS: llama.cpp refuses tensors with more.
pub const MAX_DIMS: u32 = 4;

/// One tensor as the header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Its name ("blk.0.attn_q.weight").
    pub name: String,
    /// Its shape in ggml's order: `dims[0]` is the contiguous (row) axis.
    pub dims: Vec<u64>,
    /// Its ggml type.
    pub ggml_type: GgmlType,
    /// Its offset from the start of the data section, as stored.
    pub offset: u64,
    /// Its element count (the product of `dims`, checked for overflow).
    pub elements: u64,
    /// Its data size in bytes, when the type is known.
    pub byte_len: Option<u64>,
}

/// What the front of the file says: everything but the tensor data.
#[derive(Debug)]
pub(crate) struct Layout {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub by_name: HashMap<String, usize>,
    pub alignment: u64,
    pub data_offset: u64,
}

fn invalid(file: &Path, field: impl Into<String>, reason: impl Into<String>) -> ModelError {
    ModelError::Invalid {
        file: file.to_path_buf(),
        field: field.into(),
        reason: reason.into(),
    }
}

/// Parses the header of `bytes`, the whole file.
pub(crate) fn parse(bytes: &[u8], file: &Path) -> Result<Layout> {
    let mut r = Reader::new(bytes, file);
    let magic = r.take(4, &|| "magic".into())?;
    if magic != MAGIC {
        let mut found = [0u8; 4];
        found.copy_from_slice(magic);
        return Err(ModelError::BadMagic {
            file: file.to_path_buf(),
            found,
        });
    }
    let version = r.u32(&|| "version".into())?;
    // Version 1 had u32 counts and lengths; 2 made them u64; 3 only added
    // big-endian files, which read here as a byte-swapped (huge) version.
    if version != 2 && version != 3 {
        return Err(ModelError::UnsupportedVersion {
            file: file.to_path_buf(),
            version,
        });
    }
    let tensor_count = r.u64(&|| "tensor count".into())?;
    let kv_count = r.u64(&|| "metadata kv count".into())?;

    // A key-value pair is at least a key length (8), a type (4) and a u8.
    let kv_count = r.bounded_count(kv_count, 13, &|| "metadata kv count".into())?;
    let mut metadata = Metadata::new(file);
    for i in 0..kv_count {
        let key = r.string(&|| format!("metadata key #{i}"))?;
        let type_id = r.u32(&|| format!("metadata {key} (value type)"))?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| ModelError::UnknownValueType {
            file: file.to_path_buf(),
            field: format!("metadata {key}"),
            type_id,
        })?;
        let value = read_value(&mut r, ty, 0, &|| format!("metadata {key}"))?;
        metadata.insert(key, value)?;
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(v) => {
            return Err(invalid(
                file,
                "metadata general.alignment",
                format!("must be a u32 power of two, found {v:?}"),
            ));
        }
    };

    // A tensor info is at least a name length (8), n_dims (4), a type (4)
    // and an offset (8).
    let tensor_count = r.bounded_count(tensor_count, 24, &|| "tensor count".into())?;
    let mut tensors = Vec::with_capacity(tensor_count);
    let mut by_name = HashMap::with_capacity(tensor_count);
    for i in 0..tensor_count {
        let name = r.string(&|| format!("tensor #{i} name"))?;
        let field = |what: &str| format!("tensor {name} {what}");
        let n_dims = r.u32(&|| field("n_dims"))?;
        if n_dims > MAX_DIMS {
            return Err(invalid(
                file,
                field("n_dims"),
                format!("{n_dims} dimensions, at most {MAX_DIMS} allowed"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(r.u64(&|| field(&format!("dims[{d}]")))?);
        }
        let type_id = r.u32(&|| field("type"))?;
        let ggml_type = GgmlType::from_id(type_id);
        let offset = r.u64(&|| field("offset"))?;

        let elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                invalid(
                    file,
                    field("dims"),
                    format!("{dims:?}: element count overflows u64"),
                )
            })?;
        let byte_len = match ggml_type.block() {
            None => None,
            Some((block, type_size)) => {
                let row = dims.first().copied().unwrap_or(1);
                if row % block != 0 {
                    return Err(invalid(
                        file,
                        field("dims"),
                        format!(
                            "dims[0] = {row} is not a multiple of {}'s block size {block}",
                            ggml_type.name()
                        ),
                    ));
                }
                // elements / block * type_size <= elements * 4.5 for every
                // type, but check rather than argue.
                Some((elements / block).checked_mul(type_size).ok_or_else(|| {
                    invalid(
                        file,
                        field("dims"),
                        format!("{dims:?}: byte size overflows u64"),
                    )
                })?)
            }
        };
        if offset % alignment != 0 {
            return Err(invalid(
                file,
                field("offset"),
                format!("{offset} is not a multiple of the alignment {alignment}"),
            ));
        }
        if by_name.insert(name.clone(), tensors.len()).is_some() {
            return Err(invalid(file, field("name"), "tensor name appears twice"));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            elements,
            byte_len,
        });
    }

    let end_of_infos = r.position() as u64;
    // end_of_infos <= file length < 2^63, so this cannot overflow.
    let data_offset = end_of_infos.div_ceil(alignment) * alignment;
    let file_len = bytes.len() as u64;
    for t in &tensors {
        let Some(len) = t.byte_len else { continue };
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(len));
        match (start, end) {
            (Some(_), Some(end)) if end <= file_len => {}
            _ => {
                return Err(ModelError::DataOutOfBounds {
                    file: file.to_path_buf(),
                    tensor: t.name.clone(),
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    file_len,
                });
            }
        }
    }

    Ok(Layout {
        version,
        metadata,
        tensors,
        by_name,
        alignment,
        data_offset,
    })
}
