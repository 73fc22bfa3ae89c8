//! TCP transport on loopback: rendezvous with ephemeral ports, every op
//! against the naive result, environment parsing, and a rank that drops its
//! connections.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use hetero_collectives::staging::Staged;
use hetero_collectives::{Algorithm, TcpConfig, TcpTransport, Transport};
use hetero_core::{Collective, DType, Error, ReduceOp, Result, TensorMut, chunk_range};
use tokio::net::TcpListener;

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
                    all_reduce_matches_naive(
                        t.clone(),
                        n,
                        &[DType::F32, DType::BF16, DType::I64, DType::U8],
                    )
                    .await?;
                    for algo in [Algorithm::Ring, Algorithm::Tree] {
                        let c = flat(t.clone(), algo);
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
                    t.flush().await?;
                    Ok::<(), Error>(())
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
        // Closed connections are seen at once as peer failures, not after
        // the 30 s timeout.
        for r in [&results[0], &results[2]] {
            assert!(matches!(r, Err(Error::PeerFailure { .. })), "{r:?}");
        }
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

/// `Hierarchical::compose` over communicators of different kinds: in-process
/// inside each of 2 domains, TCP between them (leaders and shards), TCP flat.
#[test]
fn hierarchical_composes_in_process_and_tcp() {
    use hetero_collectives::{FlatCollective, HierPlan, Hierarchical, InProcessTransport, Scheme};
    use hetero_core::{
        Backend, DeviceId, DeviceKind, LinkKind, LinkModel, Topology, TopologyDevice,
    };
    let dev = |i: usize| {
        TopologyDevice::bare(
            DeviceId::new(Backend::Host, i as u32),
            format!("rank {i} on synthetic"),
            DeviceKind::Virtual,
        )
    };
    let topo = Topology::from_fn((0..4).map(dev).collect(), |i, j| {
        (i != j).then(|| {
            if i / 2 == j / 2 {
                LinkModel::new(LinkKind::SharedMemory, 1e-6, 20e9)
            } else {
                LinkModel::new(LinkKind::Ethernet, 50e-6, 125e6)
            }
        })
    })
    .expect("topology");
    let plan = HierPlan::new(&topo).expect("plan");
    assert_eq!(plan.domains(), &[vec![0, 1], vec![2, 3]]);
    rt().block_on(async {
        let link = LinkModel::new(LinkKind::Loopback, 20e-6, 1e9);
        let mk = move |t: Arc<dyn Transport>| -> Box<dyn Collective> {
            Box::new(FlatCollective::new(t, Algorithm::Auto, link, "test"))
        };
        let mut flat: Vec<Option<TcpTransport>> = mesh(4, Duration::from_secs(20))
            .await
            .expect("mesh")
            .into_iter()
            .map(Some)
            .collect();
        // Leaders 0 and 2 (also the shard group of local index 0), shard group 1 and 3.
        let mut group0: Vec<Option<TcpTransport>> = mesh(2, Duration::from_secs(20))
            .await
            .expect("mesh")
            .into_iter()
            .map(Some)
            .collect();
        let mut group1: Vec<Option<TcpTransport>> = mesh(2, Duration::from_secs(20))
            .await
            .expect("mesh")
            .into_iter()
            .map(Some)
            .collect();
        let mut intra: Vec<Option<InProcessTransport>> = InProcessTransport::group(2)
            .into_iter()
            .chain(InProcessTransport::group(2))
            .map(Some)
            .collect();
        let mut handles = Vec::new();
        for rank in 0..4usize {
            let (domain, local) = (rank / 2, rank % 2);
            let f = flat[rank].take().expect("flat");
            let i = intra[rank].take().expect("intra");
            let g = if local == 0 {
                group0[domain].take()
            } else {
                group1[domain].take()
            }
            .expect("group");
            let plan = plan.clone();
            handles.push(tokio::spawn(async move {
                let g: Arc<dyn Transport> = Arc::new(g);
                let leaders = (local == 0).then(|| mk(g.clone()));
                let shard = mk(g);
                let h = Hierarchical::compose(
                    plan,
                    rank,
                    mk(Arc::new(f)),
                    Some((mk(Arc::new(i)), 0)),
                    leaders,
                    Some(shard),
                );
                for scheme in [Scheme::Leader, Scheme::Sharded] {
                    let h2 = &h;
                    for op in ReduceOp::ALL {
                        for len in [0usize, 1, 5, 1003] {
                            let mut d = data(DType::I32, rank, len, 1);
                            h2.all_reduce_with(scheme, TensorMut::Host(d.host_mut()?), op)
                                .await?;
                            let want = naive(DType::I32, op, 4, len, 1);
                            if d.bytes() != want.bytes() {
                                return Err(Error::invalid(
                                    "result",
                                    format!("{scheme:?} rank {rank} {op} len {len}"),
                                ));
                            }
                        }
                    }
                }
                h.barrier().await?;
                Ok(h.explain())
            }));
        }
        for h in handles {
            let explain = h.await.expect("task").expect("rank ok");
            assert!(explain.contains("2 domains"), "{explain}");
        }
    });
}
