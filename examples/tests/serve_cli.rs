//! hetero-serve as CI runs it: the tiny model on every device found (the
//! host, plus lavapipe and llvmpipe where Mesa is installed), one fixed
//! batch per policy and continuous batching, JSON checked.

use std::process::Command;

fn serve(extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_hetero-serve"))
        .args([
            "--model",
            "tiny",
            "--batch",
            "4",
            "--prompt-len",
            "2",
            "--gen-len",
            "4",
            "--json",
        ])
        .args(extra)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn every_policy_decodes_on_every_device_found() {
    let v = serve(&[]);
    let runs = v["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 3);
    for r in runs {
        assert!(r["error"].is_null(), "{r}");
        let batches: usize = r["report"]["batches"]
            .as_array()
            .expect("batches")
            .iter()
            .filter_map(serde_json::Value::as_u64)
            .sum::<u64>() as usize;
        assert_eq!(batches, 4, "{r}");
        assert!(r["report"]["tokens_per_s"].as_f64().expect("number") > 0.0);
    }
}

#[test]
fn continuous_batching_serves_every_request() {
    let v = serve(&["--requests", "9"]);
    for r in v["runs"].as_array().expect("runs") {
        assert!(r["error"].is_null(), "{r}");
        let outputs = r["report"]["outputs"].as_array().expect("outputs");
        assert_eq!(outputs.len(), 9, "{r}");
        for o in outputs {
            assert!(!o["tokens"].as_array().expect("tokens").is_empty());
        }
        assert!(
            r["report"]["rejected"]
                .as_array()
                .expect("rejected")
                .is_empty()
        );
    }
}

#[test]
fn a_bad_policy_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_hetero-serve"))
        .args(["--model", "tiny", "--device", "host", "--policy", "fastest"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fastest"), "{stderr}");
}
