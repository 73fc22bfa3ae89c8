//! Shared-memory transport: ranks of one process, each with its own
//! mapping of the rings (the same shared futexes and copies as between
//! processes), against the naive reduction with rings far smaller than the
//! messages; setup leaves no files; a rank that goes away fails the others
//! at once; a setup failure on one rank fails every rank.
#![cfg(target_os = "linux")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hetero_collectives::transport::shm::{ShmConfig, ShmTransport};
use hetero_collectives::{Algorithm, Transport};
use hetero_core::{Collective, DType, Error, LinkKind, ReduceOp, Result, TensorMut};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hetero-shm-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `n` ranks over loopback TCP, each upgraded to shared memory.
async fn group(n: usize, cfg: ShmConfig, timeout: Duration) -> Vec<Result<ShmTransport>> {
    group_with(vec![cfg; n], timeout).await
}

/// As [`group`], each rank with its own configuration.
async fn group_with(cfgs: Vec<ShmConfig>, timeout: Duration) -> Vec<Result<ShmTransport>> {
    let tcp = mesh(cfgs.len(), timeout).await.expect("TCP mesh");
    let handles: Vec<_> = tcp
        .into_iter()
        .zip(cfgs)
        .map(|(tcp, cfg)| tokio::spawn(async move { ShmTransport::connect(tcp, &cfg).await }))
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[test]
fn shared_memory_ranks_agree_with_the_naive_reduction() {
    let dir = scratch("agree");
    rt().block_on(async {
        for n in [2usize, 3, 4] {
            // 4 KiB rings: every large message wraps and streams
            // and no polling every other round: the doorbells carry every wake-up
            let cfg = ShmConfig {
                dir: dir.clone(),
                ring_bytes: 4096,
                polls_before_sleep: if n % 2 == 0 { 0 } else { 64 },
            };
            let ts = group(n, cfg, Duration::from_secs(30)).await;
            assert!(files_in(&dir).is_empty(), "left {:?}", files_in(&dir));
            let mut handles = Vec::new();
            for t in ts {
                let t: Arc<dyn Transport> = Arc::new(t.expect("shared-memory setup"));
                handles.push(tokio::spawn(async move {
                    let rank = t.rank();
                    assert!(t.describe().contains("shared memory"), "{}", t.describe());
                    for peer in (0..n).filter(|&p| p != rank) {
                        assert_eq!(t.link_kind(peer), LinkKind::SharedMemory);
                    }
                    all_reduce_matches_naive(t.clone(), n, &[DType::F32, DType::F16, DType::I32])
                        .await?;
                    t.flush().await?;
                    Ok::<(), Error>(())
                }));
            }
            for h in handles {
                h.await.expect("task").expect("rank ok");
            }
        }
    });
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_rank_that_goes_away_fails_the_others_at_once() {
    let dir = scratch("dropped");
    rt().block_on(async {
        let cfg = ShmConfig {
            dir: dir.clone(),
            ring_bytes: 1 << 16,
            polls_before_sleep: 64,
        };
        let ts = group(3, cfg, Duration::from_secs(60)).await;
        let start = Instant::now();
        let mut handles = Vec::new();
        for t in ts {
            let t = t.expect("shared-memory setup");
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
        let mut results = Vec::new();
        for h in handles {
            results.push(h.await.expect("task"));
        }
        assert!(results[1].is_ok());
        for r in [&results[0], &results[2]] {
            assert!(matches!(r, Err(Error::PeerFailure { .. })), "{r:?}");
        }
        // seen as a closed ring, not after the 60 s receive timeout
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
    });
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_setup_failure_on_one_rank_fails_every_rank() {
    let missing = std::env::temp_dir().join(format!(
        "hetero-shm-test-{}-no-such-dir/inner",
        std::process::id()
    ));
    let dir = scratch("setup");
    rt().block_on(async {
        // rank 2 cannot create its rings; ranks 0 and 1 can
        let good = ShmConfig {
            dir: dir.clone(),
            ring_bytes: 1 << 16,
            polls_before_sleep: 64,
        };
        let bad = ShmConfig {
            dir: missing.clone(),
            ..good.clone()
        };
        let start = Instant::now();
        let results = group_with(
            vec![good.clone(), good, bad.clone()],
            Duration::from_secs(60),
        )
        .await;
        for (rank, r) in results.iter().enumerate() {
            let e = r.as_ref().expect_err("rank 2 has no ring directory");
            assert!(e.to_string().contains("no-such-dir"), "rank {rank}: {e}");
            if rank < 2 {
                assert!(matches!(e, Error::PeerFailure { rank: 2, .. }), "{e:?}");
            }
        }
        assert!(start.elapsed() < Duration::from_secs(20));
        assert!(files_in(&dir).is_empty(), "left {:?}", files_in(&dir));
        let small = ShmConfig {
            ring_bytes: 100,
            ..bad
        };
        for r in group(2, small, Duration::from_secs(10)).await {
            let e = r.expect_err("ring too small");
            assert!(e.to_string().contains("at least 4096"), "{e}");
        }
    });
    std::fs::remove_dir_all(&dir).ok();
}
