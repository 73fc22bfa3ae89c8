//! The wgpu backend's buffer: a storage buffer of whole 32-bit words, with
//! the bytes it holds against its device's budget released on drop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hetero_core::{DType, DeviceBuffer, DeviceId};

/// A buffer in an adapter's memory (a storage buffer of whole 32-bit words).
pub struct WgpuBuffer {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) dtype: DType,
    pub(crate) len: usize,
    pub(crate) device: DeviceId,
    /// The device's allocated-bytes counter, decremented on drop.
    pub(crate) allocated: Arc<AtomicU64>,
    /// What this buffer counts against the budget (its size in whole words).
    pub(crate) reserved: u64,
    /// The device's open recording: a buffer dropped while commands that
    /// may use it wait for their submission is destroyed after it.
    pub(crate) recording: crate::recording::RecordingSlot,
}

impl std::fmt::Debug for WgpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuBuffer")
            .field("device", &self.device)
            .field("dtype", &self.dtype)
            .field("len", &self.len)
            .finish()
    }
}

impl Drop for WgpuBuffer {
    fn drop(&mut self) {
        crate::recording::destroy_when_unused(&self.recording, &self.buffer);
        self.allocated.fetch_sub(self.reserved, Ordering::AcqRel);
    }
}

impl DeviceBuffer for WgpuBuffer {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.len
    }
    fn device(&self) -> DeviceId {
        self.device
    }
}

impl WgpuBuffer {
    /// Size in 32-bit words, as the kernels index it.
    pub(crate) fn words(&self) -> u32 {
        self.buffer.size().div_ceil(4) as u32
    }
}

/// `x` rounded down to a whole 32-bit word (wgpu copies and writes words).
pub(crate) fn align4_down(x: u64) -> u64 {
    x & !3
}

/// `x` rounded up to a whole 32-bit word.
pub(crate) fn align4_up(x: u64) -> u64 {
    x.div_ceil(4) * 4
}
