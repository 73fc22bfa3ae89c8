//! Hierarchical all-reduce (leader and sharded schemes, collapse to flat),
//! its explanation on synthetic topologies (insta), and topology sensing.

mod common;

use std::sync::Arc;

use common::*;
use hetero_collectives::sense::{SenseConfig, sense_or_load, sense_topology};
use hetero_collectives::{HierPlan, Hierarchical, Scheme, Transport};
use hetero_core::{
    Backend, Collective, DType, DeviceId, DeviceKind, LinkKind, LinkModel, ReduceOp, Result,
    TensorMut, Topology, TopologyDevice,
};

fn device(i: usize) -> TopologyDevice {
    TopologyDevice::bare(
        DeviceId::new(Backend::Host, i as u32),
        format!("rank {i} on synthetic"),
        DeviceKind::Virtual,
    )
}

/// `domain_sizes` nodes; 20 GB/s and 1 us inside a node, `inter_bw` and 50 us between.
fn synthetic(domain_sizes: &[usize], inter_bw: f64) -> Topology {
    let node: Vec<usize> = domain_sizes
        .iter()
        .enumerate()
        .flat_map(|(k, &s)| std::iter::repeat_n(k, s))
        .collect();
    let n = node.len();
    Topology::from_fn((0..n).map(device).collect(), |i, j| {
        (i != j).then(|| {
            if node[i] == node[j] {
                LinkModel::new(LinkKind::SharedMemory, 1e-6, 20e9)
            } else {
                LinkModel::new(LinkKind::Ethernet, 50e-6, inter_bw)
            }
        })
    })
    .expect("valid topology")
}

#[test]
fn explain_snapshots() {
    let two_nodes = HierPlan::new(&synthetic(&[4, 4], 125e6)).expect("plan");
    insta::assert_snapshot!("two_nodes_1gbit", two_nodes.explain());
    let uneven = HierPlan::new(&synthetic(&[3, 2], 125e6)).expect("plan");
    insta::assert_snapshot!("uneven_nodes", uneven.explain());
    let equal = HierPlan::new(&synthetic(&[2, 2], 20e9)).expect("plan");
    insta::assert_snapshot!("equal_links_collapse", equal.explain());
    assert_eq!(equal.domains().len(), 1);
    assert_eq!(equal.choose(64e6).0, Scheme::Flat);
    // Across a 1 Gbit/s network a 64 MiB all-reduce is hierarchical.
    assert_ne!(two_nodes.choose(64e6).0, Scheme::Flat);
}

#[test]
fn hierarchical_only_never_chooses_flat_across_domains() {
    // Slow steps inside the nodes (100 us) and quick ones between (5 us,
    // a fifth of the bandwidth): a tiny all-reduce is cheaper flat (3 steps
    // of recursive doubling) than through the leaders (4 intra steps).
    let node = |i: usize| i / 4;
    let topo = Topology::from_fn((0..8).map(device).collect(), |i, j| {
        (i != j).then(|| {
            if node(i) == node(j) {
                LinkModel::new(LinkKind::SharedMemory, 100e-6, 10e9)
            } else {
                LinkModel::new(LinkKind::Ethernet, 5e-6, 2e9)
            }
        })
    })
    .expect("valid topology");
    let plan = HierPlan::new(&topo).expect("plan");
    assert_eq!(plan.domains().len(), 2);
    assert_eq!(plan.choose(8.0).0, Scheme::Flat);
    assert_ne!(plan.choose_hierarchical(8.0).0, Scheme::Flat);
    // one domain: flat is all there is
    let equal = HierPlan::new(&synthetic(&[2, 2], 20e9)).expect("plan");
    assert_eq!(equal.choose_hierarchical(64e6).0, Scheme::Flat);
}

fn check_all(topo: Topology, schemes: &[Option<Scheme>]) {
    let plan = HierPlan::new(&topo).expect("plan");
    check_plan(plan, topo.len(), schemes);
}

