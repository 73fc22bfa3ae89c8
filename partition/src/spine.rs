//! The spine of the order graph and its segments, for the contiguous IP's
//! segment rows (issue 21).
//!
//! A unit is *on the spine* when every other unit is its ancestor or its
//! descendant (a CNN's stem, the concatenation closing each of its blocks,
//! its head). Spine units are totally ordered, `a_0 < ... < a_{m-1}`; the
//! other units fall into *blocks*: `blocks[0]` the units before `a_0`,
//! `blocks[i]` those strictly between `a_{i-1}` and `a_i`, `blocks[m]` those
//! after `a_{m-1}`. Consecutive spine units with an empty block between
//! them are joined by an order edge (a path between them has no unit in
//! between).
//!
//! What every contiguous split does to the spine. A device's set `S` is the
//! difference of two ideals, so it is convex (it holds everything on a
//! path between two of its units). Hence:
//!
//! - its spine units are consecutive, a *segment* `a_i..a_j`, and it holds
//!   every block strictly inside (`blocks[i+1..=j]`);
//! - if it holds `a_i` but not `a_{i-1}`, it holds no unit before
//!   `a_{i-1}`, and of `blocks[i]` an up-set `U` (closed under successors
//!   inside the block); everything else before `a_i` lies outside `S`. Its
//!   incoming transfers are at least those of the senders outside `U +
//!   a_i` with an edge into `U + a_i`: the least such cost over all up-sets
//!   of the block is a lower bound (`in_lb`). Symmetrically, after `a_j`
//!   it holds a down-set `D` of `blocks[j+1]` and nothing after it, and the
//!   senders in `D + a_j` with a receiver outside `D + a_j` pay their
//!   transfers (`out_lb`, the least over all down-sets);
//! - when both of those blocks are empty the segment is *closed*: the
//!   device holds exactly the segment and its inner blocks, so its load is
//!   known, and whatever is left of its capacity is lost.
//!
//! The LP relaxation of the plain model spreads the stem's large units over
//! all positions and pays no transfer; the segment rows take that away.
//!
//! The exact DP uses the *stem* (the spine units before the first
//! non-empty block, when nothing precedes them) the same way: every
//! device holding part of it but not its end holds a closed segment, so
//! the accelerator time such devices leave unused is at least
//! [`StemWaste`]'s figure, which narrows the DP's viable cells.

use crate::problem::Units;

/// Units above which the spine is not looked for (the reachability sets
/// take `n^2 / 8` bytes; an IP on that many units is out of reach anyway).
const MAX_UNITS: usize = 20_000;

/// Down-sets enumerated per block for the transfer bounds; a larger block
/// gets the bound 0 (still valid).
const MAX_DOWN_SETS: usize = 1 << 14;

/// The spine and its blocks (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spine {
    /// The spine units in order.
    pub units: Vec<usize>,
    /// `units.len() + 1` blocks: before, between and after the spine units.
    pub blocks: Vec<Vec<usize>>,
}

/// The spine of `units`' order graph; `None` when it has fewer than two
/// units (no segment can say anything then), a cycle, or too many units.
pub(crate) fn spine(units: &Units) -> Option<Spine> {
    let n = units.succs.len();
    if !(2..=MAX_UNITS).contains(&n) {
        return None;
    }
    let order = topological_order(units)?;
    let words = n.div_ceil(64);
    // reach[u]: the units reachable from u along `edges`, u excluded
    let closure = |edges: &[Vec<usize>], order: &mut dyn Iterator<Item = usize>| {
        let mut reach = vec![0u64; n * words];
        for u in order {
            for &w in &edges[u] {
                reach[u * words + w / 64] |= 1 << (w % 64);
                for k in 0..words {
                    let bits = reach[w * words + k];
                    reach[u * words + k] |= bits;
                }
            }
        }
        reach
    };
    let count = |reach: &[u64], u: usize| -> usize {
        reach[u * words..(u + 1) * words]
            .iter()
            .map(|b| b.count_ones() as usize)
            .sum()
    };
    let below = closure(&units.succs, &mut order.iter().rev().copied());
    let above = closure(&units.preds, &mut order.iter().copied());
    let ancestors: Vec<usize> = (0..n).map(|u| count(&above, u)).collect();
    let descendants: Vec<usize> = (0..n).map(|u| count(&below, u)).collect();
    let mut on: Vec<usize> = (0..n)
        .filter(|&u| ancestors[u] + descendants[u] == n - 1)
        .collect();
    if on.len() < 2 {
        return None;
    }
    // totally ordered, by their number of ancestors
    on.sort_by_key(|&u| ancestors[u]);
    let mut index = vec![usize::MAX; n];
    for (i, &a) in on.iter().enumerate() {
        index[a] = i;
    }
    // a unit off the spine lies in the block after the last spine unit
    // that is its ancestor
    let mut blocks = vec![Vec::new(); on.len() + 1];
    for u in order {
        if index[u] != usize::MAX {
            continue;
        }
        let b = on
            .iter()
            .rposition(|&a| above[u * words + a / 64] >> (a % 64) & 1 == 1)
            .map_or(0, |i| i + 1);
        blocks[b].push(u);
    }
    Some(Spine { units: on, blocks })
}

