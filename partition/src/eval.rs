//! The objective of any split, computed from the graph and the assignment
//! alone (no solver state), so that solvers can be checked against it.
//!
//! - an accelerator's load is the time of its nodes (`accelerator_time /
//!   speed_factor`) plus, once per node, the transfer cost of every node
//!   whose output crosses the boundary of its set (an output leaving the set,
//!   or an input coming into it);
//! - a CPU's load is the `cpu_time` of its nodes (no communication term);
//! - the objective is the maximum load (time per sample under pipelining).

use hetero_core::placement::{Cluster, Graph, Plan, Slot, SlotLoad};

use crate::problem::{Indexed, Kind, kinds};
use crate::{PartitionError, Result};

/// A scored split.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Loads of every device of the cluster (empty ones too) and the objective.
    pub plan: Plan,
    /// Accelerators whose nodes need more memory than they have. A split with
    /// any is infeasible; it is still scored (hand-made splits may overflow).
    pub memory_violations: Vec<Slot>,
}

impl Evaluation {
    /// True when every accelerator's nodes fit in its memory.
    pub fn fits(&self) -> bool {
        self.memory_violations.is_empty()
    }
}

/// Score `assignment` (the slot of each node index) on `cluster`.
///
/// Errors: an assignment of the wrong length, a slot the cluster does not
/// have, a colour class split over two devices, a node that cannot run on an
/// accelerator placed on one. Memory overflow is reported in the result.
pub fn evaluate(graph: &Graph, cluster: &Cluster, assignment: &[Slot]) -> Result<Evaluation> {
    if cluster.interconnect.is_some() {
        return Err(PartitionError::Unsupported(
            "the two-level interconnect is not modelled yet; leave `interconnect` unset".into(),
        ));
    }
    let ix = Indexed::new(graph)?;
    let kinds = kinds(cluster)?;
    evaluate_indexed(&ix, &kinds, assignment)
}

pub(crate) fn evaluate_indexed(
    ix: &Indexed<'_>,
    kinds: &[Kind],
    assignment: &[Slot],
) -> Result<Evaluation> {
    let g = ix.graph;
    let n = g.nodes.len();
    if assignment.len() != n {
        return Err(PartitionError::BadSplit(format!(
            "{} slots for {n} nodes",
            assignment.len()
        )));
    }
    // every device of the cluster, in kind order
    let mut slots: Vec<(Slot, usize)> = Vec::new();
    for (t, k) in kinds.iter().enumerate() {
        for j in 0..k.count {
            slots.push((k.slot(j), t));
        }
    }
    slots.sort_unstable();
    let pos = |s: Slot| slots.binary_search_by(|(x, _)| x.cmp(&s)).ok();
    let mut dev = vec![0usize; n];
    for (i, &s) in assignment.iter().enumerate() {
        let p = pos(s).ok_or_else(|| {
            PartitionError::BadSplit(format!(
                "node id {} is placed on {s:?}, which the cluster does not have",
                g.nodes[i].id
            ))
        })?;
        if matches!(s, Slot::Accelerator(_)) && !g.nodes[i].accelerator_ok {
            return Err(PartitionError::BadSplit(format!(
                "node id {} cannot run on an accelerator but is placed on {s:?}",
                g.nodes[i].id
            )));
        }
        dev[i] = p;
    }
    let mut color_dev = std::collections::HashMap::new();
    for (i, node) in g.nodes.iter().enumerate() {
        if let Some(c) = node.color_class {
            let d = *color_dev.entry(c).or_insert(dev[i]);
            if d != dev[i] {
                return Err(PartitionError::BadSplit(format!(
                    "colour class {c} is split between {:?} and {:?}",
                    slots[d].0, slots[dev[i]].0
                )));
            }
        }
    }
    let m = slots.len();
    let mut compute = vec![0.0f64; m];
    let mut comm = vec![0.0f64; m];
    let mut memory = vec![0u64; m];
    let mut nodes: Vec<Vec<usize>> = vec![Vec::new(); m];
    for (i, node) in g.nodes.iter().enumerate() {
        let d = dev[i];
        let kind = &kinds[slots[d].1];
        compute[d] += if kind.is_cpu {
            node.cpu_time
        } else {
            node.accelerator_time / kind.speed
        };
        memory[d] = memory[d].saturating_add(node.memory_bytes);
        nodes[d].push(i);
    }
    let mut receivers: Vec<usize> = Vec::new();
    for u in 0..n {
        receivers.clear();
        for &v in ix.succ.row(u) {
            if dev[v] != dev[u] && !receivers.contains(&dev[v]) {
                receivers.push(dev[v]);
            }
        }
        if receivers.is_empty() {
            continue;
        }
        let c = ix.out_cost[u];
        for &d in receivers.iter().chain(std::iter::once(&dev[u])) {
            if !kinds[slots[d].1].is_cpu {
                comm[d] += c;
            }
        }
    }
    let mut loads = Vec::with_capacity(m);
    let mut violations = Vec::new();
    let mut objective = 0.0f64;
    for (d, &(slot, t)) in slots.iter().enumerate() {
        let load = compute[d] + comm[d];
        objective = objective.max(load);
        if !kinds[t].is_cpu && memory[d] > kinds[t].memory {
            violations.push(slot);
        }
        loads.push(SlotLoad {
            slot,
            nodes: std::mem::take(&mut nodes[d]),
            load,
            memory_bytes: memory[d],
        });
    }
    Ok(Evaluation {
        plan: Plan {
            assignment: assignment.to_vec(),
            loads,
            objective,
            optimal: false,
            solver: "evaluator".into(),
        },
        memory_violations: violations,
    })
}
