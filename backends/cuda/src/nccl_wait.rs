//! Bounded waits on NCCL: non-blocking communicators, and a deadline on
//! every wait with `ncclCommAbort` when it passes.
//!
//! Why: a blocking NCCL call whose peer died or stalled never returns: the
//! host thread spins inside `ncclCommInitRank` (waiting for ranks that never
//! join), inside the first collective (lazy connection setup), or in
//! `cuStreamSynchronize` behind a kernel that waits for data. PyTorch guards
//! against this with non-blocking communicators, a watchdog that polls
//! `ncclCommGetAsyncError`, and `ncclCommAbort`; this module does the same
//! for one call at a time: the caller's thread polls, so no watchdog thread
//! is needed, and the error goes back to the caller that was waiting.
//!
//! What it must not do: retry, or hide an abort. After an abort the
//! communicator is gone; the owner marks it so and refuses later calls.

use std::time::{Duration, Instant};

use cudarc::driver::sys as cu;
use cudarc::nccl::sys::{self as nsys, ncclComm_t, ncclResult_t};
use hetero_core::Error;

/// `NCCL_CONFIG_UNDEF_INT` of `nccl.h`: "let NCCL choose".
const UNDEF_INT: i32 = i32::MIN;
/// `magic` of a valid `ncclConfig_t`.
const CONFIG_MAGIC: u32 = 0xcafe_beef;

/// A config asking for a non-blocking communicator, everything else left to
/// NCCL, as `NCCL_CONFIG_INITIALIZER` would with `blocking = 0`.
///
/// `size` is this binding's struct size; NCCL copies at most its own
/// struct's size, and the fields only ever grow at the end, so an older
/// library reads the prefix it knows. `version` is the loaded library's, so
/// the library never sees a config newer than itself.
pub(crate) fn nonblocking_config() -> nsys::ncclConfig_t {
    let version = cudarc::nccl::result::get_nccl_version()
        .ok()
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(21400);
    nsys::ncclConfig_t {
        size: size_of::<nsys::ncclConfig_t>(),
        magic: CONFIG_MAGIC,
        version,
        blocking: 0,
        cgaClusterSize: UNDEF_INT,
        minCTAs: UNDEF_INT,
        maxCTAs: UNDEF_INT,
        netName: std::ptr::null(),
        splitShare: UNDEF_INT,
        trafficClass: UNDEF_INT,
        commName: std::ptr::null(),
        collnetEnable: UNDEF_INT,
        CTAPolicy: UNDEF_INT,
        shrinkShare: UNDEF_INT,
        nvlsCTAs: UNDEF_INT,
        nChannelsPerNetPeer: UNDEF_INT,
        nvlinkCentricSched: UNDEF_INT,
        graphUsageMode: UNDEF_INT,
        numRmaCtx: UNDEF_INT,
        maxP2pPeers: UNDEF_INT,
    }
}

/// Why a bounded wait ended without success.
#[derive(Debug)]
pub(crate) enum WaitFailure {
    /// The deadline passed while NCCL or the stream was still busy.
    Timeout,
    /// NCCL reported an error on the communicator (a peer closed its
    /// connections, a remote error, invalid usage found at init...).
    Nccl(ncclResult_t),
    /// The CUDA stream itself failed.
    Stream(cu::CUresult),
}

impl WaitFailure {
    /// The error a caller sees, for `call` on `rank` after `waited`.
    pub(crate) fn into_error(self, call: &'static str, rank: usize, waited: Duration) -> Error {
        match self {
            WaitFailure::Timeout => Error::Timeout {
                what: format!(
                    "NCCL {call} on rank {rank} (a peer stalled or died; \
                     the communicator was aborted)"
                ),
                after: waited,
            },
            WaitFailure::Nccl(code) => Error::PeerFailure {
                rank,
                reason: format!(
                    "NCCL {call} failed with {code:?} after {:.1} s; the communicator was aborted",
                    waited.as_secs_f64()
                ),
            },
            WaitFailure::Stream(code) => Error::PeerFailure {
                rank,
                reason: format!(
                    "the GPU stream of NCCL {call} failed with {code:?}; \
                     the communicator was aborted"
                ),
            },
        }
    }
}

/// Sleeps between polls: a few spins' worth at first (a collective of
/// small buffers ends in microseconds), then up to a millisecond, so a long
/// wait costs little CPU and a timeout is noticed within a millisecond.
struct Backoff(u32);

impl Backoff {
    fn pause(&mut self) {
        self.0 = self.0.saturating_add(1);
        if self.0 < 64 {
            std::thread::yield_now();
        } else {
            let us = (self.0 - 63).min(1000);
            std::thread::sleep(Duration::from_micros(u64::from(us)));
        }
    }
}

/// The communicator's pending state: `Ok(true)` ready, `Ok(false)` still in
/// progress, `Err` the error NCCL reports.
fn async_state(comm: ncclComm_t) -> Result<bool, ncclResult_t> {
    let mut state = ncclResult_t::ncclSuccess;
    // SAFETY: `comm` is a live communicator handle; `state` is an out-pointer.
    let r = unsafe { nsys::ncclCommGetAsyncError(comm, &mut state) };
    if r != ncclResult_t::ncclSuccess {
        return Err(r);
    }
    match state {
        ncclResult_t::ncclSuccess => Ok(true),
        ncclResult_t::ncclInProgress => Ok(false),
        e => Err(e),
    }
}

/// Wait until the communicator has no call in progress (an init, or the
/// enqueueing of a collective on a non-blocking communicator).
pub(crate) fn wait_ready(comm: ncclComm_t, deadline: Instant) -> Result<(), WaitFailure> {
    let mut backoff = Backoff(0);
    loop {
        match async_state(comm) {
            Ok(true) => return Ok(()),
            Ok(false) if Instant::now() >= deadline => return Err(WaitFailure::Timeout),
            Ok(false) => backoff.pause(),
            Err(e) => return Err(WaitFailure::Nccl(e)),
        }
    }
}

/// Wait until `stream` has drained, watching the communicator for errors
/// while it runs. The CUDA context of the stream must be current.
pub(crate) fn wait_stream(
    comm: ncclComm_t,
    stream: cu::CUstream,
    deadline: Instant,
) -> Result<(), WaitFailure> {
    let mut backoff = Backoff(0);
    loop {
        // SAFETY: `stream` is a live stream of the current context.
        match unsafe { cu::cuStreamQuery(stream) } {
            cu::CUresult::CUDA_SUCCESS => return Ok(()),
            cu::CUresult::CUDA_ERROR_NOT_READY => {}
            e => return Err(WaitFailure::Stream(e)),
        }
        if let Err(e) = async_state(comm) {
            return Err(WaitFailure::Nccl(e));
        }
        if Instant::now() >= deadline {
            return Err(WaitFailure::Timeout);
        }
        backoff.pause();
    }
}

/// Abort `comm`: NCCL stops its kernels and proxy threads and frees the
/// communicator. The handle must not be used afterwards.
pub(crate) fn abort(comm: ncclComm_t) {
    if !comm.is_null() {
        // SAFETY: a live handle, aborted once by the caller's bookkeeping.
        // Its own error cannot be acted upon: the communicator is gone either way.
        let _ = unsafe { nsys::ncclCommAbort(comm) };
    }
}
