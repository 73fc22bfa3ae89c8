//! Hierarchical all-reduce over a measured topology.
//!
//! Two schemes, as in MPICH's SMP all-reduce and Horovod's hierarchical
//! all-reduce:
//!
//! - **leader**: reduce to each domain's leader (intra, binomial tree), all-reduce
//!   among the leaders (inter), broadcast from the leader (intra);
//! - **sharded**: reduce-scatter inside each domain (intra ring), all-reduce of
//!   each shard among the ranks with the same local index (one inter group per
//!   shard, all at once), all-gather inside each domain. Needs domains of equal size.
//!
//! The [`HierPlan`] prices both and the flat algorithm with the alpha-beta
//! model, per message size, from the measured links: `intra` is the slowest
//! link inside any domain, `inter` the slowest between domains. The sharded
//! scheme's `L` concurrent inter-domain flows are assumed to share one
//! domain's external bandwidth (one NIC per node), so each gets `beta / L`.
//! With one domain (no split passes the topology's bandwidth-ratio test) the
//! plan collapses to flat. Operations other than all-reduce run flat.
//!
//! Both schemes are pipelined in segments (see `pipeline`); host slices
//! are reduced in place. [`Hierarchical::tune`] can replace the model's
//! choice per size by measured times.

use std::fmt::Write as _;
use std::sync::Arc;

use async_trait::async_trait;
use hetero_core::{
    Collective, DType, HostSliceMut, LinkKind, LinkModel, ReduceOp, Result, Tensor, TensorMut,
    Topology, chunk_range,
};
use serde::Serialize;

use crate::cost::{self, Algorithm};
use crate::flat::FlatCollective;
use crate::kernels::{
    Staged, finish_bytes, host_view, host_view_mut, read_tensor_mut, write_tensor,
};
use crate::transport::{SubTransport, Transport};

/// How an all-reduce is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    Flat,
    Leader,
    Sharded,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Flat => "flat",
            Scheme::Leader => "leader",
            Scheme::Sharded => "sharded",
        }
    }
}

/// Domains, leaders and link parameters of a topology, with the cost of each scheme.
#[derive(Debug, Clone)]
pub struct HierPlan {
    n: usize,
    domains: Vec<Vec<usize>>,
    leaders: Vec<usize>,
    intra: LinkModel,
    inter: LinkModel,
    flat: LinkModel,
    ratio: f64,
    /// Target size of the segments a large leader / sharded all-reduce is
    /// pipelined in ([`DEFAULT_SEGMENT_BYTES`] unless set).
    segment_bytes: usize,
}

/// Default segment size of the pipelined hierarchical schemes. Measured on
/// the emulated 2 x 4 cluster at 1 Gbit/s (collectives/README.md): 1 MiB
/// segments (64 at 64 MiB) beat 2 and 4 MiB, since the pipeline's fill and
/// drain shrink with the segment.
pub const DEFAULT_SEGMENT_BYTES: usize = 1 << 20;

