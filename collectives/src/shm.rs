//! Shared-memory transport between the processes of one host (Linux).
//!
//! [`ShmTransport`] wraps a [`TcpTransport`]: peers on the same host are
//! reached through shared memory, every other peer through TCP as before.
//! "Same host" means the same host name, boot id and network namespace, so
//! the emulated cluster's nodes (one namespace each, one machine) stay apart
//! and keep their shaped links.
//!
//! ## Rings
//!
//! One single-producer single-consumer byte ring per ordered pair of local
//! ranks, in a file under `/dev/shm` (or `HETERO_SHM_DIR`) that both
//! processes map. A message is a little-endian `u64` length and its bytes,
//! streamed through the ring, so a message may be larger than the ring (the
//! reader drains while the writer fills). Each side owns one position
//! counter (`tail` for the writer, `head` for the reader), published with
//! release stores, so no lock is ever shared between processes.
//!
//! ## Threads and waiting
//!
//! Each local peer gets a writer thread (fed by an unbounded queue, so
//! `send` never blocks, as with TCP) and a reader thread that pushes whole
//! messages into the per-peer inbox. A side with nothing to do spins
//! briefly, then sleeps on a futex in the shared page (the other side wakes
//! it only when it said it is sleeping), waking every 20 ms to check that
//! its peer is alive: a closed flag set by a peer that stopped cleanly, and
//! the peer's process id otherwise. So a peer that dies surfaces as
//! `PeerFailure` within about 20 ms, not after the receive timeout.
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
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use hetero_core::{Error, LinkKind, Result};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::CollectiveError;
use crate::tcp::TcpTransport;
use crate::transport::{Delivery, Inboxes, Transport};

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
}

impl Default for ShmConfig {
    /// `HETERO_SHM_DIR` or `/dev/shm`, rings of [`DEFAULT_RING_BYTES`].
    fn default() -> Self {
        ShmConfig {
            dir: std::env::var_os("HETERO_SHM_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/dev/shm")),
            ring_bytes: DEFAULT_RING_BYTES,
        }
    }
}

