//! A check of the CUDA C this crate generates that needs no GPU and no
//! CUDA install: clang compiles the exact source NVRTC gets, device code
//! only, to PTX for sm_80, and every kernel must appear as an entry. It
//! catches syntax and type errors in the kernels on machines without a
//! GPU (the device suite runs it, skipped with the reason where clang has
//! no NVPTX target); it does not replace running them.

use std::path::Path;
use std::process::Command;

use crate::kernels::{all_names, source};

/// What clang needs in place of the declarations NVRTC provides itself
/// (clang's own CUDA headers on libdevice's names).
pub const CLANG_SHIM: &str = r#"
#define CUDA_VERSION 11080
typedef __SIZE_TYPE__ size_t;
#include <__clang_cuda_builtin_vars.h>
#define __global__ __attribute__((global))
#define __device__ __attribute__((device))
#define __host__ __attribute__((host))
#define __shared__ __attribute__((shared))
#define __constant__ __attribute__((constant))
#define __forceinline__ __inline__ __attribute__((always_inline))
#define __DEVICE__ static __device__ __forceinline__
#include <__clang_cuda_libdevice_declares.h>
#include <__clang_cuda_device_functions.h>
#define INT_MAX __INT_MAX__
#define INT_MIN (-__INT_MAX__ - 1)
#define HUGE_VAL __builtin_huge_val()
#define HUGE_VALF __builtin_huge_valf()
#include <__clang_cuda_math.h>
#undef __DEVICE__
static __device__ __forceinline__ float __shfl_xor_sync(unsigned m, float v, int o) {
    return __nvvm_shfl_sync_bfly_f32(m, v, o, 0x1f);
}
"#;

/// `clang` when it is on PATH, lists the NVPTX target and has its CUDA
/// headers (the shim includes them; Debian ships them apart from the
/// binary, in libclang-common-*-dev); otherwise why not.
pub fn clang_with_nvptx() -> Result<&'static str, String> {
    let out = Command::new("clang")
        .arg("-print-targets")
        .output()
        .map_err(|e| {
            format!("clang is not on PATH ({e}); install clang to compile the kernels to PTX")
        })?;
    if !String::from_utf8_lossy(&out.stdout).contains("nvptx64") {
        return Err("clang has no NVPTX target".into());
    }
    let dir = Command::new("clang")
        .arg("-print-resource-dir")
        .output()
        .map_err(|e| format!("clang -print-resource-dir: {e}"))?;
    let header = Path::new(String::from_utf8_lossy(&dir.stdout).trim())
        .join("include/__clang_cuda_builtin_vars.h");
    if header.is_file() {
        Ok("clang")
    } else {
        Err(format!(
            "clang's CUDA headers are missing ({} not found; Debian: libclang-common-*-dev, \
             which the clang package pulls in)",
            header.display()
        ))
    }
}

/// Compile the kernels with `clang` in `dir`; an error says what failed.
pub fn compile_kernels_to_ptx(clang: &str, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (shim, cu, ptx) = (
        dir.join("shim.h"),
        dir.join("kernels.cu"),
        dir.join("kernels.ptx"),
    );
    std::fs::write(&shim, CLANG_SHIM).map_err(|e| format!("{}: {e}", shim.display()))?;
    std::fs::write(&cu, source()).map_err(|e| format!("{}: {e}", cu.display()))?;
    let out = Command::new(clang)
        .args(["-x", "cuda", "--cuda-device-only", "--cuda-gpu-arch=sm_80"])
        .args(["-nocudainc", "-nocudalib", "-Werror", "-Wall", "-S"])
        // PTX 7.0 for the *_sync warp shuffles (clang picks an older
        // default without a CUDA install).
        .args([
            "-Xclang",
            "-target-feature",
            "-Xclang",
            "+ptx70",
            "-include",
        ])
        .arg(&shim)
        .arg("-o")
        .arg(&ptx)
        .arg(&cu)
        .output()
        .map_err(|e| format!("running {clang}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{clang} failed on {}:\n{}",
            cu.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = std::fs::read_to_string(&ptx).map_err(|e| format!("{}: {e}", ptx.display()))?;
    let missing: Vec<String> = all_names()
        .into_iter()
        .filter(|name| !text.contains(&format!(".entry {name}(")))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "kernels missing from {}: {}",
            ptx.display(),
            missing.join(", ")
        ))
    }
}
