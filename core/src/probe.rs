//! Backend-neutral probes: GEMM throughput of a device, a measured
//! [`Topology`] from devices and links, and [`StagedLink`] for devices of
//! different backends. Backends supply the devices and the
//! links; the measuring is the same for all of them.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::device::GemmSpec;
use crate::dtype::{DType, HostSlice, HostSliceMut};
use crate::dyn_device::{BoxedBuffer, DynDevice, DynDeviceExt, SharedDevice};
use crate::error::{Error, Result};
use crate::id::DeviceId;
use crate::link::{Link, LinkFit, LinkKind, LinkProbe};
use crate::topology::{Topology, TopologyDevice};

/// How hard to probe a device's compute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GemmProbe {
    /// Square matrix size.
    pub n: usize,
    /// Timed repetitions; the best is reported (throughput probes report the
    /// peak the device reached, not the noise of a shared machine).
    pub repetitions: usize,
}

impl Default for GemmProbe {
    fn default() -> Self {
        GemmProbe {
            n: 1024,
            repetitions: 5,
        }
    }
}

impl GemmProbe {
    /// A cheaper probe for quick listings.
    pub fn quick() -> Self {
        GemmProbe {
            n: 512,
            repetitions: 3,
        }
    }

    /// Measured f32 GEMM throughput of `device`, FLOP/s.
    pub fn measure(&self, device: &dyn DynDevice) -> Result<f64> {
        let n = self.n.max(1);
        let values: Vec<f32> = (0..n * n).map(|i| ((i % 13) as f32 - 6.0) / 8.0).collect();
        let a = device.alloc_from(HostSlice::new(&values))?;
        let b = device.alloc_from(HostSlice::new(&values))?;
        let mut c = device.alloc(DType::F32, n * n)?;
        let spec = GemmSpec::new(n, n, n);
        device.gemm(&spec, a.as_ref(), b.as_ref(), c.as_mut())?;
        device.synchronize()?;
        let mut best = f64::INFINITY;
        for _ in 0..self.repetitions.max(1) {
            let start = Instant::now();
            device.gemm(&spec, a.as_ref(), b.as_ref(), c.as_mut())?;
            device.synchronize()?;
            best = best.min(start.elapsed().as_secs_f64());
        }
        Ok(spec.flops() / best.max(1e-12))
    }
}

/// A link's measurement, with the indices of its endpoints in the device list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasuredLink {
    pub src: DeviceId,
    pub dst: DeviceId,
    pub fit: LinkFit,
}

/// Progress callback of [`measure_topology`]: one line per finished step.
pub type Progress<'a> = &'a mut dyn FnMut(&str);

/// Measure every device's GEMM throughput (if `gemm` is given) and every link
/// that `link_between(i, j)` returns, and build a [`Topology`].
///
/// `link_between` returns `None` for pairs it has no path for; such a pair
/// makes the topology invalid unless `i == j`, so backends return a staged
/// path (through the host) rather than nothing.
pub fn measure_topology(
    devices: &[&dyn DynDevice],
    gemm: Option<&GemmProbe>,
    link_probe: &LinkProbe,
    mut link_between: impl FnMut(usize, usize) -> Result<Option<Box<dyn Link>>>,
    progress: Progress<'_>,
) -> Result<(Topology, Vec<MeasuredLink>)> {
    let mut entries = Vec::with_capacity(devices.len());
    for device in devices {
        let flops = match gemm {
            Some(probe) => {
                let f = probe.measure(*device)?;
                progress(&format!(
                    "{}: {:.1} GFLOP/s (f32 gemm {n}x{n})",
                    device.id(),
                    f / 1e9,
                    n = probe.n
                ));
                Some(f)
            }
            None => None,
        };
        entries.push(TopologyDevice {
            info: device.info(),
            gemm_flops_per_s: flops,
        });
    }
    let n = devices.len();
    let mut links = vec![vec![None; n]; n];
    let mut measured = Vec::new();
    for (i, row) in links.iter_mut().enumerate() {
        for (j, slot) in row.iter_mut().enumerate() {
            let Some(link) = link_between(i, j)? else {
                continue;
            };
            let fit = link_probe.measure(link.as_ref())?;
            progress(&format!(
                "{} -> {}: {:.2} GB/s, {:.1} us latency ({}, r2 {:.3})",
                link.src(),
                link.dst(),
                fit.model.bandwidth_bytes_per_s / 1e9,
                fit.model.latency_s * 1e6,
                fit.model.kind,
                fit.r_squared
            ));
            *slot = Some(fit.model);
            measured.push(MeasuredLink {
                src: link.src(),
                dst: link.dst(),
                fit,
            });
        }
    }
    Ok((Topology::new(entries, links)?, measured))
}

/// A path between two devices of any backends through host memory
/// (download from `src`, upload to `dst`): the real data path between
/// devices that have no direct link, measured as such. Its kind is
/// [`LinkKind::Unknown`]: what the bytes cross depends on both backends.
#[derive(Debug)]
pub struct StagedLink {
    src: SharedDevice,
    dst: SharedDevice,
    state: std::sync::Mutex<Option<(Vec<u8>, BoxedBuffer, BoxedBuffer)>>,
}

impl StagedLink {
    pub fn new(src: SharedDevice, dst: SharedDevice) -> Self {
        StagedLink {
            src,
            dst,
            state: std::sync::Mutex::new(None),
        }
    }
}

impl Link for StagedLink {
    fn src(&self) -> DeviceId {
        self.src.id()
    }

    fn dst(&self) -> DeviceId {
        self.dst.id()
    }

    fn kind(&self) -> LinkKind {
        LinkKind::Unknown
    }

    fn transfer(&self, bytes: usize) -> Result<std::time::Duration> {
        let mut guard = self.state.lock().map_err(|_| Error::DeviceLost {
            device: self.dst.id(),
            reason: "a previous transfer on this link panicked".into(),
        })?;
        if guard.as_ref().is_none_or(|(h, _, _)| h.len() < bytes) {
            *guard = None;
            let s = self.src.alloc(DType::U8, bytes)?;
            let d = self.dst.alloc(DType::U8, bytes)?;
            *guard = Some((vec![0u8; bytes], s, d));
        }
        let Some((host, s, d)) = guard.as_mut() else {
            return Err(Error::invalid("link buffers", "missing after allocation"));
        };
        let start = Instant::now();
        self.src
            .download(s.as_ref(), 0, HostSliceMut::new(&mut host[..bytes]))?;
        self.dst
            .upload(d.as_mut(), 0, HostSlice::new(&host[..bytes]))?;
        self.dst.synchronize()?;
        Ok(start.elapsed())
    }
}
