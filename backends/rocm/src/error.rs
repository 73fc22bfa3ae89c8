//! Errors of the ROCm backend, converted into `hetero_core::Error`.

use hetero_core::{Backend, DeviceId, Error};

/// HIP's status code for out of memory.
pub(crate) const HIP_ERROR_OUT_OF_MEMORY: i32 = 2;
/// HIP's status code for an invalid argument.
pub(crate) const HIP_ERROR_INVALID_VALUE: i32 = 1;
/// HIP's status code when there is no device.
#[cfg_attr(not(feature = "rocm"), allow(dead_code))]
pub(crate) const HIP_ERROR_NO_DEVICE: i32 = 100;

/// What can go wrong in the ROCm backend.
#[derive(Debug, thiserror::Error)]
pub enum RocmError {
    /// This build of hetero-rocm has no `rocm` feature.
    #[error(
        "hetero-rocm was built without the `rocm` feature; rebuild with it (needs the HIP runtime: libamdhip64-dev with HIP_PATH=/usr, or /opt/rocm)"
    )]
    NotBuilt,

    /// The HIP runtime reports no usable device.
    #[error("no AMD GPU available: {0}")]
    NoDevice(String),

    /// A library loaded at run time (hiprtc, comgr) is missing.
    #[error("{library} is not loadable ({tried}); it is needed for {what}")]
    MissingLibrary {
        library: &'static str,
        what: &'static str,
        tried: String,
    },

    /// The installed ROCm's compiler does not know this GPU architecture
    /// (compiling for it would abort the process inside hiprtc).
    #[error(
        "the installed ROCm ({rocm}) cannot compile kernels for {arch}: its code object manager lists {known}; a newer ROCm is needed"
    )]
    UnknownArch {
        arch: String,
        rocm: String,
        known: String,
    },

    /// hiprtc failed: a call's status, or the compiler's log.
    #[error("hiprtc {call} for {arch} failed with status {code}: {log}")]
    Compile {
        arch: String,
        call: &'static str,
        code: i32,
        log: String,
    },

    /// A HIP call failed with a status code.
    #[error("{call} on {device} failed with HIP status {code}")]
    Hip {
        device: DeviceId,
        call: &'static str,
        code: i32,
        requested_bytes: u64,
    },
}

impl From<RocmError> for Error {
    fn from(e: RocmError) -> Self {
        match e {
            RocmError::Hip {
                device,
                code: HIP_ERROR_OUT_OF_MEMORY,
                requested_bytes,
                ..
            } => Error::OutOfMemory {
                device,
                requested_bytes,
                available_bytes: None,
            },
            RocmError::Hip {
                code: HIP_ERROR_INVALID_VALUE,
                call,
                ..
            } => Error::invalid(call, "the HIP runtime rejected the arguments"),
            RocmError::Hip { device, .. } => Error::DeviceLost {
                device,
                reason: e.to_string(),
            },
            RocmError::NotBuilt
            | RocmError::NoDevice(_)
            | RocmError::MissingLibrary { .. }
            | RocmError::UnknownArch { .. }
            | RocmError::Compile { .. } => Error::Unsupported {
                what: e.to_string(),
                component: Backend::Rocm.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_core_errors() {
        let device = DeviceId::new(Backend::Rocm, 0);
        let oom = Error::from(RocmError::Hip {
            device,
            call: "hipMalloc",
            code: HIP_ERROR_OUT_OF_MEMORY,
            requested_bytes: 64,
        });
        assert!(oom.is_out_of_memory());
        let lost = Error::from(RocmError::Hip {
            device,
            call: "hipMemcpy",
            code: 999,
            requested_bytes: 0,
        });
        assert!(matches!(lost, Error::DeviceLost { .. }), "{lost}");
        assert!(Error::from(RocmError::NotBuilt).is_unsupported());
        let unknown = Error::from(RocmError::UnknownArch {
            arch: "gfx1100".into(),
            rocm: "hiprtc 5.2".into(),
            known: "gfx90a".into(),
        });
        assert!(unknown.is_unsupported() && unknown.to_string().contains("gfx1100"));
        assert_eq!(HIP_ERROR_NO_DEVICE, 100);
    }
}
