//! The `Placement` trait and the graph, cluster and plan types it speaks.
//!
//! A [`Graph`] is a DAG of operators (or layers) with a per-sample cost on each
//! device class; a [`Cluster`] is the devices a plan may use; a [`Plan`]
//! assigns each node to one device and reports the loads. Solvers (exact DP,
//! linearized DP, integer programming, baselines) live in `hetero-partition`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One operator or layer of a DNN graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Identifier from the input file (need not be dense).
    pub id: u64,
    #[serde(default)]
    pub name: Option<String>,
    /// Time per sample on a CPU device, seconds (or any consistent unit).
    pub cpu_time: f64,
    /// Time per sample on the reference accelerator; an accelerator class
    /// with a speed factor `s` runs it in `accelerator_time / s`.
    pub accelerator_time: f64,
    /// Accelerator memory the node needs (weights and activations), bytes.
    pub memory_bytes: u64,
    /// False if the node can only run on a CPU.
    pub accelerator_ok: bool,
    /// Nodes with the same colour class must share a device.
    #[serde(default)]
    pub color_class: Option<u64>,
    /// True for backward-pass nodes of a training graph.
    #[serde(default)]
    pub backward: bool,
}

/// A data dependency: `src`'s output is consumed by `dst` (node indices).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    pub src: usize,
    pub dst: usize,
    /// Time to move `src`'s output across a device boundary.
    pub transfer_time: f64,
    #[serde(default)]
    pub bytes: Option<u64>,
}

/// A DAG of [`Node`]s and [`Edge`]s (edges index into `nodes`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

impl Graph {
    /// Check edge endpoints, costs, and that the graph is acyclic. Errors
    /// name the offending node or edge.
    pub fn validate(&self) -> Result<()> {
        let n = self.nodes.len();
        for (i, node) in self.nodes.iter().enumerate() {
            for (what, v) in [
                ("cpu_time", node.cpu_time),
                ("accelerator_time", node.accelerator_time),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(Error::invalid(
                        format!("nodes[{i}].{what}"),
                        format!("must be a finite number >= 0, got {v}"),
                    ));
                }
            }
        }
        for (e, edge) in self.edges.iter().enumerate() {
            if edge.src >= n || edge.dst >= n {
                return Err(Error::invalid(
                    format!("edges[{e}]"),
                    format!(
                        "endpoint {} -> {} is not a node index (graph has {n} nodes)",
                        edge.src, edge.dst
                    ),
                ));
            }
            if !(edge.transfer_time.is_finite() && edge.transfer_time >= 0.0) {
                return Err(Error::invalid(
                    format!("edges[{e}].transfer_time"),
                    format!("must be a finite number >= 0, got {}", edge.transfer_time),
                ));
            }
        }
        self.topological_order().map(|_| ())
    }

    /// Node indices in a topological order (Kahn's algorithm, smallest index
    /// first among ready nodes, so the order is deterministic).
    pub fn topological_order(&self) -> Result<Vec<usize>> {
        let n = self.nodes.len();
        let mut indegree = vec![0usize; n];
        let mut succ = vec![Vec::new(); n];
        for e in &self.edges {
            if e.src >= n || e.dst >= n {
                return Err(Error::invalid("edges", "edge endpoint out of range"));
            }
            indegree[e.dst] += 1;
            succ[e.src].push(e.dst);
        }
        let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..n)
            .filter(|&i| indegree[i] == 0)
            .map(std::cmp::Reverse)
            .collect();
        let mut order = Vec::with_capacity(n);
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            order.push(i);
            for &j in &succ[i] {
                indegree[j] -= 1;
                if indegree[j] == 0 {
                    ready.push(std::cmp::Reverse(j));
                }
            }
        }
        if order.len() != n {
            let stuck = (0..n).find(|&i| indegree[i] > 0).unwrap_or(0);
            return Err(Error::invalid(
                "edges",
                format!("the graph has a cycle through node index {stuck}; placement needs a DAG"),
            ));
        }
        Ok(order)
    }
}

/// A class of identical accelerators in a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcceleratorClass {
    pub name: String,
    pub count: usize,
    pub memory_bytes: u64,
    /// Speed relative to the graph's `accelerator_time` (2.0 = twice as fast).
    pub speed_factor: f64,
}

/// Accelerators grouped into nodes, with a slower link between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TwoLevelInterconnect {
    /// Accelerators per node (the last node may hold fewer).
    pub accelerators_per_node: usize,
    /// Multiplier on an edge's transfer time when it crosses nodes.
    pub inter_node_cost_factor: f64,
}

