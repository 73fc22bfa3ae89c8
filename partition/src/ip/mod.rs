//! Integer programs for contiguous and non-contiguous splits (through
//! `good_lp`, solved by microlp or, with the `cbc` feature, COIN-OR Cbc:
//! see `solver.rs`).
//!
//! **Non-contiguous** (any assignment): binary `x[v][d]` per node and
//! device; colour classes share their row; per node `u` with successors,
//! continuous `out[u][d] >= x[u][d] - x[w][d]` and `in[u][d] >= x[w][d] -
//! x[u][d]` for each successor `w`, so an accelerator pays `u`'s transfer
//! cost once when `u`'s output leaves it or enters it (the evaluator's
//! model); `load[d] = time + comm <= M`; memory and accelerator support per
//! device; minimise `M`. With a two-level interconnect (factor >= 1), per
//! transfer and accelerator `d` two more variables, bounded below by
//! `x[u][d] + sum of x[w][e] over accelerators e in other nodes - 1` and
//! the mirror for a receiver on `d`, add `(factor - 1) x cost` each (the
//! evaluator's cross-node scaling).
//!
//! **Contiguous** (the DP's search space): the same on the contracted
//! units, but a split is a chain of ideals of the order graph: `y[u][p] = 1`
//! when unit `u` is on one of the first `p + 1` positions of the chain
//! (`y[b][p] <= y[a][p]` for every order edge `a -> b`, `y[u][p] <=
//! y[u][p+1]`, `y[u][last] = 1`), and `x[u][p] = y[u][p] - y[u][p-1]`.
//! Which kind of device sits at each position is itself a variable
//! (`k[p][t]`, one kind per position, `count_t` positions per kind), so
//! CPUs and accelerator classes may come in any order, as in the DP; load,
//! memory and support constraints of kind `t` hold at position `p` only
//! when `k[p][t] = 1` (big-M). With a two-level interconnect the kinds are
//! refined by node (an accelerator class with devices in two nodes is two
//! kinds), so each position's node is `node[p][n] = sum of k[p][t]` over the
//! kinds `t` of node `n`; continuous `on[u][n] >= x[u][p] + node[p][n] - 1`
//! marks a unit on node `n`, and for transfer `u -> w` the sender's extra
//! term is bounded below by `x[u][p] + node[p][n] + sum of on[w][n'] over
//! nodes n' != n - 2` (the receiver's by the mirror), adding `(factor - 1) x
//! cost` to position `p`'s load. Every such variable sits only in lower
//! bounds of loads being minimised, so at the optimum it is the indicator it
//! stands for: the model is exact, and equals brute force (property test).
//!
//! Whatever the solver reports, the plan's objective is the evaluator's on
//! the returned split; [`IpStats`] keeps the solver's own objective, its
//! best bound and the gap, and whether the time limit stopped it.

// Index loops mirror the model's subscripts (x[u][d], y[u][q]).
#![allow(clippy::needless_range_loop)]

use std::time::Instant;

use good_lp::{Expression, ProblemVariables, Variable, constraint, variable};
use hetero_core::placement::{Cluster, Graph, Plan, Slot, TwoLevelInterconnect};

use crate::dp::{Prepared, prepare, prepare_any_interconnect};
use crate::eval::{checked_interconnect, evaluate_with};
use crate::problem::{Indexed, Kind};
use crate::{PartitionError, Result};

mod solver;

pub use solver::IpSolver;
use solver::{Model, Solved};

/// The integer program (see the module docs).
#[derive(Debug, Clone)]
pub struct IntegerProgram {
    /// Restrict to contiguous splits (the DP's space) or allow any split.
    pub contiguous: bool,
    /// Stop the solver after this many seconds and return its best split.
    pub time_limit_s: Option<f64>,
    /// Also write the model as MPS (gzip-compressed, `<stem>.mps.gz`) for
    /// other solvers (Cbc only).
    pub write_mps: Option<std::path::PathBuf>,
    /// The MILP solver (microlp unless chosen otherwise).
    pub solver: IpSolver,
}

impl IntegerProgram {
    pub fn contiguous() -> Self {
        IntegerProgram {
            contiguous: true,
            time_limit_s: None,
            write_mps: None,
            solver: IpSolver::default(),
        }
    }
    pub fn non_contiguous() -> Self {
        IntegerProgram {
            contiguous: false,
            time_limit_s: None,
            write_mps: None,
            solver: IpSolver::default(),
        }
    }
    pub fn with_time_limit(mut self, seconds: f64) -> Self {
        self.time_limit_s = Some(seconds);
        self
    }
    pub fn with_solver(mut self, solver: IpSolver) -> Self {
        self.solver = solver;
        self
    }

