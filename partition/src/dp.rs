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
//! diagram from `J` (each sub-ideal once, marked by a stamp, no hashing), and
//! the costs of `J \ I` are kept incrementally: times, memory and support are
//! sums, and the communication term is kept per node from the number of its
//! successors inside the set. Times and memory only grow as `I` shrinks, so
//! the search stops where the set is too slow for every kind against an upper
//! bound (the linearized DP's objective for the exact DP, the greedy split's
//! for the linearized DP) or too big for every accelerator. Pruning only
//! drops pairs that no split with objective at most the bound can use, so the
//! result stays exact.

use std::collections::HashMap;
use std::time::Instant;

use hetero_core::placement::{Cluster, Graph, Placement, Plan, Slot, TwoLevelInterconnect};

use crate::eval::{checked_interconnect, evaluate_indexed, evaluate_with};
use crate::problem::{Indexed, Kind, Units, kinds, memory_vacuous};
use crate::{PartitionError, Result};

/// What a solver did, for reports.
#[derive(Debug, Clone, PartialEq)]
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
}

/// Called as the exact DP goes: (ideals done, ideals in all).
pub type ProgressFn = dyn Fn(usize, usize) + Send + Sync;

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
}

impl std::fmt::Debug for ExactDp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExactDp")
            .field("ideal_limit", &self.ideal_limit)
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl Default for ExactDp {
    fn default() -> Self {
        ExactDp {
            ideal_limit: 3_000_000,
            threads: 0,
            progress: None,
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
}

impl Prepared<'_> {
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
        let lin_value = match run_dp(&p, &linear, greedy_ub, 1, None) {
            Ok((v, _, _)) => v,
            Err(PartitionError::Infeasible(_)) => f64::INFINITY,
            Err(e) => return Err(e),
        };
        let lattice = Lattice::ideals(&p.units, self.ideal_limit)?;
        // The linearized DP's split is a contiguous split: a valid bound.
        let ub = lin_value;
        let (value, chain, pairs) = run_dp(
            &p,
            &lattice,
            ub,
            self.worker_threads(),
            self.progress.as_deref(),
        )?;
        finish(&p, &lattice, (value, pairs), chain, ub, "exact-dp", start)
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
        let (value, chain, pairs) = run_dp(&p, &lattice, ub, 1, None)?;
        finish(&p, &lattice, (value, pairs), chain, ub, "linear-dp", start)
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

    fn ideals(units: &Units, limit: usize) -> Result<Self> {
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
        up.sort_unstable();
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
    comm: f64,
    acc_time: f64,
    cpu_time: f64,
    memory: u64,
    unsupported: u32,
}

impl SetState {
    fn pays(&self, u: usize) -> bool {
        if self.in_set[u] {
            self.succ_in[u] < self.outdeg[u]
        } else {
            self.succ_in[u] > 0
        }
    }

    fn add(&mut self, p: &Prepared<'_>, unit: usize) {
        let u = &p.units;
        self.acc_time += u.accelerator_time[unit];
        self.cpu_time += u.cpu_time[unit];
        self.memory = self.memory.saturating_add(u.memory[unit]);
        self.unsupported += u32::from(!u.accelerator_ok[unit]);
        for &x in &u.members[unit] {
            let before = self.pays(x);
            self.in_set[x] = true;
            let after = self.pays(x);
            self.comm +=
                (f64::from(u8::from(after)) - f64::from(u8::from(before))) * p.ix.out_cost[x];
            for &y in p.ix.pred.row(x) {
                let before = self.pays(y);
                self.succ_in[y] += 1;
                let after = self.pays(y);
                self.comm +=
                    (f64::from(u8::from(after)) - f64::from(u8::from(before))) * p.ix.out_cost[y];
            }
        }
    }

    fn remove(&mut self, p: &Prepared<'_>, unit: usize) {
        let u = &p.units;
        self.acc_time -= u.accelerator_time[unit];
        self.cpu_time -= u.cpu_time[unit];
        self.memory = self.memory.saturating_sub(u.memory[unit]);
        self.unsupported -= u32::from(!u.accelerator_ok[unit]);
        for &x in u.members[unit].iter().rev() {
            for &y in p.ix.pred.row(x) {
                let before = self.pays(y);
                self.succ_in[y] -= 1;
                let after = self.pays(y);
                self.comm +=
                    (f64::from(u8::from(after)) - f64::from(u8::from(before))) * p.ix.out_cost[y];
            }
            let before = self.pays(x);
            self.in_set[x] = false;
            let after = self.pays(x);
            self.comm +=
                (f64::from(u8::from(after)) - f64::from(u8::from(before))) * p.ix.out_cost[x];
        }
    }
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

/// The DP pruned by `ub`; if no split of the lattice reaches `ub` (the bound
/// came from a split outside it), again without a bound.
fn run_dp(
    p: &Prepared<'_>,
    lat: &Lattice,
    ub: f64,
    threads: usize,
    progress: Option<&ProgressFn>,
) -> Result<(f64, Vec<Step>, u64)> {
    match run_dp_bounded(p, lat, ub, threads, progress) {
        Err(PartitionError::Infeasible(_)) if ub.is_finite() => {
            run_dp_bounded(p, lat, f64::INFINITY, threads, progress)
        }
        other => other,
    }
}

fn run_dp_bounded(
    p: &Prepared<'_>,
    lat: &Lattice,
    ub: f64,
    threads: usize,
    progress: Option<&ProgressFn>,
) -> Result<(f64, Vec<Step>, u64)> {
    let kinds = &p.kinds;
    if kinds.len() >= NO_CHOICE as usize {
        return Err(PartitionError::Unsupported(format!(
            "{} device kinds; at most 254 are supported",
            kinds.len()
        )));
    }
    let mut strides = Vec::with_capacity(kinds.len());
    let mut ns = 1usize;
    for k in kinds {
        strides.push(ns);
        ns = ns.checked_mul(k.count + 1).ok_or_else(|| {
            PartitionError::Unsupported("too many devices for the DP's state space".into())
        })?;
    }
    let cells = ns
        .checked_mul(lat.count)
        .filter(|&c| c <= 1 << 31)
        .ok_or_else(|| {
            PartitionError::Unsupported(format!(
                "{} ideals x {ns} device states is too large for the DP table",
                lat.count
            ))
        })?;
    let with_kind: Vec<Vec<u32>> = (0..kinds.len())
        .map(|t| {
            (0..ns)
                .filter(|&s| (s / strides[t]) % (kinds[t].count + 1) > 0)
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
    dp[..ns].fill(0.0);
    let ctx = RowCtx {
        p,
        lat,
        strides: &strides,
        with_kind: &with_kind,
        bound,
        ns,
    };
    let threads = threads.max(1);
    let mut workers: Vec<Worker> = (0..threads).map(|_| Worker::new(p, lat.count)).collect();
    // Ideals of one size do not depend on each other: each level is split
    // over the workers (rows of one level are contiguous, ids grow with size).
    let levels = lat.levels();
    for w in levels.windows(2) {
        let (lo, hi) = (w[0].max(1), w[1]);
        if lo >= hi {
            continue;
        }
        let (done, rest) = dp.split_at_mut(lo * ns);
        let level = &mut rest[..(hi - lo) * ns];
        let (_, crest) = choice.split_at_mut(lo * ns);
        let clevel = &mut crest[..(hi - lo) * ns];
        if threads == 1 || hi - lo < 4 * threads {
            for (r, (row, crow)) in level.chunks_mut(ns).zip(clevel.chunks_mut(ns)).enumerate() {
                row_dp(&ctx, &mut workers[0], lo + r, done, row, crow);
            }
        } else {
            // one row per job, taken from a shared queue as threads free up
            let mut jobs: Vec<Job<'_>> = level
                .chunks_mut(ns)
                .zip(clevel.chunks_mut(ns))
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
    let value = dp[full * ns + ns - 1];
    if !value.is_finite() {
        return Err(PartitionError::Infeasible(
            "no contiguous split satisfies the memory and accelerator-support constraints (or \
             the devices are too few for the groups that must stay together)"
                .into(),
        ));
    }
    let mut chain = Vec::new();
    let (mut j, mut s) = (full, ns - 1);
    while j != 0 {
        let (i, t) = choice[j * ns + s];
        if t == NO_CHOICE {
            return Err(PartitionError::Unsupported(
                "internal error: the DP's back-links are incomplete".into(),
            ));
        }
        chain.push(Step {
            j: j as u32,
            i,
            kind: t,
        });
        s -= strides[t as usize];
        j = i as usize;
    }
    Ok((value, chain, pairs))
}

/// One row of a level: the ideal, its dp row, its back-link row.
type Job<'a> = (usize, &'a mut [f64], &'a mut [(u32, u8)]);

struct RowCtx<'a, 'g> {
    p: &'a Prepared<'g>,
    lat: &'a Lattice,
    strides: &'a [usize],
    with_kind: &'a [Vec<u32>],
    bound: f64,
    ns: usize,
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
    stamp: Vec<u32>,
    /// (ideal, next down edge, unit added to reach it)
    stack: Vec<(u32, u32, u32)>,
    cost: Vec<f64>,
    pairs: u64,
}

impl Worker {
    fn new(p: &Prepared<'_>, ideals: usize) -> Self {
        let n = p.ix.graph.nodes.len();
        Worker {
            st: SetState {
                in_set: vec![false; n],
                succ_in: vec![0; n],
                outdeg: (0..n).map(|i| p.ix.succ.row(i).len() as u32).collect(),
                comm: 0.0,
                acc_time: 0.0,
                cpu_time: 0.0,
                memory: 0,
                unsupported: 0,
            },
            stamp: vec![u32::MAX; ideals],
            stack: Vec::with_capacity(p.units.len() + 2),
            cost: padded(vec![0.0; p.kinds.len()]),
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
    let kinds = &p.kinds;
    w.stamp[j] = j as u32;
    w.stack.push((j as u32, lat.down_start[j], u32::MAX));
    while let Some(top) = w.stack.last_mut() {
        let (ideal, pos, added) = *top;
        if pos == lat.down_start[ideal as usize + 1] {
            w.stack.pop();
            if added != u32::MAX {
                w.st.remove(p, added as usize);
            }
            continue;
        }
        top.1 += 1;
        let (sub, unit) = lat.down[pos as usize];
        if w.stamp[sub as usize] == j as u32 {
            continue;
        }
        w.stamp[sub as usize] = j as u32;
        w.st.add(p, unit as usize);
        let st = &w.st;
        let mut any = false;
        for (t, k) in kinds.iter().enumerate() {
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
            }
            w.cost[t] = c;
        }
        if !any {
            // every superset of this set is too slow or too big as well
            w.st.remove(p, unit as usize);
            continue;
        }
        w.pairs += 1;
        let irow = &done[sub as usize * ns..sub as usize * ns + ns];
        // with every device, I's best is its least value: nothing to gain past the bound
        if irow[ns - 1] <= bound {
            for (t, states) in ctx.with_kind.iter().enumerate() {
                let c = w.cost[t];
                if c > bound {
                    continue;
                }
                let back = ctx.strides[t];
                for &s in states {
                    let s = s as usize;
                    if c >= row[s] {
                        continue;
                    }
                    let cand = irow[s - back].max(c);
                    if cand < row[s] {
                        row[s] = cand;
                        crow[s] = (sub, t as u8);
                    }
                }
            }
        }
        w.stack.push((sub, lat.down_start[sub as usize], unit));
    }
    // leaving a device empty
    for s in 0..ns {
        for (t, k) in kinds.iter().enumerate() {
            let back = ctx.strides[t];
            if !(s / back).is_multiple_of(k.count + 1) && row[s - back] < row[s] {
                row[s] = row[s - back];
                crow[s] = (j as u32, t as u8);
            }
        }
    }
}

fn finish(
    p: &Prepared<'_>,
    lat: &Lattice,
    (value, pairs): (f64, u64),
    chain: Vec<Step>,
    ub: f64,
    solver: &str,
    start: Instant,
) -> Result<(Plan, SolveStats)> {
    let n = p.ix.graph.nodes.len();
    let mut slot = vec![None; n];
    let mut used = vec![0usize; p.kinds.len()];
    for step in chain.iter().rev() {
        if step.i == step.j {
            continue;
        }
        let t = step.kind as usize;
        let s = p.kinds[t].slot(used[t]);
        used[t] += 1;
        for u in lat.difference(step.j as usize, step.i as usize) {
            for &x in &p.units.members[u] {
                slot[x] = Some(s);
            }
        }
    }
    let assignment: Vec<Slot> = slot
        .into_iter()
        .map(|s| {
            s.ok_or_else(|| {
                PartitionError::Unsupported("internal error: the DP left a node unplaced".into())
            })
        })
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
            pairs,
            upper_bound: ub,
            dp_objective: value,
            seconds: start.elapsed().as_secs_f64(),
        },
    ))
}
