//! The one error type every hetero crate converts into.
//!
//! Each variant is something a user or the hardware can cause, with enough
//! context to say what to do about it. Crates keep their own `thiserror` enums
//! for detail and convert into this one at their public boundary.

use std::fmt;
use std::time::Duration;

use crate::id::{Backend, DeviceId};

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

    /// A backend (or one device of it), or a part of hetero that is no
    /// device (MPI, the sync executor, a binary), cannot do what was asked.
    /// Never a placeholder: the capability is really missing.
    #[error("unsupported {} {component}: {what}", .component.preposition())]
    Unsupported { what: String, component: Component },

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

    /// Shorthand for [`Error::Unsupported`] on a device backend.
    pub fn unsupported(backend: Backend, what: impl Into<String>) -> Self {
        Error::Unsupported {
            what: what.into(),
            component: Component::Backend(backend),
        }
    }

    /// Shorthand for [`Error::Unsupported`] in a part of hetero that is no
    /// device, named by `component` (`"MPI"`, `"sync executor"`, a binary).
    pub fn unsupported_in(component: &'static str, what: impl Into<String>) -> Self {
        Error::Unsupported {
            what: what.into(),
            component: Component::Named(component),
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

/// What lacks a capability in [`Error::Unsupported`]: a device backend, or a
/// part of hetero that is no device. Code that is not a device names itself
/// rather than pretending to be [`Backend::Host`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Component {
    /// A device backend: the devices of it, or one of them.
    Backend(Backend),
    /// A part that is no device, by name: `"MPI"`, `"sync executor"`, a binary.
    Named(&'static str),
}

impl Component {
    /// The backend, when what lacks the capability is one.
    pub fn backend(self) -> Option<Backend> {
        match self {
            Component::Backend(b) => Some(b),
            Component::Named(_) => None,
        }
    }

    /// "on cuda" reads right for a backend, "in MPI" for a component.
    fn preposition(self) -> &'static str {
        match self {
            Component::Backend(_) => "on",
            Component::Named(_) => "in",
        }
    }
}

impl From<Backend> for Component {
    fn from(backend: Backend) -> Self {
        Component::Backend(backend)
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Component::Backend(b) => b.fmt(f),
            Component::Named(name) => f.write_str(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_names_the_backend_or_the_component() {
        let on_device = Error::unsupported(Backend::Cuda, "gemm on u8");
        assert_eq!(on_device.to_string(), "unsupported on cuda: gemm on u8");
        assert!(on_device.is_unsupported());
        assert!(matches!(
            on_device,
            Error::Unsupported { component, .. } if component.backend() == Some(Backend::Cuda)
        ));
        let elsewhere = Error::unsupported_in("MPI", "f16 reductions");
        assert_eq!(elsewhere.to_string(), "unsupported in MPI: f16 reductions");
        assert!(matches!(
            elsewhere,
            Error::Unsupported {
                component: Component::Named("MPI"),
                ..
            }
        ));
    }
}
