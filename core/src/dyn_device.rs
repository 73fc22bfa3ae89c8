//! Object-safe layer over [`Device`], so one plan can hold devices of several
//! backends as `Arc<dyn DynDevice>`.
//!
//! Every `Device` is a `DynDevice` through a blanket impl; buffers cross the
//! boundary as `Box<dyn DynBuffer>` and are downcast back to the backend's own
//! type. Handing a device a buffer of another device is an
//! [`Error::InvalidInput`], never a panic.

use std::any::Any;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use crate::append_attend::{AppendAttendSeq, AppendAttendSpec};
use crate::device::{
    Activation, AttentionSpec, Capabilities, Device, DeviceBuffer, DeviceId, DeviceInfo, GemmSpec,
    MemoryUsage,
};
use crate::dtype::{DType, HostSlice, HostSliceMut, ReduceOp};
use crate::error::{Error, Result};
use crate::quant::{QuantMatmulSpec, QuantType};
use crate::transformer::{CausalAttentionSpec, RopeSpec};

/// A buffer of any backend.
pub trait DynBuffer: DeviceBuffer {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<B: DeviceBuffer> DynBuffer for B {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// A boxed buffer of any backend.
pub type BoxedBuffer = Box<dyn DynBuffer>;

/// A shared device of any backend.
pub type SharedDevice = Arc<dyn DynDevice>;

/// Object-safe mirror of [`Device`]. See the module docs.
pub trait DynDevice: Send + Sync + fmt::Debug {
    fn id(&self) -> DeviceId;
    fn info(&self) -> DeviceInfo;
    fn memory(&self) -> Result<MemoryUsage>;
    fn capabilities(&self) -> Capabilities;
    fn alloc(&self, dtype: DType, len: usize) -> Result<BoxedBuffer>;
    fn upload(&self, dst: &mut dyn DynBuffer, offset: usize, src: HostSlice<'_>) -> Result<()>;
    fn download(&self, src: &dyn DynBuffer, offset: usize, dst: HostSliceMut<'_>) -> Result<()>;
    fn copy(
        &self,
        src: &dyn DynBuffer,
        src_range: Range<usize>,
        dst: &mut dyn DynBuffer,
        dst_offset: usize,
    ) -> Result<()>;
    fn convert_copy(
        &self,
        src: &dyn DynBuffer,
        src_range: Range<usize>,
        dst: &mut dyn DynBuffer,
        dst_offset: usize,
    ) -> Result<()>;
    fn reduce(&self, op: ReduceOp, acc: &mut dyn DynBuffer, src: &dyn DynBuffer) -> Result<()>;
    fn finish_reduce(&self, op: ReduceOp, buf: &mut dyn DynBuffer, count: usize) -> Result<()>;
    fn scale(&self, buf: &mut dyn DynBuffer, alpha: f64) -> Result<()>;
    fn gemm(
        &self,
        spec: &GemmSpec,
        a: &dyn DynBuffer,
        b: &dyn DynBuffer,
        c: &mut dyn DynBuffer,
    ) -> Result<()>;
    fn layer_norm(
        &self,
        x: &dyn DynBuffer,
        gamma: &dyn DynBuffer,
        beta: &dyn DynBuffer,
        out: &mut dyn DynBuffer,
        eps: f32,
    ) -> Result<()>;
    fn bias_activation(
        &self,
        x: &mut dyn DynBuffer,
        bias: &dyn DynBuffer,
        act: Activation,
    ) -> Result<()>;
    fn attention_decode(
        &self,
        spec: &AttentionSpec,
        q: &dyn DynBuffer,
        k_cache: &dyn DynBuffer,
        v_cache: &dyn DynBuffer,
        lens: &[u32],
        out: &mut dyn DynBuffer,
    ) -> Result<()>;
    fn argmax_rows(&self, x: &dyn DynBuffer, rows: usize) -> Result<Vec<u32>>;
    fn rms_norm(
        &self,
        x: &dyn DynBuffer,
        weight: &dyn DynBuffer,
        out: &mut dyn DynBuffer,
        eps: f32,
    ) -> Result<()>;
    fn rope(
        &self,
        spec: &RopeSpec,
        x: &mut dyn DynBuffer,
        positions: &[u32],
        inv_freq: &dyn DynBuffer,
    ) -> Result<()>;
    fn attention_causal(
        &self,
        spec: &CausalAttentionSpec,
        q: &dyn DynBuffer,
        k_cache: &dyn DynBuffer,
        v_cache: &dyn DynBuffer,
        lens: &[u32],
        out: &mut dyn DynBuffer,
    ) -> Result<()>;
    fn append_and_attend(
        &self,
        spec: &AppendAttendSpec,
        q: &dyn DynBuffer,
        k_new: &dyn DynBuffer,
        v_new: &dyn DynBuffer,
        seqs: &mut [AppendAttendSeq<'_, dyn DynBuffer>],
        out: &mut dyn DynBuffer,
    ) -> Result<()>;
    fn silu_mul(&self, gate: &mut dyn DynBuffer, up: &dyn DynBuffer) -> Result<()>;
    fn embedding(&self, table: &dyn DynBuffer, ids: &[u32], out: &mut dyn DynBuffer) -> Result<()>;
    fn matmul_quant(
        &self,
        spec: &QuantMatmulSpec,
        x: &dyn DynBuffer,
        w: &dyn DynBuffer,
        y: &mut dyn DynBuffer,
    ) -> Result<()>;
    fn embedding_quant(
        &self,
        quant: QuantType,
        table: &dyn DynBuffer,
        ids: &[u32],
        out: &mut dyn DynBuffer,
    ) -> Result<()>;
    fn synchronize(&self) -> Result<()>;
}

fn foreign(device: DeviceId, buffer: DeviceId, arg: &str) -> Error {
    Error::invalid(
        arg,
        format!("buffer belongs to device {buffer}, it was passed to device {device}"),
    )
}

fn down<'a, D: Device>(dev: &D, b: &'a dyn DynBuffer, arg: &str) -> Result<&'a D::Buffer> {
    let owner = b.device();
    b.as_any()
        .downcast_ref::<D::Buffer>()
        .filter(|_| owner == dev.id())
        .ok_or_else(|| foreign(dev.id(), owner, arg))
}

fn down_mut<'a, D: Device>(
    dev: &D,
    b: &'a mut dyn DynBuffer,
    arg: &str,
) -> Result<&'a mut D::Buffer> {
    let owner = b.device();
    if owner != dev.id() {
        return Err(foreign(dev.id(), owner, arg));
    }
    b.as_any_mut()
        .downcast_mut::<D::Buffer>()
        .ok_or_else(|| foreign(dev.id(), owner, arg))
}

impl<D: Device> DynDevice for D {
    fn id(&self) -> DeviceId {
        Device::id(self)
    }
    fn info(&self) -> DeviceInfo {
        Device::info(self)
    }
    fn memory(&self) -> Result<MemoryUsage> {
        Device::memory(self)
    }
    fn capabilities(&self) -> Capabilities {
        Device::capabilities(self)
    }
    fn alloc(&self, dtype: DType, len: usize) -> Result<BoxedBuffer> {
        Ok(Box::new(Device::alloc(self, dtype, len)?))
    }
    fn upload(&self, dst: &mut dyn DynBuffer, offset: usize, src: HostSlice<'_>) -> Result<()> {
        Device::upload(
            self,
            down_mut(self, dst, "upload destination")?,
            offset,
            src,
        )
    }
    fn download(&self, src: &dyn DynBuffer, offset: usize, dst: HostSliceMut<'_>) -> Result<()> {
        Device::download(self, down(self, src, "download source")?, offset, dst)
    }
    fn copy(
        &self,
        src: &dyn DynBuffer,
        src_range: Range<usize>,
        dst: &mut dyn DynBuffer,
        dst_offset: usize,
    ) -> Result<()> {
        let src = down(self, src, "copy source")?;
        let dst = down_mut(self, dst, "copy destination")?;
        Device::copy(self, src, src_range, dst, dst_offset)
    }
    fn convert_copy(
        &self,
        src: &dyn DynBuffer,
        src_range: Range<usize>,
        dst: &mut dyn DynBuffer,
        dst_offset: usize,
    ) -> Result<()> {
        let src = down(self, src, "convert_copy source")?;
        let dst = down_mut(self, dst, "convert_copy destination")?;
        Device::convert_copy(self, src, src_range, dst, dst_offset)
    }
    fn reduce(&self, op: ReduceOp, acc: &mut dyn DynBuffer, src: &dyn DynBuffer) -> Result<()> {
        let src = down(self, src, "reduce source")?;
        let acc = down_mut(self, acc, "reduce accumulator")?;
        Device::reduce(self, op, acc, src)
    }
    fn finish_reduce(&self, op: ReduceOp, buf: &mut dyn DynBuffer, count: usize) -> Result<()> {
        Device::finish_reduce(self, op, down_mut(self, buf, "reduce buffer")?, count)
    }
    fn scale(&self, buf: &mut dyn DynBuffer, alpha: f64) -> Result<()> {
        Device::scale(self, down_mut(self, buf, "scale buffer")?, alpha)
    }
    fn gemm(
        &self,
        spec: &GemmSpec,
        a: &dyn DynBuffer,
        b: &dyn DynBuffer,
        c: &mut dyn DynBuffer,
    ) -> Result<()> {
        let a = down(self, a, "gemm a")?;
        let b = down(self, b, "gemm b")?;
        let c = down_mut(self, c, "gemm c")?;
        Device::gemm(self, spec, a, b, c)
    }
    fn layer_norm(
        &self,
        x: &dyn DynBuffer,
        gamma: &dyn DynBuffer,
        beta: &dyn DynBuffer,
        out: &mut dyn DynBuffer,
        eps: f32,
    ) -> Result<()> {
        let x = down(self, x, "layer_norm x")?;
        let gamma = down(self, gamma, "layer_norm gamma")?;
        let beta = down(self, beta, "layer_norm beta")?;
        let out = down_mut(self, out, "layer_norm out")?;
        Device::layer_norm(self, x, gamma, beta, out, eps)
    }
    fn bias_activation(
        &self,
        x: &mut dyn DynBuffer,
        bias: &dyn DynBuffer,
        act: Activation,
    ) -> Result<()> {
        let bias = down(self, bias, "bias")?;
        let x = down_mut(self, x, "bias_activation x")?;
        Device::bias_activation(self, x, bias, act)
    }
    fn attention_decode(
        &self,
        spec: &AttentionSpec,
        q: &dyn DynBuffer,
        k_cache: &dyn DynBuffer,
        v_cache: &dyn DynBuffer,
        lens: &[u32],
        out: &mut dyn DynBuffer,
    ) -> Result<()> {
        let q = down(self, q, "attention q")?;
        let k = down(self, k_cache, "attention k cache")?;
        let v = down(self, v_cache, "attention v cache")?;
        let out = down_mut(self, out, "attention out")?;
        Device::attention_decode(self, spec, q, k, v, lens, out)
    }
    fn argmax_rows(&self, x: &dyn DynBuffer, rows: usize) -> Result<Vec<u32>> {
        Device::argmax_rows(self, down(self, x, "argmax x")?, rows)
    }
    fn rms_norm(
        &self,
        x: &dyn DynBuffer,
        weight: &dyn DynBuffer,
        out: &mut dyn DynBuffer,
        eps: f32,
    ) -> Result<()> {
        let x = down(self, x, "rms_norm x")?;
        let weight = down(self, weight, "rms_norm weight")?;
        let out = down_mut(self, out, "rms_norm out")?;
        Device::rms_norm(self, x, weight, out, eps)
    }
    fn rope(
        &self,
        spec: &RopeSpec,
        x: &mut dyn DynBuffer,
        positions: &[u32],
        inv_freq: &dyn DynBuffer,
    ) -> Result<()> {
        let inv_freq = down(self, inv_freq, "rope inv_freq")?;
        let x = down_mut(self, x, "rope x")?;
        Device::rope(self, spec, x, positions, inv_freq)
    }
    fn attention_causal(
        &self,
        spec: &CausalAttentionSpec,
        q: &dyn DynBuffer,
        k_cache: &dyn DynBuffer,
        v_cache: &dyn DynBuffer,
        lens: &[u32],
        out: &mut dyn DynBuffer,
    ) -> Result<()> {
        let q = down(self, q, "attention q")?;
        let k = down(self, k_cache, "attention k cache")?;
        let v = down(self, v_cache, "attention v cache")?;
        let out = down_mut(self, out, "attention out")?;
        Device::attention_causal(self, spec, q, k, v, lens, out)
    }
    fn append_and_attend(
        &self,
        spec: &AppendAttendSpec,
        q: &dyn DynBuffer,
        k_new: &dyn DynBuffer,
        v_new: &dyn DynBuffer,
        seqs: &mut [AppendAttendSeq<'_, dyn DynBuffer>],
        out: &mut dyn DynBuffer,
    ) -> Result<()> {
        let q = down(self, q, "append_and_attend q")?;
        let k_new = down(self, k_new, "append_and_attend k_new")?;
        let v_new = down(self, v_new, "append_and_attend v_new")?;
        let out = down_mut(self, out, "append_and_attend out")?;
        let mut own = Vec::with_capacity(seqs.len());
        for seq in seqs.iter_mut() {
            own.push(AppendAttendSeq {
                k: down_mut(self, &mut *seq.k, "append_and_attend k cache")?,
                v: down_mut(self, &mut *seq.v, "append_and_attend v cache")?,
                cached: seq.cached,
                rows: seq.rows.clone(),
            });
        }
        Device::append_and_attend(self, spec, q, k_new, v_new, &mut own, out)
    }
    fn silu_mul(&self, gate: &mut dyn DynBuffer, up: &dyn DynBuffer) -> Result<()> {
        let up = down(self, up, "silu_mul up")?;
        let gate = down_mut(self, gate, "silu_mul gate")?;
        Device::silu_mul(self, gate, up)
    }
    fn embedding(&self, table: &dyn DynBuffer, ids: &[u32], out: &mut dyn DynBuffer) -> Result<()> {
        let table = down(self, table, "embedding table")?;
        let out = down_mut(self, out, "embedding out")?;
        Device::embedding(self, table, ids, out)
    }
    fn matmul_quant(
        &self,
        spec: &QuantMatmulSpec,
        x: &dyn DynBuffer,
        w: &dyn DynBuffer,
        y: &mut dyn DynBuffer,
    ) -> Result<()> {
        let x = down(self, x, "matmul_quant x")?;
        let w = down(self, w, "matmul_quant w")?;
        let y = down_mut(self, y, "matmul_quant y")?;
        Device::matmul_quant(self, spec, x, w, y)
    }
    fn embedding_quant(
        &self,
        quant: QuantType,
        table: &dyn DynBuffer,
        ids: &[u32],
        out: &mut dyn DynBuffer,
    ) -> Result<()> {
        let table = down(self, table, "embedding_quant table")?;
        let out = down_mut(self, out, "embedding_quant out")?;
        Device::embedding_quant(self, quant, table, ids, out)
    }
    fn synchronize(&self) -> Result<()> {
        Device::synchronize(self)
    }
}

/// Convenience methods on any `DynDevice`.
pub trait DynDeviceExt: DynDevice {
    /// Allocate a buffer and fill it from `data`.
    fn alloc_from(&self, data: HostSlice<'_>) -> Result<BoxedBuffer> {
        let mut buf = self.alloc(data.dtype(), data.len())?;
        self.upload(buf.as_mut(), 0, data)?;
        Ok(buf)
    }

    /// Download a whole buffer into a new `Vec<T>`.
    fn to_vec<T: crate::Element + Default>(&self, buf: &dyn DynBuffer) -> Result<Vec<T>> {
        let mut out = vec![T::default(); buf.len()];
        self.download(buf, 0, HostSliceMut::new(&mut out))?;
        Ok(out)
    }
}

impl<D: DynDevice + ?Sized> DynDeviceExt for D {}
