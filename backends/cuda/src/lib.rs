//! hetero-cuda: NVIDIA GPUs through cudarc.
//!
//! cudarc is used with dynamic loading, so this crate builds on any machine,
//! with no CUDA toolkit or driver. At run time every entry point first checks
//! that the library it needs can be loaded (`libcuda`, `libnvrtc`,
//! `libcublas`, `libnccl`); a machine without them gets
//! [`hetero_core::Error::Unsupported`] saying what is missing, never a panic
//! (cudarc itself panics when it cannot find a library, hence the checks).
//!
//! - [`CudaDevice`]: real free/total memory (`cuMemGetInfo`), allocation with
//!   out-of-memory as an error, copies on the device's stream, reduce /
//!   average / scale kernels for every dtype compiled once per device by
//!   NVRTC, cuBLAS GEMM (f32, f64, f16, bf16).
//! - [`CudaHostLink`]: host <-> GPU and on-GPU transfers, measured as links.
//! - [`CudaPeerLink`]: GPU -> GPU copies (`cuMemcpyPeerAsync`, with peer
//!   access enabled where the driver allows it), kind NVLink or PCIe as
//!   NVML tells ([`Nvml`], loaded at run time like the rest).
//!
//! What this crate must not do: depend on another backend or on
//! `hetero-collectives` (an NCCL unique id crosses as bytes).

mod device;
mod error;
mod link;
mod nccl;
mod nccl_wait;
mod nvml;
pub mod ptx_check;

// The kernel source is shared with hetero-rocm (one text for NVRTC and hiprtc).
use hetero_gpu_kernels as kernels;

pub use device::{CudaBuffer, CudaDevice, PeerPath};
pub use error::CudaError;
pub use link::{CudaHostLink, CudaPeerLink, Direction};
pub use nccl::{DEFAULT_NCCL_TIMEOUT, NCCL_UNIQUE_ID_BYTES, NcclCollective};
pub use nvml::{Nvml, PciAddress, PcieLink};

use hetero_core::Result;

/// True when `libcuda` can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

pub(crate) fn nvrtc_present() -> bool {
    // SAFETY: as above.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// True when `libcuda` and `libnccl` can both be loaded.
pub fn nccl_present() -> bool {
    // SAFETY: only tries to dlopen the libraries by their usual names.
    driver_present() && unsafe { cudarc::nccl::sys::is_culib_present() }
}

pub(crate) fn cublas_present() -> bool {
    // SAFETY: as above.
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

pub(crate) fn check_driver() -> Result<()> {
    if driver_present() {
        Ok(())
    } else {
        Err(CudaError::NoDriver.into())
    }
}

/// The driver's CUDA version, e.g. "CUDA 13.0", when the driver can tell.
pub fn driver_version() -> Option<String> {
    if !driver_present() {
        return None;
    }
    let mut version = 0;
    // SAFETY: the driver library is present; cuDriverGetVersion writes one int.
    let status = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
    (status == cudarc::driver::sys::CUresult::CUDA_SUCCESS)
        .then(|| format!("CUDA {}.{}", version / 1000, (version % 1000) / 10))
}

/// Number of CUDA devices; an `Unsupported` error saying why when there are none.
pub fn device_count() -> Result<usize> {
    check_driver()?;
    cudarc::driver::result::init()
        .map_err(|e| CudaError::NoDevice(format!("cuInit failed: {e:?}")))?;
    let n = cudarc::driver::CudaContext::device_count()
        .map_err(|e| CudaError::NoDevice(format!("cuDeviceGetCount failed: {e:?}")))?;
    if n <= 0 {
        return Err(CudaError::NoDevice("the driver reports 0 devices".into()).into());
    }
    Ok(n as usize)
}

/// Every CUDA device of this machine, or an `Unsupported` error saying why
/// there are none (no driver, no device).
pub fn devices() -> Result<Vec<CudaDevice>> {
    (0..device_count()?).map(CudaDevice::new).collect()
}
