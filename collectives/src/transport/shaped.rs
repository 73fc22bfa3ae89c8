//! Emulated slow links between groups of ranks of one process.
//!
//! [`ShapedTransport::group`] wraps the endpoints of any transport (normally
//! [`crate::InProcessTransport`]) and assigns every rank to a *node*. Messages
//! between ranks of one node go straight through the inner transport;
//! messages between nodes are held back as a network of one NIC per node
//! would: a message of `b` bytes leaves the sending node's NIC when the NIC
//! has finished everything queued before it (`b / bandwidth` each, egress
//! serialised), enters the receiving node's NIC the same way (ingress
//! serialised), and is delivered `latency` after that. This is an emulation,
//! for tests and benchmarks of topology-aware algorithms on one machine
//! without root: the bytes still move through memory at memory speed, only
//! their delivery time follows the model.
//!
//! One thread per network delivers messages at their due time (a condition
//! variable with a timeout; Linux wakes it within about 0.1 ms, unlike
//! tokio's timer, whose 1 ms resolution would put a floor under every
//! emulated latency). Messages of one ordered pair of ranks are delivered in
//! the order they were sent: their due times never decrease, and ties are
//! broken by a sequence number.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hetero_core::{Error, LinkKind, LinkModel, Result};

use crate::transport::Transport;

