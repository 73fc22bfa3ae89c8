//! The exact DP over ideals, the linearized DP, and a greedy split.
//!
//! Both DPs run on a lattice of ideals of the order graph on units (see
//! [`crate::problem`]): the exact DP on all of them, the linearized DP on the
//! prefixes of one topological order. For an ideal `J` and a state `s` (how
//! many devices of each kind are used), `dp[J][s]` is the least maximum load
//! with which the units of `J` can be split over the devices of `s`, each
//! device taking the difference `J \ I` of two ideals:
//!
//! `dp[J][s] = min( dp[J][s - one device of kind t],
//!                  min over I ⊂ J, kind t of max(dp[I][s - t], cost_t(J \ I)) )`.
//!
//! The pairs `I ⊂ J` are walked by a depth-first search down the Hasse
//! diagram from `J` (each sub-ideal once: units removed in decreasing order), and
//! the costs of `J \ I` are kept incrementally: times, memory and support are
//! sums, and the communication term is kept per node from the number of its
//! successors inside the set. Times and memory only grow as `I` shrinks, so
//! the search stops where the set is too slow for every kind against an upper
//! bound (the linearized DP's objective for the exact DP, the greedy split's
//! for the linearized DP) or too big for every accelerator. Pruning only
//! drops pairs that no split with objective at most the bound can use, so the
//! result stays exact.
//!
//! **Devices of one kind are interchangeable, so the state counts them.**
//! The cost of a set on a device depends on the device only through its
//! kind: an accelerator's through its speed and memory (the same for every
//! device of the class), a CPU's not at all (its load is the set's CPU
//! time: no communication term, no memory limit). Take a split and swap the
//! sets of two devices of one kind: every load is the same multiset, so the
//! objective is the same, and the chain of ideals is the same. So a split is
//! determined, up to such swaps, by its chain and the kind of each step,
//! and `dp[J][s]` needs only how many devices of each kind the chain of `J`
//! used (`s`), never which: with `l` CPUs the CPU part of the state has
//! `l + 1` values, not `2^l`. (Device `j` of a kind gets the `j`-th set of
//! that kind along the chain.)
//!
//! Three further reductions keep it exact (each proved where it is built):
//! [`Viability`] drops (ideal, state) cells that no split within the bound
//! passes through, `Lines::relax` stops a line of states once the rest of
//! it would get the set's cost anyway, and [`crate::satellite`] takes the
//! zero-time units that hold memory out of the lattice when memory binds.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

use hetero_core::placement::{Cluster, Graph, Placement, Plan, Slot, TwoLevelInterconnect};

use crate::eval::{checked_interconnect, evaluate_indexed, evaluate_with};
use crate::problem::{Indexed, Kind, Units, kinds, memory_vacuous};
use crate::satellite::{self, Item, Satellites, cover};
use crate::{PartitionError, Result};

/// What a solver did, for reports.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SolveStats {
    /// Units after contraction.
    pub units: usize,
    /// Ideals in the lattice the DP ran on.
    pub ideals: usize,
    /// Pairs of ideals whose difference was scored.
    pub pairs: u64,
    /// The bound used for pruning (infinite: none).
    pub upper_bound: f64,
    /// The DP's own value of the objective (the plan's is the evaluator's).
    pub dp_objective: f64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Exact DP: satellite units priced per set instead of enumerated
    /// (see the `satellite` module's documentation; 0 when the graph has
    /// none or the DP fell back to every unit).
    pub satellites: usize,
}

/// Called as the exact DP goes: (ideals done, ideals in all).
pub type ProgressFn = dyn Fn(usize, usize) + Send + Sync;

/// What the exact DP tells as it goes (for command-line reports).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum DpEvent {
    /// Before the ideals are enumerated: the lattice's units (after the
    /// satellites, if any, are taken out), the satellites, an estimate of
    /// the bytes each ideal will take (enumeration and DP table), and the
    /// ideal limit, so that `bytes_per_ideal * limit` bounds the memory.
    Enumerating {
        units: usize,
        satellites: usize,
        bytes_per_ideal: usize,
        limit: usize,
    },
    /// While enumerating: ideals found so far and the bytes they take.
    Ideals { ideals: usize, bytes: usize },
    /// Enumeration done: the ideals, and the DP table's bytes.
    Enumerated { ideals: usize, table_bytes: usize },
    /// The DP with satellites priced per set did not prove its split
    /// optimal (its value, and the lower bound it proved): the DP runs
    /// again on every unit.
    SatellitesNotTight { value: f64, lower_bound: f64 },
}

/// Receives [`DpEvent`]s.
pub type EventFn = dyn Fn(&DpEvent) + Send + Sync;

/// Exact DP over all ideals (contiguous splits).
#[derive(Clone)]
pub struct ExactDp {
    /// Give up with [`PartitionError::TooManyIdeals`] beyond this many ideals.
    pub ideal_limit: usize,
    /// Threads for the DP (ideals of one size are independent); 0: one per
    /// available core. The result does not depend on it.
    pub threads: usize,
    /// Told after each size of ideals is done (for progress bars).
    pub progress: Option<std::sync::Arc<ProgressFn>>,
    /// Told what the DP is about to do and how the enumeration goes.
    pub events: Option<std::sync::Arc<EventFn>>,
}

impl std::fmt::Debug for ExactDp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExactDp")
            .field("ideal_limit", &self.ideal_limit)
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .field("events", &self.events.is_some())
            .finish()
    }
}

impl Default for ExactDp {
    fn default() -> Self {
        ExactDp {
            ideal_limit: 3_000_000,
            threads: 0,
            progress: None,
            events: None,
        }
    }
}

impl ExactDp {
    fn worker_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(16)),
            t => t,
        }
    }
}

/// DP over the prefixes of one topological order (#ideals = #units + 1).
#[derive(Debug, Clone, Default)]
pub struct LinearDp;

/// Greedy baseline: walk a topological order and fill each accelerator up to
/// its share of the total time; nodes that cannot run on an accelerator go to
/// the first CPU.
#[derive(Debug, Clone, Default)]
pub struct Greedy;

fn no_interconnect(cluster: &Cluster) -> Result<()> {
    if cluster.interconnect.is_some() {
        return Err(PartitionError::Unsupported(
            "the DPs do not model the two-level interconnect (both IPs, the evaluator, \
             i.e. hetero-place --score, and brute force do; greedy and PipeDream score \
             their splits with it); leave `interconnect` unset or use the IP \
             (hetero-place --algo ip or ip-noncontig)"
                .into(),
        ));
    }
    Ok(())
}

pub(crate) struct Prepared<'g> {
    pub(crate) ix: Indexed<'g>,
    pub(crate) units: Units,
    pub(crate) kinds: Vec<Kind>,
    /// Checked; always `None` for the solvers that do not model it.
    pub(crate) interconnect: Option<TwoLevelInterconnect>,
    /// Set on the exact DP's core problem only (see [`crate::satellite`]).
    pub(crate) satellites: Option<Satellites>,
    /// The stem of `units` ([`crate::spine::stem_units`]), computed on
    /// first use: the DP prices it under every bound it tries.
    pub(crate) stem: OnceLock<Option<Vec<usize>>>,
}

