//! Shared plumbing of hetero's example binaries: the devices of every
//! compiled backend behind one enum, and the measured link between any two.

use std::sync::Arc;

use hetero_core::{Error, Link, Result, SharedDevice};

/// A binary's exit: success, or the error on stderr and a non-zero code.
pub fn exit_code(result: Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

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

/// A size like `512MiB`, `2GiB`, `1024` (bytes).
pub fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let (num, unit) = t
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((t, ""), |i| t.split_at(i));
    let value: f64 = num.trim().parse().map_err(|_| {
        Error::invalid(
            "memory",
            format!("{text:?} is not a size like 512MiB or 2GiB"),
        )
    })?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kib" | "k" => 1024.0,
        "mib" | "m" => 1024.0 * 1024.0,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(Error::invalid(
                "memory",
                format!("unknown unit {other:?}; use B, KiB, MiB or GiB"),
            ));
        }
    };
    Ok((value * scale) as u64)
}

/// Resolve `--device` specs (`host:threads=N,memory=SIZE`, `cuda:0`,
/// `wgpu:1`, `rocm:0`) against the devices found; each `host:` spec makes
/// a new host device.
pub fn select_devices(specs: &[String], found: &[AnyDevice]) -> Result<Vec<AnyDevice>> {
    let mut host_count = 0u32;
    let host_count = &mut host_count;
    let mut out = Vec::new();
    for spec in specs {
        let (kind, rest) = spec.split_once(':').unwrap_or((spec.as_str(), ""));
        if kind == "host" {
            let mut b = hetero_host::HostDevice::builder().index(*host_count);
            *host_count += 1;
            for kv in rest.split(',').filter(|s| !s.is_empty()) {
                match kv.split_once('=') {
                    Some(("threads", v)) => {
                        b = b.threads(v.parse().map_err(|_| {
                            Error::invalid(
                                "device",
                                format!("threads={v} in {spec:?} is not a number"),
                            )
                        })?)
                    }
                    Some(("memory", v)) => b = b.memory_budget(parse_bytes(v)?),
                    _ => {
                        return Err(Error::invalid(
                            "device",
                            format!("{kv:?} in {spec:?}: host takes threads=N and memory=SIZE"),
                        ));
                    }
                }
            }
            out.push(AnyDevice::Host(b.build()?));
            continue;
        }
        let index: u32 = rest.parse().map_err(|_| {
            Error::invalid(
                "device",
                format!("{spec:?}: expected BACKEND:INDEX, e.g. cuda:0"),
            )
        })?;
        let hit = found.iter().find(|d| {
            let id = d.as_dyn().id();
            id.backend.name() == kind && id.index == index
        });
        match hit {
            Some(d) => out.push(d.clone()),
            None => {
                let names: Vec<String> =
                    found.iter().map(|d| d.as_dyn().id().to_string()).collect();
                return Err(Error::invalid(
                    "device",
                    format!("{spec:?} was not found; available: {}", names.join(", ")),
                ));
            }
        }
    }
    Ok(out)
}
