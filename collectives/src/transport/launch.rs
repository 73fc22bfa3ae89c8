//! The one constructor of transports: from a [`TransportKind`] and where the
//! ranks come from ([`Ranks`]: several ranks as tasks of this process, or
//! this process as one rank of a job started the way torchrun starts jobs,
//! `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT`, see [`TcpConfig::from_env`]).
//!
//! The binaries used to write this set-up each on their own; [`connect`]
//! (and [`connect_from_env`], which decides the ranks by the environment)
//! is it, once:
//!
//! | kind | [`Ranks::Local`]`(n)` | [`Ranks::Job`]`(cfg)` |
//! |---|---|---|
//! | in-process | `n` channel endpoints | an error (a job's ranks are processes) |
//! | TCP | `n` ranks over loopback (rank 0 binds 127.0.0.1, port 0) | the TCP rendezvous at `MASTER_ADDR:MASTER_PORT` |
//! | shared memory | as TCP, then rings between ranks of one host | as TCP, then rings (Linux) |
//! | MPI | MPI's world (`mpirun` decides the ranks) | the same |
//!
//! MPI gives a communicator with its own collectives and no point-to-point
//! transport ([`Endpoints::Mpi`]); it needs this crate's `mpi` feature and
//! is otherwise `Unsupported`, with what to build.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hetero_core::{Collective, Error, Result};

use super::inproc::InProcessTransport;
use super::tcp::{TcpConfig, TcpTransport};
use super::{DEFAULT_TIMEOUT, Transport};

/// How the ranks of a job reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// Every rank a task of this process; messages move through channels.
    InProcess,
    /// A TCP full mesh.
    Tcp,
    /// TCP, then shared-memory rings between the ranks of one host (same
    /// host name, boot id and namespaces; Linux), TCP to the others.
    SharedMemory,
    /// MPI's own collectives (`mpirun` / `srun` start the ranks).
    Mpi,
}

