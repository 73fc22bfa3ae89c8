//! Many commands in one submission. Every kernel and device copy goes
//! through [`WgpuDevice::encode`]: submitted at once by default, or
//! appended to the open recording inside [`WgpuDevice::recorded`], which
//! submits them all together at its end. `append_and_attend` records its
//! per-sequence loop this way: one submission per layer whatever the batch
//! instead of five per sequence (each submission has a fixed cost in the
//! driver; a WGSL kernel cannot reach every sequence's cache from one
//! dispatch without binding arrays).
//!
//! The recording is the device's, not a thread's: commands other threads
//! issue meanwhile join it, in the order they take its lock, and it is
//! submitted under that lock.
//!
//! Invariants that keep the order of effects: writes from the host go into
//! the recording as copies from a staging buffer (a queue write would land
//! before the recorded commands that precede it); reads to the host submit
//! the recording first (`flush`); a buffer dropped while a recording is
//! open is destroyed only after the recording is submitted, since
//! recorded commands may still use it.

use std::sync::{Arc, Mutex, MutexGuard};

use hetero_core::Result;
use wgpu::util::DeviceExt;

use crate::device::WgpuDevice;

/// Commands waiting for one submission, and the buffers to destroy after it.
pub(crate) struct Recording {
    encoder: wgpu::CommandEncoder,
    destroy_after: Vec<wgpu::Buffer>,
}

/// The device's open recording, if any (shared with its buffers).
pub(crate) type RecordingSlot = Arc<Mutex<Option<Recording>>>;

fn lock(slot: &Mutex<Option<Recording>>) -> MutexGuard<'_, Option<Recording>> {
    // A panic while recording leaves commands that are still valid.
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Destroy `buffer` now, or after the open recording is submitted.
pub(crate) fn destroy_when_unused(slot: &RecordingSlot, buffer: &wgpu::Buffer) {
    match lock(slot).as_mut() {
        Some(recording) => recording.destroy_after.push(buffer.clone()),
        None => buffer.destroy(),
    }
}

impl WgpuDevice {
    fn new_encoder(&self) -> wgpu::CommandEncoder {
        self.inner
            .device
            .create_command_encoder(&Default::default())
    }

    /// Run `build` on the open recording's encoder, or on a new one that
    /// is submitted at once.
    pub(crate) fn encode(&self, build: impl FnOnce(&mut wgpu::CommandEncoder)) {
        let mut slot = lock(&self.inner.recording);
        if let Some(recording) = slot.as_mut() {
            build(&mut recording.encoder);
            return;
        }
        drop(slot);
        let mut encoder = self.new_encoder();
        build(&mut encoder);
        self.inner.queue.submit([encoder.finish()]);
    }

    /// Write whole words `data` at byte `offset` of `buf`, in order with
    /// the recorded commands: a queue write outside a recording, a copy
    /// from a staging buffer inside one.
    pub(crate) fn write_words(&self, buf: &wgpu::Buffer, offset: u64, data: &[u8]) {
        let mut slot = lock(&self.inner.recording);
        let Some(recording) = slot.as_mut() else {
            drop(slot);
            self.inner.queue.write_buffer(buf, offset, data);
            return;
        };
        let staging = self
            .inner
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("hetero recorded upload"),
                contents: data,
                usage: wgpu::BufferUsages::COPY_SRC,
            });
        recording
            .encoder
            .copy_buffer_to_buffer(&staging, 0, buf, offset, data.len() as u64);
    }

    /// Submit what the open recording holds so far (before the host reads
    /// a buffer) and go on recording.
    pub(crate) fn flush(&self) {
        let mut slot = lock(&self.inner.recording);
        if let Some(recording) = slot.as_mut() {
            let encoder = std::mem::replace(&mut recording.encoder, self.new_encoder());
            self.inner.queue.submit([encoder.finish()]);
            for b in recording.destroy_after.drain(..) {
                b.destroy();
            }
        }
    }

    /// Run `f` with every command it issues recorded, then submit them as
    /// one. Inside another recording, `f` just joins it.
    pub(crate) fn recorded<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        {
            let mut slot = lock(&self.inner.recording);
            if slot.is_some() {
                drop(slot);
                return f();
            }
            *slot = Some(Recording {
                encoder: self.new_encoder(),
                destroy_after: Vec::new(),
            });
        }
        let out = f();
        // The slot stays locked until the submission is made: another
        // thread's commands may be in it, and that thread must neither
        // destroy a buffer they use nor submit work that follows them
        // before they are submitted.
        let mut slot = lock(&self.inner.recording);
        if let Some(recording) = slot.take() {
            // Submitted even when `f` failed: what it recorded is valid
            // work that ran in the unrecorded order too.
            let submitted = self.scoped("submitting recorded kernels", || {
                self.inner.queue.submit([recording.encoder.finish()]);
            });
            for b in recording.destroy_after {
                b.destroy();
            }
            drop(slot);
            let out = out?;
            submitted?;
            return Ok(out);
        }
        drop(slot);
        out
    }
}
