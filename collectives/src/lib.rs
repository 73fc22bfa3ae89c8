//! Collectives for hetero: transports, flat algorithms, hierarchical all-reduce.
//!
//! See the crate README for the design, the cost model and measured numbers.
//!
//! Module map (one concern per file):
//!
//! - [`transport`]: the `Transport` trait and every transport (in-process,
//!   TCP, shared memory, shaped), with [`transport::connect`], the one
//!   constructor from a [`TransportKind`] and torchrun's variables;
//! - [`flat`]: flat algorithms (ring, tree, recursive doubling,
//!   halving-doubling) over one transport; [`cost`]: their alpha-beta costs;
//! - [`hier`]: hierarchical all-reduce, planned ([`hier::plan`]) and run
//!   ([`hier::exec`]);
//! - [`exchange`]: [`all_gather_bytes`], every rank's bytes to every rank;
//! - [`sense`]: topology sensing at start-up;
//! - [`framing`]: the header every collective message carries;
//!   [`staging`]: aligned host memory and tensor copies; [`combine`]:
//!   reductions on raw bytes;
//! - [`mpi`] (feature `mpi`): MPI's own collectives as a `Collective`;
//! - [`netns`]: an emulated cluster of network namespaces (root);
//! - [`error`]: this crate's errors.

pub mod combine;
pub mod cost;
pub mod error;
pub mod exchange;
pub mod flat;
pub mod framing;
pub mod hier;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod netns;
pub mod sense;
pub mod staging;
pub mod transport;

pub use cost::Algorithm;
pub use error::CollectiveError;
pub use exchange::all_gather_bytes;
pub use flat::FlatCollective;
pub use hier::{HierPlan, Hierarchical, Scheme};
pub use transport::{
    DEFAULT_TIMEOUT, Endpoints, InProcessTransport, Ranks, ShapedTransport, SubTransport,
    TcpConfig, TcpTransport, Transport, TransportKind,
};
