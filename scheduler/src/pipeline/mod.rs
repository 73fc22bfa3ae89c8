//! One model split by layers over unequal devices: a pipeline whose
//! stages are placed by the exact chain DP on measured costs.
//!
//! - [`profile`]: each device's per-layer cost profile of a real model
//!   (decode time per layer, embedding and head, the time to hand a
//!   batch's hidden state in or out, bytes per layer in the device's own
//!   weight formats, KV bytes), measured on one- and two-layer parts of
//!   the model, cached as JSON;
//! - [`plan`]: the profiles become a `hetero_partition::ChainProblem` and
//!   the DP chooses which consecutive layers each device holds, against
//!   the equal split, llama.cpp's memory-proportional split and the best
//!   single device, with the reasons for every device left out;
//! - [`contention`]: devices that share the host's processor (host
//!   devices, software adapters) slowed when a plan wants more of its
//!   threads than it has;
//! - [`choose`]: `--split auto|replicate|layers:N1,N2,...` into stages,
//!   with the profile cache;
//! - [`ranks`]: the same split over processes, one stage per rank of a
//!   torchrun-style job, hidden states over the collectives' transports;
//! - [`run`]: a plan loaded as a split [`hetero_models::LlamaModel`] and
//!   its decode throughput measured (groups of sequences circulating
//!   through the stages), to set against the prediction.
//!
//! What this module must not do: hold device code. Models run through
//! `hetero_models`, devices through `hetero_core::DynDevice`.

pub mod choose;
pub mod contention;
pub mod plan;
pub mod profile;
pub mod ranks;
pub mod run;

pub use choose::{
    SplitSpec, cached_profiles, choose_pipelines, choose_stages, free_bytes, plan_devices,
};
pub use plan::{PlanOptions, SplitChoice, SplitReport, plan_split, plan_split_in_order};
pub use profile::{LayerProfile, ProfileOptions, Timing, profile_layers};
pub use ranks::{
    DeviceOffer, RankRole, StageHello, StageRank, TransportPeer, device_offers, join_stage_ranks,
    model_identity, rank_device_layers, rank_layers, serve_stage_rank,
};
pub use run::{
    DecodeMeasurement, Retimed, StageWork, load_plan, measure_decode, measure_side_by_side,
    retime_stages, stage_specs,
};
