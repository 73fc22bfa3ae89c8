//! In-process transport: every rank is a task (or thread) of one process and
//! messages are vectors moved through channels, never copied or serialised.

use std::time::Duration;

use async_trait::async_trait;
use hetero_core::{LinkKind, Result};
use tokio::sync::mpsc;

use crate::error::CollectiveError;
use crate::transport::{DEFAULT_TIMEOUT, Delivery, Inboxes, Transport};

/// One rank's endpoint of an in-process group. Dropping it closes its
/// channels, which its peers see as [`CollectiveError::PeerFailure`].
#[derive(Debug)]
pub struct InProcessTransport {
    rank: usize,
    senders: Vec<Option<mpsc::UnboundedSender<Delivery>>>,
    inboxes: Inboxes,
    timeout: Duration,
}

impl InProcessTransport {
    /// Endpoints for `n` ranks, index = rank, with the default receive timeout.
    pub fn group(n: usize) -> Vec<InProcessTransport> {
        Self::group_with_timeout(n, DEFAULT_TIMEOUT)
    }

    /// Endpoints for `n` ranks whose receives wait at most `timeout`.
    pub fn group_with_timeout(n: usize, timeout: Duration) -> Vec<InProcessTransport> {
        // senders[src][dst], receivers[dst][src]
        let mut senders: Vec<Vec<Option<mpsc::UnboundedSender<Delivery>>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        let mut receivers: Vec<Vec<mpsc::UnboundedReceiver<Delivery>>> =
            (0..n).map(|_| Vec::with_capacity(n)).collect();
        for (dst, row) in receivers.iter_mut().enumerate() {
            for (src, sends) in senders.iter_mut().enumerate() {
                let (tx, rx) = mpsc::unbounded_channel();
                if src != dst {
                    sends[dst] = Some(tx);
                }
                row.push(rx);
            }
        }
        senders
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(rank, (senders, rx))| InProcessTransport {
                rank,
                senders,
                inboxes: Inboxes::new(rank, rx),
                timeout,
            })
            .collect()
    }
}

#[async_trait]
impl Transport for InProcessTransport {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.senders.len()
    }
    async fn send(&self, peer: usize, data: Vec<u8>) -> Result<()> {
        let size = self.senders.len();
        let tx = self
            .senders
            .get(peer)
            .and_then(Option::as_ref)
            .ok_or(CollectiveError::BadRank { rank: peer, size })?;
        tx.send(Ok(data)).map_err(|_| {
            CollectiveError::PeerFailure {
                rank: peer,
                reason: "its endpoint was dropped".into(),
            }
            .into()
        })
    }
    async fn recv(&self, peer: usize) -> Result<Vec<u8>> {
        self.inboxes.recv(peer, self.timeout).await
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn describe(&self) -> String {
        "in-process channels (messages moved, not copied)".into()
    }
    fn link_kind(&self, _peer: usize) -> LinkKind {
        LinkKind::SharedMemory
    }
}
