//! TCP transport on tokio, started the way torchrun starts jobs, or by an
//! MPI launcher (`mpirun` / `mpiexec` of Open MPI, MPICH or Intel MPI:
//! their rank variables stand in for torchrun's, see [`Launcher`]; MPI
//! itself carries nothing here).
//!
//! ## Rendezvous
//!
//! Rank 0 listens on `MASTER_ADDR:MASTER_PORT`. Every other rank connects to
//! it (retrying until the timeout, since rank 0 may start later), binds its
//! own listener on the address it reached the master from (port 0: the OS
//! picks), and sends `hello(rank, world size, listen address)`. Rank 0 checks
//! that every rank appears once with the same world size, then sends the
//! table of listen addresses to everyone. The connection to the master stays
//! open as the link between rank 0 and that rank; for every other pair
//! `i < j`, rank `j` connects to rank `i`'s listener and introduces itself.
//! The result is a full mesh of `n(n-1)/2` connections with `TCP_NODELAY`.
//!
//! ## Messages
//!
//! A frame is a little-endian `u64` length followed by the bytes. Each
//! connection has a writer task (fed by an unbounded queue, so `send` never
//! blocks and two ranks can send to each other at once) and a reader task
//! that pushes frames into the receiving rank's per-peer inbox. An EOF or a
//! reset is pushed as a failure, so a rank that dies surfaces as
//! [`CollectiveError::PeerFailure`] at once, and a silent one as
//! [`CollectiveError::Timeout`] after the configured timeout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use hetero_core::{LinkKind, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};

use crate::error::CollectiveError;
use crate::transport::{DEFAULT_TIMEOUT, Delivery, Inboxes, Transport, wait_drained};

const MAGIC: u32 = 0x4845_5443; // "HETC"
/// Largest frame accepted from a peer (guards against garbage lengths).
const MAX_FRAME: u64 = 1 << 40;

/// Where and how to start: torchrun's variables plus timeouts.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub local_world_size: usize,
    /// Rank 0's rendezvous address.
    pub master: String,
    /// Receive timeout and the limit of the whole rendezvous.
    pub timeout: Duration,
}

/// The variable `name` as a non-negative integer: `None` when it is not
/// set, an error naming it when it is set to something else.
fn env_usize(
    lookup: &dyn Fn(&str) -> Option<String>,
    name: &'static str,
) -> std::result::Result<Option<usize>, CollectiveError> {
    let Some(v) = lookup(name) else {
        return Ok(None);
    };
    v.trim()
        .parse()
        .map(Some)
        .map_err(|e| CollectiveError::Env {
            name,
            reason: format!("{v:?} is not a non-negative integer: {e}"),
        })
}

/// A program that starts the ranks of a job and tells each its place
/// through environment variables: torchrun's names, or an MPI launcher's.
/// The first launcher whose rank variable is set is the one that started
/// this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launcher {
    pub name: &'static str,
    pub rank: &'static str,
    pub world_size: &'static str,
    pub local_rank: &'static str,
    pub local_world_size: &'static str,
}

/// The launchers whose variables are read, in order of precedence.
pub const LAUNCHERS: [Launcher; 3] = [
    Launcher {
        name: "torchrun",
        rank: "RANK",
        world_size: "WORLD_SIZE",
        local_rank: "LOCAL_RANK",
        local_world_size: "LOCAL_WORLD_SIZE",
    },
    Launcher {
        name: "Open MPI's mpirun",
        rank: "OMPI_COMM_WORLD_RANK",
        world_size: "OMPI_COMM_WORLD_SIZE",
        local_rank: "OMPI_COMM_WORLD_LOCAL_RANK",
        local_world_size: "OMPI_COMM_WORLD_LOCAL_SIZE",
    },
    // MPICH's and Intel MPI's process manager (Hydra).
    Launcher {
        name: "MPICH's mpiexec",
        rank: "PMI_RANK",
        world_size: "PMI_SIZE",
        local_rank: "MPI_LOCALRANKID",
        local_world_size: "MPI_LOCALNRANKS",
    },
];