fn fmt_bytes(b: f64) -> String {
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1 << 20) as f64 {
        format!("{:.1} MiB", b / (1 << 20) as f64)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

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

    fn equal_domains(&self) -> bool {
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

    fn choose_from(&self, bytes: f64, hierarchical_only: bool) -> (Scheme, f64) {
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

/// An all-reduce that follows a [`HierPlan`]; other operations run flat.
#[derive(Debug)]
pub struct Hierarchical {
    plan: HierPlan,
    rank: usize,
    flat: Box<dyn Collective>,
    /// This rank's domain communicator and the leader's index in it.
    intra: Option<(Box<dyn Collective>, usize)>,
    /// Leaders' communicator (only on leaders).
    leaders: Option<Box<dyn Collective>>,
    /// Communicator of the ranks with this rank's local index (equal domains only).
    shard: Option<Box<dyn Collective>>,
    forced: Option<Scheme>,
    /// Measured choices from [`Hierarchical::tune`]: (message bytes, best
    /// scheme), ascending by size.
    tuned: Vec<(usize, Scheme)>,
    hierarchical_only: bool,
}

impl Hierarchical {
    /// Build the sub-communicators over `transport` (flat ring / tree groups
    /// whose cost models use the plan's measured links).
    pub fn new(transport: Arc<dyn Transport>, topo: &Topology) -> Result<Self> {
        Self::from_plan(transport, HierPlan::new(topo)?)
    }

    /// Like [`Hierarchical::new`] with a plan made beforehand (for example
    /// [`HierPlan::with_domains`]).
    pub fn from_plan(transport: Arc<dyn Transport>, plan: HierPlan) -> Result<Self> {
        let rank = transport.rank();
        if plan.n != transport.size() {
            return Err(hetero_core::Error::invalid(
                "topology",
                format!(
                    "has {} devices, the transport {} ranks",
                    plan.n,
                    transport.size()
                ),
            ));
        }
        let sub =
            |members: Vec<usize>, link: LinkModel, what: &str| -> Result<Box<dyn Collective>> {
                let t = SubTransport::new(transport.clone(), members)?;
                Ok(Box::new(FlatCollective::new(
                    Arc::new(t),
                    Algorithm::Auto,
                    link,
                    what,
                )))
            };
        let flat = sub((0..plan.n).collect(), plan.flat, "measured, slowest link")?;
        let mut intra = None;
        let mut leaders = None;
        let mut shard = None;
        if plan.domains.len() > 1 {
            let Some((k, dom)) = plan
                .domains
                .iter()
                .enumerate()
                .find(|(_, d)| d.contains(&rank))
            else {
                return Err(hetero_core::Error::invalid(
                    "topology",
                    format!("rank {rank} is in no domain"),
                ));
            };
            let leader = plan.leaders.get(k).copied().unwrap_or(dom[0]);
            let leader_local = dom.iter().position(|&m| m == leader).unwrap_or(0);
            intra = Some((
                sub(dom.clone(), plan.intra, "measured, intra-domain")?,
                leader_local,
            ));
            if rank == leader {
                leaders = Some(sub(
                    plan.leaders.clone(),
                    plan.inter,
                    "measured, inter-domain",
                )?);
            }
            if plan.equal_domains() {
                let local = dom.iter().position(|&m| m == rank).unwrap_or(0);
                let members = plan.domains.iter().map(|d| d[local]).collect();
                shard = Some(sub(members, plan.inter, "measured, inter-domain")?);
            }
        }
        Ok(Self::compose(plan, rank, flat, intra, leaders, shard))
    }

    /// Compose communicators of any kind (for example in-process inside a
    /// domain and TCP between domains). `intra` carries the leader's index
    /// within the domain communicator.
    pub fn compose(
        plan: HierPlan,
        rank: usize,
        flat: Box<dyn Collective>,
        intra: Option<(Box<dyn Collective>, usize)>,
        leaders: Option<Box<dyn Collective>>,
        shard: Option<Box<dyn Collective>>,
    ) -> Self {
        Hierarchical {
            plan,
            rank,
            flat,
            intra,
            leaders,
            shard,
            forced: None,
            tuned: Vec::new(),
            hierarchical_only: false,
        }
    }

    /// Always use `scheme` (for benchmarks and tests); falls back to what can
    /// run when it is not available.
    pub fn with_scheme(mut self, scheme: Scheme) -> Self {
        self.forced = Some(scheme);
        self
    }

    /// Choose between the leader and sharded schemes only (by the model or
    /// by [`Hierarchical::tune`]), never flat while there are two or more
    /// domains: to compare hierarchical against flat in benchmarks.
    pub fn hierarchical_only(mut self) -> Self {
        self.hierarchical_only = true;
        self
    }

    /// Flat is left out of the choice: hierarchical only, over two or more
    /// domains (with one, flat is all there is).
    fn excludes_flat(&self) -> bool {
        self.hierarchical_only && self.plan.domains.len() > 1
    }

    pub fn plan(&self) -> &HierPlan {
        &self.plan
    }

    /// The scheme an all-reduce of `bytes` bytes uses: the forced one, else
    /// the tuned choice of the nearest measured size (in log scale), else
    /// the cost model's.
    pub fn scheme_for(&self, bytes: usize) -> Scheme {
        let want = self
            .forced
            .or_else(|| self.tuned_choice(bytes))
            .unwrap_or_else(|| self.plan.choose_from(bytes as f64, self.excludes_flat()).0);
        self.runnable(want)
    }

    fn tuned_choice(&self, bytes: usize) -> Option<Scheme> {
        let log = |b: usize| (b.max(1) as f64).log2();
        self.tuned
            .iter()
            .min_by(|a, b| {
                (log(a.0) - log(bytes))
                    .abs()
                    .total_cmp(&(log(b.0) - log(bytes)).abs())
            })
            .map(|&(_, scheme)| scheme)
    }

    /// Measure every scheme this rank can run (flat, leader, sharded) on
    /// all-reduces of 1 KiB, 4 KiB, ... up to `max_bytes` (f32 sum, the
    /// median of `repetitions` timed runs after one warm-up), and use the
    /// fastest for each size from then on instead of the cost model's
    /// prediction, as MPI libraries' tuned collectives do. Every rank must
    /// call it with the same arguments; the ranks' slowest times are
    /// compared, so all ranks choose alike. Returns the measured table:
    /// (bytes, [(scheme, seconds)], chosen scheme).
    pub async fn tune(
        &mut self,
        max_bytes: usize,
        repetitions: usize,
    ) -> Result<Vec<(usize, Vec<(Scheme, f64)>, Scheme)>> {
        let sizes: Vec<usize> = std::iter::successors(Some(1024usize), |b| b.checked_mul(4))
            .take_while(|&b| b <= max_bytes.max(1024))
            .collect();
        let schemes: Vec<Scheme> = [Scheme::Flat, Scheme::Leader, Scheme::Sharded]
            .into_iter()
            .filter(|&s| self.runnable(s) == s && !(s == Scheme::Flat && self.excludes_flat()))
            .collect();
        let mut table = Vec::new();
        let mut tuned = Vec::new();
        for &bytes in &sizes {
            let mut buf = vec![0f32; bytes / 4];
            let mut times = vec![0f64; schemes.len()];
            for (k, &scheme) in schemes.iter().enumerate() {
                let mut samples = Vec::new();
                for rep in 0..=repetitions.max(1) {
                    self.flat.barrier().await?;
                    let start = std::time::Instant::now();
                    self.all_reduce_with(
                        scheme,
                        TensorMut::Host(HostSliceMut::new(&mut buf)),
                        ReduceOp::Sum,
                    )
                    .await?;
                    if rep > 0 {
                        samples.push(start.elapsed().as_secs_f64());
                    }
                }
                samples.sort_by(f64::total_cmp);
                times[k] = samples[samples.len() / 2];
            }
            // The slowest rank's time is the operation's time; every rank
            // gets the same numbers, so every rank picks the same scheme.
            self.flat
                .all_reduce(
                    TensorMut::Host(HostSliceMut::new(&mut times)),
                    ReduceOp::Max,
                )
                .await?;
            let best = schemes
                .iter()
                .zip(&times)
                .min_by(|a, b| a.1.total_cmp(b.1))
                .map(|(&s, _)| s)
                .unwrap_or(Scheme::Flat);
            tuned.push((bytes, best));
            table.push((bytes, schemes.iter().copied().zip(times).collect(), best));
        }
        self.tuned = tuned;
        Ok(table)
    }

    /// `want` if this rank has its communicators, else the closest that runs
    /// (sharded -> leader -> flat).
    fn runnable(&self, want: Scheme) -> Scheme {
        match want {
            Scheme::Sharded if self.shard.is_some() && self.intra.is_some() => Scheme::Sharded,
            Scheme::Leader | Scheme::Sharded if self.intra.is_some() => Scheme::Leader,
            _ => Scheme::Flat,
        }
    }

    /// All-reduce with `scheme` (or the closest that can run), whatever the
    /// model would choose. Every rank must pass the same scheme.
    pub async fn all_reduce_with(
        &self,
        scheme: Scheme,
        mut data: TensorMut<'_>,
        op: ReduceOp,
    ) -> Result<()> {
        let scheme = self.runnable(scheme);
        if scheme == Scheme::Flat {
            return self.flat.all_reduce(data, op).await;
        }
        let dtype = data.dtype();
        // Host slices are reduced in place; device buffers are staged once.
        match &mut data {
            TensorMut::Host(h) => self.run_scheme(scheme, dtype, h.as_bytes_mut(), op).await,
            TensorMut::Device { .. } => {
                let mut s = read_tensor_mut(&data)?;
                self.run_scheme(scheme, dtype, s.bytes_mut(), op).await?;
                write_tensor(&mut data, &s)
            }
        }
    }

    async fn run_scheme(
        &self,
        scheme: Scheme,
        dtype: DType,
        bytes: &mut [u8],
        op: ReduceOp,
    ) -> Result<()> {
        let segs = Segments::split(dtype, bytes, self.plan.segment_bytes);
        match scheme {
            Scheme::Sharded => self.sharded_scheme(&segs, op).await,
            _ => self.leader_scheme(&segs, op).await,
        }
    }

    async fn leader_scheme(&self, segs: &Segments<'_>, op: ReduceOp) -> Result<()> {
        let Some((intra, root)) = &self.intra else {
            return Err(hetero_core::Error::invalid(
                "plan",
                "no domain communicator",
            ));
        };
        let root = *root;
        let dtype = segs.dtype;
        let reduce = |k: usize| async move {
            let mut seg = segs.data[k].lock().await;
            intra
                .reduce(
                    TensorMut::Host(host_view_mut(dtype, &mut seg)?),
                    op.combine_op(),
                    root,
                )
                .await
        };
        let across = |k: usize| async move {
            let Some(leaders) = &self.leaders else {
                return Ok(());
            };
            let mut seg = segs.data[k].lock().await;
            leaders
                .all_reduce(
                    TensorMut::Host(host_view_mut(dtype, &mut seg)?),
                    op.combine_op(),
                )
                .await?;
            finish_bytes(dtype, op, &mut seg, self.plan.n)
        };
        let broadcast = |k: usize| async move {
            let mut seg = segs.data[k].lock().await;
            intra
                .broadcast(TensorMut::Host(host_view_mut(dtype, &mut seg)?), root)
                .await
        };
        pipeline(segs.count(), reduce, across, broadcast).await
    }

    async fn sharded_scheme(&self, segs: &Segments<'_>, op: ReduceOp) -> Result<()> {
        let (Some((intra, _)), Some(shard)) = (&self.intra, &self.shard) else {
            return Err(hetero_core::Error::invalid("plan", "no shard communicator"));
        };
        let dtype = segs.dtype;
        let parts: Vec<tokio::sync::Mutex<Staged>> = segs
            .lens
            .iter()
            .map(|&len| {
                let own = chunk_range(len, intra.size(), intra.rank());
                tokio::sync::Mutex::new(Staged::zeroed(dtype, own.len()))
            })
            .collect();
        let parts = &parts;
        let scatter = |k: usize| async move {
            let seg = segs.data[k].lock().await;
            let mut part = parts[k].lock().await;
            intra
                .reduce_scatter(
                    Tensor::Host(host_view(dtype, &seg)?),
                    TensorMut::Host(part.host_mut()?),
                    op.combine_op(),
                )
                .await
        };
        let across = |k: usize| async move {
            let mut part = parts[k].lock().await;
            shard
                .all_reduce(TensorMut::Host(part.host_mut()?), op.combine_op())
                .await?;
            finish_bytes(dtype, op, part.bytes_mut(), self.plan.n)
        };
        let gather = |k: usize| async move {
            let part = parts[k].lock().await;
            let mut seg = segs.data[k].lock().await;
            intra
                .all_gather(
                    Tensor::Host(part.host()?),
                    TensorMut::Host(host_view_mut(dtype, &mut seg)?),
                )
                .await
        };
        pipeline(segs.count(), scatter, across, gather).await
    }
}

/// Disjoint segments of one all-reduce's bytes, each behind its own lock so
/// the phases of different segments can run at once (no two phases in
/// flight ever touch the same segment).
struct Segments<'a> {
    dtype: DType,
    /// Elements per segment.
    lens: Vec<usize>,
    data: Vec<tokio::sync::Mutex<&'a mut [u8]>>,
}

impl<'a> Segments<'a> {
    /// Cut `bytes` into segments of about `segment_bytes` (at most
    /// [`MAX_SEGMENTS`], at least one), at element boundaries.
    fn split(dtype: DType, bytes: &'a mut [u8], segment_bytes: usize) -> Self {
        let elem = dtype.size_bytes();
        let len = bytes.len() / elem;
        let count = segment_count(bytes.len(), segment_bytes);
        let lens: Vec<usize> = (0..count)
            .map(|k| chunk_range(len, count, k).len())
            .collect();
        let mut data = Vec::with_capacity(count);
        let mut rest = bytes;
        for &n in &lens {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(n * elem);
            data.push(tokio::sync::Mutex::new(head));
            rest = tail;
        }
        Segments { dtype, lens, data }
    }

    fn count(&self) -> usize {
        self.lens.len()
    }
}

/// Predicted time of [`pipeline`] over `k` segments whose phases take
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

/// Run `count` segments through three phases: `before` (inside the domain),
/// `across` (between domains), `after` (inside the domain). Step `k` runs
/// `before(k)` then `after(k - 2)` on the domain communicator while
/// `across(k - 1)` runs between domains, so the slow link is busy while the
/// domain works on the neighbouring segments. Every rank issues the same
/// sequence of operations on each communicator (the domain's and the
/// inter-domain one have disjoint peers, so they may be in flight together).
async fn pipeline<B, A, F, FB, FA, FF>(count: usize, before: B, across: A, after: F) -> Result<()>
where
    B: Fn(usize) -> FB,
    A: Fn(usize) -> FA,
    F: Fn(usize) -> FF,
    FB: Future<Output = Result<()>>,
    FA: Future<Output = Result<()>>,
    FF: Future<Output = Result<()>>,
{
    for step in 0..count + 2 {
        let domain = async {
            if step < count {
                before(step).await?;
            }
            if (2..count + 2).contains(&step) {
                after(step - 2).await?;
            }
            Ok::<(), hetero_core::Error>(())
        };
        let between = async {
            if (1..count + 1).contains(&step) {
                across(step - 1).await?;
            }
            Ok::<(), hetero_core::Error>(())
        };
        tokio::try_join!(domain, between)?;
    }
    Ok(())
}

#[async_trait]
impl Collective for Hierarchical {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.plan.n
    }

    async fn all_reduce(&self, data: TensorMut<'_>, op: ReduceOp) -> Result<()> {
        let bytes = data.len() * data.dtype().size_bytes();
        self.all_reduce_with(self.scheme_for(bytes), data, op).await
    }

    async fn reduce_scatter(
        &self,
        input: Tensor<'_>,
        output: TensorMut<'_>,
        op: ReduceOp,
    ) -> Result<()> {
        self.flat.reduce_scatter(input, output, op).await
    }

    async fn all_gather(&self, input: Tensor<'_>, output: TensorMut<'_>) -> Result<()> {
        self.flat.all_gather(input, output).await
    }

    async fn broadcast(&self, data: TensorMut<'_>, root: usize) -> Result<()> {
        self.flat.broadcast(data, root).await
    }

    async fn reduce(&self, data: TensorMut<'_>, op: ReduceOp, root: usize) -> Result<()> {
        self.flat.reduce(data, op, root).await
    }

    async fn barrier(&self) -> Result<()> {
        self.flat.barrier().await
    }

    fn explain(&self) -> String {
        let forced = match (self.forced, self.tuned.is_empty()) {
            (Some(s), _) => format!(" (scheme forced to {})", s.name()),
            (None, false) => {
                let picks: Vec<String> = self
                    .tuned
                    .iter()
                    .map(|(b, s)| format!("{} {}", fmt_bytes(*b as f64), s.name()))
                    .collect();
                format!(
                    " (tuned by measurement, which overrides the prediction: {})",
                    picks.join(", ")
                )
            }
            (None, true) if self.excludes_flat() => {
                " (leader or sharded only: flat is not chosen)".to_string()
            }
            (None, true) => String::new(),
        };
        format!(
            "{}{forced}. Other operations run flat: {} Hierarchical all-reduce stages device buffers through the host once and runs every step on host memory.",
            self.plan.explain(),
            self.flat.explain()
        )
    }
}
