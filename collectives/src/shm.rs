//! Shared-memory transport between the processes of one host (Linux).
//!
//! [`ShmTransport`] wraps a [`TcpTransport`]: peers on the same host are
//! reached through shared memory, every other peer through TCP as before.
//! "Same host" means the same host name, boot id, network namespace and PID
//! namespace (see [`host_key`]), so the emulated cluster's nodes (one
//! network namespace each, one machine) stay apart and keep their shaped
//! links.
//!
//! ## Rings
//!
//! One single-producer single-consumer byte ring per ordered pair of local
//! ranks, in a file under `/dev/shm` (or `HETERO_SHM_DIR`) that both
//! processes map. A message is a little-endian `u64` length and its bytes,
//! streamed through the ring, so a message may be larger than the ring (the
//! reader drains while the writer fills). Each side owns one position
//! counter (`tail` for the writer, `head` for the reader), so no lock is
//! ever shared between processes.
//!
//! ## Sending, receiving and waiting
//!
//! No threads of its own: `send` writes straight into the ring when nothing
//! is queued before the message and it fits; otherwise a tokio writer task
//! per peer streams it in order as room appears (so `send` never blocks, as
//! with TCP). `recv` reads the ring itself. A side with nothing to do polls
//! the ring, giving the CPU away between polls, then sleeps on a FIFO
//! doorbell registered with tokio; the other side writes the doorbell only
//! when the sleeper said it sleeps (a flag in the shared page, set before
//! the sleeper looks at the ring once more and read after the other side
//! moves its position, both sequentially consistent, so no wake-up is
//! lost). A sleeper wakes every 20 ms to check that its peer is alive: a
//! closed flag set by a peer that stopped cleanly, and the peer's process id
//! otherwise. So a peer that dies surfaces as `PeerFailure` within about
//! 20 ms, not after the receive timeout.
//!
//! ## Setup
//!
//! Over the TCP links: every rank sends rank 0 its host key; rank 0 replies
//! with all keys and a job token. Each rank creates (exclusively, mode 0600,
//! space reserved with `posix_fallocate` so a full `/dev/shm` is an error
//! now and not a `SIGBUS` later) the rings it reads from; after a barrier it
//! maps the rings it writes to; after a second barrier the creators unlink
//! their files, so nothing is left in `/dev/shm` however the job ends.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use hetero_core::{Error, LinkKind, Result};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::CollectiveError;
use crate::tcp::TcpTransport;
use crate::transport::{Transport, wait_drained};

/// Bytes of each ring's data area (one ring per ordered pair of local ranks).
pub const DEFAULT_RING_BYTES: usize = 1 << 20;

const MAGIC: u32 = 0x4845_5348; // "HESH"
const VERSION: u32 = 1;
/// Header: magic, version, capacity; then one cache line per side.
const HEADER: usize = 192;
const WRITER_LINE: usize = 64;
const READER_LINE: usize = 128;
/// How long a sleeping side waits before checking its peer is alive.
const LIVENESS_CHECK: Duration = Duration::from_millis(20);

/// Where the ring files go, and how large each ring is.
#[derive(Debug, Clone)]
pub struct ShmConfig {
    pub dir: PathBuf,
    pub ring_bytes: usize,
    /// Polls of an empty (or full) ring, yielding the CPU in between,
    /// before sleeping on the doorbell (0: sleep at once, least CPU).
    pub polls_before_sleep: usize,
}

impl Default for ShmConfig {
    /// `HETERO_SHM_DIR` or `/dev/shm`, rings of [`DEFAULT_RING_BYTES`],
    /// `HETERO_SHM_POLLS` or [`DEFAULT_POLLS_BEFORE_SLEEP`] polls.
    fn default() -> Self {
        ShmConfig {
            dir: std::env::var_os("HETERO_SHM_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/dev/shm")),
            ring_bytes: DEFAULT_RING_BYTES,
            polls_before_sleep: std::env::var("HETERO_SHM_POLLS")
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(DEFAULT_POLLS_BEFORE_SLEEP),
        }
    }
}

/// Which processes can share memory: host name, boot id, and the network
/// and PID namespaces. The network namespace keeps the emulated cluster's
/// nodes apart; the PID namespace is needed because a sleeping side checks
/// that its peer's process id still exists, which only means something
/// inside one PID namespace (containers of one pod share the network but
/// not the process ids).
pub fn host_key() -> String {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string());
    let boot = read("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let ns = |kind: &str| {
        std::fs::read_link(format!("/proc/self/ns/{kind}"))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    format!(
        "{}|{boot}|{}|{}",
        crate::sense::host_name(),
        ns("net"),
        ns("pid")
    )
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(context, e)
}

