//! Identity of a device: the [`Backend`] it belongs to and its [`DeviceId`].
//!
//! A module of its own because both `device.rs` (the `Device` trait) and
//! `error.rs` (errors name the device they happened on) need these types;
//! keeping them here means neither of those imports the other for them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The backend a device belongs to. Part of every [`DeviceId`], so ids of
/// different backends never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Backend {
    Host,
    Wgpu,
    Cuda,
    Rocm,
}

impl Backend {
    pub const fn name(self) -> &'static str {
        match self {
            Backend::Host => "host",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
            Backend::Rocm => "rocm",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A device's identity: its backend and its index within that backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceId {
    pub backend: Backend,
    pub index: u32,
}

impl DeviceId {
    pub const fn new(backend: Backend, index: u32) -> Self {
        DeviceId { backend, index }
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.backend, self.index)
    }
}
