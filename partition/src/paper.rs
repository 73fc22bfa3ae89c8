//! The paper's JSON formats: the input graph (`maxFPGAs`, `maxCPUs`,
//! `maxSizePerFPGA`, `nodes`, `edges`) and the output split (`maxLoad`,
//! `fpgas`, `cpus`). Node ids need not be dense; flags may be `true`/`false`
//! or `1`/`0`; sizes may be written as floats.

use std::collections::HashMap;

use hetero_core::placement::{Cluster, Edge, Graph, Node, Plan, Slot};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{PartitionError, Result};

/// A graph file of the paper, read into core's [`Graph`] plus the cluster
/// the file asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct PaperGraph {
    pub graph: Graph,
    /// `maxFPGAs`.
    pub accelerators: usize,
    /// `maxCPUs`.
    pub cpus: usize,
    /// `maxSizePerFPGA`, bytes.
    pub memory_per_accelerator: u64,
}

fn malformed(reason: impl Into<String>) -> PartitionError {
    PartitionError::Malformed {
        what: "graph JSON".into(),
        reason: reason.into(),
    }
}

fn field<'a>(obj: &'a Value, key: &str, at: &str) -> Result<&'a Value> {
    obj.get(key)
        .ok_or_else(|| malformed(format!("{at} has no field `{key}`")))
}

fn number(v: &Value, at: &str) -> Result<f64> {
    let x = v
        .as_f64()
        .ok_or_else(|| malformed(format!("{at} must be a number, got {v}")))?;
    if !(x.is_finite() && x >= 0.0) {
        return Err(PartitionError::BadNumber {
            field: at.to_string(),
            value: x,
        });
    }
    Ok(x)
}

fn flag(v: &Value, at: &str) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => match n.as_f64() {
            Some(0.0) => Ok(false),
            Some(1.0) => Ok(true),
            _ => Err(malformed(format!("{at} must be a boolean or 0/1, got {n}"))),
        },
        other => Err(malformed(format!(
            "{at} must be a boolean or 0/1, got {other}"
        ))),
    }
}

fn integer(v: &Value, at: &str) -> Result<i64> {
    if let Some(i) = v.as_i64() {
        return Ok(i);
    }
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Ok(x as i64),
        _ => Err(malformed(format!("{at} must be an integer, got {v}"))),
    }
}

fn count(v: &Value, at: &str) -> Result<usize> {
    let i = integer(v, at)?;
    usize::try_from(i).map_err(|_| malformed(format!("{at} must be >= 0, got {i}")))
}

fn bytes(v: &Value, at: &str) -> Result<u64> {
    let x = number(v, at)?;
    if x > u64::MAX as f64 {
        return Err(malformed(format!("{at} is too large: {x}")));
    }
    // Sizes are written as floats ("131325952.0"); a fractional byte rounds up.
    Ok(x.ceil() as u64)
}

fn id_u64(id: i64, at: &str) -> Result<u64> {
    u64::try_from(id).map_err(|_| malformed(format!("{at} must be >= 0, got {id}")))
}

impl PaperGraph {
    /// Read a graph file of the paper's format.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let root: Value = serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
        if !root.is_object() {
            return Err(malformed("the top level must be an object"));
        }
        let accelerators = count(field(&root, "maxFPGAs", "the graph")?, "maxFPGAs")?;
        let cpus = count(field(&root, "maxCPUs", "the graph")?, "maxCPUs")?;
        let memory_per_accelerator = bytes(
            field(&root, "maxSizePerFPGA", "the graph")?,
            "maxSizePerFPGA",
        )?;
        let nodes_v = field(&root, "nodes", "the graph")?
            .as_array()
            .ok_or_else(|| malformed("`nodes` must be a list"))?;
        let edges_v = field(&root, "edges", "the graph")?
            .as_array()
            .ok_or_else(|| malformed("`edges` must be a list"))?;

