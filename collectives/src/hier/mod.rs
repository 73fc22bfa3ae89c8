//! Hierarchical all-reduce over a measured topology.
//!
//! Two schemes, as in MPICH's SMP all-reduce and Horovod's hierarchical
//! all-reduce:
//!
//! - **leader**: reduce to each domain's leader (intra, binomial tree), all-reduce
//!   among the leaders (inter), broadcast from the leader (intra);
//! - **sharded**: reduce-scatter inside each domain (intra ring), all-reduce of
//!   each shard among the ranks with the same local index (one inter group per
//!   shard, all at once), all-gather inside each domain. Needs domains of equal size.
//!
//! The [`HierPlan`] prices both and the flat algorithm with the alpha-beta
//! model, per message size, from the measured links: `intra` is the slowest
//! link inside any domain, `inter` the slowest between domains. The sharded
//! scheme's `L` concurrent inter-domain flows are assumed to share one
//! domain's external bandwidth (one NIC per node), so each gets `beta / L`.
//! With one domain (no split passes the topology's bandwidth-ratio test) the
//! plan collapses to flat. Operations other than all-reduce run flat.
//!
//! Both schemes are pipelined in segments (see `pipeline`); host slices
//! are reduced in place. [`Hierarchical::tune`] can replace the model's
//!
//! ## Files
//!
//! - this file: [`Scheme`] and the formatting both halves share;
//! - [`plan`]: [`HierPlan`], the cost model's choice of scheme per size
//!   from the measured links (what a rank will do, computed alike on every
//!   rank);
//! - [`exec`]: [`Hierarchical`], the communicators of a plan and the
//!   pipelined execution of the schemes (and [`Hierarchical::tune`]).

use serde::Serialize;

pub mod exec;
pub mod plan;

pub use exec::Hierarchical;
pub use plan::{DEFAULT_SEGMENT_BYTES, HierPlan, MAX_SEGMENTS, segment_count};

/// How an all-reduce is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    Flat,
    Leader,
    Sharded,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Flat => "flat",
            Scheme::Leader => "leader",
            Scheme::Sharded => "sharded",
        }
    }
}

/// Bytes for people: B, KiB, MiB or GiB with one decimal.
pub(crate) fn fmt_bytes(b: f64) -> String {
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1 << 20) as f64 {
        format!("{:.1} MiB", b / (1 << 20) as f64)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}
