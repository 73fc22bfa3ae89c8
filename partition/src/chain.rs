//! Exact placement of a chain of units (a model's layers) on distinct
//! devices, each with its *own measured* time and memory per unit.
//!
//! The graph solvers ([`ExactDp`](crate::ExactDp), the integer programs)
//! take one time per node scaled by a speed factor per accelerator class;
//! a real model measured on real devices is not that regular (a GPU runs
//! the vocabulary-sized head relatively faster than a CPU does). For a
//! chain this module solves the general case exactly:
//!
//! - a plan gives each used device one non-empty range of consecutive
//!   units, the ranges covering the chain in order (a pipeline);
//! - a stage's load is the time of its units on its device, plus the time
//!   for its device to receive the activations entering the range and to
//!   send those leaving it (`boundary[d][i]`: the cut after unit `i`, as
//!   seen from device `d`; activations move through the host, so each
//!   side's cost depends on its own link only);
//! - the objective is the largest load (the pipeline's time per batch);
//!   a stage must fit its device's memory (`bytes[d][i]` per unit, plus
//!   `split_last_bytes[d]` on the last stage of a plan of two or more:
//!   a tied embedding's second copy).
//!
//! Because a stage's load and memory depend only on its own device and
//! range, never on its neighbours, the order of the devices along the
//! chain does not matter, and the DP over (units covered, set of devices
//! used) is exact: `best(S, i)` = the least bottleneck covering units
//! `0..i` with exactly the devices of `S`, one range each, is
//! `min over d in S, j < i of max(best(S - d, j), load(d, j..i))`.
//! `2^D * D * n^2 / 2` steps: 8 devices and 100 layers is 10M.
//!
//! Two variants on the same costs: [`best_chain_split_in_order`] (every
//! device holds a range, in the given order: stages in separate processes
//! joined in rank order) and [`best_chain_pipelines`] (several pipelines
//! side by side on disjoint device groups, maximising summed throughput).
//!
//! [`equal_split`] and [`memory_proportional_split`] are the baselines
//! (llama.cpp's `--split-mode layer` splits in proportion to each
//! device's free memory); [`evaluate_chain`] scores any split the same way.

use std::ops::Range;

use crate::{PartitionError, Result};

/// Devices beyond which the DP's `2^D` sets are too many.
pub const MAX_CHAIN_DEVICES: usize = 16;

/// A chain of units on a set of devices, with per-device costs.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainProblem {
    /// `time[d][i]`: seconds of unit `i` on device `d`.
    pub time: Vec<Vec<f64>>,
    /// `bytes[d][i]`: memory unit `i` needs on device `d`.
    pub bytes: Vec<Vec<u64>>,
    /// `memory[d]`: what device `d` may hold.
    pub memory: Vec<u64>,
    /// `boundary[d][i]` (`i < n - 1`): seconds for device `d` to receive
    /// or send the activations of the cut after unit `i`.
    pub boundary: Vec<Vec<f64>>,
    /// Bytes added to the last stage's device when the plan has two or
    /// more stages.
    pub split_last_bytes: Vec<u64>,
}

/// One stage of a chain plan.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainStage {
    pub device: usize,
    pub units: Range<usize>,
    /// Compute plus boundary time.
    pub load: f64,
    pub bytes: u64,
}

/// A split of the chain: stages in chain order.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainPlan {
    pub stages: Vec<ChainStage>,
    /// The largest stage load.
    pub objective: f64,
    /// Every stage fits its device's memory.
    pub fits: bool,
}

impl ChainProblem {
    /// Devices.
    pub fn devices(&self) -> usize {
        self.time.len()
    }

    /// Units.
    pub fn units(&self) -> usize {
        self.time.first().map_or(0, Vec::len)
    }

