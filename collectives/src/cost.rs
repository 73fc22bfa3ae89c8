//! Alpha-beta cost model of the flat algorithms (Hockney model, as in
//! Thakur, Rabenseifner and Gropp, "Optimization of Collective Communication
//! Operations in MPICH"). `alpha` is the per-message latency and `beta` the
//! bandwidth of the slowest link the algorithm crosses; both come from
//! measured [`LinkModel`]s.

use hetero_core::LinkModel;
use serde::{Deserialize, Serialize};

/// Which flat all-reduce algorithm to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Reduce-scatter then all-gather around a ring: `2(n-1)` steps of `m/n`.
    Ring,
    /// Binomial-tree reduce to rank 0 then binomial-tree broadcast:
    /// `2 ceil(log2 n)` steps of `m`.
    Tree,
    /// Pick per call by the cost model.
    Auto,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ring => "ring",
            Algorithm::Tree => "tree",
            Algorithm::Auto => "auto",
        }
    }
}

/// `ceil(log2 n)` for `n >= 1`.
pub fn log2_ceil(n: usize) -> usize {
    if n <= 1 {
        0
    } else {
        (usize::BITS - (n - 1).leading_zeros()) as usize
    }
}

/// Predicted seconds of a ring all-reduce of `bytes` over `n` ranks.
pub fn ring_all_reduce_s(n: usize, bytes: f64, link: &LinkModel) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    let steps = 2.0 * (n - 1) as f64;
    steps * link.time_s(bytes / n as f64)
}

/// Predicted seconds of a ring reduce-scatter (or all-gather) of `bytes` total.
pub fn ring_half_s(n: usize, bytes: f64, link: &LinkModel) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    (n - 1) as f64 * link.time_s(bytes / n as f64)
}

/// Predicted seconds of a binomial-tree reduce (or broadcast) of `bytes`.
pub fn tree_one_way_s(n: usize, bytes: f64, link: &LinkModel) -> f64 {
    log2_ceil(n) as f64 * link.time_s(bytes)
}

/// Predicted seconds of a tree all-reduce (reduce + broadcast) of `bytes`.
pub fn tree_all_reduce_s(n: usize, bytes: f64, link: &LinkModel) -> f64 {
    2.0 * tree_one_way_s(n, bytes, link)
}

/// The cheaper of ring and tree for an all-reduce of `bytes`, with its time.
pub fn best_all_reduce(n: usize, bytes: f64, link: &LinkModel) -> (Algorithm, f64) {
    let ring = ring_all_reduce_s(n, bytes, link);
    let tree = tree_all_reduce_s(n, bytes, link);
    if tree < ring {
        (Algorithm::Tree, tree)
    } else {
        (Algorithm::Ring, ring)
    }
}

/// Message size (bytes) above which the ring beats the tree, by bisection on
/// the model (`None` when one algorithm wins at every size up to 1 TiB).
pub fn crossover_bytes(n: usize, link: &LinkModel) -> Option<f64> {
    let ring_wins = |b: f64| ring_all_reduce_s(n, b, link) <= tree_all_reduce_s(n, b, link);
    let (mut lo, mut hi) = (1.0f64, 1024.0f64.powi(4));
    if ring_wins(lo) || !ring_wins(hi) {
        return None;
    }
    for _ in 0..100 {
        let mid = (lo * hi).sqrt();
        if ring_wins(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

/// The slowest link among `links` (highest latency, lowest bandwidth), as one model.
pub fn worst_link<'a>(links: impl IntoIterator<Item = &'a LinkModel>) -> Option<LinkModel> {
    links.into_iter().fold(None, |acc: Option<LinkModel>, l| {
        Some(match acc {
            None => *l,
            Some(a) => LinkModel::new(
                a.kind,
                a.latency_s.max(l.latency_s),
                a.bandwidth_bytes_per_s.min(l.bandwidth_bytes_per_s),
            ),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hetero_core::LinkKind;

    #[test]
    fn tree_wins_small_ring_wins_large() {
        let l = LinkModel::new(LinkKind::Ethernet, 50e-6, 1e9);
        assert_eq!(best_all_reduce(8, 8.0, &l).0, Algorithm::Tree);
        assert_eq!(best_all_reduce(8, 64e6, &l).0, Algorithm::Ring);
        let x = crossover_bytes(8, &l).expect("a crossover exists");
        assert!(x > 8.0 && x < 64e6, "{x}");
        assert_eq!(log2_ceil(1), 0);
        assert_eq!(log2_ceil(5), 3);
        assert_eq!(log2_ceil(8), 3);
    }
}
