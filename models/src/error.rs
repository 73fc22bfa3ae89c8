//! `ModelError`: every way loading a model file can fail, each naming the
//! file and the field, and its conversion into [`hetero_core::Error`].

use std::path::{Path, PathBuf};

use hetero_core::Error;

/// Result of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// A model file that cannot be read as asked. `file` is the path given to
/// the reader (or the name given to an in-memory buffer); `field` names the
/// header field, metadata key or tensor at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The operating system could not open, stat or map the file.
    #[error("{file}: {context}: {source}")]
    Io {
        file: PathBuf,
        context: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The file ends inside `field`.
    #[error(
        "{file}: truncated: {field} needs {needed} bytes at offset {offset}, only {available} left"
    )]
    Truncated {
        file: PathBuf,
        field: String,
        offset: u64,
        needed: u64,
        available: u64,
    },

    /// The first four bytes are not `GGUF`.
    #[error("{file}: not a GGUF file: magic is {found:02x?}, expected \"GGUF\"")]
    BadMagic { file: PathBuf, found: [u8; 4] },

    /// A GGUF version this reader does not know (it reads 2 and 3,
    /// little-endian; a big-endian file reads as a huge version).
    #[error(
        "{file}: GGUF version {version} is not supported (this reader knows 2 and 3, little-endian)"
    )]
    UnsupportedVersion { file: PathBuf, version: u32 },

    /// A count or length in the header that the rest of the file could not
    /// hold: refused before anything is allocated for it.
    #[error("{file}: {field} is {count}, but the {available} bytes left could hold at most {max}")]
    CountTooLarge {
        file: PathBuf,
        field: String,
        count: u64,
        max: u64,
        available: u64,
    },

    /// A metadata value type number GGUF does not define.
    #[error("{file}: {field}: unknown metadata value type {type_id}")]
    UnknownValueType {
        file: PathBuf,
        field: String,
        type_id: u32,
    },

    /// A value that is well-formed bytes but not a valid GGUF value (bad
    /// UTF-8, a bool that is neither 0 nor 1, an alignment that is no power
    /// of two, a duplicate name, too many dimensions, an overflowing shape).
    #[error("{file}: invalid {field}: {reason}")]
    Invalid {
        file: PathBuf,
        field: String,
        reason: String,
    },

    /// A tensor whose data would run past the end of the file.
    #[error(
        "{file}: tensor {tensor}: data at bytes {start}..{end} runs past the end of the file ({file_len} bytes)"
    )]
    DataOutOfBounds {
        file: PathBuf,
        tensor: String,
        start: u64,
        end: u64,
        file_len: u64,
    },

    /// A ggml tensor type this reader cannot size or dequantize.
    #[error("{file}: tensor {tensor}: ggml type {type_name} ({type_id}) is not supported: {what}")]
    UnsupportedType {
        file: PathBuf,
        tensor: String,
        type_name: String,
        type_id: u32,
        what: &'static str,
    },

    /// A tokenizer this crate does not build: a `tokenizer.ggml.model` or
    /// `tokenizer.ggml.pre` it does not know, or a `tokenizer.json` decoder
    /// that is not byte-level.
    #[error("{file}: {field}: tokenizer {name:?} is not supported (supported: {supported})")]
    UnsupportedTokenizer {
        file: PathBuf,
        field: String,
        name: String,
        supported: &'static str,
    },

    /// A model architecture (or `model_type`) this crate does not compute.
    #[error("{file}: {field}: architecture {name:?} is not supported (supported: {supported})")]
    UnsupportedArchitecture {
        file: PathBuf,
        field: String,
        name: String,
        supported: &'static str,
    },

    /// No tensor of that name in the file.
    #[error("{file}: no tensor named {name:?}")]
    NoSuchTensor { file: PathBuf, name: String },

    /// No metadata key of that name in the file.
    #[error("{file}: no metadata key {key:?}")]
    MissingKey { file: PathBuf, key: String },

    /// A metadata key holding another type than the one asked for.
    #[error("{file}: metadata {key}: expected {expected}, found {found}")]
    WrongType {
        file: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
}

impl ModelError {
    /// The file (or in-memory name) the error is about.
    pub fn file(&self) -> &Path {
        match self {
            ModelError::Io { file, .. }
            | ModelError::Truncated { file, .. }
            | ModelError::BadMagic { file, .. }
            | ModelError::UnsupportedVersion { file, .. }
            | ModelError::CountTooLarge { file, .. }
            | ModelError::UnknownValueType { file, .. }
            | ModelError::Invalid { file, .. }
            | ModelError::DataOutOfBounds { file, .. }
            | ModelError::UnsupportedType { file, .. }
            | ModelError::UnsupportedTokenizer { file, .. }
            | ModelError::UnsupportedArchitecture { file, .. }
            | ModelError::NoSuchTensor { file, .. }
            | ModelError::MissingKey { file, .. }
            | ModelError::WrongType { file, .. } => file,
        }
    }

    /// What in the file is at fault: a header field, a metadata key, a
    /// tensor ("tensor blk.0.attn_q.weight").
    pub fn field(&self) -> String {
        match self {
            ModelError::Io { context, .. } => (*context).to_string(),
            ModelError::BadMagic { .. } => "magic".into(),
            ModelError::UnsupportedVersion { .. } => "version".into(),
            ModelError::Truncated { field, .. }
            | ModelError::CountTooLarge { field, .. }
            | ModelError::UnknownValueType { field, .. }
            | ModelError::Invalid { field, .. }
            | ModelError::UnsupportedTokenizer { field, .. }
            | ModelError::UnsupportedArchitecture { field, .. } => field.clone(),
            ModelError::DataOutOfBounds { tensor, .. }
            | ModelError::UnsupportedType { tensor, .. }
            | ModelError::NoSuchTensor { name: tensor, .. } => format!("tensor {tensor}"),
            ModelError::MissingKey { key, .. } | ModelError::WrongType { key, .. } => {
                format!("metadata {key}")
            }
        }
    }
}

/// I/O stays I/O, a type or version this reader lacks is `Unsupported` (in
/// the "GGUF reader"), everything else is `InvalidInput` whose field is
/// "file: field".
impl From<ModelError> for Error {
    fn from(e: ModelError) -> Self {
        let field = format!("{}: {}", e.file().display(), e.field());
        match e {
            ModelError::Io { source, .. } => Error::io(field, source),
            ModelError::UnsupportedType { .. } | ModelError::UnsupportedVersion { .. } => {
                Error::unsupported_in("GGUF reader", e.to_string())
            }
            ModelError::UnsupportedTokenizer { .. } => {
                Error::unsupported_in("tokenizer", e.to_string())
            }
            ModelError::UnsupportedArchitecture { .. } => {
                Error::unsupported_in("model loader", e.to_string())
            }
            other => Error::invalid(field, other.to_string()),
        }
    }
}
