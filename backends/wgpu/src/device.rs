//! The wgpu `Device`: one adapter, its device and queue.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hetero_core::device::{
    argmax_cols, bias_rows, check_copy, check_decode_f32, check_download, check_dtype, check_owner,
    check_same_shape, check_upload, layer_norm_rows,
};
use hetero_core::{
    Activation, AttentionSpec, Backend, Capabilities, DType, Device, DeviceBuffer, DeviceId,
    DeviceInfo, DeviceKind, Error, GemmSpec, HostSlice, HostSliceMut, MemoryUsage, ReduceOp,
    Result,
};
use wgpu::util::DeviceExt;

use crate::error::WgpuError;
use crate::kernels::{self, Elementwise};

/// Fallback budget for a hardware GPU: wgpu cannot tell its memory size.
pub const FALLBACK_GPU_BUDGET_BYTES: u64 = 4 << 30;

/// Which WGSL GEMM kernel a device uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GemmKernel {
    /// Register blocks on software (CPU) adapters, shared-memory tiles elsewhere.
    #[default]
    Auto,
    /// 16 x 16 shared-memory tiles with workgroup barriers.
    Tiled,
    /// 4 x 4 register blocks per invocation, no barriers.
    Blocked,
}

/// One wgpu adapter as a hetero device. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WgpuDevice {
    inner: Arc<Inner>,
}

struct Inner {
    id: DeviceId,
    info: wgpu::AdapterInfo,
    device: wgpu::Device,
    queue: wgpu::Queue,
    limits: wgpu::Limits,
    budget: u64,
    /// The adapter can convert f16 pairs in shaders (`unpack2x16float`).
    f16_in_f32: bool,
    allocated: Arc<AtomicU64>,
    lost: Arc<Mutex<Option<String>>>,
    uncaptured: Arc<Mutex<Option<String>>>,
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    gemm_kernel: Mutex<GemmKernel>,
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

/// A buffer in an adapter's memory (a storage buffer of whole 32-bit words).
pub struct WgpuBuffer {
    buffer: wgpu::Buffer,
    dtype: DType,
    len: usize,
    device: DeviceId,
    allocated: Arc<AtomicU64>,
    reserved: u64,
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
        self.buffer.destroy();
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
    fn words(&self) -> u32 {
        self.buffer.size().div_ceil(4) as u32
    }
}

fn align4_down(x: u64) -> u64 {
    x & !3
}

fn align4_up(x: u64) -> u64 {
    x.div_ceil(4) * 4
}

impl WgpuDevice {
    /// Open `adapter` as device `index` of the wgpu backend. `budget`
    /// overrides the default memory budget (see the crate docs).
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
        let budget = budget.unwrap_or_else(|| default_budget(&info));
        let f16_in_f32 = adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::SHADER_F16_IN_F32);
        Ok(WgpuDevice {
            inner: Arc::new(Inner {
                id,
                info,
                device,
                queue,
                limits,
                budget,
                f16_in_f32,
                allocated: Arc::new(AtomicU64::new(0)),
                lost,
                uncaptured,
                pipelines: Mutex::new(HashMap::new()),
                gemm_kernel: Mutex::new(GemmKernel::Auto),
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

    fn check_alive(&self) -> Result<()> {
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
    fn scoped<R>(&self, what: &'static str, f: impl FnOnce() -> R) -> Result<R> {
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

    fn wait(&self) -> Result<()> {
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::DeviceLost {
                device: self.inner.id,
                reason: format!("waiting for the queue: {e}"),
            })?;
        self.check_alive()
    }

    fn check_owned(&self, buf: &WgpuBuffer, what: &str) -> Result<()> {
        check_owner(buf, self.inner.id, what)
    }

    fn pipeline(
        &self,
        name: &str,
        source: impl FnOnce() -> String,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let mut cache = self.inner.pipelines.lock().map_err(|_| Error::DeviceLost {
            device: self.inner.id,
            reason: "pipeline cache poisoned by a panic".into(),
        })?;
        if let Some(p) = cache.get(name) {
            return Ok(Arc::clone(p));
        }
        let device = &self.inner.device;
        let pipeline = self.scoped("compiling a kernel", || {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(source().into()),
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            })
        })?;
        let pipeline = Arc::new(pipeline);
        cache.insert(name.to_string(), Arc::clone(&pipeline));
        Ok(pipeline)
    }

    fn uniform(&self, bytes: &[u8]) -> wgpu::Buffer {
        self.inner
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("hetero params"),
                contents: bytes,
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Run kernel `name` (compiled from `source` once) with `buffers` bound
    /// at 0.., the uniform `params` after them, over `groups` workgroups.
    fn dispatch(
        &self,
        name: &str,
        source: &'static str,
        buffers: &[&wgpu::Buffer],
        params: &[u8],
        groups: (u32, u32, u32),
    ) -> Result<()> {
        let max = self.inner.limits.max_compute_workgroups_per_dimension;
        if groups.0 > max || groups.1 > max || groups.2 > max {
            return Err(Error::unsupported(
                Backend::Wgpu,
                format!(
                    "{name} over {groups:?} workgroups; this adapter allows {max} per dimension"
                ),
            ));
        }
        let pipeline = self.pipeline(name, || source.to_string())?;
        let device = &self.inner.device;
        self.scoped("running a kernel", || {
            let uniform = self.uniform(params);
            let mut entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource: b.as_entire_binding(),
                })
                .collect();
            entries.push(wgpu::BindGroupEntry {
                binding: buffers.len() as u32,
                resource: uniform.as_entire_binding(),
            });
            let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(name),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
            let mut encoder = device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind, &[]);
                pass.dispatch_workgroups(groups.0, groups.1, groups.2);
            }
            self.inner.queue.submit([encoder.finish()]);
        })
    }