    /// Shapes and numbers checked, naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        let (dn, n) = (self.devices(), self.units());
        let bad = |what: String, reason: String| PartitionError::Malformed { what, reason };
        if dn == 0 || n == 0 {
            return Err(bad(
                "chain".into(),
                format!("needs at least one device and one unit (has {dn} and {n})"),
            ));
        }
        if dn > MAX_CHAIN_DEVICES {
            return Err(bad(
                "chain".into(),
                format!("{dn} devices; the exact chain DP takes at most {MAX_CHAIN_DEVICES}"),
            ));
        }
        for d in 0..dn {
            let rows = [
                ("time", self.time[d].len(), n),
                ("bytes", self.bytes.get(d).map_or(0, Vec::len), n),
                ("boundary", self.boundary.get(d).map_or(0, Vec::len), n - 1),
            ];
            for (what, got, want) in rows {
                if got != want {
                    return Err(bad(
                        format!("chain {what}[{d}]"),
                        format!("has {got} entries, expected {want}"),
                    ));
                }
            }
            for (what, v) in self.time[d]
                .iter()
                .map(|&t| ("time", t))
                .chain(self.boundary[d].iter().map(|&t| ("boundary", t)))
            {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(PartitionError::BadNumber {
                        field: format!("chain {what}[{d}]"),
                        value: v,
                    });
                }
            }
        }
        if self.memory.len() != dn || self.split_last_bytes.len() != dn {
            return Err(bad(
                "chain memory / split_last_bytes".into(),
                format!("need one entry per device ({dn})"),
            ));
        }
        Ok(())
    }

    /// Load and bytes of `units` on device `d` as a stage of a plan with
    /// more than one stage when `split`.
    fn stage(&self, d: usize, units: Range<usize>, split: bool) -> ChainStage {
        let n = self.units();
        let mut load: f64 = self.time[d][units.clone()].iter().sum();
        if units.start > 0 {
            load += self.boundary[d][units.start - 1];
        }
        if units.end < n {
            load += self.boundary[d][units.end - 1];
        }
        let mut bytes: u64 = self.bytes[d][units.clone()].iter().sum();
        if split && units.end == n {
            bytes += self.split_last_bytes[d];
        }
        ChainStage {
            device: d,
            units,
            load,
            bytes,
        }
    }
}

/// Score a split given as `(device, units)` stages in chain order.
pub fn evaluate_chain(
    problem: &ChainProblem,
    stages: &[(usize, Range<usize>)],
) -> Result<ChainPlan> {
    problem.validate()?;
    let n = problem.units();
    let mut next = 0;
    let mut used = vec![false; problem.devices()];
    for (d, r) in stages {
        if *d >= problem.devices() || used[*d] || r.start != next || r.end <= r.start || r.end > n {
            return Err(PartitionError::BadSplit(format!(
                "stage on device {d} with units {r:?}: stages must use distinct devices of the \
                 problem and cover units 0..{n} in order, each non-empty"
            )));
        }
        used[*d] = true;
        next = r.end;
    }
    if next != n {
        return Err(PartitionError::BadSplit(format!(
            "the stages cover units 0..{next} of 0..{n}"
        )));
    }
    let split = stages.len() > 1;
    let stages: Vec<ChainStage> = stages
        .iter()
        .map(|(d, r)| problem.stage(*d, r.clone(), split))
        .collect();
    Ok(plan_of(problem, stages))
}

fn plan_of(problem: &ChainProblem, stages: Vec<ChainStage>) -> ChainPlan {
    let objective = stages.iter().map(|s| s.load).fold(0.0, f64::max);
    let fits = stages.iter().all(|s| s.bytes <= problem.memory[s.device]);
    ChainPlan {
        stages,
        objective,
        fits,
    }
}

/// The split with the least bottleneck that fits every device (ties: the
/// fewest stages). [`PartitionError::Infeasible`] when none fits.
pub fn best_chain_split(problem: &ChainProblem) -> Result<ChainPlan> {
    let table = ChainTable::new(problem)?;
    let (dn, n) = (problem.devices(), problem.units());
    // The least bottleneck over all sets; ties to the fewest stages.
    let mut pick: Option<(f64, u32, usize)> = None;
    for set in 1..1usize << dn {
        let v = table.best(set);
        if !v.is_finite() {
            continue;
        }
        let k = set.count_ones();
        if pick.is_none_or(|(bv, bk, _)| v < bv || (v == bv && k < bk)) {
            pick = Some((v, k, set));
        }
    }
    let Some((_, _, set)) = pick else {
        return Err(PartitionError::Infeasible(format!(
            "no split of the {n} units over the {dn} devices fits their memory"
        )));
    };
    table.plan(problem, set)
}

