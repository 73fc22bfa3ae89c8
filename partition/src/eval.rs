//! The objective of any split, computed from the graph and the assignment
//! alone (no solver state), so that solvers can be checked against it.
//!
//! - an accelerator's load is the time of its nodes (`accelerator_time /
//!   speed_factor`) plus, once per node, the transfer cost of every node
//!   whose output crosses the boundary of its set (an output leaving the set,
//!   or an input coming into it);
//! - a CPU's load is the `cpu_time` of its nodes (no communication term);
//! - the objective is the maximum load (time per sample under pipelining);
//! - with a two-level interconnect (accelerator `j` sits in node
//!   `j / accelerators_per_node`), a transfer between accelerators of two
//!   different nodes costs `inter_node_cost_factor` times the edge's cost:
//!   the receiver pays the scaled cost of that input, the sender pays its
//!   output's cost once, scaled if any receiver is in another node.
//!   Transfers to or from a CPU are not scaled (the host is local to every
//!   node; CPUs pay no communication anyway).

use hetero_core::placement::{Cluster, Graph, Plan, Slot, SlotLoad, TwoLevelInterconnect};

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
    let interconnect = checked_interconnect(cluster)?;
    let ix = Indexed::new(graph)?;
    let kinds = kinds(cluster)?;
    evaluate_with(&ix, &kinds, interconnect, assignment)
}

/// The cluster's two-level interconnect, if any, after checking its numbers.
pub(crate) fn checked_interconnect(cluster: &Cluster) -> Result<Option<&TwoLevelInterconnect>> {
    let Some(ic) = cluster.interconnect.as_ref() else {
        return Ok(None);
    };
    if ic.accelerators_per_node == 0 {
        return Err(PartitionError::Malformed {
            what: "cluster interconnect".into(),
            reason: "accelerators_per_node must be at least 1".into(),
        });
    }
    let factor = ic.inter_node_cost_factor;
    if !(factor.is_finite() && factor >= 0.0) {
        return Err(PartitionError::BadNumber {
            field: "inter_node_cost_factor".into(),
            value: factor,
        });
    }
    Ok(Some(ic))
}

pub(crate) fn evaluate_indexed(
    ix: &Indexed<'_>,
    kinds: &[Kind],
    assignment: &[Slot],
) -> Result<Evaluation> {
    evaluate_with(ix, kinds, None, assignment)
}

pub(crate) fn evaluate_with(
    ix: &Indexed<'_>,
    kinds: &[Kind],
    interconnect: Option<&TwoLevelInterconnect>,
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
        // accelerators a and b sit in different nodes of a two-level interconnect
        let cross_node = |a: usize, b: usize| {
            interconnect.is_some_and(
                |ic| match (ic.node_of(slots[a].0), ic.node_of(slots[b].0)) {
                    (Some(x), Some(y)) => x != y,
                    _ => false,
                },
            )
        };
        let factor = interconnect.map_or(1.0, |ic| ic.inter_node_cost_factor);
        let mut sender_crosses = false;
        for &d in &receivers {
            let crosses = cross_node(dev[u], d);
            sender_crosses |= crosses;
            if !kinds[slots[d].1].is_cpu {
                comm[d] += if crosses { c * factor } else { c };
            }
        }
        if !kinds[slots[dev[u]].1].is_cpu {
            comm[dev[u]] += if sender_crosses { c * factor } else { c };
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

#[cfg(test)]
mod tests {
    use super::*;
    use hetero_core::placement::{AcceleratorClass, Edge, Node};

    fn node(id: u64, time: f64) -> Node {
        Node {
            id,
            name: None,
            cpu_time: time,
            accelerator_time: time,
            memory_bytes: 0,
            accelerator_ok: true,
            color_class: None,
            backward: false,
        }
    }

    /// a -> b, a -> c with cost 1 on the edge out of a; a, b on accelerators
    /// 0 and 1 (node 0 when two accelerators per node), c on accelerator 2
    /// (node 1).
    #[test]
    fn two_level_interconnect_scales_cross_node_transfers() {
        let graph = Graph {
            nodes: vec![node(0, 10.0), node(1, 20.0), node(2, 30.0)],
            edges: [1, 2]
                .into_iter()
                .map(|dst| Edge {
                    src: 0,
                    dst,
                    transfer_time: 1.0,
                    bytes: None,
                })
                .collect(),
        };
        let mut cluster = Cluster {
            accelerators: vec![AcceleratorClass {
                name: "a".into(),
                count: 3,
                memory_bytes: 1,
                speed_factor: 1.0,
            }],
            cpus: 0,
            interconnect: None,
        };
        let split = [0, 1, 2].map(Slot::Accelerator);
        let loads = |cluster: &Cluster| -> Vec<f64> {
            let e = evaluate(&graph, cluster, &split).expect("a valid split");
            e.plan.loads.iter().map(|l| l.load).collect()
        };
        assert_eq!(loads(&cluster), vec![11.0, 21.0, 31.0]);
        cluster.interconnect = Some(TwoLevelInterconnect {
            accelerators_per_node: 2,
            inter_node_cost_factor: 4.0,
        });
        // the sender pays 4 (one receiver in another node), b pays 1, c pays 4
        assert_eq!(loads(&cluster), vec![14.0, 21.0, 34.0]);
        cluster.interconnect = Some(TwoLevelInterconnect {
            accelerators_per_node: 0,
            inter_node_cost_factor: 4.0,
        });
        assert!(matches!(
            evaluate(&graph, &cluster, &split),
            Err(PartitionError::Malformed { .. })
        ));
    }
}
