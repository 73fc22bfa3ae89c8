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
//! memory and support are written per position and kind on `z[u][p][t] =
//! x[u][p] k[p][t]` (linearised exactly, no big-M; see `contiguous_ip` for
//! this and the other valid inequalities and the symmetry breaking, each
//! proved there). With a two-level interconnect the kinds are
//! refined by node (an accelerator class with devices in two nodes is two
//! kinds), so each kind has one node; continuous `on[u][n] >= sum of
//! z[u][p][t]` over the kinds of node `n` marks a unit on node `n`, and for
//! transfer `u -> w`
//! the sender's extra term at position `p` of kind `t` (node `n`) is bounded
//! below by `z[u][p][t] + sum of on[w][n'] over nodes n' != n - 1` (the
//! receiver's by the mirror), adding `(factor - 1) x cost` to that load.
//! Every such variable sits only in lower bounds of loads being minimised,
//! so at the optimum it is the indicator it stands for: the model is exact,
//! and equals brute force (property tests).
//!
//! Whatever the solver reports, the plan's objective is the evaluator's on
//! the returned split; [`IpStats`] keeps the solver's own objective, its
//! best bound and the gap, and whether the time limit stopped it.

// Index loops mirror the model's subscripts (x[u][d], y[u][q]).
#![allow(clippy::needless_range_loop)]

use std::collections::HashMap;
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
    /// The objective of a known split in the model's space (contiguous IP
    /// only; e.g. the exact DP's): the model adds `M <= bound`, which keeps
    /// the optimum when the bound is right and lets the solver prune every
    /// branch that cannot beat it. A bound below the optimum makes the IP
    /// infeasible (so a wrong DP value shows). The linearized DP's
    /// objective is always used as well.
    pub upper_bound: Option<f64>,
    /// A split (a slot per node) for the solver to start from (contiguous
    /// IP, Cbc only): its first incumbent, so it prunes from the start;
    /// default: the linearized DP's split. Ignored when it is not a
    /// contiguous split of the model (Cbc checks every row). With both a
    /// start and an upper bound from the caller, Cbc's primal heuristics
    /// are off: it only has to prove that no split is better.
    pub start: Option<Vec<Slot>>,
}

