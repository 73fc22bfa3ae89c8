//! Runs data-parallel training steps under a strategy on real ranks.
//!
//! Every rank holds real f32 buffers of every variable (weights and
//! gradients). A step:
//!
//! 1. **Gradients** are computed on the host from a fixed formula of (rank,
//!    step, element): small integers in `-4..=4`, dense for dense variables,
//!    non-zero only in `rows_touched` rows for sparse ones. This stands in for
//!    the backward pass (no model is evaluated; its compute time is not
//!    emulated); integer values make every sum exact in f32 *and* f16, so
//!    the result can be checked bit for bit whatever the summation order.
//! 2. **Synchronization** as the [`SyncPlan`] says: fused all-reduces
//!    (through `hetero_collectives::Hierarchical`, so flat, leader and
//!    sharded schemes are the library's own), then one parameter-server
//!    exchange for all shards (local aggregation, push, server update,
//!    pull, local broadcast), then one all-gather of all sparse rows.
//! 3. **Update** `w -= lr * (sum / ranks)` (plain SGD), computed the same way
//!    on every path, so all replicas end bit-identical.
//!
//! Verification resets the weights, runs one step and compares every
//! element on every rank with a naive reference computed locally from the
//! same formula (no communication involved).
//!
//! Rank 0 drives: it sends each rank a [`Command`] (the model, the strategy,
//! how many steps) over the transport, times the steps between barriers,
//! and collects every rank's verification.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use hetero_collectives::{Hierarchical, Scheme, Transport};
use hetero_core::half::f16;
use hetero_core::{
    Collective, Error, HostSlice, HostSliceMut, ReduceOp, Result, Tensor, TensorMut,
};
use serde::{Deserialize, Serialize};

use super::model::ModelSpec;
use super::strategy::{ArAlgorithm, ArGroup, Compression, Layout, PsShard, Strategy, SyncPlan};

/// Learning rate of the SGD update (a power of two keeps updates exact).
pub const LEARNING_RATE: f32 = 0.5;

/// What rank 0 asks every rank to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    Run {
        model: ModelSpec,
        strategy: Strategy,
        warmup: usize,
        steps: usize,
        verify: bool,
    },
    Stop,
}

/// A rank's answer to a `Run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RankReport {
    rank: usize,
    error: Option<String>,
    mismatch: Option<String>,
}

/// Timings of one strategy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    /// Seconds of each timed step (rank 0, barrier to barrier).
    pub steps_s: Vec<f64>,
    pub median_s: f64,
    /// `Some(true)` when every rank matched the reference.
    pub verified: Option<bool>,
}

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

fn bytes_of(xs: &[f32]) -> &[u8] {
    bytemuck::cast_slice(xs)
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Sequential reader of length-prefixed payloads.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    peer: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], peer: usize) -> Self {
        Reader { buf, at: 0, peer }
    }
    fn payload(&mut self) -> Result<&'a [u8]> {
        let bad = || {
            Error::invalid(
                "message",
                format!(
                    "rank {} sent a truncated parameter-server message",
                    self.peer
                ),
            )
        };
        let head = self.buf.get(self.at..self.at + 8).ok_or_else(bad)?;
        let len = u64::from_le_bytes(head.try_into().map_err(|_| bad())?) as usize;
        let body = self
            .buf
            .get(self.at + 8..self.at + 8 + len)
            .ok_or_else(bad)?;
        self.at += 8 + len;
        Ok(body)
    }
}

fn put_payload(msg: &mut Vec<u8>, body: &[u8]) {
    msg.extend_from_slice(&(body.len() as u64).to_le_bytes());
    msg.extend_from_slice(body);
}

/// Rows with values: `count`, row indices (u32), then the rows.
#[derive(Debug, Default, Clone)]
struct SparseRows {
    rows: BTreeMap<usize, Vec<f32>>,
}

