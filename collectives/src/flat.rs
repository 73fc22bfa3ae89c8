//! Flat collectives over any [`Transport`]: ring (bandwidth-optimal) and
//! binomial tree (latency-optimal), chosen per call by the alpha-beta model.
//!
//! Every operation works on host bytes: host tensors in place, device
//! buffers downloaded into aligned host memory and uploaded afterwards.
//! Chunks follow [`chunk_range`] so any length works, including 0 and
//! lengths not divisible by the rank count.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use hetero_core::collective::check_len;
use hetero_core::{
    Collective, DType, LinkKind, LinkModel, ReduceOp, Result, Tensor, TensorMut, chunk_range,
};

use crate::combine::{combine_bytes, finish_bytes};
use crate::cost::{self, Algorithm};
use crate::error::CollectiveError;
use crate::framing::{HEADER, Header, OpKind};
use crate::staging::{Staged, read_tensor, read_tensor_mut, write_tensor};
use crate::transport::Transport;

/// A flat communicator: every rank talks to every other over one transport.
pub struct FlatCollective {
    transport: Arc<dyn Transport>,
    algorithm: Algorithm,
    link: LinkModel,
    link_source: String,
    /// Message buffers whose last use is over, reused for the next frames
    /// (at most [`POOL_MAX`]), so large all-reduces do not fault in fresh
    /// pages for every message.
    pool: std::sync::Mutex<Vec<Vec<u8>>>,
}

/// Most buffers a communicator keeps for reuse.
const POOL_MAX: usize = 4;

impl fmt::Debug for FlatCollective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlatCollective")
            .field("rank", &self.transport.rank())
            .field("size", &self.transport.size())
            .field("algorithm", &self.algorithm)
            .field("link", &self.link)
            .finish()
    }
}

fn byte_range(r: std::ops::Range<usize>, es: usize) -> std::ops::Range<usize> {
    r.start * es..r.end * es
}

