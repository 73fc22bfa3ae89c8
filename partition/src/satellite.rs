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
//! support, no edge leaving it, and every edge entering it from one node
//! `x` (its *feeder*) of one other unit. In the order graph it is a sink
//! whose only predecessor is the feeder's unit. The DP runs on the *core*
//! (the units that are not satellites; its ideals are the ideals of the
//! order graph restricted to the core) and prices satellites per set:
//!
//! - on a CPU, a set takes its feeders' satellites with it for free (no
//!   time, no communication term, no memory limit);
//! - on an accelerator, if the set with all its feeders' satellites fits
//!   the memory, it takes them (no transfer for those edges);
//! - otherwise it must *detach* the satellites of some feeders: a feeder
//!   whose output already leaves the set costs nothing more, any other
//!   pays its output's transfer once (detaching part of one feeder's
//!   satellites costs as much as all of them and frees less memory, so
//!   feeders go whole). The cheapest choice that fits is a covering
//!   knapsack ([`cover`]), solved exactly.
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

/// The satellites of a prepared problem, by feeder.
pub(crate) struct Satellites {
    /// Per core unit: its feeders `(node, memory of all its satellites)`.
    pub(crate) feeders: Vec<Vec<(u32, u64)>>,
    /// Per core unit: the memory of all its feeders' satellites.
    pub(crate) memory: Vec<u64>,
    /// Per node: the number of successors that are not satellites.
    pub(crate) core_outdeg: Vec<u32>,
    /// Per node: the satellite nodes it feeds (empty for most).
    pub(crate) fed: Vec<Vec<usize>>,
    /// How many satellite units there are.
    pub(crate) count: usize,
}

/// The core problem (satellites removed, and held in its `satellites`);
/// `None` when the graph has no satellite.
pub(crate) fn split<'g>(p: &Prepared<'g>) -> Option<Prepared<'g>> {
    let u = &p.units;
    let ix = &p.ix;
    let n = ix.graph.nodes.len();
    let mut feeder_of = vec![None; u.len()];
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
        let mut feeder = None;
        let mut ok = true;
        'members: for &x in &u.members[v] {
            if ix.succ.row(x).iter().any(|&y| u.unit_of[y] != v) {
                ok = false;
                break;
            }
            for &y in ix.pred.row(x) {
                if u.unit_of[y] == v {
                    continue;
                }
                match feeder {
                    None => feeder = Some(y),
                    Some(f) if f == y => {}
                    Some(_) => {
                        ok = false;
                        break 'members;
                    }
                }
            }
        }
        if let (true, Some(f)) = (ok, feeder)
            && u.unit_of[f] == u.preds[v][0]
        {
            feeder_of[v] = Some(f);
        }
    }
    let count = feeder_of.iter().filter(|f| f.is_some()).count();
    if count == 0 {
        return None;
    }
    // the core, renumbered in the same (topological) order
    let mut new_id = vec![usize::MAX; u.len()];
    let mut next = 0;
    for v in 0..u.len() {
        if feeder_of[v].is_none() {
            new_id[v] = next;
            next += 1;
        }
    }
    let keep = |v: &usize| feeder_of[*v].is_none();
    let map = |list: &Vec<usize>| -> Vec<usize> {
        list.iter().filter(|v| keep(v)).map(|&v| new_id[v]).collect()
    };
    let pick = |v: usize| feeder_of[v].is_none();
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
    let mut fed = vec![Vec::new(); n];
    let mut fed_memory = vec![0u64; n];
    for v in 0..u.len() {
        if let Some(f) = feeder_of[v] {
            fed[f].extend_from_slice(&u.members[v]);
            fed_memory[f] = fed_memory[f].saturating_add(u.memory[v]);
        }
    }
    let mut feeders = vec![Vec::new(); core.len()];
    let mut memory = vec![0u64; core.len()];
    for f in 0..n {
        if !fed[f].is_empty() {
            let c = core.unit_of[f];
            feeders[c].push((f as u32, fed_memory[f]));
            memory[c] = memory[c].saturating_add(fed_memory[f]);
        }
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
            feeders,
            memory,
            core_outdeg,
            fed,
            count,
        }),
    })
}

/// One feeder's satellites as a knapsack item: the memory detaching them
/// frees and the time it costs the set's device.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Item {
    pub(crate) memory: u64,
    pub(crate) cost: f64,
    pub(crate) feeder: u32,
}

/// The least total cost of items whose memory adds up to at least `need`
/// (a covering knapsack), exactly, by branch and bound on the items sorted
/// by cost per byte with the fractional cover as the bound. `items` is
/// reordered; with `chosen`, the feeders of the best choice are pushed
/// there. Infinite when all the items together do not cover `need`.
pub(crate) fn cover(items: &mut [Item], need: u64, chosen: Option<&mut Vec<u32>>) -> f64 {
    // items that cost nothing are always taken
    let mut need = need;
    let mut free = Vec::new();
    let mut rest = 0;
    for k in 0..items.len() {
        if items[k].cost <= 0.0 {
            need = need.saturating_sub(items[k].memory);
            free.push(items[k].feeder);
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
                .then(a.feeder.cmp(&b.feeder))
        });
        let mut pick = vec![false; items.len()];
        branch(items, 0, need, 0.0, &mut pick, &mut best, &mut best_pick);
    }
    if let Some(out) = chosen {
        out.extend(free);
        for (k, &b) in best_pick.iter().enumerate() {
            if b {
                out.push(items[k].feeder);
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

/// Where each satellite node goes, given the core's placement: `core_slot`
/// per node for core nodes (`None` for satellites), and, per step of the
/// chain in order, its slot and the feeders it detaches. Detached
/// satellites go on the next CPU step's slot.
pub(crate) fn place(
    sat: &Satellites,
    slot: &mut [Option<Slot>],
    steps: &[(Slot, Vec<u32>, Vec<u32>)],
) -> bool {
    // steps: (slot, feeders in the set, feeders detached)
    let mut waiting: Vec<u32> = Vec::new();
    for (s, feeders, detached) in steps {
        let is_cpu = matches!(s, Slot::Cpu(_));
        if is_cpu {
            for f in waiting.drain(..) {
                for &y in &sat.fed[f as usize] {
                    slot[y] = Some(*s);
                }
            }
        }
        for &f in feeders {
            if !is_cpu && detached.contains(&f) {
                waiting.push(f);
            } else {
                for &y in &sat.fed[f as usize] {
                    slot[y] = Some(*s);
                }
            }
        }
    }
    waiting.is_empty()
}
