//! NCCL as a `hetero_core::Collective`.
//!
//! A communicator is made from a 128-byte unique id that rank 0 creates
//! ([`NcclCollective::unique_id`]) and the caller distributes (the TCP
//! rendezvous of `hetero-collectives`, MPI, a file; this crate does not know
//! which), or for all local GPUs of one process ([`NcclCollective::all_local`],
//! one rank per GPU, each rank driven from its own thread as NCCL requires).
//!
//! Data path: buffers of this communicator's GPU go to NCCL directly; host
//! slices and other devices' buffers are staged through a temporary buffer
//! on this GPU. `Avg` is computed as NCCL `Sum` followed by hetero's own
//! divide kernel, so integer averages truncate exactly as on every other
//! backend. Reduce-scatter and all-gather with a length that does not split
//! evenly (see `hetero_core::chunk_range`) fall back to all-reduce /
//! broadcasts, since NCCL's own calls need equal chunks. Each call enqueues
//! on the GPU's stream and completes when the stream has synchronised (the
//! calling thread blocks while it waits).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cudarc::driver::{DevicePtr, DevicePtrMut};
use cudarc::nccl::result as nccl;
use cudarc::nccl::sys::{ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclUniqueId};
use hetero_core::{
    Collective, DType, Device, DeviceBuffer, Error, HostSlice, HostSliceMut, ReduceOp, Result,
    Tensor, TensorMut, chunk_range, collective::check_len, with_dtype,
};

use crate::device::{CudaBuffer, CudaDevice};
use crate::error::CudaError;
use crate::nccl_wait;

/// Size of an NCCL unique id in bytes.
pub const NCCL_UNIQUE_ID_BYTES: usize = 128;

/// A communicator handle and whether it was aborted (then NCCL has freed
/// it, and it must be neither used nor destroyed).
struct RawComm {
    comm: ncclComm_t,
    aborted: bool,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls
// on it are not concurrent; `NcclCollective` keeps it behind a mutex.
unsafe impl Send for RawComm {}

impl RawComm {
    fn abort(&mut self) {
        if !self.aborted {
            nccl_wait::abort(self.comm);
            self.aborted = true;
        }
    }
}

/// How long dropping a communicator waits for NCCL to finalize it (its
/// last collectives to drain) before aborting it instead.
const DROP_TIMEOUT: Duration = Duration::from_secs(10);

impl Drop for RawComm {
    fn drop(&mut self) {
        if self.aborted {
            return;
        }
        // Finalize is non-blocking on these communicators: wait a bounded
        // time, then destroy; a peer that went away makes it abort instead,
        // so dropping never blocks forever.
        // SAFETY: the communicator is live and finalized once.
        let finalized = unsafe { nccl::comm_finalize(self.comm) }.is_ok()
            && nccl_wait::wait_ready(self.comm, Instant::now() + DROP_TIMEOUT).is_ok();
        if finalized {
            // SAFETY: finalized above; destroyed once.
            let _ = unsafe { nccl::comm_destroy(self.comm) };
        } else {
            self.abort();
        }
    }
}

/// How long an NCCL call (init, or one collective with its stream work)
/// may take before the communicator is aborted and the call returns
/// [`Error::Timeout`]; [`NcclCollective::set_timeout`] changes it. Ten
/// minutes, as PyTorch's NCCL watchdog: long enough for a first collective
/// that sets up connections across nodes.
pub const DEFAULT_NCCL_TIMEOUT: Duration = Duration::from_secs(600);

/// One rank of an NCCL communicator, on one GPU.
pub struct NcclCollective {
    device: CudaDevice,
    comm: Mutex<RawComm>,
    rank: usize,
    size: usize,
    timeout: Duration,
}

impl std::fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCollective")
            .field("device", &Device::id(&self.device))
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish()
    }
}

