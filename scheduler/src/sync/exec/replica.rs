//! One rank's replica of the model and the step it runs: gradients from
//! the fixed formula, synchronization as the [`SyncPlan`] says (fused
//! all-reduces, the parameter-server exchange, the sparse all-gather), the
//! SGD update, and the check against the naive reference (see the module
//! docs of `exec`).

use hetero_collectives::{Hierarchical, Scheme, Transport};
use hetero_core::half::f16;
use hetero_core::{
    Collective, Error, HostSlice, HostSliceMut, ReduceOp, Result, Tensor, TensorMut,
};

use super::super::model::ModelSpec;
use super::super::strategy::{ArAlgorithm, ArGroup, Compression, Layout, PsShard, SyncPlan};
use super::codec::{
    Reader, SparseRows, bytes_of, f32s, fixed_rows_len, put_fixed_rows, put_payload,
};

/// Learning rate of the SGD update (a power of two keeps updates exact).
pub const LEARNING_RATE: f32 = 0.5;

fn initial_weight(var: usize, i: usize) -> f32 {
    ((i + var) % 7) as f32 - 3.0
}

fn grad_value(rank: usize, step: usize, i: usize) -> f32 {
    ((i + 3 * rank + 5 * step) % 9) as f32 - 4.0
}

/// Rows a rank touches in a step: a window of `t` consecutive rows (mod
/// rows) whose start moves with rank and step, so ranks overlap partly.
fn touched_rows(rows: usize, t: usize, rank: usize, step: usize, world: usize) -> Vec<usize> {
    let start = ((rank + step * world) * t.div_ceil(2) + 7 * rank) % rows.max(1);
    (0..t).map(|j| (start + j) % rows).collect()
}

fn update(w: &mut f32, sum: f32, ranks: f32) {
    *w -= LEARNING_RATE * (sum / ranks);
}

/// One rank's replica of the model.
pub(super) struct Replica {
    rank: usize,
    world: usize,
    layout: Layout,
    model: ModelSpec,
    plan: SyncPlan,
    weights: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
    /// Rows each sparse variable touched this step (this rank).
    touched: Vec<Vec<usize>>,
}

impl Replica {
    pub(super) fn new(rank: usize, layout: Layout, model: ModelSpec, plan: SyncPlan) -> Self {
        let weights = model
            .variables
            .iter()
            .enumerate()
            .map(|(k, v)| (0..v.elements()).map(|i| initial_weight(k, i)).collect())
            .collect();
        let grads = model
            .variables
            .iter()
            .map(|v| vec![0f32; v.elements()])
            .collect();
        Replica {
            rank,
            world: layout.world(),
            layout,
            touched: vec![Vec::new(); model.variables.len()],
            model,
            plan,
            weights,
            grads,
        }
    }

