//! The HIP-backed device (feature `rocm`). Its kernels (the shared source
//! of hetero-gpu-kernels, compiled by hiprtc for the device's processor)
//! are launched from `hip/ops.rs`.
//!
//! `hip-sys` provides the build-time link to `libamdhip64` (its build script
//! finds the runtime) and the argument types. The handful of calls used here
//! are re-declared returning the raw `i32` status: `hip-sys` types the status
//! as a Rust enum generated from one ROCm version, and a runtime of another
//! version returning a code that enum lacks would be undefined behaviour.

use std::ffi::{c_char, c_int, c_void};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hetero_core::device::{check_copy, check_download, check_owner, check_upload};
use hetero_core::{
    Activation, AttentionSpec, Backend, Capabilities, CausalAttentionSpec, DType, Device,
    DeviceBuffer, DeviceId, DeviceInfo, DeviceKind, Error, GemmSpec, HostSlice, HostSliceMut, Link,
    LinkKind, MemoryUsage, ReduceOp, Result, RopeSpec,
};
use hip_sys::hiprt::{hipDeviceProp_t, hipMemcpyKind};

use crate::error::{HIP_ERROR_NO_DEVICE, RocmError};
use crate::module::Module;

mod ops;

#[link(name = "amdhip64")]
unsafe extern "C" {
    fn hipGetDeviceCount(count: *mut c_int) -> i32;
    fn hipSetDevice(device: c_int) -> i32;
    fn hipDeviceGetName(name: *mut c_char, len: c_int, device: c_int) -> i32;
    fn hipMemGetInfo(free: *mut usize, total: *mut usize) -> i32;
    fn hipMalloc(ptr: *mut *mut c_void, size: usize) -> i32;
    fn hipFree(ptr: *mut c_void) -> i32;
    fn hipMemset(dst: *mut c_void, value: c_int, size: usize) -> i32;
    fn hipMemcpy(dst: *mut c_void, src: *const c_void, size: usize, kind: hipMemcpyKind) -> i32;
    fn hipMemcpyPeer(
        dst: *mut c_void,
        dst_device: c_int,
        src: *const c_void,
        src_device: c_int,
        size: usize,
    ) -> i32;
    fn hipDeviceSynchronize() -> i32;
    fn hipRuntimeGetVersion(version: *mut c_int) -> i32;
    fn hipGetDeviceProperties(props: *mut c_void, device: c_int) -> i32;
}

/// Room for `hipDeviceProp_t` of any ROCm version: the runtime writes its
/// own version's struct, which may be larger than hip-sys's.
#[repr(C, align(8))]
struct PropsBuffer([u8; 4096]);

const _: () = assert!(size_of::<hipDeviceProp_t>() <= 4096);

