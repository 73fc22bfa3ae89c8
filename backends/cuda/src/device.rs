//! The CUDA `Device`: one GPU, one context (the primary one), one stream.
//! The Llama-family launchers are in `device/llama.rs`.

mod llama;
mod quant;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use cudarc::cublas::CudaBlas;
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::CompileOptions;
use hetero_core::device::{
    argmax_cols, bias_rows, check_copy, check_decode_f32, check_download, check_dtype, check_owner,
    check_same_shape, check_upload, layer_norm_rows,
};
use hetero_core::{
    Activation, AppendAttendSeq, AppendAttendSpec, AttentionSpec, Backend, Capabilities,
    CausalAttentionSpec, DType, Device, DeviceBuffer, DeviceId, DeviceInfo, DeviceKind, Error,
    GemmSpec, HostSlice, HostSliceMut, LinkKind, MemoryUsage, QuantMatmulSpec, QuantType, ReduceOp,
    Result, RopeSpec,
};

use crate::error::CudaError;
use crate::kernels;
use crate::nvml::{Nvml, PciAddress, PcieLink};

/// One NVIDIA GPU. Cheap to clone (clones share the context and stream).
#[derive(Debug, Clone)]
pub struct CudaDevice {
    inner: Arc<Inner>,
}

struct Inner {
    id: DeviceId,
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    allocated: Arc<AtomicU64>,
    module: OnceLock<std::result::Result<Arc<CudaModule>, String>>,
    blas: OnceLock<std::result::Result<CudaBlas, String>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("id", &self.id)
            .field("ordinal", &self.ordinal)
            .finish()
    }
}

/// A buffer in GPU memory. Stored as bytes; the dtype says how kernels read it.
pub struct CudaBuffer {
    pub(crate) data: CudaSlice<u8>,
    dtype: DType,
    len: usize,
    device: DeviceId,
    allocated: Arc<AtomicU64>,
    bytes: u64,
}

impl std::fmt::Debug for CudaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBuffer")
            .field("device", &self.device)
            .field("dtype", &self.dtype)
            .field("len", &self.len)
            .finish()
    }
}

