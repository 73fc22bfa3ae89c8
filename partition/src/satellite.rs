//! Satellites: the exact DP's way through graphs whose memory binds.
//!
//! When the whole graph fits in every accelerator, the contraction of
//! [`crate::problem`] merges every unit that costs no time and touches one
//! other unit into it. When memory binds, a unit that costs no time but
//! holds memory cannot simply follow its neighbour (the neighbour's device
//! may have no room), and each such unit left alone doubles the ideals
//! of the part of the graph after its neighbour: GNMT's sixteen dangling
//! zero-time outputs take it from 17,914 ideals to many millions.
//!
//! A *satellite* is a unit `u` with no time, some memory, accelerator
//! support, no edge leaving it, and every edge entering it from nodes (its
//! *feeders*: one node in inference graphs, a forward node and its
//! backward twin in training graphs) of one other unit. In the order graph
//! it is a sink whose only predecessor is the feeders' unit. Satellites
//! with the same feeders form a *group*; a unit's groups must have
//! disjoint feeders (those that do not stay ordinary units), so that the
//! cost of detaching groups adds up. The DP runs on the *core*
//! (the units that are not satellites; its ideals are the ideals of the
//! order graph restricted to the core) and prices satellites per set:
//!
//! - on a CPU, a set takes its feeders' satellites with it for free (no
//!   time, no communication term, no memory limit);
//! - on an accelerator, if the set with all its feeders' satellites fits
//!   the memory, it takes them (no transfer for those edges);
//! - otherwise it must *detach* some groups: a feeder whose output already
//!   leaves the set costs nothing more, any other pays its output's
//!   transfer once (detaching part of a group costs as much as all of it
//!   and frees less memory, so groups go whole). The cheapest choice that
//!   fits is a covering knapsack ([`cover`]), solved exactly.
//!
//! Detached satellites are put on a CPU that comes later in the chain
//! (there they cost nothing), and the DP state carries one more bit: "some
//! satellites wait for a CPU". A CPU step (a set, or a CPU left empty)
//! clears it. The split ends with the bit clear.
//!
//! **Why this is exact.** Two values come out of one DP: `V`, the best
//! chain ending with the bit clear, which is a real contiguous split (each
//! waiting satellite sits on a CPU after its feeder's device, so every
//! edge still goes forward), so `V >= OPT`; and `L`, the best chain with
//! the bit either way, which relaxes "a later CPU" to "anywhere, for free".
//! Every contiguous split maps to such a relaxed chain no worse than it:
//! restrict its ideals to the core (satellites are sinks, so they stay
//! ideals), and let every satellite not on its feeder's device count as
//! detached: its feeder's device pays what it paid before, and the devices
//! that held detached satellites lose their memory and transfer terms. So
//! `L <= OPT`. When `V == L` the DP's split is optimal. When not (a
//! satellite may need an accelerator after its feeder, say with no CPU, or
//! a CPU that must come first), the solver falls back to the DP on every
//! unit, satellites included, which is exact but has many more ideals.

use hetero_core::placement::Slot;

use crate::dp::Prepared;
use crate::problem::Units;

/// Satellites with the same feeders.
pub(crate) struct Group {
    pub(crate) feeders: Vec<u32>,
    pub(crate) memory: u64,
    pub(crate) nodes: Vec<usize>,
}

/// The satellites of a prepared problem, in groups.
pub(crate) struct Satellites {
    pub(crate) groups: Vec<Group>,
    /// Per core unit: the groups its nodes feed.
    pub(crate) unit_groups: Vec<Vec<u32>>,
    /// Per core unit: the memory of all its groups.
    pub(crate) memory: Vec<u64>,
    /// Per node: the number of successors that are not satellites.
    pub(crate) core_outdeg: Vec<u32>,
    /// How many satellite units there are.
    pub(crate) count: usize,
}