    fn run(&self, model: Model) -> Result<Solved> {
        solver::solve(
            self.solver,
            model,
            self.time_limit_s,
            self.write_mps.as_deref(),
        )
    }
}

/// What the solver did.
#[derive(Debug, Clone, PartialEq)]
pub struct IpStats {
    pub variables: usize,
    pub constraints: usize,
    /// The solver's objective (its `M`).
    pub solver_objective: f64,
    /// The solver's best lower bound on the optimum.
    pub bound: f64,
    /// `(objective - bound) / objective`; 0 when proven optimal.
    pub gap: f64,
    /// True when the time limit stopped the search.
    pub stopped_by_time_limit: bool,
    pub seconds: f64,
}

/// Transfer terms: for each node with successors on other units, its cost,
/// its unit, and the distinct other units receiving its output.
fn transfers(ix: &Indexed<'_>, unit_of: &[usize]) -> Vec<(f64, usize, Vec<usize>)> {
    let mut out = Vec::new();
    for u in 0..ix.graph.nodes.len() {
        let c = ix.out_cost[u];
        if c <= 0.0 {
            continue;
        }
        let mut rec: Vec<usize> = ix
            .succ
            .row(u)
            .iter()
            .map(|&v| unit_of[v])
            .filter(|&w| w != unit_of[u])
            .collect();
        rec.sort_unstable();
        rec.dedup();
        if !rec.is_empty() {
            out.push((c, unit_of[u], rec));
        }
    }
    out
}

fn unit_time(kind: &Kind, cpu: f64, acc: f64) -> f64 {
    if kind.is_cpu { cpu } else { acc / kind.speed }
}

impl IntegerProgram {
    /// Place `graph` on `cluster`; the plan and the solver's figures.
    pub fn solve(&self, graph: &Graph, cluster: &Cluster) -> Result<(Plan, IpStats)> {
        let start = Instant::now();
        if let Some(t) = self.time_limit_s
            && !(t > 0.0 && t.is_finite())
        {
            return Err(PartitionError::BadNumber {
                field: "time limit".into(),
                value: t,
            });
        }
        let interconnect = checked_interconnect(cluster)?;
        if let Some(ic) = interconnect
            && ic.inter_node_cost_factor < 1.0
        {
            return Err(PartitionError::Unsupported(format!(
                "the IP models an inter-node cost factor of at least 1, got {}",
                ic.inter_node_cost_factor
            )));
        }
        let p = if interconnect.is_some() {
            prepare_any_interconnect(graph, cluster)?
        } else {
            prepare(graph, cluster)?
        };
        let (assignment, mut stats) = if self.contiguous {
            self.contiguous_ip(&p, interconnect)?
        } else {
            self.free_ip(&p, interconnect)?
        };
        let e = evaluate_with(&p.ix, &p.kinds, interconnect, &assignment)?;
        if !e.fits() {
            return Err(PartitionError::Infeasible(format!(
                "the IP's split overflows the memory of {:?}",
                e.memory_violations
            )));
        }
        let mut plan = e.plan;
        plan.optimal = !stats.stopped_by_time_limit;
        plan.solver = if self.contiguous {
            "ip-contiguous"
        } else {
            "ip-noncontiguous"
        }
        .into();
        stats.seconds = start.elapsed().as_secs_f64();
        Ok((plan, stats))
    }

    fn finish(
        &self,
        solved: &Solved,
        objective: f64,
        variables: usize,
        constraints: usize,
    ) -> IpStats {
        let stopped = solved.stopped_by_time_limit;
        let gap = if stopped && objective > 0.0 {
            ((objective - solved.bound) / objective).max(0.0)
        } else {
            0.0
        };
        IpStats {
            variables,
            constraints,
            solver_objective: objective,
            bound: if stopped { solved.bound } else { objective },
            gap,
            stopped_by_time_limit: stopped,
            seconds: 0.0,
        }
    }

