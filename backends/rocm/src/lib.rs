//! hetero-rocm: AMD GPUs through the HIP runtime.
//!
//! Behind the `rocm` feature, which links `libamdhip64` (through `hip-sys`),
//! so it needs the HIP runtime to build: Debian's `libamdhip64-dev` with
//! `HIP_PATH=/usr`, or a ROCm install under `/opt/rocm`. Without the feature
//! the crate still builds, and [`devices`] says why there are none.
//!
//! - [`RocmDevice`] (feature `rocm`): device count and name, real free/total
//!   memory (`hipMemGetInfo`), allocation with `hipErrorOutOfMemory` as
//!   `Error::OutOfMemory`, copies, peer copies (`hipMemcpyPeer`).
//! - Kernels: Debian ships neither a HIP kernel compiler (hiprtc) nor
//!   hipBLAS, so reduce / average / scale **stage through the host** (download,
//!   `hetero_core::host_kernels`, upload), and GEMM is `Error::Unsupported`.
//!   Both facts are reported by `capabilities()` and in this documentation;
//!   nothing is faked.
//!
//! What this crate must not do: depend on another backend.

mod error;
#[cfg(feature = "rocm")]
mod hip;

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
