//! The wgpu `Device`: one adapter, its device and queue, its budget, and the
//! `Device` trait implemented on them. The work behind the trait lives in
//! files of their own: `buffer.rs` (the buffer type), `error_scope.rs`
//! (turning wgpu errors into typed ones), `dispatch.rs` (pipelines and
//! kernel launches), `io.rs` (moving bytes), `gemm.rs`, `decode.rs` and
//! `llama.rs` (those kernels).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hetero_core::device::{
    check_copy, check_download, check_dtype, check_owner, check_same_shape, check_upload,
};
use hetero_core::{
    Activation, AttentionSpec, Backend, Capabilities, DType, Device, DeviceId, DeviceInfo,
    DeviceKind, Error, GemmSpec, HostSlice, HostSliceMut, MemoryUsage, ReduceOp, Result,
};
use hetero_core::{CausalAttentionSpec, QuantMatmulSpec, QuantType, RopeSpec};

use crate::buffer::{WgpuBuffer, align4_up};
use crate::error::WgpuError;
use crate::gemm::GemmKernel;
use crate::kernels::{self, Elementwise};
use crate::memory_size::{self, AdapterIds, MemorySource, SysfsVram};

/// One wgpu adapter as a hetero device. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WgpuDevice {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) id: DeviceId,
    /// Kept to open the adapter again with another budget.
    pub(crate) adapter: wgpu::Adapter,
    pub(crate) info: wgpu::AdapterInfo,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) limits: wgpu::Limits,
    pub(crate) budget: u64,
    /// Where `budget` came from (`memory_size.rs`).
    pub(crate) memory_source: MemorySource,
    /// The DRM card's VRAM counters, when one matched the adapter.
    pub(crate) vram: Option<SysfsVram>,
    /// The adapter can convert f16 pairs in shaders (`unpack2x16float`).
    pub(crate) f16_in_f32: bool,
    pub(crate) allocated: Arc<AtomicU64>,
    /// Set by wgpu's device-lost callback; every call checks it first.
    pub(crate) lost: Arc<Mutex<Option<String>>>,
    /// An error outside any error scope, recorded instead of panicking.
    pub(crate) uncaptured: Arc<Mutex<Option<String>>>,
    pub(crate) pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    pub(crate) gemm_kernel: Mutex<GemmKernel>,
    /// Commands recorded for one submission (`recording.rs`).
    pub(crate) recording: crate::recording::RecordingSlot,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuDevice")
            .field("id", &self.id)
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .finish()
    }
}

