//! hetero-scheduler: how work is divided over mixed devices. Two
//! independent subsystems, which share no types and import nothing from
//! each other:
//!
//! # Inference batching (HASC, Hong and Han)
//!
//! Devices decode in lock-step, so a step lasts as long as the slowest
//! device; a memory-blind uniform split leaves a large device idle or
//! overflows a small one. The top-level modules:
//!
//! - [`workload`]: the model by its shape ([`ModelShape`]: presets `tiny`,
//!   `opt-125m`, `bloom-3b`, each naming its [`PositionScheme`]) and what
//!   it costs in memory per batch;
//! - [`decode`]: a real greedy decode step of that model on any device
//!   (learned positions only: `bloom-3b`'s ALiBi is unsupported, and its
//!   shape runs only as an explicit synthetic stand-in);
//! - [`profile`]: each device profiled for real, the largest batch `B*`
//!   that allocates at a maximum length and a fitted step-time curve, with
//!   a JSON cache;
//! - [`policy`]: splitting a total batch with a [`Policy`] (`Uniform`,
//!   `Hasc`: the paper's throughput-share rule capped by memory,
//!   `Balanced`: ours, the least predicted step time by water-filling),
//!   parsed by name before any device is profiled, and the check that an
//!   [`Allocation`] fits;
//! - [`serve`]: one fixed batch decoded across devices in lock-step;
//! - [`real_model`]: the same profiling and lock-step serving for a real
//!   checkpoint (a `hetero_models::LlamaModel` per device, real prompts);
//! - [`continuous`]: continuous batching of a request queue over KV-cache
//!   slots, one rank per device, and [`synthetic_requests`];
//! - [`exchange`]: the profile exchange that lets ranks of a
//!   multi-process job compute the same allocation;
//! - [`pipeline`]: one model split by layers over unequal devices, the
//!   split chosen by the exact chain DP (`hetero-partition`) on measured
//!   per-layer profiles, and its decode throughput measured;
//! - [`live`]: live continuous batching of real requests arriving at any
//!   time (per-device workers, a bounded queue, per-token KV reservation,
//!   chunked prefill, per-request event streams, metrics): the engine of
//!   `hetero-serve --http` (`hetero-server`).
//!
//! # Data-parallel synchronization planning (AutoSync, Zhang et al.)
//!
//! [`sync`]: per-variable gradient synchronization strategies (parameter
//! servers, all-reduce, all-gather; partitioning, fusion, compression), a
//! simulator to rank them, a search, and an executor that runs them on
//! real ranks and verifies the result. Its own module docs describe it.
//!
//! What this crate must not do: depend on a backend. It drives devices only
//! through `hetero_core::DynDevice`, and ranks through `hetero-collectives`.

pub mod continuous;
pub mod decode;
pub mod exchange;
pub mod live;
pub mod pipeline;
pub mod policy;
pub mod profile;
pub mod real_model;
pub mod serve;
pub mod sync;
pub mod workload;

pub use continuous::{Request, synthetic_requests};
pub use decode::DecodeModel;
pub use exchange::{decode_profiles, encode_profile, exchange_profiles};
pub use policy::{
    Allocation, AllocationPolicy, Balanced, DeviceProfile, Hasc, Policy, StepFit, StepModel,
    Uniform,
};
pub use profile::{
    MemoryProfile, ProfileCache, allocate_weights, profile_buckets, profile_buckets_cached,
    profile_device, profile_device_cached, profile_memory,
};
pub use serve::{ServeReport, serve};
pub use workload::{ModelShape, PositionScheme};
