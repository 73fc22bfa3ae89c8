//! Cost planning of a hierarchical all-reduce: the domains and leaders of
//! a topology, the slowest link inside and between domains, and the
//! alpha-beta price of each scheme per message size ([`HierPlan::costs`],
//! [`HierPlan::choose`]). Pure computation over the topology, so every
//! rank plans alike; [`super::exec`] runs what it chooses.

use std::fmt::Write as _;

use hetero_core::{LinkKind, LinkModel, Result, Topology};

use super::{Scheme, fmt_bytes};
use crate::cost;

/// Domains, leaders and link parameters of a topology, with the cost of each scheme.
#[derive(Debug, Clone)]
pub struct HierPlan {
    pub(super) n: usize,
    pub(super) domains: Vec<Vec<usize>>,
    pub(super) leaders: Vec<usize>,
    pub(super) intra: LinkModel,
    pub(super) inter: LinkModel,
    pub(super) flat: LinkModel,
    ratio: f64,
    /// Target size of the segments a large leader / sharded all-reduce is
    /// pipelined in ([`DEFAULT_SEGMENT_BYTES`] unless set).
    pub(super) segment_bytes: usize,
}

/// Default segment size of the pipelined hierarchical schemes. Measured on
/// the emulated 2 x 4 cluster at 1 Gbit/s (collectives/README.md): 1 MiB
/// segments (64 at 64 MiB) beat 2 and 4 MiB, since the pipeline's fill and
/// drain shrink with the segment.
pub const DEFAULT_SEGMENT_BYTES: usize = 1 << 20;
fn fmt_link(l: &LinkModel) -> String {
    format!(
        "alpha {:.1} us, beta {:.3} GB/s",
        l.latency_s * 1e6,
        l.bandwidth_bytes_per_s / 1e9
    )
}

impl HierPlan {
    /// The plan for the domains the topology's bandwidth ratios give.
    pub fn new(topo: &Topology) -> Result<Self> {
        let doms = topo.domains();
        let domains: Vec<Vec<usize>> = doms.iter().map(|d| d.members.clone()).collect();
        let leaders = doms.iter().map(|d| d.leader).collect();
        Self::build(topo, domains, leaders)
    }

    /// The plan for domains the caller knows (the GPUs of each machine, as
    /// Horovod groups ranks by host), whatever the measured ratios say; a
    /// domain of one rank is allowed. Each domain's first member leads it.
    /// `domains` must hold every rank of `topo` exactly once.
    pub fn with_domains(topo: &Topology, domains: Vec<Vec<usize>>) -> Result<Self> {
        let n = topo.len();
        let mut seen = vec![false; n];
        for (k, d) in domains.iter().enumerate() {
            if d.is_empty() {
                return Err(hetero_core::Error::invalid(
                    "domains",
                    format!("domain {k} is empty; every domain needs at least one rank"),
                ));
            }
            for &m in d {
                match seen.get_mut(m) {
                    None => {
                        return Err(hetero_core::Error::invalid(
                            "domains",
                            format!(
                                "rank {m} in domain {k} is not below the {n} ranks of the topology"
                            ),
                        ));
                    }
                    Some(true) => {
                        return Err(hetero_core::Error::invalid(
                            "domains",
                            format!("rank {m} appears twice; each rank belongs to one domain"),
                        ));
                    }
                    Some(slot) => *slot = true,
                }
            }
        }
        if let Some(m) = seen.iter().position(|s| !s) {
            return Err(hetero_core::Error::invalid(
                "domains",
                format!("rank {m} is in no domain; list every rank of the topology once"),
            ));
        }
        let leaders = domains.iter().map(|d| d[0]).collect();
        Self::build(topo, domains, leaders)
    }

