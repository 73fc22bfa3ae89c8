//! Errors of this crate, converted into [`hetero_core::Error`] at the boundary.

use std::time::Duration;

use hetero_core::Error;

/// Everything a collective or transport can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    /// A peer closed its connection, reset it, or its endpoint was dropped.
    #[error("peer rank {rank} failed: {reason}")]
    PeerFailure { rank: usize, reason: String },
    /// A peer did not answer in time.
    #[error("timed out after {after:?} while {what}")]
    Timeout { what: String, after: Duration },
    /// Ranks called the same collective with different arguments.
    #[error("ranks disagree on {field}: rank {rank} has {mine}, peer rank {peer} has {theirs}")]
    Mismatch {
        field: &'static str,
        rank: usize,
        peer: usize,
        mine: String,
        theirs: String,
    },
    /// A peer sent bytes that are not a frame of this protocol.
    #[error("malformed message from rank {peer}: {reason}")]
    Protocol { peer: usize, reason: String },
    /// A rank index outside the communicator.
    #[error("rank {rank} is out of range for a communicator of {size} ranks")]
    BadRank { rank: usize, size: usize },
    /// An environment variable needed for start-up is missing or unusable.
    #[error("environment variable {name}: {reason}")]
    Env { name: &'static str, reason: String },
    /// An I/O error with what we were doing.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<CollectiveError> for Error {
    fn from(e: CollectiveError) -> Self {
        match e {
            CollectiveError::PeerFailure { rank, reason } => Error::PeerFailure { rank, reason },
            CollectiveError::Timeout { what, after } => Error::Timeout { what, after },
            CollectiveError::Io { context, source } => Error::io(context, source),
            e @ CollectiveError::Mismatch { field, .. } => Error::invalid(field, e.to_string()),
            e @ CollectiveError::Protocol { .. } => Error::invalid("message", e.to_string()),
            e @ CollectiveError::BadRank { .. } => Error::invalid("rank", e.to_string()),
            e @ CollectiveError::Env { name, .. } => Error::invalid(name, e.to_string()),
        }
    }
}