/// How one GPU reaches another (see [`CudaDevice::peer_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerPath {
    /// The driver allows direct peer access (`cuDeviceCanAccessPeer`).
    pub direct_access: bool,
    /// NVLink, PCIe, or `Unknown` when NVML is not available to tell.
    pub kind: LinkKind,
    /// Active NVLinks joining the two (0 unless `kind` is NVLink).
    pub nvlinks: u32,
}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        self.allocated.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl DeviceBuffer for CudaBuffer {
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

const BLOCK: u32 = 256;

fn launch_config(n: usize) -> LaunchConfig {
    // Grid-stride loops: enough blocks to fill the GPU, not one per element.
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaDevice {
    /// Open GPU `ordinal` (its primary context and a new stream).
    pub fn new(ordinal: usize) -> Result<Self> {
        crate::check_driver()?;
        let id = DeviceId::new(Backend::Cuda, ordinal as u32);
        let ctx = CudaContext::new(ordinal).map_err(|e| CudaError::driver(id, "cuCtxRetain", e))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| CudaError::driver(id, "cuStreamCreate", e))?;
        Ok(CudaDevice {
            inner: Arc::new(Inner {
                id,
                ordinal,
                ctx,
                stream,
                allocated: Arc::new(AtomicU64::new(0)),
                module: OnceLock::new(),
                blas: OnceLock::new(),
            }),
        })
    }

    pub fn ordinal(&self) -> usize {
        self.inner.ordinal
    }

    /// The cudarc context, for code that goes beyond hetero's API.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.inner.ctx
    }

    /// The stream all of this device's work is ordered on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    /// (major, minor) compute capability.
    pub fn compute_capability(&self) -> Result<(i32, i32)> {
        self.inner
            .ctx
            .compute_capability()
            .map_err(|e| CudaError::driver(self.inner.id, "cuDeviceGetAttribute", e).into())
    }

    /// Compile (once) and load every kernel of this backend, so the first
    /// real call pays no compilation; an error says what is missing.
    pub fn prepare_kernels(&self) -> Result<()> {
        for name in kernels::all_names() {
            self.function(&name)?;
        }
        Ok(())
    }

    /// PCI address of this GPU, as the driver reports it.
    pub fn pci_address(&self) -> Result<PciAddress> {
        let attr = |a| {
            self.inner
                .ctx
                .attribute(a)
                .map_err(self.driver_err("cuDeviceGetAttribute"))
                .map(|v| v as u32)
        };
        Ok(PciAddress {
            domain: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID)?,
            bus: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID)?,
            device: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)?,
        })
    }

    /// This GPU's PCIe link to the host, from NVML (`Unsupported` without it).
    pub fn pcie_link(&self) -> Result<PcieLink> {
        Nvml::get()?.pcie_link(self.pci_address()?)
    }

    /// How this GPU reaches `peer`: whether the driver allows direct peer
    /// access, and over what. The kind comes from NVML (active NVLinks whose
    /// far end is `peer`, else PCIe); without NVML it is `Unknown`.
    pub fn peer_path(&self, peer: &CudaDevice) -> Result<PeerPath> {
        let direct_access = self.can_access_peer(peer)?;
        let (kind, nvlinks) = match Nvml::get() {
            Ok(nvml) => {
                let theirs = peer.pci_address()?;
                let links = nvml
                    .nvlink_peers(self.pci_address()?)?
                    .into_iter()
                    .filter(|a| *a == theirs)
                    .count() as u32;
                if links > 0 {
                    (LinkKind::NvLink, links)
                } else {
                    (LinkKind::Pcie, 0)
                }
            }
            Err(_) => (LinkKind::Unknown, 0),
        };
        Ok(PeerPath {
            direct_access,
            kind,
            nvlinks,
        })
    }

    /// Whether the driver allows this GPU direct access to `peer`'s memory
    /// (`cuDeviceCanAccessPeer`); an error when `peer` is this GPU.
    fn can_access_peer(&self, peer: &CudaDevice) -> Result<bool> {
        if peer.ordinal() == self.ordinal() {
            return Err(Error::invalid(
                "peer",
                format!(
                    "{} is this device; use Device::copy within one GPU",
                    peer.id()
                ),
            ));
        }
        let mut can = 0;
        // SAFETY: both CUdevice handles come from live contexts; can is a
        // valid out pointer.
        let status = unsafe {
            cudarc::driver::sys::cuDeviceCanAccessPeer(
                &mut can,
                self.inner.ctx.cu_device(),
                peer.inner.ctx.cu_device(),
            )
        };
        status
            .result()
            .map_err(self.driver_err("cuDeviceCanAccessPeer"))?;
        Ok(can != 0)
    }

    /// Let this GPU's context and `peer`'s read and write each other's
    /// memory, so peer copies go GPU to GPU instead of through host memory.
    /// Idempotent; `Unsupported` when the driver says the pair cannot.
    pub fn enable_peer_access(&self, peer: &CudaDevice) -> Result<()> {
        if !self.can_access_peer(peer)? {
            return Err(Error::Unsupported {
                what: format!(
                    "peer access between {} and {} (the driver reports none; copies between \
                     them are staged through host memory)",
                    self.id(),
                    peer.id()
                ),
                component: Backend::Cuda.into(),
            });
        }
        for (from, to) in [(self, peer), (peer, self)] {
            from.inner
                .ctx
                .bind_to_thread()
                .map_err(from.driver_err("cuCtxSetCurrent"))?;
            // SAFETY: `from`'s context is current on this thread; `to`'s
            // context is alive for the duration of the call.
            let status =
                unsafe { cudarc::driver::sys::cuCtxEnablePeerAccess(to.inner.ctx.cu_ctx(), 0) };
            match status {
                cudarc::driver::sys::CUresult::CUDA_SUCCESS
                | cudarc::driver::sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED => {}
                other => {
                    return Err(CudaError::driver(
                        from.inner.id,
                        "cuCtxEnablePeerAccess",
                        cudarc::driver::DriverError(other),
                    )
                    .into());
                }
            }
        }
        Ok(())
    }

    /// Copy `src[src_range]` (on this GPU) into `dst` at `dst_offset`, where
    /// `dst` lives on `peer`: `cuMemcpyPeerAsync` on the peer's stream, which
    /// first waits for this GPU's queued work. Direct when peer access is
    /// enabled ([`CudaDevice::enable_peer_access`]), otherwise the driver
    /// stages it. Returns once the copy is complete.
    pub fn copy_to_peer(
        &self,
        src: &CudaBuffer,
        src_range: Range<usize>,
        peer: &CudaDevice,
        dst: &mut CudaBuffer,
        dst_offset: usize,
    ) -> Result<()> {
        self.check_owned(src, "peer copy source")?;
        peer.check_owned(dst, "peer copy destination")?;
        let dst_range = check_copy(src, &src_range, dst, dst_offset)?;
        if src_range.is_empty() {
            return Ok(());
        }
        let from = src.data.slice(Self::bytes_of(src.dtype, &src_range));
        let mut to = dst.data.slice_mut(Self::bytes_of(dst.dtype, &dst_range));
        peer.inner
            .stream
            .memcpy_dtod(&from, &mut to)
            .map_err(peer.driver_err("cuMemcpyPeerAsync"))?;
        peer.synchronize()
    }

    fn driver_err(&self, call: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
        move |e| CudaError::driver(self.inner.id, call, e).into()
    }

    fn module(&self) -> Result<&Arc<CudaModule>> {
        let compiled = self.inner.module.get_or_init(|| {
            if !crate::nvrtc_present() {
                return Err(CudaError::MissingLibrary {
                    library: "libnvrtc",
                    what: "compiling the kernels",
                }
                .to_string());
            }
            let (major, minor) = self.compute_capability().map_err(|e| e.to_string())?;
            let opts = CompileOptions {
                options: vec![format!("--gpu-architecture=compute_{major}{minor}")],
                ..Default::default()
            };
            let ptx = cudarc::nvrtc::compile_ptx_with_opts(kernels::source(), opts)
                .map_err(|e| CudaError::Compile(format!("{e:?}")).to_string())?;
            self.inner
                .ctx
                .load_module(ptx)
                .map_err(|e| CudaError::driver(self.inner.id, "cuModuleLoadData", e).to_string())
        });
        compiled.as_ref().map_err(|reason| Error::Unsupported {
            what: reason.clone(),
            component: Backend::Cuda.into(),
        })
    }

    fn function(&self, name: &str) -> Result<CudaFunction> {
        self.module()?
            .load_function(name)
            .map_err(self.driver_err("cuModuleGetFunction"))
    }

    fn blas(&self) -> Result<&CudaBlas> {
        let blas = self.inner.blas.get_or_init(|| {
            if !crate::cublas_present() {
                return Err(CudaError::MissingLibrary {
                    library: "libcublas",
                    what: "gemm",
                }
                .to_string());
            }
            CudaBlas::new(self.inner.stream.clone()).map_err(|e| {
                CudaError::Cublas {
                    device: self.inner.id,
                    call: "cublasCreate",
                    reason: format!("{e:?}"),
                }
                .to_string()
            })
        });
        blas.as_ref().map_err(|reason| Error::Unsupported {
            what: reason.clone(),
            component: Backend::Cuda.into(),
        })
    }

    fn check_owned(&self, buf: &CudaBuffer, what: &str) -> Result<()> {
        check_owner(buf, self.inner.id, what)
    }

    fn bytes_of(dtype: DType, range: &Range<usize>) -> Range<usize> {
        range.start * dtype.size_bytes()..range.end * dtype.size_bytes()
    }

    /// Launch an elementwise kernel over `buf` with extra scalar arguments.
    fn launch_unary(&self, name: &str, buf: &mut CudaBuffer, arg: UnaryArg) -> Result<()> {
        if buf.len == 0 {
            return Ok(());
        }
        let f = self.function(name)?;
        let n = buf.len as u64;
        let stream = &self.inner.stream;
        let mut launch = stream.launch_builder(&f);
        launch.arg(&mut buf.data).arg(&n);
        match &arg {
            UnaryArg::Count(c) => launch.arg(c),
            UnaryArg::Alpha(a) => launch.arg(a),
        };
        // SAFETY: the kernel reads and writes `n` elements of `buf`, whose
        // allocation holds at least n * size_of(dtype) bytes; the argument
        // types match the kernel's signature in hetero-gpu-kernels.
        unsafe { launch.launch(launch_config(buf.len)) }
            .map(|_| ())
            .map_err(self.driver_err("cuLaunchKernel"))
    }
}

