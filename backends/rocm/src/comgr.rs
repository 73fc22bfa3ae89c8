//! The GPU architectures the installed ROCm can compile for, from its code
//! object manager (`libamd_comgr`, loaded at run time; hiprtc compiles
//! through it).
//!
//! Why ask before compiling: hiprtc of ROCm 5.2 (Debian 12) corrupts the
//! heap and aborts the whole process ("munmap_chunk(): invalid pointer")
//! when asked for a target its LLVM does not know (gfx942, gfx1100), or
//! for a target id with a feature the processor lacks (`gfx1030:xnack-`).
//! So [`crate::rtc`] compiles only for a processor this list names, and
//! only for the bare processor (see [`processor_of`]).

use std::ffi::{CStr, c_char};
use std::sync::OnceLock;

use libloading::Library;

use crate::error::RocmError;

/// comgr's library names, newest first (ROCm 6.3+ ships `.so.3`).
const LIBRARIES: [&str; 3] = ["libamd_comgr.so.3", "libamd_comgr.so.2", "libamd_comgr.so"];

/// ISA names look like `amdgcn-amd-amdhsa--gfx90a` (optionally followed by
/// `:feature+`); the processor follows this prefix.
const ISA_PREFIX: &str = "amdgcn-amd-amdhsa--";

/// What comgr told, read once per process.
#[derive(Debug, Clone)]
pub struct Isas {
    /// comgr's version, e.g. "comgr 2.4".
    pub version: String,
    /// Processors comgr can target (e.g. "gfx90a"), in comgr's order,
    /// without duplicates.
    pub processors: Vec<String>,
}

impl Isas {
    /// Whether `processor` (a bare name such as "gfx90a") is among them.
    pub fn knows(&self, processor: &str) -> bool {
        self.processors.iter().any(|p| p == processor)
    }
}

/// The bare processor of a HIP target id: `gfx90a:sramecc+:xnack-` ->
/// `gfx90a` (what `hipDeviceProp_t::gcnArchName` reports, features after
/// colons). Code compiled for the bare processor is "any" for xnack and
/// sramecc, so it loads in either mode.
pub fn processor_of(target_id: &str) -> &str {
    target_id.split(':').next().unwrap_or(target_id).trim()
}

/// The processors the installed comgr knows, or why it cannot be asked.
pub fn isas() -> Result<&'static Isas, RocmError> {
    static ISAS: OnceLock<Result<Isas, String>> = OnceLock::new();
    ISAS.get_or_init(|| load().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|reason| RocmError::MissingLibrary {
            library: "libamd_comgr",
            what: "listing the GPU architectures the installed ROCm compiles for",
            tried: reason.clone(),
        })
}

type Status = i32;
type GetIsaCount = unsafe extern "C" fn(*mut usize) -> Status;
type GetIsaName = unsafe extern "C" fn(usize, *mut *const c_char) -> Status;
type GetVersion = unsafe extern "C" fn(*mut usize, *mut usize);

fn load() -> Result<Isas, String> {
    let mut tried = Vec::new();
    for name in LIBRARIES {
        // SAFETY: loading comgr runs only its own initialisers.
        match unsafe { Library::new(name) } {
            Ok(lib) => {
                let isas = read(&lib).map_err(|e| format!("{name}: {e}"));
                // Never unloaded: comgr registers its options in LLVM's
                // global registry (libLLVM stays loaded), and the HIP
                // runtime loading comgr again after an unload registers
                // them twice, which LLVM answers with an abort.
                std::mem::forget(lib);
                return isas;
            }
            Err(e) => tried.push(format!("{name}: {e}")),
        }
    }
    Err(tried.join("; "))
}

fn read(lib: &Library) -> Result<Isas, String> {
    // SAFETY: the signatures are comgr's (amd_comgr.h, API version 2).
    let (count, name, version) = unsafe {
        (
            *lib.get::<GetIsaCount>(b"amd_comgr_get_isa_count\0")
                .map_err(|e| e.to_string())?,
            *lib.get::<GetIsaName>(b"amd_comgr_get_isa_name\0")
                .map_err(|e| e.to_string())?,
            lib.get::<GetVersion>(b"amd_comgr_get_version\0")
                .ok()
                .map(|f| *f),
        )
    };
    let mut n = 0usize;
    // SAFETY: writes one size_t.
    let status = unsafe { count(&mut n) };
    if status != 0 {
        return Err(format!("amd_comgr_get_isa_count returned status {status}"));
    }
    let mut processors: Vec<String> = Vec::new();
    for i in 0..n {
        let mut ptr: *const c_char = std::ptr::null();
        // SAFETY: i < count; comgr returns a pointer to a static string.
        let status = unsafe { name(i, &mut ptr) };
        if status != 0 || ptr.is_null() {
            return Err(format!(
                "amd_comgr_get_isa_name({i}) returned status {status}"
            ));
        }
        // SAFETY: a NUL-terminated string owned by comgr for the process' life.
        let isa = unsafe { CStr::from_ptr(ptr) }.to_string_lossy();
        let Some(target) = isa.strip_prefix(ISA_PREFIX) else {
            continue;
        };
        let processor = processor_of(target).to_string();
        if !processors.contains(&processor) {
            processors.push(processor);
        }
    }
    let version = match version {
        Some(get) => {
            let (mut major, mut minor) = (0usize, 0usize);
            // SAFETY: writes two size_t.
            unsafe { get(&mut major, &mut minor) };
            format!("comgr {major}.{minor}")
        }
        None => "comgr (version unknown)".into(),
    };
    Ok(Isas {
        version,
        processors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_ids_lose_their_features() {
        assert_eq!(processor_of("gfx90a:sramecc+:xnack-"), "gfx90a");
        assert_eq!(processor_of("gfx1030"), "gfx1030");
        assert_eq!(processor_of(" gfx908:xnack+ "), "gfx908");
    }

    #[test]
    fn knows_compares_bare_processors() {
        let isas = Isas {
            version: "comgr 2.4".into(),
            processors: vec!["gfx90a".into(), "gfx1030".into()],
        };
        assert!(isas.knows("gfx90a"));
        assert!(!isas.knows("gfx90"));
        assert!(!isas.knows("gfx1100"));
    }
}
