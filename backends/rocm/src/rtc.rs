//! hiprtc, HIP's run-time compiler, loaded at run time: compiles the shared
//! kernel source (`hetero-gpu-kernels`) into an AMD GPU code object.
//!
//! Loaded with `libloading` rather than linked, so this module works with
//! or without the `rocm` feature (the compile test needs no GPU and no
//! feature) and across ROCm versions: ROCm 5.2 (Debian 12) exports hiprtc
//! from `libamdhip64.so.5`, later ROCm from a `libhiprtc.so` of its own.
//!
//! Every compile first checks the processor against the installed comgr's
//! list ([`crate::comgr`]) and targets the bare processor: an unknown one
//! is [`RocmError::UnknownArch`], never a call that would abort the
//! process. Compiles are serialised (hiprtc's thread safety is not
//! documented for ROCm 5.2, and they are rare: once per architecture).

use std::ffi::{CString, c_char, c_int};
use std::sync::{Mutex, OnceLock};

use libloading::Library;

use crate::comgr::{self, processor_of};
use crate::error::RocmError;

/// Libraries that may export hiprtc, in the order tried: hiprtc's own
/// library (ROCm 5.3 and later), then the HIP runtime (ROCm 5.2 and older).
const LIBRARIES: [&str; 6] = [
    "libhiprtc.so",
    "libhiprtc.so.6",
    "libhiprtc.so.5",
    "libamdhip64.so",
    "libamdhip64.so.6",
    "libamdhip64.so.5",
];

type Program = *mut std::ffi::c_void;
type Status = c_int;

/// hiprtc's entry points (hiprtc.h), copied out of the library.
struct Api {
    create: unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> Status,
    compile: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> Status,
    log_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    log: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    code_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    code: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    destroy: unsafe extern "C" fn(*mut Program) -> Status,
    /// The library it came from as loaded, e.g. `libamdhip64.so.5.2.21153`
    /// (the file name carries the ROCm version; `hiprtcVersion` does not:
    /// ROCm 5.2's answers 9.0).
    library: String,
    /// Keeps the functions above loaded; never unloaded.
    _lib: Library,
    /// One compile at a time.
    lock: Mutex<()>,
}

/// hiprtc, or why it cannot be loaded.
fn api() -> Result<&'static Api, RocmError> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(load)
        .as_ref()
        .map_err(|tried| RocmError::MissingLibrary {
            library: "hiprtc",
            what: "compiling the GPU kernels (Debian: libamdhip64-5, libhiprtc-builtins5, libamd-comgr2)",
            tried: tried.clone(),
        })
}

fn load() -> Result<Api, String> {
    let mut tried = Vec::new();
    for name in LIBRARIES {
        // SAFETY: loading the HIP runtime / hiprtc runs only their own
        // initialisers (no device is touched until a HIP call).
        let lib = match unsafe { Library::new(name) } {
            Ok(lib) => lib,
            Err(e) => {
                tried.push(format!("{name}: {e}"));
                continue;
            }
        };
        match bind(lib, name) {
            Ok(api) => return Ok(api),
            Err(e) => tried.push(format!("{name}: {e}")),
        }
    }
    Err(tried.join("; "))
}

fn bind(lib: Library, library: &'static str) -> Result<Api, String> {
    // SAFETY: the function types are hiprtc.h's (stable since ROCm 4.2).
    unsafe {
        Ok(Api {
            create: *lib
                .get(b"hiprtcCreateProgram\0")
                .map_err(|e| e.to_string())?,
            compile: *lib
                .get(b"hiprtcCompileProgram\0")
                .map_err(|e| e.to_string())?,
            log_size: *lib
                .get(b"hiprtcGetProgramLogSize\0")
                .map_err(|e| e.to_string())?,
            log: *lib
                .get(b"hiprtcGetProgramLog\0")
                .map_err(|e| e.to_string())?,
            code_size: *lib.get(b"hiprtcGetCodeSize\0").map_err(|e| e.to_string())?,
            code: *lib.get(b"hiprtcGetCode\0").map_err(|e| e.to_string())?,
            destroy: *lib
                .get(b"hiprtcDestroyProgram\0")
                .map_err(|e| e.to_string())?,
            library: loaded_file_name(library).unwrap_or_else(|| library.to_string()),
            _lib: lib,
            lock: Mutex::new(()),
        })
    }
}

/// The file a library loaded as `name` (e.g. `libamdhip64.so`) maps, by
/// its real name (`libamdhip64.so.5.2.21153`), from `/proc/self/maps`.
fn loaded_file_name(name: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter_map(|path| path.rsplit('/').next())
        .find(|file| file.starts_with(name))
        .map(str::to_string)
}