    fn check_binding(&self, buf: &WgpuBuffer) -> Result<()> {
        if buf.buffer.size() > self.inner.limits.max_storage_buffer_binding_size {
            return Err(Error::unsupported(
                Backend::Wgpu,
                format!(
                    "a kernel over {} bytes; this adapter binds at most {} bytes per storage buffer",
                    buf.buffer.size(),
                    self.inner.limits.max_storage_buffer_binding_size
                ),
            ));
        }
        Ok(())
    }

    fn elementwise(
        &self,
        kind: Elementwise,
        acc: &mut WgpuBuffer,
        src: Option<&WgpuBuffer>,
        count: u32,
        alpha: f32,
    ) -> Result<()> {
        let dtype = acc.dtype;
        let supported = match kind {
            Elementwise::Scale => kernels::SCALE_DTYPES.contains(&dtype),
            _ => kernels::REDUCE_DTYPES.contains(&dtype),
        };
        if dtype == DType::F16 && !self.inner.f16_in_f32 {
            return Err(Error::unsupported(
                Backend::Wgpu,
                "f16 kernels: this adapter lacks the SHADER_F16_IN_F32 downlevel capability",
            ));
        }
        if !supported {
            return Err(Error::unsupported(
                Backend::Wgpu,
                format!(
                    "{} on {dtype}: WGSL has no 64-bit types, and integer scaling needs f64",
                    match kind {
                        Elementwise::Scale => "scale",
                        _ => "reduce",
                    }
                ),
            ));
        }
        if acc.len == 0 {
            return Ok(());
        }
        self.check_binding(acc)?;
        let name = kind.name(dtype);
        let pipeline = self.pipeline(&name, || kernels::elementwise_source(kind, dtype))?;
        let words = acc.words();
        let mut params = [0u8; 16];
        params[0..4].copy_from_slice(&words.to_ne_bytes());
        params[4..8].copy_from_slice(&count.to_ne_bytes());
        params[8..12].copy_from_slice(&alpha.to_ne_bytes());
        let device = &self.inner.device;
        self.scoped("running a kernel", || {
            let uniform = self.uniform(&params);
            let mut entries = vec![
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: acc.buffer.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: uniform.as_entire_binding(),
                },
            ];
            if let Some(src) = src {
                entries.push(wgpu::BindGroupEntry {
                    binding: 2,
                    resource: src.buffer.as_entire_binding(),
                });
            }
            let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&name),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
            let mut encoder = device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind, &[]);
                let groups = words
                    .div_ceil(kernels::WORKGROUP)
                    .clamp(1, self.inner.limits.max_compute_workgroups_per_dimension);
                pass.dispatch_workgroups(groups, 1, 1);
            }
            self.inner.queue.submit([encoder.finish()]);
        })
    }

    /// Copy `bytes` of `buf` starting at byte `offset` (any alignment) into `out`.
    fn read_bytes(&self, buf: &WgpuBuffer, offset: u64, out: &mut [u8]) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
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
    fn write_bytes(&self, buf: &WgpuBuffer, offset: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let start = align4_down(offset);
        let end = align4_up(offset + data.len() as u64);
        let queue = &self.inner.queue;
        if start == offset && end == offset + data.len() as u64 {
            return self.scoped("uploading", || {
                queue.write_buffer(&buf.buffer, offset, data)
            });
        }
        let mut window = vec![0u8; (end - start) as usize];
        self.read_bytes(buf, start, &mut window)?;
        let skip = (offset - start) as usize;
        window[skip..skip + data.len()].copy_from_slice(data);
        self.scoped("uploading", || {
            queue.write_buffer(&buf.buffer, start, &window)
        })
    }
}

