//! The one error type every hetero crate converts into.
//!
//! Each variant is something a user or the hardware can cause, with enough
//! context to say what to do about it. Crates keep their own `thiserror` enums
//! for detail and convert into this one at their public boundary.

use std::time::Duration;

use crate::device::{Backend, DeviceId};

/// Result alias used across hetero.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in hetero, as values rather than panics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An allocation did not fit in the device's memory or its budget.
    /// The device is still usable: free something or ask for less.
    #[error(
        "out of memory on {device}: requested {requested_bytes} bytes, {} ; free buffers or lower the batch size",
        match .available_bytes { Some(a) => format!("{a} bytes available"), None => "available memory unknown".to_string() }
    )]
    OutOfMemory {
        device: DeviceId,
        requested_bytes: u64,
        available_bytes: Option<u64>,
    },

    /// The backend (or this device of it) cannot do what was asked.
    /// Never a placeholder: the capability is really missing.
    #[error("unsupported on {backend}: {what}")]
    Unsupported { what: String, backend: Backend },

    /// The device stopped answering (driver reset, adapter removed, ...).
    #[error("device {device} lost: {reason}")]
    DeviceLost { device: DeviceId, reason: String },

    /// Input that cannot be used as given; `field` names what is wrong.
    #[error("invalid {field}: {reason}")]
    InvalidInput { field: String, reason: String },

    /// An operating-system I/O error, with what we were doing at the time.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// Something did not complete in time.
    #[error("timed out after {after:?} while {what}")]
    Timeout { what: String, after: Duration },

    /// Another rank of a communicator failed or went away.
    #[error("peer rank {rank} failed: {reason}")]
    PeerFailure { rank: usize, reason: String },
}

impl Error {
    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Unsupported`].
    pub fn unsupported(backend: Backend, what: impl Into<String>) -> Self {
        Error::Unsupported {
            what: what.into(),
            backend,
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True for [`Error::OutOfMemory`]; callers that shrink and retry use this.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Error::OutOfMemory { .. })
    }

    /// True for [`Error::Unsupported`].
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Error::Unsupported { .. })
    }
}