impl Prepared<'_> {
    /// The units' stem, if they have one ([`crate::spine::stem_units`]).
    pub(crate) fn stem(&self) -> Option<&[usize]> {
        self.stem
            .get_or_init(|| crate::spine::stem_units(&self.units))
            .as_deref()
    }

    /// The first CPU's slot (if any) and every accelerator as (slot, speed,
    /// memory), in kind order: what the order-based baselines fill.
    pub(crate) fn first_cpu_and_accelerators(&self) -> (Option<Slot>, Vec<(Slot, f64, u64)>) {
        let cpu = self.kinds.iter().find(|k| k.is_cpu).map(|k| k.slot(0));
        let accs = self
            .kinds
            .iter()
            .filter(|k| !k.is_cpu)
            .flat_map(|k| (0..k.count).map(move |j| (k.slot(j), k.speed, k.memory)))
            .collect();
        (cpu, accs)
    }
}

pub(crate) fn prepare<'g>(graph: &'g Graph, cluster: &Cluster) -> Result<Prepared<'g>> {
    no_interconnect(cluster)?;
    prepare_any_interconnect(graph, cluster)
}

/// [`prepare`] for a solver that models the two-level interconnect itself.
pub(crate) fn prepare_any_interconnect<'g>(
    graph: &'g Graph,
    cluster: &Cluster,
) -> Result<Prepared<'g>> {
    let interconnect = checked_interconnect(cluster)?.cloned();
    let ix = Indexed::new(graph)?;
    let kinds = kinds(cluster)?;
    let units = Units::build(&ix, memory_vacuous(graph, &kinds))?;
    units.check_fits(graph, &kinds)?;
    Ok(Prepared {
        ix,
        units,
        kinds,
        interconnect,
        satellites: None,
        stem: OnceLock::new(),
    })
}

impl ExactDp {
    /// Place `graph` on `cluster`; the plan and what it took.
    pub fn solve(&self, graph: &Graph, cluster: &Cluster) -> Result<(Plan, SolveStats)> {
        let start = Instant::now();
        let p = prepare(graph, cluster)?;
        let linear = Lattice::prefixes(p.units.len());
        let greedy_ub = greedy_assignment(&p)
            .and_then(|a| evaluate_indexed(&p.ix, &p.kinds, &a).ok())
            .filter(|e| e.fits())
            .map_or(f64::INFINITY, |e| e.plan.objective);
        // The linearized DP may find no split where the exact one does.
        let lin = run_dp(&p, &linear, greedy_ub, 1, None)?;
        // The linearized DP's split is a contiguous split: a valid bound.
        let ub = lin.best;
        // (the pairs reported are the exact DP's own)
        let mut pairs = 0;
        if let Some(core) = satellite::split(&p) {
            let lattice = self.enumerate(&core)?;
            let out = run_dp(
                &core,
                &lattice,
                ub,
                self.worker_threads(),
                self.progress.as_deref(),
            )?;
            pairs += out.pairs;
            // `best` is a real split and `relaxed` a lower bound on every
            // split (see `crate::satellite`): equal, the split is optimal
            if out.best.is_finite() && out.best <= out.relaxed {
                let out = DpOut { pairs, ..out };
                return finish(&core, &lattice, out, ub, "exact-dp", start);
            }
            if !out.relaxed.is_finite() {
                return Err(infeasible());
            }
            self.tell(&DpEvent::SatellitesNotTight {
                value: out.best,
                lower_bound: out.relaxed,
            });
        }
        let lattice = self.enumerate(&p)?;
        // Trial bounds first (see `trial_bounds`): a run whose bound is
        // at least the optimum finds it; one below finds nothing, and the
        // next, larger bound is tried, up to the linearized DP's.
        let mut found = None;
        for trial in trial_bounds(&p, ub) {
            let out = run_dp_bounded(&p, &lattice, trial, self.worker_threads(), None)?;
            if out.best.is_finite() {
                found = Some(out);
                break;
            }
            pairs += out.pairs;
        }
        let out = match found {
            Some(out) => out,
            None => run_dp(
                &p,
                &lattice,
                ub,
                self.worker_threads(),
                self.progress.as_deref(),
            )?,
        };
        if !out.best.is_finite() {
            return Err(infeasible());
        }
        let out = DpOut {
            pairs: pairs + out.pairs,
            ..out
        };
        finish(&p, &lattice, out, ub, "exact-dp", start)
    }
}

impl ExactDp {
    fn tell(&self, e: &DpEvent) {
        if let Some(f) = &self.events {
            f(e);
        }
    }

    /// The lattice of `p`'s units, with the memory estimate told first and
    /// the count told as it grows.
    fn enumerate(&self, p: &Prepared<'_>) -> Result<Lattice> {
        let words = p.units.len().div_ceil(64).max(1);
        let blocks = if p.satellites.is_some() { 2 } else { 1 };
        let (_, _, table) = state_space(&p.kinds, blocks)?;
        self.tell(&DpEvent::Enumerating {
            units: p.units.len(),
            satellites: p.satellites.as_ref().map_or(0, |s| s.count),
            bytes_per_ideal: Lattice::BYTES_PER_IDEAL + 16 * words + table,
            limit: self.ideal_limit,
        });
        let mut tick = |ideals: usize, bytes: usize| self.tell(&DpEvent::Ideals { ideals, bytes });
        let lattice = Lattice::ideals(&p.units, self.ideal_limit, &mut tick)?;
        self.tell(&DpEvent::Enumerated {
            ideals: lattice.count,
            table_bytes: lattice.count.saturating_mul(table),
        });
        Ok(lattice)
    }
}

impl LinearDp {
    /// Place `graph` on `cluster`; the plan and what it took.
    pub fn solve(&self, graph: &Graph, cluster: &Cluster) -> Result<(Plan, SolveStats)> {
        let start = Instant::now();
        let p = prepare(graph, cluster)?;
        let ub = greedy_assignment(&p)
            .and_then(|a| evaluate_indexed(&p.ix, &p.kinds, &a).ok())
            .filter(|e| e.fits())
            .map_or(f64::INFINITY, |e| e.plan.objective);
        let lattice = Lattice::prefixes(p.units.len());
        let out = run_dp(&p, &lattice, ub, 1, None)?;
        if !out.best.is_finite() {
            return Err(infeasible());
        }
        finish(&p, &lattice, out, ub, "linear-dp", start)
    }
}

impl Greedy {
    /// Place `graph` on `cluster` greedily. A two-level interconnect does
    /// not change the split (greedy balances compute only); it is scored
    /// with it.
    pub fn solve(&self, graph: &Graph, cluster: &Cluster) -> Result<(Plan, SolveStats)> {
        let start = Instant::now();
        let p = prepare_any_interconnect(graph, cluster)?;
        let a = greedy_assignment(&p).ok_or_else(|| {
            PartitionError::Infeasible("the greedy split found no device for some nodes".into())
        })?;
        let e = evaluate_with(&p.ix, &p.kinds, p.interconnect.as_ref(), &a)?;
        if !e.fits() {
            return Err(PartitionError::Infeasible(format!(
                "the greedy split overflows the memory of {:?}",
                e.memory_violations
            )));
        }
        let mut plan = e.plan;
        plan.solver = "greedy".into();
        let stats = SolveStats {
            units: p.units.len(),
            ideals: 0,
            pairs: 0,
            upper_bound: f64::INFINITY,
            dp_objective: plan.objective,
            seconds: start.elapsed().as_secs_f64(),
            satellites: 0,
        };
        Ok((plan, stats))
    }
}

impl Placement for ExactDp {
    fn place(&self, graph: &Graph, cluster: &Cluster) -> hetero_core::Result<Plan> {
        Ok(self.solve(graph, cluster)?.0)
    }
}

impl Placement for LinearDp {
    fn place(&self, graph: &Graph, cluster: &Cluster) -> hetero_core::Result<Plan> {
        Ok(self.solve(graph, cluster)?.0)
    }
}

