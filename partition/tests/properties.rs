//! Property tests on random small DAGs: the exact DP equals brute force over
//! every contiguous split (with colour classes, CPU-only nodes, memory limits
//! and accelerators of different speeds and memories), the linearized DP is
//! never better, and every solver's objective is the evaluator's on its split.
#![allow(clippy::unwrap_used)] // test helpers may unwrap

use hetero_core::placement::{AcceleratorClass, Cluster, Edge, Graph, Node};
use hetero_partition::{
    ExactDp, Greedy, IntegerProgram, IpSolver, LinearDp, PartitionError, PipeDream, brute, evaluate,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    graph: Graph,
    cluster: Cluster,
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=6)
        .prop_flat_map(|n| {
            let nodes = proptest::collection::vec(
                (
                    0u32..20,                             // cpu time
                    0u32..10,                             // accelerator time
                    0u64..6,                              // memory
                    prop::bool::weighted(0.85),           // runs on an accelerator
                    prop::option::weighted(0.3, 0u64..2), // colour class
                    0u32..4,                              // out cost
                ),
                n,
            );
            let edges = proptest::collection::vec(prop::bool::weighted(0.4), n * (n - 1) / 2);
            let cluster = (
                1usize..=2,
                1u64..=12,
                prop::bool::ANY, // second accelerator class
                0usize..=1,      // cpus
            );
            (nodes, edges, cluster)
        })
        .prop_map(|(nodes, edges, (k, mem, hetero, cpus))| {
            let n = nodes.len();
            let graph_nodes: Vec<Node> = nodes
                .iter()
                .enumerate()
                .map(|(i, &(c, a, m, ok, color, _))| Node {
                    id: 10 * i as u64 + 3,
                    name: None,
                    cpu_time: f64::from(c),
                    accelerator_time: f64::from(a) / 2.0,
                    memory_bytes: m,
                    accelerator_ok: ok,
                    color_class: color,
                    backward: false,
                })
                .collect();
            let mut graph_edges = Vec::new();
            let mut e = 0;
            #[allow(clippy::needless_range_loop)] // i indexes nodes and numbers edges
            for i in 0..n {
                for j in i + 1..n {
                    if edges[e] {
                        graph_edges.push(Edge {
                            src: i,
                            dst: j,
                            transfer_time: f64::from(nodes[i].5) / 4.0,
                            bytes: None,
                        });
                    }
                    e += 1;
                }
            }
            let mut accelerators = vec![AcceleratorClass {
                name: "a".into(),
                count: k,
                memory_bytes: mem,
                speed_factor: 1.0,
            }];
            if hetero {
                accelerators.push(AcceleratorClass {
                    name: "b".into(),
                    count: 1,
                    memory_bytes: mem / 2 + 1,
                    speed_factor: 2.0,
                });
            }
            Case {
                graph: Graph {
                    nodes: graph_nodes,
                    edges: graph_edges,
                },
                cluster: Cluster {
                    accelerators,
                    cpus,
                    interconnect: None,
                },
            }
        })
}

fn consistent(c: &Case, plan: &hetero_core::placement::Plan) {
    let e = evaluate(&c.graph, &c.cluster, &plan.assignment).unwrap();
    assert!(e.fits());
    assert_eq!(e.plan.objective, plan.objective);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn exact_dp_equals_brute_force(c in case()) {
        let brute = brute::best_contiguous(&c.graph, &c.cluster).unwrap();
        let exact = ExactDp::default().solve(&c.graph, &c.cluster);
        match (brute, exact) {
            (None, Err(PartitionError::Infeasible(_))) => {}
            (Some((best, _)), Ok((plan, stats))) => {
                consistent(&c, &plan);
                prop_assert!((plan.objective - best).abs() <= 1e-9 * best.max(1.0),
                    "DP {} vs brute force {}", plan.objective, best);
                prop_assert!((stats.dp_objective - plan.objective).abs() <= 1e-9 * best.max(1.0));
                // the prefixes of one order may admit no feasible split
                if let Ok((lin, _)) = LinearDp.solve(&c.graph, &c.cluster) {
                    consistent(&c, &lin);
                    prop_assert!(lin.objective >= best - 1e-9);
                }
                if let Ok((g, _)) = Greedy.solve(&c.graph, &c.cluster) {
                    consistent(&c, &g);
                }
            }
            (b, e) => prop_assert!(false, "brute force {b:?} but DP {e:?}"),
        }
    }
}