impl WgpuDevice {
    /// Open `adapter` as device `index` of the wgpu backend. `budget`
    /// overrides the memory budget the adapter's own figures give (see
    /// [`MemorySource`] and the crate docs).
    pub fn new(adapter: &wgpu::Adapter, index: u32, budget: Option<u64>) -> Result<Self> {
        let id = DeviceId::new(Backend::Wgpu, index);
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("hetero"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| WgpuError::RequestDevice(e.to_string()))?;
        let lost = Arc::new(Mutex::new(None));
        let lost_cb = Arc::clone(&lost);
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut l) = lost_cb.lock() {
                *l = Some(format!("{reason:?}: {message}"));
            }
        });
        // wgpu's default handler panics on an error outside an error scope;
        // record it instead, and report it from the next call.
        let uncaptured = Arc::new(Mutex::new(None));
        let un_cb = Arc::clone(&uncaptured);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut u) = un_cb.lock() {
                *u = Some(e.to_string());
            }
        }));
        let size = memory_size::decide(
            AdapterIds::of(&info),
            budget,
            std::path::Path::new(memory_size::DRM_ROOT),
            hetero_core::system::mem_available,
        );
        let f16_in_f32 = adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::SHADER_F16_IN_F32);
        Ok(WgpuDevice {
            inner: Arc::new(Inner {
                id,
                adapter: adapter.clone(),
                info,
                device,
                queue,
                limits,
                budget: size.budget_bytes,
                memory_source: size.source,
                vram: size.vram,
                f16_in_f32,
                allocated: Arc::new(AtomicU64::new(0)),
                lost,
                uncaptured,
                pipelines: Mutex::new(HashMap::new()),
                gemm_kernel: Mutex::new(GemmKernel::Auto),
                recording: Arc::new(Mutex::new(None)),
            }),
        })
    }

    /// The adapter's description as wgpu reports it.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }

    /// Choose the GEMM kernel (tests use this to check both on one adapter).
    pub fn set_gemm_kernel(&self, kernel: GemmKernel) {
        if let Ok(mut k) = self.inner.gemm_kernel.lock() {
            *k = kernel;
        }
    }

    /// The memory budget this device allocates against, bytes.
    pub fn budget(&self) -> u64 {
        self.inner.budget
    }

    /// Where [`budget`](Self::budget) came from: an override, the DRM
    /// card's VRAM total, a software adapter's share of host memory, or the
    /// fallback (with the reason).
    pub fn memory_source(&self) -> &MemorySource {
        &self.inner.memory_source
    }

    /// The same adapter opened again as a new device with the same id and
    /// `budget` bytes as its budget ([`MemorySource::Override`]): what
    /// `--device wgpu:N,memory=SIZE` gives. The new device has its own wgpu
    /// device and queue and its own budget ledger; buffers of one are not
    /// buffers of the other.
    pub fn with_budget(&self, budget: u64) -> Result<WgpuDevice> {
        WgpuDevice::new(&self.inner.adapter, self.inner.id.index, Some(budget))
    }

    /// Free bytes: what the budget has left, and no more than the driver
    /// says the card has free where it reports used VRAM.
    fn free_bytes(&self, used: u64) -> u64 {
        let left = self.inner.budget.saturating_sub(used);
        match self.inner.vram.as_ref().and_then(SysfsVram::reported_free) {
            Some(reported) => left.min(reported),
            None => left,
        }
    }

    /// A short label for test names and tables: `"0-vulkan-llvmpipe"`.
    pub fn label(&self) -> String {
        let name: String = self
            .inner
            .info
            .name
            .split(|c: char| !c.is_ascii_alphanumeric())
            .find(|s| !s.is_empty())
            .unwrap_or("adapter")
            .to_ascii_lowercase();
        format!(
            "{}-{}-{}",
            self.inner.id.index,
            self.inner.info.backend.to_str(),
            name
        )
    }

    /// `InvalidInput` when `buf` belongs to another device.
    pub(crate) fn check_owned(&self, buf: &WgpuBuffer, what: &str) -> Result<()> {
        check_owner(buf, self.inner.id, what)
    }
}

impl Device for WgpuDevice {
    type Buffer = WgpuBuffer;

    fn id(&self) -> DeviceId {
        self.inner.id
    }

    fn info(&self) -> DeviceInfo {
        let i = &self.inner.info;
        let used = self.inner.allocated.load(Ordering::Acquire);
        DeviceInfo {
            id: self.inner.id,
            name: format!("{} ({})", i.name, i.backend.to_str()),
            kind: match i.device_type {
                wgpu::DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu,
                wgpu::DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu,
                _ => DeviceKind::Virtual,
            },
            vendor: format!("{:#06x}", i.vendor),
            memory_total_bytes: self.inner.budget,
            memory_free_bytes: Some(self.free_bytes(used)),
            driver: Some(format!("{} {}", i.driver, i.driver_info).trim().to_string())
                .filter(|d| !d.is_empty()),
            compute_units: None,
            host_threads: match i.device_type {
                wgpu::DeviceType::Cpu => Some(software_adapter_threads()),
                _ => None,
            },
        }
    }

    fn memory(&self) -> Result<MemoryUsage> {
        let used = self.inner.allocated.load(Ordering::Acquire);
        Ok(MemoryUsage {
            total_bytes: self.inner.budget,
            free_bytes: Some(self.free_bytes(used)),
            allocated_bytes: used,
        })
    }