/// One message in flight between nodes.
struct InFlight {
    due: Instant,
    seq: u64,
    from: Arc<dyn Transport>,
    src: usize,
    dst: usize,
    data: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

#[derive(Default)]
struct NetState {
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    /// Per node: when its NIC is free again, out and in.
    egress_free: Vec<Option<Instant>>,
    ingress_free: Vec<Option<Instant>>,
    /// Messages queued and not yet delivered, per source rank.
    pending: Vec<usize>,
    /// Endpoints still alive; the delivery thread exits when none is and
    /// nothing is queued.
    live: usize,
    /// First delivery failure, reported to the sender's next call.
    failure: Vec<Option<String>>,
}

struct Network {
    node_of: Vec<usize>,
    link: LinkModel,
    state: Mutex<NetState>,
    wake: Condvar,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("node_of", &self.node_of)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl Network {
    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        // A panic while holding the lock leaves consistent data (plain
        // counters and a heap), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Deliver messages at their due time until every endpoint is gone and
    /// the queue is empty.
    fn run(self: Arc<Self>) {
        let mut st = self.lock();
        loop {
            let now = Instant::now();
            match st.queue.peek() {
                None if st.live == 0 => return,
                None => {
                    st = self
                        .wake
                        .wait(st)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                Some(Reverse(m)) if m.due > now => {
                    let wait = m.due - now;
                    st = self
                        .wake
                        .wait_timeout(st, wait)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
                Some(_) => {
                    let Some(Reverse(m)) = st.queue.pop() else {
                        continue;
                    };
                    drop(st);
                    // In-process and TCP sends only queue, so this does not block.
                    let sent = pollster::block_on(m.from.send(m.dst, m.data));
                    st = self.lock();
                    if let Some(p) = st.pending.get_mut(m.src) {
                        *p = p.saturating_sub(1);
                    }
                    if let (Err(e), Some(f)) = (sent, st.failure.get_mut(m.src)) {
                        f.get_or_insert_with(|| e.to_string());
                    }
                }
            }
        }
    }
}

/// One rank's endpoint of a shaped group (see the module docs).
#[derive(Debug)]
pub struct ShapedTransport {
    inner: Arc<dyn Transport>,
    net: Arc<Network>,
}

impl ShapedTransport {
    /// Wrap the endpoints `inner` (index = rank); rank `r` sits on node
    /// `node_of[r]`; links between nodes follow `link` (latency and
    /// bandwidth of one node's NIC). Starts the delivery thread.
    pub fn group(
        inner: Vec<Arc<dyn Transport>>,
        node_of: Vec<usize>,
        link: LinkModel,
    ) -> Result<Vec<ShapedTransport>> {
        if inner.len() != node_of.len() {
            return Err(Error::invalid(
                "node_of",
                format!(
                    "has {} entries for {} ranks: give one node index per rank",
                    node_of.len(),
                    inner.len()
                ),
            ));
        }
        link.validate("link")?;
        for (r, t) in inner.iter().enumerate() {
            if t.rank() != r || t.size() != inner.len() {
                return Err(Error::invalid(
                    "inner",
                    format!(
                        "endpoint {r} is rank {} of {}: pass one endpoint per rank, in rank order",
                        t.rank(),
                        t.size()
                    ),
                ));
            }
        }
        let nodes = node_of.iter().copied().max().map_or(0, |m| m + 1);
        let n = inner.len();
        let net = Arc::new(Network {
            node_of,
            link,
            state: Mutex::new(NetState {
                egress_free: vec![None; nodes],
                ingress_free: vec![None; nodes],
                pending: vec![0; n],
                live: n,
                failure: vec![None; n],
                ..NetState::default()
            }),
            wake: Condvar::new(),
        });
        let runner = net.clone();
        std::thread::Builder::new()
            .name("shaped-network".into())
            .spawn(move || runner.run())
            .map_err(|e| Error::io("starting the shaped network's delivery thread", e))?;
        Ok(inner
            .into_iter()
            .map(|inner| ShapedTransport {
                inner,
                net: net.clone(),
            })
            .collect())
    }

    fn node(&self, rank: usize) -> Option<usize> {
        self.net.node_of.get(rank).copied()
    }

    fn crosses(&self, peer: usize) -> bool {
        self.node(peer).is_some() && self.node(peer) != self.node(self.inner.rank())
    }
}

impl Drop for ShapedTransport {
    fn drop(&mut self) {
        let mut st = self.net.lock();
        st.live = st.live.saturating_sub(1);
        drop(st);
        self.net.wake.notify_all();
    }
}

#[async_trait]
impl Transport for ShapedTransport {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    async fn send(&self, peer: usize, data: Vec<u8>) -> Result<()> {
        if !self.crosses(peer) {
            return self.inner.send(peer, data).await;
        }
        let me = self.inner.rank();
        let (Some(src_node), Some(dst_node)) = (self.node(me), self.node(peer)) else {
            return self.inner.send(peer, data).await;
        };
        let wire = Duration::from_secs_f64(data.len() as f64 / self.net.link.bandwidth_bytes_per_s);
        let latency = Duration::from_secs_f64(self.net.link.latency_s);
        let mut st = self.net.lock();
        if let Some(Some(reason)) = st.failure.get(me) {
            return Err(Error::PeerFailure {
                rank: peer,
                reason: reason.clone(),
            });
        }
        let now = Instant::now();
        let out_start = st.egress_free[src_node].map_or(now, |t| t.max(now));
        let out_end = out_start + wire;
        st.egress_free[src_node] = Some(out_end);
        // Cut-through: the receiving NIC takes the bytes as they arrive,
        // unless it is still busy with earlier traffic.
        let in_start = st.ingress_free[dst_node].map_or(out_start, |t| t.max(out_start));
        let in_end = in_start + wire;
        st.ingress_free[dst_node] = Some(in_end);
        let seq = st.seq;
        st.seq += 1;
        st.pending[me] += 1;
        st.queue.push(Reverse(InFlight {
            due: in_end.max(out_end) + latency,
            seq,
            from: self.inner.clone(),
            src: me,
            dst: peer,
            data,
        }));
        drop(st);
        self.net.wake.notify_all();
        Ok(())
    }
    async fn recv(&self, peer: usize) -> Result<Vec<u8>> {
        self.inner.recv(peer).await
    }
    async fn flush(&self) -> Result<()> {
        let me = self.inner.rank();
        loop {
            let pending = self.net.lock().pending.get(me).copied().unwrap_or(0);
            if pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.inner.flush().await
    }
    fn timeout(&self) -> Duration {
        self.inner.timeout()
    }
    fn describe(&self) -> String {
        format!(
            "{}; links between nodes emulated at {:.3} GB/s and {:.0} us per NIC",
            self.inner.describe(),
            self.net.link.bandwidth_bytes_per_s / 1e9,
            self.net.link.latency_s * 1e6
        )
    }
    fn link_kind(&self, peer: usize) -> LinkKind {
        if self.crosses(peer) {
            self.net.link.kind
        } else {
            self.inner.link_kind(peer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InProcessTransport;

    fn shaped(nodes: Vec<usize>, link: LinkModel) -> Vec<Arc<dyn Transport>> {
        let inner = InProcessTransport::group(nodes.len())
            .into_iter()
            .map(|t| Arc::new(t) as Arc<dyn Transport>)
            .collect();
        ShapedTransport::group(inner, nodes, link)
            .expect("valid group")
            .into_iter()
            .map(|t| Arc::new(t) as Arc<dyn Transport>)
            .collect()
    }

    #[tokio::test]
    async fn inter_node_messages_take_the_modelled_time_and_keep_order() {
        // 1 MB at 100 MB/s = 10 ms on the wire, plus 2 ms latency.
        let link = LinkModel::new(LinkKind::Ethernet, 2e-3, 100e6);
        let t = shaped(vec![0, 0, 1], link);
        let start = Instant::now();
        for k in 0..3u8 {
            t[0].send(2, vec![k; 1_000_000]).await.expect("send");
        }
        t[0].send(1, vec![9]).await.expect("send");
        // Same node: unshaped, arrives at once.
        assert_eq!(t[1].recv(0).await.expect("recv"), vec![9]);
        assert!(start.elapsed() < Duration::from_millis(10));
        for k in 0..3u8 {
            let m = t[2].recv(0).await.expect("recv");
            assert_eq!(m[0], k, "messages of one pair arrive in order");
        }
        // Three messages serialised on one NIC: at least 3 x 10 ms + 2 ms.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(32), "{took:?}");
        assert_eq!(t[0].link_kind(2), LinkKind::Ethernet);
        assert_eq!(t[0].link_kind(1), LinkKind::SharedMemory);
        t[0].flush().await.expect("flush");
    }

    #[test]
    fn bad_layouts_are_rejected() {
        let inner: Vec<Arc<dyn Transport>> = InProcessTransport::group(2)
            .into_iter()
            .map(|t| Arc::new(t) as Arc<dyn Transport>)
            .collect();
        let link = LinkModel::new(LinkKind::Ethernet, 1e-3, 1e9);
        let e = ShapedTransport::group(inner, vec![0], link).expect_err("one node for two ranks");
        assert!(e.to_string().contains("node_of"), "{e}");
    }
}