fn topological_order(units: &Units) -> Option<Vec<usize>> {
    let n = units.succs.len();
    let mut indegree: Vec<usize> = units.preds.iter().map(Vec::len).collect();
    let mut order: Vec<usize> = (0..n).filter(|&u| indegree[u] == 0).collect();
    let mut next = 0;
    while next < order.len() {
        let u = order[next];
        next += 1;
        for &w in &units.succs[u] {
            indegree[w] -= 1;
            if indegree[w] == 0 {
                order.push(w);
            }
        }
    }
    (order.len() == n).then_some(order)
}

/// A transfer: its cost, the sender's unit, the distinct other units
/// receiving it (one per sending node, as the IP prices them).
pub(crate) type Transfer = (f64, usize, Vec<usize>);

/// Every down-set of `block` (units in topological order) inside the
/// block's own order, as membership vectors over `block`; `None` past
/// `MAX_DOWN_SETS`.
fn down_sets(units: &Units, block: &[usize]) -> Option<Vec<Vec<bool>>> {
    let mut index = std::collections::HashMap::new();
    for (i, &u) in block.iter().enumerate() {
        index.insert(u, i);
    }
    let pos = |u: usize| index.get(&u).copied();
    let preds: Vec<Vec<usize>> = block
        .iter()
        .map(|&u| units.preds[u].iter().filter_map(|&p| pos(p)).collect())
        .collect();
    let mut out = Vec::new();
    let mut current = vec![false; block.len()];
    // decide units in topological order: a unit may join only when all
    // its predecessors inside the block did
    fn walk(
        k: usize,
        preds: &[Vec<usize>],
        current: &mut Vec<bool>,
        out: &mut Vec<Vec<bool>>,
    ) -> bool {
        if out.len() > MAX_DOWN_SETS {
            return false;
        }
        if k == current.len() {
            out.push(current.clone());
            return true;
        }
        if !walk(k + 1, preds, current, out) {
            return false;
        }
        if preds[k].iter().all(|&p| current[p]) {
            current[k] = true;
            let ok = walk(k + 1, preds, current, out);
            current[k] = false;
            return ok;
        }
        true
    }
    walk(0, &preds, &mut current, &mut out).then_some(out)
}

/// The transfers whose sender or some receiver is `a` or in `block`, and
/// a map from units to their index in `block` (`usize::MAX` elsewhere):
/// the only transfers that can cross the boundary of a set of `a` and
/// part of the block, for the two bounds below.
fn near<'a>(
    units: &Units,
    tr: &'a [Transfer],
    block: &[usize],
    a: usize,
) -> (Vec<&'a Transfer>, Vec<usize>) {
    let mut index = vec![usize::MAX; units.succs.len()];
    for (i, &u) in block.iter().enumerate() {
        index[u] = i;
    }
    let touches = |u: usize| u == a || index[u] != usize::MAX;
    let near = tr
        .iter()
        .filter(|(_, s, rec)| touches(*s) || rec.iter().any(|&w| touches(w)))
        .collect();
    (near, index)
}

/// Which side of the spine unit a block lies on.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    /// The block before `a`: a set holding `a` holds an up-set of it.
    Before,
    /// The block after `a`: a set holding `a` holds a down-set of it.
    After,
}