/// The device's target id, e.g. `gfx90a:sramecc+:xnack-`
/// (`hipDeviceProp_t::gcnArchName`), or `None` when the runtime cannot tell.
fn gcn_arch_name(ordinal: c_int) -> Option<String> {
    let mut props = PropsBuffer([0; 4096]);
    // SAFETY: the buffer is larger than any hipDeviceProp_t the runtime writes.
    let status = unsafe { hipGetDeviceProperties(props.0.as_mut_ptr().cast(), ordinal) };
    if status != 0 {
        return None;
    }
    // gcnArchName's offset has been the same (396) from ROCm 4 to 5.7, and
    // ROCm 6 keeps this layout behind the unversioned symbol called here.
    let start = std::mem::offset_of!(hipDeviceProp_t, gcnArchName);
    let field = &props.0[start..start + 256];
    let len = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let name = String::from_utf8_lossy(&field[..len]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// Number of HIP devices, or an `Unsupported` error saying why there are none.
pub(crate) fn device_count() -> Result<usize> {
    let mut n: c_int = 0;
    // SAFETY: writes one int.
    let status = unsafe { hipGetDeviceCount(&mut n) };
    match status {
        0 if n > 0 => Ok(n as usize),
        0 => Err(RocmError::NoDevice("the HIP runtime reports 0 devices".into()).into()),
        HIP_ERROR_NO_DEVICE => Err(RocmError::NoDevice("hipErrorNoDevice".into()).into()),
        code => {
            Err(RocmError::NoDevice(format!("hipGetDeviceCount returned status {code}")).into())
        }
    }
}

fn runtime_version() -> Option<String> {
    let mut v: c_int = 0;
    // SAFETY: writes one int.
    (unsafe { hipRuntimeGetVersion(&mut v) } == 0).then(|| format!("HIP runtime {v}"))
}

/// One AMD GPU. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RocmDevice {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: DeviceId,
    ordinal: c_int,
    name: String,
    /// Target id (`gcnArchName`), e.g. `gfx90a:sramecc+:xnack-`.
    arch: String,
    allocated: Arc<AtomicU64>,
    /// The shared kernels, compiled for `arch` and loaded on first use.
    module: OnceLock<std::result::Result<Module, String>>,
}

/// A buffer in GPU memory.
#[derive(Debug)]
pub struct RocmBuffer {
    ptr: DevicePtr,
    dtype: DType,
    len: usize,
    device: DeviceId,
    ordinal: c_int,
    allocated: Arc<AtomicU64>,
    bytes: usize,
}

#[derive(Debug)]
struct DevicePtr(*mut c_void);

// SAFETY: a device address is plain data; every use goes through the HIP
// runtime, which is thread-safe, after selecting the owning device.
unsafe impl Send for DevicePtr {}
// SAFETY: as above; `&RocmBuffer` only reads through the runtime.
unsafe impl Sync for DevicePtr {}

impl Drop for RocmBuffer {
    fn drop(&mut self) {
        // SAFETY: the pointer came from hipMalloc on this device and is freed once.
        unsafe {
            hipSetDevice(self.ordinal);
            hipFree(self.ptr.0);
        }
        self.allocated
            .fetch_sub(self.bytes as u64, Ordering::AcqRel);
    }
}

impl RocmBuffer {
    fn at(&self, elem: usize) -> *mut c_void {
        // SAFETY: callers check `elem <= len`, so the offset stays inside
        // (or one past) the allocation.
        unsafe {
            self.ptr
                .0
                .cast::<u8>()
                .add(elem * self.dtype.size_bytes())
                .cast()
        }
    }
}

impl DeviceBuffer for RocmBuffer {
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

impl RocmDevice {
    /// Open GPU `ordinal`.
    pub fn new(ordinal: usize) -> Result<Self> {
        let id = DeviceId::new(Backend::Rocm, ordinal as u32);
        let ordinal = c_int::try_from(ordinal)
            .map_err(|_| Error::invalid("ordinal", "does not fit in a C int"))?;
        let mut buf = [0 as c_char; 256];
        // SAFETY: `buf` holds 256 chars; the runtime writes a NUL-terminated name.
        let status = unsafe { hipDeviceGetName(buf.as_mut_ptr(), buf.len() as c_int, ordinal) };
        let name = if status == 0 {
            let bytes: Vec<u8> = buf
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            "AMD GPU".into()
        };
        let arch = gcn_arch_name(ordinal).unwrap_or_default();
        let device = RocmDevice {
            inner: Arc::new(Inner {
                id,
                ordinal,
                name,
                arch,
                allocated: Arc::new(AtomicU64::new(0)),
                module: OnceLock::new(),
            }),
        };
        device.select("hipSetDevice")?;
        Ok(device)
    }

    pub fn ordinal(&self) -> usize {
        self.inner.ordinal as usize
    }

    fn status(&self, call: &'static str, code: i32) -> Result<()> {
        if code == 0 {
            Ok(())
        } else {
            Err(RocmError::Hip {
                device: self.inner.id,
                call,
                code,
                requested_bytes: 0,
            }
            .into())
        }
    }

    /// HIP's current device is per thread: select ours before every call.
    fn select(&self, call: &'static str) -> Result<()> {
        // SAFETY: plain runtime call.
        self.status(call, unsafe { hipSetDevice(self.inner.ordinal) })
    }

    fn check_owned(&self, buf: &RocmBuffer, what: &str) -> Result<()> {
        check_owner(buf, self.inner.id, what)
    }

    /// The GPU's target id as the runtime reports it (`gcnArchName`, e.g.
    /// `gfx90a:sramecc+:xnack-`); empty when the runtime did not tell.
    pub fn arch(&self) -> &str {
        &self.inner.arch
    }

    /// `Ok` when the installed ROCm can compile the kernels for this GPU
    /// (hiprtc and comgr load, comgr knows the processor), else why not.
    /// Cheap: nothing is compiled.
    pub fn kernels_supported(&self) -> Result<()> {
        if self.inner.arch.is_empty() {
            return Err(Error::unsupported(
                Backend::Rocm,
                "kernels: the HIP runtime reports no architecture (gcnArchName) for this GPU",
            ));
        }
        crate::rtc::check_target(&self.inner.arch).map_err(Error::from)
    }

    /// Compile (once per processor, cached on disk) and load every kernel,
    /// so the first real call pays no compilation; an error says why not.
    pub fn prepare_kernels(&self) -> Result<()> {
        self.module().map(|_| ())
    }

    fn module(&self) -> Result<&Module> {
        let loaded = self.inner.module.get_or_init(|| {
            self.kernels_supported().map_err(|e| e.to_string())?;
            let code =
                crate::code_cache::code_object(&self.inner.arch).map_err(|e| e.to_string())?;
            self.select("hipSetDevice").map_err(|e| e.to_string())?;
            Module::load(
                self.inner.id,
                self.inner.ordinal,
                &code,
                &hetero_gpu_kernels::all_names(),
            )
            .map_err(|e| e.to_string())
        });
        loaded.as_ref().map_err(|reason| Error::Unsupported {
            what: reason.clone(),
            component: Backend::Rocm.into(),
        })
    }
}

impl Device for RocmDevice {
    type Buffer = RocmBuffer;

    fn id(&self) -> DeviceId {
        self.inner.id
    }

    fn info(&self) -> DeviceInfo {
        let mem = self.memory().ok();
        DeviceInfo {
            id: self.inner.id,
            name: self.inner.name.clone(),
            kind: DeviceKind::DiscreteGpu,
            vendor: "AMD".into(),
            memory_total_bytes: mem.map(|m| m.total_bytes).unwrap_or(0),
            memory_free_bytes: mem.and_then(|m| m.free_bytes),
            driver: runtime_version(),
            compute_units: None,
            host_threads: None,
        }
    }

    fn memory(&self) -> Result<MemoryUsage> {
        self.select("hipSetDevice")?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: writes two usizes.
        self.status("hipMemGetInfo", unsafe {
            hipMemGetInfo(&mut free, &mut total)
        })?;
        Ok(MemoryUsage {
            total_bytes: total as u64,
            free_bytes: Some(free as u64),
            allocated_bytes: self.inner.allocated.load(Ordering::Acquire),
        })
    }

    fn capabilities(&self) -> Capabilities {
        // Every kernel runs on the GPU, compiled by hiprtc; where the
        // installed ROCm cannot compile for this GPU there are none (and
        // the calls say why), never a silent trip through the host.
        if self.kernels_supported().is_err() {
            return Capabilities {
                reduce_dtypes: Vec::new(),
                scale_dtypes: Vec::new(),
                gemm_dtypes: Vec::new(),
                decode_dtypes: Vec::new(),
                llama_dtypes: Vec::new(),
                quant_types: Vec::new(),
                kv_cache_dtypes: Vec::new(),
            };
        }
        Capabilities {
            reduce_dtypes: DType::ALL.to_vec(),
            scale_dtypes: DType::ALL.to_vec(),
            gemm_dtypes: hetero_gpu_kernels::GEMM_DTYPES.to_vec(),
            decode_dtypes: vec![DType::F32],
            llama_dtypes: vec![DType::F32],
            quant_types: Vec::new(),
            // Its attention reads f32 caches only.
            kv_cache_dtypes: Vec::new(),
        }
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<RocmBuffer> {
        let id = self.inner.id;
        let bytes = len
            .checked_mul(dtype.size_bytes())
            .ok_or(Error::OutOfMemory {
                device: id,
                requested_bytes: u64::MAX,
                available_bytes: None,
            })?;
        self.select("hipSetDevice")?;
        let mut ptr: *mut c_void = std::ptr::null_mut();
        // SAFETY: out-pointer; at least one byte so every buffer has an address.
        let status = unsafe { hipMalloc(&mut ptr, bytes.max(1)) };
        if status != 0 {
            return Err(RocmError::Hip {
                device: id,
                call: "hipMalloc",
                code: status,
                requested_bytes: bytes as u64,
            }
            .into());
        }
        let buf = RocmBuffer {
            ptr: DevicePtr(ptr),
            dtype,
            len,
            device: id,
            ordinal: self.inner.ordinal,
            allocated: Arc::clone(&self.inner.allocated),
            bytes,
        };
        self.inner
            .allocated
            .fetch_add(bytes as u64, Ordering::AcqRel);
        // SAFETY: `bytes` bytes were just allocated at `ptr`.
        self.status("hipMemset", unsafe { hipMemset(ptr, 0, bytes) })?;
        Ok(buf)
    }

    fn upload(&self, dst: &mut RocmBuffer, offset: usize, src: HostSlice<'_>) -> Result<()> {
        self.check_owned(dst, "upload destination")?;
        check_upload(dst, offset, &src)?;
        self.select("hipSetDevice")?;
        let bytes = src.as_bytes();
        // SAFETY: the range was checked against the allocation.
        self.status("hipMemcpy", unsafe {
            hipMemcpy(
                dst.at(offset),
                bytes.as_ptr().cast(),
                bytes.len(),
                hipMemcpyKind::hipMemcpyHostToDevice,
            )
        })
    }

    fn download(&self, src: &RocmBuffer, offset: usize, mut dst: HostSliceMut<'_>) -> Result<()> {
        self.check_owned(src, "download source")?;
        check_download(src, offset, &dst)?;
        self.select("hipSetDevice")?;
        let bytes = dst.as_bytes_mut();
        // SAFETY: the range was checked against the allocation.
        self.status("hipMemcpy", unsafe {
            hipMemcpy(
                bytes.as_mut_ptr().cast(),
                src.at(offset),
                bytes.len(),
                hipMemcpyKind::hipMemcpyDeviceToHost,
            )
        })
    }

    fn copy(
        &self,
        src: &RocmBuffer,
        src_range: Range<usize>,
        dst: &mut RocmBuffer,
        dst_offset: usize,
    ) -> Result<()> {
        self.check_owned(src, "copy source")?;
        self.check_owned(dst, "copy destination")?;
        check_copy(src, &src_range, dst, dst_offset)?;
        self.select("hipSetDevice")?;
        let bytes = src_range.len() * src.dtype.size_bytes();
        // SAFETY: both ranges were checked against their allocations.
        self.status("hipMemcpy", unsafe {
            hipMemcpy(
                dst.at(dst_offset),
                src.at(src_range.start),
                bytes,
                hipMemcpyKind::hipMemcpyDeviceToDevice,
            )
        })
    }

    fn reduce(&self, op: ReduceOp, acc: &mut RocmBuffer, src: &RocmBuffer) -> Result<()> {
        self.launch_reduce(op, acc, src)
    }

    fn finish_reduce(&self, op: ReduceOp, buf: &mut RocmBuffer, count: usize) -> Result<()> {
        self.launch_finish_reduce(op, buf, count)
    }

    fn scale(&self, buf: &mut RocmBuffer, alpha: f64) -> Result<()> {
        self.launch_scale(buf, alpha)
    }

    fn gemm(
        &self,
        spec: &GemmSpec,
        a: &RocmBuffer,
        b: &RocmBuffer,
        c: &mut RocmBuffer,
    ) -> Result<()> {
        self.launch_gemm(spec, a, b, c)
    }

    fn layer_norm(
        &self,
        x: &RocmBuffer,
        gamma: &RocmBuffer,
        beta: &RocmBuffer,
        out: &mut RocmBuffer,
        eps: f32,
    ) -> Result<()> {
        self.launch_layer_norm(x, gamma, beta, out, eps)
    }

    fn bias_activation(
        &self,
        x: &mut RocmBuffer,
        bias: &RocmBuffer,
        act: Activation,
    ) -> Result<()> {
        self.launch_bias_activation(x, bias, act)
    }

    fn attention_decode(
        &self,
        spec: &AttentionSpec,
        q: &RocmBuffer,
        k_cache: &RocmBuffer,
        v_cache: &RocmBuffer,
        lens: &[u32],
        out: &mut RocmBuffer,
    ) -> Result<()> {
        self.launch_attention_decode(spec, q, k_cache, v_cache, lens, out)
    }

    fn argmax_rows(&self, x: &RocmBuffer, rows: usize) -> Result<Vec<u32>> {
        self.launch_argmax_rows(x, rows)
    }

    fn rms_norm(
        &self,
        x: &RocmBuffer,
        weight: &RocmBuffer,
        out: &mut RocmBuffer,
        eps: f32,
    ) -> Result<()> {
        self.launch_rms_norm(x, weight, out, eps)
    }

    fn rope(
        &self,
        spec: &RopeSpec,
        x: &mut RocmBuffer,
        positions: &[u32],
        inv_freq: &RocmBuffer,
    ) -> Result<()> {
        self.launch_rope(spec, x, positions, inv_freq)
    }

    fn attention_causal(
        &self,
        spec: &CausalAttentionSpec,
        q: &RocmBuffer,
        k_cache: &RocmBuffer,
        v_cache: &RocmBuffer,
        lens: &[u32],
        out: &mut RocmBuffer,
    ) -> Result<()> {
        self.launch_attention_causal(spec, q, k_cache, v_cache, lens, out)
    }

    fn append_and_attend(
        &self,
        spec: &hetero_core::AppendAttendSpec,
        q: &RocmBuffer,
        k_new: &RocmBuffer,
        v_new: &RocmBuffer,
        seqs: &mut [hetero_core::AppendAttendSeq<'_, RocmBuffer>],
        out: &mut RocmBuffer,
    ) -> Result<()> {
        self.launch_append_and_attend(spec, q, k_new, v_new, seqs, out)
    }

    fn silu_mul(&self, gate: &mut RocmBuffer, up: &RocmBuffer) -> Result<()> {
        self.launch_silu_mul(gate, up)
    }

    fn embedding(&self, table: &RocmBuffer, ids: &[u32], out: &mut RocmBuffer) -> Result<()> {
        self.launch_embedding(table, ids, out)
    }

    fn synchronize(&self) -> Result<()> {
        self.select("hipSetDevice")?;
        // SAFETY: plain runtime call.
        self.status("hipDeviceSynchronize", unsafe { hipDeviceSynchronize() })
    }
}

/// Which path a [`RocmLink`] measures.
#[derive(Debug, Clone)]
pub enum RocmLinkPath {
    HostToDevice(DeviceId),
    DeviceToHost(DeviceId),
    OnDevice,
    /// To another GPU with `hipMemcpyPeer`.
    Peer(RocmDevice),
}

/// A measured path of a ROCm device (hetero's own upload / download / copy calls).
#[derive(Debug)]
pub struct RocmLink {
    gpu: RocmDevice,
    path: RocmLinkPath,
    state: Mutex<Option<(Vec<u8>, RocmBuffer, RocmBuffer)>>,
}

impl RocmLink {
    pub fn new(gpu: RocmDevice, path: RocmLinkPath) -> Self {
        RocmLink {
            gpu,
            path,
            state: Mutex::new(None),
        }
    }
}

impl Link for RocmLink {
    fn src(&self) -> DeviceId {
        match &self.path {
            RocmLinkPath::HostToDevice(host) => *host,
            _ => self.gpu.inner.id,
        }
    }

    fn dst(&self) -> DeviceId {
        match &self.path {
            RocmLinkPath::DeviceToHost(host) => *host,
            RocmLinkPath::Peer(other) => other.inner.id,
            _ => self.gpu.inner.id,
        }
    }

    fn kind(&self) -> LinkKind {
        match self.path {
            RocmLinkPath::OnDevice => LinkKind::SameDevice,
            _ => LinkKind::Pcie,
        }
    }

    fn transfer(&self, bytes: usize) -> Result<Duration> {
        let mut guard = self.state.lock().map_err(|_| Error::DeviceLost {
            device: self.gpu.inner.id,
            reason: "a previous transfer on this link panicked".into(),
        })?;
        if guard.as_ref().is_none_or(|(h, _, _)| h.len() < bytes) {
            *guard = None;
            let target = match &self.path {
                RocmLinkPath::Peer(other) => other.clone(),
                _ => self.gpu.clone(),
            };
            let a = self.gpu.alloc(DType::U8, bytes)?;
            let b = target.alloc(DType::U8, bytes)?;
            *guard = Some((vec![1u8; bytes], a, b));
        }
        let Some((host, a, b)) = guard.as_mut() else {
            return Err(Error::invalid("link buffers", "missing after allocation"));
        };
        let start = Instant::now();
        match &self.path {
            RocmLinkPath::HostToDevice(_) => {
                self.gpu.upload(a, 0, HostSlice::new(&host[..bytes]))?
            }
            RocmLinkPath::DeviceToHost(_) => {
                self.gpu
                    .download(a, 0, HostSliceMut::new(&mut host[..bytes]))?
            }
            RocmLinkPath::OnDevice => self.gpu.copy(a, 0..bytes, b, 0)?,
            RocmLinkPath::Peer(other) => {
                self.gpu.select("hipSetDevice")?;
                // SAFETY: both buffers hold at least `bytes` bytes.
                self.gpu.status("hipMemcpyPeer", unsafe {
                    hipMemcpyPeer(
                        b.at(0),
                        other.inner.ordinal,
                        a.at(0),
                        self.gpu.inner.ordinal,
                        bytes,
                    )
                })?;
            }
        }
        self.gpu.synchronize()?;
        Ok(start.elapsed())
    }
}
