//! A PipeDream-style baseline (Narayanan et al., SOSP 2019): split one
//! topological order of the (contracted) graph into at most `k`
//! consecutive stages, one per accelerator, by PipeDream's dynamic program
//! without replication:
//!
//! `A[j][m] = min over i < j of max(A[i][m-1], C(i), T(i..j))`
//!
//! where `T(i..j)` is the stage's compute time and `C(i)` the time of the
//! activations crossing the cut at `i`, counted as a pipeline stage of its
//! own (PipeDream's model), not added to the devices' loads as the paper's
//! model does. Stages must fit the accelerator's memory; units that cannot
//! run on an accelerator go to the first CPU. Stages take the accelerators
//! in their order. With a two-level interconnect, a cut where the next
//! stage's accelerator sits in another node than the previous stage's costs
//! `factor` times (PipeDream prices each level of a hierarchical topology
//! with its own bandwidth); a stage left empty makes that approximate, which
//! is fine for a baseline. The split is then scored by the evaluator, like
//! any other.

use std::time::Instant;

use hetero_core::placement::{Cluster, Graph, Plan, Slot};

use crate::dp::{SolveStats, prepare_any_interconnect};
use crate::eval::evaluate_with;
use crate::{PartitionError, Result};

/// The PipeDream-style split (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct PipeDream;

impl PipeDream {
    pub fn solve(&self, graph: &Graph, cluster: &Cluster) -> Result<(Plan, SolveStats)> {
        let start = Instant::now();
        let p = prepare_any_interconnect(graph, cluster)?;
        let u = &p.units;
        let n = u.len();
        let (cpu, accs) = p.first_cpu_and_accelerators();
        // Stage members: accelerator-capable units in order.
        let order: Vec<usize> = (0..n).filter(|&x| u.accelerator_ok[x]).collect();
        let len = order.len();
        // Cut cost at position i (between order[..i] and order[i..]): every
        // node of a unit before the cut with a successor unit after it.
        let pos_of: Vec<Option<usize>> = {
            let mut v = vec![None; n];
            for (i, &x) in order.iter().enumerate() {
                v[x] = Some(i);
            }
            v
        };
        let mut cut = vec![0.0f64; len + 1];
        for (node, &c) in p.ix.out_cost.iter().enumerate() {
            let Some(a) = pos_of[u.unit_of[node]] else {
                continue;
            };
            let last =
                p.ix.succ
                    .row(node)
                    .iter()
                    .filter_map(|&s| pos_of[u.unit_of[s]])
                    .max();
            if let Some(b) = last {
                // Crosses every cut strictly after a and at or before b.
                for x in &mut cut[a + 1..=b] {
                    *x += c;
                }
            }
        }
        let stages = accs.len().min(len.max(1));
        let inf = f64::INFINITY;
        // a[m][j]: best bottleneck for order[..j] on the first m stages.
        let mut a = vec![vec![inf; len + 1]; stages + 1];
        let mut back = vec![vec![0usize; len + 1]; stages + 1];
        a[0][0] = 0.0;
        let node_of = |slot: Slot| p.interconnect.as_ref().and_then(|ic| ic.node_of(slot));
        for m in 1..=stages {
            let (slot, speed, cap) = accs[m - 1];
            // the cut before this stage crosses nodes
            let cut_factor = match (&p.interconnect, m) {
                (Some(ic), 2..) if node_of(slot) != node_of(accs[m - 2].0) => {
                    ic.inter_node_cost_factor
                }
                _ => 1.0,
            };
            for j in 0..=len {
                // An empty stage keeps the previous split.
                if a[m - 1][j] < a[m][j] {
                    a[m][j] = a[m - 1][j];
                    back[m][j] = j;
                }
                let (mut time, mut mem) = (0.0f64, 0u64);
                for i in (0..j).rev() {
                    time += u.accelerator_time[order[i]] / speed;
                    mem = mem.saturating_add(u.memory[order[i]]);
                    if mem > cap {
                        break;
                    }
                    let v = a[m - 1][i].max(cut[i] * cut_factor).max(time);
                    if v < a[m][j] {
                        a[m][j] = v;
                        back[m][j] = i;
                    }
                }
            }
        }
        if len > 0 && (stages == 0 || a[stages][len].is_infinite()) {
            return Err(PartitionError::Infeasible(
                "PipeDream's stages do not fit the accelerators' memory".into(),
            ));
        }
        let mut unit_slot: Vec<Option<Slot>> = vec![None; n];
        let (mut j, mut m) = (len, stages);
        while j > 0 && m > 0 {
            let i = back[m][j];
            for &x in &order[i..j] {
                unit_slot[x] = Some(accs[m - 1].0);
            }
            j = i;
            m -= 1;
        }
        let mut assignment = vec![Slot::Cpu(0); graph.nodes.len()];
        for (x, us) in unit_slot.iter().enumerate() {
            let slot = match *us {
                Some(s) => s,
                None => cpu.ok_or_else(|| {
                    PartitionError::Infeasible(
                        "a node cannot run on an accelerator and there is no CPU".into(),
                    )
                })?,
            };
            for &v in &u.members[x] {
                assignment[v] = slot;
            }
        }
        let e = evaluate_with(&p.ix, &p.kinds, p.interconnect.as_ref(), &assignment)?;
        let mut plan = e.plan;
        plan.solver = "pipedream".into();
        let stats = SolveStats {
            units: n,
            ideals: len + 1,
            pairs: 0,
            upper_bound: f64::INFINITY,
            dp_objective: if len > 0 { a[stages][len] } else { 0.0 },
            seconds: start.elapsed().as_secs_f64(),
            satellites: 0,
        };
        Ok((plan, stats))
    }
}

impl hetero_core::Placement for PipeDream {
    fn place(&self, graph: &Graph, cluster: &Cluster) -> hetero_core::Result<Plan> {
        Ok(self.solve(graph, cluster)?.0)
    }
}