impl Placement for Greedy {
    fn place(&self, graph: &Graph, cluster: &Cluster) -> hetero_core::Result<Plan> {
        Ok(self.solve(graph, cluster)?.0)
    }
}

fn greedy_assignment(p: &Prepared<'_>) -> Option<Vec<Slot>> {
    let u = &p.units;
    let (cpu, accs) = p.first_cpu_and_accelerators();
    let total_speed: f64 = accs.iter().map(|a| a.1).sum();
    let total: f64 = (0..u.len())
        .filter(|&x| u.accelerator_ok[x])
        .map(|x| u.accelerator_time[x])
        .sum();
    let mut unit_slot = vec![None; u.len()];
    let (mut d, mut time, mut mem) = (0usize, 0.0f64, 0u64);
    #[allow(clippy::needless_range_loop)] // x indexes several unit arrays
    for x in 0..u.len() {
        if !u.accelerator_ok[x] || accs.is_empty() {
            unit_slot[x] = Some(cpu?);
            continue;
        }
        loop {
            let (slot, speed, cap) = accs[d];
            let share = total * speed / total_speed;
            let t = u.accelerator_time[x] / speed;
            let fits = mem.saturating_add(u.memory[x]) <= cap;
            let last = d + 1 == accs.len();
            if fits && (time + t <= share || time == 0.0 || last) {
                unit_slot[x] = Some(slot);
                time += t;
                mem += u.memory[x];
                break;
            }
            if last {
                unit_slot[x] = Some(cpu?);
                break;
            }
            d += 1;
            time = 0.0;
            mem = 0;
        }
    }
    let n = p.ix.graph.nodes.len();
    (0..n).map(|i| unit_slot[u.unit_of[i]]).collect()
}

/// Ideals with their Hasse diagram downwards: `down[J]` lists `(I, unit)`
/// with `I = J \ {unit}`. Ideal 0 is empty, the last is everything, and ids
/// grow with size.
struct Lattice {
    count: usize,
    down_start: Vec<u32>,
    down: Vec<(u32, u32)>,
    /// `Some(words)`: ideals as bitsets over units; `None`: prefixes.
    bits: Option<(usize, Vec<u64>)>,
}

impl Lattice {
    fn prefixes(units: usize) -> Self {
        let down_start = (0..=units as u32 + 1)
            .map(|j| j.saturating_sub(1))
            .collect();
        let down = (0..units as u32).map(|j| (j, j)).collect();
        Lattice {
            count: units + 1,
            down_start,
            down,
            bits: None,
        }
    }

    /// Bytes per ideal besides its bitset (two copies of it, in the table
    /// and the hash index) and the DP table: the hash index's entry, the
    /// Hasse diagram's edges (about four per ideal on the shipped graphs,
    /// 12 bytes while built, 8 after) and the viable states' bits.
    const BYTES_PER_IDEAL: usize = 48 + 4 * 12 + 8;

    fn ideals(units: &Units, limit: usize, tick: &mut dyn FnMut(usize, usize)) -> Result<Self> {
        let n = units.len();
        let words = n.div_ceil(64).max(1);
        let mut data: Vec<u64> = vec![0; words];
        let mut index: HashMap<Box<[u64]>, u32> = HashMap::new();
        index.insert(vec![0u64; words].into_boxed_slice(), 0);
        let mut up: Vec<(u32, u32, u32)> = Vec::new(); // (J, I, unit)
        let mut q = 0usize;
        let mut child = vec![0u64; words];
        while q * words < data.len() {
            for v in 0..n {
                let base = q * words;
                let has = |x: usize| data[base + x / 64] >> (x % 64) & 1 == 1;
                if has(v) || !units.preds[v].iter().all(|&x| has(x)) {
                    continue;
                }
                child.copy_from_slice(&data[base..base + words]);
                child[v / 64] |= 1 << (v % 64);
                let id = match index.get(child.as_slice()) {
                    Some(&id) => id,
                    None => {
                        let id = index.len();
                        if id >= limit {
                            return Err(PartitionError::TooManyIdeals { limit });
                        }
                        if id.is_multiple_of(1 << 18) && id > 0 {
                            let bytes = id * (48 + 16 * words + 8) + up.len() * 12;
                            tick(id, bytes);
                        }
                        index.insert(child.clone().into_boxed_slice(), id as u32);
                        data.extend_from_slice(&child);
                        id as u32
                    }
                };
                up.push((id, q as u32, v as u32));
            }
            q += 1;
        }
        drop(index);
        if up.len() >= u32::MAX as usize {
            return Err(PartitionError::TooManyIdeals { limit });
        }
        let count = data.len() / words;
        // per ideal, its down edges by the unit removed (the walk in
        // `row_dp` relies on it)
        up.sort_unstable_by_key(|&(j, i, v)| (j, v, i));
        let mut down_start = vec![0u32; count + 1];
        for &(j, _, _) in &up {
            down_start[j as usize + 1] += 1;
        }
        for j in 0..count {
            down_start[j + 1] += down_start[j];
        }
        let down = up.into_iter().map(|(_, i, v)| (i, v)).collect();
        Ok(Lattice {
            count,
            down_start,
            down,
            bits: Some((words, data)),
        })
    }

    /// Boundaries of the runs of ideals of one size: ideals
    /// `levels[i]..levels[i + 1]` all have the same number of units.
    fn levels(&self) -> Vec<usize> {
        let mut out = vec![0];
        if let Some((w, data)) = &self.bits {
            let size = |j: usize| -> u32 {
                data[j * w..(j + 1) * w]
                    .iter()
                    .map(|x| x.count_ones())
                    .sum()
            };
            for j in 1..self.count {
                if size(j) != size(j - 1) {
                    out.push(j);
                }
            }
        } else {
            out.extend(1..self.count);
        }
        out.push(self.count);
        out
    }

    /// Units of `J \ I`.
    fn difference(&self, j: usize, i: usize) -> Vec<usize> {
        match &self.bits {
            None => (i..j).collect(),
            Some((w, data)) => {
                let mut out = Vec::new();
                for k in 0..*w {
                    let mut x = data[j * w + k] & !data[i * w + k];
                    while x != 0 {
                        out.push(k * 64 + x.trailing_zeros() as usize);
                        x &= x - 1;
                    }
                }
                out
            }
        }
    }
}

/// The set `J \ I` being grown by the search, with its costs.
struct SetState {
    in_set: Vec<bool>,
    succ_in: Vec<u32>,
    outdeg: Vec<u32>,
    /// Per unit, in one run from `ops_start[unit]`: for each member `x`,
    /// `x`, its number of predecessors `k`, and the `k` predecessors (what
    /// adding and removing the unit touches, contiguous).
    ops_start: Vec<u32>,
    ops: Vec<u32>,
    /// Per unit: its sums' terms, side by side.
    terms: Vec<Totals>,
    /// The set's sums: saved before a unit is added, put back when it is
    /// removed (exactly: no rounding left behind by adding and
    /// subtracting).
    sums: Totals,
}

