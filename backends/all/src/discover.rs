//! [`discover`]: the devices of every compiled backend.

use hetero_core::Result;

use crate::AnyDevice;

/// `host_devices` host devices (the machine split evenly) plus every device
/// of every compiled accelerator backend. A backend with no devices is
/// reported through `note` (with the reason) and skipped.
pub fn discover(host_devices: usize, note: &mut dyn FnMut(&str)) -> Result<Vec<AnyDevice>> {
    #[cfg_attr(
        not(any(feature = "cuda", feature = "wgpu", feature = "rocm")),
        allow(unused_mut)
    )]
    let mut devices: Vec<AnyDevice> = hetero_host::host_devices(host_devices)?
        .into_iter()
        .map(AnyDevice::Host)
        .collect();
    #[cfg(feature = "cuda")]
    match hetero_cuda::devices() {
        Ok(gpus) => devices.extend(gpus.into_iter().map(AnyDevice::Cuda)),
        Err(e) => note(&format!("cuda: no devices ({e})")),
    }
    #[cfg(feature = "wgpu")]
    match hetero_wgpu::devices() {
        Ok(adapters) => devices.extend(adapters.into_iter().map(AnyDevice::Wgpu)),
        Err(e) => note(&format!("wgpu: no adapters ({e})")),
    }
    #[cfg(feature = "rocm")]
    match hetero_rocm::devices() {
        Ok(gpus) => devices.extend(gpus.into_iter().map(AnyDevice::Rocm)),
        Err(e) => note(&format!("rocm: no devices ({e})")),
    }
    let _ = note;
    Ok(devices)
}