/// [`best_chain_split`] with exactly `stages` devices used (the caller's
/// costs may depend on the number of stages: a pipeline keeps a group of
/// sequences per stage in flight, so each stage holds the KV cache of
/// `stages` groups). [`PartitionError::Infeasible`] when no such split
/// fits.
pub fn best_chain_split_stages(problem: &ChainProblem, stages: usize) -> Result<ChainPlan> {
    let table = ChainTable::new(problem)?;
    let dn = problem.devices();
    let pick = (1..1usize << dn)
        .filter(|set| set.count_ones() as usize == stages)
        .map(|set| (table.best(set), set))
        .filter(|(v, _)| v.is_finite())
        .min_by(|a, b| a.0.total_cmp(&b.0));
    match pick {
        Some((_, set)) => table.plan(problem, set),
        None => Err(PartitionError::Infeasible(format!(
            "no split of the {} units over exactly {stages} of the {dn} devices fits their memory",
            problem.units()
        ))),
    }
}

/// Several pipelines side by side (replicas of pipelines): disjoint groups
/// of devices, each running the whole chain as its own pipeline on its
/// own work, chosen to maximise the summed throughput `sum 1 / bottleneck`
/// (every pipeline runs the same batch per step). A group of one device
/// is a data-parallel replica; one group is [`best_chain_split`]'s kind of
/// plan. Devices that add nothing are left unused. Ties: fewer groups,
/// then fewer devices. [`PartitionError::Infeasible`] when no device set
/// holds the chain.
///
/// Exact: a group's best pipeline depends only on its own devices
/// (`best(S)` of the chain table, over exactly the devices of `S`), so
/// `g(S)` = the best total over the devices of `S` is `max(g(S - {d}),
/// max over T containing d of rate(T) + g(S - T))` for `d` the lowest
/// device of `S` (it is unused, or in some group `T`). `3^D` steps.
pub fn best_chain_pipelines(problem: &ChainProblem) -> Result<Vec<ChainPlan>> {
    best_chain_pipelines_sized(std::slice::from_ref(problem))
}

/// [`best_chain_pipelines`] where a pipeline's costs depend on its number
/// of stages: a group of `k` devices is planned on `problems[min(k,
/// len) - 1]` (same devices and units in each; e.g. the KV cache of `k`
/// groups of sequences in flight per stage).
pub fn best_chain_pipelines_sized(problems: &[ChainProblem]) -> Result<Vec<ChainPlan>> {
    let Some(first) = problems.first() else {
        return Err(PartitionError::Malformed {
            what: "pipelines".into(),
            reason: "no problem given".into(),
        });
    };
    let (dn, n) = (first.devices(), first.units());
    if problems.iter().any(|p| p.devices() != dn || p.units() != n) {
        return Err(PartitionError::Malformed {
            what: "pipelines".into(),
            reason: "the problems per pipeline size differ in devices or units".into(),
        });
    }
    let tables = problems
        .iter()
        .map(ChainTable::new)
        .collect::<Result<Vec<_>>>()?;
    let sized = |set: usize| {
        let k = (set.count_ones() as usize).min(problems.len()) - 1;
        (&tables[k], &problems[k])
    };
    let sets = 1usize << dn;
    let rate = |set: usize| {
        let b = sized(set).0.best(set);
        if b.is_finite() {
            // a zero-time pipeline would be infinitely fast: count it as
            // very fast but keep the sums finite
            1.0 / b.max(1e-300)
        } else {
            0.0
        }
    };
    // total[S], groups[S], devices[S], and the group taken with S's
    // lowest device (0: none).
    let mut total = vec![0.0f64; sets];
    let mut count = vec![(0u32, 0u32); sets];
    let mut take = vec![0usize; sets];
    for s in 1..sets {
        let low = s & s.wrapping_neg();
        let rest = s & !low;
        // the lowest device unused
        let (mut best, mut best_count, mut best_take) = (total[rest], count[rest], 0usize);
        // or in a group T: every subset of `rest`, with `low` added
        let mut sub = rest;
        loop {
            let t = sub | low;
            let r = rate(t);
            if r > 0.0 {
                let v = r + total[s & !t];
                let c = (count[s & !t].0 + 1, count[s & !t].1 + t.count_ones());
                let better =
                    v > best * (1.0 + 1e-12) + 0.0 || (v >= best * (1.0 - 1e-12) && c < best_count);
                if better {
                    best = v;
                    best_count = c;
                    best_take = t;
                }
            }
            if sub == 0 {
                break;
            }
            sub = (sub - 1) & rest;
        }
        total[s] = best;
        count[s] = best_count;
        take[s] = best_take;
    }
    let mut plans = Vec::new();
    let mut s = sets - 1;
    while s != 0 {
        let t = take[s];
        if t == 0 {
            s &= s - 1; // lowest device unused
        } else {
            let (table, problem) = sized(t);
            plans.push(table.plan(problem, t)?);
            s &= !t;
        }
    }
    if plans.is_empty() {
        return Err(PartitionError::Infeasible(format!(
            "no pipeline of the {n} units over the {dn} devices fits their memory"
        )));
    }
    Ok(plans)
}

