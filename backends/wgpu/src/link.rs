//! Links of a wgpu device: host <-> adapter (staging) and on-adapter copies.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hetero_core::{
    DType, Device, DeviceId, Error, HostSlice, HostSliceMut, Link, LinkKind, Result,
};

use crate::buffer::WgpuBuffer;
use crate::device::WgpuDevice;

/// Which way a [`WgpuLink`] moves data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgpuDirection {
    HostToDevice,
    DeviceToHost,
    OnDevice,
}

/// The path between host memory (device `host`) and an adapter, or within
/// it, through hetero's own `upload` (queue write), `download` (copy to a
/// mapped staging buffer) and `copy`. Its kind is `SharedMemory` for a
/// software adapter (its memory is the host's), otherwise `Unknown`: wgpu
/// does not say how a hardware adapter is attached.
#[derive(Debug)]
pub struct WgpuLink {
    gpu: WgpuDevice,
    host: DeviceId,
    direction: WgpuDirection,
    state: Mutex<Option<(Vec<u8>, WgpuBuffer, WgpuBuffer)>>,
}

impl WgpuLink {
    pub fn new(gpu: WgpuDevice, host: DeviceId, direction: WgpuDirection) -> Self {
        WgpuLink {
            gpu,
            host,
            direction,
            state: Mutex::new(None),
        }
    }
}

impl Link for WgpuLink {
    fn src(&self) -> DeviceId {
        match self.direction {
            WgpuDirection::HostToDevice => self.host,
            _ => self.gpu.id(),
        }
    }

    fn dst(&self) -> DeviceId {
        match self.direction {
            WgpuDirection::DeviceToHost => self.host,
            _ => self.gpu.id(),
        }
    }

    fn kind(&self) -> LinkKind {
        match self.direction {
            WgpuDirection::OnDevice => LinkKind::SameDevice,
            // A software adapter's buffers are host memory: the host device
            // and the adapter share it (and their budgets overlap).
            _ if self.gpu.inner.info.device_type == wgpu::DeviceType::Cpu => LinkKind::SharedMemory,
            _ => LinkKind::Unknown,
        }
    }

    fn transfer(&self, bytes: usize) -> Result<Duration> {
        let mut guard = self.state.lock().map_err(|_| Error::DeviceLost {
            device: self.gpu.id(),
            reason: "a previous transfer on this link panicked".into(),
        })?;
        if guard.as_ref().is_none_or(|(h, _, _)| h.len() < bytes) {
            *guard = None;
            let a = self.gpu.alloc(DType::U8, bytes)?;
            let b = self.gpu.alloc(DType::U8, bytes)?;
            *guard = Some((vec![1u8; bytes], a, b));
        }
        let Some((host, a, b)) = guard.as_mut() else {
            return Err(Error::invalid("link buffers", "missing after allocation"));
        };
        self.gpu.synchronize()?;
        let start = Instant::now();
        match self.direction {
            WgpuDirection::HostToDevice => self.gpu.upload(a, 0, HostSlice::new(&host[..bytes]))?,
            WgpuDirection::DeviceToHost => {
                self.gpu
                    .download(a, 0, HostSliceMut::new(&mut host[..bytes]))?
            }
            WgpuDirection::OnDevice => self.gpu.copy(a, 0..bytes, b, 0)?,
        }
        self.gpu.synchronize()?;
        Ok(start.elapsed())
    }
}