fn check_nccl() -> Result<()> {
    crate::check_driver()?;
    // SAFETY: only tries to dlopen the library.
    if unsafe { cudarc::nccl::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(CudaError::MissingLibrary {
            library: "libnccl",
            what: "NCCL collectives",
        }
        .into())
    }
}

fn nccl_err(call: &'static str, rank: usize) -> impl Fn(nccl::NcclError) -> Error {
    move |e| {
        CudaError::Nccl {
            call,
            rank,
            reason: format!("{:?}", e.0),
        }
        .into()
    }
}

/// Start joining the communicator `uid` as `rank` of `world`, non-blocking,
/// on the device current on this thread; the caller waits for it with
/// [`nccl_wait::wait_ready`]. A failed start is aborted here.
fn start_init(world: i32, uid: ncclUniqueId, rank: usize) -> Result<RawComm> {
    let mut config = nccl_wait::nonblocking_config();
    let mut comm: ncclComm_t = std::ptr::null_mut();
    // SAFETY: `comm` and `config` are valid pointers; the id is 128 bytes.
    let r = unsafe { nccl::comm_init_rank_config(&mut comm, world, uid, rank as i32, &mut config) };
    let mut raw = RawComm {
        comm,
        aborted: comm.is_null(),
    };
    if let Err(e) = r {
        raw.abort();
        return Err(nccl_err("ncclCommInitRankConfig", rank)(e));
    }
    Ok(raw)
}

/// Make `device`'s context current on this thread (NCCL and the stream
/// queries work on the current context).
fn bind(device: &CudaDevice) -> Result<()> {
    device
        .context()
        .bind_to_thread()
        .map_err(|e| CudaError::driver(Device::id(device), "cuCtxSetCurrent", e).into())
}

fn nccl_dtype(dtype: DType) -> ncclDataType_t {
    match dtype {
        DType::F32 => ncclDataType_t::ncclFloat32,
        DType::F16 => ncclDataType_t::ncclFloat16,
        DType::BF16 => ncclDataType_t::ncclBfloat16,
        DType::F64 => ncclDataType_t::ncclFloat64,
        DType::I32 => ncclDataType_t::ncclInt32,
        DType::I64 => ncclDataType_t::ncclInt64,
        DType::U8 => ncclDataType_t::ncclUint8,
    }
}

fn nccl_op(op: ReduceOp) -> ncclRedOp_t {
    match op.combine_op() {
        ReduceOp::Sum | ReduceOp::Avg => ncclRedOp_t::ncclSum,
        ReduceOp::Prod => ncclRedOp_t::ncclProd,
        ReduceOp::Max => ncclRedOp_t::ncclMax,
        ReduceOp::Min => ncclRedOp_t::ncclMin,
    }
}

impl NcclCollective {
    /// A new unique id (on rank 0), to send to every rank as bytes.
    pub fn unique_id() -> Result<Vec<u8>> {
        check_nccl()?;
        let id = nccl::get_uniqueid().map_err(nccl_err("ncclGetUniqueId", 0))?;
        Ok(id.internal.iter().map(|&c| c as u8).collect())
    }

    /// Join the communicator named by `id` as `rank` of `size`, on `device`.
    /// Waits until all `size` ranks have joined, at most
    /// [`DEFAULT_NCCL_TIMEOUT`]; see [`Self::from_unique_id_with_timeout`].
    pub fn from_unique_id(device: CudaDevice, id: &[u8], rank: usize, size: usize) -> Result<Self> {
        Self::from_unique_id_with_timeout(device, id, rank, size, DEFAULT_NCCL_TIMEOUT)
    }