/// The exact DP equals brute force on `c` (infeasible exactly when brute
/// force finds nothing), reports its DP objective, and the linearized DP
/// is never better.
fn exact_dp_equals_brute_force_on(c: &Case) -> Result<(), TestCaseError> {
    let brute = brute::best_contiguous(&c.graph, &c.cluster).unwrap();
    let exact = ExactDp::default().solve(&c.graph, &c.cluster);
    match (brute, exact) {
        (None, Err(PartitionError::Infeasible(_))) => {}
        (Some((best, _)), Ok((plan, stats))) => {
            consistent(c, &plan);
            prop_assert!(
                (plan.objective - best).abs() <= 1e-9 * best.max(1.0),
                "DP {} vs brute force {} ({} satellites)",
                plan.objective,
                best,
                stats.satellites
            );
            prop_assert!((stats.dp_objective - plan.objective).abs() <= 1e-9 * best.max(1.0));
            if let Ok((lin, _)) = LinearDp.solve(&c.graph, &c.cluster) {
                consistent(c, &lin);
                prop_assert!(lin.objective >= best - 1e-9);
            }
        }
        (b, e) => prop_assert!(false, "brute force {b:?} but DP {e:?}"),
    }
    Ok(())
}

/// The contiguous IP reaches the DP's optimum; the non-contiguous IP is
/// never worse; both report the evaluator's objective of their split; the
/// same with a two-level interconnect against brute force.
fn integer_programs_agree_with_the_dp(
    c: &Case,
    per_node: usize,
    solver: IpSolver,
) -> Result<(), TestCaseError> {
    let c = c.clone();
    let exact = ExactDp::default().solve(&c.graph, &c.cluster);
    let ip = IntegerProgram::contiguous()
        .with_solver(solver)
        .solve(&c.graph, &c.cluster);
    let free = IntegerProgram::non_contiguous()
        .with_solver(solver)
        .solve(&c.graph, &c.cluster);
    match (exact, ip) {
        (Ok((dp, _)), Ok((plan, stats))) => {
            consistent(&c, &plan);
            let tol = 1e-6 * dp.objective.max(1.0);
            prop_assert!(
                (plan.objective - dp.objective).abs() <= tol,
                "contiguous IP {} vs DP {}",
                plan.objective,
                dp.objective
            );
            prop_assert!(
                (stats.solver_objective - plan.objective).abs() <= tol,
                "the IP's own objective {} vs the evaluator's {}",
                stats.solver_objective,
                plan.objective
            );
            prop_assert!(plan.optimal && stats.gap == 0.0);
            let (fplan, fstats) = free.expect("a contiguous split exists, so some split does");
            consistent(&c, &fplan);
            prop_assert!(
                fplan.objective <= dp.objective + tol,
                "non-contiguous IP {} worse than DP {}",
                fplan.objective,
                dp.objective
            );
            prop_assert!((fstats.solver_objective - fplan.objective).abs() <= tol);
            // Any split, PipeDream's included, is no better than the
            // non-contiguous optimum.
            if let Ok((pd, _)) = PipeDream.solve(&c.graph, &c.cluster) {
                let e = evaluate(&c.graph, &c.cluster, &pd.assignment).unwrap();
                prop_assert_eq!(e.plan.objective, pd.objective);
                if e.fits() {
                    prop_assert!(pd.objective >= fplan.objective - tol);
                }
            }
        }
        (Err(PartitionError::Infeasible(_)), Err(PartitionError::Infeasible(_))) => {}
        (d, i) => prop_assert!(false, "DP {d:?} but IP {i:?}"),
    }
    // Two-level interconnect (factor 3, one or two accelerators per
    // node), in this test because Cbc must not run on two threads at
    // once (microlp could, but one helper serves both): the contiguous IP equals brute force's best contiguous
    // two-level split; the non-contiguous IP is no worse and no better
    // than the flat non-contiguous optimum; both report the evaluator's
    // two-level objective of their split.
    let mut two_level = c.cluster.clone();
    two_level.interconnect = Some(hetero_core::placement::TwoLevelInterconnect {
        accelerators_per_node: per_node,
        inter_node_cost_factor: 3.0,
    });
    let brute = brute::best_contiguous(&c.graph, &two_level).unwrap();
    let flat = IntegerProgram::non_contiguous()
        .with_solver(solver)
        .solve(&c.graph, &c.cluster);
    let contiguous = IntegerProgram::contiguous()
        .with_solver(solver)
        .solve(&c.graph, &two_level);
    match (
        IntegerProgram::non_contiguous()
            .with_solver(solver)
            .solve(&c.graph, &two_level),
        flat,
        contiguous,
    ) {
        (Ok((plan, stats)), Ok((flat, _)), contiguous) => {
            let e = evaluate(&c.graph, &two_level, &plan.assignment).unwrap();
            let tol = 1e-6 * e.plan.objective.max(1.0);
            prop_assert!(e.fits());
            prop_assert_eq!(e.plan.objective, plan.objective);
            prop_assert!(
                (stats.solver_objective - plan.objective).abs() <= tol,
                "two-level IP's own objective {} vs the evaluator's {}",
                stats.solver_objective,
                plan.objective
            );
            prop_assert!(plan.objective >= flat.objective - tol);
            match (brute, contiguous) {
                (Some((best, _)), Ok((cplan, cstats))) => {
                    prop_assert!(
                        plan.objective <= best + tol,
                        "two-level IP {} worse than brute force {}",
                        plan.objective,
                        best
                    );
                    let e = evaluate(&c.graph, &two_level, &cplan.assignment).unwrap();
                    prop_assert!(e.fits());
                    prop_assert_eq!(e.plan.objective, cplan.objective);
                    prop_assert!(
                        (cplan.objective - best).abs() <= tol,
                        "contiguous two-level IP {} vs brute force {}",
                        cplan.objective,
                        best
                    );
                    prop_assert!(
                        (cstats.solver_objective - cplan.objective).abs() <= tol,
                        "contiguous two-level IP's own objective {} vs the evaluator's {}",
                        cstats.solver_objective,
                        cplan.objective
                    );
                }
                (None, Err(PartitionError::Infeasible(_))) => {}
                (b, i) => prop_assert!(false, "brute force {b:?} but contiguous IP {i:?}"),
            }
        }
        (Err(PartitionError::Infeasible(_)), Err(PartitionError::Infeasible(_)), _) => {}
        (t, f, _) => prop_assert!(false, "two-level IP {t:?} but flat IP {f:?}"),
    }
    // The baselines place as before and score their split two-level.
    for (name, result) in [
        ("greedy", Greedy.solve(&c.graph, &two_level).map(|r| r.0)),
        (
            "pipedream",
            PipeDream.solve(&c.graph, &two_level).map(|r| r.0),
        ),
    ] {
        if let Ok(plan) = result {
            let e = evaluate(&c.graph, &two_level, &plan.assignment).unwrap();
            prop_assert_eq!(e.plan.objective, plan.objective, "{}", name);
        }
    }
    prop_assert!(matches!(
        ExactDp::default().solve(&c.graph, &two_level),
        Err(PartitionError::Unsupported(_))
    ));
    Ok(())
}

