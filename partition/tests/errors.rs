//! Bad input gives a clear, typed error, never a panic.

use hetero_core::placement::Cluster;
use hetero_partition::{ExactDp, PaperGraph, PartitionError};

fn read(text: &str) -> Result<PaperGraph, PartitionError> {
    PaperGraph::from_json_str(text)
}

const NODE: &str = r#""supportedOnFpga": 1, "cpuLatency": 1.0, "fpgaLatency": 0.5, "isBackwardNode": 0, "size": 10.0"#;

fn graph(nodes: &[i64], edges: &[(i64, i64, f64)]) -> String {
    let nodes: Vec<String> = nodes
        .iter()
        .map(|id| format!(r#"{{"id": {id}, {NODE}}}"#))
        .collect();
    let edges: Vec<String> = edges
        .iter()
        .map(|(s, d, c)| format!(r#"{{"sourceId": {s}, "destId": {d}, "cost": {c}}}"#))
        .collect();
    format!(
        r#"{{"maxFPGAs": 2, "maxCPUs": 0, "maxSizePerFPGA": 15.0, "nodes": [{}], "edges": [{}]}}"#,
        nodes.join(","),
        edges.join(",")
    )
}

#[test]
fn malformed_json_is_reported() {
    let e = read("{\"maxFPGAs\": 2,").unwrap_err();
    assert!(matches!(e, PartitionError::Malformed { .. }), "{e}");
    let e = read(r#"{"maxFPGAs": 2, "maxCPUs": 1, "nodes": [], "edges": []}"#).unwrap_err();
    assert!(e.to_string().contains("maxSizePerFPGA"), "{e}");
    let e = read(&graph(&[1], &[]).replace("\"supportedOnFpga\": 1", "\"supportedOnFpga\": 7"))
        .unwrap_err();
    assert!(e.to_string().contains("supportedOnFpga"), "{e}");
    let e =
        read(&graph(&[1], &[]).replace("\"cpuLatency\": 1.0", "\"cpuLatency\": -1.0")).unwrap_err();
    assert!(matches!(e, PartitionError::BadNumber { .. }), "{e}");
}

#[test]
fn sparse_ids_and_boolean_flags_are_read() {
    let text = graph(&[7, 1000], &[(7, 1000, 0.25)])
        .replace("\"isBackwardNode\": 0", "\"isBackwardNode\": false");
    let pg = read(&text).expect("valid graph");
    assert_eq!(pg.graph.nodes[1].id, 1000);
    assert_eq!(pg.graph.edges[0].dst, 1);
    assert_eq!(pg.memory_per_accelerator, 15);
}

#[test]
fn cycle_is_reported() {
    let e = read(&graph(&[1, 2, 3], &[(1, 2, 0.1), (2, 3, 0.1), (3, 1, 0.1)])).unwrap_err();
    assert!(matches!(e, PartitionError::Cycle(_)), "{e}");
    assert!(e.to_string().contains("cycle"), "{e}");
}

#[test]
fn unknown_node_in_edge_is_reported() {
    let e = read(&graph(&[1, 2], &[(1, 5, 0.1)])).unwrap_err();
    assert!(
        matches!(e, PartitionError::UnknownNode { missing: 5, .. }),
        "{e}"
    );
}

#[test]
fn duplicate_id_is_reported() {
    let e = read(&graph(&[1, 1], &[])).unwrap_err();
    assert!(matches!(e, PartitionError::DuplicateNode(1)), "{e}");
}

#[test]
fn different_out_edge_costs_are_reported() {
    let e = read(&graph(&[1, 2, 3], &[(1, 2, 0.1), (1, 3, 0.2)])).unwrap_err();
    assert!(
        matches!(e, PartitionError::UnequalOutEdgeCosts { node: 1, .. }),
        "{e}"
    );
}

#[test]
fn graph_that_cannot_fit_is_reported() {
    // two nodes of 10 bytes in one colour class, accelerators of 15 bytes, no CPU
    let text = graph(&[1, 2], &[(1, 2, 0.1)])
        .replace("\"size\": 10.0", "\"size\": 10.0, \"colorClass\": 4");
    let pg = read(&text).expect("valid graph");
    let e = ExactDp::default()
        .solve(&pg.graph, &pg.cluster())
        .unwrap_err();
    assert!(matches!(e, PartitionError::Infeasible(_)), "{e}");
    assert!(e.to_string().contains("no CPU"), "{e}");
    // three 10-byte nodes, two accelerators of 15 bytes: no split at all
    let pg = read(&graph(&[1, 2, 3], &[(1, 2, 0.1), (2, 3, 0.1)])).expect("valid graph");
    let e = ExactDp::default()
        .solve(&pg.graph, &pg.cluster())
        .unwrap_err();
    assert!(matches!(e, PartitionError::Infeasible(_)), "{e}");
    // with a CPU it fits
    let cluster = Cluster::homogeneous(2, 15, 1);
    assert!(ExactDp::default().solve(&pg.graph, &cluster).is_ok());
    // and the error converts into hetero_core's
    let core: hetero_core::Error = e.into();
    assert!(core.to_string().contains("no contiguous split"), "{core}");
}