impl SetState {
    /// The empty set over `p`'s units; `outdeg` counts each node's
    /// successors that matter for the transfer term.
    fn new(p: &Prepared<'_>, outdeg: Vec<u32>) -> Self {
        let n = p.ix.graph.nodes.len();
        let u = &p.units;
        let mut ops_start = Vec::with_capacity(u.len() + 1);
        let mut ops = Vec::new();
        let mut terms = Vec::with_capacity(u.len());
        for unit in 0..u.len() {
            ops_start.push(ops.len() as u32);
            for &x in &u.members[unit] {
                let preds = p.ix.pred.row(x);
                ops.push(x as u32);
                ops.push(preds.len() as u32);
                ops.extend(preds.iter().map(|&y| y as u32));
            }
            terms.push(Totals {
                comm: 0.0,
                acc_time: u.accelerator_time[unit],
                cpu_time: u.cpu_time[unit],
                memory: u.memory[unit],
                satellite_memory: p.satellites.as_ref().map_or(0, |sat| sat.memory[unit]),
                unsupported: u32::from(!u.accelerator_ok[unit]),
            });
        }
        ops_start.push(ops.len() as u32);
        SetState {
            in_set: vec![false; n],
            succ_in: vec![0; n],
            outdeg,
            ops_start,
            ops,
            terms,
            sums: Totals {
                comm: 0.0,
                acc_time: 0.0,
                cpu_time: 0.0,
                memory: 0,
                satellite_memory: 0,
                unsupported: 0,
            },
        }
    }

    /// Add `unit`'s members. A node pays its output's transfer when it is
    /// in the set with a successor outside, or outside with a successor
    /// in; only the members and their predecessors change, by the deltas
    /// written out below.
    fn add(&mut self, p: &Prepared<'_>, unit: usize) {
        let t = self.terms[unit];
        let sums = &mut self.sums;
        sums.acc_time += t.acc_time;
        sums.cpu_time += t.cpu_time;
        sums.memory = sums.memory.saturating_add(t.memory);
        sums.satellite_memory = sums.satellite_memory.saturating_add(t.satellite_memory);
        sums.unsupported += t.unsupported;
        let out_cost = &p.ix.out_cost;
        let mut comm = self.sums.comm;
        let (succ_in, in_set, outdeg) = (&mut self.succ_in, &mut self.in_set, &self.outdeg);
        let members = {
            let (start, end) = (self.ops_start[unit], self.ops_start[unit + 1]);
            &self.ops[start as usize..end as usize]
        };
        for (x, preds) in member_runs(members) {
            // outside: paid if a successor is in; inside: if one is out
            let (si, d) = (succ_in[x], outdeg[x]);
            let before = si > 0;
            let after = si < d;
            if after != before {
                comm += if after { out_cost[x] } else { -out_cost[x] };
            }
            in_set[x] = true;
            for &y in preds {
                let y = y as usize;
                let si = succ_in[y];
                succ_in[y] = si + 1;
                if in_set[y] {
                    // its last successor outside comes in
                    if si + 1 == outdeg[y] {
                        comm -= out_cost[y];
                    }
                } else if si == 0 {
                    // its first successor inside
                    comm += out_cost[y];
                }
            }
        }
        self.sums.comm = comm;
    }

    /// Take `unit`'s members out again (the counters only; `saved` are the
    /// sums from before it was added).
    fn remove(&mut self, unit: usize, saved: Totals) {
        let (start, end) = (self.ops_start[unit], self.ops_start[unit + 1]);
        for (x, preds) in member_runs(&self.ops[start as usize..end as usize]) {
            for &y in preds {
                self.succ_in[y as usize] -= 1;
            }
            self.in_set[x] = false;
        }
        self.sums = saved;
    }
}

/// The runs of [`SetState::ops`] for one unit: each member with its
/// predecessors.
fn member_runs(mut run: &[u32]) -> impl Iterator<Item = (usize, &[u32])> {
    std::iter::from_fn(move || {
        let (&[x, k], rest) = run.split_first_chunk::<2>()?;
        let (preds, rest) = rest.split_at(k as usize);
        run = rest;
        Some((x as usize, preds))
    })
}

/// [`SetState`]'s sums.
#[derive(Clone, Copy)]
struct Totals {
    comm: f64,
    acc_time: f64,
    cpu_time: f64,
    memory: u64,
    satellite_memory: u64,
    unsupported: u32,
}

/// One step of the optimal chain: `J \ I` on a device of kind `kind`
/// (`I == J`: the device is left empty).
#[derive(Debug, Clone, Copy)]
struct Step {
    j: u32,
    i: u32,
    kind: u8,
}

const NO_CHOICE: u8 = u8::MAX;
/// Back-links keep the kind in the low bits and, with satellites, the
/// bit of the state they came from in this one.
const FROM_WAITING: u8 = 0x80;

/// What the DP found: the best chain's value with no satellite waiting
/// (`best`, a real split; infinite if none) and its steps, the best value
/// with or without (`relaxed`, see [`crate::satellite`]; equal to `best`
/// without satellites), and the pairs scored.
struct DpOut {
    best: f64,
    relaxed: f64,
    chain: Vec<Step>,
    pairs: u64,
}