impl IntegerProgram {
    pub fn contiguous() -> Self {
        IntegerProgram {
            contiguous: true,
            time_limit_s: None,
            write_mps: None,
            solver: IpSolver::default(),
            upper_bound: None,
            start: None,
        }
    }
    pub fn non_contiguous() -> Self {
        IntegerProgram {
            contiguous: false,
            time_limit_s: None,
            write_mps: None,
            solver: IpSolver::default(),
            upper_bound: None,
            start: None,
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
    /// See [`IntegerProgram::upper_bound`].
    pub fn with_upper_bound(mut self, bound: f64) -> Self {
        self.upper_bound = Some(bound);
        self
    }
    /// See [`IntegerProgram::start`].
    pub fn with_start(mut self, assignment: Vec<Slot>) -> Self {
        self.start = Some(assignment);
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
            let (bound, linear) = self.contiguous_upper_bound(graph, cluster, interconnect);
            let warm = self.start.clone().or(linear);
            match self.contiguous_ip(&p, interconnect, bound, warm.as_deref(), true) {
                // microlp's LU fails now and then ("Singular matrix") on a
                // model that another set of rows avoids (seen on random
                // graphs of three nodes, each of the valid inequalities
                // alone making the difference): try once more without
                // them, in the time left. They never change the optimum,
                // so neither does leaving them out; the upper bound keeps
                // its meaning through the check below.
                Err(PartitionError::Unsupported(why)) if self.solver == IpSolver::MicroLp => {
                    let left = self.time_limit_s.map(|t| t - start.elapsed().as_secs_f64());
                    if left.is_some_and(|t| t <= 0.0) {
                        return Err(PartitionError::Unsupported(why));
                    }
                    let plain = IntegerProgram {
                        time_limit_s: left,
                        ..self.clone()
                    };
                    let out = plain.contiguous_ip(&p, interconnect, bound, None, false)?;
                    if let Some(b) = self.upper_bound
                        && out.1.solver_objective > b * (1.0 + 1e-7) + 1e-9
                    {
                        return Err(PartitionError::Infeasible(format!(
                            "no split within the upper bound {b} (the best is {})",
                            out.1.solver_objective
                        )));
                    }
                    out
                }
                other => other?,
            }
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
        let mut first_of_class = HashMap::new();
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

    /// An upper bound on the contiguous optimum: the caller's
    /// ([`IntegerProgram::with_upper_bound`]) and the linearized DP's
    /// objective (a contiguous split that fits, scored by the evaluator,
    /// so the optimum is at most that; the DP does not model a two-level
    /// interconnect, so then only the caller's), whichever is lower; and the
    /// linearized DP's split.
    fn contiguous_upper_bound(
        &self,
        graph: &Graph,
        cluster: &Cluster,
        interconnect: Option<&TwoLevelInterconnect>,
    ) -> (Option<f64>, Option<Vec<Slot>>) {
        let linear = if interconnect.is_none() {
            crate::LinearDp
                .solve(graph, cluster)
                .ok()
                .map(|(plan, _)| plan)
        } else {
            None
        };
        let bound = [self.upper_bound, linear.as_ref().map(|p| p.objective)]
            .into_iter()
            .flatten()
            .filter(|b| b.is_finite())
            .reduce(f64::min);
        (bound, linear.map(|p| p.assignment))
    }

    /// Contiguous splits: a chain of ideals of the contracted order graph.
    ///
    /// Issue 21 (InceptionV3 inference, 6 accelerators and 8 CPUs: bound 0
    /// after 1,500 s of Cbc) made this model tighter without changing its
    /// optimum. The old model gated each position's load, memory and
    /// support by `k[q][t]` with big-M terms (`load <= m + big (1 -
    /// k[q][t])`); with `k` fractional the LP relaxation switches every
    /// position off and its bound is 0. Now:
    ///
    /// - `z[u][q][t]` (continuous, only with two kinds or more): unit `u` at
    ///   position `q` and that position of kind `t`: `sum_t z[u][q][t] =
    ///   x[u][q]`, `z[u][q][t] <= k[q][t]`. At integer `x` and `k` exactly
    ///   one `k[q][t]` is 1, so `z[u][q][t] = x[u][q] k[q][t]`: the
    ///   product, determined, so the variables add no freedom. A position's
    ///   load *per kind* is `L[q][t] = sum_u time_t(u) z[u][q][t]` (+ the
    ///   transfers below), and `L[q][t] <= m` holds for every kind with no
    ///   big-M: `L[q][t]` is the real load when `t` is the position's kind
    ///   and 0 otherwise (every term is 0 then, the transfer variables
    ///   included, see below). Memory: `sum_u mem(u) z[u][q][t] <= memory_t
    ///   k[q][t]` (0 <= 0 on the other kinds). Support: `z[u][q][t] = 0`
    ///   for a unit without accelerator support and an accelerator kind.
    /// - Transfers per accelerator kind: `out[q][t] >= z[u][q][t] -
    ///   x[w][q]`, `in[q][t] >= z[w][q][t] - x[u][q]`, so they can be 0 at
    ///   a position of another kind; each only bounds a load from below, so
    ///   at the optimum it is the evaluator's once-per-node indicator.
    /// - Per kind, `sum_q L[q][t] <= count_t m`: at most `count_t`
    ///   positions are of kind `t` and the others' `L[q][t]` is 0. This is
    ///   what lifts the LP bound to the fractional-work bound (each unit's
    ///   time spread over the kinds, `count_t m` of capacity per kind).
    /// - With an upper bound `B` on the optimum (the linearized DP's
    ///   objective, or the caller's): `m <= B` and `L[q][t] <= B k[q][t]`.
    ///   The optimum is at most `B`, so neither removes it; `B` gets a
    ///   relative `1e-7` of slack for rounding.
    /// - `m >= max_u min_t time_t(u)` over the kinds that can hold `u`:
    ///   every unit sits on some device, whose load is at least its time.
    /// - Empty positions last (symmetry): `f[q] <= sum_u x[u][q]` and
    ///   `x[u][q+1] <= f[q]`, so a position is used only if the one before
    ///   it is. Any split's chain can be rearranged this way: removing a
    ///   position whose ideal repeats the previous one and appending it (its
    ///   kind with it) at the end keeps a chain of ideals, every set, every
    ///   load and the count of positions per kind.
    ///
    /// - Spine segments (`spine.rs`; with an upper bound `B`): for each
    ///   position and kind, continuous `s[q][seg][t]` for every segment of
    ///   the spine (units comparable to all: a CNN's stem, its blocks'
    ///   concatenations, its head) whose time on kind `t` is at most `B`,
    ///   with `sum over seg containing a = z[a][q][t]` for every spine unit
    ///   `a`, `sum over seg <= k[q][t]`, and `z[v][q][t] >= sum over seg
    ///   holding v inside`. At integer `x` and `k` a position's spine units
    ///   of its kind are one segment (a device's set is convex), so exactly
    ///   that segment's variable is 1 (the rows leave no other choice), a
    ///   segment longer than `B` cannot be held (no split of at most `B`
    ///   does), and the device holds the blocks inside the segment. Its
    ///   load is at least the segment's time plus the least transfers of
    ///   any set with that segment (`L[q][t] >= sum (time + transfers) s`).
    ///   A *closed* segment's device holds nothing else, so its load is
    ///   known; its position's row becomes `L[q][t] + lost s[q][seg][t] <=
    ///   B k[q][t]` with `lost = B - load` (what the device cannot use; the
    ///   row holds with equality there and is the old row elsewhere). The
    ///   LP can no longer spread a stem's large units over the positions
    ///   to fill every device for free.
    ///   Between adjacent spine units the transfer variables get rows per
    ///   segment too: `out >= sum of the segments ending just before the
    ///   next spine unit` (the sender's output leaves) and `in >=` those
    ///   starting just after the previous one.
    ///
    /// `strong: false` leaves out the last four items (the per-kind rows,
    /// the bound, the floor and the symmetry breaking), all of them valid
    /// inequalities: the same optimum, a weaker relaxation (microlp's
    /// fallback).
    fn contiguous_ip(
        &self,
        p: &Prepared<'_>,
        interconnect: Option<&TwoLevelInterconnect>,
        upper_bound: Option<f64>,
        start: Option<&[Slot]>,
        strong: bool,
    ) -> Result<(Vec<Slot>, IpStats)> {
        let units = &p.units;
        let nu = units.len();
        let (kinds, node_of_kind) = kinds_by_node(&p.kinds, interconnect);
        let nodes = node_of_kind.iter().flatten().max().map_or(0, |&n| n + 1);
        let positions: usize = kinds.iter().map(|k| k.count).sum();
        let nk = kinds.len();
        let acc_kinds: Vec<usize> = (0..nk).filter(|&t| !kinds[t].is_cpu).collect();
        let allowed = |u: usize, t: usize| kinds[t].is_cpu || units.accelerator_ok[u];
        let bound = upper_bound
            .map(|b| b * (1.0 + 1e-7) + 1e-9)
            .filter(|_| strong);
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
        let z: Vec<Vec<Vec<Variable>>> = if nk > 1 {
            (0..nu)
                .map(|u| {
                    (0..positions)
                        .map(|_| {
                            (0..nk)
                                .map(|t| {
                                    let top = if allowed(u, t) { 1.0 } else { 0.0 };
                                    vars.add(variable().min(0.0).max(top))
                                })
                                .collect()
                        })
                        .collect()
                })
                .collect()
        } else {
            Vec::new()
        };
        let tr = transfers(&p.ix, &units.unit_of);
        let segs = match (bound, bound.and_then(|_| crate::spine::spine(units))) {
            (Some(b), Some(sp)) => crate::spine::segments(&sp, units, &kinds, &tr, b, |t, u| {
                unit_time(&kinds[t], units.cpu_time[u], units.accelerator_time[u])
            }),
            _ => Vec::new(),
        };
        let sigma: Vec<Vec<Variable>> = (0..positions)
            .map(|_| {
                segs.iter()
                    .map(|_| vars.add(variable().min(0.0).max(1.0)))
                    .collect()
            })
            .collect();
        // per transfer, position and accelerator kind (index into acc_kinds)
        let pair_vars = |vars: &mut ProblemVariables| -> Vec<Vec<Vec<(Variable, Variable)>>> {
            tr.iter()
                .map(|_| {
                    (0..positions)
                        .map(|_| {
                            acc_kinds
                                .iter()
                                .map(|_| {
                                    (vars.add(variable().min(0.0)), vars.add(variable().min(0.0)))
                                })
                                .collect()
                        })
                        .collect()
                })
                .collect()
        };
        let io = pair_vars(&mut vars);
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
        let cross = if two_level {
            pair_vars(&mut vars)
        } else {
            Vec::new()
        };
        let filled: Vec<Variable> = (0..positions.saturating_sub(1))
            .map(|_| vars.add(variable().min(0.0).max(1.0)))
            .collect();
        // every unit's least time over the kinds that can hold it
        let floor = (0..nu)
            .filter_map(|u| {
                (0..nk)
                    .filter(|&t| allowed(u, t))
                    .map(|t| unit_time(&kinds[t], units.cpu_time[u], units.accelerator_time[u]))
                    .reduce(f64::min)
            })
            .fold(0.0, f64::max);
        // (a floor above the bound would mean the bound is wrong: the
        // unit's own load then makes the model infeasible, which is the
        // answer, so the variable's own bounds stay ordered)
        let floor = if strong { floor } else { 0.0 };
        let m_def = match bound {
            Some(b) => variable().min(floor.min(b)).max(b),
            None => variable().min(floor),
        };
        let m = vars.add(m_def);
        let nvars = vars.len();
        // The start's value of every variable but m (m: its largest load,
        // below); none with a two-level interconnect (not worked out).
        let mut at = start
            .filter(|_| !two_level && self.solver == IpSolver::Cbc)
            .and_then(|a| chain_of(units, &kinds, a))
            .map(|(pos, kind_of)| {
                let mut v: HashMap<Variable, f64> = HashMap::new();
                let b = |c: bool| if c { 1.0 } else { 0.0 };
                for u in 0..nu {
                    for q in 0..positions {
                        v.insert(y[u][q], b(pos[u] <= q));
                        if nk > 1 {
                            for t in 0..nk {
                                v.insert(z[u][q][t], b(pos[u] == q && kind_of[q] == t));
                            }
                        }
                    }
                }
                for q in 0..positions {
                    for t in 0..nk {
                        v.insert(kind_at[q][t], b(kind_of[q] == t));
                    }
                }
                for (k, (_, u, rec)) in tr.iter().enumerate() {
                    for q in 0..positions {
                        for (i, &t) in acc_kinds.iter().enumerate() {
                            let here = kind_of[q] == t;
                            let leaves = here && pos[*u] == q && rec.iter().any(|&w| pos[w] != q);
                            let enters = here && pos[*u] != q && rec.iter().any(|&w| pos[w] == q);
                            v.insert(io[k][q][i].0, b(leaves));
                            v.insert(io[k][q][i].1, b(enters));
                        }
                    }
                }
                for (q, &f) in filled.iter().enumerate() {
                    v.insert(f, b(pos.contains(&q)));
                }
                for q in 0..positions {
                    for (s, seg) in segs.iter().enumerate() {
                        let held = |u: &usize| pos[*u] == q;
                        let here = kind_of[q] == seg.kind
                            && seg.units.iter().all(held)
                            && seg.prev.is_none_or(|u| !held(&u))
                            && seg.next.is_none_or(|u| !held(&u));
                        v.insert(sigma[q][s], b(here));
                    }
                }
                v
            });
        let mut start_m = 0.0f64;
        let mut model = Model::new(vars, m);
        // x[u][q] = y[u][q] - y[u][q-1]
        let x = |u: usize, q: usize| -> Expression {
            if q == 0 {
                Expression::from(y[u][0])
            } else {
                y[u][q] - y[u][q - 1]
            }
        };
        // z[u][q][t], which is x[u][q] itself with one kind
        let zx = |u: usize, q: usize, t: usize| -> Expression {
            if nk > 1 {
                Expression::from(z[u][q][t])
            } else {
                x(u, q)
            }
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
        for u in 0..nu {
            for q in 0..positions {
                if nk > 1 {
                    let s: Expression = z[u][q].iter().sum();
                    model.add(constraint!(s == x(u, q)));
                    for t in 0..nk {
                        if allowed(u, t) {
                            model.add(constraint!(z[u][q][t] <= kind_at[q][t]));
                        }
                    }
                } else if !allowed(u, 0) {
                    // one kind, an accelerator, that cannot hold u: infeasible
                    model.add(constraint!(x(u, q) <= 0));
                }
            }
        }
        // spine segments (see spine.rs): each spine unit at a position of
        // a kind is covered by that position's segments of the kind, one at
        // most per position, only segments that fit the bound exist, and a
        // segment's inner blocks are held with it
        let spine_units: Vec<usize> = {
            let mut v: Vec<usize> = segs.iter().flat_map(|s| s.units.iter().copied()).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        for q in (0..positions).filter(|_| !segs.is_empty()) {
            for t in 0..nk {
                let of_kind: Vec<usize> = (0..segs.len()).filter(|&s| segs[s].kind == t).collect();
                let cap = if nk > 1 {
                    Expression::from(kind_at[q][t])
                } else {
                    Expression::from(1.0)
                };
                let all: Expression = of_kind.iter().map(|&s| sigma[q][s]).sum();
                model.add(constraint!(all <= cap));
                for &u in spine_units.iter().filter(|&&u| allowed(u, t)) {
                    let covering: Expression = of_kind
                        .iter()
                        .filter(|&&s| segs[s].units.contains(&u))
                        .map(|&s| sigma[q][s])
                        .sum();
                    model.add(constraint!(covering == zx(u, q, t)));
                }
                let mut inner: Vec<usize> = of_kind
                    .iter()
                    .flat_map(|&s| segs[s].inner.iter().copied())
                    .collect();
                inner.sort_unstable();
                inner.dedup();
                for u in inner {
                    let holding: Expression = of_kind
                        .iter()
                        .filter(|&&s| segs[s].inner.contains(&u))
                        .map(|&s| sigma[q][s])
                        .sum();
                    model.add(constraint!(zx(u, q, t) >= holding));
                }
            }
        }
        // empty positions last
        for (q, &f) in filled.iter().enumerate().filter(|_| strong) {
            let here: Expression = (0..nu).map(|u| x(u, q)).sum();
            model.add(constraint!(f <= here));
            for u in 0..nu {
                model.add(constraint!(x(u, q + 1) <= f));
            }
        }
        if two_level {
            for u in 0..nu {
                for n in 0..nodes {
                    for q in 0..positions {
                        let here: Expression = (0..nk)
                            .filter(|&t| node_of_kind[t] == Some(n))
                            .map(|t| zx(u, q, t))
                            .sum();
                        model.add(constraint!(on_node[u][n] >= here));
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
                for (i, &t) in acc_kinds.iter().enumerate() {
                    let (leaves, enters) = io[k][q][i];
                    for &w in rec {
                        model.add(constraint!(leaves >= zx(*u, q, t) - x(w, q)));
                        model.add(constraint!(enters >= zx(w, q, t) - x(*u, q)));
                        if let (true, Some(n)) = (two_level, node_of_kind[t]) {
                            let (cl, ce) = cross[k][q][i];
                            model.add(constraint!(cl >= zx(*u, q, t) + away(w, n) - 1));
                            model.add(constraint!(ce >= zx(w, q, t) + away(*u, n) - 1));
                        }
                    }
                }
            }
        }
        // Spine segments and transfers: a segment that stops just before
        // an adjacent spine unit sends it its output, one that starts just
        // after one receives its output (adjacent spine units are joined
        // by an order edge). The rows above price a
        // transfer only as far as the two units' fractions differ, which a
        // relaxation spreading whole segments evenly makes zero.
        for (k, (_, u, rec)) in tr.iter().enumerate().filter(|_| !segs.is_empty()) {
            let ends_here = |s: &crate::spine::Segment| {
                s.units.last() == Some(u) && s.after.is_some_and(|a| rec.contains(&a))
            };
            let starts_after =
                |s: &crate::spine::Segment| s.before == Some(*u) && rec.contains(&s.units[0]);
            for (i, &t) in acc_kinds.iter().enumerate() {
                let of_kind = |f: &dyn Fn(&crate::spine::Segment) -> bool| -> Vec<usize> {
                    (0..segs.len())
                        .filter(|&s| segs[s].kind == t && f(&segs[s]))
                        .collect()
                };
                let (ending, starting) = (of_kind(&ends_here), of_kind(&starts_after));
                for q in 0..positions {
                    let (leaves, enters) = io[k][q][i];
                    if !ending.is_empty() {
                        let sum: Expression = ending.iter().map(|&s| sigma[q][s]).sum();
                        model.add(constraint!(leaves >= sum));
                    }
                    if !starting.is_empty() {
                        let sum: Expression = starting.iter().map(|&s| sigma[q][s]).sum();
                        model.add(constraint!(enters >= sum));
                    }
                }
            }
        }
        for (t, kind) in kinds.iter().enumerate() {
            let acc = acc_kinds.iter().position(|&a| a == t);
            let mut all = Expression::from(0.0);
            for q in 0..positions {
                let mut load = Expression::from(0.0);
                for u in 0..nu {
                    if allowed(u, t) {
                        let time = unit_time(kind, units.cpu_time[u], units.accelerator_time[u]);
                        load += time * zx(u, q, t);
                    }
                }
                if let Some(i) = acc {
                    for (k, (c, _, _)) in tr.iter().enumerate() {
                        load += *c * io[k][q][i].0 + *c * io[k][q][i].1;
                        if two_level {
                            load += *c * extra * cross[k][q][i].0 + *c * extra * cross[k][q][i].1;
                        }
                    }
                    let mem: Expression = (0..nu)
                        .filter(|&u| allowed(u, t) && units.memory[u] > 0)
                        .map(|u| units.memory[u] as f64 * zx(u, q, t))
                        .sum();
                    if nk > 1 {
                        model.add(constraint!(mem <= kind.memory as f64 * kind_at[q][t]));
                    } else {
                        model.add(constraint!(mem <= kind.memory as f64));
                    }
                }
                // a segment's device pays at least its transfer bound
                // (spine.rs)
                if acc.is_some() && !segs.is_empty() {
                    let least: Expression = segs
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.kind == t)
                        .map(|(s, seg)| (seg.time + seg.transfers) * sigma[q][s])
                        .sum();
                    model.add(constraint!(load.clone() >= least));
                }
                // a closed segment's device holds nothing else: what its
                // load leaves of the bound is lost (spine.rs)
                let lost: Expression = segs
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.kind == t && s.lost > 0.0 && !two_level)
                    .map(|(s, seg)| seg.lost * sigma[q][s])
                    .sum();
                if nk > 1 {
                    all += load.clone();
                    if let Some(b) = bound {
                        model.add(constraint!(load.clone() + lost <= b * kind_at[q][t]));
                    }
                } else if let Some(b) = bound {
                    model.add(constraint!(load.clone() + lost <= b));
                }
                if let Some(v) = &at {
                    start_m = start_m.max(load.eval_with(v));
                }
                model.add(constraint!(load <= m));
            }
            if nk > 1 && strong {
                model.add(constraint!(all <= kind.count as f64 * m));
            }
        }
        if let Some(v) = at.as_mut() {
            v.insert(m, start_m.max(floor));
        }
        // Given a split and a bound by the caller (the DP's check), the
        // solver only has to prove that nothing is better.
        model.prove_only = at.is_some() && self.start.is_some() && self.upper_bound.is_some();
        let started = at.is_some();
        model.start = at.map(|v| v.into_iter().collect());
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
        let mut objective = solution.value(m);
        // Cbc (2.10.8, C interface) keeps the start as its incumbent but,
        // when nothing beats it, ends "infeasible" (its cutoff) and hands
        // back the last LP's columns instead of the incumbent (seen on a
        // one-node graph: the start's 0.25 proven, a split of 0.5
        // returned). So the split returned is kept only if the evaluator
        // agrees with the solver's objective and it is no worse than the
        // start; otherwise the start, which fits (checked here) and which
        // Cbc's finished search proved nothing beats, is the answer.
        if let (true, Some(start)) = (started, start) {
            let score = |a: &[Slot]| {
                evaluate_with(&p.ix, &p.kinds, interconnect, a)
                    .ok()
                    .filter(|e| e.fits())
                    .map(|e| e.plan.objective)
            };
            let tol = 1e-6 * objective.abs().max(1.0);
            let returned = score(&assignment).filter(|&e| (e - objective).abs() <= tol);
            if let Some(s) = score(start)
                && returned.is_none_or(|r| r > s + tol)
            {
                assignment = start.to_vec();
                objective = s;
            }
        }
        if let Some(b) = bound
            && objective > b + 1e-6 * b.abs().max(1.0)
        {
            // (only through the start: Cbc rejects a start above the bound)
            return Err(PartitionError::Infeasible(format!(
                "no split within the upper bound {b}"
            )));
        }
        let stats = self.finish(&solution, objective, nvars, constraints);
        Ok((assignment, stats))
    }
}

/// A split as a chain: each unit's position and each position's kind, the
/// used devices in a topological order of the split's quotient graph and
/// the unused ones after them (the model's "empty positions last"); `None`
/// when the split is not contiguous (a unit split over devices, a slot of
/// no kind, or a cycle between devices).
fn chain_of(
    units: &crate::problem::Units,
    kinds: &[Kind],
    assignment: &[Slot],
) -> Option<(Vec<usize>, Vec<usize>)> {
    let devices: Vec<(Slot, usize)> = kinds
        .iter()
        .enumerate()
        .flat_map(|(t, k)| (0..k.count).map(move |j| (k.slot(j), t)))
        .collect();
    let mut device_of = Vec::with_capacity(units.len());
    for members in &units.members {
        let slot = *assignment.get(*members.first()?)?;
        if members.iter().any(|&v| assignment.get(v) != Some(&slot)) {
            return None;
        }
        device_of.push(devices.iter().position(|&(s, _)| s == slot)?);
    }
    let nd = devices.len();
    let mut used = vec![false; nd];
    let mut indegree = vec![0usize; nd];
    let mut edges = vec![Vec::new(); nd];
    for (u, &d) in device_of.iter().enumerate() {
        used[d] = true;
        for &b in &units.succs[u] {
            let e = device_of[b];
            if e != d && !edges[d].contains(&e) {
                edges[d].push(e);
                indegree[e] += 1;
            }
        }
    }
    let mut order: Vec<usize> = Vec::with_capacity(nd);
    let mut ready: Vec<usize> = (0..nd).filter(|&d| used[d] && indegree[d] == 0).collect();
    while let Some(d) = ready.pop() {
        order.push(d);
        for &e in &edges[d] {
            indegree[e] -= 1;
            if indegree[e] == 0 {
                ready.push(e);
            }
        }
    }
    if order.len() != used.iter().filter(|&&u| u).count() {
        return None;
    }
    order.extend((0..nd).filter(|&d| !used[d]));
    let mut position_of = vec![0; nd];
    for (q, &d) in order.iter().enumerate() {
        position_of[d] = q;
    }
    let pos = device_of.iter().map(|&d| position_of[d]).collect();
    let kind_of = order.iter().map(|&d| devices[d].1).collect();
    Some((pos, kind_of))
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
