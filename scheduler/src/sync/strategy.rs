//! The strategy space: how each variable's gradient is synchronized.
//!
//! A [`Strategy`] gives every variable of a model one [`Synchronizer`]:
//!
//! - `ps`: parameter servers. The variable is split into `servers.len()`
//!   shards along its first axis (contiguous row ranges, [`chunk_range`]),
//!   shard `i` kept by rank `servers[i]`. Workers push gradients (sparse
//!   ones as touched rows only), the server sums, applies the update and
//!   sends the new values back. With `local_aggregation`, the ranks of a
//!   node first sum their gradients at the node's first rank, which alone
//!   talks to the servers and passes the new values on.
//! - `all_reduce`: gradients of every variable with the same `group` are
//!   fused into one buffer and all-reduced with `algorithm` (flat,
//!   hierarchical, or auto from `hetero-collectives`), optionally cast to
//!   f16 on the wire (`compression: fp16`). Variables of one group share
//!   algorithm and compression.
//! - `all_gather` (sparse variables only): every rank gathers the touched
//!   rows of every other rank and applies them all.
//!
//! Strategies serialise to JSON; [`Strategy::compile`] checks one against
//! its model and cluster and returns the [`SyncPlan`] the executor and the
//! simulators share.

use std::collections::{BTreeMap, BTreeSet};

use hetero_core::{DType, Error, Result, chunk_range};
use serde::{Deserialize, Serialize};

use super::model::ModelSpec;

/// Which all-reduce of `hetero-collectives` runs a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArAlgorithm {
    /// Ring or tree over all ranks (chosen by size with the measured model).
    Flat,
    /// Leader or sharded scheme over the node domains (the cheaper by the model).
    Hierarchical,
    /// Whatever the hierarchical plan's cost model picks, flat included.
    Auto,
}

impl ArAlgorithm {
    pub const ALL: [ArAlgorithm; 3] = [
        ArAlgorithm::Flat,
        ArAlgorithm::Hierarchical,
        ArAlgorithm::Auto,
    ];
}

/// Gradient compression on the wire.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    /// Cast to IEEE half precision for the all-reduce, back to f32 after.
    Fp16,
}

/// How one variable is synchronized.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Synchronizer {
    Ps {
        /// Server rank of each shard (one entry per shard).
        servers: Vec<usize>,
        #[serde(default)]
        local_aggregation: bool,
    },
    AllReduce {
        algorithm: ArAlgorithm,
        #[serde(default)]
        group: usize,
        #[serde(default)]
        compression: Compression,
    },
    AllGather,
}

/// One variable's synchronizer, named.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VarSync {
    pub var: String,
    #[serde(flatten)]
    pub sync: Synchronizer,
}

/// A synchronizer for every variable of a model.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Strategy {
    pub model: String,
    pub variables: Vec<VarSync>,
}

/// The ranks of a data-parallel job: `nodes` x `ranks_per_node`, rank
/// `r` on node `r / ranks_per_node`; the first rank of a node is its leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub nodes: usize,
    pub ranks_per_node: usize,
}

impl Layout {
    pub fn new(nodes: usize, ranks_per_node: usize) -> Result<Self> {
        if nodes == 0 || ranks_per_node == 0 {
            return Err(Error::invalid(
                "layout",
                format!("{nodes} nodes x {ranks_per_node} ranks: both must be at least 1"),
            ));
        }
        Ok(Layout {
            nodes,
            ranks_per_node,
        })
    }
    pub fn world(&self) -> usize {
        self.nodes * self.ranks_per_node
    }
    pub fn node_of(&self, rank: usize) -> usize {
        rank / self.ranks_per_node.max(1)
    }
    pub fn leader_of(&self, rank: usize) -> usize {
        self.node_of(rank) * self.ranks_per_node
    }
    pub fn is_leader(&self, rank: usize) -> bool {
        rank.is_multiple_of(self.ranks_per_node.max(1))
    }
    pub fn node_members(&self, node: usize) -> std::ops::Range<usize> {
        node * self.ranks_per_node..(node + 1) * self.ranks_per_node
    }
    pub fn leaders(&self) -> Vec<usize> {
        (0..self.nodes).map(|k| k * self.ranks_per_node).collect()
    }
}

/// One fused all-reduce.
#[derive(Debug, Clone, PartialEq)]
pub struct ArGroup {
    pub id: usize,
    pub algorithm: ArAlgorithm,
    pub compression: Compression,
    /// Variable indices, in model order.
    pub vars: Vec<usize>,
    /// Elements of the fused buffer.
    pub elements: usize,
}