impl TransportKind {
    pub const ALL: [TransportKind; 4] = [
        TransportKind::InProcess,
        TransportKind::Tcp,
        TransportKind::SharedMemory,
        TransportKind::Mpi,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TransportKind::InProcess => "in-process",
            TransportKind::Tcp => "tcp",
            TransportKind::SharedMemory => "shared-memory",
            TransportKind::Mpi => "mpi",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which ranks this process runs.
#[derive(Debug, Clone)]
pub enum Ranks {
    /// This many ranks, all tasks of this process.
    Local(usize),
    /// This process is the one rank `cfg.rank` of a multi-process job.
    Job(TcpConfig),
}

impl Ranks {
    /// The ranks `kind` runs in this process, as the environment says: for
    /// TCP and shared memory, one rank of a job when `RANK` is set (the
    /// rest of torchrun's variables are then required and checked) or an
    /// MPI launcher's rank variable is ([`Launcher`](super::tcp::Launcher):
    /// `mpirun` starts the processes, TCP carries the messages), else
    /// `local` ranks over loopback; in-process always `local` ranks (it
    /// cannot span processes, so `RANK` does not concern it); MPI ignores
    /// both (its launcher decides).
    pub fn from_env(kind: TransportKind, local: usize) -> Result<Self> {
        Self::from_vars(kind, local, |name| std::env::var(name).ok())
    }

    /// Like [`Ranks::from_env`], with the variables from `lookup`.
    pub fn from_vars(
        kind: TransportKind,
        local: usize,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        match kind {
            TransportKind::Tcp | TransportKind::SharedMemory
                if super::tcp::Launcher::detect(&lookup).is_some() =>
            {
                Ok(Ranks::Job(TcpConfig::from_vars(lookup)?))
            }
            _ => Ok(Ranks::Local(local)),
        }
    }
}

/// What [`connect`] gives: the transports of this process's ranks, or
/// MPI's communicator.
#[derive(Debug)]
pub enum Endpoints {
    /// One transport per rank this process runs, index = rank for
    /// [`Ranks::Local`]; the one rank's transport for [`Ranks::Job`].
    Transports(Vec<Arc<dyn Transport>>),
    /// MPI's world: collectives of its own, no point-to-point transport.
    /// Call [`finalize_mpi`] after its last operation.
    Mpi(Box<dyn Collective>),
}

impl Endpoints {
    /// The transport of this process's one rank (a job's rank, or a local
    /// group of one).
    pub fn into_single(self) -> Result<Arc<dyn Transport>> {
        match self {
            Endpoints::Transports(mut ts) if ts.len() == 1 => ts.pop().ok_or_else(|| {
                Error::invalid("ranks", "the one transport of this rank went missing")
            }),
            Endpoints::Transports(ts) => Err(Error::invalid(
                "ranks",
                format!(
                    "{} ranks run in this process where one was expected",
                    ts.len()
                ),
            )),
            Endpoints::Mpi(_) => Err(Error::invalid(
                "transport",
                "MPI gives a communicator, not a point-to-point transport",
            )),
        }
    }
}

/// Connect the ranks `ranks` of this process with `kind`. `timeout`
/// replaces the receive timeout (and the limit of the rendezvous) when
/// given; otherwise a job's ranks keep theirs (`HETERO_COLLECTIVE_TIMEOUT_S`
/// or [`DEFAULT_TIMEOUT`]) and local ranks use [`DEFAULT_TIMEOUT`]. Shared
/// memory uses [`ShmConfig::default`](super::shm::ShmConfig) (the
/// `HETERO_SHM_DIR` and `HETERO_SHM_POLLS` variables).
pub async fn connect(
    kind: TransportKind,
    ranks: Ranks,
    timeout: Option<Duration>,
) -> Result<Endpoints> {
    if kind == TransportKind::Mpi {
        return mpi_world();
    }
    let transports = match ranks {
        Ranks::Local(0) => {
            return Err(Error::invalid(
                "ranks",
                "0 local ranks; a group has at least one",
            ));
        }
        Ranks::Local(n) if kind == TransportKind::InProcess => {
            InProcessTransport::group_with_timeout(n, timeout.unwrap_or(DEFAULT_TIMEOUT))
                .into_iter()
                .map(|t| Arc::new(t) as Arc<dyn Transport>)
                .collect()
        }
        Ranks::Local(n) => loopback(kind, n, timeout.unwrap_or(DEFAULT_TIMEOUT)).await?,
        Ranks::Job(_) if kind == TransportKind::InProcess => {
            return Err(Error::invalid(
                "transport",
                "in-process ranks all live in this process; one rank of a multi-process \
                 job (RANK set) needs the TCP or shared-memory transport",
            ));
        }
        Ranks::Job(cfg) => {
            let cfg = match timeout {
                Some(t) => cfg.with_timeout(t),
                None => cfg,
            };
            vec![upgrade(TcpTransport::connect(&cfg).await?, kind).await?]
        }
    };
    Ok(Endpoints::Transports(transports))
}

/// [`connect`] with the ranks [`Ranks::from_env`] finds: `local` ranks of
/// this process unless torchrun's or an MPI launcher's variables name one
/// rank of a job.
pub async fn connect_from_env(
    kind: TransportKind,
    local: usize,
    timeout: Option<Duration>,
) -> Result<Endpoints> {
    connect(kind, Ranks::from_env(kind, local)?, timeout).await
}

/// Finalize MPI if this process started it (nothing otherwise, and
/// nothing without the `mpi` feature). MPI cannot start again afterwards.
pub fn finalize_mpi() -> Result<()> {
    #[cfg(feature = "mpi")]
    {
        crate::mpi::MpiCollective::finalize()
    }
    #[cfg(not(feature = "mpi"))]
    {
        Ok(())
    }
}

#[cfg(feature = "mpi")]
fn mpi_world() -> Result<Endpoints> {
    Ok(Endpoints::Mpi(
        Box::new(crate::mpi::MpiCollective::world()?),
    ))
}

#[cfg(not(feature = "mpi"))]
fn mpi_world() -> Result<Endpoints> {
    Err(Error::unsupported_in(
        "MPI",
        "hetero-collectives was built without its `mpi` feature (build with \
         --features mpi, for the binaries hetero-examples' `mpi` feature, and run under \
         mpirun); use the in-process, TCP or shared-memory transport",
    ))
}

/// `n` ranks of this process over loopback TCP (upgraded for shared
/// memory): rank 0's rendezvous listener is bound here, on port 0, and
/// handed to it, so no port is chosen in advance.
async fn loopback(
    kind: TransportKind,
    n: usize,
    timeout: Duration,
) -> Result<Vec<Arc<dyn Transport>>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::io("binding 127.0.0.1:0", e))?;
    let master = listener
        .local_addr()
        .map_err(|e| Error::io("listener address", e))?
        .to_string();
    let mut listener = Some(listener);
    let mut handles = Vec::new();
    for r in 0..n {
        let cfg = TcpConfig::new(r, n, master.clone()).with_timeout(timeout);
        let l = if r == 0 { listener.take() } else { None };
        // Every rank at once: the rendezvous needs all of them.
        handles.push(tokio::spawn(async move {
            upgrade(TcpTransport::connect_with(&cfg, l).await?, kind).await
        }));
    }
    let mut transports = Vec::new();
    for h in handles {
        let t = h
            .await
            .map_err(|e| Error::invalid("rank task", e.to_string()))??;
        transports.push(t);
    }
    Ok(transports)
}

