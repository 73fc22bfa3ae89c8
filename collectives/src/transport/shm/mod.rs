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
//! Over the TCP links: the ranks all-gather their host keys, job tokens and
//! ring sizes ([`all_gather_bytes`]); rank 0's token names the job. Each
//! rank creates (exclusively, mode 0600, space reserved with
//! `posix_fallocate` so a full `/dev/shm` is an error now and not a
//! `SIGBUS` later) the rings it reads from; after a barrier (an all-gather
//! of every rank's status) it maps the rings it writes to; after a second
//! barrier the creators unlink their files, so nothing is left in
//! `/dev/shm` however the job ends.
//!
//! ## Files
//!
//! This file holds the configuration, the set-up and the [`Transport`];
//! `ring` the mapped ring file and its header, `doorbell` the FIFOs a
//! sleeping side waits on, `wait` the poll-then-sleep protocol with its
//! liveness checks, `stream` the messages streamed through a ring (the
//! reading end, the writing end and its writer task).

mod doorbell;
mod ring;
mod stream;
mod wait;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use hetero_core::{Error, LinkKind, Result};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cost::Algorithm;
use crate::error::CollectiveError;
use crate::exchange::all_gather_bytes;
use crate::flat::FlatCollective;
use crate::transport::tcp::TcpTransport;
use crate::transport::{Transport, wait_drained};
use doorbell::{DATA_BELL, SPACE_BELL, bell_path, make_doorbells, open_bell, ring_bell, watch};
use ring::{READER_LINE, Ring, WRITER_LINE};
use stream::{Inbound, Outbound, Writer, write_queued};
pub use wait::DEFAULT_POLLS_BEFORE_SLEEP;
use wait::wait_until;

/// Bytes of each ring's data area (one ring per ordered pair of local ranks).
pub const DEFAULT_RING_BYTES: usize = 1 << 20;

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
        crate::transport::host_name(),
        ns("net"),
        ns("pid")
    )
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(context, e)
}

/// Peers on this host through shared memory, the others through TCP.
#[derive(Debug)]
pub struct ShmTransport {
    /// Shared with the set-up's communicator while `connect` runs.
    tcp: Arc<TcpTransport>,
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
        let tcp = Arc::new(tcp);
        // The set-up's exchanges (host keys, then two status reports that
        // double as barriers) run over the TCP links.
        let setup_comm = FlatCollective::unmeasured(tcp.clone(), Algorithm::Ring);
        let token = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let key = host_key();
        let mine = format!("{key}\n{token}\n{}", cfg.ring_bytes).into_bytes();
        let all = all_gather_bytes(&setup_comm, &mine).await?;
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
        let all = match all_gather_bytes(&setup_comm, &status(&setup)).await {
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
        let all = all_gather_bytes(&setup_comm, &status(&setup)).await;
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