    /// As [`Self::from_unique_id`], with `timeout` bounding the join and,
    /// afterwards, every collective. The communicator is non-blocking: a
    /// rank that never joins makes this return [`Error::Timeout`] (the
    /// half-made communicator aborted), and an error NCCL finds while
    /// joining (two ranks on one GPU, say) returns [`Error::PeerFailure`].
    pub fn from_unique_id_with_timeout(
        device: CudaDevice,
        id: &[u8],
        rank: usize,
        size: usize,
        timeout: Duration,
    ) -> Result<Self> {
        check_nccl()?;
        let internal: [u8; NCCL_UNIQUE_ID_BYTES] = id.try_into().map_err(|_| {
            Error::invalid(
                "nccl unique id",
                format!("must be {NCCL_UNIQUE_ID_BYTES} bytes, got {}", id.len()),
            )
        })?;
        if rank >= size {
            return Err(Error::invalid(
                "rank",
                format!("rank {rank} is not below the world size {size}"),
            ));
        }
        let world = i32::try_from(size)
            .map_err(|_| Error::invalid("size", "world size must fit in an i32"))?;
        let mut uid = ncclUniqueId {
            internal: [0; NCCL_UNIQUE_ID_BYTES],
        };
        for (dst, src) in uid.internal.iter_mut().zip(internal) {
            *dst = src as _;
        }
        bind(&device)?;
        let start = Instant::now();
        let mut raw = start_init(world, uid, rank)?;
        if let Err(failure) = nccl_wait::wait_ready(raw.comm, start + timeout) {
            raw.abort();
            return Err(failure.into_error("ncclCommInitRankConfig", rank, start.elapsed()));
        }
        Ok(NcclCollective {
            device,
            comm: Mutex::new(raw),
            rank,
            size,
            timeout,
        })
    }

    /// One communicator over these local GPUs, rank `i` on `devices[i]`,
    /// each non-blocking and bounded by [`DEFAULT_NCCL_TIMEOUT`] (change it
    /// with [`Self::set_timeout`]). NCCL needs every rank's call in flight
    /// at once: drive each returned rank from its own thread.
    pub fn all_local(devices: &[CudaDevice]) -> Result<Vec<Self>> {
        check_nccl()?;
        if devices.is_empty() {
            return Err(Error::invalid("devices", "need at least one GPU"));
        }
        let world = i32::try_from(devices.len())
            .map_err(|_| Error::invalid("devices", "too many GPUs for one communicator"))?;
        let uid = nccl::get_uniqueid().map_err(nccl_err("ncclGetUniqueId", 0))?;
        let start = Instant::now();
        // One group of per-rank inits from this thread, as NCCL documents
        // for several GPUs per thread (`ncclCommInitAll` takes no config, so
        // its communicators could only block).
        nccl::group_start().map_err(nccl_err("ncclGroupStart", 0))?;
        let mut raws: Vec<RawComm> = Vec::with_capacity(devices.len());
        let mut first_error = None;
        for (rank, device) in devices.iter().enumerate() {
            if let Err(e) = bind(device) {
                first_error = Some(e);
                break;
            }
            // inside a group, this only queues the init until `ncclGroupEnd`
            match start_init(world, uid, rank) {
                Ok(raw) => raws.push(raw),
                Err(e) => {
                    first_error = Some(e);
                    break;
                }
            }
        }
        let ended = nccl::group_end().map_err(nccl_err("ncclGroupEnd", 0));
        let mut failed = first_error.or(ended.err());
        if failed.is_none() {
            for (rank, raw) in raws.iter().enumerate() {
                if let Err(f) = nccl_wait::wait_ready(raw.comm, start + DEFAULT_NCCL_TIMEOUT) {
                    failed = Some(f.into_error("ncclCommInitRankConfig", rank, start.elapsed()));
                    break;
                }
            }
        }
        if let Some(e) = failed {
            for raw in &mut raws {
                raw.abort();
            }
            return Err(e);
        }
        Ok(devices
            .iter()
            .zip(raws)
            .enumerate()
            .map(|(rank, (device, raw))| NcclCollective {
                device: device.clone(),
                comm: Mutex::new(raw),
                rank,
                size: devices.len(),
                timeout: DEFAULT_NCCL_TIMEOUT,
            })
            .collect())
    }