enum UnaryArg {
    Count(u64),
    Alpha(f64),
}

impl Device for CudaDevice {
    type Buffer = CudaBuffer;

    fn id(&self) -> DeviceId {
        self.inner.id
    }

    fn info(&self) -> DeviceInfo {
        let ctx = &self.inner.ctx;
        let (free, total) = ctx
            .mem_get_info()
            .map(|(f, t)| (Some(f as u64), t as u64))
            .unwrap_or((None, 0));
        let integrated = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_INTEGRATED)
            .unwrap_or(0)
            != 0;
        let (major, minor) = ctx.compute_capability().unwrap_or((0, 0));
        DeviceInfo {
            id: self.inner.id,
            name: format!(
                "{} (sm_{major}{minor})",
                ctx.name().unwrap_or_else(|_| "NVIDIA GPU".into())
            ),
            kind: if integrated {
                DeviceKind::IntegratedGpu
            } else {
                DeviceKind::DiscreteGpu
            },
            vendor: "NVIDIA".into(),
            memory_total_bytes: total,
            memory_free_bytes: free,
            driver: crate::driver_version(),
            compute_units: ctx
                .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .ok()
                .and_then(|n| u32::try_from(n).ok()),
            host_threads: None,
        }
    }

    fn memory(&self) -> Result<MemoryUsage> {
        let (free, total) = self
            .inner
            .ctx
            .mem_get_info()
            .map_err(self.driver_err("cuMemGetInfo"))?;
        Ok(MemoryUsage {
            total_bytes: total as u64,
            free_bytes: Some(free as u64),
            allocated_bytes: self.inner.allocated.load(Ordering::Acquire),
        })
    }

    fn capabilities(&self) -> Capabilities {
        let nvrtc = crate::nvrtc_present();
        let kernels = if nvrtc {
            DType::ALL.to_vec()
        } else {
            Vec::new()
        };
        let decode = if kernels.is_empty() {
            Vec::new()
        } else {
            vec![DType::F32]
        };
        Capabilities {
            reduce_dtypes: kernels.clone(),
            scale_dtypes: kernels,
            gemm_dtypes: if crate::cublas_present() {
                vec![DType::F32, DType::F64, DType::F16, DType::BF16]
            } else {
                Vec::new()
            },
            decode_dtypes: decode.clone(),
            llama_dtypes: decode,
            quant_types: if nvrtc {
                QuantType::ALL.to_vec()
            } else {
                Vec::new()
            },
            // f16 caches: converted by cvt.rn, read by the f16 attention.
            kv_cache_dtypes: if nvrtc { vec![DType::F16] } else { Vec::new() },
        }
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<CudaBuffer> {
        let id = self.inner.id;
        let bytes = len
            .checked_mul(dtype.size_bytes())
            .ok_or(Error::OutOfMemory {
                device: id,
                requested_bytes: u64::MAX,
                available_bytes: None,
            })?;
        // The driver rejects zero-byte allocations; keep one byte so every
        // buffer has a valid pointer.
        let data = self
            .inner
            .stream
            .alloc_zeros::<u8>(bytes.max(1))
            .map_err(|e| CudaError::Driver {
                device: id,
                call: "cuMemAlloc",
                code: e.0,
                requested_bytes: bytes as u64,
            })?;
        self.inner
            .allocated
            .fetch_add(bytes as u64, Ordering::AcqRel);
        Ok(CudaBuffer {
            data,
            dtype,
            len,
            device: id,
            allocated: Arc::clone(&self.inner.allocated),
            bytes: bytes as u64,
        })
    }

    fn upload(&self, dst: &mut CudaBuffer, offset: usize, src: HostSlice<'_>) -> Result<()> {
        self.check_owned(dst, "upload destination")?;
        let range = check_upload(dst, offset, &src)?;
        if range.is_empty() {
            return Ok(());
        }
        let bytes = Self::bytes_of(dst.dtype, &range);
        let mut view = dst.data.slice_mut(bytes);
        self.inner
            .stream
            .memcpy_htod(src.as_bytes(), &mut view)
            .map_err(self.driver_err("cuMemcpyHtoDAsync"))
    }

    fn download(&self, src: &CudaBuffer, offset: usize, mut dst: HostSliceMut<'_>) -> Result<()> {
        self.check_owned(src, "download source")?;
        let range = check_download(src, offset, &dst)?;
        if range.is_empty() {
            return Ok(());
        }
        let view = src.data.slice(Self::bytes_of(src.dtype, &range));
        self.inner
            .stream
            .memcpy_dtoh(&view, dst.as_bytes_mut())
            .map_err(self.driver_err("cuMemcpyDtoHAsync"))?;
        self.synchronize()
    }

    fn copy(
        &self,
        src: &CudaBuffer,
        src_range: Range<usize>,
        dst: &mut CudaBuffer,
        dst_offset: usize,
    ) -> Result<()> {
        self.check_owned(src, "copy source")?;
        self.check_owned(dst, "copy destination")?;
        let dst_range = check_copy(src, &src_range, dst, dst_offset)?;
        if src_range.is_empty() {
            return Ok(());
        }
        let from = src.data.slice(Self::bytes_of(src.dtype, &src_range));
        let mut to = dst.data.slice_mut(Self::bytes_of(dst.dtype, &dst_range));
        self.inner
            .stream
            .memcpy_dtod(&from, &mut to)
            .map_err(self.driver_err("cuMemcpyDtoDAsync"))
    }

    fn convert_copy(
        &self,
        src: &CudaBuffer,
        src_range: Range<usize>,
        dst: &mut CudaBuffer,
        dst_offset: usize,
    ) -> Result<()> {
        self.launch_convert_copy(src, src_range, dst, dst_offset)
    }

    fn reduce(&self, op: ReduceOp, acc: &mut CudaBuffer, src: &CudaBuffer) -> Result<()> {
        self.check_owned(acc, "reduce accumulator")?;
        self.check_owned(src, "reduce source")?;
        check_same_shape(acc, src, "reduce operands")?;
        if acc.len == 0 {
            return Ok(());
        }
        let f = self.function(&kernels::reduce_name(op, acc.dtype))?;
        let n = acc.len as u64;
        let mut launch = self.inner.stream.launch_builder(&f);
        launch.arg(&mut acc.data).arg(&src.data).arg(&n);
        // SAFETY: both buffers hold `n` elements of the kernel's dtype
        // (checked above); the signature matches hetero-gpu-kernels.
        unsafe { launch.launch(launch_config(acc.len)) }
            .map(|_| ())
            .map_err(self.driver_err("cuLaunchKernel"))
    }

    fn finish_reduce(&self, op: ReduceOp, buf: &mut CudaBuffer, count: usize) -> Result<()> {
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
        let name = kernels::avg_name(buf.dtype);
        self.launch_unary(&name, buf, UnaryArg::Count(count as u64))
    }

    fn scale(&self, buf: &mut CudaBuffer, alpha: f64) -> Result<()> {
        self.check_owned(buf, "scale buffer")?;
        let name = kernels::scale_name(buf.dtype);
        self.launch_unary(&name, buf, UnaryArg::Alpha(alpha))
    }

    fn gemm(
        &self,
        spec: &GemmSpec,
        a: &CudaBuffer,
        b: &CudaBuffer,
        c: &mut CudaBuffer,
    ) -> Result<()> {
        self.check_owned(a, "gemm a")?;
        self.check_owned(b, "gemm b")?;
        self.check_owned(c, "gemm c")?;
        check_dtype("gemm a", c.dtype, a.dtype)?;
        check_dtype("gemm b", c.dtype, b.dtype)?;
        spec.validate(a.len, b.len, c.len)?;
        if !matches!(c.dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
            return Err(Error::unsupported(
                Backend::Cuda,
                format!(
                    "gemm on {}; the CUDA backend has cuBLAS gemm for f32, f64, f16 and bf16",
                    c.dtype
                ),
            ));
        }
        if spec.m == 0 || spec.n == 0 {
            return Ok(());
        }
        let dims = [spec.m, spec.n, spec.k];
        if dims.iter().any(|&d| d > i32::MAX as usize) {
            return Err(Error::invalid(
                "gemm shape",
                "cuBLAS takes dimensions up to 2^31 - 1",
            ));
        }
        let blas = self.blas()?;
        // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T:
        // call cuBLAS with the operands swapped and the shape transposed.
        let (m, n, k) = (spec.m as i32, spec.n as i32, spec.k as i32);
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        let ldb = if spec.trans_b { k } else { n };
        let lda = if spec.trans_a { m } else { k };
        let stream = &self.inner.stream;
        let (bp, _b_sync) = b.data.device_ptr(stream);
        let (ap, _a_sync) = a.data.device_ptr(stream);
        let (cp, _c_sync) = c.data.device_ptr_mut(stream);
        let handle = *blas.handle();
        let status = match c.dtype {
            DType::F32 => {
                let (alpha, beta) = (spec.alpha as f32, spec.beta as f32);
                // SAFETY: pointers are device allocations holding the
                // validated shapes; alpha/beta are host scalars (cuBLAS'
                // default pointer mode).
                unsafe {
                    cudarc::cublas::result::sgemm(
                        handle,
                        op(spec.trans_b),
                        op(spec.trans_a),
                        n,
                        m,
                        k,
                        &alpha,
                        bp as *const f32,
                        ldb,
                        ap as *const f32,
                        lda,
                        &beta,
                        cp as *mut f32,
                        n,
                    )
                }
            }
            DType::F64 => {
                let (alpha, beta) = (spec.alpha, spec.beta);
                // SAFETY: as above, for f64.
                unsafe {
                    cudarc::cublas::result::dgemm(
                        handle,
                        op(spec.trans_b),
                        op(spec.trans_a),
                        n,
                        m,
                        k,
                        &alpha,
                        bp as *const f64,
                        ldb,
                        ap as *const f64,
                        lda,
                        &beta,
                        cp as *mut f64,
                        n,
                    )
                }
            }
            half => {
                // 16-bit operands, f32 accumulation and scalars, one rounding
                // of the result: the host backend's semantics.
                use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType};
                let ty = if half == DType::F16 {
                    cudaDataType::CUDA_R_16F
                } else {
                    cudaDataType::CUDA_R_16BF
                };
                let (alpha, beta) = (spec.alpha as f32, spec.beta as f32);
                // SAFETY: as above; scalars are f32 as CUBLAS_COMPUTE_32F requires.
                unsafe {
                    cudarc::cublas::result::gemm_ex(
                        handle,
                        op(spec.trans_b),
                        op(spec.trans_a),
                        n,
                        m,
                        k,
                        (&alpha as *const f32).cast(),
                        bp as *const _,
                        ty,
                        ldb,
                        ap as *const _,
                        ty,
                        lda,
                        (&beta as *const f32).cast(),
                        cp as *mut _,
                        ty,
                        n,
                        cublasComputeType_t::CUBLAS_COMPUTE_32F,
                        cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                    )
                }
            }
        };
        status.map_err(|e| {
            CudaError::Cublas {
                device: self.inner.id,
                call: "gemm",
                reason: format!("{e:?}"),
            }
            .into()
        })
    }

    fn layer_norm(
        &self,
        x: &CudaBuffer,
        gamma: &CudaBuffer,
        beta: &CudaBuffer,
        out: &mut CudaBuffer,
        eps: f32,
    ) -> Result<()> {
        for (b, what) in [
            (x, "layer_norm x"),
            (gamma, "layer_norm gamma"),
            (beta, "layer_norm beta"),
        ] {
            self.check_owned(b, what)?;
            check_f32(what, b)?;
        }
        self.check_owned(out, "layer_norm out")?;
        check_f32("layer_norm out", out)?;
        let cols = gamma.len;
        let rows = layer_norm_rows(x.len, cols, beta.len, out.len)?;
        if rows == 0 {
            return Ok(());
        }
        let f = self.function("hetero_layer_norm_f32")?;
        let cols64 = cols as u64;
        let mut launch = self.inner.stream.launch_builder(&f);
        launch
            .arg(&x.data)
            .arg(&gamma.data)
            .arg(&beta.data)
            .arg(&mut out.data)
            .arg(&cols64)
            .arg(&eps);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (kernels::DECODE_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: shapes checked above; one block per row of `cols` floats.
        unsafe { launch.launch(cfg) }
            .map(|_| ())
            .map_err(self.driver_err("cuLaunchKernel"))
    }

    fn bias_activation(
        &self,
        x: &mut CudaBuffer,
        bias: &CudaBuffer,
        act: Activation,
    ) -> Result<()> {
        self.check_owned(x, "bias_activation x")?;
        self.check_owned(bias, "bias")?;
        check_f32("bias_activation x", x)?;
        check_f32("bias", bias)?;
        let cols = bias.len;
        bias_rows(x.len, cols)?;
        if x.len == 0 {
            return Ok(());
        }
        let f = self.function("hetero_bias_act_f32")?;
        let (n, c) = (x.len as u64, cols as u64);
        let code: i32 = match act {
            Activation::Identity => 0,
            Activation::Relu => 1,
            Activation::Gelu => 2,
        };
        let mut launch = self.inner.stream.launch_builder(&f);
        launch
            .arg(&mut x.data)
            .arg(&bias.data)
            .arg(&n)
            .arg(&c)
            .arg(&code);
        // SAFETY: `x` holds n floats, `bias` cols floats.
        unsafe { launch.launch(launch_config(x.len)) }
            .map(|_| ())
            .map_err(self.driver_err("cuLaunchKernel"))
    }

    fn attention_decode(
        &self,
        spec: &AttentionSpec,
        q: &CudaBuffer,
        k_cache: &CudaBuffer,
        v_cache: &CudaBuffer,
        lens: &[u32],
        out: &mut CudaBuffer,
    ) -> Result<()> {
        for (b, what) in [
            (q, "attention q"),
            (k_cache, "attention k cache"),
            (v_cache, "attention v cache"),
        ] {
            self.check_owned(b, what)?;
            check_f32(what, b)?;
        }
        self.check_owned(out, "attention out")?;
        check_f32("attention out", out)?;
        spec.validate(q.len, k_cache.len, v_cache.len, out.len, lens)?;
        if spec.max_len > kernels::ATTENTION_MAX_LEN {
            return Err(Error::unsupported(
                Backend::Cuda,
                format!(
                    "attention over {} positions; the kernel keeps scores in shared memory, up to {}",
                    spec.max_len,
                    kernels::ATTENTION_MAX_LEN
                ),
            ));
        }
        if spec.batch == 0 || spec.heads == 0 {
            return Ok(());
        }
        let lens_i32: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
        let mut lens_buf = self.alloc(DType::I32, lens.len())?;
        self.upload(&mut lens_buf, 0, HostSlice::new(&lens_i32))?;
        let f = self.function("hetero_attention_decode_f32")?;
        let (heads, dh, max_len) = (spec.heads as u64, spec.head_dim as u64, spec.max_len as u64);
        let mut launch = self.inner.stream.launch_builder(&f);
        launch
            .arg(&q.data)
            .arg(&k_cache.data)
            .arg(&v_cache.data)
            .arg(&lens_buf.data)
            .arg(&mut out.data)
            .arg(&heads)
            .arg(&dh)
            .arg(&max_len);
        let cfg = LaunchConfig {
            grid_dim: ((spec.batch * spec.heads) as u32, 1, 1),
            block_dim: (kernels::DECODE_BLOCK, 1, 1),
            shared_mem_bytes: (spec.max_len * 4) as u32,
        };
        // SAFETY: spec.validate checked every buffer and length; scores fit
        // in the dynamic shared memory requested.
        unsafe { launch.launch(cfg) }
            .map(|_| ())
            .map_err(self.driver_err("cuLaunchKernel"))?;
        // `lens_buf` is freed when dropped; the stream orders the free after the kernel.
        Ok(())
    }

    fn argmax_rows(&self, x: &CudaBuffer, rows: usize) -> Result<Vec<u32>> {
        self.check_owned(x, "argmax x")?;
        check_f32("argmax x", x)?;
        let cols = argmax_cols(x.len, rows)? as u64;
        let mut ids = self.alloc(DType::I32, rows)?;
        let f = self.function("hetero_argmax_f32")?;
        let mut launch = self.inner.stream.launch_builder(&f);
        launch.arg(&x.data).arg(&mut ids.data).arg(&cols);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (kernels::DECODE_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: one block per row of `cols` floats; `ids` holds `rows` ints.
        unsafe { launch.launch(cfg) }.map_err(self.driver_err("cuLaunchKernel"))?;
        let mut host = vec![0i32; rows];
        self.download(&ids, 0, HostSliceMut::new(&mut host))?;
        Ok(host.into_iter().map(|i| i as u32).collect())
    }

    fn rms_norm(
        &self,
        x: &CudaBuffer,
        weight: &CudaBuffer,
        out: &mut CudaBuffer,
        eps: f32,
    ) -> Result<()> {
        self.launch_rms_norm(x, weight, out, eps)
    }

    fn rope(
        &self,
        spec: &RopeSpec,
        x: &mut CudaBuffer,
        positions: &[u32],
        inv_freq: &CudaBuffer,
    ) -> Result<()> {
        self.launch_rope(spec, x, positions, inv_freq)
    }

    fn attention_causal(
        &self,
        spec: &CausalAttentionSpec,
        q: &CudaBuffer,
        k_cache: &CudaBuffer,
        v_cache: &CudaBuffer,
        lens: &[u32],
        out: &mut CudaBuffer,
    ) -> Result<()> {
        self.launch_attention_causal(spec, q, k_cache, v_cache, lens, out)
    }

    fn append_and_attend(
        &self,
        spec: &AppendAttendSpec,
        q: &CudaBuffer,
        k_new: &CudaBuffer,
        v_new: &CudaBuffer,
        seqs: &mut [AppendAttendSeq<'_, CudaBuffer>],
        out: &mut CudaBuffer,
    ) -> Result<()> {
        self.launch_append_and_attend(spec, q, k_new, v_new, seqs, out)
    }

    fn silu_mul(&self, gate: &mut CudaBuffer, up: &CudaBuffer) -> Result<()> {
        self.launch_silu_mul(gate, up)
    }

    fn embedding(&self, table: &CudaBuffer, ids: &[u32], out: &mut CudaBuffer) -> Result<()> {
        self.launch_embedding(table, ids, out)
    }

    fn matmul_quant(
        &self,
        spec: &QuantMatmulSpec,
        x: &CudaBuffer,
        w: &CudaBuffer,
        y: &mut CudaBuffer,
    ) -> Result<()> {
        self.launch_matmul_quant(spec, x, w, y)
    }

    fn embedding_quant(
        &self,
        quant: QuantType,
        table: &CudaBuffer,
        ids: &[u32],
        out: &mut CudaBuffer,
    ) -> Result<()> {
        self.launch_embedding_quant(quant, table, ids, out)
    }

    fn synchronize(&self) -> Result<()> {
        self.inner
            .stream
            .synchronize()
            .map_err(self.driver_err("cuStreamSynchronize"))
    }
}

fn check_f32(what: &str, b: &dyn DeviceBuffer) -> Result<()> {
    check_decode_f32(Backend::Cuda, what, b)
}