impl Launcher {
    /// The launcher that started this job, by the variables `lookup`
    /// sees; `None` when no launcher's rank variable is set.
    pub fn detect(lookup: impl Fn(&str) -> Option<String>) -> Option<Launcher> {
        LAUNCHERS.into_iter().find(|l| lookup(l.rank).is_some())
    }
}

/// Like [`env_usize`], for a variable the job cannot start without.
fn required_usize(
    lookup: &dyn Fn(&str) -> Option<String>,
    name: &'static str,
) -> std::result::Result<usize, CollectiveError> {
    env_usize(lookup, name)?.ok_or_else(|| CollectiveError::Env {
        name,
        reason: "not set (start ranks with torchrun or an MPI launcher, or set it by hand)".into(),
    })
}

impl TcpConfig {
    /// A config for `rank` of `world_size` with rendezvous at `master`.
    pub fn new(rank: usize, world_size: usize, master: impl Into<String>) -> Self {
        TcpConfig {
            rank,
            world_size,
            local_rank: rank,
            local_world_size: world_size,
            master: master.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Read `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE` (the last
    /// two default to `RANK` / `WORLD_SIZE`), `MASTER_ADDR`, `MASTER_PORT`, and
    /// optionally `HETERO_COLLECTIVE_TIMEOUT_S`. Under an MPI launcher
    /// ([`LAUNCHERS`]) its rank variables stand in for the first four when
    /// `RANK` is not set; `MASTER_ADDR` and `MASTER_PORT` are still needed
    /// (`mpirun -x NAME=...` with Open MPI, `-genv NAME ...` with MPICH).
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Like [`TcpConfig::from_env`], with the variables from `lookup`
    /// (`None`: not set), so they can come from elsewhere than this
    /// process's environment (a launcher's file, a test). A variable that
    /// is missing when required, or set to something unusable (optional
    /// ones included: a `LOCAL_RANK` that is not a number is an error, not
    /// a silent fallback to `RANK`), is [`CollectiveError::Env`] naming it.
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let lookup: &dyn Fn(&str) -> Option<String> = &lookup;
        let launcher = Launcher::detect(lookup).unwrap_or(LAUNCHERS[0]);
        let rank = required_usize(lookup, launcher.rank)?;
        let world_size = required_usize(lookup, launcher.world_size)?;
        let local_rank = env_usize(lookup, launcher.local_rank)?.unwrap_or(rank);
        let local_world_size = env_usize(lookup, launcher.local_world_size)?.unwrap_or(world_size);
        let how_to_set = if launcher == LAUNCHERS[0] {
            String::new()
        } else {
            format!(
                " ({} gives ranks, not rank 0's address: pass it, e.g. `mpirun -x \
                 MASTER_ADDR=HOST -x MASTER_PORT=PORT` or `mpiexec -genv MASTER_ADDR HOST`)",
                launcher.name
            )
        };
        let addr = lookup("MASTER_ADDR").ok_or_else(|| CollectiveError::Env {
            name: "MASTER_ADDR",
            reason: format!("not set{how_to_set}"),
        })?;
        if addr.trim().is_empty() {
            return Err(CollectiveError::Env {
                name: "MASTER_ADDR",
                reason: "is empty; set it to rank 0's host name or address".into(),
            }
            .into());
        }
        let port = env_usize(lookup, "MASTER_PORT")?.ok_or_else(|| CollectiveError::Env {
            name: "MASTER_PORT",
            reason: format!("not set{how_to_set}"),
        })?;
        if port > 65535 {
            return Err(CollectiveError::Env {
                name: "MASTER_PORT",
                reason: format!("{port} is not a port number"),
            }
            .into());
        }
        let timeout = match lookup("HETERO_COLLECTIVE_TIMEOUT_S") {
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| CollectiveError::Env {
                    name: "HETERO_COLLECTIVE_TIMEOUT_S",
                    reason: format!("{v:?} is not a positive number of seconds"),
                })?,
            None => DEFAULT_TIMEOUT,
        };
        // Checked after every variable parsed, so a malformed one is named
        // first (the order `from_env` always reported in).
        if world_size == 0 {
            return Err(CollectiveError::Env {
                name: launcher.world_size,
                reason: "is 0; a job has at least one rank".into(),
            }
            .into());
        }
        if rank >= world_size {
            return Err(CollectiveError::Env {
                name: launcher.rank,
                reason: format!("{rank} is not below {} {world_size}", launcher.world_size),
            }
            .into());
        }
        let cfg = TcpConfig {
            rank,
            world_size,
            local_rank,
            local_world_size,
            master: format!("{addr}:{port}"),
            timeout,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        if self.world_size == 0 || self.rank >= self.world_size {
            return Err(CollectiveError::BadRank {
                rank: self.rank,
                size: self.world_size,
            }
            .into());
        }
        Ok(())
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CollectiveError {
    let context = context.into();
    move |source| CollectiveError::Io { context, source }
}

fn timed_out(what: &str, after: Duration) -> CollectiveError {
    CollectiveError::Timeout {
        what: what.to_string(),
        after,
    }
}

async fn write_frame(s: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    s.write_all(&(data.len() as u64).to_le_bytes()).await?;
    s.write_all(data).await
}

async fn read_frame(s: &mut TcpStream, peer: usize) -> Result<Vec<u8>> {
    let len = s
        .read_u64_le()
        .await
        .map_err(io(format!("reading from rank {peer}")))?;
    if len > 1 << 20 {
        return Err(CollectiveError::Protocol {
            peer,
            reason: format!("rendezvous frame of {len} bytes"),
        }
        .into());
    }
    let mut v = vec![0u8; len as usize];
    s.read_exact(&mut v)
        .await
        .map_err(io(format!("reading from rank {peer}")))?;
    Ok(v)
}

fn hello(rank: usize, world: usize, addr: &str) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&MAGIC.to_le_bytes());
    v.extend_from_slice(&(rank as u64).to_le_bytes());
    v.extend_from_slice(&(world as u64).to_le_bytes());
    v.extend_from_slice(addr.as_bytes());
    v
}

fn parse_hello(v: &[u8], peer: usize) -> Result<(usize, usize, String)> {
    let bad = |reason: &str| -> hetero_core::Error {
        CollectiveError::Protocol {
            peer,
            reason: reason.to_string(),
        }
        .into()
    };
    if v.len() < 20 || v[..4] != MAGIC.to_le_bytes() {
        return Err(bad("not a hetero-collectives hello"));
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&v[4..12]);
    let rank = u64::from_le_bytes(b) as usize;
    b.copy_from_slice(&v[12..20]);
    let world = u64::from_le_bytes(b) as usize;
    let addr = String::from_utf8(v[20..].to_vec()).map_err(|_| bad("address is not UTF-8"))?;
    Ok((rank, world, addr))
}

/// One rank's endpoint of a TCP full mesh. Dropping it lets each writer task
/// flush what is queued and then shut its socket down, which peers still
/// waiting on this rank see as a [`CollectiveError::PeerFailure`].
#[derive(Debug)]
pub struct TcpTransport {
    rank: usize,
    size: usize,
    writers: Vec<Option<mpsc::UnboundedSender<Vec<u8>>>>,
    inboxes: Inboxes,
    timeout: Duration,
    peers: Vec<Option<SocketAddr>>,
    /// Messages queued but not yet written, over all connections.
    pending: Arc<AtomicUsize>,
}

impl TcpTransport {
    /// Rendezvous as described in the module docs; rank 0 binds `cfg.master`.
    pub async fn connect(cfg: &TcpConfig) -> Result<Self> {
        cfg.validate()?;
        let listener = if cfg.rank == 0 {
            Some(TcpListener::bind(&cfg.master).await.map_err(io(format!(
                "rank 0 binding the rendezvous address {}",
                cfg.master
            )))?)
        } else {
            None
        };
        Self::connect_with(cfg, listener).await
    }

    /// Like [`TcpTransport::connect`], with rank 0's rendezvous listener
    /// already bound (tests bind port 0 and pass the real port to the others).
    pub async fn connect_with(cfg: &TcpConfig, master: Option<TcpListener>) -> Result<Self> {
        cfg.validate()?;
        let deadline = Instant::now() + cfg.timeout;
        let n = cfg.world_size;
        let mut streams: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
        if cfg.rank == 0 {
            let listener = master.ok_or_else(|| {
                hetero_core::Error::invalid("master", "rank 0 needs the rendezvous listener")
            })?;
            let mut table = vec![String::new(); n];
            for _ in 1..n {
                let (mut s, _) = timeout_at(deadline, listener.accept())
                    .await
                    .map_err(|_| {
                        timed_out(
                            "rank 0 waited for ranks to join the rendezvous",
                            cfg.timeout,
                        )
                    })?
                    .map_err(io("rank 0 accepting a rendezvous connection"))?;
                let msg = timeout_at(deadline, read_frame(&mut s, usize::MAX))
                    .await
                    .map_err(|_| timed_out("rank 0 waited for a hello", cfg.timeout))??;
                let (r, world, addr) = parse_hello(&msg, usize::MAX)?;
                if world != n {
                    return Err(CollectiveError::Mismatch {
                        field: "world size",
                        rank: 0,
                        peer: r,
                        mine: n.to_string(),
                        theirs: world.to_string(),
                    }
                    .into());
                }
                if r == 0 || r >= n || streams[r].is_some() {
                    return Err(CollectiveError::Protocol {
                        peer: r,
                        reason: format!("rank {r} joined twice or is out of range for {n} ranks"),
                    }
                    .into());
                }
                table[r] = addr;
                streams[r] = Some(s);
            }
            let table_bytes = serde_json::to_vec(&table)
                .map_err(|e| hetero_core::Error::invalid("address table", e.to_string()))?;
            for (r, s) in streams.iter_mut().enumerate() {
                if let Some(s) = s {
                    write_frame(s, &table_bytes)
                        .await
                        .map_err(io(format!("rank 0 sending the address table to rank {r}")))?;
                }
            }
        } else {
            let mut s = loop {
                match TcpStream::connect(&cfg.master).await {
                    Ok(s) => break s,
                    Err(e) if Instant::now() >= deadline => {
                        return Err(CollectiveError::Io {
                            context: format!(
                                "rank {} connecting to the master {} (gave up after {:?})",
                                cfg.rank, cfg.master, cfg.timeout
                            ),
                            source: e,
                        }
                        .into());
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            let ip = s
                .local_addr()
                .map(|a| a.ip())
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            let listener = TcpListener::bind(SocketAddr::new(ip, 0))
                .await
                .map_err(io(format!(
                    "rank {} binding its listener on {ip}",
                    cfg.rank
                )))?;
            let my_addr = listener
                .local_addr()
                .map_err(io("reading the listener address"))?;
            write_frame(&mut s, &hello(cfg.rank, n, &my_addr.to_string()))
                .await
                .map_err(io("sending hello to the master"))?;
            let table = timeout_at(deadline, read_frame(&mut s, 0))
                .await
                .map_err(|_| {
                    timed_out("waiting for the address table from rank 0", cfg.timeout)
                })??;
            let table: Vec<String> =
                serde_json::from_slice(&table).map_err(|e| CollectiveError::Protocol {
                    peer: 0,
                    reason: format!("address table: {e}"),
                })?;
            if table.len() != n {
                return Err(CollectiveError::Protocol {
                    peer: 0,
                    reason: format!("address table of {} ranks, expected {n}", table.len()),
                }
                .into());
            }
            streams[0] = Some(s);
            for (j, addr) in table.iter().enumerate().take(cfg.rank).skip(1) {
                let mut c = timeout_at(deadline, TcpStream::connect(addr))
                    .await
                    .map_err(|_| timed_out("connecting to a peer", cfg.timeout))?
                    .map_err(io(format!(
                        "rank {} connecting to rank {j} at {addr}",
                        cfg.rank
                    )))?;
                write_frame(&mut c, &hello(cfg.rank, n, ""))
                    .await
                    .map_err(io(format!("introducing to rank {j}")))?;
                streams[j] = Some(c);
            }
            for _ in cfg.rank + 1..n {
                let (mut c, _) = timeout_at(deadline, listener.accept())
                    .await
                    .map_err(|_| timed_out("waiting for higher ranks to connect", cfg.timeout))?
                    .map_err(io("accepting a peer"))?;
                let msg = timeout_at(deadline, read_frame(&mut c, usize::MAX))
                    .await
                    .map_err(|_| timed_out("waiting for a peer's hello", cfg.timeout))??;
                let (r, world, _) = parse_hello(&msg, usize::MAX)?;
                if world != n || r <= cfg.rank || r >= n || streams[r].is_some() {
                    return Err(CollectiveError::Protocol {
                        peer: r,
                        reason: format!("unexpected hello from rank {r} of {world}"),
                    }
                    .into());
                }
                streams[r] = Some(c);
            }
        }
        Ok(Self::start(cfg.rank, n, streams, cfg.timeout))
    }

    fn start(rank: usize, n: usize, streams: Vec<Option<TcpStream>>, timeout: Duration) -> Self {
        let mut writers = Vec::with_capacity(n);
        let pending = Arc::new(AtomicUsize::new(0));
        let mut receivers = Vec::with_capacity(n);
        let mut peers = Vec::with_capacity(n);
        for s in streams {
            let (in_tx, in_rx) = mpsc::unbounded_channel::<Delivery>();
            receivers.push(in_rx);
            let Some(s) = s else {
                writers.push(None);
                peers.push(None);
                continue;
            };
            let _ = s.set_nodelay(true);
            peers.push(s.peer_addr().ok());
            let (mut rd, mut wr) = s.into_split();
            let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
            writers.push(Some(out_tx));
            let pending_w = pending.clone();
            tokio::spawn(async move {
                while let Some(msg) = out_rx.recv().await {
                    let ok = async {
                        wr.write_all(&(msg.len() as u64).to_le_bytes()).await?;
                        wr.write_all(&msg).await
                    }
                    .await;
                    pending_w.fetch_sub(1, Ordering::AcqRel);
                    if ok.is_err() {
                        // Nothing more can be written: drop what is queued.
                        out_rx.close();
                        while out_rx.try_recv().is_ok() {
                            pending_w.fetch_sub(1, Ordering::AcqRel);
                        }
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                loop {
                    let len = match rd.read_u64_le().await {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = in_tx.send(Err(format!("connection closed: {e}")));
                            break;
                        }
                    };
                    if len > MAX_FRAME {
                        let _ = in_tx.send(Err(format!("frame length {len} is not plausible")));
                        break;
                    }
                    let mut v = vec![0u8; len as usize];
                    if let Err(e) = rd.read_exact(&mut v).await {
                        let _ = in_tx.send(Err(format!("connection closed mid-message: {e}")));
                        break;
                    }
                    if in_tx.send(Ok(v)).is_err() {
                        break;
                    }
                }
            });
        }
        TcpTransport {
            rank,
            size: n,
            writers,
            inboxes: Inboxes::new(rank, receivers),
            timeout,
            peers,
            pending,
        }
    }
}

#[async_trait]
impl Transport for TcpTransport {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    async fn send(&self, peer: usize, data: Vec<u8>) -> Result<()> {
        let tx =
            self.writers
                .get(peer)
                .and_then(Option::as_ref)
                .ok_or(CollectiveError::BadRank {
                    rank: peer,
                    size: self.size,
                })?;
        self.pending.fetch_add(1, Ordering::AcqRel);
        tx.send(data).map_err(|_| {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            CollectiveError::PeerFailure {
                rank: peer,
                reason: "its connection's writer stopped (write error)".into(),
            }
            .into()
        })
    }
    async fn recv(&self, peer: usize) -> Result<Vec<u8>> {
        self.inboxes.recv(peer, self.timeout).await
    }
    async fn flush(&self) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let what = "flushing queued messages to peers";
        wait_drained(&self.pending, deadline, self.timeout, what).await
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn describe(&self) -> String {
        "TCP full mesh".into()
    }
    fn link_kind(&self, peer: usize) -> LinkKind {
        match self.peers.get(peer).copied().flatten() {
            Some(a) if a.ip().is_loopback() => LinkKind::Loopback,
            Some(_) => LinkKind::Ethernet,
            None => LinkKind::Unknown,
        }
    }
}
