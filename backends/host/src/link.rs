//! Links between host devices: real memory copies, timed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use hetero_core::{DType, Device, DeviceId, Error, Link, LinkKind, Result};

use crate::buffer::HostBuffer;
use crate::device::HostDevice;

/// The path from one host device's memory to another's (or to itself).
///
/// A transfer copies bytes from a buffer on `src` to a buffer on `dst`, split
/// over `dst`'s threads as its kernels are. Both buffers are allocated on the
/// first transfer (against the devices' budgets) and reused.
#[derive(Debug)]
pub struct HostLink {
    src: HostDevice,
    dst: HostDevice,
    buffers: Mutex<Option<(HostBuffer, HostBuffer)>>,
}

impl HostLink {
    pub fn new(src: HostDevice, dst: HostDevice) -> Self {
        HostLink {
            src,
            dst,
            buffers: Mutex::new(None),
        }
    }
}

impl Link for HostLink {
    fn src(&self) -> DeviceId {
        self.src.id()
    }

    fn dst(&self) -> DeviceId {
        self.dst.id()
    }

    fn kind(&self) -> LinkKind {
        if self.src.id() == self.dst.id() {
            LinkKind::SameDevice
        } else {
            LinkKind::SharedMemory
        }
    }

    fn transfer(&self, bytes: usize) -> Result<Duration> {
        let mut guard = self.buffers.lock().map_err(|_| Error::DeviceLost {
            device: self.dst.id(),
            reason: "a previous transfer on this link panicked".into(),
        })?;
        let big_enough = guard
            .as_ref()
            .is_some_and(|(s, _)| s.as_bytes().len() >= bytes);
        if !big_enough {
            *guard = None; // free the old pair before allocating a larger one
            let mut s = self.src.alloc(DType::U8, bytes)?;
            s.as_bytes_mut()
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = i as u8);
            let d = self.dst.alloc(DType::U8, bytes)?;
            *guard = Some((s, d));
        }
        let Some((s, d)) = guard.as_mut() else {
            return Err(Error::invalid("link buffers", "missing after allocation"));
        };
        let threads = self.dst.threads();
        let src = &s.as_bytes()[..bytes];
        let dst = &mut d.as_bytes_mut()[..bytes];
        let start = Instant::now();
        if threads == 1 || bytes < 1 << 20 {
            dst.copy_from_slice(src);
        } else {
            let chunk = bytes.div_ceil(threads);
            std::thread::scope(|scope| {
                for (d, s) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                    scope.spawn(move || d.copy_from_slice(s));
                }
            });
        }
        let elapsed = start.elapsed();
        std::hint::black_box(&d.as_bytes()[bytes.saturating_sub(1)..]);
        Ok(elapsed)
    }
}
