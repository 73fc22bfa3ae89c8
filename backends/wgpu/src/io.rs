//! Moving bytes: host to device (queue writes), device to host (a mapped
//! staging buffer), and device to device. wgpu moves whole 4-byte words, so
//! 8/16-bit ranges that start or end inside a word are merged through the
//! host.

use hetero_core::{Error, Result};

use crate::buffer::{WgpuBuffer, align4_down, align4_up};
use crate::device::WgpuDevice;

impl WgpuDevice {
    /// Copy `bytes` of `buf` starting at byte `offset` (any alignment) into `out`.
    pub(crate) fn read_bytes(&self, buf: &WgpuBuffer, offset: u64, out: &mut [u8]) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        // The host reads after every command recorded so far.
        self.flush();
        let start = align4_down(offset);
        let end = align4_up(offset + out.len() as u64);
        let device = &self.inner.device;
        let staging = self.scoped("allocating a staging buffer", || {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("hetero download"),
                size: end - start,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        self.scoped("copying to the staging buffer", || {
            let mut encoder = device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(&buf.buffer, start, &staging, 0, end - start);
            self.inner.queue.submit([encoder.finish()]);
        })?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|_| Error::DeviceLost {
                device: self.inner.id,
                reason: "buffer mapping never completed".into(),
            })?
            .map_err(|e| Error::DeviceLost {
                device: self.inner.id,
                reason: format!("mapping the staging buffer failed: {e}"),
            })?;
        {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::DeviceLost {
                    device: self.inner.id,
                    reason: format!("reading the staging buffer failed: {e}"),
                })?;
            let skip = (offset - start) as usize;
            out.copy_from_slice(&view[skip..skip + out.len()]);
        }
        staging.unmap();
        staging.destroy();
        Ok(())
    }

    /// Write `data` at byte `offset` (any alignment): unaligned edges are
    /// read back and merged, since wgpu writes whole 4-byte words.
    pub(crate) fn write_bytes(&self, buf: &WgpuBuffer, offset: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let start = align4_down(offset);
        let end = align4_up(offset + data.len() as u64);
        if start == offset && end == offset + data.len() as u64 {
            return self.scoped("uploading", || self.write_words(&buf.buffer, offset, data));
        }
        let mut window = vec![0u8; (end - start) as usize];
        self.read_bytes(buf, start, &mut window)?;
        let skip = (offset - start) as usize;
        window[skip..skip + data.len()].copy_from_slice(data);
        self.scoped("uploading", || {
            self.write_words(&buf.buffer, start, &window)
        })
    }

    /// Copy `n` bytes of `src` at byte `from` to `dst` at byte `to`: on the
    /// device when all three are whole words, through the host otherwise.
    pub(crate) fn copy_bytes(
        &self,
        src: &WgpuBuffer,
        from: u64,
        dst: &WgpuBuffer,
        to: u64,
        n: u64,
    ) -> Result<()> {
        if from.is_multiple_of(4) && to.is_multiple_of(4) && n.is_multiple_of(4) {
            return self.scoped("copying", || {
                self.encode(|encoder| {
                    encoder.copy_buffer_to_buffer(&src.buffer, from, &dst.buffer, to, n)
                })
            });
        }
        // wgpu copies whole words: unaligned 8/16-bit ranges go through the host.
        let mut bytes = vec![0u8; n as usize];
        self.read_bytes(src, from, &mut bytes)?;
        self.write_bytes(dst, to, &bytes)
    }
}
