//! The problem every solver works on: the graph checked and indexed, the
//! cluster as device kinds, and the graph contracted into *units* (groups of
//! nodes that go to one device in every split the solvers search).
//!
//! Units are built in four steps:
//! 1. nodes of one colour class form one unit (in training graphs the forward
//!    node and its backward twin share a class);
//! 2. the *order graph* on units has an edge for every forward -> forward edge
//!    (backward nodes follow their forward twin and do not constrain the
//!    order); a unit with no forward node gets the mirror image of its
//!    backward -> backward edges instead;
//! 3. strongly connected parts of the order graph are fused (a contiguous set
//!    holding a colour class holds everything on a path between its members);
//! 4. a unit that costs nothing (no time, no memory, runs anywhere) and
//!    touches exactly one other unit is merged into it. Moving such a unit to
//!    its neighbour's device never raises any load and keeps the split
//!    contiguous, so the optimum does not change; it only removes ideals.
//!
//! Contiguous splits are then the chains of ideals (downsets) of the order
//! graph on units: each device gets the difference of two consecutive ideals.

use hetero_core::placement::{Cluster, Graph, Slot};

use crate::{PartitionError, Result};

/// Costs of out-edges of one node may differ by this much (the paper's tolerance).
const COST_TOLERANCE: f64 = 1e-6;

/// Check a graph: finite non-negative numbers, edge endpoints, acyclicity,
/// equal costs on the out-edges of each node, no backward -> forward edge.
pub fn check_graph(g: &Graph) -> Result<()> {
    let n = g.nodes.len();
    for node in &g.nodes {
        for (what, v) in [
            ("cpu_time", node.cpu_time),
            ("accelerator_time", node.accelerator_time),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(PartitionError::BadNumber {
                    field: format!("node id {} {what}", node.id),
                    value: v,
                });
            }
        }
    }
    let mut first_cost: Vec<Option<f64>> = vec![None; n];
    for (e, edge) in g.edges.iter().enumerate() {
        if edge.src >= n || edge.dst >= n {
            return Err(PartitionError::BadSplit(format!(
                "edges[{e}] has endpoint {} -> {}, not a node index (graph has {n} nodes)",
                edge.src, edge.dst
            )));
        }
        let c = edge.transfer_time;
        if !(c.is_finite() && c >= 0.0) {
            return Err(PartitionError::BadNumber {
                field: format!("edges[{e}] cost"),
                value: c,
            });
        }
        match first_cost[edge.src] {
            None => first_cost[edge.src] = Some(c),
            Some(a) if (a - c).abs() > COST_TOLERANCE => {
                return Err(PartitionError::UnequalOutEdgeCosts {
                    node: g.nodes[edge.src].id,
                    a,
                    b: c,
                });
            }
            Some(_) => {}
        }
        let (s, d) = (&g.nodes[edge.src], &g.nodes[edge.dst]);
        if s.backward && !d.backward {
            return Err(PartitionError::BackwardToForwardEdge {
                src: s.id,
                dst: d.id,
            });
        }
    }
    topological_order(g).map(|_| ())
}

/// Node indices in a topological order, or [`PartitionError::Cycle`].
pub fn topological_order(g: &Graph) -> Result<Vec<usize>> {
    let n = g.nodes.len();
    let adj = Csr::new(n, g.edges.iter().map(|e| (e.src, e.dst)));
    let mut indeg = vec![0usize; n];
    for e in &g.edges {
        indeg[e.dst] += 1;
    }
    let mut stack: Vec<usize> = (0..n).rev().filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(u) = stack.pop() {
        order.push(u);
        for &v in adj.row(u) {
            indeg[v] -= 1;
            if indeg[v] == 0 {
                stack.push(v);
            }
        }
    }
    if order.len() != n {
        let stuck = (0..n).find(|&i| indeg[i] > 0).unwrap_or(0);
        return Err(PartitionError::Cycle(g.nodes[stuck].id));
    }
    Ok(order)
}

/// Compressed adjacency lists.
#[derive(Debug, Clone, Default)]
pub struct Csr {
    start: Vec<usize>,
    items: Vec<usize>,
}

