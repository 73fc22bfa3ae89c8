//! Links of a CUDA device: host <-> GPU copies and copies within the GPU.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hetero_core::{
    DType, Device, DeviceBuffer, DeviceId, Error, HostSlice, HostSliceMut, Link, LinkKind, Result,
};

use crate::device::{CudaBuffer, CudaDevice, PeerPath};

/// Which way a [`CudaHostLink`] moves data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    HostToDevice,
    DeviceToHost,
    /// Within the GPU's own memory.
    OnDevice,
}

/// The path between host memory (device `host`, any backend's CPU device id)
/// and a GPU, or within one GPU. Transfers use the same calls as
/// [`Device::upload`] / [`Device::download`] / [`Device::copy`] with
/// pageable host memory, so the measured figures are what hetero's own
/// staging gets. Host <-> GPU is reported as PCIe ([`CudaDevice::pcie_link`]
/// gives its generation and width through NVML); a Grace Hopper C2C link is
/// not told apart yet.
#[derive(Debug)]
pub struct CudaHostLink {
    gpu: CudaDevice,
    host: DeviceId,
    direction: Direction,
    state: Mutex<Option<(Vec<u8>, CudaBuffer, CudaBuffer)>>,
}

impl CudaHostLink {
    pub fn new(gpu: CudaDevice, host: DeviceId, direction: Direction) -> Self {
        CudaHostLink {
            gpu,
            host,
            direction,
            state: Mutex::new(None),
        }
    }
}

impl Link for CudaHostLink {
    fn src(&self) -> DeviceId {
        match self.direction {
            Direction::HostToDevice => self.host,
            _ => self.gpu.id(),
        }
    }

    fn dst(&self) -> DeviceId {
        match self.direction {
            Direction::DeviceToHost => self.host,
            _ => self.gpu.id(),
        }
    }

    fn kind(&self) -> LinkKind {
        match self.direction {
            Direction::OnDevice => LinkKind::SameDevice,
            _ => LinkKind::Pcie,
        }
    }

    fn transfer(&self, bytes: usize) -> Result<Duration> {
        let mut guard = self.state.lock().map_err(|_| Error::DeviceLost {
            device: self.gpu.id(),
            reason: "a previous transfer on this link panicked".into(),
        })?;
        if guard.as_ref().is_none_or(|(h, _, _)| h.len() < bytes) {
            *guard = None;
            let host = vec![1u8; bytes];
            let a = self.gpu.alloc(DType::U8, bytes)?;
            let b = self.gpu.alloc(DType::U8, bytes)?;
            *guard = Some((host, a, b));
        }
        let Some((host, a, b)) = guard.as_mut() else {
            return Err(Error::invalid("link buffers", "missing after allocation"));
        };
        self.gpu.synchronize()?;
        let start = Instant::now();
        match self.direction {
            Direction::HostToDevice => {
                self.gpu.upload(a, 0, HostSlice::new(&host[..bytes]))?;
                self.gpu.synchronize()?;
            }
            Direction::DeviceToHost => {
                self.gpu
                    .download(a, 0, HostSliceMut::new(&mut host[..bytes]))?;
            }
            Direction::OnDevice => {
                self.gpu.copy(a, 0..bytes.min(a.len()), b, 0)?;
                self.gpu.synchronize()?;
            }
        }
        Ok(start.elapsed())
    }
}

/// The path from one GPU to another, measured with
/// [`CudaDevice::copy_to_peer`]. Peer access is enabled when the driver
/// allows it, so what is timed is the direct path (NVLink or PCIe P2P);
/// otherwise the driver's own staging through host memory. The kind comes
/// from [`CudaDevice::peer_path`].
#[derive(Debug)]
pub struct CudaPeerLink {
    src: CudaDevice,
    dst: CudaDevice,
    path: PeerPath,
    state: Mutex<Option<(CudaBuffer, CudaBuffer)>>,
}

impl CudaPeerLink {
    /// The link from `src` to `dst` (two different GPUs).
    pub fn new(src: CudaDevice, dst: CudaDevice) -> Result<Self> {
        let path = src.peer_path(&dst)?;
        if path.direct_access {
            src.enable_peer_access(&dst)?;
        }
        Ok(CudaPeerLink {
            src,
            dst,
            path,
            state: Mutex::new(None),
        })
    }

    /// Whether copies go directly GPU to GPU, over what, and how many NVLinks.
    pub fn path(&self) -> PeerPath {
        self.path
    }
}

impl Link for CudaPeerLink {
    fn src(&self) -> DeviceId {
        self.src.id()
    }

    fn dst(&self) -> DeviceId {
        self.dst.id()
    }

    fn kind(&self) -> LinkKind {
        self.path.kind
    }

    fn transfer(&self, bytes: usize) -> Result<Duration> {
        let mut guard = self.state.lock().map_err(|_| Error::DeviceLost {
            device: self.src.id(),
            reason: "a previous transfer on this link panicked".into(),
        })?;
        if guard.as_ref().is_none_or(|(a, _)| a.len() < bytes) {
            *guard = None;
            let a = self.src.alloc(DType::U8, bytes)?;
            let b = self.dst.alloc(DType::U8, bytes)?;
            *guard = Some((a, b));
        }
        let Some((a, b)) = guard.as_mut() else {
            return Err(Error::invalid("link buffers", "missing after allocation"));
        };
        self.src.synchronize()?;
        self.dst.synchronize()?;
        let start = Instant::now();
        self.src.copy_to_peer(a, 0..bytes, &self.dst, b, 0)?;
        Ok(start.elapsed())
    }
}
