//! Error scopes: every wgpu call that can fail runs inside out-of-memory and
//! validation scopes, so a failure becomes a typed `Error` from the call
//! that caused it instead of wgpu's default handler panicking. Also the
//! device-lost check and the blocking wait on the queue.

use hetero_core::{Error, Result};

use crate::device::WgpuDevice;
use crate::error::WgpuError;

impl WgpuDevice {
    /// `DeviceLost` once wgpu has reported the device lost.
    pub(crate) fn check_alive(&self) -> Result<()> {
        if let Ok(l) = self.inner.lost.lock()
            && let Some(reason) = l.as_ref()
        {
            return Err(Error::DeviceLost {
                device: self.inner.id,
                reason: reason.clone(),
            });
        }
        Ok(())
    }

    /// Run `f` inside out-of-memory and validation error scopes.
    pub(crate) fn scoped<R>(&self, what: &'static str, f: impl FnOnce() -> R) -> Result<R> {
        self.check_alive()?;
        let oom = self
            .inner
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self
            .inner
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let validation = pollster::block_on(validation.pop());
        let oom = pollster::block_on(oom.pop());
        if let Some(e) = oom {
            return Err(WgpuError::OutOfMemory {
                device: self.inner.id,
                what,
                reason: e.to_string(),
            }
            .into());
        }
        if let Some(e) = validation {
            return Err(WgpuError::Validation {
                device: self.inner.id,
                what,
                reason: e.to_string(),
            }
            .into());
        }
        if let Ok(mut u) = self.inner.uncaptured.lock()
            && let Some(reason) = u.take()
        {
            return Err(WgpuError::Validation {
                device: self.inner.id,
                what,
                reason,
            }
            .into());
        }
        Ok(out)
    }

    /// Wait until the queue is idle, then report a lost device.
    pub(crate) fn wait(&self) -> Result<()> {
        self.flush();
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::DeviceLost {
                device: self.inner.id,
                reason: format!("waiting for the queue: {e}"),
            })?;
        self.check_alive()
    }
}