proptest! {
    // microlp's branch and bound is slower than Cbc on the larger cases;
    // keep the case count modest.
    #![proptest_config(ProptestConfig::with_cases(150))]

    /// The default solver, always built.
    #[test]
    fn integer_programs_agree_with_the_dp_microlp(c in case(), per_node in 1usize..=2) {
        integer_programs_agree_with_the_dp(&c, per_node, IpSolver::MicroLp)?;
    }
}

proptest! {
    // Cbc (Debian's 2.10.8) aborts the whole process on rare models with an
    // assertion inside Clp (`ClpSimplexDual::dualColumn0`: seen once in
    // about 15 runs of 150 random cases), which no Rust code can catch. So
    // this check of the optional solver runs a fixed set of cases; the
    // default solver's above stays random.
    #![proptest_config(ProptestConfig {
        cases: 150,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0xcbc),
        ..ProptestConfig::default()
    })]

    /// COIN-OR Cbc, with the `cbc` feature.
    #[test]
    #[cfg_attr(
        not(feature = "cbc"),
        ignore = "skipped: built without hetero-partition's `cbc` feature (needs COIN-OR Cbc: Debian coinor-libcbc-dev; `cargo xtask setup` installs it)"
    )]
    fn integer_programs_agree_with_the_dp_cbc(c in case(), per_node in 1usize..=2) {
        integer_programs_agree_with_the_dp(&c, per_node, IpSolver::Cbc)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The two-level interconnect in the evaluator and brute force: a factor
    /// of 1 changes nothing; a factor >= 1 never lowers a split's objective
    /// nor the best contiguous split's, and raises it at most by that factor;
    /// one node holding every accelerator changes nothing.
    #[test]
    fn two_level_interconnect_is_bounded_by_the_flat_model(
        c in case(),
        factor in 1.0f64..8.0,
        per_node in 1usize..=3,
    ) {
        use hetero_core::placement::TwoLevelInterconnect;
        let with = |factor: f64, per_node: usize| {
            let mut cluster = c.cluster.clone();
            cluster.interconnect = Some(TwoLevelInterconnect {
                accelerators_per_node: per_node,
                inter_node_cost_factor: factor,
            });
            cluster
        };
        let flat = brute::best_contiguous(&c.graph, &c.cluster).unwrap();
        let same = brute::best_contiguous(&c.graph, &with(1.0, per_node)).unwrap();
        let one_node = brute::best_contiguous(&c.graph, &with(factor, 64)).unwrap();
        let scaled = brute::best_contiguous(&c.graph, &with(factor, per_node)).unwrap();
        match (flat, same, one_node, scaled) {
            (None, None, None, None) => {}
            (Some((f, split)), Some((s, _)), Some((o, _)), Some((x, _))) => {
                let tol = 1e-9 * f.max(1.0) * factor;
                prop_assert!((s - f).abs() <= tol, "factor 1: {s} vs flat {f}");
                prop_assert!((o - f).abs() <= tol, "one node: {o} vs flat {f}");
                prop_assert!(x >= f - tol, "two-level {x} below flat {f}");
                prop_assert!(x <= f * factor + tol, "two-level {x} above {factor} x flat {f}");
                // the flat optimum's own split, scored two-level, bounds the two-level optimum
                let e = evaluate(&c.graph, &with(factor, per_node), &split).unwrap();
                prop_assert!(x <= e.plan.objective + tol);
                prop_assert!(e.plan.objective >= f - tol);
            }
            other => prop_assert!(false, "feasibility differs: {other:?}"),
        }
    }
}

