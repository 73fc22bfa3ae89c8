//! Collectives for hetero: transports, flat algorithms, hierarchical all-reduce.
//!
//! See the crate README for the design, the cost model and measured numbers.

pub mod cost;
pub mod error;
pub mod flat;
pub mod hier;
pub mod inproc;
pub mod kernels;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod netns;
pub mod sense;
pub mod shaped;
#[cfg(target_os = "linux")]
pub mod shm;
pub mod tcp;
pub mod transport;

pub use cost::Algorithm;
pub use error::CollectiveError;
pub use flat::FlatCollective;
pub use hier::{HierPlan, Hierarchical, Scheme};
pub use inproc::InProcessTransport;
pub use shaped::ShapedTransport;
pub use tcp::{TcpConfig, TcpTransport};
pub use transport::{DEFAULT_TIMEOUT, SubTransport, Transport};