        let mut nodes = Vec::with_capacity(nodes_v.len());
        let mut index_of: HashMap<i64, usize> = HashMap::with_capacity(nodes_v.len());
        for (i, n) in nodes_v.iter().enumerate() {
            let at = format!("nodes[{i}]");
            if !n.is_object() {
                return Err(malformed(format!("{at} must be an object")));
            }
            let raw_id = integer(field(n, "id", &at)?, &format!("{at}.id"))?;
            let id = id_u64(raw_id, &format!("{at}.id"))?;
            if index_of.insert(raw_id, i).is_some() {
                return Err(PartitionError::DuplicateNode(raw_id));
            }
            let color_class = match n.get("colorClass") {
                None | Some(Value::Null) => None,
                Some(v) => Some(id_u64(
                    integer(v, &format!("{at}.colorClass"))?,
                    &format!("{at}.colorClass"),
                )?),
            };
            let memory_bytes = match n.get("size") {
                None | Some(Value::Null) => 0,
                Some(v) => bytes(v, &format!("{at}.size"))?,
            };
            let backward = match n.get("isBackwardNode") {
                None | Some(Value::Null) => false,
                Some(v) => flag(v, &format!("{at}.isBackwardNode"))?,
            };
            nodes.push(Node {
                id,
                name: n.get("name").and_then(Value::as_str).map(str::to_string),
                cpu_time: number(field(n, "cpuLatency", &at)?, &format!("{at}.cpuLatency"))?,
                accelerator_time: number(
                    field(n, "fpgaLatency", &at)?,
                    &format!("{at}.fpgaLatency"),
                )?,
                memory_bytes,
                accelerator_ok: flag(
                    field(n, "supportedOnFpga", &at)?,
                    &format!("{at}.supportedOnFpga"),
                )?,
                color_class,
                backward,
            });
        }
        let mut edges = Vec::with_capacity(edges_v.len());
        for (e, ed) in edges_v.iter().enumerate() {
            let at = format!("edges[{e}]");
            if !ed.is_object() {
                return Err(malformed(format!("{at} must be an object")));
            }
            let src = integer(field(ed, "sourceId", &at)?, &format!("{at}.sourceId"))?;
            let dst = integer(field(ed, "destId", &at)?, &format!("{at}.destId"))?;
            let lookup = |id: i64| {
                index_of
                    .get(&id)
                    .copied()
                    .ok_or(PartitionError::UnknownNode {
                        edge: e,
                        src,
                        dst,
                        missing: id,
                    })
            };
            let (s, d) = (lookup(src)?, lookup(dst)?);
            let bytes_field = match ed.get("size") {
                None | Some(Value::Null) => None,
                Some(v) => Some(bytes(v, &format!("{at}.size"))?),
            };
            edges.push(Edge {
                src: s,
                dst: d,
                transfer_time: number(field(ed, "cost", &at)?, &format!("{at}.cost"))?,
                bytes: bytes_field,
            });
        }
        let graph = Graph { nodes, edges };
        crate::problem::check_graph(&graph)?;
        Ok(PaperGraph {
            graph,
            accelerators,
            cpus,
            memory_per_accelerator,
        })
    }

    /// Read a graph file from disk.
    pub fn from_path(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| PartitionError::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
        Self::from_json_str(&text)
    }

    /// The paper's cluster: `maxFPGAs` identical accelerators with
    /// `maxSizePerFPGA` bytes each and `maxCPUs` CPUs.
    pub fn cluster(&self) -> Cluster {
        Cluster::homogeneous(self.accelerators, self.memory_per_accelerator, self.cpus)
    }

    /// Write the graph back in the paper's format.
    pub fn to_json(&self) -> Value {
        let g = &self.graph;
        let nodes: Vec<Value> = g
            .nodes
            .iter()
            .map(|n| {
                let mut o = serde_json::json!({
                    "id": n.id,
                    "supportedOnFpga": n.accelerator_ok,
                    "cpuLatency": n.cpu_time,
                    "fpgaLatency": n.accelerator_time,
                    "isBackwardNode": n.backward,
                    "size": n.memory_bytes,
                });
                if let Some(c) = n.color_class {
                    o["colorClass"] = c.into();
                }
                if let Some(name) = &n.name {
                    o["name"] = name.clone().into();
                }
                o
            })
            .collect();
        let edges: Vec<Value> = g
            .edges
            .iter()
            .map(|e| {
                let mut o = serde_json::json!({
                    "sourceId": g.nodes[e.src].id,
                    "destId": g.nodes[e.dst].id,
                    "cost": e.transfer_time,
                });
                if let Some(b) = e.bytes {
                    o["size"] = b.into();
                }
                o
            })
            .collect();
        serde_json::json!({
            "maxFPGAs": self.accelerators,
            "maxCPUs": self.cpus,
            "maxSizePerFPGA": self.memory_per_accelerator,
            "nodes": nodes,
            "edges": edges,
        })
    }
}

