//! hetero-scheduler: memory- and throughput-aware batch allocation for LLM
//! inference on mixed devices (the scheduling half of HASC, Hong and Han).
//!
//! Devices decode in lock-step, so a step lasts as long as the slowest
//! device; a memory-blind uniform split leaves a large device idle or
//! overflows a small one. This crate:
//!
//! - describes the workload by its shape ([`ModelShape`]: presets `tiny`,
//!   `opt-125m`, `bloom-3b`) and what it costs in memory per batch;
//! - profiles each device for real ([`profile`]): the largest batch `B*`
//!   that allocates at a maximum length, and a fitted step-time curve;
//! - allocates a total batch with a policy ([`policy`]): `Uniform`, `Hasc`
//!   (the paper's throughput-share rule, capped by memory) and `Balanced`
//!   (ours: the least predicted step time, water-filling).
//!
//! What this crate must not do: depend on a backend. It drives devices only
//! through `hetero_core::DynDevice`.

pub mod continuous;
pub mod decode;
pub mod policy;
pub mod profile;
pub mod serve;
pub mod sync;
pub mod workload;

pub use decode::DecodeModel;
pub use policy::{
    Allocation, AllocationPolicy, Balanced, DeviceProfile, Hasc, StepFit, StepModel, Uniform,
};
pub use profile::{
    MemoryProfile, ProfileCache, allocate_weights, profile_buckets, profile_buckets_cached,
    profile_device, profile_device_cached, profile_memory,
};
pub use serve::{ServeReport, serve};
pub use workload::ModelShape;
