//! hetero-rocm: AMD GPUs through the HIP runtime, with kernels compiled at
//! run time by hiprtc.
//!
//! The device is behind the `rocm` feature, which links `libamdhip64`
//! (through `hip-sys`), so it needs the HIP runtime to build: Debian's
//! `libamdhip64-dev` with `HIP_PATH=/usr`, or a ROCm install under
//! `/opt/rocm`. Without the feature the crate still builds, and [`devices`]
//! says why there are none.
//!
//! - [`RocmDevice`] (feature `rocm`): device count and name, real free/total
//!   memory (`hipMemGetInfo`), allocation with `hipErrorOutOfMemory` as
//!   `Error::OutOfMemory`, copies, peer copies (`hipMemcpyPeer`).
//! - Kernels on the GPU: the shared CUDA C / HIP source of
//!   `hetero-gpu-kernels` (the one hetero-cuda gives NVRTC), compiled by
//!   hiprtc for the device's own processor (`gcnArchName`), cached per
//!   processor in memory and on disk ([`code_cache`]), loaded with
//!   `hipModuleLoadData` and launched with `hipModuleLaunchKernel`:
//!   reduce / average / scale for every dtype, a tiled GEMM (f32, f64, f16,
//!   bf16; Debian ships no rocBLAS / hipBLAS), the decode-step and
//!   Llama-family kernels (f32) and the embedding gather. Debian 12's
//!   `libamdhip64.so.5` (ROCm 5.2) exports hiprtc itself.
//! - [`rtc`] and [`comgr`] load hiprtc and the code object manager at run
//!   time, with or without the feature: the compile test needs no GPU. A
//!   processor the installed ROCm does not know (its comgr does not list
//!   it: gfx942 and gfx1100 on ROCm 5.2) is `Error::Unsupported` naming the
//!   processor and the installed ROCm, never a hiprtc call (which would
//!   abort the process); such a GPU announces no kernels in
//!   `capabilities()` and every kernel call says why.
//!
//! What this crate must not do: depend on another backend; stage a kernel
//! through the host and report it as a GPU kernel.

pub mod code_cache;
pub mod comgr;
mod error;
#[cfg(feature = "rocm")]
mod hip;
#[cfg(feature = "rocm")]
mod module;
pub mod rtc;

pub use error::RocmError;
#[cfg(feature = "rocm")]
pub use hip::{RocmBuffer, RocmDevice, RocmLink, RocmLinkPath};

use hetero_core::Result;

/// Every AMD GPU of this machine, or an `Unsupported` error saying why there
/// are none (built without `rocm`, no device, runtime failure).
#[cfg(feature = "rocm")]
pub fn devices() -> Result<Vec<RocmDevice>> {
    (0..hip::device_count()?).map(RocmDevice::new).collect()
}

/// Every AMD GPU of this machine: none, since this build has no `rocm` feature.
#[cfg(not(feature = "rocm"))]
pub fn devices() -> Result<Vec<std::convert::Infallible>> {
    Err(RocmError::NotBuilt.into())
}
