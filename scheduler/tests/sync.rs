//! Synchronization planning (issue 8): every synchronizer kind runs on real
//! in-process ranks over emulated node links and leaves every replica equal
//! to the naive reference; simulators are sane; the search runs end to end.

use hetero_core::{LinkKind, LinkModel};
use hetero_scheduler::sync::cluster::{ClusterSpec, InProcessCluster, LinkSource};
use hetero_scheduler::sync::model::{ModelSpec, Variable};
use hetero_scheduler::sync::sim::{analytic, pairwise_accuracy};
use hetero_scheduler::sync::strategy::{
    ArAlgorithm, Compression, Layout, Rng, Sampler, Strategy, Synchronizer, VarSync, baselines,
};
use hetero_scheduler::sync::{SearchConfig, search};
use proptest::prelude::*;

fn small_model() -> ModelSpec {
    ModelSpec {
        name: "small".into(),
        variables: vec![
            Variable::embedding("emb", 37, 5, 6),
            Variable::dense("w1", &[13, 7]),
            Variable::dense("b1", &[13]),
            Variable::dense("w2", &[3, 13]),
            Variable::embedding("emb2", 11, 3, 4),
            Variable::dense("b2", &[1]),
        ],
    }
}

fn spec(nodes: usize, rpn: usize) -> ClusterSpec {
    ClusterSpec {
        nodes,
        ranks_per_node: rpn,
        inter: LinkModel::new(LinkKind::Ethernet, 100e-6, 1e9),
        intra: Some(LinkModel::new(LinkKind::SharedMemory, 2e-6, 10e9)),
    }
}

fn uniform(model: &ModelSpec, f: impl Fn(usize, &Variable) -> Synchronizer) -> Strategy {
    Strategy {
        model: model.name.clone(),
        variables: model
            .variables
            .iter()
            .enumerate()
            .map(|(i, v)| VarSync {
                var: v.name.clone(),
                sync: f(i, v),
            })
            .collect(),
    }
}

