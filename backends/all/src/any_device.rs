//! [`AnyDevice`]: a device of any compiled backend.

use std::sync::Arc;

use hetero_core::SharedDevice;

/// A device of any compiled backend. An enum rather than a trait object so
/// that choosing the link between two devices stays an exhaustive match.
#[derive(Debug, Clone)]
pub enum AnyDevice {
    Host(hetero_host::HostDevice),
    #[cfg(feature = "cuda")]
    Cuda(hetero_cuda::CudaDevice),
    #[cfg(feature = "wgpu")]
    Wgpu(hetero_wgpu::WgpuDevice),
    #[cfg(feature = "rocm")]
    Rocm(hetero_rocm::RocmDevice),
}

impl AnyDevice {
    pub fn as_dyn(&self) -> &dyn hetero_core::DynDevice {
        match self {
            AnyDevice::Host(d) => d,
            #[cfg(feature = "cuda")]
            AnyDevice::Cuda(d) => d,
            #[cfg(feature = "wgpu")]
            AnyDevice::Wgpu(d) => d,
            #[cfg(feature = "rocm")]
            AnyDevice::Rocm(d) => d,
        }
    }

    /// Where the device's memory figure comes from, for tools to print
    /// next to it: a wgpu adapter's budget source (an override, the DRM
    /// VRAM total, a software adapter's share of the host's memory, or the
    /// fallback with the reason); `None` for backends whose figure is the
    /// driver's own (CUDA, ROCm) or the host's budget.
    pub fn memory_source(&self) -> Option<String> {
        match self {
            #[cfg(feature = "wgpu")]
            AnyDevice::Wgpu(d) => Some(d.memory_source().to_string()),
            _ => None,
        }
    }

    pub fn shared(&self) -> SharedDevice {
        match self {
            AnyDevice::Host(d) => Arc::new(d.clone()),
            #[cfg(feature = "cuda")]
            AnyDevice::Cuda(d) => Arc::new(d.clone()),
            #[cfg(feature = "wgpu")]
            AnyDevice::Wgpu(d) => Arc::new(d.clone()),
            #[cfg(feature = "rocm")]
            AnyDevice::Rocm(d) => Arc::new(d.clone()),
        }
    }
}
