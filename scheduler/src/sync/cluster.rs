//! The cluster a strategy runs on: rank layout, link parameters, and the
//! start-up of in-process ranks over emulated node links.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use hetero_collectives::sense::{SenseConfig, sense_topology};
use hetero_collectives::{HierPlan, Hierarchical, InProcessTransport, ShapedTransport, Transport};
use hetero_core::{
    Backend, DeviceId, DeviceKind, Error, LinkKind, LinkModel, Result, Topology, TopologyDevice,
};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::exec::{Driver, serve_worker};
use super::strategy::Layout;

/// A cluster description (JSON file of `hetero-autosync --cluster`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClusterSpec {
    pub nodes: usize,
    pub ranks_per_node: usize,
    /// The link between nodes: what in-process runs emulate (one NIC per node).
    pub inter: LinkModel,
    /// Link inside a node for the simulator; measured when absent.
    #[serde(default)]
    pub intra: Option<LinkModel>,
}

impl ClusterSpec {
    /// 2 nodes x 4 ranks, 1 Gbit/s and 0.5 ms between nodes.
    pub fn default_emulated() -> Self {
        ClusterSpec {
            nodes: 2,
            ranks_per_node: 4,
            inter: LinkModel::new(LinkKind::Ethernet, 0.5e-3, 125e6),
            intra: None,
        }
    }

    pub fn layout(&self) -> Result<Layout> {
        Layout::new(self.nodes, self.ranks_per_node)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading cluster file {}", path.display()), e))?;
        let c: ClusterSpec = serde_json::from_str(&text).map_err(|e| {
            Error::invalid(
                "cluster JSON",
                format!(
                    "{}: {e} (expected {{\"nodes\": 2, \"ranks_per_node\": 4, \"inter\": {{\"kind\": \"ethernet\", \"latency_s\": 0.0005, \"bandwidth_bytes_per_s\": 125000000.0}}}})",
                    path.display()
                ),
            )
        })?;
        c.layout()?;
        c.inter.validate("inter")?;
        if let Some(i) = &c.intra {
            i.validate("intra")?;
        }
        Ok(c)
    }
}

/// What the simulators know about the cluster.
#[derive(Debug, Clone)]
pub struct ClusterModel {
    pub layout: Layout,
    /// Slowest link inside a node and between nodes.
    pub intra: LinkModel,
    pub inter: LinkModel,
    /// Slowest link of all (what a flat algorithm waits on).
    pub flat: LinkModel,
    pub plan: HierPlan,
    /// Measured single-thread memory copy speed (packing, summing).
    pub copy_bytes_per_s: f64,
    /// Ranks that share one core of a machine (host work slows by this).
    pub ranks_per_core: f64,
    /// Where the link numbers came from.
    pub source: String,
}

fn rank_device(r: usize) -> TopologyDevice {
    TopologyDevice::bare(
        DeviceId::new(Backend::Host, r as u32),
        format!("rank {r}"),
        DeviceKind::Cpu,
    )
}

/// A topology of the layout's ranks with the given links.
pub fn layout_topology(layout: &Layout, intra: LinkModel, inter: LinkModel) -> Result<Topology> {
    let devices = (0..layout.world()).map(rank_device).collect();
    Topology::from_fn(devices, |i, j| {
        (i != j).then(|| {
            if layout.node_of(i) == layout.node_of(j) {
                intra
            } else {
                inter
            }
        })
    })
}

/// Cores of this machine.
pub fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// Single-thread copy speed of 32 MiB (best of 3), bytes/s.
pub fn measure_copy_speed() -> f64 {
    let src = vec![1u8; 32 << 20];
    let mut dst = vec![0u8; 32 << 20];
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&dst);
    }
    if best > 0.0 {
        src.len() as f64 / best
    } else {
        10e9
    }
}

