//! Code objects of the shared kernel source, one per GPU processor: kept in
//! memory for the process and on disk under the user's cache directory
//! (`$XDG_CACHE_HOME/hetero/hip-kernels`, else `~/.cache/...`), so a
//! process pays hiprtc's few seconds only the first time a processor is
//! seen. A file's name carries the processor and a hash of everything that
//! shapes the code (source, compiler version, options), so a changed source
//! or ROCm never picks up a stale object.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::comgr::processor_of;
use crate::error::RocmError;
use crate::rtc;

/// Where a code object came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Compiled by hiprtc in this call.
    Compiled,
    /// Read from the cache directory.
    Disk,
}

/// The code object of every shared kernel for `target_id`'s processor:
/// from this process' memory, else the user's cache directory, else hiprtc.
pub fn code_object(target_id: &str) -> Result<Arc<Vec<u8>>, RocmError> {
    static MEMORY: OnceLock<Mutex<HashMap<String, Arc<Vec<u8>>>>> = OnceLock::new();
    let processor = processor_of(target_id).to_string();
    // Held while compiling: two devices of one processor compile once.
    let mut memory = MEMORY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(code) = memory.get(&processor) {
        return Ok(Arc::clone(code));
    }
    let (code, _) = load_or_compile(cache_dir().as_deref(), &processor)?;
    let code = Arc::new(code);
    memory.insert(processor, Arc::clone(&code));
    Ok(code)
}

/// The code object for `target_id`'s processor from `dir` (when given and
/// it holds one for this source and compiler), else compiled by hiprtc and
/// written there.
pub fn load_or_compile(
    dir: Option<&Path>,
    target_id: &str,
) -> Result<(Vec<u8>, Origin), RocmError> {
    let processor = processor_of(target_id);
    rtc::check_target(processor)?;
    let source = hetero_gpu_kernels::source();
    let file = dir.and_then(|dir| cache_file(dir, processor, &source));
    if let Some(code) = file.as_deref().and_then(read_valid) {
        return Ok((code, Origin::Disk));
    }
    let code = rtc::compile(&source, processor)?;
    if let Some(file) = &file {
        // The disk copy only saves the next process a compile; a
        // read-only or full cache directory costs nothing else.
        let _ = write_atomically(file, &code);
    }
    Ok((code, Origin::Compiled))
}

fn cache_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache"),
    };
    Some(base.join("hetero").join("hip-kernels"))
}

fn cache_file(dir: &Path, processor: &str, source: &str) -> Option<PathBuf> {
    let version = rtc::compiler_version().ok()?;
    let key = fnv1a(&[source, &version, &rtc::options(processor).join(" ")]);
    Some(dir.join(format!("{processor}-{key:016x}.co")))
}

/// A cached code object, if the file exists and is an ELF file (a partial
/// write never is: files are renamed into place whole).
fn read_valid(file: &Path) -> Option<Vec<u8>> {
    let code = std::fs::read(file).ok()?;
    code.starts_with(b"\x7fELF").then_some(code)
}

fn write_atomically(file: &Path, code: &[u8]) -> std::io::Result<()> {
    let dir = file.parent().ok_or(std::io::ErrorKind::InvalidInput)?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    std::fs::write(&tmp, code)?;
    std::fs::rename(&tmp, file)
}

/// 64-bit FNV-1a over the parts (with a separator between them): stable
/// across Rust versions, unlike `DefaultHasher`, as a file name must be.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in part.as_bytes().iter().chain(&[0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_depends_on_every_part() {
        assert_eq!(fnv1a(&["a", "b"]), fnv1a(&["a", "b"]));
        assert_ne!(fnv1a(&["a", "b"]), fnv1a(&["ab", ""]));
        assert_ne!(fnv1a(&["a", "b"]), fnv1a(&["a", "c"]));
        // No parts: FNV-1a's offset basis.
        assert_eq!(fnv1a(&[]), 0xcbf2_9ce4_8422_2325);
    }
}