/// One parameter-server shard.
#[derive(Debug, Clone, PartialEq)]
pub struct PsShard {
    pub var: usize,
    pub server: usize,
    pub rows: std::ops::Range<usize>,
    pub local_aggregation: bool,
}

/// A strategy checked against its model and layout, in execution order:
/// all-reduce groups by id, then every parameter-server shard (by variable,
/// then shard), then the all-gathered variables.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncPlan {
    pub groups: Vec<ArGroup>,
    pub shards: Vec<PsShard>,
    pub gathered: Vec<usize>,
    /// Synchronizer of each variable, in model order.
    pub per_var: Vec<Synchronizer>,
}

impl Strategy {
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::invalid("strategy", e.to_string()))
    }

    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::invalid("strategy JSON", e.to_string()))
    }

    /// Check the strategy against `model` and `layout` and order its work.
    pub fn compile(&self, model: &ModelSpec, layout: &Layout) -> Result<SyncPlan> {
        let bad = |reason: String| Error::invalid("strategy", reason);
        let index: BTreeMap<&str, usize> = model
            .variables
            .iter()
            .enumerate()
            .map(|(i, v)| (v.name.as_str(), i))
            .collect();
        let mut per_var: Vec<Option<Synchronizer>> = vec![None; model.variables.len()];
        for vs in &self.variables {
            let Some(&i) = index.get(vs.var.as_str()) else {
                return Err(bad(format!(
                    "names variable {:?}, which model {:?} does not have",
                    vs.var, model.name
                )));
            };
            if per_var[i].is_some() {
                return Err(bad(format!("gives variable {:?} twice", vs.var)));
            }
            per_var[i] = Some(vs.sync.clone());
        }
        let world = layout.world();
        let mut groups: BTreeMap<usize, ArGroup> = BTreeMap::new();
        let mut shards = Vec::new();
        let mut gathered = Vec::new();
        let mut out = Vec::with_capacity(per_var.len());
        for (i, s) in per_var.into_iter().enumerate() {
            let v = &model.variables[i];
            let Some(s) = s else {
                return Err(bad(format!(
                    "gives no synchronizer for variable {:?}",
                    v.name
                )));
            };
            if v.dtype != DType::F32 {
                return Err(Error::unsupported_in(
                    "sync executor",
                    format!(
                        "synchronizing {} variable {:?}: the executor handles f32 variables only",
                        v.dtype, v.name
                    ),
                ));
            }
            match &s {
                Synchronizer::Ps {
                    servers,
                    local_aggregation,
                } => {
                    let k = servers.len();
                    if k == 0 || k > v.rows() {
                        return Err(bad(format!(
                            "splits {:?} ({} rows) into {k} shards: use 1..={} servers",
                            v.name,
                            v.rows(),
                            v.rows()
                        )));
                    }
                    let distinct: BTreeSet<_> = servers.iter().collect();
                    if distinct.len() != k {
                        return Err(bad(format!(
                            "places two shards of {:?} on one server ({servers:?}): shards go to different servers",
                            v.name
                        )));
                    }
                    if let Some(&s) = servers.iter().find(|&&s| s >= world) {
                        return Err(bad(format!(
                            "puts a shard of {:?} on rank {s}, but the job has {world} ranks",
                            v.name
                        )));
                    }
                    for (j, &server) in servers.iter().enumerate() {
                        shards.push(PsShard {
                            var: i,
                            server,
                            rows: chunk_range(v.rows(), k, j),
                            local_aggregation: *local_aggregation,
                        });
                    }
                }
                Synchronizer::AllReduce {
                    algorithm,
                    group,
                    compression,
                } => {
                    let g = groups.entry(*group).or_insert_with(|| ArGroup {
                        id: *group,
                        algorithm: *algorithm,
                        compression: *compression,
                        vars: Vec::new(),
                        elements: 0,
                    });
                    if g.algorithm != *algorithm || g.compression != *compression {
                        return Err(bad(format!(
                            "group {group} mixes {:?}/{:?} and {algorithm:?}/{compression:?} (at {:?}): variables of one fusion group share algorithm and compression",
                            g.algorithm, g.compression, v.name
                        )));
                    }
                    g.vars.push(i);
                    g.elements += v.elements();
                }
                Synchronizer::AllGather => {
                    if !v.is_sparse() {
                        return Err(bad(format!(
                            "all-gathers dense variable {:?}: all_gather is for sparse gradients",
                            v.name
                        )));
                    }
                    gathered.push(i);
                }
            }
            out.push(s);
        }
        Ok(SyncPlan {
            groups: groups.into_values().collect(),
            shards,
            gathered,
            per_var: out,
        })
    }
}

