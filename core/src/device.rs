//! The `Device` trait: identity, memory, buffers and the few kernels hetero needs.
//!
//! Methods are blocking: a call returns when its work is done or has been
//! ordered on the device's queue such that later calls on the same device see
//! its result; [`Device::download`] and [`Device::synchronize`] wait for the
//! device. Work that waits on the network (collectives) is async instead.

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::append_attend::{AppendAttendSeq, AppendAttendSpec, check_append_attend, seq_shapes};
use crate::dtype::{DType, HostSlice, HostSliceMut, ReduceOp};
use crate::error::{Error, Result};
use crate::quant::{QuantMatmulSpec, QuantType};
use crate::transformer::{CausalAttentionSpec, RopeSpec, embedding_width};
// Re-exported so `hetero_core::device::{Backend, DeviceId}` keeps working.
pub use crate::id::{Backend, DeviceId};

/// What sort of processor a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Cpu,
    DiscreteGpu,
    IntegratedGpu,
    /// A software or virtualised device (lavapipe, llvmpipe, a vGPU).
    Virtual,
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::DiscreteGpu => "discrete gpu",
            DeviceKind::IntegratedGpu => "integrated gpu",
            DeviceKind::Virtual => "virtual",
        })
    }
}

/// Static description of a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub id: DeviceId,
    pub name: String,
    pub kind: DeviceKind,
    pub vendor: String,
    /// Memory this device may use, in bytes (for budgeted devices, the budget).
    pub memory_total_bytes: u64,
    /// Free memory when the backend can tell; `None` when it cannot.
    #[serde(default)]
    pub memory_free_bytes: Option<u64>,
    /// Driver or runtime version, when known.
    #[serde(default)]
    pub driver: Option<String>,
    /// Hardware threads / compute units this device uses, when meaningful.
    #[serde(default)]
    pub compute_units: Option<u32>,
    /// Threads of the host's own processor this device keeps busy while it
    /// works: a host device's threads, a software adapter's (lavapipe's
    /// rasterizer) threads. `None` for a device with a processor of its
    /// own. Devices that draw on the same processor slow each other when
    /// they work at once (the placement's contention term reads this).
    #[serde(default)]
    pub host_threads: Option<u32>,
}

/// Memory figures of a device at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryUsage {
    /// Memory this device may use, in bytes (its budget, or the hardware total).
    pub total_bytes: u64,
    /// Free memory as far as the device can tell.
    pub free_bytes: Option<u64>,
    /// Bytes currently held by buffers this process allocated through hetero.
    pub allocated_bytes: u64,
}

/// Shape and options of a row-major GEMM: `C = alpha * op(A) * op(B) + beta * C`
/// with `op(A)` of shape `m x k`, `op(B)` of shape `k x n`, `C` of shape `m x n`.
/// `trans_a` means `A` is stored `k x m` (and `op(A)` is its transpose).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GemmSpec {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f64,
    pub beta: f64,
}

impl GemmSpec {
    /// `C = A * B` with no transposes.
    pub const fn new(m: usize, n: usize, k: usize) -> Self {
        GemmSpec {
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
        }
    }

    /// Floating-point operations of one call (2mnk).
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }

    /// Check buffer lengths against the shape.
    pub fn validate(&self, a_len: usize, b_len: usize, c_len: usize) -> Result<()> {
        let need = |name: &str, have: usize, rows: usize, cols: usize| -> Result<()> {
            let want = rows.checked_mul(cols).ok_or_else(|| {
                Error::invalid("gemm shape", format!("{rows} x {cols} overflows usize"))
            })?;
            if have != want {
                return Err(Error::invalid(
                    name,
                    format!("holds {have} elements, the gemm shape needs {rows} x {cols} = {want}"),
                ));
            }
            Ok(())
        };
        need("gemm a", a_len, self.m, self.k)?;
        need("gemm b", b_len, self.k, self.n)?;
        need("gemm c", c_len, self.m, self.n)
    }
}

