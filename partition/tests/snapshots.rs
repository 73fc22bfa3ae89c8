//! Snapshots of the exact DP's placements of the small layer graphs, in the
//! paper's output format (node ids per device, loads).
#![allow(clippy::unwrap_used)] // test helpers may unwrap

use hetero_partition::{ExactDp, PaperGraph, PaperSplit};

fn placement(name: &str) -> PaperSplit {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/dnn-partitioning/throughput-inputs/LayerGraphs"
    );
    let pg =
        PaperGraph::from_path(&std::path::Path::new(path).join(format!("{name}.json"))).unwrap();
    let (plan, _) = ExactDp::default().solve(&pg.graph, &pg.cluster()).unwrap();
    let mut split = PaperSplit::from_plan(&pg.graph, &plan);
    // loads rounded so that the last bits of float sums do not churn the snapshot
    let round = |x: f64| (x * 1e6).round() / 1e6;
    split.max_load = round(split.max_load);
    for d in split.fpgas.iter_mut().chain(split.cpus.iter_mut()) {
        d.load = round(d.load);
    }
    split
}

#[test]
fn bert24_inference_placement() {
    insta::assert_json_snapshot!(placement("bert24_inference"));
}

#[test]
fn bert24_training_placement() {
    insta::assert_json_snapshot!(placement("bert24_training"));
}

#[test]
fn resnet50_inference_placement() {
    insta::assert_json_snapshot!(placement("resnet50_inference"));
}
