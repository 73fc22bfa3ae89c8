//! Per-peer queues of received messages, shared by the in-process and TCP
//! transports: their reader sides push into them, `recv` waits on them
//! with a timeout and remembers a peer that failed so later calls fail fast.

use std::time::Duration;

use hetero_core::Result;
use tokio::sync::{Mutex, mpsc};

use crate::error::CollectiveError;

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