    fn build(topo: &Topology, domains: Vec<Vec<usize>>, leaders: Vec<usize>) -> Result<Self> {
        let n = topo.len();
        let mut domain_of = vec![0usize; n];
        for (k, d) in domains.iter().enumerate() {
            for &m in d {
                if let Some(x) = domain_of.get_mut(m) {
                    *x = k;
                }
            }
        }
        let mut intra = Vec::new();
        let mut inter = Vec::new();
        for i in 0..n {
            for j in 0..n {
                if let (true, Some(l)) = (i != j, topo.link(i, j)) {
                    if domain_of[i] == domain_of[j] {
                        intra.push(*l);
                    } else {
                        inter.push(*l);
                    }
                }
            }
        }
        let placeholder = LinkModel::new(LinkKind::Unknown, 10e-6, 1e9);
        let flat = cost::worst_link(intra.iter().chain(inter.iter())).unwrap_or(placeholder);
        Ok(HierPlan {
            n,
            domains,
            leaders,
            intra: cost::worst_link(&intra).unwrap_or(flat),
            inter: cost::worst_link(&inter).unwrap_or(flat),
            flat,
            ratio: topo.domain_ratio(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        })
    }

    pub fn domains(&self) -> &[Vec<usize>] {
        &self.domains
    }

    /// Pipeline the leader and sharded schemes in segments of about `bytes`
    /// (0: one segment, no pipelining). Every rank must use the same value.
    pub fn with_segment_bytes(mut self, bytes: usize) -> Self {
        self.segment_bytes = bytes;
        self
    }

    pub fn segment_bytes(&self) -> usize {
        self.segment_bytes
    }

    pub fn leaders(&self) -> &[usize] {
        &self.leaders
    }

    pub(super) fn equal_domains(&self) -> bool {
        self.domains.windows(2).all(|w| w[0].len() == w[1].len())
    }

    /// Predicted seconds of each scheme that can run, for `bytes` bytes.
    pub fn costs(&self, bytes: f64) -> Vec<(Scheme, f64)> {
        let mut out = vec![(
            Scheme::Flat,
            cost::best_all_reduce(self.n, bytes, &self.flat).1,
        )];
        let d = self.domains.len();
        if d <= 1 {
            return out;
        }
        let l_max = self.domains.iter().map(Vec::len).max().unwrap_or(1);
        // Per-segment phase costs, combined as the pipeline runs them.
        let k = segment_count(bytes as usize, self.segment_bytes);
        let seg = bytes / k as f64;
        let one_way = cost::tree_one_way_s(l_max, seg, &self.intra);
        let leader = pipelined(
            k,
            one_way,
            cost::best_all_reduce(d, seg, &self.inter).1,
            one_way,
        );
        out.push((Scheme::Leader, leader));
        if self.equal_domains() {
            let l = l_max;
            let shared = LinkModel::new(
                self.inter.kind,
                self.inter.latency_s,
                self.inter.bandwidth_bytes_per_s / l as f64,
            );
            let half = cost::ring_half_s(l, seg, &self.intra);
            let sharded = pipelined(
                k,
                half,
                cost::best_all_reduce(d, seg / l as f64, &shared).1,
                half,
            );
            out.push((Scheme::Sharded, sharded));
        }
        out
    }

    /// The cheapest scheme for `bytes` bytes and its predicted seconds.
    pub fn choose(&self, bytes: f64) -> (Scheme, f64) {
        self.choose_from(bytes, false)
    }

    /// The cheapest of leader and sharded (flat when there is one domain).
    pub fn choose_hierarchical(&self, bytes: f64) -> (Scheme, f64) {
        self.choose_from(bytes, true)
    }

    pub(super) fn choose_from(&self, bytes: f64, hierarchical_only: bool) -> (Scheme, f64) {
        let costs = self.costs(bytes);
        let skip_flat = hierarchical_only && costs.len() > 1;
        costs
            .into_iter()
            .filter(|c| !(skip_flat && c.0 == Scheme::Flat))
            .fold((Scheme::Flat, f64::INFINITY), |best, c| {
                if c.1 < best.1 { c } else { best }
            })
    }

    /// Which plan is chosen and why, with the numbers.
    pub fn explain(&self) -> String {
        let mut s = String::new();
        if self.domains.len() <= 1 {
            let _ = write!(
                s,
                "hierarchical all-reduce collapsed to flat: {} ranks form one domain (no split has internal bandwidth >= {:.1}x the bandwidth leaving it); flat link {}",
                self.n,
                self.ratio,
                fmt_link(&self.flat)
            );
            return s;
        }
        let sizes: Vec<String> = self.domains.iter().map(|d| format!("{d:?}")).collect();
        let _ = write!(
            s,
            "{} domains {} with leaders {:?} (domain ratio {:.1}); intra-domain link {}, inter-domain link {}; ",
            self.domains.len(),
            sizes.join(" "),
            self.leaders,
            self.ratio,
            fmt_link(&self.intra),
            fmt_link(&self.inter)
        );
        if !self.equal_domains() {
            s.push_str("domains differ in size, so the sharded scheme is not available; ");
        }
        let _ = write!(
            s,
            "leader and sharded all-reduces are pipelined in segments of about {} ({} at 64 MiB), the link busy with one segment while the domains work on the next; ",
            fmt_bytes(self.segment_bytes as f64),
            segment_count(64 << 20, self.segment_bytes)
        );
        s.push_str("predicted all-reduce times:");
        for bytes in [8.0, 65536.0, 1048576.0, 67108864.0] {
            let costs = self.costs(bytes);
            let (best, _) = self.choose(bytes);
            let parts: Vec<String> = costs
                .iter()
                .map(|(k, t)| format!("{} {:.1} us", k.name(), t * 1e6))
                .collect();
            let _ = write!(
                s,
                " {}: {} -> {};",
                fmt_bytes(bytes),
                parts.join(", "),
                best.name()
            );
        }
        s
    }
}

/// Predicted time of the pipelined execution (`exec::pipeline`) over `k` segments whose phases take
/// `before`, `across` and `after` seconds each: the first `before`, then `k`
/// steps each as long as the slower of the domain's work and the link's,
/// then the last `after`.
fn pipelined(k: usize, before: f64, across: f64, after: f64) -> f64 {
    if k <= 1 {
        return before + across + after;
    }
    before + k as f64 * (before + after).max(across) + after
}

/// At most this many segments per all-reduce: each adds the inter-domain
/// latency once, and more gains little once the pipeline is full.
pub const MAX_SEGMENTS: usize = 64;

/// How many segments an all-reduce of `bytes` bytes is cut into.
pub fn segment_count(bytes: usize, segment_bytes: usize) -> usize {
    if segment_bytes == 0 {
        return 1;
    }
    bytes.div_ceil(segment_bytes).clamp(1, MAX_SEGMENTS)
}
