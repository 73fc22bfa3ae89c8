//! Synchronization planning for data-parallel training (AutoSync, Zhang et
//! al., NeurIPS 2020): choose per variable how its gradient is synchronized,
//! predict which strategies are faster, search, and run them for real.
//!
//! A subsystem of its own beside the crate's inference batching: nothing
//! here imports from the batching modules, nor they from here (the only
//! thing shared is the crate's dependencies: `hetero-core`,
//! `hetero-collectives`, tokio, serde). It stays a module tree of
//! `hetero-scheduler` rather than a crate because the design puts the
//! planning of data-parallel synchronization in the scheduler, and a crate
//! would save no dependency (both halves need exactly these) while adding
//! a workspace member and renaming the public paths `hetero_scheduler::sync::*`.
//! Because the boundary is kept, moving this directory into a crate later
//! is a rename.
//!
//! - [`model`]: variables (name, shape, dtype, dense or sparse) and presets
//!   (BERT-large, VGG16, ResNet-50, NCF);
//! - [`strategy`]: the strategy space, its JSON form and validation
//!   (compiling a [`Strategy`] into a [`strategy::SyncPlan`]), the
//!   baselines, a random sampler;
//! - [`exec`]: one training step per strategy on real ranks, verified
//!   against a naive reference (wire codec, replica and driver protocol in
//!   files of their own);
//! - [`cluster`]: rank layout, link parameters, in-process ranks over
//!   emulated node links;
//! - [`sim`]: analytic and learned simulators;
//! - [`search`]: the simulator-guided search.

pub mod cluster;
pub mod exec;
pub mod model;
pub mod search;
pub mod sim;
pub mod strategy;

pub use cluster::{ClusterModel, ClusterSpec, InProcessCluster, LinkSource};
pub use exec::{Driver, Measurement};
pub use model::{ModelSpec, Variable};
pub use search::{SearchConfig, SearchReport, search};
pub use strategy::{Layout, Strategy, Synchronizer};
