//! hetero-place as a user runs it: the paper's JSON on stdout, a typed error
//! and a non-zero exit for bad input or a solver that cannot model the
//! cluster, and the two-level interconnect through the IP.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory for this test process.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hetero-place-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A chain of four nodes whose transfers matter: 0 -> 1 -> 2 -> 3, each
/// 1.0 on an accelerator, every edge costing 0.25.
const CHAIN: &str = r#"{"maxFPGAs": 4, "maxCPUs": 0, "maxSizePerFPGA": 100.0,
  "nodes": [
    {"id": 0, "supportedOnFpga": 1, "cpuLatency": 5.0, "fpgaLatency": 1.0, "isBackwardNode": 0, "size": 1.0},
    {"id": 1, "supportedOnFpga": 1, "cpuLatency": 5.0, "fpgaLatency": 1.0, "isBackwardNode": 0, "size": 1.0},
    {"id": 2, "supportedOnFpga": 1, "cpuLatency": 5.0, "fpgaLatency": 1.0, "isBackwardNode": 0, "size": 1.0},
    {"id": 3, "supportedOnFpga": 1, "cpuLatency": 5.0, "fpgaLatency": 1.0, "isBackwardNode": 0, "size": 1.0}],
  "edges": [
    {"sourceId": 0, "destId": 1, "cost": 0.25},
    {"sourceId": 1, "destId": 2, "cost": 0.25},
    {"sourceId": 2, "destId": 3, "cost": 0.25}]}"#;

/// Two nodes of two accelerators; a transfer between nodes costs 8x.
const TWO_NODES: &str = r#"{"accelerators": [{"name": "gpu", "count": 4,
  "memory_bytes": 100, "speed_factor": 1.0}], "cpus": 0,
  "interconnect": {"accelerators_per_node": 2, "inter_node_cost_factor": 8.0}}"#;

fn place(dir: &Path, graph: &str, extra: &[&str]) -> Output {
    let path = dir.join("graph.json");
    std::fs::write(&path, graph).expect("write graph");
    Command::new(env!("CARGO_BIN_EXE_hetero-place"))
        .arg("--graph")
        .arg(&path)
        .args(extra)
        .output()
        .expect("runs")
}

fn max_load(out: &Output) -> f64 {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    v["maxLoad"].as_f64().expect("maxLoad")
}