    /// The bound on every later collective of this rank (at least a
    /// millisecond): past it the communicator is aborted and the call
    /// returns [`Error::Timeout`].
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout.max(Duration::from_millis(1));
    }

    /// The bound on each collective of this rank.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn device(&self) -> &CudaDevice {
        &self.device
    }

    fn check_root(&self, root: usize) -> Result<()> {
        if root < self.size {
            Ok(())
        } else {
            Err(Error::invalid(
                "root",
                format!(
                    "root {root} is not a rank of a communicator of {}",
                    self.size
                ),
            ))
        }
    }

    /// Run one NCCL call under the communicator lock, then wait for its
    /// enqueueing and for the stream, at most [`Self::timeout`] in all.
    /// On an error or a timeout the communicator is aborted, and every later
    /// call fails at once.
    fn call(
        &self,
        name: &'static str,
        f: impl FnOnce(
            ncclComm_t,
            cudarc::nccl::sys::cudaStream_t,
        ) -> std::result::Result<nccl::NcclStatus, nccl::NcclError>,
    ) -> Result<()> {
        let mut comm = self.comm.lock().map_err(|_| Error::PeerFailure {
            rank: self.rank,
            reason: "an earlier NCCL call on this rank panicked".into(),
        })?;
        if comm.aborted {
            return Err(Error::PeerFailure {
                rank: self.rank,
                reason: format!(
                    "NCCL {name}: this communicator was aborted after an earlier \
                     timeout or peer failure; make a new one"
                ),
            });
        }
        bind(&self.device)?;
        let start = Instant::now();
        let deadline = start + self.timeout;
        let stream = self.device.stream().cu_stream();
        if let Err(e) = f(comm.comm, stream as _) {
            comm.abort();
            return Err(nccl_err(name, self.rank)(e));
        }
        let waited = nccl_wait::wait_ready(comm.comm, deadline)
            .and_then(|()| nccl_wait::wait_stream(comm.comm, stream, deadline));
        if let Err(failure) = waited {
            comm.abort();
            return Err(failure.into_error(name, self.rank, start.elapsed()));
        }
        Ok(())
    }

    /// A buffer of this GPU holding `t`'s contents (the tensor's own buffer
    /// when it already lives here).
    fn stage_in<'t>(&self, t: Tensor<'t>) -> Result<Staged<'t>> {
        if let Tensor::Device { buffer, .. } = t
            && let Some(b) = buffer.as_any().downcast_ref::<CudaBuffer>()
            && b.device() == Device::id(&self.device)
        {
            return Ok(Staged::Borrowed(b));
        }
        let mut tmp = self.device.alloc(t.dtype(), t.len())?;
        match t {
            Tensor::Host(s) => self.device.upload(&mut tmp, 0, s)?,
            Tensor::Device { device, buffer } => with_dtype!(buffer.dtype(), T => {
                let mut v = vec![T::default(); buffer.len()];
                device.download(buffer, 0, HostSliceMut::new(&mut v))?;
                self.device.upload(&mut tmp, 0, HostSlice::new(&v))?;
            }),
        }
        Ok(Staged::Owned(tmp))
    }

    /// Run `f` on a buffer of this GPU holding `t`, then write the result back to `t`.
    fn in_place(
        &self,
        mut t: TensorMut<'_>,
        f: impl FnOnce(&mut CudaBuffer) -> Result<()>,
    ) -> Result<()> {
        let id = Device::id(&self.device);
        if let TensorMut::Device { buffer, .. } = &mut t
            && buffer.device() == id
            && let Some(b) = buffer.as_any_mut().downcast_mut::<CudaBuffer>()
        {
            return f(b);
        }
        let mut tmp = self.device.alloc(t.dtype(), t.len())?;
        match &mut t {
            TensorMut::Host(s) => self.device.upload(&mut tmp, 0, s.as_slice())?,
            TensorMut::Device { device, buffer } => with_dtype!(buffer.dtype(), T => {
                let mut v = vec![T::default(); buffer.len()];
                device.download(&**buffer, 0, HostSliceMut::new(&mut v))?;
                self.device.upload(&mut tmp, 0, HostSlice::new(&v))?;
            }),
        }
        f(&mut tmp)?;
        match t {
            TensorMut::Host(s) => self.device.download(&tmp, 0, s),
            TensorMut::Device { device, buffer } => with_dtype!(buffer.dtype(), T => {
                let mut v = vec![T::default(); tmp.len()];
                self.device.download(&tmp, 0, HostSliceMut::new(&mut v))?;
                device.upload(buffer, 0, HostSlice::new(&v))
            }),
        }
    }

    fn all_reduce_gpu(&self, buf: &mut CudaBuffer, op: ReduceOp) -> Result<()> {
        let (n, dtype) = (buf.len(), buf.dtype());
        if n > 0 {
            let stream = self.device.stream().clone();
            let (ptr, _sync) = buf.data.device_ptr_mut(&stream);
            self.call("ncclAllReduce", |comm, s| {
                // SAFETY: in place over `n` elements of this GPU's buffer.
                unsafe {
                    nccl::all_reduce(
                        ptr as _,
                        ptr as _,
                        n,
                        nccl_dtype(dtype),
                        nccl_op(op),
                        comm,
                        s,
                    )
                }
            })?;
        }
        self.device.finish_reduce(op, buf, self.size)
    }
}

