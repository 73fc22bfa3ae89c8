//! The GGUF reader: [`GgufFile`] opens a file, memory-maps it, parses its
//! front once (header, metadata, tensor infos, every data range checked)
//! and then hands out tensors as slices of the mapping or dequantized f32.
//!
//! Files: `reader.rs` the bounded byte cursor, `value.rs` metadata values
//! and the typed-getter map, `types.rs` ggml's tensor types and sizes,
//! `header.rs` the parse of everything before the data, `dequant.rs` the
//! exact dequantization of each supported type.

mod dequant;
mod header;
mod reader;
mod types;
mod value;

use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};

pub use header::{DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, TensorInfo};
pub use types::GgmlType;
pub use value::{MAX_ARRAY_DEPTH, Metadata, Value, ValueType};

use crate::error::{ModelError, Result};

/// Where the bytes live: a read-only mapping of the file, or a buffer the
/// caller handed over (tests, files already in memory). Never both.
enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// An open GGUF file (version 2 or 3, little-endian).
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    layout: header::Layout,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.layout.version)
            .field("bytes", &self.storage.len())
            .field("metadata_keys", &self.layout.metadata.len())
            .field("tensors", &self.layout.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and maps `path`, and parses and checks its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |context: &'static str| {
            move |source| ModelError::Io {
                file: path.to_path_buf(),
                context,
                source,
            }
        };
        let file = File::open(path).map_err(io("open"))?;
        let len = file.metadata().map_err(io("stat"))?.len();
        let storage = if len == 0 {
            // Nothing to map (mapping zero bytes fails on some systems);
            // the parse reports the truncation.
            Storage::Owned(Vec::new())
        } else {
            // SAFETY: the mapping is read-only and lives as long as the
            // slices handed out (they borrow `self`). What no code here can
            // rule out is another process truncating or rewriting the file
            // while it is mapped, which every mmap-based model loader
            // (llama.cpp included) accepts: model files are not edited in
            // place while loaded.
            Storage::Mapped(unsafe { memmap2::Mmap::map(&file) }.map_err(io("memory-map"))?)
        };
        Self::from_storage(path.to_path_buf(), storage)
    }

    /// Parses a GGUF file already in memory; `name` stands for the path in
    /// errors.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::from_storage(name.into(), Storage::Owned(bytes))
    }

    fn from_storage(path: PathBuf, storage: Storage) -> Result<Self> {
        let layout = header::parse(&storage, &path)?;
        Ok(GgufFile {
            path,
            storage,
            layout,
        })
    }

    /// The path (or name) the file was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version: 2 or 3.
    pub fn version(&self) -> u32 {
        self.layout.version
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.layout.metadata
    }

    /// The tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.layout.tensors
    }

    /// The info of tensor `name`.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.layout
            .by_name
            .get(name)
            .map(|&i| &self.layout.tensors[i])
            .ok_or_else(|| ModelError::NoSuchTensor {
                file: self.path.clone(),
                name: name.into(),
            })
    }

    /// The alignment of the data section (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.layout.alignment
    }

    /// Where the data section starts in the file.
    pub fn data_offset(&self) -> u64 {
        self.layout.data_offset
    }

    fn unsupported(&self, t: &TensorInfo, what: &'static str) -> ModelError {
        ModelError::UnsupportedType {
            file: self.path.clone(),
            tensor: t.name.clone(),
            type_name: t.ggml_type.name().into(),
            type_id: t.ggml_type.id(),
            what,
        }
    }

    /// The raw bytes of tensor `name`, in place in the mapping.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self.tensor(name)?;
        let len = t
            .byte_len
            .ok_or_else(|| self.unsupported(t, "its block size is unknown"))?;
        // The header parse checked data_offset + offset + len <= file length.
        let start = (self.layout.data_offset + t.offset) as usize;
        Ok(&self.storage[start..start + len as usize])
    }

    /// Tensor `name` as f32, dequantized exactly as ggml does.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        if !t.ggml_type.can_dequantize() {
            return Err(self.unsupported(t, "no dequantization for it"));
        }
        let bytes = self.tensor_bytes(name)?;
        // elements is bounded by the bytes in the file (its data range was
        // checked), so this allocation is not sized by the header alone.
        let mut out = Vec::with_capacity(t.elements as usize);
        dequant::dequantize(t.ggml_type, bytes, &mut out)
            .ok_or_else(|| self.unsupported(t, "no dequantization for it"))?;
        Ok(out)
    }
}
