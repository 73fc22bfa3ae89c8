//! Simulators: predict which strategies are faster.
//!
//! - [`analytic`]: an alpha-beta model of one step under a [`SyncPlan`].
//!   All-reduce groups cost what `hetero-collectives`' own cost model says
//!   for the chosen scheme (flat ring/tree, leader, sharded) at the group's
//!   wire size; parameter servers cost the busiest node NIC (bytes in or out
//!   over the inter-node link) plus the busiest rank's intra-node bytes, per
//!   phase (local aggregation, push, pull, local broadcast), plus the
//!   busiest server's summing; the all-gather of sparse rows is a ring
//!   all-gather; host work (packing, casting, summing, updating) is bytes
//!   over the measured copy speed, times the ranks that share each core.
//! - [`Learned`]: a linear scorer over the analytic terms and per-strategy
//!   features, trained on measured (strategy, time) pairs with a pairwise
//!   logistic ranking loss (RankNet), starting from the analytic total.

use hetero_collectives::Scheme;
use serde::{Deserialize, Serialize};

use super::cluster::ClusterModel;
use super::model::ModelSpec;
use super::strategy::{ArAlgorithm, Compression, SyncPlan};

/// The analytic prediction, by part, with the quantities behind it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Breakdown {
    pub total_s: f64,
    pub all_reduce_s: f64,
    pub ps_s: f64,
    pub all_gather_s: f64,
    /// Gradient computation and other work every strategy does.
    pub base_s: f64,
    pub groups: usize,
    pub ar_flat_bytes: f64,
    pub ar_hier_bytes: f64,
    pub ps_messages: usize,
    pub ps_shards: usize,
    pub ps_nic_bytes_max: f64,
    pub ps_server_bytes_max: f64,
    pub ps_local_bytes: f64,
    pub ag_bytes: f64,
    /// Share of all-reduced elements sent as f16.
    pub fp16_share: f64,
}

fn link_time(bytes: f64, latency: f64, bw: f64) -> f64 {
    if bytes <= 0.0 {
        0.0
    } else {
        latency + bytes / bw
    }
}

/// Traffic of one parameter-server phase.
#[derive(Default)]
struct Phase {
    egress: Vec<f64>,
    ingress: Vec<f64>,
    rank_in: Vec<f64>,
    messages: std::collections::BTreeSet<(usize, usize)>,
}

impl Phase {
    fn new(nodes: usize, ranks: usize) -> Self {
        Phase {
            egress: vec![0.0; nodes],
            ingress: vec![0.0; nodes],
            rank_in: vec![0.0; ranks],
            messages: Default::default(),
        }
    }
    fn send(&mut self, c: &ClusterModel, from: usize, to: usize, bytes: f64) {
        if from == to || bytes <= 0.0 {
            return;
        }
        let (a, b) = (c.layout.node_of(from), c.layout.node_of(to));
        if a != b {
            self.egress[a] += bytes;
            self.ingress[b] += bytes;
        } else {
            self.rank_in[to] += bytes;
        }
        self.messages.insert((from, to));
    }
    fn time(&self, c: &ClusterModel) -> f64 {
        let nic = self
            .egress
            .iter()
            .chain(&self.ingress)
            .copied()
            .fold(0.0, f64::max);
        let intra = self.rank_in.iter().copied().fold(0.0, f64::max);
        link_time(nic, c.inter.latency_s, c.inter.bandwidth_bytes_per_s)
            + link_time(intra, c.intra.latency_s, c.intra.bandwidth_bytes_per_s)
    }
    fn nic_max(&self) -> f64 {
        self.egress
            .iter()
            .chain(&self.ingress)
            .copied()
            .fold(0.0, f64::max)
    }
}