    fn capabilities(&self) -> Capabilities {
        let usable = |d: &DType| *d != DType::F16 || self.inner.f16_in_f32;
        Capabilities {
            reduce_dtypes: kernels::REDUCE_DTYPES.into_iter().filter(usable).collect(),
            scale_dtypes: kernels::SCALE_DTYPES.into_iter().filter(usable).collect(),
            gemm_dtypes: vec![DType::F32],
            decode_dtypes: vec![DType::F32],
            llama_dtypes: vec![DType::F32],
            quant_types: self.quant_types(),
            // f16 caches converted by bit operations: every adapter.
            kv_cache_dtypes: vec![DType::F16],
        }
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<WgpuBuffer> {
        let id = self.inner.id;
        let too_big = |requested: u64, reason: String| -> Error {
            WgpuError::OutOfMemory {
                device: id,
                what: "allocating a buffer",
                reason: format!("{requested} bytes: {reason}"),
            }
            .into()
        };
        let bytes = len
            .checked_mul(dtype.size_bytes())
            .and_then(|b| u64::try_from(b).ok())
            .ok_or_else(|| too_big(u64::MAX, "larger than the address space".into()))?;
        let size = align4_up(bytes).max(4);
        if size > self.inner.limits.max_buffer_size {
            return Err(too_big(
                size,
                format!(
                    "over this adapter's max_buffer_size of {}",
                    self.inner.limits.max_buffer_size
                ),
            ));
        }
        let reserved = self
            .inner
            .allocated
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(size).filter(|&t| t <= self.inner.budget)
            })
            .map_err(|used| Error::OutOfMemory {
                device: id,
                requested_bytes: size,
                available_bytes: Some(self.inner.budget.saturating_sub(used)),
            });
        reserved?;
        let device = &self.inner.device;
        let created = self.scoped("allocating a buffer", || {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("hetero"),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                // wgpu zero-initialises new buffers.
                mapped_at_creation: false,
            })
        });
        match created {
            Ok(buffer) => Ok(WgpuBuffer {
                buffer,
                dtype,
                len,
                device: id,
                allocated: Arc::clone(&self.inner.allocated),
                reserved: size,
                recording: Arc::clone(&self.inner.recording),
            }),
            Err(e) => {
                self.inner.allocated.fetch_sub(size, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    fn upload(&self, dst: &mut WgpuBuffer, offset: usize, src: HostSlice<'_>) -> Result<()> {
        self.check_owned(dst, "upload destination")?;
        check_upload(dst, offset, &src)?;
        self.write_bytes(
            dst,
            (offset * dst.dtype.size_bytes()) as u64,
            src.as_bytes(),
        )
    }

    fn download(&self, src: &WgpuBuffer, offset: usize, mut dst: HostSliceMut<'_>) -> Result<()> {
        self.check_owned(src, "download source")?;
        check_download(src, offset, &dst)?;
        self.read_bytes(
            src,
            (offset * src.dtype.size_bytes()) as u64,
            dst.as_bytes_mut(),
        )
    }

    fn copy(
        &self,
        src: &WgpuBuffer,
        src_range: Range<usize>,
        dst: &mut WgpuBuffer,
        dst_offset: usize,
    ) -> Result<()> {
        self.check_owned(src, "copy source")?;
        self.check_owned(dst, "copy destination")?;
        check_copy(src, &src_range, dst, dst_offset)?;
        if src_range.is_empty() {
            return Ok(());
        }
        let s = src.dtype.size_bytes() as u64;
        let (from, to, n) = (
            src_range.start as u64 * s,
            dst_offset as u64 * s,
            src_range.len() as u64 * s,
        );
        self.copy_bytes(src, from, dst, to, n)
    }

    fn convert_copy(
        &self,
        src: &WgpuBuffer,
        src_range: Range<usize>,
        dst: &mut WgpuBuffer,
        dst_offset: usize,
    ) -> Result<()> {
        self.convert_copy_kv(src, src_range, dst, dst_offset)
    }

    fn reduce(&self, op: ReduceOp, acc: &mut WgpuBuffer, src: &WgpuBuffer) -> Result<()> {
        self.check_owned(acc, "reduce accumulator")?;
        self.check_owned(src, "reduce source")?;
        check_same_shape(acc, src, "reduce operands")?;
        self.elementwise(Elementwise::Combine(op), acc, Some(src), 0, 0.0)
    }

    fn finish_reduce(&self, op: ReduceOp, buf: &mut WgpuBuffer, count: usize) -> Result<()> {
        self.check_owned(buf, "reduce buffer")?;
        if count == 0 {
            return Err(Error::invalid(
                "count",
                "a reduction needs at least one contribution",
            ));
        }
        if op != ReduceOp::Avg || count == 1 {
            return Ok(());
        }
        let count =
            u32::try_from(count).map_err(|_| Error::invalid("count", "must fit in a u32"))?;
        self.elementwise(Elementwise::FinishAvg, buf, None, count, 0.0)
    }

    fn scale(&self, buf: &mut WgpuBuffer, alpha: f64) -> Result<()> {
        self.check_owned(buf, "scale buffer")?;
        self.elementwise(Elementwise::Scale, buf, None, 0, alpha as f32)
    }

    fn gemm(
        &self,
        spec: &GemmSpec,
        a: &WgpuBuffer,
        b: &WgpuBuffer,
        c: &mut WgpuBuffer,
    ) -> Result<()> {
        self.check_owned(a, "gemm a")?;
        self.check_owned(b, "gemm b")?;
        self.check_owned(c, "gemm c")?;
        check_dtype("gemm a", c.dtype, a.dtype)?;
        check_dtype("gemm b", c.dtype, b.dtype)?;
        spec.validate(a.len, b.len, c.len)?;
        if c.dtype != DType::F32 {
            return Err(Error::unsupported(
                Backend::Wgpu,
                format!(
                    "gemm on {}; the wgpu backend has a WGSL gemm for f32",
                    c.dtype
                ),
            ));
        }
        self.gemm_f32(spec, a, b, c)
    }

    fn layer_norm(
        &self,
        x: &WgpuBuffer,
        gamma: &WgpuBuffer,
        beta: &WgpuBuffer,
        out: &mut WgpuBuffer,
        eps: f32,
    ) -> Result<()> {
        self.layer_norm_f32(x, gamma, beta, out, eps)
    }

    fn bias_activation(
        &self,
        x: &mut WgpuBuffer,
        bias: &WgpuBuffer,
        act: Activation,
    ) -> Result<()> {
        self.bias_activation_f32(x, bias, act)
    }

    fn attention_decode(
        &self,
        spec: &AttentionSpec,
        q: &WgpuBuffer,
        k_cache: &WgpuBuffer,
        v_cache: &WgpuBuffer,
        lens: &[u32],
        out: &mut WgpuBuffer,
    ) -> Result<()> {
        self.attention_decode_f32(spec, q, k_cache, v_cache, lens, out)
    }

    fn argmax_rows(&self, x: &WgpuBuffer, rows: usize) -> Result<Vec<u32>> {
        self.argmax_rows_f32(x, rows)
    }

    fn rms_norm(
        &self,
        x: &WgpuBuffer,
        weight: &WgpuBuffer,
        out: &mut WgpuBuffer,
        eps: f32,
    ) -> Result<()> {
        self.rms_norm_f32(x, weight, out, eps)
    }

    fn rope(
        &self,
        spec: &RopeSpec,
        x: &mut WgpuBuffer,
        positions: &[u32],
        inv_freq: &WgpuBuffer,
    ) -> Result<()> {
        self.rope_f32(spec, x, positions, inv_freq)
    }

    /// The per-sequence loop, recorded into one submission
    /// (`recording.rs`).
    fn append_and_attend(
        &self,
        spec: &hetero_core::AppendAttendSpec,
        q: &WgpuBuffer,
        k_new: &WgpuBuffer,
        v_new: &WgpuBuffer,
        seqs: &mut [hetero_core::AppendAttendSeq<'_, WgpuBuffer>],
        out: &mut WgpuBuffer,
    ) -> Result<()> {
        self.recorded(|| {
            hetero_core::device::append_attend_per_sequence(self, spec, q, k_new, v_new, seqs, out)
        })
    }

    fn attention_causal(
        &self,
        spec: &CausalAttentionSpec,
        q: &WgpuBuffer,
        k_cache: &WgpuBuffer,
        v_cache: &WgpuBuffer,
        lens: &[u32],
        out: &mut WgpuBuffer,
    ) -> Result<()> {
        self.attention_causal_f32(spec, q, k_cache, v_cache, lens, out)
    }

    fn silu_mul(&self, gate: &mut WgpuBuffer, up: &WgpuBuffer) -> Result<()> {
        self.silu_mul_f32(gate, up)
    }

    fn embedding(&self, table: &WgpuBuffer, ids: &[u32], out: &mut WgpuBuffer) -> Result<()> {
        self.embedding_gather(table, ids, out)
    }

    fn matmul_quant(
        &self,
        spec: &QuantMatmulSpec,
        x: &WgpuBuffer,
        w: &WgpuBuffer,
        y: &mut WgpuBuffer,
    ) -> Result<()> {
        self.matmul_quant_blocks(spec, x, w, y)
    }

    fn embedding_quant(
        &self,
        quant: QuantType,
        table: &WgpuBuffer,
        ids: &[u32],
        out: &mut WgpuBuffer,
    ) -> Result<()> {
        self.embedding_quant_blocks(quant, table, ids, out)
    }

    fn synchronize(&self) -> Result<()> {
        self.wait()
    }
}

/// Threads a software adapter (`DeviceType::Cpu`: lavapipe, llvmpipe)
/// runs its work on: Mesa's llvmpipe takes `LP_NUM_THREADS` (0: the
/// calling thread alone), and otherwise one per processor thread.
fn software_adapter_threads() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = std::env::var("LP_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(cores, |n| n.max(1));
    u32::try_from(threads).unwrap_or(u32::MAX)
}