impl SparseRows {
    fn add(&mut self, row: usize, vals: &[f32]) {
        match self.rows.get_mut(&row) {
            Some(acc) => acc.iter_mut().zip(vals).for_each(|(a, v)| *a += v),
            None => {
                self.rows.insert(row, vals.to_vec());
            }
        }
    }
    fn encode(&self) -> Vec<u8> {
        let width = self.rows.values().next().map_or(0, Vec::len);
        let mut out = Vec::with_capacity(4 + self.rows.len() * (4 + 4 * width));
        out.extend_from_slice(&(self.rows.len() as u32).to_le_bytes());
        for r in self.rows.keys() {
            out.extend_from_slice(&(*r as u32).to_le_bytes());
        }
        for v in self.rows.values() {
            out.extend_from_slice(bytes_of(v));
        }
        out
    }
    fn decode_into(&mut self, body: &[u8], width: usize, peer: usize) -> Result<()> {
        let bad = || Error::invalid("message", format!("rank {peer} sent malformed sparse rows"));
        let count = u32::from_le_bytes(
            body.get(..4)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ) as usize;
        let idx_end = 4 + 4 * count;
        if body.len() != idx_end + 4 * count * width {
            return Err(bad());
        }
        let vals = f32s(&body[idx_end..]);
        for k in 0..count {
            let c = &body[4 + 4 * k..8 + 4 * k];
            let row = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize;
            self.add(row, &vals[k * width..(k + 1) * width]);
        }
        Ok(())
    }
}