/// Bounds to try before `ub`, smallest first, all below `ub`.
///
/// The DP's viable cells narrow with the bound: the slack between the
/// devices' capacity and the work (`Viability`) shrinks as the bound nears
/// the optimum, and with it the sets walked, most of all when a stem's
/// closed segments take most of that slack (InceptionV3 with 8 CPUs:
/// 219M pairs under the linearized DP's bound 48.62, 30M under 47.52, the
/// optimum being 47.516). So an estimate from below, the bound at which
/// the whole graph starts to pass the viability test (bisection; the test
/// is not monotone in the bound once a stem's cuts change with it, which
/// only makes the estimate larger than it could be), is raised in
/// doubling steps from 0.25% to 2% while at least 1% under `ub`, and each
/// is tried before `ub`; only with a stem. Exact
/// whatever the estimate: a run with a bound at least the optimum returns
/// the optimum (no split within the bound is pruned), a run with a bound
/// below it finds no split.
fn trial_bounds(p: &Prepared<'_>, ub: f64) -> Vec<f64> {
    if !ub.is_finite() || p.units.len() < 2 {
        return Vec::new();
    }
    // Without a stem the bound hardly narrows the walk (InceptionV3 with 8
    // CPUs before the stem: 216.6M pairs under the optimum, 219.4M under
    // 48.62), and failed trials cost more than they save (GNMT: 6.8M
    // pairs at `ub`, 21.4M with the trials).
    if p.stem()
        .map(|stem| crate::spine::stem_waste(stem, &p.units, &p.kinds, ub))
        .is_none_or(|s| s.whole <= 0.0)
    {
        return Vec::new();
    }
    let Ok((ns, strides, _)) = state_space(&p.kinds, 1) else {
        return Vec::new();
    };
    let lat = Lattice::prefixes(p.units.len());
    let full = lat.count - 1;
    let passes = |m: f64| Viability::new(p, &lat, &strides, ns, m).viable(full, ns - 1);
    if !passes(ub) {
        return Vec::new();
    }
    // the largest failing bound by bisection (the test without a stem is
    // monotone; with one it may pass below this too, which only makes the
    // trials larger than they could be)
    let (mut lo, mut hi) = (0.0, ub);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if passes(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let estimate = hi;
    // doubling steps (a failed trial costs less than the next one), at
    // least 1% under `ub`: nearer, a trial saves little when it succeeds
    // and costs almost a full run when it fails (`ub` is often optimal)
    [1.0025, 1.005, 1.01, 1.02]
        .iter()
        .map(|f| estimate * f)
        .filter(|&b| b * 1.01 <= ub)
        .collect()
}

/// The DP pruned by `ub`; if no split of the lattice reaches `ub` (the bound
/// came from a split outside it), again without a bound.
fn run_dp(
    p: &Prepared<'_>,
    lat: &Lattice,
    ub: f64,
    threads: usize,
    progress: Option<&ProgressFn>,
) -> Result<DpOut> {
    let out = run_dp_bounded(p, lat, ub, threads, progress)?;
    if !out.best.is_finite() && ub.is_finite() {
        let again = run_dp_bounded(p, lat, f64::INFINITY, threads, progress)?;
        return Ok(DpOut {
            pairs: out.pairs + again.pairs,
            ..again
        });
    }
    Ok(out)
}

fn infeasible() -> PartitionError {
    PartitionError::Infeasible(
        "no contiguous split satisfies the memory and accelerator-support constraints (or \
         the devices are too few for the groups that must stay together)"
            .into(),
    )
}

/// The number of device states (`prod(count_t + 1)`), their strides, and
/// the bytes of the DP's table per ideal (values and back-links, with the
/// satellite bit when `blocks` is 2).
pub(crate) fn state_space(kinds: &[Kind], blocks: usize) -> Result<(usize, Vec<usize>, usize)> {
    let mut strides = Vec::with_capacity(kinds.len());
    let mut ns = 1usize;
    for k in kinds {
        strides.push(ns);
        ns = ns.checked_mul(k.count + 1).ok_or_else(|| {
            PartitionError::Unsupported("too many devices for the DP's state space".into())
        })?;
    }
    let per_ideal = ns
        .checked_mul(blocks * (size_of::<f64>() + size_of::<(u32, u8)>()))
        .ok_or_else(|| {
            PartitionError::Unsupported("too many devices for the DP's state space".into())
        })?;
    Ok((ns, strides, per_ideal))
}

fn run_dp_bounded(
    p: &Prepared<'_>,
    lat: &Lattice,
    ub: f64,
    threads: usize,
    progress: Option<&ProgressFn>,
) -> Result<DpOut> {
    let kinds = &p.kinds;
    if kinds.len() >= (FROM_WAITING - 1) as usize {
        return Err(PartitionError::Unsupported(format!(
            "{} device kinds; at most 126 are supported",
            kinds.len()
        )));
    }
    let blocks = if p.satellites.is_some() { 2 } else { 1 };
    let (ns, strides, _) = state_space(kinds, blocks)?;
    let nst = ns * blocks;
    let cells = nst
        .checked_mul(lat.count)
        .filter(|&c| c <= 1 << 31)
        .ok_or_else(|| {
            PartitionError::Unsupported(format!(
                "{} ideals x {nst} device states is too large for the DP table",
                lat.count
            ))
        })?;
    let bases: Vec<Vec<u32>> = (0..kinds.len())
        .map(|t| {
            (0..ns)
                .filter(|&s| (s / strides[t]) % (kinds[t].count + 1) == 0)
                .map(|s| s as u32)
                .collect()
        })
        .collect();
    let bound = if ub.is_finite() {
        ub * (1.0 + 1e-9) + 1e-12
    } else {
        f64::INFINITY
    };

    let mut dp = vec![f64::INFINITY; cells];
    let mut choice = vec![(0u32, NO_CHOICE); cells];
    // the empty ideal: nothing placed, nothing waiting
    dp[..ns].fill(0.0);
    let viability = bound
        .is_finite()
        .then(|| Viability::new(p, lat, &strides, ns, bound));
    let ctx = RowCtx {
        p,
        lat,
        strides: &strides,
        bases: &bases,
        bound,
        ns,
        viability: viability.as_ref(),
    };
    let threads = threads.max(1);
    let mut workers: Vec<Worker> = (0..threads).map(|_| Worker::new(p, ns)).collect();
    // Ideals of one size do not depend on each other: each level is split
    // over the workers (rows of one level are contiguous, ids grow with size).
    let levels = lat.levels();
    for w in levels.windows(2) {
        let (lo, hi) = (w[0].max(1), w[1]);
        if lo >= hi {
            continue;
        }
        let (done, rest) = dp.split_at_mut(lo * nst);
        let level = &mut rest[..(hi - lo) * nst];
        let (_, crest) = choice.split_at_mut(lo * nst);
        let clevel = &mut crest[..(hi - lo) * nst];
        if threads == 1 || hi - lo < 4 * threads {
            for (r, (row, crow)) in level
                .chunks_mut(nst)
                .zip(clevel.chunks_mut(nst))
                .enumerate()
            {
                row_dp(&ctx, &mut workers[0], lo + r, done, row, crow);
            }
        } else {
            // one row per job, taken from a shared queue as threads free up
            let mut jobs: Vec<Job<'_>> = level
                .chunks_mut(nst)
                .zip(clevel.chunks_mut(nst))
                .enumerate()
                .map(|(r, (row, crow))| (lo + r, row, crow))
                .collect();
            jobs.reverse();
            let queue = std::sync::Mutex::new(jobs);
            let (done, ctx, queue): (&[f64], _, _) = (done, &ctx, &queue);
            std::thread::scope(|scope| {
                for worker in workers.iter_mut() {
                    scope.spawn(move || {
                        while let Some((j, row, crow)) = queue.lock().ok().and_then(|mut q| q.pop())
                        {
                            row_dp(ctx, worker, j, done, row, crow);
                        }
                    });
                }
            });
        }
        if let Some(f) = progress {
            f(hi, lat.count);
        }
    }
    let pairs = workers.iter().map(|w| w.pairs).sum();
    let full = lat.count - 1;
    let best = dp[full * nst + ns - 1];
    let relaxed = if blocks == 2 {
        best.min(dp[full * nst + 2 * ns - 1])
    } else {
        best
    };
    let mut chain = Vec::new();
    if best.is_finite() {
        let (mut j, mut s) = (full, ns - 1);
        while j != 0 || s >= ns {
            let (i, code) = choice[j * nst + s];
            if code == NO_CHOICE {
                return Err(PartitionError::Unsupported(
                    "internal error: the DP's back-links are incomplete".into(),
                ));
            }
            let t = code & !FROM_WAITING;
            chain.push(Step {
                j: j as u32,
                i,
                kind: t,
            });
            s = s % ns - strides[t as usize] + if code & FROM_WAITING != 0 { ns } else { 0 };
            j = i as usize;
        }
    }
    Ok(DpOut {
        best,
        relaxed,
        chain,
        pairs,
    })
}

/// Ask the CPU to bring `at`'s cache line in (a hint: no effect on results;
/// `at` need not be in bounds, it is never read here).
#[inline(always)]
fn prefetch<T>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint that never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(at.cast::<i8>(), std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// One row of a level: the ideal, its dp row, its back-link row.
type Job<'a> = (usize, &'a mut [f64], &'a mut [(u32, u8)]);

struct RowCtx<'a, 'g> {
    p: &'a Prepared<'g>,
    lat: &'a Lattice,
    strides: &'a [usize],
    /// Per kind: the states with none of that kind (the lines' starts).
    bases: &'a [Vec<u32>],
    bound: f64,
    ns: usize,
    viability: Option<&'a Viability>,
}

/// The states of one row that one kind's device can reach from a
/// sub-ideal's row, as lines: a line starts at a state with none of the
/// kind and adds one device of it at a time. Only the part of each line
/// from its first to its last live state is walked (`spans`, built per
/// row by [`live_spans`]).
struct Lines<'a> {
    /// Per line with a live state: its first live state and how many
    /// states (one device of the kind more each) up to its last live one.
    spans: &'a [(u32, u32)],
    live: &'a [bool],
    back: usize,
    /// The set's cost on this kind and the sub-ideal's id.
    c: f64,
    sub: u32,
}

impl Lines<'_> {
    /// `row[to + s] = min(row[to + s], max(from(s - back), c))` for every
    /// live state `s` with one device of the kind or more, where `from`
    /// gives the sub-ideal's value and the back-link's code. Along a line,
    /// `from` never grows (a finished row is at most its value with one
    /// device fewer: a device may stay empty), so once it is at most `c`
    /// every later state of the line gets exactly `c`: the line stops
    /// there, and the row's "device left empty" pass carries `c` to the
    /// rest of it. (That state is written even when it is not live; any
    /// value the DP writes is a real chain's, so this only adds one.)
    ///
    /// States before a line's first live state and after its last are
    /// not written: a complete split within the bound passes only through
    /// viable cells (see [`Viability`]), and the one live cell it reaches on
    /// this line comes from its own viable predecessor, so the DP's best
    /// complete split is the same. What is skipped could only feed chains
    /// through cells that no split within the bound crosses. (InceptionV3
    /// training with 8 CPUs: most lines of the 63 states have no live
    /// state, and every line read the sub-ideal's row at least once: a
    /// cache miss per line and pair.)
    #[inline]
    fn relax(
        &self,
        row: &mut [f64],
        crow: &mut [(u32, u8)],
        to: usize,
        from: impl Fn(usize) -> (f64, u8),
    ) {
        for &(first, steps) in self.spans {
            let mut s = first as usize;
            for _ in 0..steps {
                let (v, code) = from(s - self.back);
                let x = to + s;
                if v <= self.c {
                    if self.c < row[x] {
                        row[x] = self.c;
                        crow[x] = (self.sub, code);
                    }
                    break;
                }
                if self.live[s] && v < row[x] {
                    row[x] = v;
                    crow[x] = (self.sub, code);
                }
                s += self.back;
            }
        }
    }
}