fn check_plan(plan: HierPlan, n: usize, schemes: &[Option<Scheme>]) {
    let schemes = schemes.to_vec();
    let results = run_group(inproc(n), move |t: Arc<dyn Transport>| {
        let plan = plan.clone();
        let schemes = schemes.clone();
        async move {
            let rank = t.rank();
            for scheme in schemes {
                let mut h = Hierarchical::from_plan(t.clone(), plan.clone())?;
                if let Some(s) = scheme {
                    h = h.with_scheme(s);
                }
                for dtype in DType::ALL {
                    for op in ReduceOp::ALL {
                        for (si, &len) in SIZES.iter().enumerate() {
                            let mut d = data(dtype, rank, len, si);
                            h.all_reduce(TensorMut::Host(d.host_mut()?), op).await?;
                            let want = naive(dtype, op, n, len, si);
                            if d.bytes() != want.bytes() {
                                return Err(hetero_core::Error::invalid(
                                    "result",
                                    format!(
                                        "{scheme:?} rank {rank} {dtype} {op} len {len}: {:?} vs {:?}",
                                        d.host(),
                                        want.host()
                                    ),
                                ));
                            }
                        }
                    }
                }
                h.barrier().await?;
            }
            Result::Ok(())
        }
    });
    for (rank, r) in results.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("rank {rank}: {e}"));
    }
}

#[test]
fn pipelined_segments_match_the_naive_reduction() {
    // 24-byte segments: every size above 3 f64 elements runs as several
    // segments (up to the cap), with the domain's and the link's phases of
    // neighbouring segments in flight together.
    for (sizes, schemes) in [
        (
            &[4, 4][..],
            &[Some(Scheme::Leader), Some(Scheme::Sharded)][..],
        ),
        (&[2, 3, 1][..], &[Some(Scheme::Leader)][..]),
    ] {
        let topo = synthetic(sizes, 125e6);
        let plan = HierPlan::new(&topo).expect("plan").with_segment_bytes(24);
        check_plan(plan, topo.len(), schemes);
    }
}

#[test]
fn given_domains_override_the_measured_ones() {
    // Equal links: measurement finds one domain, the caller says two nodes
    // of one GPU each (Horovod's grouping by host).
    let topo = synthetic(&[2], 20e9);
    assert_eq!(HierPlan::new(&topo).expect("plan").domains().len(), 1);
    let plan = HierPlan::with_domains(&topo, vec![vec![0], vec![1]]).expect("plan");
    assert_eq!(plan.domains(), &[vec![0], vec![1]]);
    assert_eq!(plan.leaders(), &[0, 1]);
    check_plan(plan, 2, &[Some(Scheme::Leader), Some(Scheme::Sharded)]);
    let uneven = HierPlan::with_domains(&synthetic(&[5], 20e9), vec![vec![3, 0], vec![1, 2, 4]])
        .expect("plan");
    assert_eq!(uneven.leaders(), &[3, 1]);
    check_plan(uneven, 5, &[Some(Scheme::Leader)]);
    for (bad, says) in [
        (vec![vec![0], vec![]], "empty"),
        (vec![vec![0, 1], vec![1]], "twice"),
        (vec![vec![0]], "rank 1 is in no domain"),
        (vec![vec![0, 1, 2]], "not below"),
    ] {
        let e = HierPlan::with_domains(&topo, bad).expect_err("invalid domains");
        assert!(e.to_string().contains(says), "{e}");
    }
}

#[test]
fn leader_and_sharded_schemes_match_the_naive_reduction() {
    check_all(
        synthetic(&[4, 4], 125e6),
        &[
            Some(Scheme::Leader),
            Some(Scheme::Sharded),
            Some(Scheme::Flat),
            None,
        ],
    );
    check_all(
        synthetic(&[2, 3, 1], 125e6),
        &[Some(Scheme::Leader), Some(Scheme::Sharded)],
    );
}