/// Which dtypes a device's kernels accept. Test harnesses read this to report
/// unsupported combinations as skipped (with the reason) instead of failing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub reduce_dtypes: Vec<DType>,
    pub scale_dtypes: Vec<DType>,
    pub gemm_dtypes: Vec<DType>,
    /// Dtypes of the decode-step kernels (`layer_norm`, `bias_activation`,
    /// `attention_decode`, `argmax_rows`).
    #[serde(default)]
    pub decode_dtypes: Vec<DType>,
    /// Dtypes of the Llama-family kernels (`rms_norm`, `rope`,
    /// `attention_causal`, `silu_mul`; `embedding` has a default every
    /// backend gets).
    #[serde(default)]
    pub llama_dtypes: Vec<DType>,
    /// Weight formats `matmul_quant` and `embedding_quant` take in their
    /// block layout (dequantized inside the kernel).
    #[serde(default)]
    pub quant_types: Vec<QuantType>,
    /// Dtypes besides f32 that `attention_causal` reads its key and value
    /// caches in (filled by `convert_copy` from f32 rows), e.g. `F16`
    /// for a KV cache of half the bytes. F32 caches go with `llama_dtypes`.
    #[serde(default)]
    pub kv_cache_dtypes: Vec<DType>,
}

impl Capabilities {
    /// Every kernel for every dtype (test harnesses list the whole suite
    /// with this when there is no device to ask).
    pub fn all() -> Self {
        Capabilities {
            reduce_dtypes: DType::ALL.to_vec(),
            scale_dtypes: DType::ALL.to_vec(),
            gemm_dtypes: DType::ALL.to_vec(),
            decode_dtypes: DType::ALL.to_vec(),
            llama_dtypes: DType::ALL.to_vec(),
            quant_types: QuantType::ALL.to_vec(),
            kv_cache_dtypes: vec![DType::F16],
        }
    }

    /// Whether `attention_causal` takes key and value caches of `dtype`.
    pub fn kv_cache_takes(&self, dtype: DType) -> bool {
        match dtype {
            DType::F32 => self.llama_dtypes.contains(&DType::F32),
            other => self.kv_cache_dtypes.contains(&other),
        }
    }
}

/// Elementwise activation applied after adding a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Bias only.
    Identity,
    Relu,
    /// GELU, tanh approximation: `0.5 x (1 + tanh(0.79788456 (x + 0.044715 x^3)))`.
    Gelu,
}

impl Activation {
    /// The activation in f64, as the references compute it.
    pub fn apply(self, x: f64) -> f64 {
        match self {
            Activation::Identity => x,
            Activation::Relu => x.max(0.0),
            Activation::Gelu => {
                0.5 * x * (1.0 + (0.797_884_560_802_865_4 * (x + 0.044_715 * x * x * x)).tanh())
            }
        }
    }
}

/// Shape of one decode step's attention: `batch` sequences, each with a
/// query of `heads * head_dim` values, attending over its first `lens[b]`
/// cached positions. The caches are `[batch][max_len][heads * head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttentionSpec {
    pub batch: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub max_len: usize,
}

impl AttentionSpec {
    pub fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Check buffer lengths and per-sequence lengths against the spec.
    pub fn validate(&self, q: usize, k: usize, v: usize, out: usize, lens: &[u32]) -> Result<()> {
        let w = self.width();
        let cache = self.batch * self.max_len * w;
        for (name, have, want) in [
            ("attention q", q, self.batch * w),
            ("attention k cache", k, cache),
            ("attention v cache", v, cache),
            ("attention out", out, self.batch * w),
        ] {
            if have != want {
                return Err(Error::invalid(
                    name,
                    format!("holds {have} elements, the attention shape needs {want}"),
                ));
            }
        }
        if lens.len() != self.batch {
            return Err(Error::invalid(
                "attention lengths",
                format!("{} lengths for a batch of {}", lens.len(), self.batch),
            ));
        }
        if let Some((b, l)) = lens
            .iter()
            .enumerate()
            .find(|(_, l)| **l == 0 || **l as usize > self.max_len)
        {
            return Err(Error::invalid(
                format!("attention lengths[{b}]"),
                format!("{l} is not in 1..={}", self.max_len),
            ));
        }
        Ok(())
    }
}