/// Random DAGs where memory binds, with nodes that take no time but hold
/// memory (the satellites of the exact DP when they dangle from one unit;
/// colour classes make satellites of several nodes and feeders), up to
/// three CPUs, and one or two accelerators (plus a faster one).
fn binding_case() -> impl Strategy<Value = Case> {
    (1usize..=6)
        .prop_flat_map(|n| {
            let nodes = proptest::collection::vec(
                (
                    0u32..20,                              // cpu time
                    1u32..10,                              // accelerator time
                    prop::bool::weighted(0.45),            // takes no time at all
                    0u64..6,                               // memory
                    prop::bool::weighted(0.9),             // runs on an accelerator
                    0u32..4,                               // out cost
                    prop::option::weighted(0.25, 0u64..2), // colour class
                ),
                n,
            );
            let edges = proptest::collection::vec(prop::bool::weighted(0.4), n * (n - 1) / 2);
            let cluster = (1usize..=2, 1u64..=10, prop::bool::ANY, 0usize..=3);
            (nodes, edges, cluster)
        })
        .prop_map(|(nodes, edges, (k, mem, hetero, cpus))| {
            let n = nodes.len();
            let graph_nodes: Vec<Node> = nodes
                .iter()
                .enumerate()
                .map(|(i, &(c, a, zero, m, ok, _, color))| Node {
                    id: i as u64,
                    name: None,
                    cpu_time: if zero { 0.0 } else { f64::from(c) },
                    accelerator_time: if zero { 0.0 } else { f64::from(a) / 2.0 },
                    memory_bytes: m,
                    accelerator_ok: ok,
                    color_class: color,
                    backward: false,
                })
                .collect();
            let mut graph_edges = Vec::new();
            let mut e = 0;
            #[allow(clippy::needless_range_loop)] // i indexes nodes and numbers edges
            for i in 0..n {
                for j in i + 1..n {
                    if edges[e] {
                        graph_edges.push(Edge {
                            src: i,
                            dst: j,
                            transfer_time: f64::from(nodes[i].5) / 4.0,
                            bytes: None,
                        });
                    }
                    e += 1;
                }
            }
            let mut accelerators = vec![AcceleratorClass {
                name: "a".into(),
                count: k,
                memory_bytes: mem,
                speed_factor: 1.0,
            }];
            if hetero {
                accelerators.push(AcceleratorClass {
                    name: "b".into(),
                    count: 1,
                    memory_bytes: mem / 2 + 1,
                    speed_factor: 2.0,
                });
            }
            Case {
                graph: Graph {
                    nodes: graph_nodes,
                    edges: graph_edges,
                },
                cluster: Cluster {
                    accelerators,
                    cpus,
                    interconnect: None,
                },
            }
        })
}