/// The TCP transport as is, or upgraded with shared memory.
async fn upgrade(tcp: TcpTransport, kind: TransportKind) -> Result<Arc<dyn Transport>> {
    match kind {
        #[cfg(target_os = "linux")]
        TransportKind::SharedMemory => {
            let cfg = super::shm::ShmConfig::default();
            Ok(Arc::new(
                super::shm::ShmTransport::connect(tcp, &cfg).await?,
            ))
        }
        #[cfg(not(target_os = "linux"))]
        TransportKind::SharedMemory => Err(Error::unsupported_in(
            "the shared-memory transport",
            "the shared-memory transport needs Linux (shared mappings with FIFO doorbells); \
             use the TCP transport",
        )),
        _ => Ok(Arc::new(tcp)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A lookup over `vars` (name=value pairs).
    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    const JOB: [(&str, &str); 4] = [
        ("RANK", "2"),
        ("WORLD_SIZE", "4"),
        ("MASTER_ADDR", "10.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];

    fn job_with(
        change: &[(&'static str, Option<&'static str>)],
    ) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<(&str, &str)> = JOB.to_vec();
        for &(name, value) in change {
            v.retain(|(k, _)| *k != name);
            if let Some(value) = value {
                v.push((name, value));
            }
        }
        v
    }

    /// The error `TcpConfig::from_vars` gives for these variables.
    fn env_error(pairs: &[(&str, &str)]) -> String {
        TcpConfig::from_vars(vars(pairs))
            .expect_err("invalid environment")
            .to_string()
    }

    #[test]
    fn torchrun_variables_are_read_with_defaults() {
        let cfg = TcpConfig::from_vars(vars(&JOB)).expect("valid environment");
        assert_eq!(
            (
                cfg.rank,
                cfg.world_size,
                cfg.local_rank,
                cfg.local_world_size
            ),
            (2, 4, 2, 4),
            "LOCAL_RANK and LOCAL_WORLD_SIZE default to RANK and WORLD_SIZE"
        );
        assert_eq!(cfg.master, "10.0.0.1:29500");
        assert_eq!(cfg.timeout, DEFAULT_TIMEOUT);
        let cfg = TcpConfig::from_vars(vars(&job_with(&[
            ("LOCAL_RANK", Some("0")),
            ("LOCAL_WORLD_SIZE", Some(" 2 ")),
            ("HETERO_COLLECTIVE_TIMEOUT_S", Some("2.5")),
        ])))
        .expect("valid environment");
        assert_eq!((cfg.local_rank, cfg.local_world_size), (0, 2));
        assert_eq!(cfg.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn mpi_launchers_variables_stand_in_for_torchruns() {
        let master = [("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")];
        let with_master = |pairs: &[(&'static str, &'static str)]| {
            let mut v = pairs.to_vec();
            v.extend(master);
            v
        };
        let ompi = with_master(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "3"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ]);
        let cfg = TcpConfig::from_vars(vars(&ompi)).expect("Open MPI's variables");
        assert_eq!(
            (
                cfg.rank,
                cfg.world_size,
                cfg.local_rank,
                cfg.local_world_size
            ),
            (1, 3, 1, 2)
        );
        assert!(matches!(
            Ranks::from_vars(TransportKind::Tcp, 4, vars(&ompi)),
            Ok(Ranks::Job(c)) if c.rank == 1
        ));
        let mpich = with_master(&[("PMI_RANK", "0"), ("PMI_SIZE", "2")]);
        let cfg = TcpConfig::from_vars(vars(&mpich)).expect("MPICH's variables");
        assert_eq!((cfg.rank, cfg.world_size, cfg.local_rank), (0, 2, 0));
        // torchrun's RANK wins over a launcher's when both are set.
        let mut both = ompi.clone();
        both.extend([("RANK", "2"), ("WORLD_SIZE", "4")]);
        let cfg = TcpConfig::from_vars(vars(&both)).expect("both");
        assert_eq!((cfg.rank, cfg.world_size), (2, 4));
        // Errors name the launcher's variable, and how to pass rank 0's
        // address through it.
        let e = env_error(&with_master(&[
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "3"),
        ]));
        assert!(
            e.contains("OMPI_COMM_WORLD_RANK") && e.contains("not below"),
            "{e}"
        );
        let e = env_error(&[("PMI_RANK", "0"), ("PMI_SIZE", "2")]);
        assert!(e.contains("MASTER_ADDR") && e.contains("mpirun -x"), "{e}");
        let e = env_error(&[("PMI_RANK", "0")]);
        assert!(e.contains("PMI_SIZE") && e.contains("not set"), "{e}");
    }

    #[test]
    fn a_missing_variable_is_named() {
        for name in ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"] {
            let e = env_error(&job_with(&[(name, None)]));
            assert!(e.contains(name) && e.contains("not set"), "{name}: {e}");
        }
    }

    #[test]
    fn a_bad_variable_is_named_with_its_value() {
        let cases: [(&'static str, &'static str, &str); 8] = [
            ("RANK", "two", "\"two\" is not a non-negative integer"),
            ("RANK", "-1", "\"-1\" is not a non-negative integer"),
            ("WORLD_SIZE", "0", "a job has at least one rank"),
            ("RANK", "4", "4 is not below WORLD_SIZE 4"),
            (
                "MASTER_PORT",
                "http",
                "\"http\" is not a non-negative integer",
            ),
            ("MASTER_PORT", "70000", "70000 is not a port number"),
            ("MASTER_ADDR", " ", "is empty"),
            (
                "LOCAL_RANK",
                "first",
                "\"first\" is not a non-negative integer",
            ),
        ];
        for (name, value, why) in cases {
            let e = env_error(&job_with(&[(name, Some(value))]));
            assert!(e.contains(name) && e.contains(why), "{name}={value}: {e}");
        }
        for bad in ["0", "-3", "soon", "inf"] {
            let e = env_error(&job_with(&[("HETERO_COLLECTIVE_TIMEOUT_S", Some(bad))]));
            assert!(
                e.contains("HETERO_COLLECTIVE_TIMEOUT_S")
                    && e.contains("not a positive number of seconds"),
                "{bad}: {e}"
            );
        }
        let e = env_error(&job_with(&[("LOCAL_WORLD_SIZE", Some("many"))]));
        assert!(e.contains("LOCAL_WORLD_SIZE"), "{e}");
    }

    #[test]
    fn the_environment_decides_the_ranks_of_the_tcp_kinds_only() {
        for kind in [TransportKind::Tcp, TransportKind::SharedMemory] {
            match Ranks::from_vars(kind, 3, vars(&JOB)).expect("valid environment") {
                Ranks::Job(cfg) => assert_eq!((cfg.rank, cfg.world_size), (2, 4)),
                Ranks::Local(n) => panic!("{kind}: {n} local ranks despite RANK"),
            }
            assert!(matches!(
                Ranks::from_vars(kind, 3, vars(&[])).expect("no job"),
                Ranks::Local(3)
            ));
            // RANK set and the rest missing: an error, not local ranks.
            let e = Ranks::from_vars(kind, 3, vars(&[("RANK", "0")]))
                .expect_err("WORLD_SIZE missing")
                .to_string();
            assert!(e.contains("WORLD_SIZE"), "{e}");
        }
        for kind in [TransportKind::InProcess, TransportKind::Mpi] {
            let bad = [("RANK", "garbage")];
            assert!(matches!(
                Ranks::from_vars(kind, 3, vars(&bad)).expect("RANK does not concern it"),
                Ranks::Local(3)
            ));
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    }

    /// Every rank sends its rank to the next and checks what the previous sent.
    async fn ring_check(ts: Vec<Arc<dyn Transport>>) {
        let n = ts.len();
        let handles: Vec<_> = ts
            .into_iter()
            .map(|t| {
                tokio::spawn(async move {
                    let r = t.rank();
                    t.send((r + 1) % n, vec![r as u8]).await?;
                    let got = t.recv((r + n - 1) % n).await?;
                    t.flush().await?;
                    Ok::<_, Error>((r, got))
                })
            })
            .collect();
        for (k, h) in handles.into_iter().enumerate() {
            let (r, got) = h.await.expect("rank task").expect("ring exchange");
            assert_eq!(r, k, "transports come in rank order");
            assert_eq!(got, vec![((r + n - 1) % n) as u8]);
        }
    }

    #[test]
    fn local_ranks_connect_for_every_point_to_point_kind() {
        rt().block_on(async {
            let mut kinds = vec![TransportKind::InProcess, TransportKind::Tcp];
            if cfg!(target_os = "linux") {
                kinds.push(TransportKind::SharedMemory);
            }
            for kind in kinds {
                let timeout = Duration::from_secs(20);
                let Endpoints::Transports(ts) = connect(kind, Ranks::Local(3), Some(timeout))
                    .await
                    .unwrap_or_else(|e| panic!("{kind}: {e}"))
                else {
                    panic!("{kind}: not transports");
                };
                assert_eq!(ts.len(), 3, "{kind}");
                assert!(ts.iter().all(|t| t.size() == 3 && t.timeout() == timeout));
                ring_check(ts).await;
            }
        });
    }

    #[test]
    fn impossible_requests_are_errors() {
        rt().block_on(async {
            let e = connect(TransportKind::Tcp, Ranks::Local(0), None)
                .await
                .expect_err("no ranks");
            assert!(e.to_string().contains("0 local ranks"), "{e}");
            let cfg = TcpConfig::from_vars(vars(&JOB)).expect("valid environment");
            let e = connect(TransportKind::InProcess, Ranks::Job(cfg), None)
                .await
                .expect_err("in-process cannot join a job");
            assert!(e.to_string().contains("TCP or shared-memory"), "{e}");
            let one = connect(TransportKind::InProcess, Ranks::Local(1), None)
                .await
                .expect("one rank");
            assert_eq!(one.into_single().expect("one transport").size(), 1);
            let two = connect(TransportKind::InProcess, Ranks::Local(2), None)
                .await
                .expect("two ranks");
            assert!(two.into_single().is_err(), "two ranks are not one");
        });
    }

    #[cfg(not(feature = "mpi"))]
    #[test]
    fn mpi_without_the_feature_says_what_to_build() {
        let e = rt()
            .block_on(connect(TransportKind::Mpi, Ranks::Local(1), None))
            .expect_err("no MPI in this build");
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("`mpi` feature"), "{e}");
    }
}