/// A buffer in some device's memory.
pub trait DeviceBuffer: Send + Sync + fmt::Debug + 'static {
    fn dtype(&self) -> DType;
    /// Number of elements.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The device that owns this buffer.
    fn device(&self) -> DeviceId;
    fn size_bytes(&self) -> usize {
        self.len() * self.dtype().size_bytes()
    }
}

/// A compute device of one backend, with static dispatch on its buffer type.
///
/// Every method that can fail for a reason the user or the hardware causes
/// returns an [`Error`]; none panics for such reasons. A kernel a backend does
/// not have for a dtype returns [`Error::Unsupported`].
pub trait Device: Send + Sync + fmt::Debug + 'static {
    type Buffer: DeviceBuffer;

    fn id(&self) -> DeviceId;

    fn info(&self) -> DeviceInfo;

    fn memory(&self) -> Result<MemoryUsage>;

    fn capabilities(&self) -> Capabilities;

    /// A zero-filled buffer of `len` elements. Past the device's memory or
    /// budget this is [`Error::OutOfMemory`] and the device stays usable.
    fn alloc(&self, dtype: DType, len: usize) -> Result<Self::Buffer>;

    /// Copy `src` into `dst[offset..offset + src.len()]`.
    fn upload(&self, dst: &mut Self::Buffer, offset: usize, src: HostSlice<'_>) -> Result<()>;

    /// Copy `src[offset..offset + dst.len()]` into `dst`, waiting for the device.
    fn download(&self, src: &Self::Buffer, offset: usize, dst: HostSliceMut<'_>) -> Result<()>;

    /// Copy `src[src_range]` into `dst[dst_offset..]` on the device.
    fn copy(
        &self,
        src: &Self::Buffer,
        src_range: Range<usize>,
        dst: &mut Self::Buffer,
        dst_offset: usize,
    ) -> Result<()>;

    /// Copy `src[src_range]` into `dst[dst_offset..]` converting each element
    /// to `dst`'s dtype (round to nearest even), e.g. f32 keys and values
    /// into an f16 KV cache. The same dtype on both sides is a [`Device::copy`];
    /// a backend lists the conversions it has in
    /// [`Capabilities::kv_cache_dtypes`] and returns `Unsupported` for others.
    fn convert_copy(
        &self,
        src: &Self::Buffer,
        src_range: Range<usize>,
        dst: &mut Self::Buffer,
        dst_offset: usize,
    ) -> Result<()> {
        if src.dtype() == dst.dtype() {
            return self.copy(src, src_range, dst, dst_offset);
        }
        Err(Error::unsupported(
            self.id().backend,
            format!("convert_copy from {} to {}", src.dtype(), dst.dtype()),
        ))
    }

    /// Elementwise `acc[i] = op(acc[i], src[i])`; `Avg` accumulates as `Sum`
    /// (finish with [`Device::finish_reduce`]).
    fn reduce(&self, op: ReduceOp, acc: &mut Self::Buffer, src: &Self::Buffer) -> Result<()>;

    /// Final step of a reduction over `count` contributions: divides by
    /// `count` for `Avg`, does nothing for the other operators.
    fn finish_reduce(&self, op: ReduceOp, buf: &mut Self::Buffer, count: usize) -> Result<()>;

    /// `buf[i] *= alpha` (integers: computed in f64, truncated toward zero, saturating).
    fn scale(&self, buf: &mut Self::Buffer, alpha: f64) -> Result<()>;

    /// Row-major GEMM, see [`GemmSpec`].
    fn gemm(
        &self,
        spec: &GemmSpec,
        a: &Self::Buffer,
        b: &Self::Buffer,
        c: &mut Self::Buffer,
    ) -> Result<()>;

    /// `out[r] = (x[r] - mean) / sqrt(var + eps) * gamma + beta` for each of
    /// `rows` rows of `gamma.len()` columns.
    fn layer_norm(
        &self,
        x: &Self::Buffer,
        gamma: &Self::Buffer,
        beta: &Self::Buffer,
        out: &mut Self::Buffer,
        eps: f32,
    ) -> Result<()> {
        let _ = (x, gamma, beta, out, eps);
        Err(Error::unsupported(self.id().backend, "layer_norm"))
    }

    /// `x[r][c] = act(x[r][c] + bias[c])` over rows of `bias.len()` columns.
    fn bias_activation(
        &self,
        x: &mut Self::Buffer,
        bias: &Self::Buffer,
        act: Activation,
    ) -> Result<()> {
        let _ = (x, bias, act);
        Err(Error::unsupported(self.id().backend, "bias_activation"))
    }

    /// Scaled dot-product attention of one decode step (see [`AttentionSpec`]):
    /// for each sequence `b` and head `h`,
    /// `out = softmax(q . K[0..lens[b]]^T / sqrt(head_dim)) . V[0..lens[b]]`.
    fn attention_decode(
        &self,
        spec: &AttentionSpec,
        q: &Self::Buffer,
        k_cache: &Self::Buffer,
        v_cache: &Self::Buffer,
        lens: &[u32],
        out: &mut Self::Buffer,
    ) -> Result<()> {
        let _ = (spec, q, k_cache, v_cache, lens, out);
        Err(Error::unsupported(self.id().backend, "attention_decode"))
    }

    /// Index of the largest value of each of `rows` rows (ties: the lowest index).
    fn argmax_rows(&self, x: &Self::Buffer, rows: usize) -> Result<Vec<u32>> {
        let _ = (x, rows);
        Err(Error::unsupported(self.id().backend, "argmax_rows"))
    }

    /// RMS norm (Llama): `out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight`
    /// for each row of `weight.len()` columns.
    fn rms_norm(
        &self,
        x: &Self::Buffer,
        weight: &Self::Buffer,
        out: &mut Self::Buffer,
        eps: f32,
    ) -> Result<()> {
        let _ = (x, weight, out, eps);
        Err(Error::unsupported(self.id().backend, "rms_norm"))
    }

    /// Rotary position embedding in place, see [`RopeSpec`].
    fn rope(
        &self,
        spec: &RopeSpec,
        x: &mut Self::Buffer,
        positions: &[u32],
        inv_freq: &Self::Buffer,
    ) -> Result<()> {
        let _ = (spec, x, positions, inv_freq);
        Err(Error::unsupported(self.id().backend, "rope"))
    }

    /// Causal attention with grouped kv heads, decode or prefill block
    /// (see [`CausalAttentionSpec`]).
    fn attention_causal(
        &self,
        spec: &CausalAttentionSpec,
        q: &Self::Buffer,
        k_cache: &Self::Buffer,
        v_cache: &Self::Buffer,
        lens: &[u32],
        out: &mut Self::Buffer,
    ) -> Result<()> {
        let _ = (spec, q, k_cache, v_cache, lens, out);
        Err(Error::unsupported(self.id().backend, "attention_causal"))
    }

    /// One attention step over sequences with their own caches (see
    /// [`crate::append_attend`]): each sequence's new keys and values are
    /// written into its caches (rounded to the caches' dtype), then its new
    /// rows attend causally to positions `0..=cached + t`.
    ///
    /// The default is one sequence at a time (`convert_copy` twice, then
    /// `attention_causal`, staging the sequence's rows when the step holds
    /// several), so a GPU backend pays a few launches per sequence; a
    /// backend that can reach every cache from one kernel overrides it.
    fn append_and_attend(
        &self,
        spec: &AppendAttendSpec,
        q: &Self::Buffer,
        k_new: &Self::Buffer,
        v_new: &Self::Buffer,
        seqs: &mut [AppendAttendSeq<'_, Self::Buffer>],
        out: &mut Self::Buffer,
    ) -> Result<()> {
        append_attend_per_sequence(self, spec, q, k_new, v_new, seqs, out)
    }

    /// SiLU-gated product in place: `gate[i] = gate[i] / (1 + exp(-gate[i])) * up[i]`.
    fn silu_mul(&self, gate: &mut Self::Buffer, up: &Self::Buffer) -> Result<()> {
        let _ = (gate, up);
        Err(Error::unsupported(self.id().backend, "silu_mul"))
    }

    /// Embedding gather: row `r` of `out` is row `ids[r]` of `table`
    /// (rows of `out.len() / ids.len()` elements). The default is one device
    /// copy per row, which every backend has; a backend may do it in one launch.
    fn embedding(&self, table: &Self::Buffer, ids: &[u32], out: &mut Self::Buffer) -> Result<()> {
        let width = embedding_width(table.len(), out.len(), ids)?;
        for (r, &id) in ids.iter().enumerate() {
            let start = id as usize * width;
            self.copy(table, start..start + width, out, r * width)?;
        }
        Ok(())
    }

    /// `y = x W^T` with f32 `x` and `y` and the weights `w` in their block
    /// layout (a `U8` buffer, see [`QuantMatmulSpec`]), dequantized inside
    /// the kernel. `x` may be rounded to 16-bit integers per 32 values
    /// (step `max |x| / 32767` of the block) and no coarser: the device
    /// suite allows f32 summation's error plus that rounding's, so results
    /// match the f32 path's within a few thousandths of a logit (8-bit
    /// rounding moved SmolLM2's logits by 0.1 and fails the suite).
    fn matmul_quant(
        &self,
        spec: &QuantMatmulSpec,
        x: &Self::Buffer,
        w: &Self::Buffer,
        y: &mut Self::Buffer,
    ) -> Result<()> {
        let _ = (x, w, y);
        Err(Error::unsupported(
            self.id().backend,
            format!("matmul_quant on {} weights", spec.quant),
        ))
    }

    /// Embedding gather from a quantized table (`U8`, rows of `width`
    /// elements in `quant` blocks): row `r` of the f32 `out` is row
    /// `ids[r]` of the table, dequantized exactly.
    fn embedding_quant(
        &self,
        quant: QuantType,
        table: &Self::Buffer,
        ids: &[u32],
        out: &mut Self::Buffer,
    ) -> Result<()> {
        let _ = (table, ids, out);
        Err(Error::unsupported(
            self.id().backend,
            format!("embedding_quant on {quant} weights"),
        ))
    }

    /// Wait until all work ordered on this device so far has finished.
    fn synchronize(&self) -> Result<()>;
}

/// Check that `range` fits in a buffer of `len` elements; `field` names the argument.
pub fn check_range(field: &str, range: &Range<usize>, len: usize) -> Result<()> {
    if range.start > range.end || range.end > len {
        return Err(Error::invalid(
            field,
            format!(
                "range {}..{} is outside a buffer of {len} elements",
                range.start, range.end
            ),
        ));
    }
    Ok(())
}

/// Check that `buf` belongs to `device`; `what` names the argument.
pub fn check_owner(buf: &dyn DeviceBuffer, device: DeviceId, what: &str) -> Result<()> {
    let owner = buf.device();
    if owner == device {
        Ok(())
    } else {
        Err(Error::invalid(
            what,
            format!("buffer belongs to {owner}, passed to {device}"),
        ))
    }
}

/// The decode-step kernels take f32; another dtype is `Unsupported` on `backend`.
pub fn check_decode_f32(backend: Backend, what: &str, buf: &dyn DeviceBuffer) -> Result<()> {
    if buf.dtype() == DType::F32 {
        Ok(())
    } else {
        Err(Error::unsupported(
            backend,
            format!("{what} in {}: the decode-step kernels are f32", buf.dtype()),
        ))
    }
}

/// Rows of a layer norm over `x_len` elements with per-column vectors of
/// `cols` (gamma) and `beta_len` (beta), writing `out_len` elements.
pub fn layer_norm_rows(
    x_len: usize,
    cols: usize,
    beta_len: usize,
    out_len: usize,
) -> Result<usize> {
    if cols == 0 || !x_len.is_multiple_of(cols) || beta_len != cols || out_len != x_len {
        return Err(Error::invalid(
            "layer_norm",
            format!(
                "x {x_len} / gamma {cols} / beta {beta_len} / out {out_len} elements are not rows of one width"
            ),
        ));
    }
    Ok(x_len / cols)
}

/// Rows of `len` elements for a per-column vector of `cols`.
pub fn bias_rows(len: usize, cols: usize) -> Result<usize> {
    if cols == 0 || !len.is_multiple_of(cols) {
        return Err(Error::invalid(
            "bias_activation",
            format!("{len} elements are not rows of {cols}"),
        ));
    }
    Ok(len / cols)
}

/// Columns of `len` elements split into `rows` rows.
pub fn argmax_cols(len: usize, rows: usize) -> Result<usize> {
    if rows == 0 || !len.is_multiple_of(rows) {
        return Err(Error::invalid(
            "argmax rows",
            format!("{len} elements do not split into {rows} rows"),
        ));
    }
    Ok(len / rows)
}

/// Check that `actual` is the buffer's dtype `expected`; `what` names the operation.
pub fn check_dtype(what: &str, expected: DType, actual: DType) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::invalid(
            what,
            format!("dtype {actual} does not match the buffer's {expected}"),
        ))
    }
}

