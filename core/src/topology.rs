//! Measured topology: devices, the link matrix between them, and domains.
//!
//! A **domain** is a set of devices whose internal bandwidth exceeds the
//! bandwidth leaving it by at least `domain_ratio` (default 4x): the GPUs of
//! one node behind a network, an NVLink pair inside a PCIe box. Hierarchical
//! collectives put one leader in each domain; when no split passes the ratio
//! test the topology is one flat domain.
//!
//! ## Detection
//!
//! Bandwidths are made symmetric (`min` of both directions inside a set,
//! `max` of both directions leaving it). For each distinct bandwidth `t`,
//! from highest to lowest, the devices joined by links of at least `t` form
//! connected components; a component split is *valid* when it has at least
//! two parts, is not all singletons, and every part with two or more devices
//! has `internal >= domain_ratio * leaving`, where `internal` is the lower
//! quartile of the links inside the part and `leaving` the upper quartile
//! of the links leaving it (with one or two links, the minimum and the
//! maximum). Quartiles, not the extremes, because measured matrices carry
//! a few outliers (a shaped link passing a burst, a pair timed while its
//! host was busy) that would otherwise collapse a real two-level cluster;
//! with clean measurements (equal links within each class) it is the
//! min / max test. Valid splits found this way are nested (each is a
//! refinement of the next), which gives [`Topology::domain_levels`] (finest
//! first). [`Topology::domains`] is the coarsest valid split: with NVLink
//! pairs inside PCIe nodes inside Ethernet, the levels are `[pairs, nodes]`
//! and the domains are the nodes, whose gap (PCIe vs Ethernet) is what a
//! two-level collective exploits.
//!
//! A partition whose internal links are all faster than every link between
//! its parts is among the threshold splits, so it is found whenever it
//! passes the ratio test; one whose slowest internal link is slower than
//! some link between parts appears only if a threshold still separates the
//! parts.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::device::{DeviceInfo, DeviceKind};
use crate::error::{Error, Result};
use crate::id::DeviceId;
use crate::link::LinkModel;

/// Default bandwidth ratio that makes a set of devices a domain.
pub const DEFAULT_DOMAIN_RATIO: f64 = 4.0;

/// Version of the JSON format written by [`Topology::to_json`].
pub const TOPOLOGY_FORMAT_VERSION: u32 = 1;

/// One device of a topology, with what was measured about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopologyDevice {
    pub info: DeviceInfo,
    /// Measured f32 GEMM throughput, FLOP/s, when probed.
    #[serde(default)]
    pub gemm_flops_per_s: Option<f64>,
}

impl TopologyDevice {
    /// A device known only by its id, name and kind: a rank of a job whose
    /// links are sensed, or a synthetic device in a test. No vendor,
    /// memory, driver or measured throughput.
    pub fn bare(id: DeviceId, name: impl Into<String>, kind: DeviceKind) -> Self {
        TopologyDevice {
            info: DeviceInfo {
                id,
                name: name.into(),
                kind,
                vendor: String::new(),
                memory_total_bytes: 0,
                memory_free_bytes: None,
                driver: None,
                compute_units: None,
                host_threads: None,
            },
            gemm_flops_per_s: None,
        }
    }
}

/// How a domain's leader is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaderPolicy {
    /// The lowest device index in the domain (rank 0 of the domain).
    #[default]
    LowestIndex,
    /// The device with the highest bandwidth to devices outside the domain.
    BestExternalBandwidth,
}

/// A set of devices (indices into [`Topology::devices`]) and its leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Domain {
    /// Device indices, ascending.
    pub members: Vec<usize>,
    pub leader: usize,
    /// Lowest bandwidth between two members, bytes/s (`None` for one device).
    pub internal_bandwidth_bytes_per_s: Option<f64>,
    /// Highest bandwidth from a member to a non-member, bytes/s (`None` when flat).
    pub external_bandwidth_bytes_per_s: Option<f64>,
}