impl ClusterModel {
    /// From a topology of the ranks (sensed or written by hand); intra and
    /// inter links are the slowest of each kind under `layout`'s nodes.
    pub fn from_topology(
        layout: Layout,
        topo: &Topology,
        copy_bytes_per_s: f64,
        source: impl Into<String>,
    ) -> Result<Self> {
        if topo.len() != layout.world() {
            return Err(Error::invalid(
                "topology",
                format!("has {} ranks, the layout {}", topo.len(), layout.world()),
            ));
        }
        let (mut intra, mut inter) = (Vec::new(), Vec::new());
        for i in 0..topo.len() {
            for j in 0..topo.len() {
                if let (true, Some(l)) = (i != j, topo.link(i, j)) {
                    if layout.node_of(i) == layout.node_of(j) {
                        intra.push(*l);
                    } else {
                        inter.push(*l);
                    }
                }
            }
        }
        let flat = hetero_collectives::cost::worst_link(intra.iter().chain(&inter))
            .unwrap_or_else(|| LinkModel::new(LinkKind::SharedMemory, 1e-6, 10e9));
        Ok(ClusterModel {
            layout,
            intra: hetero_collectives::cost::worst_link(&intra).unwrap_or(flat),
            inter: hetero_collectives::cost::worst_link(&inter).unwrap_or(flat),
            flat,
            plan: HierPlan::new(topo)?,
            copy_bytes_per_s,
            ranks_per_core: (layout.ranks_per_node as f64 / cores()).max(1.0),
            source: source.into(),
        })
    }
}

/// How the ranks learn their links.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LinkSource {
    /// Ping-pong between every pair at start-up (hetero-collectives' sensing).
    Measure,
    /// Take the spec's `intra` (required) and `inter` links as they are.
    Spec,
}

/// In-process ranks over emulated node links: rank 0's driver, the workers'
/// tasks, and the cluster model rank 0 built.
#[derive(Debug)]
pub struct InProcessCluster {
    pub driver: Driver,
    pub model: ClusterModel,
    pub topology: Topology,
    workers: Vec<JoinHandle<Result<()>>>,
}

async fn rank_topology(
    t: Arc<dyn Transport>,
    spec: &ClusterSpec,
    layout: &Layout,
    links: LinkSource,
) -> Result<Topology> {
    match (links, spec.intra) {
        (LinkSource::Measure, _) => sense_topology(t, &SenseConfig::default()).await,
        (LinkSource::Spec, Some(intra)) => layout_topology(layout, intra, spec.inter),
        (LinkSource::Spec, None) => Err(Error::invalid(
            "cluster",
            "links were to come from the cluster file, but it has no \"intra\" link: add one or measure",
        )),
    }
}

impl InProcessCluster {
    /// Start `spec`'s ranks as tasks of this process (a tokio runtime with
    /// more than one worker thread is best: ranks wait on each other).
    pub async fn start(spec: &ClusterSpec, links: LinkSource) -> Result<Self> {
        let layout = spec.layout()?;
        let inner: Vec<Arc<dyn Transport>> = InProcessTransport::group(layout.world())
            .into_iter()
            .map(|t| Arc::new(t) as Arc<dyn Transport>)
            .collect();
        let node_of = (0..layout.world()).map(|r| layout.node_of(r)).collect();
        let ranks: Vec<Arc<dyn Transport>> = if layout.nodes > 1 {
            ShapedTransport::group(inner, node_of, spec.inter)?
                .into_iter()
                .map(|t| Arc::new(t) as Arc<dyn Transport>)
                .collect()
        } else {
            inner
        };
        let mut workers = Vec::new();
        let mut rank0 = None;
        for t in ranks {
            if t.rank() == 0 {
                rank0 = Some(t);
                continue;
            }
            let spec = *spec;
            workers.push(tokio::spawn(async move {
                let topo = rank_topology(t.clone(), &spec, &layout, links).await?;
                let hier = Hierarchical::new(t.clone(), &topo)?;
                serve_worker(t, hier, layout).await
            }));
        }
        let t = rank0.ok_or_else(|| Error::invalid("cluster", "no rank 0"))?;
        let topo = rank_topology(t.clone(), spec, &layout, links).await?;
        let hier = Hierarchical::new(t.clone(), &topo)?;
        let source = match links {
            LinkSource::Measure => "measured at start-up (ping-pong between every pair)",
            LinkSource::Spec => "from the cluster file",
        };
        let mut model = ClusterModel::from_topology(layout, &topo, measure_copy_speed(), source)?;
        // Every rank of every emulated node shares this machine's cores.
        model.ranks_per_core = (layout.world() as f64 / cores()).max(1.0);
        Ok(InProcessCluster {
            driver: Driver::new(t, hier, layout)?,
            model,
            topology: topo,
            workers,
        })
    }

    /// Stop the workers and wait for them.
    pub async fn shutdown(self) -> Result<()> {
        self.driver.stop().await?;
        for w in self.workers {
            w.await
                .map_err(|e| Error::invalid("worker", format!("task failed: {e}")))??;
        }
        Ok(())
    }
}