/// The chain DP's table: `best(S)` = the least bottleneck covering the
/// whole chain with exactly the devices of `S`, one range each.
struct ChainTable {
    n: usize,
    best: Vec<f64>,
    /// The (device, start) of the stage ending at `i` for `(set, i)`.
    from: Vec<(usize, usize)>,
}

impl ChainTable {
    fn new(problem: &ChainProblem) -> Result<Self> {
        problem.validate()?;
        let (dn, n) = (problem.devices(), problem.units());
        let sets = 1usize << dn;
        // Prefix sums per device.
        let pt: Vec<Vec<f64>> = problem
            .time
            .iter()
            .map(|t| {
                std::iter::once(0.0)
                    .chain(t.iter().scan(0.0, |a, &x| {
                        *a += x;
                        Some(*a)
                    }))
                    .collect()
            })
            .collect();
        let pb: Vec<Vec<u64>> = problem
            .bytes
            .iter()
            .map(|b| {
                std::iter::once(0u64)
                    .chain(b.iter().scan(0u64, |a, &x| {
                        *a = a.saturating_add(x);
                        Some(*a)
                    }))
                    .collect()
            })
            .collect();
        let load = |d: usize, j: usize, i: usize| -> f64 {
            let mut l = pt[d][i] - pt[d][j];
            if j > 0 {
                l += problem.boundary[d][j - 1];
            }
            if i < n {
                l += problem.boundary[d][i - 1];
            }
            l
        };
        // best[set][i], and the (device, start) of the stage ending at i.
        let mut best = vec![f64::INFINITY; sets * (n + 1)];
        let mut from = vec![(usize::MAX, usize::MAX); sets * (n + 1)];
        best[0] = 0.0;
        // Sets in increasing order: every subset of a set comes before it.
        for set in 0..sets {
            for j in 0..n {
                let base = best[set * (n + 1) + j];
                if !base.is_finite() {
                    continue;
                }
                for d in (0..dn).filter(|&d| set & (1 << d) == 0) {
                    let next_set = set | (1 << d);
                    for i in j + 1..=n {
                        let mut bytes = pb[d][i] - pb[d][j];
                        if i == n && j > 0 {
                            bytes = bytes.saturating_add(problem.split_last_bytes[d]);
                        }
                        if bytes > problem.memory[d] {
                            if pb[d][i] - pb[d][j] > problem.memory[d] {
                                break; // longer ranges hold more
                            }
                            continue;
                        }
                        let v = base.max(load(d, j, i));
                        let at = next_set * (n + 1) + i;
                        if v < best[at] {
                            best[at] = v;
                            from[at] = (d, j);
                        }
                    }
                }
            }
        }
        Ok(ChainTable { n, best, from })
    }

    fn best(&self, set: usize) -> f64 {
        self.best[set * (self.n + 1) + self.n]
    }

    /// The plan behind `best(set)` (finite).
    fn plan(&self, problem: &ChainProblem, mut set: usize) -> Result<ChainPlan> {
        let n = self.n;
        let mut stages = Vec::new();
        let mut i = n;
        while i > 0 {
            let (d, j) = self.from[set * (n + 1) + i];
            stages.push((d, j..i));
            set &= !(1 << d);
            i = j;
        }
        stages.reverse();
        evaluate_chain(problem, &stages)
    }
}

