//! Point-to-point transport underneath every algorithm.
//!
//! A [`Transport`] moves whole messages (byte vectors) between ranks. Messages
//! between one ordered pair of ranks arrive in the order they were sent.
//! `send` never waits for the receiver (it queues), so two ranks may send to
//! each other at the same time without deadlock; `recv` waits at most the
//! transport's timeout and reports a dead peer as [`CollectiveError::PeerFailure`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hetero_core::{LinkKind, Result};
use tokio::sync::{Mutex, mpsc};

use crate::error::CollectiveError;

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

/// What a reader side pushes: a message, or why the peer is gone.
pub(crate) type Delivery = std::result::Result<Vec<u8>, String>;

/// One queue of incoming messages per peer, shared by the transports.
#[derive(Debug)]
pub(crate) struct Inboxes {
    rank: usize,
    queues: Vec<Mutex<mpsc::UnboundedReceiver<Delivery>>>,
    /// Set once a peer's queue reported failure, so later calls fail fast.
    dead: Vec<std::sync::Mutex<Option<String>>>,
}

impl Inboxes {
    pub(crate) fn new(rank: usize, queues: Vec<mpsc::UnboundedReceiver<Delivery>>) -> Self {
        let dead = queues.iter().map(|_| std::sync::Mutex::new(None)).collect();
        Inboxes {
            rank,
            queues: queues.into_iter().map(Mutex::new).collect(),
            dead,
        }
    }

    pub(crate) async fn recv(&self, peer: usize, timeout: Duration) -> Result<Vec<u8>> {
        let size = self.queues.len();
        let queue = self
            .queues
            .get(peer)
            .ok_or(CollectiveError::BadRank { rank: peer, size })?;
        if peer == self.rank {
            return Err(CollectiveError::BadRank { rank: peer, size }.into());
        }
        if let Some(reason) = self.dead_reason(peer) {
            return Err(CollectiveError::PeerFailure { rank: peer, reason }.into());
        }
        let mut q = queue.lock().await;
        match tokio::time::timeout(timeout, q.recv()).await {
            Ok(Some(Ok(msg))) => Ok(msg),
            Ok(Some(Err(reason))) => {
                self.mark_dead(peer, &reason);
                Err(CollectiveError::PeerFailure { rank: peer, reason }.into())
            }
            Ok(None) => {
                let reason = "its endpoint closed".to_string();
                self.mark_dead(peer, &reason);
                Err(CollectiveError::PeerFailure { rank: peer, reason }.into())
            }
            Err(_) => Err(CollectiveError::Timeout {
                what: format!("rank {} waited for a message from rank {peer}", self.rank),
                after: timeout,
            }
            .into()),
        }
    }

    fn dead_reason(&self, peer: usize) -> Option<String> {
        self.dead
            .get(peer)
            .and_then(|m| m.lock().ok().and_then(|g| g.clone()))
    }

    fn mark_dead(&self, peer: usize, reason: &str) {
        if let Some(Ok(mut g)) = self.dead.get(peer).map(|m| m.lock()) {
            *g = Some(reason.to_string());
        }
    }
}

/// A transport restricted to a subset of another's ranks, renumbered
/// `0..members.len()` (the groups of a hierarchical collective).
#[derive(Debug, Clone)]
pub struct SubTransport {
    parent: Arc<dyn Transport>,
    members: Vec<usize>,
    rank: usize,
}

impl SubTransport {
    /// `members`: global ranks of the group, in group-rank order; must contain
    /// the parent's own rank.
    pub fn new(parent: Arc<dyn Transport>, members: Vec<usize>) -> Result<Self> {
        let me = parent.rank();
        let rank = members.iter().position(|&m| m == me).ok_or_else(|| {
            hetero_core::Error::invalid(
                "members",
                format!("rank {me} is not a member of the group {members:?}"),
            )
        })?;
        if let Some(&bad) = members.iter().find(|&&m| m >= parent.size()) {
            return Err(CollectiveError::BadRank {
                rank: bad,
                size: parent.size(),
            }
            .into());
        }
        Ok(SubTransport {
            parent,
            members,
            rank,
        })
    }

    fn global(&self, peer: usize) -> Result<usize> {
        self.members.get(peer).copied().ok_or_else(|| {
            CollectiveError::BadRank {
                rank: peer,
                size: self.members.len(),
            }
            .into()
        })
    }

    /// Global ranks of the group.
    pub fn members(&self) -> &[usize] {
        &self.members
    }
}

#[async_trait]
impl Transport for SubTransport {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.members.len()
    }
    async fn send(&self, peer: usize, data: Vec<u8>) -> Result<()> {
        let g = self.global(peer)?;
        self.parent.send(g, data).await
    }
    async fn recv(&self, peer: usize) -> Result<Vec<u8>> {
        let g = self.global(peer)?;
        self.parent.recv(g).await
    }
    async fn flush(&self) -> Result<()> {
        self.parent.flush().await
    }
    fn timeout(&self) -> Duration {
        self.parent.timeout()
    }
    fn describe(&self) -> String {
        self.parent.describe()
    }
    fn link_kind(&self, peer: usize) -> LinkKind {
        self.global(peer)
            .map_or(LinkKind::Unknown, |g| self.parent.link_kind(g))
    }
}