/// One rank's replica of the model.
struct Replica {
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
    fn new(rank: usize, layout: Layout, model: ModelSpec, plan: SyncPlan) -> Self {
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

    fn reset_weights(&mut self) {
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

    async fn step(&mut self, hier: &Hierarchical, t: &dyn Transport, step: usize) -> Result<()> {
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
            for &r in &self.touched[k] {
                mine.extend_from_slice(&(r as u32).to_le_bytes());
            }
            for &r in &self.touched[k] {
                mine.extend_from_slice(bytes_of(&self.grads[k][r * w..(r + 1) * w]));
            }
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
            for r in 0..n {
                let rec = &all[r * per_rank + at..r * per_rank + at + 4 * t + 4 * t * w];
                let vals = f32s(&rec[4 * t..]);
                for j in 0..t {
                    let c = &rec[4 * j..4 * j + 4];
                    let row = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize;
                    sum.add(row, &vals[j * w..(j + 1) * w]);
                }
            }
            let wts = &mut self.weights[k];
            for (r, g) in sum.rows {
                for (x, gv) in wts[r * w..(r + 1) * w].iter_mut().zip(g) {
                    update(x, gv, n as f32);
                }
            }
            at += 4 * t + 4 * t * w;
        }
        Ok(())
    }

    /// Compare with the naive reference after one step (step index 0) from
    /// the initial weights; the first mismatch, if any.
    fn check_against_reference(&self) -> Option<String> {
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

/// One `Run` command's contents.
struct Job {
    model: ModelSpec,
    strategy: Strategy,
    warmup: usize,
    steps: usize,
    verify: bool,
}

/// Run `warmup + steps` steps (and verification) on this rank; rank 0
/// returns the step times.
async fn run_on_rank(
    t: &dyn Transport,
    hier: &Hierarchical,
    layout: Layout,
    job: Job,
) -> Result<(Vec<f64>, Option<String>)> {
    let Job {
        model,
        strategy,
        warmup,
        steps,
        verify,
    } = job;
    let plan = strategy.compile(&model, &layout)?;
    let mut rep = Replica::new(t.rank(), layout, model, plan);
    let mut times = Vec::with_capacity(steps);
    for s in 0..warmup + steps {
        hier.barrier().await?;
        let start = Instant::now();
        rep.step(hier, t, s).await?;
        hier.barrier().await?;
        if s >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let mut mismatch = None;
    if verify {
        rep.reset_weights();
        hier.barrier().await?;
        rep.step(hier, t, 0).await?;
        mismatch = rep.check_against_reference();
    }
    Ok((times, mismatch))
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A rank other than 0: run commands from rank 0 until `Stop`.
pub async fn serve_worker(t: Arc<dyn Transport>, hier: Hierarchical, layout: Layout) -> Result<()> {
    loop {
        let msg = t.recv(0).await?;
        let cmd: Command = serde_json::from_slice(&msg)
            .map_err(|e| Error::invalid("command", format!("from rank 0: {e}")))?;
        match cmd {
            Command::Stop => return Ok(()),
            Command::Run {
                model,
                strategy,
                warmup,
                steps,
                verify,
            } => {
                let job = Job {
                    model,
                    strategy,
                    warmup,
                    steps,
                    verify,
                };
                let out = run_on_rank(&*t, &hier, layout, job).await;
                let report = match out {
                    Ok((_, mismatch)) => RankReport {
                        rank: t.rank(),
                        error: None,
                        mismatch,
                    },
                    Err(e) => RankReport {
                        rank: t.rank(),
                        error: Some(e.to_string()),
                        mismatch: None,
                    },
                };
                let bytes = serde_json::to_vec(&report)
                    .map_err(|e| Error::invalid("report", e.to_string()))?;
                t.send(0, bytes).await?;
            }
        }
    }
}

/// Rank 0: sends commands, measures, collects verification.
#[derive(Debug)]
pub struct Driver {
    t: Arc<dyn Transport>,
    hier: Hierarchical,
    layout: Layout,
}

impl Driver {
    pub fn new(t: Arc<dyn Transport>, hier: Hierarchical, layout: Layout) -> Result<Self> {
        if t.rank() != 0 {
            return Err(Error::invalid("driver", "the driver runs on rank 0"));
        }
        Ok(Driver { t, hier, layout })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn hierarchical(&self) -> &Hierarchical {
        &self.hier
    }

    async fn broadcast(&self, cmd: &Command) -> Result<()> {
        let bytes =
            serde_json::to_vec(cmd).map_err(|e| Error::invalid("command", e.to_string()))?;
        for r in 1..self.t.size() {
            self.t.send(r, bytes.clone()).await?;
        }
        Ok(())
    }

    /// Run `strategy` for `warmup + steps` steps on every rank; the median
    /// of the timed steps; with `verify`, every rank's values checked.
    pub async fn measure(
        &self,
        model: &ModelSpec,
        strategy: &Strategy,
        warmup: usize,
        steps: usize,
        verify: bool,
    ) -> Result<Measurement> {
        strategy.compile(model, &self.layout)?;
        if steps == 0 {
            return Err(Error::invalid("steps", "need at least one timed step"));
        }
        self.broadcast(&Command::Run {
            model: model.clone(),
            strategy: strategy.clone(),
            warmup,
            steps,
            verify,
        })
        .await?;
        let job = Job {
            model: model.clone(),
            strategy: strategy.clone(),
            warmup,
            steps,
            verify,
        };
        let (times, mine) = run_on_rank(&*self.t, &self.hier, self.layout, job).await?;
        let mut problems = Vec::new();
        if let Some(m) = mine {
            problems.push(m);
        }
        for r in 1..self.t.size() {
            let msg = self.t.recv(r).await?;
            let rep: RankReport = serde_json::from_slice(&msg)
                .map_err(|e| Error::invalid("report", format!("from rank {r}: {e}")))?;
            if let Some(e) = rep.error {
                return Err(Error::invalid(
                    "strategy",
                    format!("rank {} failed: {e}", rep.rank),
                ));
            }
            if let Some(m) = rep.mismatch {
                problems.push(m);
            }
        }
        if let Some(first) = problems.first() {
            return Err(Error::invalid(
                "synchronization",
                format!(
                    "{} rank(s) disagree with the naive reference; first: {first}",
                    problems.len()
                ),
            ));
        }
        Ok(Measurement {
            median_s: median(&times),
            steps_s: times,
            verified: verify.then_some(true),
        })
    }

    /// Tell every worker to stop.
    pub async fn stop(&self) -> Result<()> {
        self.broadcast(&Command::Stop).await?;
        self.t.flush().await
    }
}
