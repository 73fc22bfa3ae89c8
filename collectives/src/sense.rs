//! Topology sensing at communicator creation.
//!
//! ## Scheme
//!
//! Every pair of ranks `i < j` runs a ping-pong of a few sizes (default 64 B,
//! 64 KiB, 1 MiB, 4 MiB, after one untimed warm-up exchange; 3 repetitions
//! each; the median repetition per size is kept, since a shaped link passes
//! a burst at full speed now and then), one pair at a time in a fixed global order, so measurements do not
//! disturb each other and no rank waits on a pair out of order. Half the
//! round trip is fitted with [`LinkModel::fit`] (`t = alpha + n / beta`).
//! That is `n(n-1)/2` pairs: about 0.1 s for 8 in-process ranks; for large
//! jobs a cheaper scheme (one rank per host, assume intra-host links equal)
//! is the next step. Lower ranks own the fits of their pairs; one
//! all-gather gives every rank the whole matrix, so all ranks build the
//! same [`Topology`] (and so choose the same plans).
//!
//! Ranks are devices of [`Backend::Host`] named "rank N on HOST".
//! [`sense_or_load`] reuses a topology cached in a file when every rank
//! has a valid one of the right size (decided collectively).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use hetero_core::{
    Backend, Collective, DType, DeviceId, DeviceKind, LinkKind, LinkModel, ReduceOp, Result,
    Tensor, TensorMut, Topology, TopologyDevice,
};

use crate::cost::Algorithm;
use crate::exchange::all_gather_bytes;
use crate::flat::FlatCollective;
use crate::framing::{Header, OpKind};
use crate::transport::Transport;

/// Which sizes and how many repetitions the ping-pong uses.
#[derive(Debug, Clone)]
pub struct SenseConfig {
    pub sizes: Vec<usize>,
    pub repetitions: usize,
}

impl Default for SenseConfig {
    fn default() -> Self {
        SenseConfig {
            sizes: vec![64, 64 << 10, 1 << 20, 4 << 20],
            repetitions: 3,
        }
    }
}

const KINDS: [LinkKind; 8] = [
    LinkKind::SameDevice,
    LinkKind::Pcie,
    LinkKind::NvLink,
    LinkKind::SharedMemory,
    LinkKind::Loopback,
    LinkKind::Ethernet,
    LinkKind::InfiniBand,
    LinkKind::Unknown,
];

use crate::transport::host_name;

async fn ping_pong(
    t: &dyn Transport,
    peer: usize,
    cfg: &SenseConfig,
    lead: bool,
) -> Result<Vec<(f64, f64)>> {
    let mut samples = Vec::new();
    // One untimed exchange of the largest size first: warms the connection
    // (TCP slow start, page faults of fresh buffers) so the fit sees the link.
    let largest = cfg.sizes.iter().copied().max().unwrap_or(0);
    let plan = std::iter::once((largest, false)).chain(cfg.sizes.iter().map(|&s| (s, true)));
    for (size, timed) in plan {
        let h = Header {
            kind: OpKind::Probe,
            dtype: DType::U8,
            op: None,
            len: size as u64,
        };
        let payload = vec![0u8; size];
        let mut times = Vec::new();
        let reps = if timed { cfg.repetitions.max(1) } else { 1 };
        for _ in 0..reps {
            if lead {
                let start = Instant::now();
                t.send(peer, h.frame(&payload)).await?;
                let back = t.recv(peer).await?;
                h.open(t.rank(), peer, &back, size)?;
                times.push(start.elapsed().as_secs_f64() / 2.0);
            } else {
                let msg = t.recv(peer).await?;
                let body = h.open(t.rank(), peer, &msg, size)?;
                // Copy as the algorithms do (every send frames a copy), so an
                // in-process "link" is timed as the memory copy it really is.
                t.send(peer, h.frame(body)).await?;
            }
        }
        if lead && timed {
            // The median, not the fastest: a shaped link lets a burst through
            // at full speed now and then, and the fastest repetition would
            // price the link by its burst instead of its rate.
            times.sort_by(f64::total_cmp);
            samples.push((size as f64, times[times.len() / 2]));
        }
    }
    Ok(samples)
}