fn default_budget(info: &wgpu::AdapterInfo) -> u64 {
    match info.device_type {
        // A software adapter allocates host memory: half of what is available.
        wgpu::DeviceType::Cpu => available_host_memory()
            .map(|m| m / 2)
            .unwrap_or(FALLBACK_GPU_BUDGET_BYTES),
        _ => FALLBACK_GPU_BUDGET_BYTES,
    }
}

fn available_host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
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
            memory_free_bytes: Some(self.inner.budget.saturating_sub(used)),
            driver: Some(format!("{} {}", i.driver, i.driver_info).trim().to_string())
                .filter(|d| !d.is_empty()),
            compute_units: None,
        }
    }

    fn memory(&self) -> Result<MemoryUsage> {
        let used = self.inner.allocated.load(Ordering::Acquire);
        Ok(MemoryUsage {
            total_bytes: self.inner.budget,
            free_bytes: Some(self.inner.budget.saturating_sub(used)),
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
        if from % 4 == 0 && to % 4 == 0 && n % 4 == 0 {
            let device = &self.inner.device;
            return self.scoped("copying", || {
                let mut encoder = device.create_command_encoder(&Default::default());
                encoder.copy_buffer_to_buffer(&src.buffer, from, &dst.buffer, to, n);
                self.inner.queue.submit([encoder.finish()]);
            });
        }
        // wgpu copies whole words: unaligned 8/16-bit ranges go through the host.
        let mut bytes = vec![0u8; n as usize];
        self.read_bytes(src, from, &mut bytes)?;
        self.write_bytes(dst, to, &bytes)
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
        if spec.m == 0 || spec.n == 0 {
            return Ok(());
        }
        let dims: Vec<u32> = [spec.m, spec.n, spec.k]
            .iter()
            .map(|&d| u32::try_from(d))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::invalid("gemm shape", "dimensions must fit in a u32"))?;
        // Hardware GPUs: shared-memory tiles. Software adapters: register
        // blocks (their workgroup barriers are slow; measured in the README).
        let chosen = self
            .inner
            .gemm_kernel
            .lock()
            .map(|k| *k)
            .unwrap_or_default();
        let blocked = match chosen {
            GemmKernel::Auto => self.inner.info.device_type == wgpu::DeviceType::Cpu,
            GemmKernel::Tiled => false,
            GemmKernel::Blocked => true,
        };
        let (per_group_x, per_group_y) = if blocked {
            (
                kernels::BLOCK * kernels::BLOCKED_WG,
                kernels::BLOCK * kernels::BLOCKED_WG,
            )
        } else {
            (kernels::TILE, kernels::TILE)
        };
        let groups_x = dims[1].div_ceil(per_group_x);
        let groups_y = dims[0].div_ceil(per_group_y);
        let max = self.inner.limits.max_compute_workgroups_per_dimension;
        if groups_x > max || groups_y > max {
            return Err(Error::unsupported(
                Backend::Wgpu,
                format!(
                    "gemm of {} x {}: more than {max} workgroups per dimension",
                    spec.m, spec.n
                ),
            ));
        }
        for buf in [a, b, &*c] {
            self.check_binding(buf)?;
        }
        let pipeline = if blocked {
            self.pipeline("gemm_f32_blocked", || kernels::GEMM_F32_BLOCKED.to_string())?
        } else {
            self.pipeline("gemm_f32", || kernels::GEMM_F32.to_string())?
        };
        let mut params = Vec::with_capacity(32);
        for v in [
            dims[0],
            dims[1],
            dims[2],
            u32::from(spec.trans_a),
            u32::from(spec.trans_b),
        ] {
            params.extend_from_slice(&v.to_ne_bytes());
        }
        params.extend_from_slice(&(spec.alpha as f32).to_ne_bytes());
        params.extend_from_slice(&(spec.beta as f32).to_ne_bytes());
        params.extend_from_slice(&0u32.to_ne_bytes());
        let device = &self.inner.device;
        self.scoped("running gemm", || {
            let uniform = self.uniform(&params);
            let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("gemm"),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: a.buffer.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: b.buffer.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: c.buffer.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: uniform.as_entire_binding(),
                    },
                ],
            });
            let mut encoder = device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind, &[]);
                pass.dispatch_workgroups(groups_x, groups_y, 1);
            }
            self.inner.queue.submit([encoder.finish()]);
        })
    }

    fn layer_norm(
        &self,
        x: &WgpuBuffer,
        gamma: &WgpuBuffer,
        beta: &WgpuBuffer,
        out: &mut WgpuBuffer,
        eps: f32,
    ) -> Result<()> {
        for (b, what) in [
            (x, "layer_norm x"),
            (gamma, "layer_norm gamma"),
            (beta, "layer_norm beta"),
        ] {
            self.check_owned(b, what)?;
            check_f32(what, b)?;
            self.check_binding(b)?;
        }
        self.check_owned(out, "layer_norm out")?;
        check_f32("layer_norm out", out)?;
        let cols = gamma.len;
        let rows = u32::try_from(layer_norm_rows(x.len, cols, beta.len, out.len)?)
            .map_err(|_| Error::invalid("layer_norm", "too many rows"))?;
        if rows == 0 {
            return Ok(());
        }
        let params = words(&[cols as u32, eps.to_bits(), 0, 0]);
        self.dispatch(
            "layer_norm_f32",
            kernels::LAYER_NORM_F32,
            &[&x.buffer, &gamma.buffer, &beta.buffer, &out.buffer],
            &params,
            (rows, 1, 1),
        )
    }

    fn bias_activation(
        &self,
        x: &mut WgpuBuffer,
        bias: &WgpuBuffer,
        act: Activation,
    ) -> Result<()> {
        self.check_owned(x, "bias_activation x")?;
        self.check_owned(bias, "bias")?;
        check_f32("bias_activation x", x)?;
        check_f32("bias", bias)?;
        self.check_binding(x)?;
        let cols = bias.len;
        bias_rows(x.len, cols)?;
        if x.len == 0 {
            return Ok(());
        }
        let code = match act {
            Activation::Identity => 0,
            Activation::Relu => 1,
            Activation::Gelu => 2,
        };
        let n = x.len as u32;
        let params = words(&[n, cols as u32, code, 0]);
        let groups = n
            .div_ceil(kernels::WORKGROUP)
            .clamp(1, self.inner.limits.max_compute_workgroups_per_dimension);
        self.dispatch(
            "bias_act_f32",
            kernels::BIAS_ACT_F32,
            &[&x.buffer, &bias.buffer],
            &params,
            (groups, 1, 1),
        )
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
        for (b, what) in [
            (q, "attention q"),
            (k_cache, "attention k cache"),
            (v_cache, "attention v cache"),
        ] {
            self.check_owned(b, what)?;
            check_f32(what, b)?;
            self.check_binding(b)?;
        }
        self.check_owned(out, "attention out")?;
        check_f32("attention out", out)?;
        spec.validate(q.len, k_cache.len, v_cache.len, out.len, lens)?;
        let blocks = spec.batch * spec.heads;
        if blocks == 0 {
            return Ok(());
        }
        let as_u32 =
            |v: usize| u32::try_from(v).map_err(|_| Error::invalid("attention shape", "too large"));
        let lens_i32: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
        let mut lens_buf = self.alloc(DType::I32, lens.len())?;
        self.upload(&mut lens_buf, 0, HostSlice::new(&lens_i32))?;
        // Scores live in a scratch buffer: workgroup memory is too small for long contexts.
        let scratch = self.alloc(DType::F32, blocks * spec.max_len)?;
        let params = words(&[
            as_u32(spec.heads)?,
            as_u32(spec.head_dim)?,
            as_u32(spec.max_len)?,
            0,
        ]);
        self.dispatch(
            "attention_f32",
            kernels::ATTENTION_F32,
            &[
                &q.buffer,
                &k_cache.buffer,
                &v_cache.buffer,
                &lens_buf.buffer,
                &out.buffer,
                &scratch.buffer,
            ],
            &params,
            (as_u32(blocks)?, 1, 1),
        )
    }

    fn argmax_rows(&self, x: &WgpuBuffer, rows: usize) -> Result<Vec<u32>> {
        self.check_owned(x, "argmax x")?;
        check_f32("argmax x", x)?;
        self.check_binding(x)?;
        let cols = u32::try_from(argmax_cols(x.len, rows)?)
            .map_err(|_| Error::invalid("argmax", "rows too long"))?;
        let ids = self.alloc(DType::I32, rows)?;
        let params = words(&[cols, 0, 0, 0]);
        let groups = u32::try_from(rows).map_err(|_| Error::invalid("argmax", "too many rows"))?;
        self.dispatch(
            "argmax_f32",
            kernels::ARGMAX_F32,
            &[&x.buffer, &ids.buffer],
            &params,
            (groups, 1, 1),
        )?;
        let mut host = vec![0i32; rows];
        self.download(&ids, 0, HostSliceMut::new(&mut host))?;
        Ok(host.into_iter().map(|i| i as u32).collect())
    }

    fn synchronize(&self) -> Result<()> {
        self.wait()
    }
}

/// Uniform bytes from 32-bit words.
fn words(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

fn check_f32(what: &str, b: &dyn DeviceBuffer) -> Result<()> {
    check_decode_f32(Backend::Wgpu, what, b)
}