/// Per line of `bases` (a kind's lines: stride `back`, `count` steps), the
/// span from its first to its last live state, for lines with one.
fn live_spans(bases: &[u32], live: &[bool], back: usize, count: usize, out: &mut Vec<(u32, u32)>) {
    out.clear();
    for &s0 in bases {
        let s0 = s0 as usize;
        let mut first = None;
        let mut last = 0;
        for k in 1..=count {
            if live[s0 + k * back] {
                first.get_or_insert(k);
                last = k;
            }
        }
        if let Some(first) = first {
            out.push(((s0 + first * back) as u32, (last - first + 1) as u32));
        }
    }
}

/// What one thread keeps between rows. Aligned (and its small vectors
/// padded) to whole cache-line pairs: the fields and the per-kind costs
/// are written for every pair the search tries, and with two workers'
/// data in one line the line bounced between the cores, so two threads
/// did the work of 1.2 (InceptionV3: 24.5 s of CPU on two threads against
/// 15.5 s on one).
#[repr(align(128))]
struct Worker {
    st: SetState,
    /// (ideal, next down edge, unit added to reach it)
    stack: Vec<(u32, u32, u32)>,
    /// The set's sums before each unit of the stack was added.
    saved: Vec<Totals>,
    cost: Vec<f64>,
    /// Per kind: whether the set detaches satellites on it.
    detach: Vec<bool>,
    /// The states of the current row that a split within the bound can
    /// pass through (see [`Viability`]).
    live_mask: Vec<bool>,
    items: Vec<Item>,
    /// Per kind: the sub-ideal states this row's live states come from.
    need: Vec<u64>,
    /// Per kind: the live part of each of its lines in this row.
    spans: Vec<Vec<(u32, u32)>>,
    pairs: u64,
}

impl Worker {
    fn new(p: &Prepared<'_>, ns: usize) -> Self {
        let n = p.ix.graph.nodes.len();
        let outdeg = match &p.satellites {
            Some(sat) => sat.core_outdeg.clone(),
            None => (0..n).map(|i| p.ix.succ.row(i).len() as u32).collect(),
        };
        Worker {
            st: SetState::new(p, outdeg),
            stack: Vec::with_capacity(p.units.len() + 2),
            saved: Vec::with_capacity(p.units.len() + 2),
            cost: padded(vec![0.0; p.kinds.len()]),
            detach: vec![false; p.kinds.len().max(32)],
            live_mask: vec![false; ns],
            items: Vec::new(),
            need: vec![0; p.kinds.len()],
            spans: vec![Vec::new(); p.kinds.len()],
            pairs: 0,
        }
    }
}

/// `v` in an allocation of at least 256 bytes, so that no other thread's
/// data shares the cache lines it is written through.
fn padded(mut v: Vec<f64>) -> Vec<f64> {
    v.reserve_exact(32usize.saturating_sub(v.len()));
    v
}

/// The satellites' knapsack items of the set of units `units` (its
/// groups), priced by `st`: detaching a group costs the transfers of its
/// feeders whose output does not already leave the set.
fn satellite_items(p: &Prepared<'_>, st: &SetState, units: &[u32], items: &mut Vec<Item>) {
    items.clear();
    let Some(sat) = &p.satellites else {
        return;
    };
    for &v in units {
        for &g in &sat.unit_groups[v as usize] {
            let group = &sat.groups[g as usize];
            let cost = group
                .feeders
                .iter()
                .map(|&x| x as usize)
                .filter(|&x| st.succ_in[x] >= st.outdeg[x])
                .map(|x| p.ix.out_cost[x])
                .sum();
            items.push(Item {
                memory: group.memory,
                cost,
                group: g,
            });
        }
    }
}