/// The least-squares fit; when the timings do not grow with size (a link
/// faster than the timer can resolve at these sizes), the bound the samples
/// still give: alpha = the smallest time, beta = largest size / its time.
fn fit_or_bound(kind: LinkKind, samples: &[(f64, f64)]) -> LinkModel {
    if let Ok(fit) = LinkModel::fit(kind, samples) {
        return fit.model;
    }
    let alpha = samples.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
    let (bytes, secs) = samples
        .iter()
        .copied()
        .fold((0.0, 0.0), |a, s| if s.0 > a.0 { s } else { a });
    let beta = if secs > 0.0 && bytes > 0.0 {
        bytes / secs
    } else {
        1e12
    };
    LinkModel::new(kind, if alpha.is_finite() { alpha } else { 0.0 }, beta)
}

/// Measure every link and build the topology (see the module docs).
pub async fn sense_topology(t: Arc<dyn Transport>, cfg: &SenseConfig) -> Result<Topology> {
    let (rank, n) = (t.rank(), t.size());
    // Row of this rank: (latency, bandwidth, kind) for every peer above it.
    let mut row = vec![0f64; 3 * n];
    for i in 0..n {
        for j in i + 1..n {
            if rank == i || rank == j {
                let peer = if rank == i { j } else { i };
                let samples = ping_pong(&*t, peer, cfg, rank == i).await?;
                if rank == i {
                    let kind = t.link_kind(j);
                    let model = fit_or_bound(kind, &samples);
                    row[3 * j] = model.latency_s;
                    row[3 * j + 1] = model.bandwidth_bytes_per_s;
                    row[3 * j + 2] = KINDS.iter().position(|&k| k == kind).unwrap_or(7) as f64;
                }
            }
        }
    }
    let gather = FlatCollective::unmeasured(t.clone(), Algorithm::Ring);
    let mut all = vec![0f64; 3 * n * n];
    gather
        .all_gather(
            Tensor::Host(hetero_core::HostSlice::new(&row)),
            TensorMut::Host(hetero_core::HostSliceMut::new(&mut all)),
        )
        .await?;
    // At most 64 bytes of the name, as the fixed-width exchange before
    // the byte all-gather kept (Linux's HOST_NAME_MAX), so device names
    // stay what they were.
    let mut name = host_name().into_bytes();
    name.truncate(64);
    let names = all_gather_bytes(&gather, &name).await?;
    let devices = names
        .iter()
        .enumerate()
        .map(|(r, raw)| {
            let host = String::from_utf8_lossy(raw)
                .trim_end_matches('\0')
                .to_string();
            TopologyDevice::bare(
                DeviceId::new(Backend::Host, r as u32),
                format!("rank {r} on {host}"),
                DeviceKind::Cpu,
            )
        })
        .collect();
    Topology::from_fn(devices, |i, j| {
        if i == j {
            return None;
        }
        let (lo, hi) = (i.min(j), i.max(j));
        let base = lo * 3 * n + 3 * hi;
        let kind = KINDS
            .get(all[base + 2] as usize)
            .copied()
            .unwrap_or(LinkKind::Unknown);
        Some(LinkModel::new(kind, all[base], all[base + 1]))
    })
}

/// Load the topology cached at `path` when every rank has a valid one for
/// this many ranks; otherwise measure it and write the cache.
pub async fn sense_or_load(
    t: Arc<dyn Transport>,
    cfg: &SenseConfig,
    path: &Path,
) -> Result<Topology> {
    let cached = Topology::load(path).ok().filter(|c| c.len() == t.size());
    let mut ok = [u8::from(cached.is_some())];
    FlatCollective::unmeasured(t.clone(), Algorithm::Tree)
        .all_reduce(
            TensorMut::Host(hetero_core::HostSliceMut::new(&mut ok)),
            ReduceOp::Min,
        )
        .await?;
    if let (1, Some(c)) = (ok[0], cached) {
        return Ok(c);
    }
    let topo = sense_topology(t, cfg).await?;
    topo.save(path)?;
    Ok(topo)
}

/// The slowest link of a topology (what a flat algorithm's steps wait on).
pub fn worst_link(topo: &Topology) -> Option<LinkModel> {
    crate::cost::worst_link(topo.links().iter().flatten().flatten())
}

/// A flat communicator whose cost model uses the measured slowest link.
pub async fn measured_flat(
    t: Arc<dyn Transport>,
    algorithm: Algorithm,
    cfg: &SenseConfig,
) -> Result<(FlatCollective, Topology)> {
    let topo = sense_topology(t.clone(), cfg).await?;
    let flat = match worst_link(&topo) {
        Some(l) => FlatCollective::new(t, algorithm, l, "measured at start-up (slowest link)"),
        None => FlatCollective::unmeasured(t, algorithm),
    };
    Ok((flat, topo))
}
