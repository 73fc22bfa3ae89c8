//! A transport over a subset of another transport's ranks (the groups of
//! a hierarchical collective).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hetero_core::{LinkKind, Result};

use crate::error::CollectiveError;
use crate::transport::Transport;

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
