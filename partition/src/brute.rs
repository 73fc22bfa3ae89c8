//! Brute force over every contiguous split of a tiny inference graph, as an
//! independent check of the DPs: every assignment of nodes to devices is
//! tried, kept if it respects colour classes, accelerator support and memory
//! and if its devices can be ordered so that every edge goes forward or stays
//! on a device (the sets are then differences of consecutive ideals), and
//! scored by the evaluator (which models the two-level interconnect, so
//! brute force does too).

use hetero_core::placement::{Cluster, Graph, Slot};

use crate::eval::{checked_interconnect, evaluate_with};
use crate::problem::{Indexed, kinds};
use crate::{PartitionError, Result};

/// Most assignments brute force will try.
pub const MAX_ASSIGNMENTS: u64 = 5_000_000;

/// The best contiguous split's objective and assignment, or `None` if no
/// contiguous split is feasible.
pub fn best_contiguous(graph: &Graph, cluster: &Cluster) -> Result<Option<(f64, Vec<Slot>)>> {
    if graph.nodes.iter().any(|n| n.backward) {
        return Err(PartitionError::Unsupported(
            "brute force checks inference graphs only (no backward nodes)".into(),
        ));
    }
    let interconnect = checked_interconnect(cluster)?;
    let ix = Indexed::new(graph)?;
    let kinds = kinds(cluster)?;
    let slots: Vec<Slot> = kinds
        .iter()
        .flat_map(|k| (0..k.count).map(move |j| k.slot(j)))
        .collect();
    let n = graph.nodes.len();
    let d = slots.len();
    let total = (d as u64)
        .checked_pow(n as u32)
        .filter(|&t| t <= MAX_ASSIGNMENTS)
        .ok_or_else(|| {
            PartitionError::Unsupported(format!(
                "{d}^{n} assignments is too many for brute force (limit {MAX_ASSIGNMENTS})"
            ))
        })?;
    let mut digits = vec![0usize; n];
    let mut best: Option<(f64, Vec<Slot>)> = None;
    let mut assignment = vec![slots.first().copied().unwrap_or(Slot::Cpu(0)); n];
    for _ in 0..total {
        if contiguous(&ix, &digits, d) {
            for (a, &x) in assignment.iter_mut().zip(&digits) {
                *a = slots[x];
            }
            // colour and support violations are errors of the evaluator: skip those
            if let Ok(e) = evaluate_with(&ix, &kinds, interconnect, &assignment)
                && e.fits()
                && best.as_ref().is_none_or(|b| e.plan.objective < b.0)
            {
                best = Some((e.plan.objective, assignment.clone()));
            }
        }
        for x in digits.iter_mut() {
            *x += 1;
            if *x < d {
                break;
            }
            *x = 0;
        }
    }
    Ok(best)
}

/// The quotient graph of the devices (edges between different devices) is acyclic.
fn contiguous(ix: &Indexed<'_>, dev: &[usize], d: usize) -> bool {
    let mut adj = vec![vec![false; d]; d];
    for e in &ix.graph.edges {
        let (a, b) = (dev[e.src], dev[e.dst]);
        if a != b {
            adj[a][b] = true;
        }
    }
    let mut indeg: Vec<usize> = (0..d)
        .map(|b| (0..d).filter(|&a| adj[a][b]).count())
        .collect();
    let mut ready: Vec<usize> = (0..d).filter(|&b| indeg[b] == 0).collect();
    let mut seen = 0;
    while let Some(a) = ready.pop() {
        seen += 1;
        for b in 0..d {
            if adj[a][b] {
                indeg[b] -= 1;
                if indeg[b] == 0 {
                    ready.push(b);
                }
            }
        }
    }
    seen == d
}