/// Which processes can share memory: host name, boot id, network namespace.
pub fn host_key() -> String {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string());
    let boot = read("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let netns = std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!("{}|{boot}|{netns}", crate::sense::host_name())
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
    /// Bumped after every move of that side's position: the futex word.
    fn seq(&self, line: usize) -> &AtomicU32 {
        self.u32_at(line + 8)
    }
    /// Nonzero while that side sleeps on the other side's `seq`.
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

    /// Copy from the data area at stream position `pos` into `dst`.
    fn take(&self, pos: u64, dst: &mut [u8]) {
        let start = (pos % self.capacity as u64) as usize;
        let first = dst.len().min(self.capacity - start);
        // SAFETY: both ranges lie in the data area between head and tail,
        // which the writer does not touch until head moves past them.
        unsafe {
            let data = self.base.add(HEADER);
            std::ptr::copy_nonoverlapping(data.add(start), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(data, dst.as_mut_ptr().add(first), dst.len() - first);
        }
    }
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: a shared (not process-private) futex on a word of the mapped
    // page; returns at once if the word no longer holds `expected`.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: as for futex_wait; wakes every sleeper on the word.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
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

/// One side of a ring: waits for the other side's `seq` to move.
struct Side<'a> {
    ring: &'a Ring,
    /// This side's cache line, and the other side's.
    mine: usize,
    theirs: usize,
    stop: &'a AtomicBool,
    peer: usize,
}

impl Side<'_> {
    /// Wait until `ready()` holds; an error if the peer or this transport stops.
    fn wait(&self, ready: impl Fn() -> bool) -> std::result::Result<(), String> {
        for i in 0..256 {
            if ready() {
                return Ok(());
            }
            if i < 192 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        let theirs_seq = self.ring.seq(self.theirs);
        loop {
            let seen = theirs_seq.load(Ordering::SeqCst);
            if ready() {
                return Ok(());
            }
            if self.ring.closed(self.theirs).load(Ordering::Acquire) != 0 {
                return Err(format!("rank {} closed its shared-memory ring", self.peer));
            }
            if self.stop.load(Ordering::Acquire) {
                return Err("this rank's transport was dropped".into());
            }
            let pid = self.ring.peer_pid(self.theirs).load(Ordering::Acquire);
            if !process_alive(pid) {
                return Err(format!("rank {} (process {pid}) exited", self.peer));
            }
            let sleeping = self.ring.sleeping(self.mine);
            sleeping.store(1, Ordering::SeqCst);
            futex_wait(theirs_seq, seen, LIVENESS_CHECK);
            sleeping.store(0, Ordering::SeqCst);
        }
    }

    /// Publish that this side moved its position; wake the other if asleep.
    fn publish(&self) {
        self.ring.seq(self.mine).fetch_add(1, Ordering::SeqCst);
        if self.ring.sleeping(self.theirs).load(Ordering::SeqCst) != 0 {
            futex_wake(self.ring.seq(self.mine));
        }
    }

    fn close(&self) {
        self.ring.closed(self.mine).store(1, Ordering::Release);
        self.ring.seq(self.mine).fetch_add(1, Ordering::SeqCst);
        futex_wake(self.ring.seq(self.mine));
    }
}

/// Stream `bytes` into the ring as the writer.
fn write_all(side: &Side<'_>, bytes: &[u8]) -> std::result::Result<(), String> {
    let ring = side.ring;
    let capacity = ring.capacity as u64;
    let mut done = 0;
    while done < bytes.len() {
        let tail = ring.position(WRITER_LINE).load(Ordering::Relaxed);
        side.wait(|| tail - ring.position(READER_LINE).load(Ordering::Acquire) < capacity)?;
        let head = ring.position(READER_LINE).load(Ordering::Acquire);
        let free = (capacity - (tail - head)) as usize;
        let n = free.min(bytes.len() - done);
        ring.put(tail, &bytes[done..done + n]);
        ring.position(WRITER_LINE)
            .store(tail + n as u64, Ordering::Release);
        side.publish();
        done += n;
    }
    Ok(())
}

/// Fill `out` from the ring as the reader.
fn read_exact(side: &Side<'_>, out: &mut [u8]) -> std::result::Result<(), String> {
    let ring = side.ring;
    let mut done = 0;
    while done < out.len() {
        let head = ring.position(READER_LINE).load(Ordering::Relaxed);
        side.wait(|| ring.position(WRITER_LINE).load(Ordering::Acquire) > head)?;
        let tail = ring.position(WRITER_LINE).load(Ordering::Acquire);
        let n = ((tail - head) as usize).min(out.len() - done);
        ring.take(head, &mut out[done..done + n]);
        ring.position(READER_LINE)
            .store(head + n as u64, Ordering::Release);
        side.publish();
        done += n;
    }
    Ok(())
}

/// Peers on this host through shared memory, the others through TCP.
#[derive(Debug)]
pub struct ShmTransport {
    tcp: TcpTransport,
    /// Per peer: the queue of its writer thread, if it is on this host.
    writers: Vec<Option<std::sync::mpsc::Sender<Vec<u8>>>>,
    inboxes: Inboxes,
    pending: Arc<AtomicUsize>,
    /// Why a writer thread stopped, per peer.
    failed: Vec<Arc<std::sync::Mutex<Option<String>>>>,
    stop: Arc<AtomicBool>,
    local_peers: usize,
}

impl Drop for ShmTransport {
    fn drop(&mut self) {
        // Writer threads drain their queues and close; readers see the flag.
        self.stop.store(true, Ordering::Release);
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
            match Ring::create(&name(p, rank), cfg.ring_bytes) {
                Ok(r) => {
                    created.push(name(p, rank));
                    incoming[p] = Some(r);
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
        let mut outgoing: Vec<Option<Ring>> = (0..n).map(|_| None).collect();
        for p in (0..n).filter(|&p| local[p]) {
            match Ring::open(&name(rank, p), cfg.ring_bytes) {
                Ok(r) => outgoing[p] = Some(r),
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

        let stop = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(AtomicUsize::new(0));
        let mut writers = Vec::with_capacity(n);
        let mut failed = Vec::with_capacity(n);
        let mut receivers = Vec::with_capacity(n);
        for p in 0..n {
            let (tx, rx) = mpsc::unbounded_channel::<Delivery>();
            receivers.push(rx);
            let why = Arc::new(std::sync::Mutex::new(None));
            failed.push(why.clone());
            let (Some(inbound), Some(outbound)) = (incoming[p].take(), outgoing[p].take()) else {
                writers.push(None);
                continue;
            };
            let stop_r = stop.clone();
            std::thread::Builder::new()
                .name(format!("shm-read-{rank}<-{p}"))
                .spawn(move || read_loop(inbound, p, &stop_r, &tx))
                .map_err(io_error("starting a shared-memory reader thread".into()))?;
            let (wtx, wrx) = std::sync::mpsc::channel::<Vec<u8>>();
            let pending_w = pending.clone();
            std::thread::Builder::new()
                .name(format!("shm-write-{rank}->{p}"))
                .spawn(move || write_loop(outbound, p, &wrx, &pending_w, &why))
                .map_err(io_error("starting a shared-memory writer thread".into()))?;
            writers.push(Some(wtx));
        }
        let local_peers = local.iter().filter(|&&l| l).count();
        Ok(ShmTransport {
            tcp,
            writers,
            inboxes: Inboxes::new(rank, receivers),
            pending,
            failed,
            stop,
            local_peers,
        })
    }

    /// How many peers this rank reaches through shared memory.
    pub fn local_peers(&self) -> usize {
        self.local_peers
    }
}

fn read_loop(ring: Ring, peer: usize, stop: &AtomicBool, tx: &mpsc::UnboundedSender<Delivery>) {
    let side = Side {
        ring: &ring,
        mine: READER_LINE,
        theirs: WRITER_LINE,
        stop,
        peer,
    };
    loop {
        let mut len = [0u8; 8];
        let message = read_exact(&side, &mut len).and_then(|()| {
            let len = u64::from_le_bytes(len);
            let len = usize::try_from(len)
                .map_err(|_| format!("rank {peer} announced a {len}-byte message"))?;
            let mut data = vec![0u8; len];
            read_exact(&side, &mut data)?;
            Ok(data)
        });
        let failed = message.is_err();
        if tx.send(message).is_err() || failed {
            break;
        }
    }
    side.close();
}

fn write_loop(
    ring: Ring,
    peer: usize,
    queue: &std::sync::mpsc::Receiver<Vec<u8>>,
    pending: &AtomicUsize,
    failed: &std::sync::Mutex<Option<String>>,
) {
    // A writer still drains its queue after the transport is dropped (the
    // last messages of a rank must arrive), so it does not watch `stop`.
    let never = AtomicBool::new(false);
    let side = Side {
        ring: &ring,
        mine: WRITER_LINE,
        theirs: READER_LINE,
        stop: &never,
        peer,
    };
    let mut error = None;
    while let Ok(data) = queue.recv() {
        if error.is_none() {
            let len = (data.len() as u64).to_le_bytes();
            if let Err(e) = write_all(&side, &len).and_then(|()| write_all(&side, &data)) {
                if let Ok(mut g) = failed.lock() {
                    *g = Some(e.clone());
                }
                error = Some(e);
            }
        }
        pending.fetch_sub(1, Ordering::AcqRel);
    }
    side.close();
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
        let Some(Some(tx)) = self.writers.get(peer) else {
            return self.tcp.send(peer, data).await;
        };
        if let Some(reason) = self.failed[peer].lock().ok().and_then(|g| g.clone()) {
            return Err(CollectiveError::PeerFailure { rank: peer, reason }.into());
        }
        self.pending.fetch_add(1, Ordering::AcqRel);
        tx.send(data).map_err(|_| {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            CollectiveError::PeerFailure {
                rank: peer,
                reason: "its shared-memory writer stopped".into(),
            }
            .into()
        })
    }
    async fn recv(&self, peer: usize) -> Result<Vec<u8>> {
        match self.writers.get(peer) {
            Some(Some(_)) => self.inboxes.recv(peer, self.tcp.timeout()).await,
            _ => self.tcp.recv(peer).await,
        }
    }
    async fn flush(&self) -> Result<()> {
        let timeout = self.tcp.timeout();
        let deadline = Instant::now() + timeout;
        while self.pending.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return Err(CollectiveError::Timeout {
                    what: "flushing queued shared-memory messages".into(),
                    after: timeout,
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.tcp.flush().await
    }
    fn timeout(&self) -> Duration {
        self.tcp.timeout()
    }
    fn describe(&self) -> String {
        format!(
            "shared memory to {} local peer(s), TCP to the rest",
            self.local_peers
        )
    }
    fn link_kind(&self, peer: usize) -> LinkKind {
        match self.writers.get(peer) {
            Some(Some(_)) => LinkKind::SharedMemory,
            _ => self.tcp.link_kind(peer),
        }
    }
}