/// One device of a split in the paper's output format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaperDevice {
    /// The device's load (`-1` in hand-made splits: not computed).
    #[serde(default)]
    pub load: f64,
    /// Node ids (the file's ids, not indices).
    pub nodes: Vec<i64>,
}

/// A split in the paper's output format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaperSplit {
    #[serde(rename = "maxLoad", default)]
    pub max_load: f64,
    pub fpgas: Vec<PaperDevice>,
    pub cpus: Vec<PaperDevice>,
}

impl PaperSplit {
    /// Read a split (for instance a hand-made one from `human-experts/`).
    pub fn from_json_str(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| PartitionError::Malformed {
            what: "split JSON".into(),
            reason: e.to_string(),
        })
    }

    /// Read a split file from disk.
    pub fn from_path(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| PartitionError::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
        Self::from_json_str(&text)
    }

    /// The split of a plan, in the paper's format (accelerators first; CPUs;
    /// node ids ascending in each device).
    pub fn from_plan(graph: &Graph, plan: &Plan) -> Self {
        let mut fpgas = Vec::new();
        let mut cpus = Vec::new();
        for l in &plan.loads {
            let mut ids: Vec<i64> = l.nodes.iter().map(|&i| graph.nodes[i].id as i64).collect();
            ids.sort_unstable();
            let dev = PaperDevice {
                load: l.load,
                nodes: ids,
            };
            match l.slot {
                Slot::Accelerator(_) => fpgas.push(dev),
                Slot::Cpu(_) => cpus.push(dev),
            }
        }
        PaperSplit {
            max_load: plan.objective,
            fpgas,
            cpus,
        }
    }

    /// The assignment of the split: `Some(slot)` per node index, `None` for a
    /// node the split does not mention. The i-th `fpgas` entry is
    /// accelerator i, the i-th `cpus` entry CPU i.
    pub fn assignment(&self, graph: &Graph) -> Result<Vec<Option<Slot>>> {
        let index_of: HashMap<u64, usize> = graph
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id, i))
            .collect();
        let mut out = vec![None; graph.nodes.len()];
        let devices = self
            .fpgas
            .iter()
            .enumerate()
            .map(|(i, d)| (Slot::Accelerator(i), d))
            .chain(self.cpus.iter().enumerate().map(|(i, d)| (Slot::Cpu(i), d)));
        for (slot, dev) in devices {
            for &id in &dev.nodes {
                let idx = u64::try_from(id)
                    .ok()
                    .and_then(|u| index_of.get(&u).copied())
                    .ok_or_else(|| {
                        PartitionError::BadSplit(format!("node id {id} is not in the graph"))
                    })?;
                if let Some(prev) = out[idx] {
                    return Err(PartitionError::BadSplit(format!(
                        "node id {id} is placed twice ({prev:?} and {slot:?})"
                    )));
                }
                out[idx] = Some(slot);
            }
        }
        Ok(out)
    }

    /// The full assignment: nodes the split leaves out take the device of
    /// their colour class (how the paper scores training graphs with an
    /// inference split). A node with no placed colour-mate is an error.
    pub fn complete_assignment(&self, graph: &Graph) -> Result<Vec<Slot>> {
        let partial = self.assignment(graph)?;
        let mut by_color: HashMap<u64, Slot> = HashMap::new();
        for (i, s) in partial.iter().enumerate() {
            if let (Some(s), Some(c)) = (s, graph.nodes[i].color_class)
                && let Some(prev) = by_color.insert(c, *s)
                && prev != *s
            {
                return Err(PartitionError::BadSplit(format!(
                    "colour class {c} is split between {prev:?} and {s:?}"
                )));
            }
        }
        partial
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                Some(s) => Ok(*s),
                None => graph.nodes[i]
                    .color_class
                    .and_then(|c| by_color.get(&c).copied())
                    .ok_or_else(|| {
                        PartitionError::BadSplit(format!(
                            "node id {} is not placed and no node of its colour class is",
                            graph.nodes[i].id
                        ))
                    }),
            })
            .collect()
    }
}