/// Devices plus the matrix of measured links between them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Topology {
    version: u32,
    devices: Vec<TopologyDevice>,
    /// `links[i][j]`: the link from device `i` to device `j`. The diagonal may
    /// be `null` (not measured); every other entry is required.
    links: Vec<Vec<Option<LinkModel>>>,
    domain_ratio: f64,
    leader_policy: LeaderPolicy,
}

/// The on-disk shape, validated into a [`Topology`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyFile {
    version: u32,
    devices: Vec<TopologyDevice>,
    links: Vec<Vec<Option<LinkModel>>>,
    #[serde(default = "default_ratio")]
    domain_ratio: f64,
    #[serde(default)]
    leader_policy: LeaderPolicy,
    /// Written for people and tools reading the file; recomputed on load.
    #[serde(default)]
    #[allow(dead_code)]
    domains: Option<serde_json::Value>,
}

fn default_ratio() -> f64 {
    DEFAULT_DOMAIN_RATIO
}

impl Topology {
    /// Build and validate a topology. `links` must be `n x n` for `n` devices.
    pub fn new(devices: Vec<TopologyDevice>, links: Vec<Vec<Option<LinkModel>>>) -> Result<Self> {
        let t = Topology {
            version: TOPOLOGY_FORMAT_VERSION,
            devices,
            links,
            domain_ratio: DEFAULT_DOMAIN_RATIO,
            leader_policy: LeaderPolicy::default(),
        };
        t.validate()?;
        Ok(t)
    }

    /// Build a topology from a function giving the link between devices `i`
    /// and `j` (for synthetic topologies and hand-written cluster plans).
    pub fn from_fn(
        devices: Vec<TopologyDevice>,
        mut link: impl FnMut(usize, usize) -> Option<LinkModel>,
    ) -> Result<Self> {
        let n = devices.len();
        let links = (0..n)
            .map(|i| (0..n).map(|j| link(i, j)).collect())
            .collect();
        Topology::new(devices, links)
    }

    /// Change the ratio that makes a set a domain (must be > 1).
    pub fn with_domain_ratio(mut self, ratio: f64) -> Result<Self> {
        check_ratio(ratio)?;
        self.domain_ratio = ratio;
        Ok(self)
    }

    pub fn with_leader_policy(mut self, policy: LeaderPolicy) -> Self {
        self.leader_policy = policy;
        self
    }

