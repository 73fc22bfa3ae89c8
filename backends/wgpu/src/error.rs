//! Errors of the wgpu backend, converted into `hetero_core::Error`.

use hetero_core::{Backend, DeviceId, Error};

/// What can go wrong in the wgpu backend.
#[derive(Debug, thiserror::Error)]
pub enum WgpuError {
    /// No adapter was found (no Vulkan / Metal / DX12 / GL driver).
    #[error(
        "no wgpu adapter found{0}; on Debian, mesa-vulkan-drivers gives a Vulkan adapter (lavapipe) and libgl1-mesa-dri + libegl-mesa0 a GL one (llvmpipe)"
    )]
    NoAdapter(String),

    /// The adapter refused to create a device.
    #[error("requesting a device from the adapter failed: {0}")]
    RequestDevice(String),

    /// An out-of-memory error scope caught an error, or the budget or a limit was exceeded.
    #[error("out of memory on {device} while {what}: {reason}")]
    OutOfMemory {
        device: DeviceId,
        what: &'static str,
        reason: String,
    },

    /// wgpu's validation rejected a call (a bug in hetero if it ever happens).
    #[error("wgpu rejected {what} on {device}: {reason}")]
    Validation {
        device: DeviceId,
        what: &'static str,
        reason: String,
    },
}

impl From<WgpuError> for Error {
    fn from(e: WgpuError) -> Self {
        match e {
            WgpuError::OutOfMemory { device, .. } => Error::OutOfMemory {
                device,
                requested_bytes: 0,
                available_bytes: None,
            },
            WgpuError::Validation { what, .. } => Error::invalid(what, e.to_string()),
            WgpuError::NoAdapter(_) | WgpuError::RequestDevice(_) => Error::Unsupported {
                what: e.to_string(),
                component: Backend::Wgpu.into(),
            },
        }
    }
}