/// The core problem (satellites removed, and held in its `satellites`);
/// `None` when the graph has no satellite.
pub(crate) fn split<'g>(p: &Prepared<'g>) -> Option<Prepared<'g>> {
    let u = &p.units;
    let ix = &p.ix;
    let n = ix.graph.nodes.len();
    // candidate satellites and their feeders
    let mut feeders_of: Vec<Option<Vec<u32>>> = vec![None; u.len()];
    #[allow(clippy::needless_range_loop)] // v indexes every per-unit array
    for v in 0..u.len() {
        if u.cpu_time[v] != 0.0
            || u.accelerator_time[v] != 0.0
            || u.memory[v] == 0
            || !u.accelerator_ok[v]
            || !u.succs[v].is_empty()
            || u.preds[v].len() != 1
        {
            continue;
        }
        let w = u.preds[v][0];
        let mut feeders = Vec::new();
        let mut ok = true;
        for &x in &u.members[v] {
            if ix.succ.row(x).iter().any(|&y| u.unit_of[y] != v) {
                ok = false;
            }
            for &y in ix.pred.row(x) {
                if u.unit_of[y] == w {
                    feeders.push(y as u32);
                } else if u.unit_of[y] != v {
                    ok = false;
                }
            }
        }
        feeders.sort_unstable();
        feeders.dedup();
        if ok && !feeders.is_empty() {
            feeders_of[v] = Some(feeders);
        }
    }
    // groups of a unit must have disjoint feeders: count the distinct
    // feeder sets each node is in, and keep a set only if all its nodes
    // are in it alone
    let mut sets: Vec<Vec<u32>> = feeders_of.iter().flatten().cloned().collect();
    sets.sort();
    sets.dedup();
    let mut in_sets = vec![0u32; n];
    for set in &sets {
        for &x in set {
            in_sets[x as usize] += 1;
        }
    }
    for f in feeders_of.iter_mut() {
        if f.as_ref()
            .is_some_and(|set| set.iter().any(|&x| in_sets[x as usize] > 1))
        {
            *f = None;
        }
    }
    let count = feeders_of.iter().filter(|f| f.is_some()).count();
    if count == 0 {
        return None;
    }
    let pick = |v: usize| feeders_of[v].is_none();
    // the core, renumbered in the same (topological) order
    let mut new_id = vec![usize::MAX; u.len()];
    let mut next = 0;
    #[allow(clippy::needless_range_loop)] // v also goes to `pick`
    for v in 0..u.len() {
        if pick(v) {
            new_id[v] = next;
            next += 1;
        }
    }
    let map = |list: &Vec<usize>| -> Vec<usize> {
        list.iter()
            .filter(|&&v| pick(v))
            .map(|&v| new_id[v])
            .collect()
    };
    let core = Units {
        members: (0..u.len())
            .filter(|&v| pick(v))
            .map(|v| u.members[v].clone())
            .collect(),
        unit_of: (0..n)
            .map(|i| {
                let v = u.unit_of[i];
                if pick(v) { new_id[v] } else { usize::MAX }
            })
            .collect(),
        preds: (0..u.len())
            .filter(|&v| pick(v))
            .map(|v| map(&u.preds[v]))
            .collect(),
        succs: (0..u.len())
            .filter(|&v| pick(v))
            .map(|v| map(&u.succs[v]))
            .collect(),
        cpu_time: (0..u.len())
            .filter(|&v| pick(v))
            .map(|v| u.cpu_time[v])
            .collect(),
        accelerator_time: (0..u.len())
            .filter(|&v| pick(v))
            .map(|v| u.accelerator_time[v])
            .collect(),
        memory: (0..u.len())
            .filter(|&v| pick(v))
            .map(|v| u.memory[v])
            .collect(),
        accelerator_ok: (0..u.len())
            .filter(|&v| pick(v))
            .map(|v| u.accelerator_ok[v])
            .collect(),
    };
    let mut groups: Vec<Group> = Vec::new();
    let mut unit_groups = vec![Vec::new(); core.len()];
    let mut memory = vec![0u64; core.len()];
    for v in 0..u.len() {
        let Some(feeders) = &feeders_of[v] else {
            continue;
        };
        let c = new_id[u.preds[v][0]];
        let g = match unit_groups[c]
            .iter()
            .find(|&&g| groups[g as usize].feeders == *feeders)
        {
            Some(&g) => g as usize,
            None => {
                groups.push(Group {
                    feeders: feeders.clone(),
                    memory: 0,
                    nodes: Vec::new(),
                });
                unit_groups[c].push(groups.len() as u32 - 1);
                groups.len() - 1
            }
        };
        groups[g].memory = groups[g].memory.saturating_add(u.memory[v]);
        groups[g].nodes.extend_from_slice(&u.members[v]);
        memory[c] = memory[c].saturating_add(u.memory[v]);
    }
    let is_sat = |x: usize| core.unit_of[x] == usize::MAX;
    let core_outdeg = (0..n)
        .map(|x| ix.succ.row(x).iter().filter(|&&y| !is_sat(y)).count() as u32)
        .collect();
    Some(Prepared {
        ix: p.ix.clone(),
        units: core,
        kinds: p.kinds.clone(),
        interconnect: p.interconnect.clone(),
        satellites: Some(Satellites {
            groups,
            unit_groups,
            memory,
            core_outdeg,
            count,
        }),
        stem: std::sync::OnceLock::new(),
    })
}

/// One group as a knapsack item: the memory detaching it frees and the
/// time it costs the set's device.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Item {
    pub(crate) memory: u64,
    pub(crate) cost: f64,
    pub(crate) group: u32,
}

