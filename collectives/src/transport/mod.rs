//! Point-to-point transports underneath every algorithm.
//!
//! A [`Transport`] moves whole messages (byte vectors) between ranks. Messages
//! between one ordered pair of ranks arrive in the order they were sent.
//! `send` never waits for the receiver (it queues), so two ranks may send to
//! each other at the same time without deadlock; `recv` waits at most the
//! transport's timeout and reports a dead peer as [`CollectiveError::PeerFailure`].
//!
//! One file per concern:
//!
//! - this file: the [`Transport`] trait, the default timeout, what every
//!   transport shares (flushing, the host name);
//! - [`inproc`]: ranks that are tasks of one process (channels);
//! - [`tcp`]: a TCP full mesh started the way torchrun starts jobs;
//! - [`shm`]: shared-memory rings between the processes of one host, TCP to
//!   the others (Linux);
//! - [`shaped`]: emulated slow links between groups of in-process ranks;
//! - [`sub`]: a group of another transport's ranks ([`SubTransport`]);
//! - [`launch`]: the one constructor the binaries use, from a
//!   [`TransportKind`] and torchrun's environment variables;
//! - `inbox`: the per-peer receive queues the in-process and TCP
//!   transports share.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use hetero_core::{LinkKind, Result};

use crate::error::CollectiveError;

mod inbox;
pub mod inproc;
pub mod launch;
pub mod shaped;
#[cfg(target_os = "linux")]
pub mod shm;
pub mod sub;
pub mod tcp;

pub(crate) use inbox::{Delivery, Inboxes};
pub use inproc::InProcessTransport;
pub use launch::{Endpoints, Ranks, TransportKind, connect, connect_from_env, finalize_mpi};
pub use shaped::ShapedTransport;
pub use sub::SubTransport;
pub use tcp::{LAUNCHERS, Launcher, TcpConfig, TcpTransport};

/// Default time a receive waits for a peer before giving up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Ordered, reliable point-to-point messages between the ranks of a group.
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Queue `data` for `peer`. Returns once it is queued, not delivered.
    async fn send(&self, peer: usize, data: Vec<u8>) -> Result<()>;
    /// The next message from `peer`, waiting at most [`Transport::timeout`].
    async fn recv(&self, peer: usize) -> Result<Vec<u8>>;
    /// Wait until every message queued by `send` has been handed to the
    /// medium (call before a process exits, so its last messages are not
    /// lost). In-process sends are delivered at once.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
    /// How long a receive waits before [`CollectiveError::Timeout`].
    fn timeout(&self) -> Duration;
    /// Short name of the medium ("in-process channels", "TCP full mesh").
    fn describe(&self) -> String;
    /// What kind of link reaches `peer` (for the measured topology).
    fn link_kind(&self, _peer: usize) -> LinkKind {
        LinkKind::Unknown
    }
}

/// Wait until `pending` (messages queued and not yet written) drops to
/// zero, polling every millisecond; `Timeout` at `deadline`, reported as
/// `timeout` (`what` says what was being flushed).
pub(crate) async fn wait_drained(
    pending: &std::sync::atomic::AtomicUsize,
    deadline: tokio::time::Instant,
    timeout: Duration,
    what: &str,
) -> Result<()> {
    while pending.load(std::sync::atomic::Ordering::Acquire) > 0 {
        if tokio::time::Instant::now() >= deadline {
            return Err(CollectiveError::Timeout {
                what: what.to_string(),
                after: timeout,
            }
            .into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// This machine's host name (for device names, and part of the key that
/// tells which ranks can share memory).
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