enum Staged<'a> {
    Borrowed(&'a CudaBuffer),
    Owned(CudaBuffer),
}

impl Staged<'_> {
    fn buffer(&self) -> &CudaBuffer {
        match self {
            Staged::Borrowed(b) => b,
            Staged::Owned(b) => b,
        }
    }
}

#[async_trait]
impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    async fn all_reduce(&self, data: TensorMut<'_>, op: ReduceOp) -> Result<()> {
        self.in_place(data, |buf| self.all_reduce_gpu(buf, op))
    }

    async fn reduce_scatter(
        &self,
        input: Tensor<'_>,
        output: TensorMut<'_>,
        op: ReduceOp,
    ) -> Result<()> {
        let n = input.len();
        let mine = chunk_range(n, self.size, self.rank);
        check_len("reduce_scatter output", output.len(), mine.len())?;
        if input.dtype() != output.dtype() {
            return Err(Error::invalid(
                "reduce_scatter output",
                "dtype differs from the input",
            ));
        }
        let staged = self.stage_in(input)?;
        // A full copy, reduced in place: NCCL's reduce-scatter needs equal
        // chunks, and the input must stay untouched.
        let mut full = self.device.alloc(staged.buffer().dtype(), n)?;
        self.device.copy(staged.buffer(), 0..n, &mut full, 0)?;
        if n.is_multiple_of(self.size) && n > 0 {
            let per = n / self.size;
            let dtype = full.dtype();
            let mut out = self.device.alloc(dtype, per)?;
            let stream = self.device.stream().clone();
            {
                let (src, _s) = full.data.device_ptr(&stream);
                let (dst, _d) = out.data.device_ptr_mut(&stream);
                self.call("ncclReduceScatter", |comm, s| {
                    // SAFETY: `full` holds size * per elements, `out` per.
                    unsafe {
                        nccl::reduce_scatter(
                            src as _,
                            dst as _,
                            per,
                            nccl_dtype(dtype),
                            nccl_op(op),
                            comm,
                            s,
                        )
                    }
                })?;
            }
            self.device.finish_reduce(op, &mut out, self.size)?;
            return self.in_place(output, |o| self.device.copy(&out, 0..per, o, 0));
        }
        self.all_reduce_gpu(&mut full, op)?;
        self.in_place(output, |o| self.device.copy(&full, mine.clone(), o, 0))
    }

    async fn all_gather(&self, input: Tensor<'_>, output: TensorMut<'_>) -> Result<()> {
        let n = output.len();
        let mine = chunk_range(n, self.size, self.rank);
        check_len("all_gather input", input.len(), mine.len())?;
        if input.dtype() != output.dtype() {
            return Err(Error::invalid(
                "all_gather output",
                "dtype differs from the input",
            ));
        }
        let staged = self.stage_in(input)?;
        let src_buf = staged.buffer();
        let dtype = src_buf.dtype();
        self.in_place(output, |out| {
            if n == 0 {
                return Ok(());
            }
            let stream = self.device.stream().clone();
            if n.is_multiple_of(self.size) {
                let per = n / self.size;
                let (src, _s) = src_buf.data.device_ptr(&stream);
                let (dst, _d) = out.data.device_ptr_mut(&stream);
                return self.call("ncclAllGather", |comm, s| {
                    // SAFETY: `src` holds per elements, `dst` size * per.
                    unsafe { nccl::all_gather(src as _, dst as _, per, nccl_dtype(dtype), comm, s) }
                });
            }
            // Uneven chunks: my chunk into place, then one broadcast per rank.
            self.device.copy(src_buf, 0..mine.len(), out, mine.start)?;
            let esize = dtype.size_bytes() as u64;
            let (base, _d) = out.data.device_ptr_mut(&stream);
            for root in 0..self.size {
                let r = chunk_range(n, self.size, root);
                if r.is_empty() {
                    continue;
                }
                let ptr = base + r.start as u64 * esize;
                self.call("ncclBroadcast", |comm, s| {
                    // SAFETY: in place over chunk `r` of `out`.
                    unsafe {
                        nccl::broadcast(
                            ptr as _,
                            ptr as _,
                            r.len(),
                            nccl_dtype(dtype),
                            root as i32,
                            comm,
                            s,
                        )
                    }
                })?;
            }
            Ok(())
        })
    }

    async fn broadcast(&self, data: TensorMut<'_>, root: usize) -> Result<()> {
        self.check_root(root)?;
        self.in_place(data, |buf| {
            let (n, dtype) = (buf.len(), buf.dtype());
            if n == 0 {
                return Ok(());
            }
            let stream = self.device.stream().clone();
            let (ptr, _d) = buf.data.device_ptr_mut(&stream);
            self.call("ncclBroadcast", |comm, s| {
                // SAFETY: in place over `n` elements.
                unsafe {
                    nccl::broadcast(
                        ptr as _,
                        ptr as _,
                        n,
                        nccl_dtype(dtype),
                        root as i32,
                        comm,
                        s,
                    )
                }
            })
        })
    }

    async fn reduce(&self, data: TensorMut<'_>, op: ReduceOp, root: usize) -> Result<()> {
        self.check_root(root)?;
        self.in_place(data, |buf| {
            let (n, dtype) = (buf.len(), buf.dtype());
            if n > 0 {
                let stream = self.device.stream().clone();
                let (ptr, _d) = buf.data.device_ptr_mut(&stream);
                self.call("ncclReduce", |comm, s| {
                    // SAFETY: in place over `n` elements.
                    unsafe {
                        nccl::reduce(
                            ptr as _,
                            ptr as _,
                            n,
                            nccl_dtype(dtype),
                            nccl_op(op),
                            root as i32,
                            comm,
                            s,
                        )
                    }
                })?;
            }
            if self.rank == root {
                self.device.finish_reduce(op, buf, self.size)?;
            }
            Ok(())
        })
    }

    async fn barrier(&self) -> Result<()> {
        let mut token = self.device.alloc(DType::U8, 1)?;
        self.all_reduce_gpu(&mut token, ReduceOp::Max)
    }

    fn explain(&self) -> String {
        format!(
            "NCCL communicator, rank {} of {} on {}: NCCL picks ring or tree itself; \
             buffers of this GPU are used in place, host slices and other devices' \
             buffers are staged through a temporary buffer on this GPU; avg = NCCL sum \
             then hetero's divide kernel; uneven reduce-scatter / all-gather fall back \
             to all-reduce / per-rank broadcasts",
            self.rank,
            self.size,
            Device::id(&self.device)
        )
    }
}