/// The least total cost of items whose memory adds up to at least `need`
/// (a covering knapsack), exactly, by branch and bound on the items sorted
/// by cost per byte with the fractional cover as the bound. `items` is
/// reordered; with `chosen`, the groups of the best choice are pushed
/// there. Infinite when all the items together do not cover `need`.
pub(crate) fn cover(items: &mut [Item], need: u64, chosen: Option<&mut Vec<u32>>) -> f64 {
    // items that cost nothing are always taken
    let mut need = need;
    let mut free = Vec::new();
    let mut rest = 0;
    for k in 0..items.len() {
        if items[k].cost <= 0.0 {
            need = need.saturating_sub(items[k].memory);
            free.push(items[k].group);
        } else {
            items.swap(rest, k);
            rest += 1;
        }
    }
    let items = &mut items[..rest];
    let mut best = f64::INFINITY;
    let mut best_pick: Vec<bool> = Vec::new();
    if need == 0 {
        best = 0.0;
    } else {
        items.sort_by(|a, b| {
            (a.cost / a.memory as f64)
                .total_cmp(&(b.cost / b.memory as f64))
                .then(a.group.cmp(&b.group))
        });
        let mut pick = vec![false; items.len()];
        branch(items, 0, need, 0.0, &mut pick, &mut best, &mut best_pick);
    }
    if let Some(out) = chosen {
        out.extend(free);
        for (k, &b) in best_pick.iter().enumerate() {
            if b {
                out.push(items[k].group);
            }
        }
    }
    best
}

fn branch(
    items: &[Item],
    k: usize,
    need: u64,
    cost: f64,
    pick: &mut Vec<bool>,
    best: &mut f64,
    best_pick: &mut Vec<bool>,
) {
    if need == 0 {
        if cost < *best {
            *best = cost;
            best_pick.clone_from(pick);
        }
        return;
    }
    // fractional cover of what is left: a lower bound on any completion
    let (mut left, mut bound) = (need, cost);
    for it in &items[k..] {
        if it.memory >= left {
            bound += it.cost * left as f64 / it.memory as f64;
            left = 0;
            break;
        }
        left -= it.memory;
        bound += it.cost;
    }
    if left > 0 || bound >= *best {
        return;
    }
    let it = items[k];
    pick[k] = true;
    branch(
        items,
        k + 1,
        need.saturating_sub(it.memory),
        cost + it.cost,
        pick,
        best,
        best_pick,
    );
    pick[k] = false;
    branch(items, k + 1, need, cost, pick, best, best_pick);
}

/// Where each satellite node goes, given the core's placement in `slot`
/// and, per step of the chain in order, its slot, the groups its set
/// feeds and those it detaches. Detached groups go on the next CPU step's
/// slot; false if some are left waiting at the end.
pub(crate) fn place(
    sat: &Satellites,
    slot: &mut [Option<Slot>],
    steps: &[(Slot, Vec<u32>, Vec<u32>)],
) -> bool {
    let mut waiting: Vec<u32> = Vec::new();
    let put = |g: u32, s: Slot, slot: &mut [Option<Slot>]| {
        for &y in &sat.groups[g as usize].nodes {
            slot[y] = Some(s);
        }
    };
    for (s, groups, detached) in steps {
        let is_cpu = matches!(s, Slot::Cpu(_));
        if is_cpu {
            for g in waiting.drain(..) {
                put(g, *s, slot);
            }
        }
        for &g in groups {
            if !is_cpu && detached.contains(&g) {
                waiting.push(g);
            } else {
                put(g, *s, slot);
            }
        }
    }
    waiting.is_empty()
}

#[cfg(test)]
mod tests {
    use super::{Item, cover};

    /// The covering knapsack against every subset, on random items (some
    /// free, some equal), and its chosen groups cover and cost the value.
    #[test]
    fn cover_equals_every_subset() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        for _ in 0..3000 {
            let k = 1 + rnd(9) as usize;
            let items: Vec<Item> = (0..k)
                .map(|g| Item {
                    memory: 1 + rnd(12),
                    cost: rnd(5) as f64 * 0.25,
                    group: g as u32,
                })
                .collect();
            let total: u64 = items.iter().map(|i| i.memory).sum();
            let need = 1 + rnd(total + 2);
            let mut best = f64::INFINITY;
            for mask in 0u32..1 << k {
                let (mut m, mut c) = (0, 0.0);
                for (b, it) in items.iter().enumerate() {
                    if mask >> b & 1 == 1 {
                        m += it.memory;
                        c += it.cost;
                    }
                }
                if m >= need && c < best {
                    best = c;
                }
            }
            let mut work = items.clone();
            let mut chosen = Vec::new();
            let got = cover(&mut work, need, Some(&mut chosen));
            assert_eq!(got.is_finite(), best.is_finite(), "{items:?} need {need}");
            if best.is_finite() {
                assert!(
                    (got - best).abs() < 1e-12,
                    "{got} vs {best}: {items:?} need {need}"
                );
                let m: u64 = chosen.iter().map(|&g| items[g as usize].memory).sum();
                let c: f64 = chosen.iter().map(|&g| items[g as usize].cost).sum();
                assert!(m >= need && (c - best).abs() < 1e-12, "{chosen:?}");
            }
        }
    }
}