    pub fn devices(&self) -> &[TopologyDevice] {
        &self.devices
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    pub fn domain_ratio(&self) -> f64 {
        self.domain_ratio
    }

    pub fn leader_policy(&self) -> LeaderPolicy {
        self.leader_policy
    }

    /// The link from device `i` to device `j`, if present.
    pub fn link(&self, i: usize, j: usize) -> Option<&LinkModel> {
        self.links.get(i)?.get(j)?.as_ref()
    }

    /// The full matrix.
    pub fn links(&self) -> &[Vec<Option<LinkModel>>] {
        &self.links
    }

    fn validate(&self) -> Result<()> {
        if self.version != TOPOLOGY_FORMAT_VERSION {
            return Err(Error::invalid(
                "version",
                format!(
                    "this build reads topology format {TOPOLOGY_FORMAT_VERSION}, the file is version {}",
                    self.version
                ),
            ));
        }
        check_ratio(self.domain_ratio)?;
        let n = self.devices.len();
        if self.links.len() != n {
            return Err(Error::invalid(
                "links",
                format!(
                    "expected {n} rows (one per device), got {}",
                    self.links.len()
                ),
            ));
        }
        for (i, row) in self.links.iter().enumerate() {
            if row.len() != n {
                return Err(Error::invalid(
                    format!("links[{i}]"),
                    format!("expected {n} entries (one per device), got {}", row.len()),
                ));
            }
            for (j, link) in row.iter().enumerate() {
                match link {
                    Some(model) => model.validate(&format!("links[{i}][{j}]"))?,
                    None if i != j => {
                        return Err(Error::invalid(
                            format!("links[{i}][{j}]"),
                            "missing; every pair of distinct devices needs a link model",
                        ));
                    }
                    None => {}
                }
            }
        }
        for (i, a) in self.devices.iter().enumerate() {
            if let Some(f) = a.gemm_flops_per_s
                && !(f.is_finite() && f > 0.0)
            {
                return Err(Error::invalid(
                    format!("devices[{i}].gemm_flops_per_s"),
                    format!("must be a finite number > 0, got {f}"),
                ));
            }
            if let Some(j) = self.devices[..i]
                .iter()
                .position(|b| b.info.id == a.info.id)
            {
                return Err(Error::invalid(
                    format!("devices[{i}].info.id"),
                    format!(
                        "{} is also devices[{j}]; device ids must be unique",
                        a.info.id
                    ),
                ));
            }
        }
        Ok(())
    }

    fn bandwidth(&self, i: usize, j: usize) -> f64 {
        self.link(i, j)
            .map(|l| l.bandwidth_bytes_per_s)
            .unwrap_or(f64::INFINITY)
    }

    fn sym_low(&self, i: usize, j: usize) -> f64 {
        self.bandwidth(i, j).min(self.bandwidth(j, i))
    }

    fn sym_high(&self, i: usize, j: usize) -> f64 {
        self.bandwidth(i, j).max(self.bandwidth(j, i))
    }

    /// All valid domain splits, finest first (see the module docs). Empty
    /// when the topology is flat.
    pub fn domain_levels(&self) -> Vec<Vec<Domain>> {
        let n = self.devices.len();
        let mut thresholds: Vec<f64> = (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .map(|(i, j)| self.sym_low(i, j))
            .collect();
        thresholds.sort_by(|a, b| b.total_cmp(a));
        thresholds.dedup();
        let mut levels: Vec<Vec<Vec<usize>>> = Vec::new();
        for t in thresholds {
            let parts = self.components(t);
            if parts.len() < 2 || parts.iter().all(|p| p.len() == 1) {
                continue;
            }
            if levels.last() == Some(&parts) {
                continue;
            }
            if parts.iter().all(|p| self.part_is_domain(p)) {
                levels.push(parts);
            }
        }
        levels
            .into_iter()
            .map(|parts| parts.into_iter().map(|p| self.domain_of(p)).collect())
            .collect()
    }

    /// The domains: the coarsest valid split, or one flat domain of all devices.
    pub fn domains(&self) -> Vec<Domain> {
        match self.domain_levels().pop() {
            Some(level) => level,
            None if self.devices.is_empty() => Vec::new(),
            None => vec![self.domain_of((0..self.devices.len()).collect())],
        }
    }

    /// True when [`Topology::domains`] has more than one domain.
    pub fn is_hierarchical(&self) -> bool {
        self.domains().len() > 1
    }

    /// Connected components of the graph of links with bandwidth >= `t`,
    /// each sorted, ordered by their smallest member.
    fn components(&self, t: f64) -> Vec<Vec<usize>> {
        let n = self.devices.len();
        let mut parent: Vec<usize> = (0..n).collect();
        fn root(parent: &mut [usize], mut x: usize) -> usize {
            while parent[x] != x {
                parent[x] = parent[parent[x]];
                x = parent[x];
            }
            x
        }
        for i in 0..n {
            for j in i + 1..n {
                if self.sym_low(i, j) >= t {
                    let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                    if a != b {
                        parent[a.max(b)] = a.min(b);
                    }
                }
            }
        }
        let mut parts: Vec<Vec<usize>> = Vec::new();
        let mut slot = vec![usize::MAX; n];
        for i in 0..n {
            let r = root(&mut parent, i);
            if slot[r] == usize::MAX {
                slot[r] = parts.len();
                parts.push(Vec::new());
            }
            parts[slot[r]].push(i);
        }
        parts
    }

    /// The lower quartile of the links inside `part` (each the slower
    /// direction): one noisy slow pair does not decide.
    fn internal_low(&self, part: &[usize]) -> Option<f64> {
        let inside = part
            .iter()
            .flat_map(|&i| part.iter().filter(move |&&j| j > i).map(move |&j| (i, j)))
            .map(|(i, j)| self.sym_low(i, j));
        quantile(inside.collect(), 0.25)
    }

    /// The upper quartile of the links leaving `part` (each the faster
    /// direction): one noisy fast pair does not decide.
    fn external_high(&self, part: &[usize]) -> Option<f64> {
        let n = self.devices.len();
        let leaving = part
            .iter()
            .flat_map(|&i| (0..n).filter(|j| !part.contains(j)).map(move |j| (i, j)))
            .map(|(i, j)| self.sym_high(i, j));
        quantile(leaving.collect(), 0.75)
    }

    fn part_is_domain(&self, part: &[usize]) -> bool {
        match (self.internal_low(part), self.external_high(part)) {
            (Some(inside), Some(outside)) => inside >= self.domain_ratio * outside,
            _ => true,
        }
    }

    fn domain_of(&self, members: Vec<usize>) -> Domain {
        let n = self.devices.len();
        let leader = match self.leader_policy {
            LeaderPolicy::LowestIndex => members[0],
            LeaderPolicy::BestExternalBandwidth => {
                let outside = |i: usize| {
                    (0..n)
                        .filter(|j| !members.contains(j))
                        .map(|j| self.sym_low(i, j))
                        .fold(0.0, f64::max)
                };
                // Ties go to the lower index, so the choice is deterministic.
                members
                    .iter()
                    .copied()
                    .fold((members[0], f64::NEG_INFINITY), |best, i| {
                        let b = outside(i);
                        if b > best.1 { (i, b) } else { best }
                    })
                    .0
            }
        };
        Domain {
            internal_bandwidth_bytes_per_s: self.internal_low(&members),
            external_bandwidth_bytes_per_s: self.external_high(&members),
            leader,
            members,
        }
    }

    /// Pretty JSON, with the detected domains included for readers (they are
    /// recomputed, not trusted, when the file is loaded).
    pub fn to_json(&self) -> Result<String> {
        let mut value = serde_json::to_value(self)
            .map_err(|e| Error::invalid("topology", format!("cannot serialise: {e}")))?;
        if let Some(obj) = value.as_object_mut() {
            let domains = serde_json::to_value(self.domains())
                .map_err(|e| Error::invalid("topology", format!("cannot serialise: {e}")))?;
            obj.insert("domains".into(), domains);
        }
        serde_json::to_string_pretty(&value)
            .map_err(|e| Error::invalid("topology", format!("cannot serialise: {e}")))
    }

    /// Parse and validate topology JSON. Errors name the offending field.
    pub fn from_json(text: &str) -> Result<Self> {
        let file: TopologyFile = serde_json::from_str(text).map_err(|e| {
            Error::invalid(
                "topology JSON",
                format!("{e} (expected the format written by `hetero-devices --json`)"),
            )
        })?;
        let t = Topology {
            version: file.version,
            devices: file.devices,
            links: file.links,
            domain_ratio: file.domain_ratio,
            leader_policy: file.leader_policy,
        };
        t.validate()?;
        Ok(t)
    }

    /// Write [`Topology::to_json`] to `path` (atomically: a temporary file
    /// beside it, then a rename, so an interrupted save never leaves half a file).
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self.to_json()?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json.as_bytes())
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            Error::io(
                format!("renaming {} to {}", tmp.display(), path.display()),
                e,
            )
        })
    }

    /// Read a topology saved by [`Topology::save`] (or written by hand).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Topology::from_json(&text).map_err(|e| match e {
            Error::InvalidInput { field, reason } => Error::InvalidInput {
                field: format!("{} in {}", field, path.display()),
                reason,
            },
            other => other,
        })
    }
}

fn check_ratio(ratio: f64) -> Result<()> {
    if ratio.is_finite() && ratio > 1.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            "domain_ratio",
            format!("must be a finite number > 1, got {ratio}"),
        ))
    }
}

/// The `q` quantile of `values` (the element at `floor(q (len - 1))` in
/// ascending order); `None` when empty. With one or two values it is the
/// minimum (`q < 0.5`) or the maximum (`q >= 0.5`).
fn quantile(mut values: Vec<f64>, q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let last = values.len() - 1;
    let k = if values.len() <= 2 {
        if q < 0.5 { 0 } else { last }
    } else {
        ((q * last as f64).floor() as usize).min(last)
    };
    values.get(k).copied()
}
