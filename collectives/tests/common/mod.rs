//! Shared test helpers: run N ranks as tasks, make data, compute naive results.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hetero_collectives::combine::{combine_bytes, finish_bytes};
use hetero_collectives::staging::Staged;
use hetero_collectives::{
    Algorithm, FlatCollective, InProcessTransport, TcpConfig, TcpTransport, Transport,
};
use hetero_core::host_kernels::Arith;
use hetero_core::{DType, Error, LinkKind, LinkModel, ReduceOp, Result};
use tokio::net::TcpListener;

/// Run `f(rank transport)` for every rank of a group concurrently; results by rank.
pub fn run_group<T, F, Fut, R>(transports: Vec<T>, f: F) -> Vec<Result<R>>
where
    T: Transport + 'static,
    F: Fn(Arc<dyn Transport>) -> Fut,
    Fut: Future<Output = Result<R>> + Send + 'static,
    R: Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let handles: Vec<_> = transports
            .into_iter()
            .map(|t| tokio::spawn(f(Arc::new(t))))
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("rank task panicked"));
        }
        out
    })
}

pub fn inproc(n: usize) -> Vec<InProcessTransport> {
    InProcessTransport::group_with_timeout(n, Duration::from_secs(20))
}

pub fn flat(t: Arc<dyn Transport>, algo: Algorithm) -> FlatCollective {
    FlatCollective::new(
        t,
        algo,
        LinkModel::new(LinkKind::SharedMemory, 5e-6, 5e9),
        "test constants",
    )
}

/// Small integers (exact in every dtype for sums and products of 8 ranks).
pub fn data(dtype: DType, rank: usize, len: usize, seed: usize) -> Staged {
    let mut s = Staged::zeroed(dtype, len);
    hetero_core::with_dtype!(dtype, T => {
        let v: &mut [T] = bytemuck::cast_slice_mut(s.bytes_mut());
        for (i, x) in v.iter_mut().enumerate() {
            let k = ((rank * 7 + i * 3 + seed) % 4) as f64;
            let k = if dtype == DType::U8 { k } else { k - 1.0 };
            *x = <T as Arith>::from_f64(k);
        }
    });
    s
}

/// The reduction computed in one place, rank by rank.
pub fn naive(dtype: DType, op: ReduceOp, n: usize, len: usize, seed: usize) -> Staged {
    let mut acc = data(dtype, 0, len, seed);
    for r in 1..n {
        let d = data(dtype, r, len, seed);
        combine_bytes(dtype, op, acc.bytes_mut(), d.bytes()).expect("combine");
    }
    finish_bytes(dtype, op, acc.bytes_mut(), n).expect("finish");
    acc
}

pub const SIZES: [usize; 7] = [0, 1, 2, 7, 13, 31, 100];

/// Every point-to-point all-reduce algorithm x `dtypes` x every reduce op x
/// sizes 0, 1, 7, 1000, 65 537 on this rank of an `n`-rank group, against
/// the naive reduction; then a barrier per algorithm.
pub async fn all_reduce_matches_naive(
    t: Arc<dyn Transport>,
    n: usize,
    dtypes: &[DType],
) -> Result<()> {
    use hetero_core::{Collective, TensorMut};
    let rank = t.rank();
    for algo in [
        Algorithm::Ring,
        Algorithm::Tree,
        Algorithm::RecursiveDoubling,
        Algorithm::HalvingDoubling,
    ] {
        let c = flat(t.clone(), algo);
        for &dtype in dtypes {
            for op in ReduceOp::ALL {
                for (si, len) in [0usize, 1, 7, 1000, 65_537].into_iter().enumerate() {
                    let mut d = data(dtype, rank, len, si);
                    c.all_reduce(TensorMut::Host(d.host_mut()?), op).await?;
                    let want = naive(dtype, op, n, len, si);
                    if d.bytes() != want.bytes() {
                        return Err(Error::invalid(
                            "result",
                            format!("n={n} rank={rank} {dtype} {op} len={len} {algo:?}"),
                        ));
                    }
                }
            }
        }
        c.barrier().await?;
    }
    Ok(())
}

/// A two-worker tokio runtime for a test's ranks.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Connect `n` ranks on 127.0.0.1 (rank 0 on an ephemeral port).
pub async fn mesh(n: usize, timeout: Duration) -> Result<Vec<TcpTransport>> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::io("bind", e))?;
    let master = listener
        .local_addr()
        .map_err(|e| Error::io("addr", e))?
        .to_string();
    let mut handles = Vec::new();
    let mut listener = Some(listener);
    for rank in 0..n {
        let cfg = TcpConfig::new(rank, n, master.clone()).with_timeout(timeout);
        let l = if rank == 0 { listener.take() } else { None };
        handles.push(tokio::spawn(async move {
            TcpTransport::connect_with(&cfg, l).await
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(
            h.await
                .map_err(|e| Error::invalid("task", e.to_string()))??,
        );
    }
    Ok(out)
}
