//! hetero-core: the vocabulary every hetero crate speaks.
//!
//! - [`Device`] (static dispatch) and [`DynDevice`] (object-safe, so one plan
//!   can hold devices of several backends), with [`DeviceId`], [`DeviceInfo`],
//!   [`DType`], [`ReduceOp`];
//! - [`Link`] and its fitted alpha-beta [`LinkModel`];
//! - [`Topology`]: devices, measured links, and bandwidth-ratio [`Domain`]s;
//! - [`Collective`] and [`Placement`], implemented by `hetero-collectives`
//!   and `hetero-partition`;
//! - [`Error`], the error type everything converts into;
//! - [`rng::SplitMix64`], the one seeded generator, and [`system`], what the
//!   OS says about this machine's memory.
//!
//! What this crate must not do: contain backend code, depend on any backend,
//! or pull in heavy dependencies. Backends implement these traits; core only
//! defines them and the backend-neutral helpers (host kernels, probes, the
//! device test suite behind the `testsuite` feature).

pub mod append_attend;
pub mod collective;
pub mod counting_device;
pub mod device;
pub mod dtype;
pub mod dyn_device;
pub mod error;
pub mod host_kernels;
pub mod id;
pub mod link;
pub mod placement;
pub mod probe;
pub mod quant;
pub mod rng;
pub mod system;
#[cfg(feature = "testsuite")]
pub mod testsuite;
pub mod topology;
pub mod transformer;

pub use append_attend::{AppendAttendSeq, AppendAttendSpec};
pub use collective::{Collective, Tensor, TensorMut, chunk_range};
pub use counting_device::CountingDevice;
pub use device::{
    Activation, AttentionSpec, Capabilities, Device, DeviceBuffer, DeviceInfo, DeviceKind,
    GemmSpec, MemoryUsage,
};
pub use dtype::{DType, Element, HostSlice, HostSliceMut, ReduceOp};
pub use dyn_device::{BoxedBuffer, DynBuffer, DynDevice, DynDeviceExt, SharedDevice};
pub use error::{Component, Error, Result};
pub use id::{Backend, DeviceId};
pub use link::{Link, LinkFit, LinkKind, LinkModel, LinkProbe};
pub use placement::{Cluster, Graph, Placement, Plan};
pub use quant::{QuantMatmulSpec, QuantType};
pub use topology::{Domain, LeaderPolicy, Topology, TopologyDevice};
pub use transformer::{CausalAttentionSpec, RopeLayout, RopeSpec};

/// Re-exported so backends and [`with_dtype!`] name the same 16-bit float types.
pub use half;
