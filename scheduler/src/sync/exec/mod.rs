//! Runs data-parallel training steps under a strategy on real ranks.
//!
//! Every rank holds real f32 buffers of every variable (weights and
//! gradients). A step:
//!
//! 1. **Gradients** are computed on the host from a fixed formula of (rank,
//!    step, element): small integers in `-4..=4`, dense for dense variables,
//!    non-zero only in `rows_touched` rows for sparse ones. This stands in for
//!    the backward pass (no model is evaluated; its compute time is not
//!    emulated); integer values make every sum exact in f32 *and* f16, so
//!    the result can be checked bit for bit whatever the summation order.
//! 2. **Synchronization** as the [`SyncPlan`] says: fused all-reduces
//!    (through `hetero_collectives::Hierarchical`, so flat, leader and
//!    sharded schemes are the library's own), then one parameter-server
//!    exchange for all shards (local aggregation, push, server update,
//!    pull, local broadcast), then one all-gather of all sparse rows.
//! 3. **Update** `w -= lr * (sum / ranks)` (plain SGD), computed the same way
//!    on every path, so all replicas end bit-identical.
//!
//! Verification resets the weights, runs one step and compares every
//! element on every rank with a naive reference computed locally from the
//! same formula (no communication involved).
//!
//! Rank 0 drives: it sends each rank a [`Command`] (the model, the strategy,
//! how many steps) over the transport, times the steps between barriers,
//! and collects every rank's verification.

//!
//! One concern per file:
//!
//! - `codec.rs`: the byte layout of payloads in messages and records;
//! - `replica.rs`: one rank's replica and the step it runs;
//! - `driver.rs`: the protocol between rank 0 ([`Driver`]) and the other
//!   ranks ([`serve_worker`]).

mod codec;
mod driver;
mod replica;

pub use driver::{Command, Driver, Measurement, serve_worker};
pub use replica::LEARNING_RATE;