/// A mapped ring file. Its atomics live in the shared page; the data area
/// is written only by the writer between `head` and `tail + capacity` and
/// read only by the reader between `head` and `tail`.
#[derive(Debug)]
struct Ring {
    base: *mut u8,
    len: usize,
    capacity: usize,
}

// SAFETY: the mapping is shared memory used only through atomics and the
// single-producer single-consumer protocol above; one thread per side.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: base/len come from a successful mmap and are unmapped once.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

impl Ring {
    /// Create (exclusively) and map a ring file as its reader.
    fn create(path: &Path, capacity: usize) -> Result<Ring> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_error(format!("creating {}", path.display())))?;
        let len = HEADER + capacity;
        // SAFETY: a valid open descriptor; reserves the pages now so a full
        // tmpfs fails here instead of faulting the mapping later.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
        if rc != 0 {
            let _ = std::fs::remove_file(path);
            return Err(Error::io(
                format!(
                    "reserving {len} bytes for {} (is the shared-memory filesystem full? set HETERO_SHM_DIR)",
                    path.display()
                ),
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        let ring = Ring::map(&file, path, len)?;
        ring.u32_at(0).store(MAGIC, Ordering::Relaxed);
        ring.u32_at(4).store(VERSION, Ordering::Relaxed);
        ring.u64_at(8).store(capacity as u64, Ordering::Relaxed);
        ring.peer_pid(READER_LINE)
            .store(std::process::id(), Ordering::Release);
        Ok(ring)
    }

    /// Map an existing ring file as its writer.
    fn open(path: &Path, capacity: usize) -> Result<Ring> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error(format!("opening {}", path.display())))?;
        let len = HEADER + capacity;
        let actual = file
            .metadata()
            .map_err(io_error(format!("reading the size of {}", path.display())))?
            .len();
        if actual != len as u64 {
            return Err(Error::invalid(
                "shared memory",
                format!(
                    "shared-memory ring {} is {actual} bytes, expected {len} (ranks disagree on the ring size)",
                    path.display()
                ),
            ));
        }
        let ring = Ring::map(&file, path, len)?;
        if ring.u32_at(0).load(Ordering::Acquire) != MAGIC
            || ring.u32_at(4).load(Ordering::Relaxed) != VERSION
            || ring.u64_at(8).load(Ordering::Relaxed) != capacity as u64
        {
            return Err(Error::invalid(
                "shared memory",
                format!(
                    "{} is not a hetero shared-memory ring of this version and size",
                    path.display()
                ),
            ));
        }
        ring.peer_pid(WRITER_LINE)
            .store(std::process::id(), Ordering::Release);
        Ok(ring)
    }

    fn map(file: &std::fs::File, path: &Path, len: usize) -> Result<Ring> {
        // SAFETY: mapping a regular file of at least `len` bytes, shared.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Error::io(
                format!("mapping {}", path.display()),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Ring {
            base: base.cast(),
            len,
            capacity: len - HEADER,
        })
    }

    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset.is_multiple_of(4) && offset + 4 <= HEADER);
        // SAFETY: inside the mapping, aligned (the mapping is page-aligned),
        // and only ever accessed atomically.
        unsafe { &*self.base.add(offset).cast::<AtomicU32>() }
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(8) && offset + 8 <= HEADER);
        // SAFETY: as for u32_at.
        unsafe { &*self.base.add(offset).cast::<AtomicU64>() }
    }

    /// Bytes written so far (writer's counter) / read so far (reader's).
    fn position(&self, line: usize) -> &AtomicU64 {
        self.u64_at(line)
    }
    /// Nonzero while that side sleeps on its doorbell.
    fn sleeping(&self, line: usize) -> &AtomicU32 {
        self.u32_at(line + 12)
    }
    /// Set when that side stopped.
    fn closed(&self, line: usize) -> &AtomicU32 {
        self.u32_at(line + 16)
    }
    fn peer_pid(&self, line: usize) -> &AtomicU32 {
        self.u32_at(line + 20)
    }

    /// Copy `src` into the data area at stream position `pos` (wrapping).
    fn put(&self, pos: u64, src: &[u8]) {
        let start = (pos % self.capacity as u64) as usize;
        let first = src.len().min(self.capacity - start);
        // SAFETY: both ranges lie in the data area and are owned by the
        // writer (free space between tail and head + capacity).
        unsafe {
            let data = self.base.add(HEADER);
            std::ptr::copy_nonoverlapping(src.as_ptr(), data.add(start), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), data, src.len() - first);
        }
    }

    /// Append `n` bytes from stream position `pos` to `dst` (no zeroing).
    fn extend(&self, pos: u64, n: usize, dst: &mut Vec<u8>) {
        let start = (pos % self.capacity as u64) as usize;
        let first = n.min(self.capacity - start);
        dst.reserve(n);
        // SAFETY: the source ranges lie in the data area between head and
        // tail; the destination has `n` bytes of spare capacity, all of
        // which are written before the length grows over them.
        unsafe {
            let data = self.base.add(HEADER);
            let end = dst.as_mut_ptr().add(dst.len());
            std::ptr::copy_nonoverlapping(data.add(start), end, first);
            std::ptr::copy_nonoverlapping(data, end.add(first), n - first);
            dst.set_len(dst.len() + n);
        }
    }
}