/// `binding_case` with chains forced in: the first `a` nodes and the last
/// `n - b` nodes are paths, the prefix's last node feeds every node of the
/// middle and every node of the middle feeds the suffix's first (so the
/// prefix and the suffix are runs of units comparable to all, as a CNN's
/// stem and head, which the contiguous IP's segment rows are for); random
/// skip edges stay.
fn chained_case() -> impl Strategy<Value = Case> {
    (binding_case(), 0usize..=6, 0usize..=6).prop_map(|(mut c, a, b)| {
        let n = c.graph.nodes.len();
        let a = a.min(n);
        let b = b.clamp(a, n);
        let mut extra = Vec::new();
        for i in 0..n.saturating_sub(1) {
            if i + 1 < a || i >= b {
                extra.push((i, i + 1));
            }
        }
        if a > 0 && b < n {
            for m in a..b {
                extra.push((a - 1, m));
                extra.push((m, b));
            }
            if a == b {
                extra.push((a - 1, b));
            }
        }
        for (i, j) in extra {
            if c.graph.edges.iter().any(|e| e.src == i && e.dst == j) {
                continue;
            }
            // all out-edges of a node carry one cost
            let cost = c
                .graph
                .edges
                .iter()
                .find(|e| e.src == i)
                .map_or(0.5, |e| e.transfer_time);
            c.graph.edges.push(Edge {
                src: i,
                dst: j,
                transfer_time: cost,
                bytes: None,
            });
        }
        c
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    /// Several CPUs and binding memory: the exact DP (with its satellites
    /// priced per set, or its fallback to every unit) equals brute force.
    #[test]
    fn exact_dp_equals_brute_force_with_cpus_and_binding_memory(c in binding_case()) {
        exact_dp_equals_brute_force_on(&c)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    /// Graphs with a stem (the DP's viable cells count what the stem's
    /// closed segments leave unused): the exact DP equals brute force.
    #[test]
    fn exact_dp_equals_brute_force_on_stems_and_heads(c in chained_case()) {
        exact_dp_equals_brute_force_on(&c)?;
    }
}

/// The contiguous IP on random DAGs with several CPUs and binding memory
/// (issue 21: the strengthened model, its symmetry breaking among empty
/// positions, the per-kind capacity rows and the upper bound): it equals
/// brute force, with the linearized DP's bound and start alone and with
/// brute force's optimum and split as bound and start (the tightest bound
/// that is still right; Cbc then only proves), and a bound just below the
/// optimum makes it infeasible.
fn contiguous_ip_equals_brute_force(c: &Case, solver: IpSolver) -> Result<(), TestCaseError> {
    let brute = brute::best_contiguous(&c.graph, &c.cluster).unwrap();
    let ip = IntegerProgram::contiguous()
        .with_solver(solver)
        .solve(&c.graph, &c.cluster);
    match (brute, ip) {
        (None, Err(PartitionError::Infeasible(_))) => {}
        (Some((best, split)), Ok((plan, stats))) => {
            consistent(c, &plan);
            let tol = 1e-6 * best.max(1.0);
            prop_assert!(
                (plan.objective - best).abs() <= tol,
                "contiguous IP {} vs brute force {}",
                plan.objective,
                best
            );
            prop_assert!((stats.solver_objective - plan.objective).abs() <= tol);
            prop_assert!(plan.optimal && stats.gap == 0.0);
            let (tight, _) = IntegerProgram::contiguous()
                .with_solver(solver)
                .with_upper_bound(best)
                .with_start(split)
                .solve(&c.graph, &c.cluster)
                .map_err(|e| TestCaseError::fail(format!("with the optimum as bound: {e}")))?;
            consistent(c, &tight);
            prop_assert!((tight.objective - best).abs() <= tol);
            if best > 0.1 {
                let below = IntegerProgram::contiguous()
                    .with_solver(solver)
                    .with_upper_bound(best - 0.1)
                    .solve(&c.graph, &c.cluster);
                // Never a split; microlp sometimes reports the infeasible
                // model as numerical trouble ("Singular matrix", a typed
                // Unsupported) instead of Infeasible.
                let refused = match &below {
                    Err(PartitionError::Infeasible(_)) => true,
                    Err(PartitionError::Unsupported(_)) => solver == IpSolver::MicroLp,
                    _ => false,
                };
                prop_assert!(refused, "a bound below the optimum {best}: {below:?}");
            }
        }
        (b, i) => prop_assert!(false, "brute force {b:?} but contiguous IP {i:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    /// The default solver, always built.
    #[test]
    fn contiguous_ip_equals_brute_force_with_cpus_and_binding_memory_microlp(c in binding_case()) {
        contiguous_ip_equals_brute_force(&c, IpSolver::MicroLp)?;
    }
}

proptest! {
    // A fixed set of cases for Cbc, as above (its rare Clp abort).
    #![proptest_config(ProptestConfig {
        cases: 150,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x21),
        ..ProptestConfig::default()
    })]

    /// COIN-OR Cbc, with the `cbc` feature.
    #[test]
    #[cfg_attr(
        not(feature = "cbc"),
        ignore = "skipped: built without hetero-partition's `cbc` feature (needs COIN-OR Cbc: Debian coinor-libcbc-dev; `cargo xtask setup` installs it)"
    )]
    fn contiguous_ip_equals_brute_force_with_cpus_and_binding_memory_cbc(c in binding_case()) {
        contiguous_ip_equals_brute_force(&c, IpSolver::Cbc)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    /// Graphs with a stem and a head (runs of units comparable to all):
    /// the contiguous IP with its segment rows equals brute force, with the
    /// optimum as bound, and a bound below the optimum leaves no split.
    #[test]
    fn contiguous_ip_equals_brute_force_on_stems_and_heads_microlp(c in chained_case()) {
        contiguous_ip_equals_brute_force(&c, IpSolver::MicroLp)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 150,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x22),
        ..ProptestConfig::default()
    })]

    /// As above, with COIN-OR Cbc (the `cbc` feature).
    #[test]
    #[cfg_attr(
        not(feature = "cbc"),
        ignore = "skipped: built without hetero-partition's `cbc` feature (needs COIN-OR Cbc: Debian coinor-libcbc-dev; `cargo xtask setup` installs it)"
    )]
    fn contiguous_ip_equals_brute_force_on_stems_and_heads_cbc(c in chained_case()) {
        contiguous_ip_equals_brute_force(&c, IpSolver::Cbc)?;
    }
}
