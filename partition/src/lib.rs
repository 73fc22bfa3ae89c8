//! Optimal placement of DNN graphs on accelerators and CPUs for pipelined
//! throughput, after Tarnawski et al., "Efficient Algorithms for Device
//! Placement of DNN Graph Operators" (NeurIPS 2020).
//!
//! - [`paper`]: the paper's JSON input and output formats;
//! - [`eval`]: the objective of any split, independent of the solvers;
//! - [`problem`]: the contracted problem the solvers share (colour classes,
//!   training twins, strongly connected parts fused, trivial nodes merged);
//! - [`dp`]: the exact DP over ideals, the linearized DP, and a greedy split;
//! - [`ip`]: integer programs for contiguous and non-contiguous splits (microlp, or Cbc with the `cbc` feature);
//! - [`pipedream`]: PipeDream's stage DP over one order, as a baseline;
//! - [`chain`]: the exact DP for a chain of layers on devices with their own
//!   measured per-layer times and memory (a real model split into a
//!   pipeline), with llama.cpp's memory-proportional and the equal split
//!   as baselines;
//! - [`brute`]: brute force over every contiguous split of a tiny graph (tests).
//!
//! Every solver implements [`hetero_core::Placement`]; the objective it reports
//! is the evaluator's on the split it returns.

pub mod brute;
pub mod chain;
pub mod dp;
pub mod eval;
pub mod ip;
pub mod paper;
pub mod pipedream;
pub mod problem;
pub(crate) mod satellite;
pub(crate) mod spine;
pub mod topology;

pub use chain::{
    ChainPlan, ChainProblem, ChainStage, best_chain_pipelines, best_chain_pipelines_sized,
    best_chain_split, best_chain_split_in_order, best_chain_split_stages, equal_split,
    evaluate_chain, memory_proportional_split,
};
pub use dp::{DpEvent, EventFn, ExactDp, Greedy, LinearDp, ProgressFn, SolveStats};
pub use eval::{Evaluation, evaluate};
pub use ip::{IntegerProgram, IpSolver, IpStats};
pub use paper::{PaperGraph, PaperSplit};
pub use pipedream::PipeDream;
pub use topology::cluster_from_topology;

/// Everything that can go wrong while reading, checking or placing a graph.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PartitionError {
    /// The input is not valid JSON of the expected shape.
    #[error("malformed {what}: {reason}")]
    Malformed { what: String, reason: String },
    /// An edge names a node id that no node has.
    #[error("edge {edge} ({src} -> {dst}) names node id {missing}, which is not in the graph")]
    UnknownNode {
        edge: usize,
        src: i64,
        dst: i64,
        missing: i64,
    },
    /// Two nodes share one id.
    #[error("node id {0} appears twice")]
    DuplicateNode(i64),
    /// The graph has a directed cycle.
    #[error("the graph has a cycle (through node id {0}); placement needs a DAG")]
    Cycle(u64),
    /// The out-edges of one node carry different transfer costs.
    #[error(
        "node id {node} has out-edges with different costs ({a} and {b}); every out-edge of a node carries the cost of moving its one output"
    )]
    UnequalOutEdgeCosts { node: u64, a: f64, b: f64 },
    /// An edge goes from a backward node to a forward node.
    #[error(
        "edge from backward node id {src} to forward node id {dst}; training graphs must not have those"
    )]
    BackwardToForwardEdge { src: u64, dst: u64 },
    /// A number that must be finite and non-negative is not.
    #[error("{field} must be a finite number >= 0, got {value}")]
    BadNumber { field: String, value: f64 },
    /// No split satisfies the memory and accelerator-support constraints.
    #[error("no split fits: {0}")]
    Infeasible(String),
    /// The exact DP would enumerate more ideals than its limit allows.
    #[error(
        "the graph has more than {limit} ideals after contraction: raise the exact DP's limit \
         (ExactDp::ideal_limit; hetero-place --ideal-limit N, memory grows with it), or use the \
         linearized DP (--algo dp-linear) or the contiguous IP (--algo ip)"
    )]
    TooManyIdeals { limit: usize },
    /// A split does not assign the graph's nodes properly.
    #[error("invalid split: {0}")]
    BadSplit(String),
    /// The solver does not model what the cluster asks for.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Reading a file failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<PartitionError> for hetero_core::Error {
    fn from(e: PartitionError) -> Self {
        match e {
            PartitionError::Io { context, source } => hetero_core::Error::io(context, source),
            // A model the solver does not have is a missing capability, not bad input.
            PartitionError::Unsupported(what) => {
                hetero_core::Error::unsupported_in("hetero-partition", what)
            }
            other => {
                let field = match &other {
                    PartitionError::Malformed { .. } => "graph JSON",
                    PartitionError::UnknownNode { .. }
                    | PartitionError::DuplicateNode(_)
                    | PartitionError::Cycle(_)
                    | PartitionError::UnequalOutEdgeCosts { .. }
                    | PartitionError::BackwardToForwardEdge { .. }
                    | PartitionError::BadNumber { .. } => "graph",
                    PartitionError::Infeasible(_) => "placement",
                    PartitionError::TooManyIdeals { .. } => "graph size",
                    PartitionError::BadSplit(_) => "split",
                    _ => "request",
                };
                hetero_core::Error::invalid(field, other.to_string())
            }
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = PartitionError> = std::result::Result<T, E>;
