//! Synchronization planning for data-parallel training (AutoSync, Zhang et
//! al., NeurIPS 2020): choose per variable how its gradient is synchronized,
//! predict which strategies are faster, search, and run them for real.
//!
//! A module of `hetero-scheduler` (as the design puts planning of
//! data-parallel synchronization here) rather than a crate: it shares the
//! scheduler's dependencies (collectives, tokio) and adds none of its own.
//!
//! - [`model`]: variables (name, shape, dtype, dense or sparse) and presets
//!   (BERT-large, VGG16, ResNet-50, NCF);
//! - [`strategy`]: the strategy space, its JSON form and validation, the
//!   baselines, a random sampler;
//! - [`exec`]: one training step per strategy on real ranks, verified
//!   against a naive reference;
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