/// Small deterministic generator for the sampler: core's SplitMix64, whose
/// `unit`, `below`, `chance` and `pick` draw exactly as this sampler always
/// has (searches and their tests depend on the sequences).
pub type Rng = hetero_core::rng::SplitMix64;

/// Greedy load balancing: each item (bytes) to the least-loaded server, in
/// the order given (AutoDist's PSLoadBalancing does this in variable order).
fn least_loaded(load: &mut BTreeMap<usize, f64>, bytes: f64) -> usize {
    let best = load
        .iter()
        .fold(None, |acc: Option<(usize, f64)>, (&s, &l)| match acc {
            Some((_, bl)) if bl <= l => acc,
            _ => Some((s, l)),
        })
        .map_or(0, |(s, _)| s);
    *load.entry(best).or_insert(0.0) += bytes;
    best
}

/// Hand-written strategies the search must beat (after AutoDist's builders).
pub mod baselines {
    use super::*;

    /// Every variable on one parameter server, servers one per node (as
    /// AutoDist deploys them), assigned greedily to the least-loaded one.
    pub fn ps_load_balancing(model: &ModelSpec, layout: &Layout) -> Strategy {
        let mut load: BTreeMap<usize, f64> =
            layout.leaders().into_iter().map(|s| (s, 0.0)).collect();
        let variables = model
            .variables
            .iter()
            .map(|v| VarSync {
                var: v.name.clone(),
                sync: Synchronizer::Ps {
                    servers: vec![least_loaded(&mut load, v.bytes() as f64)],
                    local_aggregation: false,
                },
            })
            .collect();
        Strategy {
            model: model.name.clone(),
            variables,
        }
    }

    /// Every variable all-reduced, fused in chunks of `chunk` consecutive
    /// variables (AutoDist's default is 128), with the collectives' own
    /// algorithm choice.
    pub fn all_reduce_chunked(model: &ModelSpec, chunk: usize) -> Strategy {
        let chunk = chunk.max(1);
        let variables = model
            .variables
            .iter()
            .enumerate()
            .map(|(i, v)| VarSync {
                var: v.name.clone(),
                sync: Synchronizer::AllReduce {
                    algorithm: ArAlgorithm::Auto,
                    group: i / chunk,
                    compression: Compression::None,
                },
            })
            .collect();
        Strategy {
            model: model.name.clone(),
            variables,
        }
    }

    /// Parallax (Kim et al.): all-reduce for dense variables (chunks of 128),
    /// load-balanced parameter servers with local aggregation for sparse ones.
    pub fn parallax(model: &ModelSpec, layout: &Layout) -> Strategy {
        let mut s = all_reduce_chunked(model, 128);
        let mut load: BTreeMap<usize, f64> =
            layout.leaders().into_iter().map(|s| (s, 0.0)).collect();
        for (vs, v) in s.variables.iter_mut().zip(&model.variables) {
            if v.is_sparse() {
                vs.sync = Synchronizer::Ps {
                    servers: vec![least_loaded(&mut load, v.bytes() as f64)],
                    local_aggregation: true,
                };
            }
        }
        s
    }

    /// The three baselines, named.
    pub fn all(model: &ModelSpec, layout: &Layout) -> Vec<(&'static str, Strategy)> {
        vec![
            ("ps-load-balancing", ps_load_balancing(model, layout)),
            ("all-reduce-chunk-128", all_reduce_chunked(model, 128)),
            ("parallax", parallax(model, layout)),
        ]
    }
}

/// Random strategies in the style of AutoDist's sampler: strategy-wide
/// knobs (share of parameter servers, fusion chunk, compression rate,
/// server pool) drawn first, then each variable's choice from them.
#[derive(Debug, Clone)]
pub struct Sampler {
    model: ModelSpec,
    layout: Layout,
    fp16: bool,
}

impl Sampler {
    pub fn new(model: &ModelSpec, layout: Layout) -> Self {
        Sampler {
            model: model.clone(),
            layout,
            fp16: true,
        }
    }

    /// Whether strategies may cast gradients to f16 (an ablation knob: the
    /// hand-written baselines never do).
    pub fn with_fp16(mut self, allowed: bool) -> Self {
        self.fp16 = allowed;
        self
    }