impl TwoLevelInterconnect {
    /// The node of `slot`: accelerator `j` sits in node
    /// `j / accelerators_per_node`; CPUs belong to no node (the host is
    /// local to every node). `None` too for zero accelerators per node,
    /// which [`Cluster::validate`] rejects.
    pub fn node_of(&self, slot: Slot) -> Option<usize> {
        match slot {
            Slot::Accelerator(j) => j.checked_div(self.accelerators_per_node),
            Slot::Cpu(_) => None,
        }
    }
}

/// The devices a plan may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub accelerators: Vec<AcceleratorClass>,
    pub cpus: usize,
    #[serde(default)]
    pub interconnect: Option<TwoLevelInterconnect>,
}

impl Cluster {
    /// `k` identical accelerators with `memory_bytes` each, and `cpus` CPUs
    /// (the paper's setting).
    pub fn homogeneous(k: usize, memory_bytes: u64, cpus: usize) -> Self {
        Cluster {
            accelerators: vec![AcceleratorClass {
                name: "accelerator".into(),
                count: k,
                memory_bytes,
                speed_factor: 1.0,
            }],
            cpus,
            interconnect: None,
        }
    }

    /// Total accelerators over all classes.
    pub fn accelerator_count(&self) -> usize {
        self.accelerators.iter().map(|c| c.count).sum()
    }

    pub fn validate(&self) -> Result<()> {
        for (i, c) in self.accelerators.iter().enumerate() {
            if !(c.speed_factor.is_finite() && c.speed_factor > 0.0) {
                return Err(Error::invalid(
                    format!("accelerators[{i}].speed_factor"),
                    format!("must be a finite number > 0, got {}", c.speed_factor),
                ));
            }
        }
        if let Some(ic) = &self.interconnect {
            if ic.accelerators_per_node == 0 {
                return Err(Error::invalid(
                    "interconnect.accelerators_per_node",
                    "must be at least 1",
                ));
            }
            if !(ic.inter_node_cost_factor.is_finite() && ic.inter_node_cost_factor >= 1.0) {
                return Err(Error::invalid(
                    "interconnect.inter_node_cost_factor",
                    format!(
                        "must be a finite number >= 1, got {}",
                        ic.inter_node_cost_factor
                    ),
                ));
            }
        }
        if self.accelerator_count() + self.cpus == 0 {
            return Err(Error::invalid(
                "cluster",
                "has no devices; give at least one accelerator or CPU",
            ));
        }
        Ok(())
    }
}

/// A device of a plan: accelerator `index` (over all classes, in class order) or CPU `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    Accelerator(usize),
    Cpu(usize),
}

/// The load of one device of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotLoad {
    pub slot: Slot,
    /// Node indices placed here, ascending.
    pub nodes: Vec<usize>,
    /// Compute plus communication time per sample.
    pub load: f64,
    pub memory_bytes: u64,
}

/// An assignment of every node to a device, with the objective it reaches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// `assignment[i]`: the slot of node `i`.
    pub assignment: Vec<Slot>,
    pub loads: Vec<SlotLoad>,
    /// Time per sample under pipelining: the maximum load.
    pub objective: f64,
    /// True when the solver proved the objective optimal for its search space.
    pub optimal: bool,
    /// Which solver made the plan, for reports.
    pub solver: String,
}

/// A placement algorithm.
pub trait Placement {
    /// Assign every node of `graph` to a device of `cluster`. A graph that
    /// cannot be placed (memory, unsupported nodes) is an
    /// [`Error::InvalidInput`] that says which constraint fails.
    fn place(&self, graph: &Graph, cluster: &Cluster) -> Result<Plan>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64) -> Node {
        Node {
            id,
            name: None,
            cpu_time: 1.0,
            accelerator_time: 0.1,
            memory_bytes: 10,
            accelerator_ok: true,
            color_class: None,
            backward: false,
        }
    }

    fn edge(src: usize, dst: usize) -> Edge {
        Edge {
            src,
            dst,
            transfer_time: 0.5,
            bytes: None,
        }
    }

    #[test]
    fn topological_order_and_cycle_detection() {
        let mut g = Graph {
            nodes: (0..4).map(node).collect(),
            edges: vec![edge(2, 1), edge(0, 2), edge(1, 3)],
        };
        assert_eq!(g.topological_order().unwrap(), vec![0, 2, 1, 3]);
        g.validate().unwrap();
        g.edges.push(edge(3, 0));
        let err = g.validate().unwrap_err().to_string();
        assert!(err.contains("cycle"), "{err}");
        g.edges.push(edge(0, 9));
        let err = g.validate().unwrap_err().to_string();
        assert!(err.contains("edges[4]"), "{err}");
    }

    #[test]
    fn cluster_validation_names_fields() {
        let mut c = Cluster::homogeneous(2, 1 << 30, 1);
        c.validate().unwrap();
        assert_eq!(c.accelerator_count(), 2);
        c.accelerators[0].speed_factor = 0.0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("accelerators[0].speed_factor"), "{err}");
    }
}