/// Fill `row` (= dp[j]) and its back-links from the finished rows `done`.
fn row_dp(
    ctx: &RowCtx<'_, '_>,
    w: &mut Worker,
    j: usize,
    done: &[f64],
    row: &mut [f64],
    crow: &mut [(u32, u8)],
) {
    let (p, lat, ns, bound) = (ctx.p, ctx.lat, ctx.ns, ctx.bound);
    let nst = row.len();
    let waiting = nst > ns;
    let kinds = &p.kinds;
    let mut any_live = false;
    for s in 1..ns {
        let live = ctx.viability.is_none_or(|v| v.viable(j, s));
        w.live_mask[s] = live;
        any_live |= live;
    }
    if !any_live {
        // No split within the bound passes through this ideal: its row
        // stays infinite (see `Viability`), and its sub-ideals need no walk.
        return;
    }
    // Per kind, the states of a sub-ideal's row that a live state of this
    // row can come from (one device of the kind fewer): a sub-ideal with
    // none of them viable, for any kind the set can go on, is on no split
    // within the bound through this row, and its row (a cache miss on
    // large state spaces) is not read.
    let with_bits = ctx.viability.is_some_and(|v| v.bits.is_some());
    for (t, k) in kinds.iter().enumerate() {
        let back = ctx.strides[t];
        let mut need = 0u64;
        if with_bits {
            for s in 1..ns {
                if w.live_mask[s] && !(s / back).is_multiple_of(k.count + 1) {
                    need |= 1 << (s - back);
                }
            }
        } else {
            need = u64::MAX;
        }
        w.need[t] = need;
        live_spans(&ctx.bases[t], &w.live_mask, back, k.count, &mut w.spans[t]);
    }
    let sub_bits = ctx.viability.and_then(|v| v.bits.as_deref());
    // Each set `J \ I` is reached once, by removing its units from `J` in
    // decreasing order (a unit's down edges are sorted by unit, and past
    // the unit removed last the walk stops): units are numbered in a
    // topological order, so the largest unit of an up-set of `J` is maximal
    // in `J`, and after it is removed the next largest is maximal in what is
    // left. No mark per visited ideal is needed (a cache miss per edge) and
    // no edge leads to a set seen before.
    w.stack.push((j as u32, lat.down_start[j], u32::MAX));
    while let Some(top) = w.stack.last_mut() {
        let (ideal, pos, added) = *top;
        let edge = (pos < lat.down_start[ideal as usize + 1])
            .then(|| lat.down[pos as usize])
            .filter(|&(_, unit)| unit < added);
        let Some((sub, unit)) = edge else {
            w.stack.pop();
            if added != u32::MAX {
                let saved = w.saved.pop().expect("one saved sum per unit added");
                w.st.remove(added as usize, saved);
            }
            continue;
        };
        top.1 += 1;
        // What the next steps read of `sub` (its down edges, its viable
        // states) is far apart in memory and missed the cache on most
        // pairs; asked for now, it arrives while the unit is added.
        let sub_down = lat.down_start[sub as usize];
        prefetch(lat.down.as_ptr().wrapping_add(sub_down as usize));
        if let Some(b) = sub_bits {
            prefetch(b.as_ptr().wrapping_add(sub as usize));
        }
        let saved = w.st.sums;
        w.st.add(p, unit as usize);
        let st = &w.st.sums;
        let mut any = false;
        let mut items_ready = false;
        for (t, k) in kinds.iter().enumerate() {
            let mut detach = false;
            let mut c = if k.is_cpu {
                st.cpu_time
            } else if st.unsupported > 0 || st.memory > k.memory {
                f64::INFINITY
            } else {
                st.acc_time / k.speed
            };
            any |= c <= bound;
            if !k.is_cpu {
                c += st.comm;
                let all = st.memory.saturating_add(st.satellite_memory);
                if c <= bound && all > k.memory {
                    // detach the cheapest satellites that make it fit
                    if !items_ready {
                        let units: Vec<u32> = w
                            .stack
                            .iter()
                            .map(|e| e.2)
                            .filter(|&u| u != u32::MAX)
                            .chain(std::iter::once(unit))
                            .collect();
                        satellite_items(p, &w.st, &units, &mut w.items);
                        items_ready = true;
                    }
                    c += cover(&mut w.items, all - k.memory, None);
                    detach = true;
                }
            }
            w.cost[t] = c;
            w.detach[t] = detach;
        }
        if !any {
            // every superset of this set is too slow or too big as well
            w.st.remove(unit as usize, saved);
            continue;
        }
        w.pairs += 1;
        // the states a sub-ideal's row must have viable for a kind the set
        // can go on within the bound
        let need = (0..kinds.len())
            .filter(|&t| w.cost[t] <= bound)
            .fold(0u64, |a, t| a | w.need[t]);
        if sub_bits.is_some_and(|b| b[sub as usize] & need == 0) {
            w.saved.push(saved);
            w.stack.push((sub, sub_down, unit));
            continue;
        }
        let irow = &done[sub as usize * nst..sub as usize * nst + nst];
        // with every device, I's best is its least value: nothing to gain past the bound
        let least = if waiting {
            irow[ns - 1].min(irow[nst - 1])
        } else {
            irow[ns - 1]
        };
        if least <= bound {
            #[allow(clippy::needless_range_loop)] // t indexes costs, strides, bases and kinds
            for t in 0..kinds.len() {
                let c = w.cost[t];
                if c > bound {
                    continue;
                }
                let lines = Lines {
                    spans: &w.spans[t],
                    live: &w.live_mask,
                    back: ctx.strides[t],
                    c,
                    sub,
                };
                let code = t as u8;
                if !waiting {
                    lines.relax(row, crow, 0, |q| (irow[q], code));
                } else if kinds[t].is_cpu || w.detach[t] {
                    // a CPU houses what waits (to "nothing waits"); a set
                    // that detaches leaves something waiting
                    let to = if kinds[t].is_cpu { 0 } else { ns };
                    lines.relax(row, crow, to, |q| {
                        let (a, b) = (irow[q], irow[q + ns]);
                        if b < a {
                            (b, code | FROM_WAITING)
                        } else {
                            (a, code)
                        }
                    });
                } else {
                    lines.relax(row, crow, 0, |q| (irow[q], code));
                    lines.relax(row, crow, ns, |q| (irow[q + ns], code | FROM_WAITING));
                }
            }
        }
        w.saved.push(saved);
        w.stack.push((sub, sub_down, unit));
    }
    // leaving a device empty (an empty CPU houses what waits)
    for s in 0..ns {
        for (t, k) in kinds.iter().enumerate() {
            let back = ctx.strides[t];
            if (s / back).is_multiple_of(k.count + 1) {
                continue;
            }
            if row[s - back] < row[s] {
                row[s] = row[s - back];
                crow[s] = (j as u32, t as u8);
            }
            if waiting {
                let from = row[s - back + ns];
                if k.is_cpu {
                    if from < row[s] {
                        row[s] = from;
                        crow[s] = (j as u32, t as u8 | FROM_WAITING);
                    }
                } else if from < row[s + ns] {
                    row[s + ns] = from;
                    crow[s + ns] = (j as u32, t as u8 | FROM_WAITING);
                }
            }
        }
    }
}

/// Which (ideal, state) cells a split with objective at most the bound `B`
/// can pass through. Take any chain whose every load is at most `B`, and
/// its prefix `(J, s)`: the devices counted by `s` hold `J`, the others the
/// rest `R`. An accelerator of speed `σ` holds accelerator time at most
/// `σB` (its load is that time over `σ` plus a non-negative transfer term),
/// and `c` CPUs hold CPU time at most `cB`: all of the CPU-only units of `J`
/// (`U(J)`), and supported units whose accelerator time is at most
/// `K(cB - U(J))`, where `K(b)` is the fractional knapsack (the most
/// accelerator time of supported units of CPU time at most `b`, units
/// cut in fractions: a bound on every real subset). So every cell of such a
/// chain has
///
/// `U(J) <= cB`, `A(J) <= Σ_t a_t σ_t B + K(cB - U(J))`,
///
/// with `A` the accelerator time of supported units, and the same for `R`
/// with the devices not counted by `s`. A cell that fails either side is
/// on no chain within the bound; the DP skips it (and an ideal with no such
/// cell is not walked at all). The optimum is within the bound, so its
/// chain is kept: the DP stays exact.
struct Viability {
    /// `A(J)` and `U(J)` per ideal.
    acc: Vec<f64>,
    cpu_only: Vec<f64>,
    total_acc: f64,
    total_cpu_only: f64,
    /// per state: accelerator capacity `Σ a_t σ_t B` of the counted and of
    /// the other accelerators, and the CPUs counted and not.
    acc_cap: Vec<(f64, f64)>,
    cpus: Vec<(f64, f64)>,
    bound: f64,
    /// Supported units by accelerator time per CPU time, best first:
    /// prefix sums of (CPU time, accelerator time); `free` is the
    /// accelerator time of units with no CPU time.
    knap: Vec<(f64, f64)>,
    free: f64,
    slack: f64,
    /// Per ideal, its viable states as bits (when there are at most 64).
    bits: Option<Vec<u64>>,
    /// Per ideal, accelerator time its devices leave unused for sure
    /// (`spine::StemWaste`; empty without a stem).
    unused: Vec<f64>,
}