impl Csr {
    /// Rows `0..n` from `(row, item)` pairs (order kept within a row).
    pub fn new(n: usize, pairs: impl Iterator<Item = (usize, usize)> + Clone) -> Self {
        let mut start = vec![0usize; n + 1];
        for (r, _) in pairs.clone() {
            start[r + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut items = vec![0usize; start[n]];
        for (r, x) in pairs {
            items[fill[r]] = x;
            fill[r] += 1;
        }
        Csr { start, items }
    }

    pub fn row(&self, r: usize) -> &[usize] {
        &self.items[self.start[r]..self.start[r + 1]]
    }

    pub fn rows(&self) -> usize {
        self.start.len() - 1
    }
}

/// A kind of device: `count` identical accelerators of one class, or the CPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct Kind {
    pub is_cpu: bool,
    pub count: usize,
    /// Speed factor (accelerators; 1 for CPUs).
    pub speed: f64,
    /// Memory per device, bytes (accelerators; unlimited for CPUs).
    pub memory: u64,
    /// Global index of this kind's first device (accelerator index over all
    /// classes, or 0 for CPUs).
    pub first_index: usize,
    pub name: String,
}

impl Kind {
    /// The slot of this kind's `j`-th device.
    pub fn slot(&self, j: usize) -> Slot {
        if self.is_cpu {
            Slot::Cpu(self.first_index + j)
        } else {
            Slot::Accelerator(self.first_index + j)
        }
    }
}

/// The device kinds of a cluster, accelerator classes first, then CPUs.
/// Classes with no devices are left out.
pub fn kinds(cluster: &Cluster) -> Result<Vec<Kind>> {
    cluster.validate().map_err(|e| PartitionError::Malformed {
        what: "cluster".into(),
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    let mut first = 0;
    for c in &cluster.accelerators {
        if c.count > 0 {
            out.push(Kind {
                is_cpu: false,
                count: c.count,
                speed: c.speed_factor,
                memory: c.memory_bytes,
                first_index: first,
                name: c.name.clone(),
            });
        }
        first += c.count;
    }
    if cluster.cpus > 0 {
        out.push(Kind {
            is_cpu: true,
            count: cluster.cpus,
            speed: 1.0,
            memory: u64::MAX,
            first_index: 0,
            name: "cpu".into(),
        });
    }
    Ok(out)
}

/// True when the whole graph fits in the memory of every accelerator kind.
pub fn memory_vacuous(g: &Graph, kinds: &[Kind]) -> bool {
    let total = g
        .nodes
        .iter()
        .fold(0u64, |a, n| a.saturating_add(n.memory_bytes));
    kinds.iter().all(|k| k.is_cpu || total <= k.memory)
}

/// A checked graph with per-node costs and adjacency.
#[derive(Debug, Clone)]
pub struct Indexed<'g> {
    pub graph: &'g Graph,
    /// Cost of moving each node's output across a device boundary.
    pub out_cost: Vec<f64>,
    pub succ: Csr,
    pub pred: Csr,
}

impl<'g> Indexed<'g> {
    pub fn new(graph: &'g Graph) -> Result<Self> {
        check_graph(graph)?;
        let n = graph.nodes.len();
        let mut out_cost = vec![0.0; n];
        let mut seen = vec![false; n];
        for e in &graph.edges {
            if !seen[e.src] {
                seen[e.src] = true;
                out_cost[e.src] = e.transfer_time;
            }
        }
        let succ = Csr::new(n, graph.edges.iter().map(|e| (e.src, e.dst)));
        let pred = Csr::new(n, graph.edges.iter().map(|e| (e.dst, e.src)));
        Ok(Indexed {
            graph,
            out_cost,
            succ,
            pred,
        })
    }
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn new(n: usize) -> Self {
        UnionFind((0..n).collect())
    }
    fn find(&mut self, mut a: usize) -> usize {
        while self.0[a] != a {
            self.0[a] = self.0[self.0[a]];
            a = self.0[a];
        }
        a
    }
    fn union(&mut self, a: usize, b: usize) -> bool {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.0[ra] = rb;
        }
        ra != rb
    }
}

/// The graph contracted into units, in a topological order of the order graph.
#[derive(Debug, Clone)]
pub struct Units {
    /// Node indices of each unit.
    pub members: Vec<Vec<usize>>,
    pub unit_of: Vec<usize>,
    /// Order graph (deduplicated, no self-loops): predecessors and successors.
    pub preds: Vec<Vec<usize>>,
    pub succs: Vec<Vec<usize>>,
    pub cpu_time: Vec<f64>,
    pub accelerator_time: Vec<f64>,
    pub memory: Vec<u64>,
    pub accelerator_ok: Vec<bool>,
}

impl Units {
    /// Contract a checked graph (see the module documentation).
    /// `memory_vacuous`: the whole graph fits in every accelerator's memory,
    /// so free units may hold memory too (the merge is exact either way).
    pub fn build(ix: &Indexed<'_>, memory_vacuous: bool) -> Result<Self> {
        let g = ix.graph;
        let n = g.nodes.len();
        let mut uf = UnionFind::new(n);
        // 1. colour classes
        let mut first_of_color = std::collections::HashMap::new();
        for (i, node) in g.nodes.iter().enumerate() {
            if let Some(c) = node.color_class {
                let f = *first_of_color.entry(c).or_insert(i);
                uf.union(i, f);
            }
        }
        // 2. + 3. order graph and its strongly connected parts
        let roots: Vec<usize> = (0..n).map(|i| uf.find(i)).collect();
        let mut has_forward = vec![false; n];
        for i in 0..n {
            if !g.nodes[i].backward {
                has_forward[roots[i]] = true;
            }
        }
        let mut order_edges = Vec::new();
        for e in &g.edges {
            let (a, b) = (roots[e.src], roots[e.dst]);
            if a == b {
                continue;
            }
            let (fs, fd) = (!g.nodes[e.src].backward, !g.nodes[e.dst].backward);
            if fs && fd {
                order_edges.push((a, b));
            } else if !fs && !fd && (!has_forward[a] || !has_forward[b]) {
                order_edges.push((b, a));
            }
        }
        for comp in strongly_connected(n, &order_edges) {
            for w in comp.windows(2) {
                uf.union(w[0], w[1]);
            }
        }
        // 4. merge free units that touch exactly one other unit
        let free_node: Vec<bool> = g
            .nodes
            .iter()
            .map(|x| {
                x.cpu_time == 0.0
                    && x.accelerator_time == 0.0
                    && (x.memory_bytes == 0 || memory_vacuous)
                    && x.accelerator_ok
            })
            .collect();
        loop {
            let r: Vec<usize> = (0..n).map(|i| uf.find(i)).collect();
            let mut free = vec![true; n];
            for i in 0..n {
                free[r[i]] &= free_node[i];
            }
            // neighbour: usize::MAX = none yet, usize::MAX - 1 = several
            let mut neigh = vec![usize::MAX; n];
            for e in &g.edges {
                let (a, b) = (r[e.src], r[e.dst]);
                if a == b {
                    continue;
                }
                for (x, y) in [(a, b), (b, a)] {
                    neigh[x] = match neigh[x] {
                        usize::MAX => y,
                        cur if cur == y => y,
                        _ => usize::MAX - 1,
                    };
                }
            }
            let mut merged = false;
            for u in 0..n {
                if r[u] == u && free[u] && neigh[u] < usize::MAX - 1 {
                    merged |= uf.union(u, neigh[u]);
                }
            }
            if !merged {
                break;
            }
        }
        // final units, numbered in a topological order of the order graph
        let r: Vec<usize> = (0..n).map(|i| uf.find(i)).collect();
        let mut dense = vec![usize::MAX; n];
        let mut count = 0;
        for i in 0..n {
            if dense[r[i]] == usize::MAX {
                dense[r[i]] = count;
                count += 1;
            }
        }
        let mut has_fwd = vec![false; count];
        for i in 0..n {
            if !g.nodes[i].backward {
                has_fwd[dense[r[i]]] = true;
            }
        }
        let mut edges = Vec::new();
        for e in &g.edges {
            let (a, b) = (dense[r[e.src]], dense[r[e.dst]]);
            if a == b {
                continue;
            }
            let (fs, fd) = (!g.nodes[e.src].backward, !g.nodes[e.dst].backward);
            if fs && fd {
                edges.push((a, b));
            } else if !fs && !fd && (!has_fwd[a] || !has_fwd[b]) {
                edges.push((b, a));
            }
        }
        edges.sort_unstable();
        edges.dedup();
        let mut indeg = vec![0usize; count];
        let adj = Csr::new(count, edges.iter().copied());
        for &(_, b) in &edges {
            indeg[b] += 1;
        }
        let mut stack: Vec<usize> = (0..count).rev().filter(|&i| indeg[i] == 0).collect();
        let mut topo = Vec::with_capacity(count);
        while let Some(u) = stack.pop() {
            topo.push(u);
            for &v in adj.row(u) {
                indeg[v] -= 1;
                if indeg[v] == 0 {
                    stack.push(v);
                }
            }
        }
        if topo.len() != count {
            // Cannot happen after fusing strongly connected parts; a typed
            // error rather than a panic all the same.
            return Err(PartitionError::Cycle(g.nodes.first().map_or(0, |x| x.id)));
        }
        let mut pos = vec![0usize; count];
        for (p, &u) in topo.iter().enumerate() {
            pos[u] = p;
        }
        let unit_of: Vec<usize> = (0..n).map(|i| pos[dense[r[i]]]).collect();
        let mut members = vec![Vec::new(); count];
        for (i, &u) in unit_of.iter().enumerate() {
            members[u].push(i);
        }
        let mut preds = vec![Vec::new(); count];
        let mut succs = vec![Vec::new(); count];
        for &(a, b) in &edges {
            succs[pos[a]].push(pos[b]);
            preds[pos[b]].push(pos[a]);
        }
        let mut cpu_time = vec![0.0; count];
        let mut accelerator_time = vec![0.0; count];
        let mut memory = vec![0u64; count];
        let mut accelerator_ok = vec![true; count];
        for (u, m) in members.iter().enumerate() {
            for &i in m {
                let x = &g.nodes[i];
                cpu_time[u] += x.cpu_time;
                accelerator_time[u] += x.accelerator_time;
                memory[u] = memory[u].saturating_add(x.memory_bytes);
                accelerator_ok[u] &= x.accelerator_ok;
            }
        }
        Ok(Units {
            members,
            unit_of,
            preds,
            succs,
            cpu_time,
            accelerator_time,
            memory,
            accelerator_ok,
        })
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// A clear error when some unit fits on no device of the cluster.
    pub fn check_fits(&self, g: &Graph, kinds: &[Kind]) -> Result<()> {
        if kinds.iter().any(|k| k.is_cpu) {
            return Ok(());
        }
        for u in 0..self.len() {
            let fits = kinds
                .iter()
                .any(|k| self.accelerator_ok[u] && self.memory[u] <= k.memory);
            if !fits {
                let ids: Vec<u64> = self.members[u]
                    .iter()
                    .take(5)
                    .map(|&i| g.nodes[i].id)
                    .collect();
                let why = if self.accelerator_ok[u] {
                    format!(
                        "needs {} bytes, more than any accelerator's memory ({} bytes)",
                        self.memory[u],
                        kinds.iter().map(|k| k.memory).max().unwrap_or(0)
                    )
                } else {
                    "holds a node that cannot run on an accelerator".to_string()
                };
                return Err(PartitionError::Infeasible(format!(
                    "the group of nodes that must stay together containing ids {ids:?} {why}, and the cluster has no CPU"
                )));
            }
        }
        Ok(())
    }
}

/// Strongly connected components with more than one vertex (iterative Tarjan).
fn strongly_connected(n: usize, edges: &[(usize, usize)]) -> Vec<Vec<usize>> {
    let adj = Csr::new(n, edges.iter().copied());
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut out = Vec::new();
    let mut next = 0;
    let mut call: Vec<(usize, usize)> = Vec::new();
    for s in 0..n {
        if index[s] != usize::MAX {
            continue;
        }
        call.push((s, 0));
        index[s] = next;
        low[s] = next;
        next += 1;
        stack.push(s);
        on_stack[s] = true;
        while let Some(&mut (v, ref mut k)) = call.last_mut() {
            let row = adj.row(v);
            if *k < row.len() {
                let w = row[*k];
                *k += 1;
                if index[w] == usize::MAX {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    call.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
            } else {
                call.pop();
                if let Some(&(p, _)) = call.last() {
                    low[p] = low[p].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut comp = Vec::new();
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        comp.push(w);
                        if w == v {
                            break;
                        }
                    }
                    if comp.len() > 1 {
                        out.push(comp);
                    }
                }
            }
        }
    }
    out
}