    /// Any split, on the original nodes (colour classes as equalities).
    fn free_ip(
        &self,
        p: &Prepared<'_>,
        interconnect: Option<&TwoLevelInterconnect>,
    ) -> Result<(Vec<Slot>, IpStats)> {
        let g = p.ix.graph;
        let n = g.nodes.len();
        let devices: Vec<(usize, Slot)> = p
            .kinds
            .iter()
            .enumerate()
            .flat_map(|(t, k)| (0..k.count).map(move |j| (t, k.slot(j))))
            .collect();
        let mut vars = ProblemVariables::new();
        let x: Vec<Vec<Variable>> = (0..n)
            .map(|_| {
                devices
                    .iter()
                    .map(|_| vars.add(variable().binary()))
                    .collect()
            })
            .collect();
        let identity: Vec<usize> = (0..n).collect();
        let tr = transfers(&p.ix, &identity);
        let io: Vec<Vec<(Variable, Variable)>> = tr
            .iter()
            .map(|_| {
                devices
                    .iter()
                    .map(|_| (vars.add(variable().min(0.0)), vars.add(variable().min(0.0))))
                    .collect()
            })
            .collect();
        // two-level interconnect: for transfer k and accelerator d, the
        // devices in other nodes, and variables >= [u on d and a receiver in
        // another node] and >= [a receiver on d and u in another node]; each
        // adds (factor - 1) x the cost (factor >= 1, so they sit at their bounds)
        let node_of = |slot: Slot| interconnect.and_then(|ic| ic.node_of(slot));
        let other_nodes: Vec<Vec<usize>> = devices
            .iter()
            .map(|&(_, s)| match node_of(s) {
                Some(here) => (0..devices.len())
                    .filter(|&e| node_of(devices[e].1).is_some_and(|there| there != here))
                    .collect(),
                None => Vec::new(),
            })
            .collect();
        let cross: Vec<Vec<Option<(Variable, Variable)>>> = tr
            .iter()
            .map(|_| {
                other_nodes
                    .iter()
                    .map(|others| {
                        (!others.is_empty())
                            .then(|| (vars.add(variable().min(0.0)), vars.add(variable().min(0.0))))
                    })
                    .collect()
            })
            .collect();
        let extra = interconnect.map_or(0.0, |ic| ic.inter_node_cost_factor - 1.0);
        let m = vars.add(variable().min(0.0));
        let nvars = vars.len();
        let mut model = Model::new(vars, m);
        for row in &x {
            let sum: Expression = row.iter().sum();
            model.add(constraint!(sum == 1));
        }
        let mut first_of_class = std::collections::HashMap::new();
        for (v, node) in g.nodes.iter().enumerate() {
            if let Some(c) = node.color_class {
                let f = *first_of_class.entry(c).or_insert(v);
                if f != v {
                    for d in 0..devices.len() {
                        model.add(constraint!(x[v][d] == x[f][d]));
                    }
                }
            }
        }
        for (k, (_, u, rec)) in tr.iter().enumerate() {
            for d in 0..devices.len() {
                for &w in rec {
                    model.add(constraint!(io[k][d].0 >= x[*u][d] - x[w][d]));
                    model.add(constraint!(io[k][d].1 >= x[w][d] - x[*u][d]));
                    if let Some((leaves, enters)) = cross[k][d] {
                        let w_away: Expression = other_nodes[d].iter().map(|&e| x[w][e]).sum();
                        let u_away: Expression = other_nodes[d].iter().map(|&e| x[*u][e]).sum();
                        model.add(constraint!(leaves >= x[*u][d] + w_away - 1));
                        model.add(constraint!(enters >= x[w][d] + u_away - 1));
                    }
                }
            }
        }
        for (d, &(t, _)) in devices.iter().enumerate() {
            let kind = &p.kinds[t];
            let mut load = Expression::from(0.0);
            for (v, node) in g.nodes.iter().enumerate() {
                load += unit_time(kind, node.cpu_time, node.accelerator_time) * x[v][d];
                if !kind.is_cpu && !node.accelerator_ok {
                    model.add(constraint!(x[v][d] == 0));
                }
            }
            if !kind.is_cpu {
                for (k, (c, _, _)) in tr.iter().enumerate() {
                    load += *c * io[k][d].0 + *c * io[k][d].1;
                    if let Some((leaves, enters)) = cross[k][d] {
                        load += *c * extra * leaves + *c * extra * enters;
                    }
                }
                let mem: Expression = g
                    .nodes
                    .iter()
                    .enumerate()
                    .map(|(v, node)| node.memory_bytes as f64 * x[v][d])
                    .sum();
                model.add(constraint!(mem <= kind.memory as f64));
            }
            model.add(constraint!(load <= m));
        }
        let constraints = model.constraints.len();
        let solution = self.run(model)?;
        let assignment = (0..n)
            .map(|v| {
                let d = (0..devices.len())
                    .max_by(|&a, &b| solution.value(x[v][a]).total_cmp(&solution.value(x[v][b])))
                    .unwrap_or(0);
                devices[d].1
            })
            .collect();
        let objective = solution.value(m);
        let stats = self.finish(&solution, objective, nvars, constraints);
        Ok((assignment, stats))
    }

