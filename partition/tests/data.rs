//! The paper's shipped graphs: the exact DP reaches the reference objectives,
//! expert splits score to the reference values, and every solver's objective
//! is the evaluator's on its own split.
#![allow(clippy::unwrap_used)] // test helpers may unwrap

use std::path::PathBuf;

use hetero_core::placement::Cluster;
use hetero_partition::{ExactDp, LinearDp, PaperGraph, PaperSplit, evaluate};

fn data() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/dnn-partitioning"
    ))
}

fn graph(name: &str) -> PaperGraph {
    let path = data()
        .join("throughput-inputs")
        .join(format!("{name}.json"));
    PaperGraph::from_path(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    ((a - b) / b).abs() <= rel
}

/// The exact DP's objective, checked against the evaluator on its own split.
fn exact(pg: &PaperGraph, cluster: &Cluster) -> f64 {
    let (plan, stats) = ExactDp::default().solve(&pg.graph, cluster).unwrap();
    let again = evaluate(&pg.graph, cluster, &plan.assignment).unwrap();
    assert!(again.fits());
    assert_eq!(again.plan.objective, plan.objective);
    assert!(
        close(stats.dp_objective, plan.objective, 1e-9),
        "DP value {} vs evaluator {}",
        stats.dp_objective,
        plan.objective
    );
    plan.objective
}

// Reference values from the data README (rounded to 6 significant digits
// there, hence the 1e-5 relative tolerance on the printed value).
const REFERENCE: &[(&str, f64)] = &[
    ("LayerGraphs/bert24_inference", 17.7899),
    ("LayerGraphs/bert24_training", 41.7458),
    ("LayerGraphs/gnmt_inference", 32.9107),
    ("LayerGraphs/gnmt_training", 107.004),
    ("LayerGraphs/resnet50_inference", 33.7747),
    ("LayerGraphs/resnet50_training", 78.6318),
    ("OperatorGraphs/bert_l-3_inference", 27.9186),
    ("OperatorGraphs/bert_l-3_training", 65.3031),
    ("OperatorGraphs/bert_l-6_inference", 29.5795),
    ("OperatorGraphs/bert_l-6_training", 72.865),
    ("OperatorGraphs/bert_l-12_inference", 147.478),
    ("OperatorGraphs/bert_L-12_training", 437.998),
    ("OperatorGraphs/resnet50_inference", 124.349),
    ("OperatorGraphs/resnet50_training", 255.194),
];

#[test]
fn exact_dp_matches_the_reference_on_all_fourteen_graphs() {
    for &(name, reference) in REFERENCE {
        let pg = graph(name);
        let got = exact(&pg, &pg.cluster());
        // The README prints 6 significant digits: half a unit of the last.
        let digits = reference.abs().log10().floor() as i32 + 1;
        let half_ulp = 0.5 * 10f64.powi(digits - 6);
        assert!(
            (got - reference).abs() <= half_ulp + 1e-12,
            "{name}: exact DP {got}, reference {reference}"
        );
    }
}

#[test]
fn linearized_dp_is_consistent_and_no_better_than_exact() {
    for &(name, reference) in REFERENCE {
        let pg = graph(name);
        let cluster = pg.cluster();
        let (plan, stats) = LinearDp.solve(&pg.graph, &cluster).unwrap();
        assert_eq!(stats.ideals, stats.units + 1);
        let again = evaluate(&pg.graph, &cluster, &plan.assignment).unwrap();
        assert_eq!(again.plan.objective, plan.objective);
        assert!(close(stats.dp_objective, plan.objective, 1e-9), "{name}");
        assert!(plan.objective >= reference * (1.0 - 1e-5), "{name}");
    }
}

#[test]
fn sweeps_over_the_number_of_accelerators() {
    let sweeps: &[(&str, &[(usize, f64)])] = &[
        (
            "OperatorGraphs/bert_l-3_inference",
            &[(1, 49.3525), (2, 29.3798), (3, 27.9186), (5, 27.9186)],
        ),
        (
            "LayerGraphs/resnet50_inference",
            &[
                (1, 376.75),
                (2, 96.3156),
                (3, 65.4044),
                (4, 49.9654),
                (6, 33.7747),
                (8, 26.2985),
            ],
        ),
        (
            "LayerGraphs/bert24_training",
            &[
                (1, 200.27),
                (2, 107.903),
                (3, 74.4519),
                (4, 57.7769),
                (6, 41.7458),
                (8, 33.3788),
            ],
        ),
    ];
    for &(name, points) in sweeps {
        let pg = graph(name);
        for &(k, reference) in points {
            let cluster = Cluster::homogeneous(k, pg.memory_per_accelerator, pg.cpus);
            let got = exact(&pg, &cluster);
            assert!(
                close(got, reference, 1e-5),
                "{name} k={k}: {got} vs {reference}"
            );
        }
    }
}

#[test]
fn expert_splits_score_to_the_reference_values() {
    let cases = [
        ("bert24_inference", "bert24_inference", 20.084),
        ("bert24_training", "bert24_training", 49.4049),
        ("gnmt_inference", "gnmt_inference", 46.2085),
        ("gnmt_training", "gnmt_training", 137.154),
        ("inceptionv3_inference", "inceptionv3_inference", 102.482),
        ("inceptionv3_training", "inceptionv3_inference", 213.654),
        ("resnet50_inference", "resnet50_inference", 43.9183),
        ("resnet50_training", "resnet50_inference", 112.108),
    ];
    for (g, split, reference) in cases {
        let pg = graph(&format!("LayerGraphs/{g}"));
        let path = data()
            .join("human-experts")
            .join(format!("{split}_expert.json"));
        let split = PaperSplit::from_path(&path).unwrap();
        let assignment = split.complete_assignment(&pg.graph).unwrap();
        let cluster = Cluster::homogeneous(split.fpgas.len(), pg.memory_per_accelerator, 1);
        let e = evaluate(&pg.graph, &cluster, &assignment).unwrap();
        assert!(
            close(e.plan.objective, reference, 1e-5),
            "{g}: expert split scores {}, reference {reference}",
            e.plan.objective
        );
    }
}

#[test]
fn paper_output_round_trips() {
    let pg = graph("LayerGraphs/bert24_inference");
    let cluster = pg.cluster();
    let (plan, _) = ExactDp::default().solve(&pg.graph, &cluster).unwrap();
    let out = PaperSplit::from_plan(&pg.graph, &plan);
    let text = serde_json::to_string(&out).unwrap();
    let back = PaperSplit::from_json_str(&text).unwrap();
    let assignment = back.complete_assignment(&pg.graph).unwrap();
    let e = evaluate(&pg.graph, &cluster, &assignment).unwrap();
    assert_eq!(e.plan.objective, plan.objective);
    // and the graph itself round-trips through the paper's format
    let again = PaperGraph::from_json_str(&pg.to_json().to_string()).unwrap();
    assert_eq!(again, pg);
}

#[test]
fn threads_do_not_change_the_result() {
    let pg = graph("OperatorGraphs/bert_l-3_training");
    let cluster = pg.cluster();
    let one = ExactDp {
        threads: 1,
        ..ExactDp::default()
    };
    let three = ExactDp {
        threads: 3,
        ..ExactDp::default()
    };
    let (a, sa) = one.solve(&pg.graph, &cluster).unwrap();
    let (b, sb) = three.solve(&pg.graph, &cluster).unwrap();
    assert_eq!(a, b);
    assert_eq!(sa.pairs, sb.pairs);
}