/// Check an upload of `src` into `dst[offset..]` and return the element range written.
pub fn check_upload(
    dst: &dyn DeviceBuffer,
    offset: usize,
    src: &HostSlice<'_>,
) -> Result<Range<usize>> {
    check_dtype("upload", dst.dtype(), src.dtype())?;
    let range = offset..offset.saturating_add(src.len());
    check_range("upload destination", &range, dst.len())?;
    Ok(range)
}

/// Check a download of `src[offset..]` into `dst` and return the element range read.
pub fn check_download(
    src: &dyn DeviceBuffer,
    offset: usize,
    dst: &HostSliceMut<'_>,
) -> Result<Range<usize>> {
    check_dtype("download", src.dtype(), dst.dtype())?;
    let range = offset..offset.saturating_add(dst.len());
    check_range("download source", &range, src.len())?;
    Ok(range)
}

/// Check a device copy of `src[src_range]` into `dst[dst_offset..]` and
/// return the destination's element range.
pub fn check_copy(
    src: &dyn DeviceBuffer,
    src_range: &Range<usize>,
    dst: &dyn DeviceBuffer,
    dst_offset: usize,
) -> Result<Range<usize>> {
    check_dtype("copy", dst.dtype(), src.dtype())?;
    check_range("copy source", src_range, src.len())?;
    let dst_range = dst_offset..dst_offset.saturating_add(src_range.len());
    check_range("copy destination", &dst_range, dst.len())?;
    Ok(dst_range)
}