/// The installed ROCm's compiler in words, e.g. "hiprtc of
/// libamdhip64.so.5.2.21153, comgr 2.4"; an error when hiprtc or comgr
/// cannot be loaded.
pub fn compiler_version() -> Result<String, RocmError> {
    let api = api()?;
    let isas = comgr::isas()?;
    Ok(format!("hiprtc of {}, {}", api.library, isas.version))
}

/// `Ok` when kernels can be compiled for `target_id` (its bare processor is
/// known to the installed comgr and hiprtc loads), else why not.
pub fn check_target(target_id: &str) -> Result<(), RocmError> {
    api()?;
    let isas = comgr::isas()?;
    let processor = processor_of(target_id);
    if isas.knows(processor) {
        Ok(())
    } else {
        Err(RocmError::UnknownArch {
            arch: target_id.to_string(),
            rocm: compiler_version()?,
            known: isas.processors.join(", "),
        })
    }
}

/// hiprtc's options for `processor` (a bare name such as "gfx90a").
pub fn options(processor: &str) -> Vec<String> {
    vec![format!("--offload-arch={processor}"), "-O3".into()]
}

/// Compile `source` for `target_id`'s processor (features such as
/// `:xnack-` are dropped, see [`comgr::processor_of`]) and return the code
/// object `hipModuleLoadData` takes.
pub fn compile(source: &str, target_id: &str) -> Result<Vec<u8>, RocmError> {
    check_target(target_id)?;
    let api = api()?;
    let processor = processor_of(target_id);
    let fail = |call: &'static str, code: Status, log: String| RocmError::Compile {
        arch: processor.to_string(),
        call,
        code,
        log,
    };
    let src = CString::new(source).map_err(|_| fail("source", -1, "contains a NUL byte".into()))?;
    let options: Vec<CString> = options(processor)
        .into_iter()
        .map(|o| CString::new(o).unwrap_or_default())
        .collect();
    let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    let _serial = api
        .lock
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut program: Program = std::ptr::null_mut();
    // SAFETY: the strings outlive the call; no headers are passed.
    let status = unsafe {
        (api.create)(
            &mut program,
            src.as_ptr(),
            c"hetero_kernels.cu".as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if status != 0 {
        return Err(fail("hiprtcCreateProgram", status, String::new()));
    }
    let result = (|| {
        // SAFETY: `program` is live; the option strings outlive the call.
        let status =
            unsafe { (api.compile)(program, option_ptrs.len() as c_int, option_ptrs.as_ptr()) };
        if status != 0 {
            return Err(fail(
                "hiprtcCompileProgram",
                status,
                program_log(api, program),
            ));
        }
        let mut size = 0usize;
        // SAFETY: writes one size_t.
        let status = unsafe { (api.code_size)(program, &mut size) };
        if status != 0 || size == 0 {
            return Err(fail("hiprtcGetCodeSize", status, program_log(api, program)));
        }
        let mut code = vec![0u8; size];
        // SAFETY: `code` holds the `size` bytes hiprtc writes.
        let status = unsafe { (api.code)(program, code.as_mut_ptr().cast()) };
        if status != 0 {
            return Err(fail("hiprtcGetCode", status, program_log(api, program)));
        }
        Ok(code)
    })();
    // SAFETY: destroys the program created above, once.
    unsafe { (api.destroy)(&mut program) };
    result
}

/// The compiler's log of `program` (empty when it has none).
fn program_log(api: &Api, program: Program) -> String {
    let mut size = 0usize;
    // SAFETY: writes one size_t.
    if unsafe { (api.log_size)(program, &mut size) } != 0 || size == 0 {
        return String::new();
    }
    let mut log = vec![0u8; size];
    // SAFETY: `log` holds the `size` bytes (NUL included) hiprtc writes.
    if unsafe { (api.log)(program, log.as_mut_ptr().cast()) } != 0 {
        return String::new();
    }
    String::from_utf8_lossy(&log)
        .trim_end_matches('\0')
        .trim()
        .to_string()
}

/// Whether the code object defines kernel `name`: its kernel descriptor
/// symbol `name.kd` is a whole entry of the ELF's string table (NUL before
/// and after).
pub fn defines_kernel(code: &[u8], name: &str) -> bool {
    let symbol = format!("\0{name}.kd\0");
    code.windows(symbol.len()).any(|w| w == symbol.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_symbols_are_found_whole() {
        let code = b"\x7fELF\0hetero_scale_f32.kd\0hetero_gemm_f16.kd\0";
        assert!(defines_kernel(code, "hetero_scale_f32"));
        assert!(defines_kernel(code, "hetero_gemm_f16"));
        assert!(!defines_kernel(code, "hetero_scale_f3"));
        assert!(!defines_kernel(code, "hetero_gemm_f32"));
        assert!(!defines_kernel(code, "gemm_f16"));
    }
}