#[test]
fn sensing_builds_a_topology_and_caches_it() {
    let dir = std::env::temp_dir().join(format!("hetero-collectives-sense-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("topology.json");
    let _ = std::fs::remove_file(&path);
    let cfg = SenseConfig {
        sizes: vec![64, 4096, 65536],
        repetitions: 2,
    };
    let p = path.clone();
    let results = run_group(inproc(3), move |t| {
        let cfg = cfg.clone();
        let p = p.clone();
        async move {
            let topo = sense_topology(t.clone(), &cfg).await?;
            // Per-rank cache files: the first call measures and writes them,
            // the second finds all of them and loads.
            let mine = p.with_file_name(format!("rank{}.json", t.rank()));
            let first = sense_or_load(t.clone(), &cfg, &mine).await?;
            let loaded = sense_or_load(t.clone(), &cfg, &mine).await?;
            // JSON keeps floats to within an ulp or so.
            assert_eq!(first.devices(), loaded.devices());
            for (a, b) in first
                .links()
                .iter()
                .flatten()
                .zip(loaded.links().iter().flatten())
            {
                let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(y.abs());
                match (a, b) {
                    (Some(a), Some(b)) => assert!(
                        a.kind == b.kind
                            && close(a.latency_s, b.latency_s)
                            && close(a.bandwidth_bytes_per_s, b.bandwidth_bytes_per_s),
                        "the second call loads the cache: {a:?} vs {b:?}"
                    ),
                    (a, b) => assert_eq!(a.is_none(), b.is_none()),
                }
            }
            let h = Hierarchical::new(t.clone(), &topo)?;
            let mut d = data(DType::F32, t.rank(), 10, 0);
            h.all_reduce(TensorMut::Host(d.host_mut()?), ReduceOp::Sum)
                .await?;
            Result::Ok((topo, loaded, h.explain()))
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    for (rank, r) in results.into_iter().enumerate() {
        let (topo, loaded, explain) = r.unwrap_or_else(|e| panic!("rank {rank}: {e}"));
        assert_eq!(topo.len(), 3);
        assert!(topo.devices()[1].info.name.starts_with("rank 1 on "));
        assert_eq!(
            topo.link(0, 1).map(|l| l.kind),
            Some(LinkKind::SharedMemory)
        );
        assert!(
            topo.link(2, 1)
                .is_some_and(|l| l.bandwidth_bytes_per_s > 0.0)
        );
        assert_eq!(loaded.len(), 3);
        assert!(
            explain.contains("collapsed to flat") || explain.contains("domains"),
            "{explain}"
        );
    }
}

#[test]
fn tuning_measures_every_scheme_and_all_ranks_choose_alike() {
    let topo = synthetic(&[4, 4], 125e6);
    let plan = HierPlan::new(&topo).expect("plan");
    let results = run_group(inproc(8), move |t: Arc<dyn Transport>| {
        let plan = plan.clone();
        async move {
            let rank = t.rank();
            let mut h = Hierarchical::from_plan(t, plan)?;
            let table = h.tune(64 << 10, 2).await?;
            // After tuning, the choice per size is the measured one, and
            // all-reduces still give the naive result.
            for (bytes, times, best) in &table {
                assert_eq!(times.len(), 3, "flat, leader and sharded are measured");
                assert_eq!(h.scheme_for(*bytes), *best);
            }
            assert!(h.explain().contains("tuned by measurement"));
            for (si, &len) in SIZES.iter().enumerate() {
                let mut d = data(DType::I32, rank, len, si);
                h.all_reduce(TensorMut::Host(d.host_mut()?), ReduceOp::Sum)
                    .await?;
                assert_eq!(
                    d.bytes(),
                    naive(DType::I32, ReduceOp::Sum, 8, len, si).bytes()
                );
            }
            Result::Ok(
                table
                    .into_iter()
                    .map(|(b, _, s)| (b, s))
                    .collect::<Vec<_>>(),
            )
        }
    });
    let tables: Vec<_> = results
        .into_iter()
        .enumerate()
        .map(|(rank, r)| r.unwrap_or_else(|e| panic!("rank {rank}: {e}")))
        .collect();
    assert_eq!(
        tables[0].iter().map(|t| t.0).collect::<Vec<_>>(),
        [1024, 4096, 16384, 65536]
    );
    assert!(
        tables.iter().all(|t| *t == tables[0]),
        "ranks disagree: {tables:?}"
    );
}