/// Check a [`Device::convert_copy`]'s ranges (the dtypes may differ) and
/// return the destination's range.
pub fn check_convert_copy(
    src: &dyn DeviceBuffer,
    src_range: &Range<usize>,
    dst: &dyn DeviceBuffer,
    dst_offset: usize,
) -> Result<Range<usize>> {
    check_range("convert_copy source", src_range, src.len())?;
    let dst_range = dst_offset..dst_offset.saturating_add(src_range.len());
    check_range("convert_copy destination", &dst_range, dst.len())?;
    Ok(dst_range)
}

/// A [`Device::convert_copy`] between two different dtypes that a backend
/// with f16 KV caches converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfConversion {
    F32ToF16,
    F16ToF32,
}

/// The conversion from `src` to `dst` (different dtypes), or `Unsupported`
/// on `backend` for any pair but f32 <-> f16.
pub fn half_conversion(backend: Backend, src: DType, dst: DType) -> Result<HalfConversion> {
    match (src, dst) {
        (DType::F32, DType::F16) => Ok(HalfConversion::F32ToF16),
        (DType::F16, DType::F32) => Ok(HalfConversion::F16ToF32),
        (a, b) => Err(Error::unsupported(
            backend,
            format!("convert_copy from {a} to {b} (f32 <-> f16 only)"),
        )),
    }
}