/// Predicted seconds of one step (see the module docs).
pub fn analytic(model: &ModelSpec, plan: &SyncPlan, c: &ClusterModel) -> Breakdown {
    let n = c.layout.world();
    let nodes = c.layout.nodes;
    let rpn = c.layout.ranks_per_node;
    let host = |bytes: f64| bytes / c.copy_bytes_per_s * c.ranks_per_core;
    let mut b = Breakdown {
        base_s: host(model.bytes() as f64),
        groups: plan.groups.len(),
        ..Breakdown::default()
    };

    let (mut fp16, mut all) = (0.0, 0.0);
    for g in &plan.groups {
        let elems = g.elements as f64;
        let wire = match g.compression {
            Compression::None => 4.0,
            Compression::Fp16 => 2.0,
        };
        all += elems;
        if g.compression == Compression::Fp16 {
            fp16 += elems;
        }
        let m = elems * wire;
        let costs = c.plan.costs(m);
        let (scheme, t) = match g.algorithm {
            ArAlgorithm::Flat => costs[0],
            ArAlgorithm::Auto => c.plan.choose(m),
            ArAlgorithm::Hierarchical => costs
                .iter()
                .copied()
                .filter(|(s, _)| *s != Scheme::Flat)
                .fold(costs[0], |best, x| {
                    if best.0 == Scheme::Flat || x.1 < best.1 {
                        x
                    } else {
                        best
                    }
                }),
        };
        if scheme == Scheme::Flat {
            b.ar_flat_bytes += m;
        } else {
            b.ar_hier_bytes += m;
        }
        // Pack, (cast,) reduce on the host, unpack and update.
        let host_bytes = elems * 4.0 * 3.0 + if wire < 4.0 { elems * 4.0 } else { 0.0 };
        b.all_reduce_s += t + host(host_bytes);
    }
    b.fp16_share = if all > 0.0 { fp16 / all } else { 0.0 };

    if !plan.shards.is_empty() {
        let mut gather = Phase::new(nodes, n);
        let mut push = Phase::new(nodes, n);
        let mut pull = Phase::new(nodes, n);
        let mut bcast = Phase::new(nodes, n);
        let mut server_in = vec![0.0; n];
        for s in &plan.shards {
            let v = &model.variables[s.var];
            let rows = s.rows.len() as f64;
            let row_bytes = v.row_len() as f64 * 4.0;
            // Bytes one rank pushes, a node pushes after aggregation, and a
            // server returns.
            let (own, node, back) = match v.sparse {
                None => (rows * row_bytes, rows * row_bytes, rows * row_bytes),
                Some(sp) => {
                    let per_rank = sp.rows_touched as f64 * rows / v.rows() as f64;
                    let rec = row_bytes + 4.0;
                    (
                        per_rank * rec,
                        (per_rank * rpn as f64).min(rows) * rec,
                        (per_rank * n as f64).min(rows) * rec,
                    )
                }
            };
            b.ps_shards += 1;
            for r in 0..n {
                if !s.local_aggregation {
                    push.send(c, r, s.server, own);
                    pull.send(c, s.server, r, back);
                    if r != s.server {
                        server_in[s.server] += own;
                    }
                } else if c.layout.is_leader(r) {
                    push.send(c, r, s.server, node);
                    pull.send(c, s.server, r, back);
                    if r != s.server {
                        server_in[s.server] += node;
                    }
                } else {
                    let l = c.layout.leader_of(r);
                    gather.send(c, r, l, own);
                    bcast.send(c, l, r, back);
                    b.ps_local_bytes += own + back;
                }
            }
        }
        b.ps_nic_bytes_max = push.nic_max().max(pull.nic_max());
        b.ps_server_bytes_max = server_in.iter().copied().fold(0.0, f64::max);
        b.ps_messages = gather.messages.len()
            + push.messages.len()
            + pull.messages.len()
            + bcast.messages.len();
        b.ps_s = gather.time(c)
            + push.time(c)
            + pull.time(c)
            + bcast.time(c)
            + host(b.ps_server_bytes_max * 2.0);
    }

    if !plan.gathered.is_empty() {
        let per_rank: f64 = plan
            .gathered
            .iter()
            .map(|&k| {
                let v = &model.variables[k];
                let t = v.sparse.map_or(0, |s| s.rows_touched) as f64;
                t * (v.row_len() as f64 * 4.0 + 4.0)
            })
            .sum();
        b.ag_bytes = per_rank * n as f64;
        b.all_gather_s =
            hetero_collectives::cost::ring_half_s(n, b.ag_bytes, &c.flat) + host(b.ag_bytes * 2.0);
    }
    b.total_s = b.base_s + b.all_reduce_s + b.ps_s + b.all_gather_s;
    b
}

/// Names of [`features`], in order.
pub const FEATURES: [&str; 14] = [
    "analytic total s",
    "all-reduce s",
    "parameter server s",
    "all-gather s",
    "all-reduce groups",
    "ps messages",
    "flat all-reduce MB",
    "hierarchical all-reduce MB",
    "ps busiest NIC MB",
    "ps busiest server MB",
    "ps local aggregation MB",
    "all-gather MB",
    "fp16 share",
    "ps shards",
];