    /// Contiguous splits: a chain of ideals of the contracted order graph.
    fn contiguous_ip(
        &self,
        p: &Prepared<'_>,
        interconnect: Option<&TwoLevelInterconnect>,
    ) -> Result<(Vec<Slot>, IpStats)> {
        let units = &p.units;
        let nu = units.len();
        let (kinds, node_of_kind) = kinds_by_node(&p.kinds, interconnect);
        let nodes = node_of_kind.iter().flatten().max().map_or(0, |&n| n + 1);
        let positions: usize = kinds.iter().map(|k| k.count).sum();
        let nk = kinds.len();
        let mut vars = ProblemVariables::new();
        let y: Vec<Vec<Variable>> = (0..nu)
            .map(|_| {
                (0..positions)
                    .map(|_| vars.add(variable().binary()))
                    .collect()
            })
            .collect();
        let kind_at: Vec<Vec<Variable>> = (0..positions)
            .map(|_| (0..nk).map(|_| vars.add(variable().binary())).collect())
            .collect();
        let tr = transfers(&p.ix, &units.unit_of);
        let io: Vec<Vec<(Variable, Variable)>> = tr
            .iter()
            .map(|_| {
                (0..positions)
                    .map(|_| (vars.add(variable().min(0.0)), vars.add(variable().min(0.0))))
                    .collect()
            })
            .collect();
        // two-level interconnect (none when one node holds every accelerator)
        let two_level = nodes > 1;
        let extra = interconnect.map_or(0.0, |ic| ic.inter_node_cost_factor - 1.0);
        let on_node: Vec<Vec<Variable>> = if two_level {
            (0..nu)
                .map(|_| (0..nodes).map(|_| vars.add(variable().min(0.0))).collect())
                .collect()
        } else {
            Vec::new()
        };
        let cross: Vec<Vec<(Variable, Variable)>> = if two_level {
            tr.iter()
                .map(|_| {
                    (0..positions)
                        .map(|_| (vars.add(variable().min(0.0)), vars.add(variable().min(0.0))))
                        .collect()
                })
                .collect()
        } else {
            Vec::new()
        };
        let m = vars.add(variable().min(0.0));
        let nvars = vars.len();
        let mut model = Model::new(vars, m);
        // x[u][q] = y[u][q] - y[u][q-1]
        let x = |u: usize, q: usize| -> Expression {
            if q == 0 {
                Expression::from(y[u][0])
            } else {
                y[u][q] - y[u][q - 1]
            }
        };
        // node[q][n]: position q holds an accelerator of node n
        let node_at = |q: usize, n: usize| -> Expression {
            (0..nk)
                .filter(|&t| node_of_kind[t] == Some(n))
                .map(|t| kind_at[q][t])
                .sum()
        };
        for u in 0..nu {
            for q in 1..positions {
                model.add(constraint!(y[u][q - 1] <= y[u][q]));
            }
            model.add(constraint!(y[u][positions - 1] == 1));
            for &b in &units.succs[u] {
                for q in 0..positions {
                    model.add(constraint!(y[b][q] <= y[u][q]));
                }
            }
        }
        for row in &kind_at {
            let s: Expression = row.iter().sum();
            model.add(constraint!(s == 1));
        }
        for (t, kind) in kinds.iter().enumerate() {
            let s: Expression = kind_at.iter().map(|row| row[t]).sum();
            model.add(constraint!(s == kind.count as f64));
        }
        if two_level {
            for u in 0..nu {
                for n in 0..nodes {
                    for q in 0..positions {
                        model.add(constraint!(on_node[u][n] >= x(u, q) + node_at(q, n) - 1));
                    }
                }
            }
        }
        // units on a node other than n
        let away = |u: usize, n: usize| -> Expression {
            (0..nodes).filter(|&o| o != n).map(|o| on_node[u][o]).sum()
        };
        for (k, (_, u, rec)) in tr.iter().enumerate() {
            for q in 0..positions {
                for &w in rec {
                    model.add(constraint!(io[k][q].0 >= x(*u, q) - x(w, q)));
                    model.add(constraint!(io[k][q].1 >= x(w, q) - x(*u, q)));
                    if two_level {
                        let (leaves, enters) = cross[k][q];
                        for n in 0..nodes {
                            model.add(constraint!(
                                leaves >= x(*u, q) + node_at(q, n) + away(w, n) - 2
                            ));
                            model.add(constraint!(
                                enters >= x(w, q) + node_at(q, n) + away(*u, n) - 2
                            ));
                        }
                    }
                }
            }
        }
        let comm_total: f64 = tr.iter().map(|(c, _, _)| 2.0 * c).sum::<f64>() * (1.0 + extra);
        let total_mem: f64 = units.memory.iter().map(|&b| b as f64).sum();
        for q in 0..positions {
            for (t, kind) in kinds.iter().enumerate() {
                let mut load = Expression::from(0.0);
                let mut big = 0.0;
                for u in 0..nu {
                    let time = unit_time(kind, units.cpu_time[u], units.accelerator_time[u]);
                    big += time;
                    load += time * x(u, q);
                    if !kind.is_cpu && !units.accelerator_ok[u] {
                        // Not on an accelerator position.
                        model.add(constraint!(x(u, q) + kind_at[q][t] <= 1));
                    }
                }
                if !kind.is_cpu {
                    for (k, (c, _, _)) in tr.iter().enumerate() {
                        load += *c * io[k][q].0 + *c * io[k][q].1;
                        if two_level {
                            load += *c * extra * cross[k][q].0 + *c * extra * cross[k][q].1;
                        }
                    }
                    big += comm_total;
                    let mem: Expression = (0..nu).map(|u| units.memory[u] as f64 * x(u, q)).sum();
                    let slack = (total_mem - kind.memory as f64).max(0.0);
                    model.add(constraint!(
                        mem <= kind.memory as f64 + slack * (1.0 - kind_at[q][t])
                    ));
                }
                model.add(constraint!(load <= m + big * (1.0 - kind_at[q][t])));
            }
        }
        let constraints = model.constraints.len();
        let solution = self.run(model)?;
        // Map positions to concrete devices of their kind, in order.
        let mut used = vec![0usize; nk];
        let mut slot_of_position = Vec::with_capacity(positions);
        for row in &kind_at {
            let t = (0..nk)
                .max_by(|&a, &b| solution.value(row[a]).total_cmp(&solution.value(row[b])))
                .unwrap_or(0);
            let j = used[t].min(kinds[t].count.saturating_sub(1));
            used[t] += 1;
            slot_of_position.push(kinds[t].slot(j));
        }
        let mut assignment = vec![Slot::Cpu(0); p.ix.graph.nodes.len()];
        for u in 0..nu {
            let q = (0..positions)
                .find(|&q| solution.value(y[u][q]) > 0.5)
                .unwrap_or(positions - 1);
            for &v in &units.members[u] {
                assignment[v] = slot_of_position[q];
            }
        }
        let objective = solution.value(m);
        let stats = self.finish(&solution, objective, nvars, constraints);
        Ok((assignment, stats))
    }
}