    fn ps_for(
        &self,
        rows: usize,
        bytes: f64,
        rng: &mut Rng,
        pool: &[usize],
        load: &mut BTreeMap<usize, f64>,
        local: f64,
    ) -> Synchronizer {
        let max_shards = pool.len().min(rows).max(1);
        let shards = if rng.chance(0.6) {
            1
        } else {
            1 + rng.below(max_shards)
        };
        let balanced = rng.chance(0.6);
        let mut servers = Vec::with_capacity(shards);
        let mut free: Vec<usize> = pool.to_vec();
        for _ in 0..shards {
            let s = if balanced {
                let mut sub: BTreeMap<usize, f64> = free
                    .iter()
                    .map(|s| (*s, load.get(s).copied().unwrap_or(0.0)))
                    .collect();
                least_loaded(&mut sub, 0.0)
            } else {
                free[rng.below(free.len())]
            };
            *load.entry(s).or_insert(0.0) += bytes / shards as f64;
            free.retain(|&x| x != s);
            servers.push(s);
        }
        Synchronizer::Ps {
            servers,
            local_aggregation: rng.chance(local),
        }
    }

    /// One random strategy.
    pub fn sample(&self, rng: &mut Rng) -> Strategy {
        let p_ps = match rng.below(4) {
            0 => 0.0,
            1 => 1.0,
            _ => rng.unit(),
        };
        let chunk = rng
            .pick(&[1usize, 4, 16, 64, 128, usize::MAX])
            .unwrap_or(128);
        let p_fp16 = match rng.below(3) {
            _ if !self.fp16 => 0.0,
            0 => 0.0,
            1 => 1.0,
            _ => rng.unit(),
        };
        let p_local = rng.unit();
        let pool: Vec<usize> = if rng.chance(0.5) {
            self.layout.leaders()
        } else {
            (0..self.layout.world()).collect()
        };
        let mut load = BTreeMap::new();
        let mut group_cfg: BTreeMap<usize, (ArAlgorithm, Compression)> = BTreeMap::new();
        let mut ar_count = 0usize;
        let mut variables = Vec::with_capacity(self.model.variables.len());
        for v in &self.model.variables {
            let choice = if v.is_sparse() {
                match rng.below(3) {
                    0 => 0,
                    1 => 1,
                    _ => 2,
                }
            } else if rng.chance(p_ps) {
                0
            } else {
                1
            };
            let sync = match choice {
                0 => self.ps_for(v.rows(), v.bytes() as f64, rng, &pool, &mut load, p_local),
                1 => {
                    let group = if chunk == usize::MAX {
                        0
                    } else {
                        ar_count / chunk
                    };
                    ar_count += 1;
                    let (algorithm, compression) = *group_cfg.entry(group).or_insert_with(|| {
                        let a = rng.pick(&ArAlgorithm::ALL).unwrap_or(ArAlgorithm::Auto);
                        let c = if rng.chance(p_fp16) {
                            Compression::Fp16
                        } else {
                            Compression::None
                        };
                        (a, c)
                    });
                    Synchronizer::AllReduce {
                        algorithm,
                        group,
                        compression,
                    }
                }
                _ => Synchronizer::AllGather,
            };
            variables.push(VarSync {
                var: v.name.clone(),
                sync,
            });
        }
        Strategy {
            model: self.model.name.clone(),
            variables,
        }
    }