    pub(super) fn reset_weights(&mut self) {
        for (k, w) in self.weights.iter_mut().enumerate() {
            w.iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = initial_weight(k, i));
        }
    }

    fn compute_gradients(&mut self, step: usize) {
        for (k, v) in self.model.variables.iter().enumerate() {
            let g = &mut self.grads[k];
            match v.sparse {
                None => g
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, x)| *x = grad_value(self.rank, step, i)),
                Some(s) => {
                    g.fill(0.0);
                    let w = v.row_len();
                    let rows = touched_rows(v.rows(), s.rows_touched, self.rank, step, self.world);
                    for &r in &rows {
                        for (j, x) in g.iter_mut().enumerate().skip(r * w).take(w) {
                            *x = grad_value(self.rank, step, j);
                        }
                    }
                    self.touched[k] = rows;
                }
            }
        }
    }

    pub(super) async fn step(
        &mut self,
        hier: &Hierarchical,
        t: &dyn Transport,
        step: usize,
    ) -> Result<()> {
        self.compute_gradients(step);
        let groups = self.plan.groups.clone();
        for g in &groups {
            self.all_reduce_group(hier, g).await?;
        }
        if !self.plan.shards.is_empty() {
            self.parameter_servers(t).await?;
        }
        if !self.plan.gathered.is_empty() {
            self.all_gather_sparse(hier).await?;
        }
        Ok(())
    }

    async fn all_reduce_group(&mut self, hier: &Hierarchical, g: &ArGroup) -> Result<()> {
        let n = self.world as f32;
        let wire = match g.compression {
            Compression::None => 4,
            Compression::Fp16 => 2,
        };
        let bytes = g.elements * wire;
        let scheme = match g.algorithm {
            ArAlgorithm::Flat => Scheme::Flat,
            ArAlgorithm::Auto => hier.scheme_for(bytes),
            ArAlgorithm::Hierarchical => {
                hier.plan()
                    .costs(bytes as f64)
                    .into_iter()
                    .filter(|(s, _)| *s != Scheme::Flat)
                    .fold(
                        (Scheme::Flat, f64::INFINITY),
                        |b, c| if c.1 < b.1 { c } else { b },
                    )
                    .0
            }
        };
        let sum: Vec<f32> = match g.compression {
            Compression::None => {
                let mut buf = Vec::with_capacity(g.elements);
                for &v in &g.vars {
                    buf.extend_from_slice(&self.grads[v]);
                }
                hier.all_reduce_with(
                    scheme,
                    TensorMut::Host(HostSliceMut::new(&mut buf)),
                    ReduceOp::Sum,
                )
                .await?;
                buf
            }
            Compression::Fp16 => {
                let mut buf: Vec<f16> = Vec::with_capacity(g.elements);
                for &v in &g.vars {
                    buf.extend(self.grads[v].iter().map(|&x| f16::from_f32(x)));
                }
                hier.all_reduce_with(
                    scheme,
                    TensorMut::Host(HostSliceMut::new(&mut buf)),
                    ReduceOp::Sum,
                )
                .await?;
                buf.into_iter().map(f16::to_f32).collect()
            }
        };
        let mut at = 0;
        for &v in &g.vars {
            let w = &mut self.weights[v];
            let len = w.len();
            for (x, s) in w.iter_mut().zip(&sum[at..at + len]) {
                update(x, *s, n);
            }
            at += len;
        }
        Ok(())
    }

    /// This rank's contribution to a shard: dense rows or touched rows.
    fn shard_payload(&self, s: &PsShard) -> Vec<u8> {
        let v = &self.model.variables[s.var];
        let w = v.row_len();
        if v.is_sparse() {
            let mut rows = SparseRows::default();
            for &r in &self.touched[s.var] {
                if s.rows.contains(&r) {
                    rows.add(r, &self.grads[s.var][r * w..(r + 1) * w]);
                }
            }
            rows.encode()
        } else {
            bytes_of(&self.grads[s.var][s.rows.start * w..s.rows.end * w]).to_vec()
        }
    }

    /// Sum of contributions to one shard (dense or sparse).
    fn empty_sum(&self, s: &PsShard) -> ShardSum {
        let v = &self.model.variables[s.var];
        if v.is_sparse() {
            ShardSum::Sparse(SparseRows::default())
        } else {
            ShardSum::Dense(vec![0f32; s.rows.len() * v.row_len()])
        }
    }

    fn accumulate(&self, sum: &mut ShardSum, s: &PsShard, body: &[u8], peer: usize) -> Result<()> {
        let width = self.model.variables[s.var].row_len();
        match sum {
            ShardSum::Sparse(rows) => rows.decode_into(body, width, peer),
            ShardSum::Dense(acc) => {
                if body.len() != acc.len() * 4 {
                    return Err(Error::invalid(
                        "message",
                        format!(
                            "rank {peer} sent {} bytes for a shard of {} elements",
                            body.len(),
                            acc.len()
                        ),
                    ));
                }
                for (a, v) in acc.iter_mut().zip(f32s(body)) {
                    *a += v;
                }
                Ok(())
            }
        }
    }

    /// Server side: apply the summed gradient, return the new values to send.
    fn apply_on_server(&mut self, s: &PsShard, sum: &ShardSum) -> Vec<u8> {
        let n = self.world as f32;
        let width = self.model.variables[s.var].row_len();
        let w = &mut self.weights[s.var];
        match sum {
            ShardSum::Dense(acc) => {
                let rows = &mut w[s.rows.start * width..s.rows.end * width];
                for (x, g) in rows.iter_mut().zip(acc) {
                    update(x, *g, n);
                }
                bytes_of(rows).to_vec()
            }
            ShardSum::Sparse(sr) => {
                let mut out = SparseRows::default();
                for (&r, g) in &sr.rows {
                    let row = &mut w[r * width..(r + 1) * width];
                    for (x, gv) in row.iter_mut().zip(g) {
                        update(x, *gv, n);
                    }
                    out.rows.insert(r, row.to_vec());
                }
                out.encode()
            }
        }
    }

    /// Receiver side: overwrite the shard's rows with the server's values.
    fn install(&mut self, s: &PsShard, body: &[u8], peer: usize) -> Result<()> {
        let v = &self.model.variables[s.var];
        let width = v.row_len();
        let w = &mut self.weights[s.var];
        if v.is_sparse() {
            let mut rows = SparseRows::default();
            rows.decode_into(body, width, peer)?;
            for (r, vals) in rows.rows {
                if let Some(dst) = w.get_mut(r * width..(r + 1) * width) {
                    dst.copy_from_slice(&vals);
                }
            }
        } else {
            let dst = &mut w[s.rows.start * width..s.rows.end * width];
            if body.len() != dst.len() * 4 {
                return Err(Error::invalid(
                    "message",
                    format!(
                        "rank {peer} sent {} bytes for a shard of {} elements",
                        body.len(),
                        dst.len()
                    ),
                ));
            }
            dst.copy_from_slice(&f32s(body));
        }
        Ok(())
    }

    /// Does `rank` send its own (not node-aggregated) contribution to shard `s`?
    fn contributes(&self, s: &PsShard, rank: usize) -> bool {
        !s.local_aggregation || self.layout.is_leader(rank)
    }

    /// Does `rank` get shard `s`'s new values straight from its server?
    fn pulls(&self, s: &PsShard, rank: usize) -> bool {
        !s.local_aggregation || self.layout.is_leader(rank)
    }

    async fn parameter_servers(&mut self, t: &dyn Transport) -> Result<()> {
        let me = self.rank;
        let leader = self.layout.leader_of(me);
        let shards = self.plan.shards.clone();
        let local: Vec<usize> = (0..shards.len())
            .filter(|&k| shards[k].local_aggregation)
            .collect();
        let members: Vec<usize> = self
            .layout
            .node_members(self.layout.node_of(me))
            .filter(|&r| r != me)
            .collect();

        // 1. Local aggregation: members send their locally aggregated shards
        //    to the node's leader, which sums them into its own payloads.
        let mut own: Vec<Vec<u8>> = shards.iter().map(|s| self.shard_payload(s)).collect();
        if !local.is_empty() {
            if me != leader {
                let mut msg = Vec::new();
                for &k in &local {
                    put_payload(&mut msg, &own[k]);
                }
                t.send(leader, msg).await?;
            } else {
                let mut sums: Vec<ShardSum> =
                    local.iter().map(|&k| self.empty_sum(&shards[k])).collect();
                for (j, &k) in local.iter().enumerate() {
                    let body = own[k].clone();
                    self.accumulate(&mut sums[j], &shards[k], &body, me)?;
                }
                for &m in &members {
                    let msg = t.recv(m).await?;
                    let mut rd = Reader::new(&msg, m);
                    for (j, &k) in local.iter().enumerate() {
                        let body = rd.payload()?;
                        self.accumulate(&mut sums[j], &shards[k], body, m)?;
                    }
                }
                for (j, &k) in local.iter().enumerate() {
                    own[k] = sums[j].encode();
                }
            }
        }

        let mut forward: Vec<Option<Vec<u8>>> = vec![None; shards.len()];

        // 2. Push: one message per server with this rank's contributions.
        let servers: std::collections::BTreeSet<usize> = shards.iter().map(|s| s.server).collect();
        for &srv in &servers {
            if srv == me {
                continue;
            }
            let mut msg = Vec::new();
            for (k, s) in shards.iter().enumerate() {
                if s.server == srv && self.contributes(s, me) {
                    put_payload(&mut msg, &own[k]);
                }
            }
            if !msg.is_empty() {
                t.send(srv, msg).await?;
            }
        }

        // 3. Serve: sum every contribution to this rank's shards (in rank
        //    order), update, and send the new values back.
        let mine: Vec<usize> = (0..shards.len())
            .filter(|&k| shards[k].server == me)
            .collect();
        if !mine.is_empty() {
            let mut sums: Vec<ShardSum> =
                mine.iter().map(|&k| self.empty_sum(&shards[k])).collect();
            for peer in 0..self.world {
                let expects: Vec<usize> = (0..mine.len())
                    .filter(|&j| self.contributes(&shards[mine[j]], peer))
                    .collect();
                if expects.is_empty() {
                    continue;
                }
                if peer == me {
                    for &j in &expects {
                        let body = own[mine[j]].clone();
                        self.accumulate(&mut sums[j], &shards[mine[j]], &body, me)?;
                    }
                    continue;
                }
                let msg = t.recv(peer).await?;
                let mut rd = Reader::new(&msg, peer);
                for &j in &expects {
                    let body = rd.payload()?;
                    self.accumulate(&mut sums[j], &shards[mine[j]], body, peer)?;
                }
            }
            let news: Vec<Vec<u8>> = mine
                .iter()
                .zip(&sums)
                .map(|(&k, sum)| self.apply_on_server(&shards[k], sum))
                .collect();
            if me == leader {
                for (j, &k) in mine.iter().enumerate() {
                    if shards[k].local_aggregation {
                        forward[k] = Some(news[j].clone());
                    }
                }
            }
            for peer in 0..self.world {
                if peer == me {
                    continue;
                }
                let mut msg = Vec::new();
                for (j, &k) in mine.iter().enumerate() {
                    if self.pulls(&shards[k], peer) {
                        put_payload(&mut msg, &news[j]);
                    }
                }
                if !msg.is_empty() {
                    t.send(peer, msg).await?;
                }
            }
        }

        // 4. Pull: new values of the shards this rank gets from servers.
        for &srv in &servers {
            if srv == me {
                continue;
            }
            let wanted: Vec<usize> = (0..shards.len())
                .filter(|&k| shards[k].server == srv && self.pulls(&shards[k], me))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let msg = t.recv(srv).await?;
            let mut rd = Reader::new(&msg, srv);
            for &k in &wanted {
                let body = rd.payload()?;
                self.install(&shards[k], body, srv)?;
                if shards[k].local_aggregation {
                    forward[k] = Some(body.to_vec());
                }
            }
        }

        // 5. Local broadcast: the leader passes on what its node's shards
        //    got from their servers (for sparse shards: exactly the rows
        //    that changed anywhere).
        if !local.is_empty() {
            if me == leader {
                let mut msg = Vec::new();
                for &k in &local {
                    let body = forward[k].as_deref().ok_or_else(|| {
                        Error::invalid(
                            "plan",
                            format!("rank {me} has no new values for shard {k} to pass on"),
                        )
                    })?;
                    put_payload(&mut msg, body);
                }
                for &m in &members {
                    t.send(m, msg.clone()).await?;
                }
            } else {
                let msg = t.recv(leader).await?;
                let mut rd = Reader::new(&msg, leader);
                for &k in &local {
                    let body = rd.payload()?;
                    self.install(&shards[k], body, leader)?;
                }
            }
        }
        Ok(())
    }

    async fn all_gather_sparse(&mut self, hier: &Hierarchical) -> Result<()> {
        let n = self.world;
        let vars = self.plan.gathered.clone();
        // Fixed-size record per rank: for each variable, its touched rows'
        // indices (u32) then values.
        let mut mine = Vec::new();
        for &k in &vars {
            let w = self.model.variables[k].row_len();
            put_fixed_rows(&mut mine, &self.touched[k], &self.grads[k], w);
        }
        let mut all = vec![0u8; mine.len() * n];
        hier.all_gather(
            Tensor::Host(HostSlice::new(&mine)),
            TensorMut::Host(HostSliceMut::new(&mut all)),
        )
        .await?;
        let per_rank = mine.len();
        let mut at = 0;
        for &k in &vars {
            let v = &self.model.variables[k];
            let (w, t) = (v.row_len(), v.sparse.map_or(0, |s| s.rows_touched));
            let mut sum = SparseRows::default();
            let len = fixed_rows_len(t, w);
            for r in 0..n {
                let rec = &all[r * per_rank + at..r * per_rank + at + len];
                sum.add_fixed_rows(rec, t, w, r)?;
            }
            let wts = &mut self.weights[k];
            for (r, g) in sum.rows {
                for (x, gv) in wts[r * w..(r + 1) * w].iter_mut().zip(g) {
                    update(x, gv, n as f32);
                }
            }
            at += len;
        }
        Ok(())
    }

    /// Compare with the naive reference after one step (step index 0) from
    /// the initial weights; the first mismatch, if any.
    pub(super) fn check_against_reference(&self) -> Option<String> {
        let n = self.world;
        for (k, v) in self.model.variables.iter().enumerate() {
            let w = v.row_len();
            let mut sum = vec![0f32; v.elements()];
            for r in 0..n {
                match v.sparse {
                    None => sum
                        .iter_mut()
                        .enumerate()
                        .for_each(|(i, s)| *s += grad_value(r, 0, i)),
                    Some(sp) => {
                        for row in touched_rows(v.rows(), sp.rows_touched, r, 0, n) {
                            for (i, x) in sum.iter_mut().enumerate().skip(row * w).take(w) {
                                *x += grad_value(r, 0, i);
                            }
                        }
                    }
                }
            }
            for (i, (&got, s)) in self.weights[k].iter().zip(sum).enumerate() {
                let mut want = initial_weight(k, i);
                update(&mut want, s, n as f32);
                if got.to_bits() != want.to_bits() {
                    return Some(format!(
                        "rank {}: {}[{i}] is {got}, the reference is {want}",
                        self.rank, v.name
                    ));
                }
            }
        }
        None
    }
}

enum ShardSum {
    Dense(Vec<f32>),
    Sparse(SparseRows),
}

impl ShardSum {
    fn encode(&self) -> Vec<u8> {
        match self {
            ShardSum::Dense(v) => bytes_of(v).to_vec(),
            ShardSum::Sparse(s) => s.encode(),
        }
    }
}