/// The cheapest transfers across the boundary of a set holding `a` and
/// part of `block` (nothing else on that side of `a`): incoming ones for
/// the block before `a` (a sender outside with a receiver inside), outgoing
/// ones for the block after (a sender inside with a receiver outside),
/// least over every part the set can hold; 0 when the block is too large
/// to enumerate.
fn transfer_lower_bound(
    units: &Units,
    tr: &[Transfer],
    block: &[usize],
    a: usize,
    side: Side,
) -> f64 {
    let Some(downs) = down_sets(units, block) else {
        return 0.0;
    };
    let (near, index) = near(units, tr, block, a);
    downs
        .iter()
        .map(|down| {
            // the set's part here: `a` and, of the block, the up-set left
            // by `down` (before) or `down` itself (after)
            let inside = |u: usize| {
                u == a || (index[u] != usize::MAX && down[index[u]] == (side == Side::After))
            };
            near.iter()
                .filter(|(_, s, rec)| {
                    let sent_inside = inside(*s) == (side == Side::After);
                    sent_inside && rec.iter().any(|&w| inside(w) != inside(*s))
                })
                .map(|(c, _, _)| c)
                .sum::<f64>()
        })
        .fold(f64::INFINITY, f64::min)
}

/// A segment of the spine for one device kind.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Segment {
    /// The device kind it is for.
    pub kind: usize,
    /// Its spine units, and the blocks' units strictly inside it.
    pub units: Vec<usize>,
    pub inner: Vec<usize>,
    /// The spine units just before and after it when no block separates
    /// them from it (they are then joined to it by an order edge).
    pub before: Option<usize>,
    pub after: Option<usize>,
    /// The spine units just before and after it, blocks or not.
    pub prev: Option<usize>,
    pub next: Option<usize>,
    /// Its units' time on the kind.
    pub time: f64,
    /// A lower bound on the transfers its device pays (0 on CPUs).
    pub transfers: f64,
    /// For a closed segment, the bound minus its exact load when
    /// positive: capacity its device cannot use; else 0.
    pub lost: f64,
}