impl Viability {
    fn new(p: &Prepared<'_>, lat: &Lattice, strides: &[usize], ns: usize, bound: f64) -> Self {
        let u = &p.units;
        let a_of = |x: usize| {
            if u.accelerator_ok[x] {
                u.accelerator_time[x]
            } else {
                0.0
            }
        };
        let c_of = |x: usize| {
            if u.accelerator_ok[x] {
                0.0
            } else {
                u.cpu_time[x]
            }
        };
        let mut acc = vec![0.0; lat.count];
        let mut cpu_only = vec![0.0; lat.count];
        for j in 1..lat.count {
            let (i, x) = lat.down[lat.down_start[j] as usize];
            acc[j] = acc[i as usize] + a_of(x as usize);
            cpu_only[j] = cpu_only[i as usize] + c_of(x as usize);
        }
        // what the stem's closed segments leave unused (spine.rs): its
        // prefixes are the ideals with no other unit
        let mut unused = Vec::new();
        if let Some(stem) = p
            .stem()
            .map(|stem| crate::spine::stem_waste(stem, u, &p.kinds, bound))
        {
            let mut in_stem = vec![false; u.len()];
            for &x in &stem.units {
                in_stem[x] = true;
            }
            let mut size = vec![0usize; lat.count];
            let mut other = vec![false; lat.count];
            unused = vec![0.0; lat.count];
            for j in 1..lat.count {
                let (i, x) = lat.down[lat.down_start[j] as usize];
                size[j] = size[i as usize] + 1;
                other[j] = other[i as usize] || !in_stem[x as usize];
                unused[j] = if other[j] {
                    stem.whole
                } else {
                    stem.prefix[size[j]]
                };
            }
        }
        let total_acc: f64 = (0..u.len()).map(a_of).sum();
        let total_cpu_only: f64 = (0..u.len()).map(c_of).sum();
        let mut items: Vec<(f64, f64)> = (0..u.len())
            .filter(|&x| u.accelerator_ok[x] && u.accelerator_time[x] > 0.0)
            .map(|x| (u.cpu_time[x], u.accelerator_time[x]))
            .collect();
        let free = items.iter().filter(|it| it.0 <= 0.0).map(|it| it.1).sum();
        items.retain(|it| it.0 > 0.0);
        items.sort_by(|a, b| (b.1 / b.0).total_cmp(&(a.1 / a.0)));
        let mut knap = Vec::with_capacity(items.len() + 1);
        let (mut sc, mut sa) = (0.0, 0.0);
        knap.push((0.0, 0.0));
        for (c, a) in items {
            sc += c;
            sa += a;
            knap.push((sc, sa));
        }
        let mut acc_cap = Vec::with_capacity(ns);
        let mut cpus = Vec::with_capacity(ns);
        for s in 0..ns {
            let (mut used, mut rest, mut cu, mut cr) = (0.0, 0.0, 0.0, 0.0);
            for (t, k) in p.kinds.iter().enumerate() {
                let a = (s / strides[t]) % (k.count + 1);
                let (a, r) = (a as f64, (k.count - a) as f64);
                if k.is_cpu {
                    cu += a;
                    cr += r;
                } else {
                    used += a * k.speed * bound;
                    rest += r * k.speed * bound;
                }
            }
            acc_cap.push((used, rest));
            cpus.push((cu, cr));
        }
        // sums taken in other orders differ by rounding
        let slack = 1e-9 * (total_acc + total_cpu_only + bound) + 1e-12;
        let mut v = Viability {
            acc,
            cpu_only,
            total_acc,
            total_cpu_only,
            acc_cap,
            cpus,
            bound,
            knap,
            free,
            slack,
            bits: None,
            unused,
        };
        if ns <= 64 {
            let bits = (0..lat.count)
                .map(|j| {
                    (0..ns)
                        .filter(|&s| v.viable(j, s))
                        .fold(0u64, |b, s| b | 1 << s)
                })
                .collect();
            v.bits = Some(bits);
        }
        v
    }

    /// `K(b)`: the most accelerator time CPUs with CPU time `b` can take.
    fn knapsack(&self, b: f64) -> f64 {
        if b < 0.0 {
            return f64::NEG_INFINITY;
        }
        let k = &self.knap;
        // last prefix within b
        let n = k.partition_point(|x| x.0 <= b);
        let (c0, a0) = k[n - 1];
        let part = match k.get(n) {
            Some(&(c1, a1)) => (a1 - a0) * (b - c0) / (c1 - c0),
            None => 0.0,
        };
        self.free + a0 + part
    }

    fn side(&self, acc: f64, cpu_only: f64, acc_cap: f64, cpus: f64) -> bool {
        let budget = cpus * self.bound;
        cpu_only <= budget + self.slack
            && acc <= acc_cap + self.knapsack(budget - cpu_only + self.slack) + self.slack
    }

    fn viable(&self, j: usize, s: usize) -> bool {
        let (used, rest) = self.acc_cap[s];
        let (cu, cr) = self.cpus[s];
        let unused = self.unused.get(j).copied().unwrap_or(0.0);
        self.side(self.acc[j], self.cpu_only[j], used - unused, cu)
            && self.side(
                self.total_acc - self.acc[j],
                self.total_cpu_only - self.cpu_only[j],
                rest,
                cr,
            )
    }
}

fn finish(
    p: &Prepared<'_>,
    lat: &Lattice,
    out: DpOut,
    ub: f64,
    solver: &str,
    start: Instant,
) -> Result<(Plan, SolveStats)> {
    let n = p.ix.graph.nodes.len();
    let internal = |what: &str| PartitionError::Unsupported(format!("internal error: {what}"));
    let mut slot = vec![None; n];
    let mut used = vec![0usize; p.kinds.len()];
    // per step in chain order, for the satellites: (slot, groups, detached)
    let mut sat_steps: Vec<(Slot, Vec<u32>, Vec<u32>)> = Vec::new();
    let mut items = Vec::new();
    for step in out.chain.iter().rev() {
        let t = step.kind as usize;
        let kind = &p.kinds[t];
        if step.i == step.j {
            // an empty device; with satellites, an empty CPU may house some
            if p.satellites.is_some() && kind.is_cpu {
                sat_steps.push((kind.slot(used[t]), Vec::new(), Vec::new()));
                used[t] += 1;
            }
            continue;
        }
        let s = kind.slot(used[t]);
        used[t] += 1;
        let units = lat.difference(step.j as usize, step.i as usize);
        for &u in &units {
            for &x in &p.units.members[u] {
                slot[x] = Some(s);
            }
        }
        if let Some(sat) = &p.satellites {
            let groups: Vec<u32> = units
                .iter()
                .flat_map(|&u| sat.unit_groups[u].iter().copied())
                .collect();
            let mut detached = Vec::new();
            let memory = units
                .iter()
                .fold(0u64, |a, &u| a.saturating_add(p.units.memory[u]));
            let all = units
                .iter()
                .fold(memory, |a, &u| a.saturating_add(sat.memory[u]));
            if !kind.is_cpu && all > kind.memory {
                // the set's costs as the DP priced them
                let mut st = SetState::new(p, sat.core_outdeg.clone());
                for &u in &units {
                    st.add(p, u);
                }
                let ids: Vec<u32> = units.iter().map(|&u| u as u32).collect();
                satellite_items(p, &st, &ids, &mut items);
                let c = cover(&mut items, all - kind.memory, Some(&mut detached));
                if !c.is_finite() {
                    return Err(internal("the satellites of a set do not fit"));
                }
            }
            sat_steps.push((s, groups, detached));
        }
    }
    if let Some(sat) = &p.satellites
        && !satellite::place(sat, &mut slot, &sat_steps)
    {
        return Err(internal(
            "satellites wait for a CPU at the end of the chain",
        ));
    }
    let assignment: Vec<Slot> = slot
        .into_iter()
        .map(|s| s.ok_or_else(|| internal("the DP left a node unplaced")))
        .collect::<Result<_>>()?;
    let e = evaluate_indexed(&p.ix, &p.kinds, &assignment)?;
    let mut plan = e.plan;
    plan.optimal = true;
    plan.solver = solver.into();
    Ok((
        plan,
        SolveStats {
            units: p.units.len(),
            ideals: lat.count,
            pairs: out.pairs,
            upper_bound: ub,
            dp_objective: out.best,
            seconds: start.elapsed().as_secs_f64(),
            satellites: p.satellites.as_ref().map_or(0, |s| s.count),
        },
    ))
}
