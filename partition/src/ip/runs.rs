//! Runs of units that every contiguous split cuts like a chain, for the
//! contiguous IP's segment rows (issue 21).
//!
//! A unit is *comparable to all* when every other unit of the order graph
//! is its ancestor or its descendant (the stem of a CNN, the concatenation
//! after each of its blocks, the head). Two such units `a < b` are
//! *adjacent* when no unit lies strictly between them (`b` has exactly one
//! more ancestor than `a`). A *run* is a maximal sequence `r_1 < ... <
//! r_n` of adjacent units comparable to all; every other unit is an
//! ancestor of `r_1` or a descendant of `r_n`.
//!
//! Why the IP can treat a run segment by segment: a device's set in a
//! contiguous split is the difference of two ideals, so it is convex (it
//! holds everything on a path between two of its units). Its run units
//! are therefore consecutive, a *segment* `r_i..r_j`. If it holds
//! `r_i` but not `r_{i-1}` it holds no ancestor `v` of `r_1` (`v < r_{i-1}
//! < r_i` would put `r_{i-1}` in it), and symmetrically after `r_j`. So a
//! segment that starts after `r_1` (or at an `r_1` without ancestors) and
//! ends before `r_n` (or at an `r_n` without descendants) is *closed*: its
//! device holds that segment and nothing else, its load is exactly the
//! segment's time plus its transfers, and whatever is left of the device's
//! capacity is lost. The LP relaxation of the plain model does not know
//! this (it spreads the stem's large units fractionally); the segment
//! variables tell it.

use crate::problem::Units;

/// A run of adjacent units comparable to all (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Run {
    /// The run's units in order (at least two).
    pub units: Vec<usize>,
    /// Some unit precedes the run's first unit.
    pub open_before: bool,
    /// Some unit follows the run's last unit.
    pub open_after: bool,
}

impl Run {
    /// Whether the segment `i..=j` (indices into `units`) is closed: a
    /// device holding it holds nothing else.
    pub fn closed(&self, i: usize, j: usize) -> bool {
        (i > 0 || !self.open_before) && (j + 1 < self.units.len() || !self.open_after)
    }
}

/// Units above which the runs are not looked for (the reachability sets
/// take `n^2 / 8` bytes; an IP on that many units is out of reach anyway).
const MAX_UNITS: usize = 20_000;

/// The runs of `units`' order graph (none when it has a cycle, which a
/// contracted order graph never has, or is too large).
pub(super) fn runs(units: &Units) -> Vec<Run> {
    let n = units.succs.len();
    if !(2..=MAX_UNITS).contains(&n) {
        return Vec::new();
    }
    // Kahn's topological order.
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
    if order.len() != n {
        return Vec::new();
    }
    let words = n.div_ceil(64);
    let closure = |edges: &[Vec<usize>], order: &mut dyn Iterator<Item = usize>| {
        // reach[u]: the units reachable from u along `edges`, u excluded
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
        (0..n)
            .map(|u| {
                reach[u * words..(u + 1) * words]
                    .iter()
                    .map(|b| b.count_ones() as usize)
                    .sum::<usize>()
            })
            .collect::<Vec<usize>>()
    };
    let descendants = closure(&units.succs, &mut order.iter().rev().copied());
    let ancestors = closure(&units.preds, &mut order.iter().copied());
    let mut comparable: Vec<usize> = (0..n)
        .filter(|&u| ancestors[u] + descendants[u] == n - 1)
        .collect();
    // comparable to all: totally ordered, by their number of ancestors
    comparable.sort_by_key(|&u| ancestors[u]);
    let mut out = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut flush = |current: &mut Vec<usize>| {
        if current.len() >= 2 {
            let first = current[0];
            let last = current[current.len() - 1];
            out.push(Run {
                units: std::mem::take(current),
                open_before: ancestors[first] > 0,
                open_after: descendants[last] > 0,
            });
        }
        current.clear();
    };
    for &u in &comparable {
        if let Some(&last) = current.last()
            && ancestors[u] != ancestors[last] + 1
        {
            flush(&mut current);
        }
        current.push(u);
    }
    flush(&mut current);
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
        let u = units(
            8,
            &[
                (0, 1),
                (1, 2),
                (2, 3),
                (2, 4),
                (3, 5),
                (4, 5),
                (5, 6),
                (6, 7),
                (1, 5),
            ],
        );
        let r = runs(&u);
        assert_eq!(
            r,
            vec![
                Run {
                    units: vec![0, 1, 2],
                    open_before: false,
                    open_after: true,
                },
                Run {
                    units: vec![5, 6, 7],
                    open_before: true,
                    open_after: false,
                },
            ]
        );
        assert!(r[0].closed(0, 1));
        assert!(!r[0].closed(1, 2));
        assert!(r[1].closed(1, 2));
        assert!(!r[1].closed(0, 0));
    }

    #[test]
    fn no_runs_without_chains() {
        // two parallel chains: nothing is comparable to all
        let u = units(4, &[(0, 1), (2, 3)]);
        assert!(runs(&u).is_empty());
        // a single comparable unit between blocks is no run
        let u = units(5, &[(0, 2), (1, 2), (2, 3), (2, 4)]);
        assert!(runs(&u).is_empty());
    }
}