fn every_kind(model: &ModelSpec, layout: &Layout) -> Vec<(String, Strategy)> {
    let world = layout.world();
    let mut out: Vec<(String, Strategy)> = baselines::all(model, layout)
        .into_iter()
        .map(|(n, s)| (n.to_string(), s))
        .collect();
    for local in [false, true] {
        out.push((
            format!("ps sharded over all ranks, local aggregation {local}"),
            uniform(model, |i, v| Synchronizer::Ps {
                servers: (0..v.rows().min(world)).map(|k| (k + i) % world).collect(),
                local_aggregation: local,
            }),
        ));
        out.push((
            format!("ps on the last rank, local aggregation {local}"),
            uniform(model, |_, _| Synchronizer::Ps {
                servers: vec![world - 1],
                local_aggregation: local,
            }),
        ));
    }
    for algorithm in ArAlgorithm::ALL {
        for compression in [Compression::None, Compression::Fp16] {
            out.push((
                format!("all-reduce {algorithm:?} {compression:?}, one group per variable"),
                uniform(model, |i, _| Synchronizer::AllReduce {
                    algorithm,
                    group: i,
                    compression,
                }),
            ));
        }
    }
    out.push((
        "all-gather sparse, all-reduce dense fused".into(),
        uniform(model, |_, v| {
            if v.is_sparse() {
                Synchronizer::AllGather
            } else {
                Synchronizer::AllReduce {
                    algorithm: ArAlgorithm::Hierarchical,
                    group: 0,
                    compression: Compression::None,
                }
            }
        }),
    ));
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn every_synchronizer_leaves_every_replica_equal_to_the_naive_sum() {
    let model = small_model();
    for (nodes, rpn) in [(2, 2), (3, 1), (1, 3), (2, 3)] {
        let spec = spec(nodes, rpn);
        let layout = spec.layout().expect("layout");
        runtime().block_on(async {
            let c = InProcessCluster::start(&spec, LinkSource::Spec)
                .await
                .expect("cluster");
            for (name, s) in every_kind(&model, &layout) {
                let m = c
                    .driver
                    .measure(&model, &s, 1, 2, true)
                    .await
                    .unwrap_or_else(|e| panic!("{nodes}x{rpn} {name}: {e}"));
                assert_eq!(m.verified, Some(true));
                assert_eq!(m.steps_s.len(), 2);
                assert!(m.median_s > 0.0);
            }
            // Random strategies from the sampler, mutations included.
            let sampler = Sampler::new(&model, layout);
            let mut rng = Rng::new(nodes as u64 * 10 + rpn as u64);
            for k in 0..12 {
                let s = sampler.sample(&mut rng);
                let s = if k % 2 == 1 {
                    sampler.mutate(&s, &mut rng)
                } else {
                    s
                };
                c.driver
                    .measure(&model, &s, 0, 1, true)
                    .await
                    .unwrap_or_else(|e| panic!("{nodes}x{rpn} sample {k}: {e}\n{s:?}"));
            }
            c.shutdown().await.expect("shutdown");
        });
    }
}

#[test]
fn measured_links_find_the_nodes_and_an_invalid_strategy_is_rejected_before_running() {
    let model = small_model();
    let mut spec = spec(2, 2);
    spec.intra = None;
    runtime().block_on(async {
        let c = InProcessCluster::start(&spec, LinkSource::Measure)
            .await
            .expect("cluster");
        assert!(
            c.model.inter.bandwidth_bytes_per_s < c.model.intra.bandwidth_bytes_per_s,
            "{:?}",
            c.model
        );
        let mut bad = baselines::all_reduce_chunked(&model, 2);
        bad.variables[1].sync = Synchronizer::AllGather;
        let e = c
            .driver
            .measure(&model, &bad, 0, 1, false)
            .await
            .expect_err("dense all-gather");
        assert!(e.to_string().contains("dense"), "{e}");
        // The ranks are still in step after the rejection.
        let ok = baselines::parallax(&model, &c.driver.layout());
        c.driver
            .measure(&model, &ok, 0, 1, true)
            .await
            .expect("runs");
        c.shutdown().await.expect("shutdown");
    });
}

#[test]
fn search_runs_and_reports_consistent_numbers() {
    let model = small_model();
    let spec = spec(2, 2);
    runtime().block_on(async {
        let c = InProcessCluster::start(&spec, LinkSource::Spec)
            .await
            .expect("cluster");
        let cfg = SearchConfig {
            trials: 8,
            per_round: 4,
            candidates: 40,
            warmup: 0,
            steps: 1,
            ..SearchConfig::default()
        };
        let mut lines = 0;
        let r = search(&c.driver, &c.model, &model, &cfg, &mut |_| lines += 1)
            .await
            .expect("search");
        assert_eq!(r.trials.len(), 8);
        assert_eq!(r.baselines.len(), 3);
        assert_eq!(lines, 11, "one progress line per measured strategy");
        assert!(r.best.measured_s <= r.best_baseline_s);
        assert!(
            (r.speedup_over_best_baseline - r.best_baseline_s / r.best.measured_s).abs() < 1e-12
        );
        assert!((0.0..=1.0).contains(&r.hit_rate));
        assert!(r.best_verified);
        c.shutdown().await.expect("shutdown");
    });
}

fn cluster_model(nodes: usize, rpn: usize) -> hetero_scheduler::sync::ClusterModel {
    let layout = Layout::new(nodes, rpn).expect("layout");
    let intra = LinkModel::new(LinkKind::SharedMemory, 2e-6, 10e9);
    let inter = LinkModel::new(LinkKind::Ethernet, 100e-6, 1e9);
    let topo =
        hetero_scheduler::sync::cluster::layout_topology(&layout, intra, inter).expect("topology");
    hetero_scheduler::sync::ClusterModel::from_topology(layout, &topo, 5e9, "synthetic")
        .expect("model")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// More bytes are never predicted faster on the same links: growing any
    /// variable's bytes on the wire (same strategy) never lowers the
    /// analytic time. A dense variable grows its rows; a sparse one the rows
    /// it touches, since its bytes are those rows, not the table's size (a
    /// bigger table with the same touched rows spreads them more evenly over
    /// its shards, which is rightly predicted faster: CI found seed 3901,
    /// var 0, grow 3, a 37-row table split 19/18 against 40 split 20/20).
    #[test]
    fn more_bytes_are_never_predicted_faster(seed in 0u64..10_000, var in 0usize..6, grow in 1usize..40) {
        let model = small_model();
        let c = cluster_model(2, 2);
        let sampler = Sampler::new(&model, c.layout);
        let mut rng = Rng::new(seed);
        let s = sampler.sample(&mut rng);
        let mut bigger = model.clone();
        let v = &mut bigger.variables[var];
        let rows = v.shape[0];
        match v.sparse.as_mut() {
            Some(sparse) => sparse.rows_touched = (sparse.rows_touched + grow).min(rows),
            None => v.shape[0] += grow,
        }
        let small_plan = s.compile(&model, &c.layout).expect("valid");
        let big_plan = s.compile(&bigger, &c.layout).expect("still valid");
        let a = analytic(&model, &small_plan, &c).total_s;
        let b = analytic(&bigger, &big_plan, &c).total_s;
        prop_assert!(b >= a * (1.0 - 1e-12), "{b} < {a}");
    }

    /// Compression halves what goes on the wire.
    #[test]
    fn fp16_halves_the_bytes_on_the_wire(seed in 0u64..10_000) {
        let model = small_model();
        let c = cluster_model(2, 3);
        let mut rng = Rng::new(seed);
        let algorithm = rng.pick(&ArAlgorithm::ALL).expect("non-empty");
        let make = |compression| uniform(&model, |_, _| Synchronizer::AllReduce { algorithm, group: 0, compression });
        let none = make(Compression::None).compile(&model, &c.layout).expect("valid");
        let half = make(Compression::Fp16).compile(&model, &c.layout).expect("valid");
        let a = analytic(&model, &none, &c);
        let b = analytic(&model, &half, &c);
        // Half the bytes on the wire; the host cast is paid on top.
        let wire = |x: &hetero_scheduler::sync::sim::Breakdown| x.ar_flat_bytes + x.ar_hier_bytes;
        prop_assert!((2.0 * wire(&b) - wire(&a)).abs() < 1e-9);
    }
}

#[test]
fn pairwise_accuracy_counts_only_clear_pairs() {
    let measured = [1.0, 2.0, 3.0, 3.01];
    let perfect = [10.0, 20.0, 30.0, 0.0];
    // The 3.0 / 3.01 pair is a tie at 2%: left out. 3.01 is ordered wrong
    // against 1.0, 2.0 and right against nothing else: 3 of 5 pairs right.
    let acc = pairwise_accuracy(&perfect, &measured, 0.02).expect("pairs");
    assert!((acc - 3.0 / 5.0).abs() < 1e-12, "{acc}");
    assert_eq!(pairwise_accuracy(&[1.0], &[1.0], 0.02), None);
}