#[test]
fn flat_cluster_places_with_every_algorithm() {
    let dir = scratch("flat");
    // 4 accelerators: one node each, 1.0 + in 0.25 + out 0.25 in the middle
    for algo in [
        "dp",
        "dp-linear",
        "greedy",
        "pipedream",
        "ip",
        "ip-noncontig",
    ] {
        let load = max_load(&place(&dir, CHAIN, &["--algo", algo]));
        assert!((load - 1.5).abs() < 1e-9, "{algo}: {load}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn two_level_interconnect_through_the_ip_and_refused_by_the_dp() {
    let dir = scratch("two-level");
    let cluster = dir.join("cluster.json");
    std::fs::write(&cluster, TWO_NODES).expect("write cluster");
    let cluster = cluster.to_str().expect("utf-8 path");
    let out = place(&dir, CHAIN, &["--cluster", cluster, "--algo", "dp"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--ignore-interconnect"), "{stderr}");
    // The split 0 | 1 | 2 | 3 would pay 8 x 0.25 at the cut between the
    // nodes (1.0 + 0.25 + 2.0 = 3.25 on accelerator 1); two nodes per
    // accelerator inside one node cost 2.0 + 0.25 = 2.25 at most.
    let load = max_load(&place(&dir, CHAIN, &["--cluster", cluster, "--algo", "ip"]));
    assert!((load - 2.25).abs() < 1e-9, "contiguous IP: {load}");
    let free = max_load(&place(
        &dir,
        CHAIN,
        &["--cluster", cluster, "--algo", "ip-noncontig"],
    ));
    assert!(free <= load + 1e-9, "non-contiguous IP {free} above {load}");
    let ignored = max_load(&place(
        &dir,
        CHAIN,
        &[
            "--cluster",
            cluster,
            "--algo",
            "dp",
            "--ignore-interconnect",
        ],
    ));
    assert!((ignored - 1.5).abs() < 1e-9, "{ignored}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_exits_non_zero_with_the_reason() {
    let dir = scratch("bad");
    let cycle = CHAIN.replace(
        r#"{"sourceId": 2, "destId": 3, "cost": 0.25}"#,
        r#"{"sourceId": 2, "destId": 3, "cost": 0.25}, {"sourceId": 3, "destId": 0, "cost": 0.25}"#,
    );
    for (graph, says) in [
        ("{\"maxFPGAs\": 2,", "graph"),
        (cycle.as_str(), "cycle"),
        (
            &CHAIN.replace("\"destId\": 3", "\"destId\": 9") as &str,
            "9",
        ),
    ] {
        let out = place(&dir, graph, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(says), "expected {says:?} in: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `--solver cbc` places like the default solver in a build with the `cbc`
/// feature, and without it exits 1 naming the feature and the package.
#[test]
fn cbc_solver_places_or_says_how_to_get_it() {
    let dir = scratch("cbc");
    for algo in ["ip", "ip-noncontig"] {
        let out = place(&dir, CHAIN, &["--algo", algo, "--solver", "cbc"]);
        if cfg!(feature = "cbc") {
            let load = max_load(&out);
            assert!((load - 1.5).abs() < 1e-9, "{algo} with cbc: {load}");
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert!(
                stderr.contains("`cbc` feature") && stderr.contains("coinor-libcbc-dev"),
                "{stderr}"
            );
        }
    }
    // MPS export is Cbc's; the default solver refuses it with the reason.
    let out = place(
        &dir,
        CHAIN,
        &[
            "--algo",
            "ip",
            "--write-mps",
            dir.join("m.mps").to_str().expect("utf-8"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--solver cbc"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_ideal_limit_is_a_flag_and_its_error_names_it() {
    let dir = scratch("ideal-limit");
    // Four chained units have five ideals.
    let out = place(&dir, CHAIN, &["--ideal-limit", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--ideal-limit") && stderr.contains("more than 2 ideals"),
        "{stderr}"
    );
    let ok = place(&dir, CHAIN, &["--ideal-limit", "5"]);
    assert!(max_load(&ok) > 0.0);
}

/// Issue 21: the shipped GNMT graph on accelerators of 629,145,600 bytes,
/// where memory binds and the zero-time nodes that hold memory are not
/// merged away. The exact DP prices them per set, says what the
/// enumeration will take before it starts, and beats the linearized DP.
#[test]
fn gnmt_with_binding_memory_is_placed_exactly_with_a_memory_estimate() {
    let graph = Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../../shared/data/dnn-partitioning/throughput-inputs/LayerGraphs/gnmt_inference.json",
    );
    if !graph.exists() {
        eprintln!("skipped: {} is not here", graph.display());
        return;
    }
    let run = |algo: &str| {
        Command::new(env!("CARGO_BIN_EXE_hetero-place"))
            .arg("--graph")
            .arg(&graph)
            .args(["--memory", "629145600", "--algo", algo])
            .output()
            .expect("runs")
    };
    let out = run("dp");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bytes per ideal") && stderr.contains("--ideal-limit"),
        "{stderr}"
    );
    assert!(
        stderr.contains("16 zero-time units holding memory priced per set"),
        "{stderr}"
    );
    let exact = max_load(&out);
    let linear = max_load(&run("dp-linear"));
    // the contiguous IP (Cbc) proves 32.910658 optimal (partition/README.md)
    assert!((exact - 32.910658).abs() < 1e-6, "{exact}");
    assert!(exact < linear, "{exact} vs {linear}");
}