/// The learned simulator's inputs for one strategy.
pub fn features(b: &Breakdown) -> Vec<f64> {
    vec![
        b.total_s,
        b.all_reduce_s,
        b.ps_s,
        b.all_gather_s,
        b.groups as f64,
        b.ps_messages as f64,
        b.ar_flat_bytes / 1e6,
        b.ar_hier_bytes / 1e6,
        b.ps_nic_bytes_max / 1e6,
        b.ps_server_bytes_max / 1e6,
        b.ps_local_bytes / 1e6,
        b.ag_bytes / 1e6,
        b.fp16_share,
        b.ps_shards as f64,
    ]
}

/// Linear scorer trained with a pairwise ranking loss (higher = slower).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Learned {
    mean: Vec<f64>,
    scale: Vec<f64>,
    weights: Vec<f64>,
}

impl Learned {
    /// Fit on `(features, measured seconds)`. Pairs whose times differ by
    /// less than `tie` (relative) are left out as noise. Starts from the
    /// analytic total (feature 0) and descends the RankNet loss.
    pub fn fit(data: &[(Vec<f64>, f64)], tie: f64) -> Self {
        let d = FEATURES.len();
        let rows = data.len().max(1) as f64;
        let mut mean = vec![0.0; d];
        for (x, _) in data {
            for (m, v) in mean.iter_mut().zip(x) {
                *m += v / rows;
            }
        }
        let mut scale = vec![0.0; d];
        for (x, _) in data {
            for ((s, v), m) in scale.iter_mut().zip(x).zip(&mean) {
                *s += (v - m).powi(2) / rows;
            }
        }
        for s in &mut scale {
            *s = if *s > 1e-18 { s.sqrt() } else { 1.0 };
        }
        let mut model = Learned {
            mean,
            scale,
            weights: {
                let mut w = vec![0.0; d];
                w[0] = 1.0;
                w
            },
        };
        let z: Vec<Vec<f64>> = data.iter().map(|(x, _)| model.standardize(x)).collect();
        let mut pairs = Vec::new();
        for i in 0..data.len() {
            for j in 0..data.len() {
                let (ti, tj) = (data[i].1, data[j].1);
                if ti < tj && (tj - ti) > tie * ti {
                    pairs.push((i, j)); // i faster than j
                }
            }
        }
        if pairs.is_empty() {
            return model;
        }
        let (lr, l2, epochs) = (0.05, 1e-3, 400);
        for _ in 0..epochs {
            let mut grad = vec![0.0; d];
            for &(i, j) in &pairs {
                // P(j slower than i) = sigmoid(s_j - s_i); loss = -log of it.
                let diff: f64 = (0..d).map(|k| model.weights[k] * (z[j][k] - z[i][k])).sum();
                let g = -1.0 / (1.0 + diff.exp());
                for (k, gk) in grad.iter_mut().enumerate() {
                    *gk += g * (z[j][k] - z[i][k]);
                }
            }
            for (k, (w, g)) in model.weights.iter_mut().zip(&grad).enumerate() {
                // Regularise towards the analytic starting point.
                let reg = if k == 0 { *w - 1.0 } else { *w };
                *w -= lr * (g / pairs.len() as f64 + l2 * reg);
            }
        }
        model
    }

    fn standardize(&self, x: &[f64]) -> Vec<f64> {
        x.iter()
            .zip(&self.mean)
            .zip(&self.scale)
            .map(|((v, m), s)| (v - m) / s)
            .collect()
    }

    /// Higher means predicted slower.
    pub fn score(&self, x: &[f64]) -> f64 {
        self.standardize(x)
            .iter()
            .zip(&self.weights)
            .map(|(a, b)| a * b)
            .sum()
    }

    pub fn weights(&self) -> &[f64] {
        &self.weights
    }
}

/// Share of pairs whose measured times differ by more than `tie`
/// (relative) that `predicted` orders the same way; `None` without pairs.
pub fn pairwise_accuracy(predicted: &[f64], measured: &[f64], tie: f64) -> Option<f64> {
    let (mut right, mut total) = (0usize, 0usize);
    for i in 0..measured.len() {
        for j in i + 1..measured.len() {
            let (a, b) = (measured[i], measured[j]);
            if (a - b).abs() <= tie * a.min(b) {
                continue;
            }
            total += 1;
            if (a < b) == (predicted[i] < predicted[j]) {
                right += 1;
            }
        }
    }
    (total > 0).then(|| right as f64 / total as f64)
}