    /// A neighbour of `s`: one of a few local moves (re-draw a stretch of
    /// variables, flip a group's compression or algorithm, merge two groups,
    /// toggle local aggregation or move a shard).
    pub fn mutate(&self, s: &Strategy, rng: &mut Rng) -> Strategy {
        let mut out = s.clone();
        let n = out.variables.len();
        if n == 0 {
            return out;
        }
        let groups: BTreeSet<usize> = out
            .variables
            .iter()
            .filter_map(|v| match v.sync {
                Synchronizer::AllReduce { group, .. } => Some(group),
                _ => None,
            })
            .collect();
        let groups: Vec<usize> = groups.into_iter().collect();
        match rng.below(5) {
            0 if !groups.is_empty() => {
                let g = groups[rng.below(groups.len())];
                let (na, nc) = (rng.pick(&ArAlgorithm::ALL), self.fp16 && rng.chance(0.5));
                for v in &mut out.variables {
                    if let Synchronizer::AllReduce {
                        group,
                        algorithm,
                        compression,
                    } = &mut v.sync
                        && *group == g
                    {
                        if nc {
                            *compression = match compression {
                                Compression::None => Compression::Fp16,
                                Compression::Fp16 => Compression::None,
                            };
                        } else if let Some(a) = na {
                            *algorithm = a;
                        }
                    }
                }
            }
            1 if groups.len() >= 2 => {
                // Merge group b into group a (taking a's settings).
                let a = groups[rng.below(groups.len())];
                let b = groups[rng.below(groups.len())];
                let settings = out.variables.iter().find_map(|v| match v.sync {
                    Synchronizer::AllReduce {
                        group,
                        algorithm,
                        compression,
                    } if group == a => Some((algorithm, compression)),
                    _ => None,
                });
                if let Some((algorithm, compression)) = settings {
                    for v in &mut out.variables {
                        if let Synchronizer::AllReduce { group, .. } = v.sync
                            && group == b
                        {
                            v.sync = Synchronizer::AllReduce {
                                algorithm,
                                group: a,
                                compression,
                            };
                        }
                    }
                }
            }
            2 => {
                // Toggle local aggregation of every parameter-server variable.
                let flip = rng.chance(0.5);
                for v in &mut out.variables {
                    if let Synchronizer::Ps {
                        local_aggregation, ..
                    } = &mut v.sync
                    {
                        *local_aggregation = flip;
                    }
                }
            }
            _ => {
                // Re-draw a stretch of variables from a fresh sample, keeping
                // group ids apart so no group mixes settings.
                let fresh = self.sample(rng);
                let offset = groups.last().map_or(0, |g| g + 1);
                let len = 1 + rng.below(n.div_ceil(4));
                let start = rng.below(n);
                for i in start..(start + len).min(n) {
                    let mut sync = fresh.variables[i].sync.clone();
                    if let Synchronizer::AllReduce { group, .. } = &mut sync {
                        *group += offset;
                    }
                    out.variables[i].sync = sync;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ModelSpec {
        ModelSpec {
            name: "tiny".into(),
            variables: vec![
                super::super::model::Variable::embedding("emb", 10, 3, 4),
                super::super::model::Variable::dense("w", &[4, 3]),
                super::super::model::Variable::dense("b", &[4]),
            ],
        }
    }

    #[test]
    fn json_round_trip_and_compile() {
        let m = tiny();
        let l = Layout::new(2, 2).expect("layout");
        for (_, s) in baselines::all(&m, &l) {
            let back = Strategy::from_json(&s.to_json().expect("json")).expect("parse");
            assert_eq!(s, back);
            back.compile(&m, &l).expect("baselines are valid");
        }
        let sampler = Sampler::new(&m, l);
        let mut rng = Rng::new(7);
        for _ in 0..500 {
            let s = sampler.sample(&mut rng);
            s.compile(&m, &l).expect("samples are valid");
            let t = sampler.mutate(&s, &mut rng);
            t.compile(&m, &l).expect("mutations are valid");
        }
    }

    #[test]
    fn without_fp16_no_sample_or_mutation_compresses() {
        let m = tiny();
        let l = Layout::new(2, 2).expect("layout");
        let sampler = Sampler::new(&m, l).with_fp16(false);
        let mut rng = Rng::new(3);
        let fp16 = |s: &Strategy| {
            s.variables.iter().any(|v| {
                matches!(
                    v.sync,
                    Synchronizer::AllReduce {
                        compression: Compression::Fp16,
                        ..
                    }
                )
            })
        };
        for _ in 0..300 {
            let s = sampler.sample(&mut rng);
            assert!(!fp16(&s));
            assert!(!fp16(&sampler.mutate(&s, &mut rng)));
        }
    }

    #[test]
    fn invalid_strategies_are_rejected_with_the_reason() {
        let m = tiny();
        let l = Layout::new(2, 2).expect("layout");
        let base = baselines::all_reduce_chunked(&m, 2);
        let check = |s: &Strategy, needle: &str| {
            let e = s.compile(&m, &l).expect_err("invalid");
            assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
        };
        let mut s = base.clone();
        s.variables[0].var = "nope".into();
        check(&s, "does not have");
        let mut s = base.clone();
        s.variables.pop();
        check(&s, "no synchronizer");
        let mut s = base.clone();
        s.variables.push(s.variables[0].clone());
        check(&s, "twice");
        let mut s = base.clone();
        s.variables[2].sync = Synchronizer::Ps {
            servers: vec![0, 1, 2, 3, 0],
            local_aggregation: false,
        };
        check(&s, "shards");
        let mut s = base.clone();
        s.variables[1].sync = Synchronizer::Ps {
            servers: vec![0, 9],
            local_aggregation: false,
        };
        check(&s, "4 ranks");
        let mut s = base.clone();
        s.variables[1].sync = Synchronizer::AllGather;
        check(&s, "dense");
        let mut s = base.clone();
        s.variables[1].sync = Synchronizer::AllReduce {
            algorithm: ArAlgorithm::Flat,
            group: 0,
            compression: Compression::Fp16,
        };
        check(&s, "share algorithm");
        let e = Strategy::from_json("{\"model\":1}").expect_err("bad JSON");
        assert!(e.to_string().contains("strategy JSON"), "{e}");
    }
}