/// The device kinds with accelerator classes split by node of a two-level
/// interconnect (a class's devices are consecutive, so each part is again a
/// run of global indices), and each kind's node (`None` for CPUs, and for
/// every kind without an interconnect).
fn kinds_by_node(
    kinds: &[Kind],
    interconnect: Option<&TwoLevelInterconnect>,
) -> (Vec<Kind>, Vec<Option<usize>>) {
    let Some(ic) = interconnect else {
        return (kinds.to_vec(), vec![None; kinds.len()]);
    };
    let per_node = ic.accelerators_per_node.max(1);
    let mut out = Vec::new();
    let mut node_of = Vec::new();
    for kind in kinds {
        if kind.is_cpu {
            out.push(kind.clone());
            node_of.push(None);
            continue;
        }
        let end = kind.first_index + kind.count;
        let mut first = kind.first_index;
        while first < end {
            let node = first / per_node;
            let stop = ((node + 1) * per_node).min(end);
            out.push(Kind {
                count: stop - first,
                first_index: first,
                ..kind.clone()
            });
            node_of.push(Some(node));
            first = stop;
        }
    }
    (out, node_of)
}

impl hetero_core::Placement for IntegerProgram {
    fn place(&self, graph: &Graph, cluster: &Cluster) -> hetero_core::Result<Plan> {
        Ok(self.solve(graph, cluster)?.0)
    }
}
