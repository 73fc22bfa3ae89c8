//! Execution of a hierarchical all-reduce: [`Hierarchical`] builds the
//! sub-communicators a [`HierPlan`] needs (domain, leaders, shards), runs
//! the leader and sharded schemes pipelined in segments, and can replace
//! the plan's choice by measured times ([`Hierarchical::tune`]). Other
//! operations run flat.

use std::sync::Arc;

use async_trait::async_trait;
use hetero_core::{
    Collective, DType, HostSliceMut, LinkModel, ReduceOp, Result, Tensor, TensorMut, Topology,
    chunk_range,
};

use super::plan::{HierPlan, segment_count};
use super::{Scheme, fmt_bytes};
use crate::combine::finish_bytes;
use crate::cost::Algorithm;
use crate::flat::FlatCollective;
use crate::staging::{Staged, host_view, host_view_mut, read_tensor_mut, write_tensor};
use crate::transport::{SubTransport, Transport};

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
    /// [`super::MAX_SEGMENTS`], at least one), at element boundaries.
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
