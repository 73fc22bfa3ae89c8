//! hetero-autosync as a user runs it: a small search end to end with JSON
//! output, and clear errors with a non-zero exit on bad input.

use std::process::Command;

fn autosync() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hetero-autosync"))
}

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("hetero-autosync-{}-{name}", std::process::id()))
}

#[test]
fn a_small_search_prints_a_json_report() {
    let model = temp("model.json");
    std::fs::write(
        &model,
        r#"{"name": "small", "variables": [
            {"name": "emb", "shape": [50, 4], "sparse": {"rows_touched": 6}},
            {"name": "w", "shape": [16, 8]},
            {"name": "b", "shape": [16]}
        ]}"#,
    )
    .expect("write model");
    let out = autosync()
        .args(["--model", model.to_str().expect("utf-8 path")])
        .args(["--nodes", "2", "--ranks-per-node", "2", "--trials", "4"])
        .args([
            "--per-round",
            "2",
            "--candidates",
            "20",
            "--steps",
            "1",
            "--json",
        ])
        .output()
        .expect("runs");
    let _ = std::fs::remove_file(&model);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["trials"].as_array().map(Vec::len), Some(4));
    assert_eq!(report["baselines"].as_array().map(Vec::len), Some(3));
    assert_eq!(report["best_verified"], true);
    let speedup = report["speedup_over_best_baseline"]
        .as_f64()
        .expect("number");
    assert!(
        speedup >= 1.0,
        "the best is never slower than the best baseline: {speedup}"
    );
    assert!(stderr.contains("trial 4/4"), "progress on stderr: {stderr}");
}

#[test]
fn bad_input_is_a_clear_error_and_a_failure_exit() {
    for (args, needle) in [
        (vec!["--model", "no-such-model"], "neither a preset"),
        (vec!["--model", "ncf", "--scale", "3"], "not in (0, 1]"),
        (vec!["--model", "ncf", "--scale", "x"], "not a number"),
        (
            vec!["--model", "ncf", "--cluster", "/no/such/cluster.json"],
            "cluster file",
        ),
        (vec!["--model", "ncf", "--nodes", "0"], "at least 1"),
        (
            vec!["--model", "ncf", "--trials", "0", "--scale", "0.001"],
            "at least 1",
        ),
    ] {
        let out = autosync().args(&args).output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr:?} lacks {needle:?}"
        );
    }
}
