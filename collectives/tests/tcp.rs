//! TCP transport on loopback: rendezvous with ephemeral ports, every op
//! against the naive result, environment parsing, and a rank that drops its
//! connections.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use hetero_collectives::kernels::Staged;
use hetero_collectives::{Algorithm, TcpConfig, TcpTransport, Transport};
use hetero_core::{Collective, DType, Error, ReduceOp, Result, TensorMut, chunk_range};
use tokio::net::TcpListener;

/// Connect `n` ranks on 127.0.0.1 (rank 0 on an ephemeral port).
async fn mesh(n: usize, timeout: Duration) -> Result<Vec<TcpTransport>> {
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

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn tcp_ranks_agree_with_the_naive_reduction() {
    rt().block_on(async {
        for n in [1usize, 2, 3, 4] {
            let ts = mesh(n, Duration::from_secs(20)).await.expect("mesh");
            let mut handles = Vec::new();
            for t in ts {
                handles.push(tokio::spawn(async move {
                    let t: Arc<dyn Transport> = Arc::new(t);
                    let rank = t.rank();
                    assert!(t.describe().contains("TCP"));
                    for algo in [Algorithm::Ring, Algorithm::Tree] {
                        let c = flat(t.clone(), algo);
                        for dtype in [DType::F32, DType::BF16, DType::I64, DType::U8] {
                            for op in ReduceOp::ALL {
                                for (si, len) in
                                    [0usize, 1, 7, 1000, 65_537].into_iter().enumerate()
                                {
                                    let mut d = data(dtype, rank, len, si);
                                    c.all_reduce(TensorMut::Host(d.host_mut()?), op).await?;
                                    let want = naive(dtype, op, n, len, si);
                                    if d.bytes() != want.bytes() {
                                        return Err(Error::invalid(
                                            "result",
                                            format!(
                                                "n={n} rank={rank} {dtype} {op} len={len} {algo:?}"
                                            ),
                                        ));
                                    }
                                }
                            }
                        }
                        let len = 101;
                        let own = chunk_range(len, n, rank);
                        let inp = data(DType::F32, rank, len, 3);
                        let mut out = Staged::zeroed(DType::F32, own.len());
                        c.reduce_scatter(
                            hetero_core::Tensor::Host(inp.host()?),
                            TensorMut::Host(out.host_mut()?),
                            ReduceOp::Sum,
                        )
                        .await?;
                        let want = naive(DType::F32, ReduceOp::Sum, n, len, 3);
                        assert_eq!(out.bytes(), &want.bytes()[own.start * 4..own.end * 4]);
                        c.barrier().await?;
                    }
                    Ok(())
                }));
            }
            for h in handles {
                h.await.expect("task").expect("rank ok");
            }
        }
    });
}

#[test]
fn a_rank_that_drops_its_connections_fails_the_others_in_time() {
    rt().block_on(async {
        let ts = mesh(3, Duration::from_secs(30)).await.expect("mesh");
        let started = std::time::Instant::now();
        let mut handles = Vec::new();
        for t in ts {
            handles.push(tokio::spawn(async move {
                if t.rank() == 1 {
                    drop(t);
                    return Ok(());
                }
                let c = flat(Arc::new(t), Algorithm::Ring);
                let mut d = data(DType::F32, 0, 100_000, 0);
                c.all_reduce(TensorMut::Host(d.host_mut()?), ReduceOp::Sum)
                    .await
            }));
        }
        let results: Vec<Result<()>> = futures_join(handles).await;
        assert!(results[1].is_ok());
        for r in [&results[0], &results[2]] {
            assert!(
                matches!(
                    r,
                    Err(Error::PeerFailure { .. }) | Err(Error::Timeout { .. })
                ),
                "{r:?}"
            );
        }
        // A peer failure, not the 30 s timeout (generous bound, not a timing test).
        assert!(started.elapsed() < Duration::from_secs(25));
    });
}

async fn futures_join(hs: Vec<tokio::task::JoinHandle<Result<()>>>) -> Vec<Result<()>> {
    let mut out = Vec::new();
    for h in hs {
        out.push(h.await.expect("task"));
    }
    out
}

#[test]
fn a_missing_rank_times_out_the_rendezvous() {
    rt().block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let cfg = TcpConfig::new(0, 2, "unused").with_timeout(Duration::from_millis(300));
        let e = TcpTransport::connect_with(&cfg, Some(listener))
            .await
            .expect_err("rank 1 never comes");
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
    });
}

#[test]
fn environment_variables_are_read_and_checked() {
    // One test touches the environment, so no other test races with it.
    // SAFETY: no other thread of this test binary reads these variables.
    unsafe {
        std::env::set_var("RANK", "1");
        std::env::set_var("WORLD_SIZE", "4");
        std::env::set_var("LOCAL_RANK", "1");
        std::env::set_var("LOCAL_WORLD_SIZE", "2");
        std::env::set_var("MASTER_ADDR", "127.0.0.1");
        std::env::set_var("MASTER_PORT", "29500");
    }
    let cfg = TcpConfig::from_env().expect("valid env");
    assert_eq!(
        (
            cfg.rank,
            cfg.world_size,
            cfg.local_rank,
            cfg.local_world_size
        ),
        (1, 4, 1, 2)
    );
    assert_eq!(cfg.master, "127.0.0.1:29500");
    unsafe { std::env::set_var("RANK", "4") };
    assert!(TcpConfig::from_env().is_err(), "rank out of range");
    unsafe { std::env::set_var("MASTER_PORT", "http") };
    let e = TcpConfig::from_env().expect_err("bad port").to_string();
    assert!(e.contains("MASTER_PORT"), "{e}");
}