/// Every segment of `spine`, per kind, that the kind can hold and whose
/// time fits the bound `b` (a longer one would take its device past every
/// split the IP looks for). `unit_time(kind, u)` is a unit's time on a
/// kind; transfers are priced for accelerator kinds, as the evaluator does.
pub(crate) fn segments(
    spine: &Spine,
    units: &Units,
    kinds: &[crate::problem::Kind],
    tr: &[Transfer],
    b: f64,
    unit_time: impl Fn(usize, usize) -> f64,
) -> Vec<Segment> {
    let m = spine.units.len();
    let a = &spine.units;
    let in_lb: Vec<f64> = (0..m)
        .map(|i| transfer_lower_bound(units, tr, &spine.blocks[i], a[i], Side::Before))
        .collect();
    let out_lb: Vec<f64> = (0..m)
        .map(|j| transfer_lower_bound(units, tr, &spine.blocks[j + 1], a[j], Side::After))
        .collect();
    let mut out = Vec::new();
    for (t, kind) in kinds.iter().enumerate() {
        let ok = |u: usize| kind.is_cpu || units.accelerator_ok[u];
        for i in 0..m {
            let mut time = 0.0;
            let mut held: Vec<usize> = Vec::new();
            let mut inner: Vec<usize> = Vec::new();
            for j in i..m {
                if j > i {
                    let block = &spine.blocks[j];
                    if !block.iter().all(|&u| ok(u)) {
                        break;
                    }
                    time += block.iter().map(|&u| unit_time(t, u)).sum::<f64>();
                    inner.extend_from_slice(block);
                }
                if !ok(a[j]) {
                    break;
                }
                time += unit_time(t, a[j]);
                held.push(a[j]);
                if time > b {
                    break;
                }
                let closed = spine.blocks[i].is_empty() && spine.blocks[j + 1].is_empty();
                let (transfers, lost) = if kind.is_cpu {
                    (0.0, if closed { (b - time).max(0.0) } else { 0.0 })
                } else if closed {
                    // exactly the segment and its inner blocks
                    let inside = |u: usize| held.contains(&u) || inner.contains(&u);
                    let exact: f64 = tr
                        .iter()
                        .filter(|(_, s, rec)| rec.iter().any(|&w| inside(w) != inside(*s)))
                        .map(|(c, _, _)| c)
                        .sum();
                    (exact, (b - time - exact).max(0.0))
                } else {
                    (in_lb[i] + out_lb[j], 0.0)
                };
                out.push(Segment {
                    kind: t,
                    units: held.clone(),
                    inner: inner.clone(),
                    before: (i > 0 && spine.blocks[i].is_empty()).then(|| a[i - 1]),
                    after: (j + 1 < m && spine.blocks[j + 1].is_empty()).then(|| a[j + 1]),
                    prev: i.checked_sub(1).map(|k| a[k]),
                    next: a.get(j + 1).copied(),
                    time,
                    transfers,
                    lost,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(n: usize, edges: &[(usize, usize)]) -> Units {
        let mut preds = vec![Vec::new(); n];
        let mut succs = vec![Vec::new(); n];
        for &(a, b) in edges {
            succs[a].push(b);
            preds[b].push(a);
        }
        Units {
            members: (0..n).map(|u| vec![u]).collect(),
            unit_of: (0..n).collect(),
            preds,
            succs,
            cpu_time: vec![1.0; n],
            accelerator_time: vec![1.0; n],
            memory: vec![0; n],
            accelerator_ok: vec![true; n],
        }
    }

    #[test]
    fn a_stem_a_block_and_a_head() {
        // 0 -> 1 -> 2 -> {3, 4} -> 5 -> 6 -> 7, and a skip edge 1 -> 5
        let edges = [
            (0, 1),
            (1, 2),
            (2, 3),
            (2, 4),
            (3, 5),
            (4, 5),
            (5, 6),
            (6, 7),
            (1, 5),
        ];
        let u = units(8, &edges);
        let s = spine(&u).unwrap();
        assert_eq!(s.units, vec![0, 1, 2, 5, 6, 7]);
        assert_eq!(
            s.blocks,
            vec![vec![], vec![], vec![], vec![3, 4], vec![], vec![], vec![]]
        );
        // transfers: every node sends to its successors at cost 1 + node/10
        let tr: Vec<Transfer> = (0..8)
            .filter(|&v| !u.succs[v].is_empty())
            .map(|v| (1.0 + v as f64 / 10.0, v, u.succs[v].clone()))
            .collect();
        let kinds = vec![crate::problem::Kind {
            is_cpu: false,
            count: 2,
            speed: 1.0,
            memory: u64::MAX,
            first_index: 0,
            name: "a".into(),
        }];
        let segs = segments(&s, &u, &kinds, &tr, 10.0, |_, _| 1.0);
        let find = |units: &[usize]| segs.iter().find(|g| g.units == units).unwrap();
        // {1}: closed, receives 0's output, sends 1's (to 2 and 5)
        let one = find(&[1]);
        assert_eq!((one.before, one.after), (Some(0), Some(2)));
        assert!((one.transfers - (1.0 + 1.1)).abs() < 1e-12);
        assert!((one.lost - (10.0 - 1.0 - 2.1)).abs() < 1e-12);
        // {2, 5}: holds the block {3, 4}; receives 1 (to 2 and 5), sends 5
        let two_five = find(&[2, 5]);
        assert_eq!(two_five.inner, vec![3, 4]);
        assert_eq!(two_five.time, 4.0);
        assert!((two_five.transfers - (1.1 + 1.5)).abs() < 1e-12);
        // {2}: not closed (may hold part of the block after it): its
        // outgoing transfers are at least the cheapest down-set's: 2 with
        // both 3 and 4 sends 3 and 4 (1.3 + 1.4) or 2 alone sends 1.2
        let two = find(&[2]);
        assert_eq!(two.lost, 0.0);
        assert!((two.transfers - (1.1 + 1.2)).abs() < 1e-12);
        // {5}: receives from the block's up-set complement: 5 alone gets
        // 1, 3 and 4 (1.1 + 1.3 + 1.4); with {3, 4} it gets 1 and 2
        // (1.1 + 1.2), the least
        let five = find(&[5]);
        assert!((five.transfers - (1.1 + 1.2 + 1.5)).abs() < 1e-12);
        // nothing longer than the bound
        assert!(segs.iter().all(|g| g.time <= 10.0));
        assert!(
            segments(&s, &u, &kinds, &tr, 2.5, |_, _| 1.0)
                .iter()
                .all(|g| g.units.len() <= 2)
        );
    }

    #[test]
    fn no_spine_without_comparable_units() {
        // two parallel chains: nothing is comparable to all
        assert!(spine(&units(4, &[(0, 1), (2, 3)])).is_none());
        // one comparable unit is not enough
        assert!(spine(&units(5, &[(0, 2), (1, 2), (2, 3), (2, 4)])).is_none());
    }
}

/// What the stem leaves unused, for the exact DP's viable cells.
///
/// The stem is `r_1..r_n`: the spine units up to the first non-empty
/// block, when the first spine unit has no ancestors (`blocks[0]` empty).
/// An ideal either is a stem prefix `r_1..r_k` or holds the whole stem
/// (every other unit descends from `r_n`). In a chain of devices, the
/// devices holding stem units hold consecutive segments; each but the one
/// holding `r_n` holds exactly its segment (a closed segment, see the
/// module docs), and so does the one holding `r_k` when the ideal is the
/// prefix `r_1..r_k` (the prefix's devices hold the prefix and nothing
/// else). A closed segment on an accelerator of speed `σ` within the bound
/// `B` leaves `σ B - T` of its accelerator time unused (`T` the segment's
/// accelerator time; its load `T / σ + transfers <= B`); on a CPU we count
/// nothing. So the devices holding an ideal leave at least the least such
/// sum over all cuts of its stem part into segments that some kind can
/// hold (time within `B`, supported, memory within the kind's).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StemWaste {
    /// The stem's units in order.
    pub units: Vec<usize>,
    /// `prefix[k]`: the least unused accelerator time of the ideal
    /// `r_1..r_k` (every segment closed); `prefix[0] = 0`.
    pub prefix: Vec<f64>,
    /// The least for an ideal holding the whole stem (the segment with
    /// `r_n` not counted).
    pub whole: f64,
}

/// The stem's units in order: the spine's units before its first block;
/// `None` without a stem of two units or more. It depends on the graph
/// only, so a solver computes it once (`Prepared::stem`) and prices it per
/// bound with [`stem_waste`].
pub(crate) fn stem_units(units: &Units) -> Option<Vec<usize>> {
    let sp = spine(units)?;
    if !sp.blocks[0].is_empty() {
        return None;
    }
    let n = (1..sp.blocks.len())
        .find(|&i| !sp.blocks[i].is_empty())
        .unwrap_or(sp.units.len())
        .min(sp.units.len());
    (n >= 2).then(|| sp.units[..n].to_vec())
}

/// The unused accelerator time of the stem `stem` ([`stem_units`]) under
/// the bound `b` (see [`StemWaste`]).
pub(crate) fn stem_waste(
    stem: &[usize],
    units: &Units,
    kinds: &[crate::problem::Kind],
    b: f64,
) -> StemWaste {
    let n = stem.len();
    // the least unused accelerator time of a closed segment i..=j, or
    // infinity when no kind can hold it
    let unused = |i: usize, j: usize| -> f64 {
        let seg = &stem[i..=j];
        let cpu: f64 = seg.iter().map(|&u| units.cpu_time[u]).sum();
        let acc: f64 = seg.iter().map(|&u| units.accelerator_time[u]).sum();
        let memory: u64 = seg
            .iter()
            .map(|&u| units.memory[u])
            .fold(0, u64::saturating_add);
        let supported = seg.iter().all(|&u| units.accelerator_ok[u]);
        kinds
            .iter()
            .filter_map(|k| {
                if k.is_cpu {
                    (cpu <= b).then_some(0.0)
                } else {
                    (supported && memory <= k.memory && acc / k.speed <= b)
                        .then(|| (k.speed * b - acc).max(0.0))
                }
            })
            .fold(f64::INFINITY, f64::min)
    };
    let mut prefix = vec![f64::INFINITY; n + 1];
    prefix[0] = 0.0;
    for k in 1..=n {
        for j in 0..k {
            let v = prefix[j] + unused(j, k - 1);
            if v < prefix[k] {
                prefix[k] = v;
            }
        }
    }
    // the segment holding r_n may hold more: it costs nothing here, but
    // some kind must hold at least the segment
    let whole = (0..n)
        .filter(|&j| unused(j, n - 1).is_finite())
        .map(|j| prefix[j])
        .fold(f64::INFINITY, f64::min);
    StemWaste {
        units: stem.to_vec(),
        prefix,
        whole,
    }
}