/// The element of the key and value caches `attention_causal` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvElement {
    F32,
    F16,
}

/// Check that the key and value caches share a dtype a backend's
/// `attention_causal` reads (f32 or f16; others are `Unsupported` on
/// `backend`).
pub fn kv_cache_element(
    backend: Backend,
    k: &dyn DeviceBuffer,
    v: &dyn DeviceBuffer,
) -> Result<KvElement> {
    check_dtype("attention v cache", k.dtype(), v.dtype())?;
    match k.dtype() {
        DType::F32 => Ok(KvElement::F32),
        DType::F16 => Ok(KvElement::F16),
        other => Err(Error::unsupported(
            backend,
            format!("attention_causal with a {other} KV cache (f32 and f16 only)"),
        )),
    }
}

/// Check that two buffers have the same dtype and length, as elementwise kernels need.
pub fn check_same_shape(a: &dyn DeviceBuffer, b: &dyn DeviceBuffer, what: &str) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::invalid(
            what,
            format!("dtypes differ: {} and {}", a.dtype(), b.dtype()),
        ));
    }
    if a.len() != b.len() {
        return Err(Error::invalid(
            what,
            format!("lengths differ: {} and {} elements", a.len(), b.len()),
        ));
    }
    Ok(())
}

/// [`Device::append_and_attend`]'s default, callable by a backend that
/// overrides it only to wrap the loop (say, to record it into one
/// submission) or to fall back to it: per sequence, `convert_copy` of its keys and values into
/// its caches, then `attention_causal` over its rows (staged through
/// buffers of their own when the step holds several sequences).
pub fn append_attend_per_sequence<D: Device + ?Sized>(
    d: &D,
    spec: &AppendAttendSpec,
    q: &D::Buffer,
    k_new: &D::Buffer,
    v_new: &D::Buffer,
    seqs: &mut [AppendAttendSeq<'_, D::Buffer>],
    out: &mut D::Buffer,
) -> Result<()> {
    let shape = check_append_attend(
        spec,
        q.len(),
        k_new.len(),
        v_new.len(),
        out.len(),
        &seq_shapes(seqs),
    )?;
    let (qw, kw) = (spec.q_width(), spec.kv_width());
    for (seq, &max_len) in seqs.iter_mut().zip(&shape.max_lens) {
        let (rows, cached) = (seq.rows.clone(), seq.cached);
        let new = rows.start * kw..rows.end * kw;
        d.convert_copy(k_new, new.clone(), seq.k, cached * kw)?;
        d.convert_copy(v_new, new, seq.v, cached * kw)?;
        let causal = spec.causal(rows.len(), max_len);
        let lens = [(cached + rows.len()) as u32];
        if rows.len() == shape.rows {
            d.attention_causal(&causal, q, seq.k, seq.v, &lens, out)?;
            continue;
        }
        // attention_causal reads one sequence's rows: stage them.
        let mut qi = d.alloc(DType::F32, rows.len() * qw)?;
        d.copy(q, rows.start * qw..rows.end * qw, &mut qi, 0)?;
        let mut oi = d.alloc(DType::F32, rows.len() * qw)?;
        d.attention_causal(&causal, &qi, seq.k, seq.v, &lens, &mut oi)?;
        d.copy(&oi, 0..rows.len() * qw, out, rows.start * qw)?;
    }

    Ok(())
}
