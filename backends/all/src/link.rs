//! [`link_between`]: the measured path between two devices of any backends.

use hetero_core::Link;

use crate::AnyDevice;

/// The measured path from `a` to `b`: the backend's own link where it has
/// one, otherwise `StagedLink` through host memory.
pub fn link_between(a: &AnyDevice, b: &AnyDevice) -> Box<dyn Link> {
    match (a, b) {
        (AnyDevice::Host(x), AnyDevice::Host(y)) => {
            Box::new(hetero_host::HostLink::new(x.clone(), y.clone()))
        }
        #[cfg(feature = "cuda")]
        (AnyDevice::Host(h), AnyDevice::Cuda(g)) => Box::new(hetero_cuda::CudaHostLink::new(
            g.clone(),
            hetero_core::Device::id(h),
            hetero_cuda::Direction::HostToDevice,
        )),
        #[cfg(feature = "cuda")]
        (AnyDevice::Cuda(g), AnyDevice::Host(h)) => Box::new(hetero_cuda::CudaHostLink::new(
            g.clone(),
            hetero_core::Device::id(h),
            hetero_cuda::Direction::DeviceToHost,
        )),
        #[cfg(feature = "cuda")]
        (AnyDevice::Cuda(x), AnyDevice::Cuda(y)) if x.ordinal() == y.ordinal() => {
            Box::new(hetero_cuda::CudaHostLink::new(
                x.clone(),
                hetero_core::Device::id(x),
                hetero_cuda::Direction::OnDevice,
            ))
        }
        // Two GPUs: the peer path, unless the driver cannot even say whether
        // one exists; then through host memory like any other pair.
        #[cfg(feature = "cuda")]
        (AnyDevice::Cuda(x), AnyDevice::Cuda(y)) => {
            match hetero_cuda::CudaPeerLink::new(x.clone(), y.clone()) {
                Ok(link) => Box::new(link),
                Err(_) => Box::new(hetero_core::probe::StagedLink::new(a.shared(), b.shared())),
            }
        }
        #[cfg(feature = "wgpu")]
        (AnyDevice::Host(h), AnyDevice::Wgpu(g)) => Box::new(hetero_wgpu::WgpuLink::new(
            g.clone(),
            hetero_core::Device::id(h),
            hetero_wgpu::WgpuDirection::HostToDevice,
        )),
        #[cfg(feature = "wgpu")]
        (AnyDevice::Wgpu(g), AnyDevice::Host(h)) => Box::new(hetero_wgpu::WgpuLink::new(
            g.clone(),
            hetero_core::Device::id(h),
            hetero_wgpu::WgpuDirection::DeviceToHost,
        )),
        #[cfg(feature = "wgpu")]
        (AnyDevice::Wgpu(x), AnyDevice::Wgpu(y))
            if hetero_core::Device::id(x) == hetero_core::Device::id(y) =>
        {
            Box::new(hetero_wgpu::WgpuLink::new(
                x.clone(),
                hetero_core::Device::id(x),
                hetero_wgpu::WgpuDirection::OnDevice,
            ))
        }
        #[cfg(feature = "rocm")]
        (AnyDevice::Host(h), AnyDevice::Rocm(g)) => Box::new(hetero_rocm::RocmLink::new(
            g.clone(),
            hetero_rocm::RocmLinkPath::HostToDevice(hetero_core::Device::id(h)),
        )),
        #[cfg(feature = "rocm")]
        (AnyDevice::Rocm(g), AnyDevice::Host(h)) => Box::new(hetero_rocm::RocmLink::new(
            g.clone(),
            hetero_rocm::RocmLinkPath::DeviceToHost(hetero_core::Device::id(h)),
        )),
        #[cfg(feature = "rocm")]
        (AnyDevice::Rocm(x), AnyDevice::Rocm(y)) => Box::new(hetero_rocm::RocmLink::new(
            x.clone(),
            if x.ordinal() == y.ordinal() {
                hetero_rocm::RocmLinkPath::OnDevice
            } else {
                hetero_rocm::RocmLinkPath::Peer(y.clone())
            },
        )),
        // Devices of two accelerator backends, or two wgpu adapters:
        // through host memory.
        #[allow(unreachable_patterns)]
        (x, y) => Box::new(hetero_core::probe::StagedLink::new(x.shared(), y.shared())),
    }
}