/// The split with the least bottleneck that fits when **every device,
/// in the given order, holds one non-empty range** (devices in separate
/// processes joined into a line in rank order: the first holds the chain's
/// start, each passes to the next). [`PartitionError::Infeasible`] when
/// no such split fits, or there are more devices than units.
///
/// `best[k][i]` = the least bottleneck covering units `0..i` with devices
/// `0..k`, one range each, is `min over j < i of max(best[k-1][j],
/// load(k-1, j..i))`: the last device's range is `j..i` for some `j`, and
/// what comes before is a split of `0..j` over the devices before it,
/// whose best is independent of the last range. `D * n^2 / 2` steps.
pub fn best_chain_split_in_order(problem: &ChainProblem) -> Result<ChainPlan> {
    problem.validate()?;
    let (dn, n) = (problem.devices(), problem.units());
    if dn > n {
        return Err(PartitionError::Infeasible(format!(
            "{dn} devices in order, one range each, need at least {dn} units; the chain has {n}"
        )));
    }
    // best[k * (n + 1) + i], and where the range of device k - 1 starts.
    let mut best = vec![f64::INFINITY; (dn + 1) * (n + 1)];
    let mut from = vec![usize::MAX; (dn + 1) * (n + 1)];
    best[0] = 0.0;
    let split = dn > 1;
    for k in 1..=dn {
        let d = k - 1;
        for i in k..=n {
            for j in k - 1..i {
                let before = best[(k - 1) * (n + 1) + j];
                if !before.is_finite() {
                    continue;
                }
                let stage = problem.stage(d, j..i, split);
                let last = i == n;
                if stage.bytes > problem.memory[d] || (last && k != dn) {
                    continue;
                }
                let v = before.max(stage.load);
                if v < best[k * (n + 1) + i] {
                    best[k * (n + 1) + i] = v;
                    from[k * (n + 1) + i] = j;
                }
            }
        }
    }
    if !best[dn * (n + 1) + n].is_finite() {
        return Err(PartitionError::Infeasible(format!(
            "no split of the {n} units over the {dn} devices in order, one range each, fits              their memory"
        )));
    }
    let mut stages = Vec::with_capacity(dn);
    let mut i = n;
    for k in (1..=dn).rev() {
        let j = from[k * (n + 1) + i];
        stages.push((k - 1, j..i));
        i = j;
    }
    stages.reverse();
    evaluate_chain(problem, &stages)
}

/// Every device, in the given order, gets `n / D` units (the first
/// `n % D` one more); devices beyond the units get none.
pub fn equal_split(problem: &ChainProblem) -> Result<ChainPlan> {
    let weights = vec![1.0; problem.devices()];
    proportional_split(problem, &weights)
}

/// Units in proportion to each device's memory, in the given order
/// (llama.cpp's layer split by free memory), by largest remainders.
pub fn memory_proportional_split(problem: &ChainProblem) -> Result<ChainPlan> {
    let weights: Vec<f64> = problem.memory.iter().map(|&m| m as f64).collect();
    proportional_split(problem, &weights)
}