impl FlatCollective {
    /// A communicator whose cost model uses `link` (the slowest link between
    /// its ranks, normally measured by [`crate::sense`]); `source` says where
    /// the numbers came from (shown by `explain`).
    pub fn new(
        transport: Arc<dyn Transport>,
        algorithm: Algorithm,
        link: LinkModel,
        source: impl Into<String>,
    ) -> Self {
        FlatCollective {
            transport,
            algorithm,
            link,
            link_source: source.into(),
            pool: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A communicator used only to move data before anything was measured
    /// (ring for bulk operations, tree for reduce/broadcast).
    pub fn unmeasured(transport: Arc<dyn Transport>, algorithm: Algorithm) -> Self {
        Self::new(
            transport,
            algorithm,
            LinkModel::new(LinkKind::Unknown, 10e-6, 1e9),
            "not measured: placeholder 10 us, 1 GB/s",
        )
    }

    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    pub fn link(&self) -> LinkModel {
        self.link
    }

    /// The algorithm an all-reduce of `bytes` bytes runs.
    pub fn choose(&self, bytes: usize) -> Algorithm {
        match self.algorithm {
            Algorithm::Auto => cost::best_all_reduce(self.size(), bytes as f64, &self.link).0,
            a => a,
        }
    }

    /// A message of `h` and `payload`, in a reused buffer when one is big enough.
    fn frame(&self, h: &Header, payload: &[u8]) -> Vec<u8> {
        let need = HEADER + payload.len();
        let reused = self.pool.lock().ok().and_then(|mut p| {
            let i = p.iter().position(|b| b.capacity() >= need)?;
            Some(p.swap_remove(i))
        });
        match reused {
            Some(mut v) => {
                h.frame_into(&mut v, payload);
                v
            }
            None => h.frame(payload),
        }
    }

    /// Keep `buf` for a later [`FlatCollective::frame`] (large buffers only).
    fn recycle(&self, buf: Vec<u8>) {
        if buf.capacity() < 64 << 10 {
            return;
        }
        if let Ok(mut p) = self.pool.lock()
            && p.len() < POOL_MAX
        {
            p.push(buf);
        }
    }

    fn rank_size(&self) -> (usize, usize) {
        (self.transport.rank(), self.transport.size())
    }

    async fn send(&self, peer: usize, h: &Header, payload: &[u8]) -> Result<()> {
        self.transport.send(peer, self.frame(h, payload)).await
    }

    async fn recv_into(
        &self,
        peer: usize,
        h: &Header,
        dst: &mut [u8],
        reduce: Option<ReduceOp>,
    ) -> Result<()> {
        let msg = self.transport.recv(peer).await?;
        let payload = h.open(self.transport.rank(), peer, &msg, dst.len())?;
        let r = match reduce {
            Some(op) => combine_bytes(h.dtype, op, dst, payload),
            None => {
                dst.copy_from_slice(payload);
                Ok(())
            }
        };
        self.recycle(msg);
        r
    }

    /// Receive a message from `peer` and check its header and length.
    async fn recv_checked(&self, peer: usize, h: &Header, bytes: usize) -> Result<Vec<u8>> {
        let msg = self.transport.recv(peer).await?;
        h.open(self.transport.rank(), peer, &msg, bytes)?;
        Ok(msg)
    }

    /// Ring reduce-scatter in place: afterwards `buf`'s chunk `rank` holds the
    /// combined (not yet finished) values of every rank.
    ///
    /// A received partial is combined with this rank's chunk *inside the
    /// received message* and that message is forwarded as is, so each step
    /// costs one read of each operand and one write, with no framing copy
    /// (only the first send copies). The last step combines into `buf`.
    async fn ring_reduce_scatter(&self, h: &Header, op: ReduceOp, buf: &mut [u8]) -> Result<()> {
        let (rank, n) = self.rank_size();
        if n == 1 {
            return Ok(());
        }
        let es = h.dtype.size_bytes();
        let len = h.len as usize;
        let (right, left) = ((rank + 1) % n, (rank + n - 1) % n);
        let mut carry: Option<Vec<u8>> = None;
        for s in 0..n - 1 {
            let send_idx = (rank + 2 * n - s - 1) % n;
            let recv_idx = (rank + 2 * n - s - 2) % n;
            let msg = match carry.take() {
                Some(m) => m,
                None => self.frame(h, &buf[byte_range(chunk_range(len, n, send_idx), es)]),
            };
            self.transport.send(right, msg).await?;
            let rr = byte_range(chunk_range(len, n, recv_idx), es);
            let mut msg = self.recv_checked(left, h, rr.len()).await?;
            let last = s == n - 2;
            let payload = &mut msg[HEADER..];
            if !last && combine_bytes(h.dtype, op, payload, &buf[rr.clone()]).is_ok() {
                carry = Some(msg);
            } else {
                combine_bytes(h.dtype, op, &mut buf[rr], &msg[HEADER..])?;
                self.recycle(msg);
            }
        }
        Ok(())
    }

    /// Ring all-gather in place: chunk `rank` of `buf` is this rank's; every
    /// chunk is filled afterwards. Received messages are forwarded as they
    /// are (moved, not re-framed).
    async fn ring_all_gather(&self, h: &Header, buf: &mut [u8]) -> Result<()> {
        let (rank, n) = self.rank_size();
        if n == 1 {
            return Ok(());
        }
        let es = h.dtype.size_bytes();
        let len = h.len as usize;
        let (right, left) = ((rank + 1) % n, (rank + n - 1) % n);
        let mut carry: Option<Vec<u8>> = None;
        for s in 0..n - 1 {
            let send_idx = (rank + n - s) % n;
            let recv_idx = (rank + 2 * n - s - 1) % n;
            let msg = match carry.take() {
                Some(m) => m,
                None => self.frame(h, &buf[byte_range(chunk_range(len, n, send_idx), es)]),
            };
            self.transport.send(right, msg).await?;
            let rr = byte_range(chunk_range(len, n, recv_idx), es);
            let msg = self.recv_checked(left, h, rr.len()).await?;
            buf[rr].copy_from_slice(&msg[HEADER..]);
            if s < n - 2 {
                carry = Some(msg);
            } else {
                self.recycle(msg);
            }
        }
        Ok(())
    }

    /// Binomial-tree reduce to `root` (combined, not finished).
    async fn tree_reduce(
        &self,
        h: &Header,
        op: ReduceOp,
        buf: &mut [u8],
        root: usize,
    ) -> Result<()> {
        let (rank, n) = self.rank_size();
        let vr = (rank + n - root) % n;
        let mut mask = 1;
        while mask < n {
            if vr & mask != 0 {
                let parent = (vr - mask + root) % n;
                return self.send(parent, h, buf).await;
            }
            if vr + mask < n {
                let child = (vr + mask + root) % n;
                self.recv_into(child, h, buf, Some(op)).await?;
            }
            mask <<= 1;
        }
        Ok(())
    }

    /// Binomial-tree broadcast from `root`.
    async fn tree_broadcast(&self, h: &Header, buf: &mut [u8], root: usize) -> Result<()> {
        let (rank, n) = self.rank_size();
        let vr = (rank + n - root) % n;
        let mut mask = 1;
        while mask < n {
            if vr & mask != 0 {
                let parent = (vr - mask + root) % n;
                self.recv_into(parent, h, buf, None).await?;
                break;
            }
            mask <<= 1;
        }
        mask >>= 1;
        while mask > 0 {
            if vr + mask < n {
                let child = (vr + mask + root) % n;
                self.send(child, h, buf).await?;
            }
            mask >>= 1;
        }
        Ok(())
    }

    /// Ranks beyond the largest power of two `p <= n` fold in: among the
    /// first `2 (n - p)` ranks each even one hands its data to the odd one
    /// after it and sits out. The participants get ids `0..p`; this rank's
    /// id, if it takes part, and the rank of each id.
    fn fold_ids(&self) -> (Option<usize>, impl Fn(usize) -> usize + use<>) {
        let (rank, n) = self.rank_size();
        let p = cost::pow2_floor(n);
        let rem = n - p;
        let id = if rank < 2 * rem {
            (rank % 2 == 1).then_some(rank / 2)
        } else {
            Some(rank - rem)
        };
        (
            id,
            move |id: usize| if id < rem { 2 * id + 1 } else { id + rem },
        )
    }

    /// Fold (`out == false`) or unfold (`out == true`) the ranks beyond the
    /// largest power of two: an even rank among the first `2 (n - p)` sends
    /// its data to the next one (which combines it) and later receives the
    /// result from it.
    async fn fold(&self, h: &Header, op: ReduceOp, buf: &mut [u8], out: bool) -> Result<()> {
        let (rank, n) = self.rank_size();
        let rem = n - cost::pow2_floor(n);
        if rank >= 2 * rem {
            return Ok(());
        }
        match (rank % 2 == 0, out) {
            (true, false) => self.send(rank + 1, h, buf).await,
            (false, false) => self.recv_into(rank - 1, h, buf, Some(op)).await,
            (false, true) => self.send(rank - 1, h, buf).await,
            (true, true) => self.recv_into(rank + 1, h, buf, None).await,
        }
    }

    /// Recursive-doubling all-reduce in place (finished on every rank).
    async fn recursive_doubling(&self, h: &Header, op: ReduceOp, buf: &mut [u8]) -> Result<()> {
        let n = self.size();
        let p = cost::pow2_floor(n);
        self.fold(h, op, buf, false).await?;
        let (id, rank_of) = self.fold_ids();
        if let Some(id) = id {
            let mut mask = 1;
            while mask < p {
                let partner = rank_of(id ^ mask);
                self.send(partner, h, buf).await?;
                // a + b == b + a bit for bit, so both partners hold the same
                self.recv_into(partner, h, buf, Some(op)).await?;
                mask <<= 1;
            }
            finish_bytes(h.dtype, op, buf, n)?;
        }
        self.fold(h, op, buf, true).await
    }

    /// Rabenseifner's all-reduce in place: recursive halving reduce-scatter
    /// over `p` blocks, then recursive doubling all-gather of the blocks.
    async fn halving_doubling(&self, h: &Header, op: ReduceOp, buf: &mut [u8]) -> Result<()> {
        let n = self.size();
        let p = cost::pow2_floor(n);
        let es = h.dtype.size_bytes();
        let len = h.len as usize;
        // bytes of blocks first..first + count
        let blocks = |first: usize, count: usize| {
            let start = chunk_range(len, p, first).start;
            let end = chunk_range(len, p, first + count - 1).end;
            byte_range(start..end, es)
        };
        self.fold(h, op, buf, false).await?;
        let (id, rank_of) = self.fold_ids();
        if let Some(id) = id {
            // reduce-scatter: keep the half of the current blocks on our side
            let mut mask = p / 2;
            while mask >= 1 {
                let base = id & !(2 * mask - 1);
                let partner = rank_of(id ^ mask);
                let (keep, give) = if id & mask == 0 {
                    (base, base + mask)
                } else {
                    (base + mask, base)
                };
                self.send(partner, h, &buf[blocks(give, mask)]).await?;
                self.recv_into(partner, h, &mut buf[blocks(keep, mask)], Some(op))
                    .await?;
                mask /= 2;
            }
            finish_bytes(h.dtype, op, &mut buf[blocks(id, 1)], n)?;
            // all-gather: exchange the blocks held so far, doubling
            let mut mask = 1;
            while mask < p {
                let partner = rank_of(id ^ mask);
                let mine = id & !(mask - 1);
                let theirs = (id ^ mask) & !(mask - 1);
                self.send(partner, h, &buf[blocks(mine, mask)]).await?;
                self.recv_into(partner, h, &mut buf[blocks(theirs, mask)], None)
                    .await?;
                mask <<= 1;
            }
        }
        self.fold(h, op, buf, true).await
    }

    /// All-reduce of host bytes in place (`buf` aligned for `dtype`).
    pub async fn all_reduce_bytes(&self, dtype: DType, op: ReduceOp, buf: &mut [u8]) -> Result<()> {
        let (rank, n) = self.rank_size();
        let len = buf.len() / dtype.size_bytes();
        let h = Header {
            kind: OpKind::AllReduce,
            dtype,
            op: Some(op),
            len: len as u64,
        };
        match self.choose(buf.len()) {
            Algorithm::RecursiveDoubling => self.recursive_doubling(&h, op, buf).await,
            Algorithm::HalvingDoubling => self.halving_doubling(&h, op, buf).await,
            Algorithm::Tree => {
                self.tree_reduce(&h, op, buf, 0).await?;
                if rank == 0 {
                    finish_bytes(dtype, op, buf, n)?;
                }
                self.tree_broadcast(&h, buf, 0).await
            }
            _ => {
                self.ring_reduce_scatter(&h, op, buf).await?;
                let own = byte_range(chunk_range(len, n, rank), dtype.size_bytes());
                finish_bytes(dtype, op, &mut buf[own], n)?;
                self.ring_all_gather(&h, buf).await
            }
        }
    }

    fn check_root(&self, root: usize) -> Result<()> {
        let n = self.size();
        if root < n {
            Ok(())
        } else {
            Err(CollectiveError::BadRank {
                rank: root,
                size: n,
            }
            .into())
        }
    }
}

#[async_trait]
impl Collective for FlatCollective {
    fn rank(&self) -> usize {
        self.transport.rank()
    }

    fn size(&self) -> usize {
        self.transport.size()
    }

    async fn all_reduce(&self, mut data: TensorMut<'_>, op: ReduceOp) -> Result<()> {
        let dtype = data.dtype();
        match &mut data {
            TensorMut::Host(h) => self.all_reduce_bytes(dtype, op, h.as_bytes_mut()).await,
            TensorMut::Device { .. } => {
                let mut s = read_tensor_mut(&data)?;
                self.all_reduce_bytes(dtype, op, s.bytes_mut()).await?;
                write_tensor(&mut data, &s)
            }
        }
    }

    async fn reduce_scatter(
        &self,
        input: Tensor<'_>,
        mut output: TensorMut<'_>,
        op: ReduceOp,
    ) -> Result<()> {
        let (rank, n) = self.rank_size();
        let dtype = input.dtype();
        hetero_core::device::check_dtype("reduce_scatter output", dtype, output.dtype())?;
        let len = input.len();
        let own = chunk_range(len, n, rank);
        check_len("reduce_scatter output", output.len(), own.len())?;
        let mut s = read_tensor(&input)?;
        let h = Header {
            kind: OpKind::ReduceScatter,
            dtype,
            op: Some(op),
            len: len as u64,
        };
        self.ring_reduce_scatter(&h, op, s.bytes_mut()).await?;
        let br = byte_range(own.clone(), dtype.size_bytes());
        let mut out = Staged::zeroed(dtype, own.len());
        out.bytes_mut().copy_from_slice(&s.bytes()[br]);
        finish_bytes(dtype, op, out.bytes_mut(), n)?;
        write_tensor(&mut output, &out)
    }

    async fn all_gather(&self, input: Tensor<'_>, mut output: TensorMut<'_>) -> Result<()> {
        let (rank, n) = self.rank_size();
        let dtype = output.dtype();
        hetero_core::device::check_dtype("all_gather input", dtype, input.dtype())?;
        let len = output.len();
        let own = chunk_range(len, n, rank);
        check_len("all_gather input", input.len(), own.len())?;
        let h = Header {
            kind: OpKind::AllGather,
            dtype,
            op: None,
            len: len as u64,
        };
        let inp = read_tensor(&input)?;
        let br = byte_range(own, dtype.size_bytes());
        match &mut output {
            TensorMut::Host(o) => {
                let buf = o.as_bytes_mut();
                buf[br].copy_from_slice(inp.bytes());
                self.ring_all_gather(&h, buf).await
            }
            TensorMut::Device { .. } => {
                let mut s = Staged::zeroed(dtype, len);
                s.bytes_mut()[br].copy_from_slice(inp.bytes());
                self.ring_all_gather(&h, s.bytes_mut()).await?;
                write_tensor(&mut output, &s)
            }
        }
    }

    async fn broadcast(&self, mut data: TensorMut<'_>, root: usize) -> Result<()> {
        self.check_root(root)?;
        let h = Header {
            kind: OpKind::Broadcast,
            dtype: data.dtype(),
            op: None,
            len: data.len() as u64,
        };
        match &mut data {
            TensorMut::Host(d) => self.tree_broadcast(&h, d.as_bytes_mut(), root).await,
            TensorMut::Device { .. } => {
                let mut s = read_tensor_mut(&data)?;
                self.tree_broadcast(&h, s.bytes_mut(), root).await?;
                write_tensor(&mut data, &s)
            }
        }
    }

    async fn reduce(&self, mut data: TensorMut<'_>, op: ReduceOp, root: usize) -> Result<()> {
        self.check_root(root)?;
        let (rank, n) = self.rank_size();
        let dtype = data.dtype();
        let h = Header {
            kind: OpKind::Reduce,
            dtype,
            op: Some(op),
            len: data.len() as u64,
        };
        match &mut data {
            TensorMut::Host(d) => {
                let buf = d.as_bytes_mut();
                self.tree_reduce(&h, op, buf, root).await?;
                if rank == root {
                    finish_bytes(dtype, op, buf, n)?;
                }
                Ok(())
            }
            TensorMut::Device { .. } => {
                let mut s = read_tensor_mut(&data)?;
                self.tree_reduce(&h, op, s.bytes_mut(), root).await?;
                if rank == root {
                    finish_bytes(dtype, op, s.bytes_mut(), n)?;
                    write_tensor(&mut data, &s)?;
                }
                Ok(())
            }
        }
    }

    async fn barrier(&self) -> Result<()> {
        let h = Header {
            kind: OpKind::Barrier,
            dtype: DType::U8,
            op: None,
            len: 0,
        };
        let mut empty = [0u8; 0];
        self.tree_reduce(&h, ReduceOp::Sum, &mut empty, 0).await?;
        self.tree_broadcast(&h, &mut empty, 0).await
    }

    fn explain(&self) -> String {
        let n = self.size();
        let algo = match self.algorithm {
            Algorithm::Auto => {
                let by_size = cost::choice_by_size(n, &self.link);
                if let [(only, _)] = by_size.as_slice() {
                    format!(
                        "all-reduce picks by an alpha-beta model: {} at every size for {n} ranks",
                        only.name()
                    )
                } else {
                    let parts: Vec<String> = by_size
                        .iter()
                        .enumerate()
                        .map(|(i, (a, from))| {
                            if i == 0 {
                                a.name().to_string()
                            } else {
                                format!("{} from {from:.0} bytes", a.name())
                            }
                        })
                        .collect();
                    format!(
                        "all-reduce picks by an alpha-beta model among ring, binomial tree, recursive doubling and recursive halving-doubling: {}",
                        parts.join(", ")
                    )
                }
            }
            a => format!("all-reduce always uses the {}", a.name()),
        };
        format!(
            "flat communicator of {n} ranks over {}; {algo}; model link alpha {:.2} us, beta {:.3} GB/s ({}); reduce-scatter and all-gather use the ring, reduce, broadcast and barrier a binomial tree; host slices are used in place, device buffers are staged through the host (download, reduce on the CPU, upload)",
            self.transport.describe(),
            self.link.latency_s * 1e6,
            self.link.bandwidth_bytes_per_s / 1e9,
            self.link_source,
        )
    }
}
