//! [`CountingDevice`]: a device that forwards every call to another and
//! counts the calls by operation. What it is for: checking how many device
//! operations a step issues (on a GPU each is at least one launch or
//! copy), e.g. that a decode step's count does not grow with the batch,
//! and profiling a runtime's call mix. It changes nothing it forwards:
//! buffers are the inner device's own.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;

use crate::append_attend::{AppendAttendSeq, AppendAttendSpec};
use crate::device::{
    Activation, AttentionSpec, Capabilities, DeviceId, DeviceInfo, GemmSpec, MemoryUsage,
};
use crate::dtype::{DType, HostSlice, HostSliceMut, ReduceOp};
use crate::dyn_device::{BoxedBuffer, DynBuffer, DynDevice, SharedDevice};
use crate::error::Result;
use crate::quant::{QuantMatmulSpec, QuantType};
use crate::transformer::{CausalAttentionSpec, RopeSpec};

/// Forwards to `inner`, counting each operation (allocations, copies and
/// kernels; not `id`, `info`, `memory` or `capabilities`).
#[derive(Debug)]
pub struct CountingDevice {
    inner: SharedDevice,
    calls: Mutex<BTreeMap<&'static str, u64>>,
}

impl CountingDevice {
    pub fn new(inner: SharedDevice) -> Self {
        Self {
            inner,
            calls: Mutex::new(BTreeMap::new()),
        }
    }

    /// Calls so far by operation name (`"matmul_quant"`, `"copy"`, ...).
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Calls so far, every operation together.
    pub fn total(&self) -> u64 {
        self.calls().values().sum()
    }

    /// Forget the counts.
    pub fn reset(&self) {
        if let Ok(mut c) = self.calls.lock() {
            c.clear();
        }
    }

    fn count(&self, op: &'static str) -> &dyn DynDevice {
        if let Ok(mut c) = self.calls.lock() {
            *c.entry(op).or_default() += 1;
        }
        self.inner.as_ref()
    }
}

impl DynDevice for CountingDevice {
    fn id(&self) -> DeviceId {
        self.inner.id()
    }
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }
    fn memory(&self) -> Result<MemoryUsage> {
        self.inner.memory()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn alloc(&self, dtype: DType, len: usize) -> Result<BoxedBuffer> {
        self.count("alloc").alloc(dtype, len)
    }
    fn upload(&self, dst: &mut dyn DynBuffer, offset: usize, src: HostSlice<'_>) -> Result<()> {
        self.count("upload").upload(dst, offset, src)
    }
    fn download(&self, src: &dyn DynBuffer, offset: usize, dst: HostSliceMut<'_>) -> Result<()> {
        self.count("download").download(src, offset, dst)
    }
    fn copy(
        &self,
        src: &dyn DynBuffer,
        src_range: Range<usize>,
        dst: &mut dyn DynBuffer,
        dst_offset: usize,
    ) -> Result<()> {
        self.count("copy").copy(src, src_range, dst, dst_offset)
    }
    fn convert_copy(
        &self,
        src: &dyn DynBuffer,
        src_range: Range<usize>,
        dst: &mut dyn DynBuffer,
        dst_offset: usize,
    ) -> Result<()> {
        self.count("convert_copy")
            .convert_copy(src, src_range, dst, dst_offset)
    }
    fn reduce(&self, op: ReduceOp, acc: &mut dyn DynBuffer, src: &dyn DynBuffer) -> Result<()> {
        self.count("reduce").reduce(op, acc, src)
    }
    fn finish_reduce(&self, op: ReduceOp, buf: &mut dyn DynBuffer, count: usize) -> Result<()> {
        self.count("finish_reduce").finish_reduce(op, buf, count)
    }
    fn scale(&self, buf: &mut dyn DynBuffer, alpha: f64) -> Result<()> {
        self.count("scale").scale(buf, alpha)
    }
    fn gemm(
        &self,
        spec: &GemmSpec,
        a: &dyn DynBuffer,
        b: &dyn DynBuffer,
        c: &mut dyn DynBuffer,
    ) -> Result<()> {
        self.count("gemm").gemm(spec, a, b, c)
    }
    fn layer_norm(
        &self,
        x: &dyn DynBuffer,
        gamma: &dyn DynBuffer,
        beta: &dyn DynBuffer,
        out: &mut dyn DynBuffer,
        eps: f32,
    ) -> Result<()> {
        self.count("layer_norm")
            .layer_norm(x, gamma, beta, out, eps)
    }
    fn bias_activation(
        &self,
        x: &mut dyn DynBuffer,
        bias: &dyn DynBuffer,
        act: Activation,
    ) -> Result<()> {
        self.count("bias_activation").bias_activation(x, bias, act)
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
        self.count("attention_decode")
            .attention_decode(spec, q, k_cache, v_cache, lens, out)
    }
    fn argmax_rows(&self, x: &dyn DynBuffer, rows: usize) -> Result<Vec<u32>> {
        self.count("argmax_rows").argmax_rows(x, rows)
    }
    fn rms_norm(
        &self,
        x: &dyn DynBuffer,
        weight: &dyn DynBuffer,
        out: &mut dyn DynBuffer,
        eps: f32,
    ) -> Result<()> {
        self.count("rms_norm").rms_norm(x, weight, out, eps)
    }
    fn rope(
        &self,
        spec: &RopeSpec,
        x: &mut dyn DynBuffer,
        positions: &[u32],
        inv_freq: &dyn DynBuffer,
    ) -> Result<()> {
        self.count("rope").rope(spec, x, positions, inv_freq)
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
        self.count("attention_causal")
            .attention_causal(spec, q, k_cache, v_cache, lens, out)
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
        self.count("append_and_attend")
            .append_and_attend(spec, q, k_new, v_new, seqs, out)
    }
    fn silu_mul(&self, gate: &mut dyn DynBuffer, up: &dyn DynBuffer) -> Result<()> {
        self.count("silu_mul").silu_mul(gate, up)
    }
    fn embedding(&self, table: &dyn DynBuffer, ids: &[u32], out: &mut dyn DynBuffer) -> Result<()> {
        self.count("embedding").embedding(table, ids, out)
    }
    fn matmul_quant(
        &self,
        spec: &QuantMatmulSpec,
        x: &dyn DynBuffer,
        w: &dyn DynBuffer,
        y: &mut dyn DynBuffer,
    ) -> Result<()> {
        self.count("matmul_quant").matmul_quant(spec, x, w, y)
    }
    fn embedding_quant(
        &self,
        quant: QuantType,
        table: &dyn DynBuffer,
        ids: &[u32],
        out: &mut dyn DynBuffer,
    ) -> Result<()> {
        self.count("embedding_quant")
            .embedding_quant(quant, table, ids, out)
    }
    fn synchronize(&self) -> Result<()> {
        self.count("synchronize").synchronize()
    }
}