fn proportional_split(problem: &ChainProblem, weights: &[f64]) -> Result<ChainPlan> {
    problem.validate()?;
    let n = problem.units();
    let total: f64 = weights.iter().sum();
    if total.is_nan() || total <= 0.0 {
        return Err(PartitionError::Infeasible("every weight is zero".into()));
    }
    let shares: Vec<f64> = weights.iter().map(|w| w / total * n as f64).collect();
    let mut counts: Vec<usize> = shares.iter().map(|s| s.floor() as usize).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        (shares[b] - shares[b].floor()).total_cmp(&(shares[a] - shares[a].floor()))
    });
    let mut left = n - counts.iter().sum::<usize>();
    for &d in order.iter().cycle() {
        if left == 0 {
            break;
        }
        counts[d] += 1;
        left -= 1;
    }
    let mut stages = Vec::new();
    let mut start = 0;
    for (d, &c) in counts.iter().enumerate() {
        if c > 0 {
            stages.push((d, start..start + c));
            start += c;
        }
    }
    evaluate_chain(problem, &stages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(dn: usize, n: usize, seed: u64) -> ChainProblem {
        let mut s = seed;
        let mut next = move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as f64 / (1u64 << 31) as f64
        };
        let time = (0..dn)
            .map(|_| (0..n).map(|_| next() * 10.0).collect())
            .collect();
        let bytes = (0..dn)
            .map(|_| (0..n).map(|_| (next() * 100.0) as u64).collect())
            .collect();
        let memory = (0..dn).map(|_| (next() * 400.0) as u64 + 50).collect();
        let boundary = (0..dn)
            .map(|_| (0..n - 1).map(|_| next() * 3.0).collect())
            .collect();
        let split_last_bytes = (0..dn).map(|_| (next() * 60.0) as u64).collect();
        ChainProblem {
            time,
            bytes,
            memory,
            boundary,
            split_last_bytes,
        }
    }

    /// Every ordered choice of distinct devices and every composition of
    /// the units over them.
    fn brute(p: &ChainProblem) -> Option<f64> {
        brute_stages(p, None)
    }

    /// [`brute`] over the plans of exactly `count` stages (any: `None`).
    fn brute_stages(p: &ChainProblem, count: Option<usize>) -> Option<f64> {
        fn go(
            p: &ChainProblem,
            count: Option<usize>,
            start: usize,
            used: &mut Vec<usize>,
            stages: &mut Vec<(usize, Range<usize>)>,
            best: &mut Option<f64>,
        ) {
            let n = p.units();
            if start == n {
                if count.is_some_and(|k| k != stages.len()) {
                    return;
                }
                let plan = evaluate_chain(p, stages).expect("valid split");
                if plan.fits && best.is_none_or(|b| plan.objective < b) {
                    *best = Some(plan.objective);
                }
                return;
            }
            for d in 0..p.devices() {
                if used.contains(&d) {
                    continue;
                }
                for end in start + 1..=n {
                    used.push(d);
                    stages.push((d, start..end));
                    go(p, count, end, used, stages, best);
                    stages.pop();
                    used.pop();
                }
            }
        }
        let mut best = None;
        go(p, count, 0, &mut Vec::new(), &mut Vec::new(), &mut best);
        best
    }

    #[test]
    fn dp_with_a_stage_count_equals_brute_force() {
        let mut checked = 0;
        for seed in 0..300u64 {
            let dn = 1 + seed as usize % 4;
            let n = 1 + (seed as usize / 4) % 6;
            let mut p = problem(dn, n, seed);
            p.memory.iter_mut().for_each(|m| *m *= 2);
            for k in 1..=dn {
                let want = brute_stages(&p, Some(k));
                match best_chain_split_stages(&p, k) {
                    Ok(plan) => {
                        assert!(plan.fits && plan.stages.len() == k, "seed {seed} k {k}");
                        let w = want.expect("brute force finds one");
                        assert!(
                            (plan.objective - w).abs() <= 1e-9 * w.max(1.0),
                            "seed {seed}"
                        );
                        checked += 1;
                    }
                    Err(PartitionError::Infeasible(_)) => assert_eq!(want, None, "seed {seed}"),
                    Err(e) => panic!("seed {seed}: {e}"),
                }
            }
        }
        assert!(checked > 300, "only {checked} feasible cases");
    }

    #[test]
    fn dp_equals_brute_force_and_beats_the_baselines() {
        let mut checked = 0;
        for seed in 0..600u64 {
            let dn = 1 + seed as usize % 4;
            let n = 1 + (seed as usize / 4) % 7;
            let p = problem(dn, n, seed);
            let want = brute(&p);
            match best_chain_split(&p) {
                Ok(plan) => {
                    assert!(plan.fits, "seed {seed}");
                    let w = want.expect("brute force finds a split too");
                    assert!(
                        (plan.objective - w).abs() <= 1e-9 * w.max(1.0),
                        "seed {seed}: dp {} brute {w}",
                        plan.objective
                    );
                    for base in [
                        equal_split(&p).unwrap(),
                        memory_proportional_split(&p).unwrap(),
                    ] {
                        if base.fits {
                            assert!(plan.objective <= base.objective + 1e-9, "seed {seed}");
                        }
                    }
                    checked += 1;
                }
                Err(PartitionError::Infeasible(_)) => assert_eq!(want, None, "seed {seed}"),
                Err(e) => panic!("seed {seed}: {e}"),
            }
        }
        assert!(checked > 300, "only {checked} feasible cases");
    }

    /// Every composition of the units into `devices()` non-empty ranges,
    /// device `k` holding the `k`-th.
    fn brute_in_order(p: &ChainProblem) -> Option<f64> {
        fn go(
            p: &ChainProblem,
            start: usize,
            stages: &mut Vec<(usize, Range<usize>)>,
            best: &mut Option<f64>,
        ) {
            let (n, d) = (p.units(), stages.len());
            if d == p.devices() {
                if start == n {
                    let plan = evaluate_chain(p, stages).expect("valid split");
                    if plan.fits && best.is_none_or(|b| plan.objective < b) {
                        *best = Some(plan.objective);
                    }
                }
                return;
            }
            for end in start + 1..=n {
                stages.push((d, start..end));
                go(p, end, stages, best);
                stages.pop();
            }
        }
        let mut best = None;
        go(p, 0, &mut Vec::new(), &mut best);
        best
    }

    #[test]
    fn in_order_dp_equals_brute_force_and_is_never_below_the_free_dp() {
        let mut checked = 0;
        for seed in 0..600u64 {
            let dn = 1 + seed as usize % 4;
            let n = 1 + (seed as usize / 4) % 8;
            let mut p = problem(dn, n, seed);
            // more memory than `problem`'s, so most cases fit in order
            p.memory.iter_mut().for_each(|m| *m *= 2);
            let want = brute_in_order(&p);
            match best_chain_split_in_order(&p) {
                Ok(plan) => {
                    assert!(plan.fits, "seed {seed}");
                    let devices: Vec<usize> = plan.stages.iter().map(|s| s.device).collect();
                    assert_eq!(devices, (0..dn).collect::<Vec<_>>(), "seed {seed}");
                    let w = want.expect("brute force finds a split too");
                    assert!(
                        (plan.objective - w).abs() <= 1e-9 * w.max(1.0),
                        "seed {seed}: in-order dp {} brute {w}",
                        plan.objective
                    );
                    let free = best_chain_split(&p).expect("an in-order split is a split");
                    assert!(free.objective <= plan.objective + 1e-9, "seed {seed}");
                    checked += 1;
                }
                Err(PartitionError::Infeasible(_)) => assert_eq!(want, None, "seed {seed}"),
                Err(e) => panic!("seed {seed}: {e}"),
            }
        }
        assert!(checked > 250, "only {checked} feasible cases");
    }

    /// `p` restricted to the devices of `set` (in index order).
    fn restricted(p: &ChainProblem, set: usize) -> ChainProblem {
        let keep: Vec<usize> = (0..p.devices()).filter(|d| set & (1 << d) != 0).collect();
        ChainProblem {
            time: keep.iter().map(|&d| p.time[d].clone()).collect(),
            bytes: keep.iter().map(|&d| p.bytes[d].clone()).collect(),
            memory: keep.iter().map(|&d| p.memory[d]).collect(),
            boundary: keep.iter().map(|&d| p.boundary[d].clone()).collect(),
            split_last_bytes: keep.iter().map(|&d| p.split_last_bytes[d]).collect(),
        }
    }

    /// Every labelling of the devices with groups (0: unused), each group
    /// of `k` devices scored by brute force alone on `problems[min(k, len)
    /// - 1]`: the best summed `1 / bottleneck`.
    fn brute_pipelines(problems: &[ChainProblem]) -> f64 {
        let dn = problems[0].devices();
        let sized = |g: usize| &problems[(g.count_ones() as usize).min(problems.len()) - 1];
        let mut best = 0.0f64;
        let labellings = (dn + 1).pow(dn as u32);
        for code in 0..labellings {
            let mut c = code;
            let mut groups = vec![0usize; dn + 1];
            for d in 0..dn {
                groups[c % (dn + 1)] |= 1 << d;
                c /= dn + 1;
            }
            let total: f64 = groups[1..]
                .iter()
                .filter(|&&g| g != 0)
                .map(|&g| brute(&restricted(sized(g), g)).map_or(0.0, |b| 1.0 / b))
                .sum();
            best = best.max(total);
        }
        best
    }

    #[test]
    fn pipelines_equal_brute_force_and_cover_single_and_replicas() {
        let (mut checked, mut several, mut mixed) = (0, 0, 0);
        for seed in 0..300u64 {
            let dn = 1 + seed as usize % 4;
            let n = 1 + (seed as usize / 4) % 6;
            let mut p = problem(dn, n, seed);
            if seed % 2 == 0 {
                // roomier devices: replicas become possible
                p.memory.iter_mut().for_each(|m| *m *= 3);
            }
            let want = brute_pipelines(std::slice::from_ref(&p));
            match best_chain_pipelines(&p) {
                Ok(plans) => {
                    let mut used = 0usize;
                    let mut total = 0.0;
                    for plan in &plans {
                        assert!(plan.fits, "seed {seed}");
                        let covered: usize = plan.stages.iter().map(|s| s.units.len()).sum();
                        assert_eq!(covered, n, "seed {seed}");
                        for s in &plan.stages {
                            assert_eq!(used & (1 << s.device), 0, "seed {seed}: shared device");
                            used |= 1 << s.device;
                        }
                        total += 1.0 / plan.objective;
                    }
                    assert!(
                        (total - want).abs() <= 1e-9 * want.max(1.0),
                        "seed {seed}: pipelines {total} brute {want}"
                    );
                    // never below one pipeline
                    let one = best_chain_split(&p).expect("a pipeline fits");
                    assert!(total >= 1.0 / one.objective * (1.0 - 1e-12), "seed {seed}");
                    checked += 1;
                    if plans.len() > 1 {
                        several += 1;
                        if plans.iter().any(|p| p.stages.len() > 1) {
                            mixed += 1;
                        }
                    }
                }
                Err(PartitionError::Infeasible(_)) => assert_eq!(want, 0.0, "seed {seed}"),
                Err(e) => panic!("seed {seed}: {e}"),
            }
        }
        assert!(checked > 150, "only {checked} feasible cases");
        // the cases include replicas and pipelines side by side
        assert!(
            several > 20 && mixed > 3,
            "{several} with groups, {mixed} mixed"
        );
    }

    #[test]
    fn sized_pipelines_equal_brute_force() {
        let mut checked = 0;
        for seed in 0..200u64 {
            let dn = 1 + seed as usize % 4;
            let n = 1 + (seed as usize / 4) % 5;
            let base = problem(dn, n, seed);
            // bigger groups need more bytes per unit (KV of more groups)
            let problems: Vec<ChainProblem> = (1..=dn)
                .map(|k| {
                    let mut p = base.clone();
                    p.memory.iter_mut().for_each(|m| *m *= 3);
                    p.bytes
                        .iter_mut()
                        .flatten()
                        .for_each(|b| *b = *b * (2 + k as u64) / 3);
                    p
                })
                .collect();
            let want = brute_pipelines(&problems);
            match best_chain_pipelines_sized(&problems) {
                Ok(plans) => {
                    let total: f64 = plans.iter().map(|p| 1.0 / p.objective).sum();
                    assert!(
                        (total - want).abs() <= 1e-9 * want.max(1.0),
                        "seed {seed}: {total} vs {want}"
                    );
                    for plan in &plans {
                        let k = plan.stages.len();
                        let again = evaluate_chain(
                            &problems[k - 1],
                            &plan
                                .stages
                                .iter()
                                .map(|s| (s.device, s.units.clone()))
                                .collect::<Vec<_>>(),
                        )
                        .unwrap();
                        assert!(again.fits, "seed {seed}: scored on its size's problem");
                    }
                    checked += 1;
                }
                Err(PartitionError::Infeasible(_)) => assert_eq!(want, 0.0, "seed {seed}"),
                Err(e) => panic!("seed {seed}: {e}"),
            }
        }
        assert!(checked > 100, "only {checked} feasible cases");
    }

    #[test]
    fn baselines_cover_every_unit_in_order() {
        let p = problem(3, 10, 1);
        let eq = equal_split(&p).unwrap();
        let units: Vec<_> = eq.stages.iter().map(|s| s.units.clone()).collect();
        assert_eq!(units, vec![0..4, 4..7, 7..10]);
        let mut p = problem(3, 10, 1);
        p.memory = vec![100, 300, 600];
        let mp = memory_proportional_split(&p).unwrap();
        let units: Vec<_> = mp.stages.iter().map(|s| s.units.clone()).collect();
        assert_eq!(units, vec![0..1, 1..4, 4..10]);
    }

    #[test]
    fn bad_shapes_are_named() {
        let mut p = problem(2, 4, 3);
        p.boundary[1].pop();
        let e = best_chain_split(&p).unwrap_err().to_string();
        assert!(e.contains("boundary[1]"), "{e}");
        let mut p = problem(2, 4, 3);
        p.time[0][2] = f64::NAN;
        assert!(
            best_chain_split(&p)
                .unwrap_err()
                .to_string()
                .contains("time[0]")
        );
    }
}
