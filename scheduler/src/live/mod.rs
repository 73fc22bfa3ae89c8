//! Live continuous batching: requests arrive at any time, each joins a
//! device's running batch at its next round and leaves it when done. This
//! is the engine behind `hetero-serve --http`; the offline
//! [`continuous`](crate::continuous) module plans a batch known up front.
//!
//! - **Slots from the policy.** Each device runs at most `slots[g]`
//!   sequences at once: the batches of an [`Allocation`](crate::Allocation)
//!   made by a policy (HASC, Balanced) from the devices' measured
//!   profiles. A waiting request goes to a device with a free slot and
//!   free KV memory whose occupancy (running / slots) is the lowest, so
//!   devices fill in the proportions the policy chose.
//! - **KV memory per token.** A device's KV budget is counted in cache
//!   positions (`kv_tokens[g]`, from its memory profile: `B*` sequences of
//!   the profiled length). A request reserves the positions it can use,
//!   `min(prompt + max_tokens, context)`, not a maximal sequence, and its
//!   cache is allocated at that length when it is admitted and freed when
//!   it leaves. Nothing is paged: a request's positions are reserved whole
//!   at admission, so a running request can never run out of KV memory
//!   half-way (which paging would have to handle by preemption).
//! - **Chunked prefill.** Every round is one `forward_batch` call: one
//!   token for each decoding sequence, plus at most `prefill_chunk` prompt
//!   tokens of the sequences being prefilled, so a long prompt delays the
//!   running sequences' next token by one bounded chunk at most.
//! - **Split models.** A model split into a pipeline runs its rounds as
//!   batches on a standing line ([`LlamaModel::with_line`]): up to one
//!   batch per stage in flight, each at most its share of the running
//!   requests, those that waited longest first; a request's cache travels
//!   with its batch. Every stage then works while the others' batches are
//!   sampled, instead of the pipeline filling and draining every round.
//!
//! [`LlamaModel::with_line`]: hetero_models::LlamaModel::with_line
//! - **Prefix caching.** A finished request's cache stays on the device,
//!   keyed by the tokens it was fed; a request whose prompt begins with
//!   them copies those positions and prefills only the rest (see
//!   `prefix.rs`). Cached caches are evicted, least recently used first,
//!   whenever running requests need the room.
//! - **Streams.** Each request gets a channel of [`Event`]s: text pieces as
//!   they become final, then one `Done` (or `Failed`). A request whose
//!   receiver is dropped (the client went away) is removed at the next
//!   round and its slot and KV positions freed.
//! - **Ranks.** Devices of other processes join as devices of rank 0's
//!   engine ([`accept_ranks`], [`Engine::start_with_ranks`]); each such
//!   rank runs an engine of its own ([`serve_rank`]). See `remote.rs`.
//! - **Backpressure and shutdown.** The wait queue is bounded
//!   ([`Rejected::QueueFull`]); [`Engine::close`] refuses new requests and
//!   lets the queued and running ones finish; [`Engine::cancel`] ends them
//!   now, each with a `Failed` event saying so. No request is dropped
//!   without an event or answered twice: every admitted request ends with
//!   exactly one `Done` or `Failed`.

mod engine;
mod metrics;
mod prefix;
mod remote;
mod setup;

pub use engine::{Engine, Event, LiveConfig, LiveDevice, LiveRequest, Rejected, Usage};
pub use metrics::{Metrics, Outcome};
pub use remote::{FromRank, Hello, RemoteRank, ToRank, accept_ranks, serve_rank};
pub use setup::{
    LivePlan, LiveSetup, PlannedDevice, start, start_loaded, start_pipelines, start_split,
};