/// Create the two doorbell FIFOs of the ring at `path` (its creator does).
fn make_doorbells(path: &Path) -> Result<()> {
    for suffix in [DATA_BELL, SPACE_BELL] {
        let bell = bell_path(path, suffix);
        let c = std::ffi::CString::new(bell.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::invalid("shared memory", "a path with a NUL byte"))?;
        // SAFETY: a valid C string; creates a FIFO readable by this user only.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(Error::io(
                format!("creating the FIFO {}", bell.display()),
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

const DATA_BELL: &str = "data";
const SPACE_BELL: &str = "space";

fn bell_path(ring: &Path, suffix: &str) -> PathBuf {
    let mut name = ring.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Open a doorbell FIFO non-blocking for reading and writing (Linux allows
/// it; neither side then waits for the other to open, and nobody sees EOF).
fn open_bell(ring: &Path, suffix: &str) -> Result<OwnedFd> {
    let path = bell_path(ring, suffix);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .map_err(io_error(format!("opening the FIFO {}", path.display())))?;
    Ok(OwnedFd::from(file))
}

/// Register a doorbell with the tokio reactor (in a runtime context).
fn watch(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open and owned; it moves into the AsyncFd and
    // stays the same descriptor until the AsyncFd drops it.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::io("watching a shared-memory doorbell", e.into()))
}

/// Wake the side sleeping on this FIFO (a full FIFO already wakes it).
fn ring_bell(fd: &OwnedFd) {
    let byte = 1u8;
    // SAFETY: writes one byte from a valid buffer to an open descriptor.
    unsafe {
        libc::write(fd.as_raw_fd(), (&byte as *const u8).cast(), 1);
    }
}

/// Empty a FIFO that woke us.
fn drain_bell(fd: &OwnedFd) {
    let mut buf = [0u8; 64];
    // SAFETY: reads into a valid buffer from an open non-blocking descriptor.
    while unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// True while process `pid` exists (0: not known yet).
fn process_alive(pid: u32) -> bool {
    if pid == 0 {
        return true;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Polls of the ring (yielding the CPU in between) before a side goes to
/// sleep on its doorbell.
pub const DEFAULT_POLLS_BEFORE_SLEEP: usize = 64;

/// Side `mine` of a ring marked as sleeping while this lives.
struct Asleep<'a>(&'a AtomicU32);

impl<'a> Asleep<'a> {
    fn mark(ring: &'a Ring, mine: usize) -> Self {
        let flag = ring.sleeping(mine);
        flag.store(1, Ordering::SeqCst);
        Asleep(flag)
    }
}

impl Drop for Asleep<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::SeqCst);
    }
}

/// Wait, as side `mine` of `ring`, until `ready()`; the doorbell `bell` is
/// rung by the other side after it moves its position while we sleep.
/// `deadline`: when to give up, and the timeout it stands for (reported).
async fn wait_until(
    ring: &Ring,
    mine: usize,
    bell: &AsyncFd<OwnedFd>,
    peer: usize,
    deadline: Option<(Instant, Duration)>,
    polls: usize,
    ready: impl Fn() -> bool,
) -> Result<()> {
    // Poll first, giving the CPU away between polls (sched_yield): with
    // more ranks than cores the peer needs it to make progress, and a
    // doorbell costs a system call and a reactor wake-up on each side.
    // (Yielding to tokio instead measured 10x slower: it keeps the core.)
    for _ in 0..polls {
        if ready() {
            return Ok(());
        }
        std::thread::yield_now();
    }
    let theirs = other(mine);
    loop {
        let _asleep = Asleep::mark(ring, mine);
        if ready() {
            return Ok(());
        }
        let failure =
            |reason: String| Error::from(CollectiveError::PeerFailure { rank: peer, reason });
        // a writer closes after its last bytes: look at the ring once more
        if ring.closed(theirs).load(Ordering::SeqCst) != 0 && !ready() {
            return Err(failure("it closed its shared-memory ring".into()));
        }
        let pid = ring.peer_pid(theirs).load(Ordering::Acquire);
        if !process_alive(pid) {
            return Err(failure(format!("its process {pid} exited")));
        }
        let now = Instant::now();
        let nap = match deadline {
            Some((at, timeout)) if now >= at => {
                return Err(CollectiveError::Timeout {
                    what: format!("waiting for rank {peer} over shared memory"),
                    after: timeout,
                }
                .into());
            }
            Some((at, _)) => LIVENESS_CHECK.min(at - now),
            None => LIVENESS_CHECK,
        };
        if let Ok(woken) = tokio::time::timeout(nap, bell.readable()).await {
            let mut guard =
                woken.map_err(io_error("waiting on a shared-memory doorbell".into()))?;
            drain_bell(bell.get_ref());
            guard.clear_ready();
        }
    }
}

fn other(line: usize) -> usize {
    if line == WRITER_LINE {
        READER_LINE
    } else {
        WRITER_LINE
    }
}

/// Publish side `mine`'s new position; ring `bell` if the other side sleeps.
fn publish(ring: &Ring, mine: usize, position: u64, bell: &OwnedFd) {
    ring.position(mine).store(position, Ordering::SeqCst);
    if ring.sleeping(other(mine)).load(Ordering::SeqCst) != 0 {
        ring_bell(bell);
    }
}

/// This rank's end of a ring it reads from, with the message in progress.
#[derive(Debug)]
struct Inbound {
    ring: Ring,
    /// Rung by the writer (data), and the one this side rings (space).
    data_bell: AsyncFd<OwnedFd>,
    space_bell: OwnedFd,
    /// Bytes of the length prefix read so far.
    prefix: Vec<u8>,
    /// Once the prefix is complete: the message's length and its bytes so far.
    body: Option<(usize, Vec<u8>)>,
    polls: usize,
}

impl Inbound {
    /// Take what the ring holds; a whole message once it has arrived.
    fn pull(&mut self) -> Option<Vec<u8>> {
        let ring = &self.ring;
        loop {
            let head = ring.position(READER_LINE).load(Ordering::Relaxed);
            let avail = (ring.position(WRITER_LINE).load(Ordering::SeqCst) - head) as usize;
            if avail == 0 {
                return None;
            }
            let taken = match &mut self.body {
                None => {
                    let n = avail.min(8 - self.prefix.len());
                    ring.extend(head, n, &mut self.prefix);
                    if let Ok(prefix) = <[u8; 8]>::try_from(self.prefix.as_slice()) {
                        let len = u64::from_le_bytes(prefix) as usize;
                        self.prefix.clear();
                        self.body = Some((len, Vec::with_capacity(len)));
                    }
                    n
                }
                Some((len, body)) => {
                    let n = avail.min(*len - body.len());
                    ring.extend(head, n, body);
                    n
                }
            };
            publish(ring, READER_LINE, head + taken as u64, &self.space_bell);
            if let Some((len, body)) = &self.body
                && body.len() == *len
            {
                return self.body.take().map(|(_, body)| body);
            }
        }
    }
}

/// This rank's end of a ring it writes to.
#[derive(Debug)]
struct Outbound {
    ring: Ring,
    data_bell: OwnedFd,
    space_bell: AsyncFd<OwnedFd>,
    /// Serialises the fast path of `send` with the writer task's chunks.
    lock: std::sync::Mutex<()>,
    /// Messages handed to the writer task and not yet fully written.
    queued: AtomicUsize,
    failed: std::sync::Mutex<Option<String>>,
    polls: usize,
}

impl Outbound {
    fn free(&self) -> usize {
        let tail = self.ring.position(WRITER_LINE).load(Ordering::Relaxed);
        let head = self.ring.position(READER_LINE).load(Ordering::SeqCst);
        self.ring.capacity - (tail - head) as usize
    }

    /// Write bytes `from..` of `parts` (one stream) as far as the ring has
    /// room; the new offset.
    fn put_stream(&self, parts: [&[u8]; 2], mut from: usize) -> usize {
        let ring = &self.ring;
        let mut tail = ring.position(WRITER_LINE).load(Ordering::Relaxed);
        let mut room = self.free();
        let mut skip = from;
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            let n = room.min(part.len() - skip);
            ring.put(tail, &part[skip..skip + n]);
            tail += n as u64;
            room -= n;
            from += n;
            skip = 0;
            if room == 0 {
                break;
            }
        }
        publish(ring, WRITER_LINE, tail, &self.data_bell);
        from
    }

    fn close(&self) {
        self.ring.closed(WRITER_LINE).store(1, Ordering::SeqCst);
        ring_bell(&self.data_bell);
    }
}

/// Writes the messages `send` could not write at once, in order, waiting
/// for room; closes the ring when the transport is gone and the queue empty.
async fn write_queued(
    out: Arc<Outbound>,
    peer: usize,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    while let Some(data) = queue.recv().await {
        let failed = out.failed.lock().map(|g| g.is_some()).unwrap_or(true);
        if !failed {
            let len = (data.len() as u64).to_le_bytes();
            let total = 8 + data.len();
            let mut done = 0;
            loop {
                done = match out.lock.lock() {
                    Ok(_g) => out.put_stream([&len, &data], done),
                    Err(_) => break,
                };
                if done == total {
                    break;
                }
                if let Err(e) = wait_until(
                    &out.ring,
                    WRITER_LINE,
                    &out.space_bell,
                    peer,
                    None,
                    out.polls,
                    || out.free() > 0,
                )
                .await
                {
                    if let Ok(mut g) = out.failed.lock() {
                        *g = Some(e.to_string());
                    }
                    break;
                }
            }
        }
        out.queued.fetch_sub(1, Ordering::AcqRel);
    }
    out.close();
}

/// A ring this rank writes to and the queue of its writer task.
type Writer = (Arc<Outbound>, mpsc::UnboundedSender<Vec<u8>>);

/// Peers on this host through shared memory, the others through TCP.
#[derive(Debug)]
pub struct ShmTransport {
    tcp: TcpTransport,
    /// Per peer on this host: the ring this rank reads from.
    inbound: Vec<Option<tokio::sync::Mutex<Inbound>>>,
    /// Per peer on this host: the ring this rank writes to, and the queue
    /// of its writer task.
    outbound: Vec<Option<Writer>>,
}

impl Drop for ShmTransport {
    fn drop(&mut self) {
        // Writers waiting for room in our rings fail at once; our writer
        // tasks drain their queues and then close their rings.
        for inbound in self.inbound.iter_mut().flatten() {
            let inbound = inbound.get_mut();
            inbound.ring.closed(READER_LINE).store(1, Ordering::SeqCst);
            ring_bell(&inbound.space_bell);
        }
    }
}

/// Gather `mine` at rank 0 over TCP and hand everyone the list (rank order).
async fn all_gather_small(tcp: &TcpTransport, mine: Vec<u8>) -> Result<Vec<Vec<u8>>> {
    let (rank, n) = (tcp.rank(), tcp.size());
    if rank == 0 {
        let mut all = vec![mine];
        for peer in 1..n {
            all.push(tcp.recv(peer).await?);
        }
        let encoded =
            serde_json::to_vec(&all).map_err(|e| Error::invalid("shared memory", e.to_string()))?;
        for peer in 1..n {
            tcp.send(peer, encoded.clone()).await?;
        }
        Ok(all)
    } else {
        tcp.send(0, mine).await?;
        let encoded = tcp.recv(0).await?;
        serde_json::from_slice(&encoded).map_err(|e| {
            Error::invalid(
                "shared memory",
                format!("rank 0's shared-memory setup message is not valid: {e}"),
            )
        })
    }
}
impl ShmTransport {
    /// Upgrade `tcp` with shared memory between the ranks of one host
    /// (collective: every rank of the group calls it).
    pub async fn connect(tcp: TcpTransport, cfg: &ShmConfig) -> Result<Self> {
        if cfg.ring_bytes < 4096 {
            return Err(Error::invalid(
                "ring_bytes",
                format!("{} is too small; use at least 4096", cfg.ring_bytes),
            ));
        }
        let (rank, n) = (tcp.rank(), tcp.size());
        let token = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let key = host_key();
        let mine = format!("{key}\n{token}\n{}", cfg.ring_bytes).into_bytes();
        let all = all_gather_small(&tcp, mine).await?;
        let fields = |v: &[u8]| -> Vec<String> {
            String::from_utf8_lossy(v)
                .split('\n')
                .map(str::to_string)
                .collect()
        };
        let rows: Vec<Vec<String>> = all.iter().map(|v| fields(v)).collect();
        if let Some((r, row)) = rows.iter().enumerate().find(|(_, row)| row.len() != 3) {
            return Err(Error::invalid(
                "shared memory",
                format!("rank {r}'s shared-memory setup has {} fields", row.len()),
            ));
        }
        let job = rows[0][1].clone();
        let local: Vec<bool> = (0..n)
            .map(|p| p != rank && rows[p][0] == rows[rank][0])
            .collect();
        for p in (0..n).filter(|&p| local[p]) {
            if rows[p][2] != rows[rank][2] {
                return Err(Error::invalid(
                    "shared memory",
                    format!(
                        "shared-memory ring size: rank {rank} uses {} bytes, rank {p} {}",
                        rows[rank][2], rows[p][2]
                    ),
                ));
            }
        }
        let name =
            |from: usize, to: usize| cfg.dir.join(format!("hetero-shm-{job}-{from}-to-{to}"));
        // Rings this rank reads from; a failure is reported to the others
        // through the barrier (they stop instead of waiting out the timeout).
        let mut created = Vec::new();
        let mut setup: std::result::Result<(), Error> = Ok(());
        let mut incoming: Vec<Option<Ring>> = (0..n).map(|_| None).collect();
        for p in (0..n).filter(|&p| local[p]) {
            let path = name(p, rank);
            match Ring::create(&path, cfg.ring_bytes) {
                Ok(r) => {
                    created.push(path.clone());
                    incoming[p] = Some(r);
                    if let Err(e) = make_doorbells(&path) {
                        setup = Err(e);
                        break;
                    }
                }
                Err(e) => {
                    setup = Err(e);
                    break;
                }
            }
        }
        let cleanup = |created: &[PathBuf]| {
            for path in created {
                let _ = std::fs::remove_file(path);
                for suffix in [DATA_BELL, SPACE_BELL] {
                    let _ = std::fs::remove_file(bell_path(path, suffix));
                }
            }
        };
        let status = |r: &std::result::Result<(), Error>| match r {
            Ok(()) => b"ok".to_vec(),
            Err(e) => e.to_string().into_bytes(),
        };
        let first_failure = |all: &[Vec<u8>]| {
            all.iter()
                .enumerate()
                .find(|(_, s)| s.as_slice() != b"ok")
                .map(|(r, s)| {
                    Error::from(CollectiveError::PeerFailure {
                        rank: r,
                        reason: format!(
                            "shared-memory setup failed: {}",
                            String::from_utf8_lossy(s)
                        ),
                    })
                })
        };
        let all = match all_gather_small(&tcp, status(&setup)).await {
            Ok(all) => all,
            Err(e) => {
                cleanup(&created);
                return Err(e);
            }
        };
        if let Some(e) = first_failure(&all) {
            cleanup(&created);
            setup?;
            return Err(e);
        }
        let mut inbound: Vec<Option<tokio::sync::Mutex<Inbound>>> = (0..n).map(|_| None).collect();
        let mut outbound: Vec<Option<Writer>> = (0..n).map(|_| None).collect();
        let mut opened = Vec::new();
        let open_all = |p: usize, incoming: Ring| -> Result<(Inbound, Arc<Outbound>)> {
            let inb = Inbound {
                ring: incoming,
                data_bell: watch(open_bell(&name(p, rank), DATA_BELL)?)?,
                space_bell: open_bell(&name(p, rank), SPACE_BELL)?,
                prefix: Vec::with_capacity(8),
                body: None,
                polls: cfg.polls_before_sleep,
            };
            let out_path = name(rank, p);
            let out = Outbound {
                ring: Ring::open(&out_path, cfg.ring_bytes)?,
                data_bell: open_bell(&out_path, DATA_BELL)?,
                space_bell: watch(open_bell(&out_path, SPACE_BELL)?)?,
                lock: std::sync::Mutex::new(()),
                queued: AtomicUsize::new(0),
                failed: std::sync::Mutex::new(None),
                polls: cfg.polls_before_sleep,
            };
            Ok((inb, Arc::new(out)))
        };
        for (p, slot) in incoming.iter_mut().enumerate() {
            let Some(ring) = slot.take() else {
                continue;
            };
            match open_all(p, ring) {
                Ok(pair) => opened.push((p, pair)),
                Err(e) => {
                    setup = Err(e);
                    break;
                }
            }
        }
        let all = all_gather_small(&tcp, status(&setup)).await;
        // every rank has mapped (or given up on) its rings: the names can go
        cleanup(&created);
        let all = all?;
        if let Some(e) = first_failure(&all) {
            setup?;
            return Err(e);
        }

        for (p, (inb, out)) in opened {
            inbound[p] = Some(tokio::sync::Mutex::new(inb));
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_queued(out.clone(), p, rx));
            outbound[p] = Some((out, tx));
        }
        Ok(ShmTransport {
            tcp,
            inbound,
            outbound,
        })
    }

    /// How many peers this rank reaches through shared memory.
    pub fn local_peers(&self) -> usize {
        self.outbound.iter().flatten().count()
    }
}

#[async_trait]
impl Transport for ShmTransport {
    fn rank(&self) -> usize {
        self.tcp.rank()
    }
    fn size(&self) -> usize {
        self.tcp.size()
    }
    async fn send(&self, peer: usize, data: Vec<u8>) -> Result<()> {
        let Some(Some((out, queue))) = self.outbound.get(peer) else {
            return self.tcp.send(peer, data).await;
        };
        if let Some(reason) = out.failed.lock().ok().and_then(|g| g.clone()) {
            return Err(CollectiveError::PeerFailure { rank: peer, reason }.into());
        }
        {
            let _g = out
                .lock
                .lock()
                .map_err(|_| Error::invalid("shared memory", "a writer panicked"))?;
            // Fast path: nothing queued before it and room for all of it.
            if out.queued.load(Ordering::Acquire) == 0 && out.free() >= 8 + data.len() {
                let len = (data.len() as u64).to_le_bytes();
                out.put_stream([&len, &data], 0);
                return Ok(());
            }
            out.queued.fetch_add(1, Ordering::AcqRel);
        }
        queue.send(data).map_err(|_| {
            out.queued.fetch_sub(1, Ordering::AcqRel);
            CollectiveError::PeerFailure {
                rank: peer,
                reason: "its shared-memory writer stopped".into(),
            }
            .into()
        })
    }
    async fn recv(&self, peer: usize) -> Result<Vec<u8>> {
        let Some(Some(inbound)) = self.inbound.get(peer) else {
            return self.tcp.recv(peer).await;
        };
        let timeout = self.tcp.timeout();
        let deadline = (Instant::now() + timeout, timeout);
        let mut inb = inbound.lock().await;
        loop {
            if let Some(message) = inb.pull() {
                return Ok(message);
            }
            let Inbound {
                ring,
                data_bell,
                polls,
                ..
            } = &*inb;
            wait_until(
                ring,
                READER_LINE,
                data_bell,
                peer,
                Some(deadline),
                *polls,
                || {
                    ring.position(WRITER_LINE).load(Ordering::SeqCst)
                        > ring.position(READER_LINE).load(Ordering::Relaxed)
                },
            )
            .await?;
        }
    }
    async fn flush(&self) -> Result<()> {
        let timeout = self.tcp.timeout();
        let deadline = Instant::now() + timeout;
        for (out, _) in self.outbound.iter().flatten() {
            let what = "flushing queued shared-memory messages";
            wait_drained(&out.queued, deadline, timeout, what).await?;
        }
        self.tcp.flush().await
    }
    fn timeout(&self) -> Duration {
        self.tcp.timeout()
    }
    fn describe(&self) -> String {
        format!(
            "shared memory to {} local peer(s), TCP to the rest",
            self.local_peers()
        )
    }
    fn link_kind(&self, peer: usize) -> LinkKind {
        match self.outbound.get(peer) {
            Some(Some(_)) => LinkKind::SharedMemory,
            _ => self.tcp.link_kind(peer),
        }
    }
}
