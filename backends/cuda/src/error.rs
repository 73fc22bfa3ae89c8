//! Errors of the CUDA backend, converted into `hetero_core::Error` at the boundary.

use cudarc::driver::DriverError;
use cudarc::driver::sys::cudaError_enum;
use hetero_core::{Backend, DeviceId, Error};

/// What can go wrong in the CUDA backend.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// `libcuda` could not be loaded: no NVIDIA driver on this machine.
    #[error(
        "no CUDA driver found (libcuda.so could not be loaded); install the NVIDIA driver to use CUDA devices"
    )]
    NoDriver,

    /// The driver loaded but reports no device (or could not initialise).
    #[error("no CUDA device available: {0}")]
    NoDevice(String),

    /// A library the operation needs is missing (NVRTC, cuBLAS, NCCL).
    #[error("{library} not found; {what} needs it (install the CUDA toolkit's {library})")]
    MissingLibrary {
        library: &'static str,
        what: &'static str,
    },

    /// A driver call failed.
    #[error("{call} on {device} failed: {code:?}")]
    Driver {
        device: DeviceId,
        call: &'static str,
        code: cudaError_enum,
        requested_bytes: u64,
    },

    /// NVRTC could not compile hetero's kernels.
    #[error("compiling hetero's CUDA kernels with NVRTC failed: {0}")]
    Compile(String),

    /// A cuBLAS call failed.
    #[error("cuBLAS {call} on {device} failed: {reason}")]
    Cublas {
        device: DeviceId,
        call: &'static str,
        reason: String,
    },

    /// An NCCL call failed.
    #[error("NCCL {call} on rank {rank} failed: {reason}")]
    Nccl {
        call: &'static str,
        rank: usize,
        reason: String,
    },
}

impl CudaError {
    pub(crate) fn driver(device: DeviceId, call: &'static str, e: DriverError) -> Self {
        CudaError::Driver {
            device,
            call,
            code: e.0,
            requested_bytes: 0,
        }
    }
}

impl From<CudaError> for Error {
    fn from(e: CudaError) -> Self {
        match e {
            CudaError::Driver {
                device,
                code: cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY,
                requested_bytes,
                ..
            } => Error::OutOfMemory {
                device,
                requested_bytes,
                available_bytes: None,
            },
            CudaError::Driver {
                code: cudaError_enum::CUDA_ERROR_INVALID_VALUE,
                call,
                ..
            } => Error::invalid(call, "the CUDA driver rejected the arguments"),
            CudaError::Driver { device, .. } => Error::DeviceLost {
                device,
                reason: e.to_string(),
            },
            CudaError::Cublas { device, .. } => Error::DeviceLost {
                device,
                reason: e.to_string(),
            },
            CudaError::Nccl { rank, .. } => Error::PeerFailure {
                rank,
                reason: e.to_string(),
            },
            CudaError::NoDriver
            | CudaError::NoDevice(_)
            | CudaError::MissingLibrary { .. }
            | CudaError::Compile(_) => Error::Unsupported {
                what: e.to_string(),
                component: Backend::Cuda.into(),
            },
        }
    }
}
