//! hetero-serve and hetero-batch-plan on a real checkpoint: the tiny Llama
//! fixture of hetero-models (no tokenizer, so the prompts are token ids)
//! on two host devices of different threads and budgets; SmolLM2-135M
//! when `HETERO_TEST_GGUF` names it.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures/llama")
        .join(name)
}

/// A prompts file of token ids in a fresh temporary folder.
fn id_prompts(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "hetero-serve-checkpoint-{tag}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("prompts.txt");
    std::fs::write(&file, "60\n1 2 3 4 5\n17 99 4\n\n100 101 102 103 104 105\n")
        .expect("write prompts");
    file
}

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().expect("runs")
}

fn json_of(out: &Output) -> serde_json::Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn serve_decodes_the_same_tokens_with_every_policy() {
    let model = fixture("tiny_llama.gguf");
    let prompts = id_prompts("serve");
    let out = run(
        env!("CARGO_BIN_EXE_hetero-serve"),
        &[
            "--model",
            model.to_str().expect("utf-8"),
            "--prompts",
            prompts.to_str().expect("utf-8"),
            "--device",
            "host:threads=1,memory=64MiB",
            "--device",
            "host:threads=2,memory=64MiB",
            "--batch",
            "5",
            "--gen-len",
            "4",
            "--json",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let v = json_of(&out);
    assert!(
        stderr.contains("loaded") && stderr.contains("llama"),
        "{stderr}"
    );
    assert_eq!(v["model"]["vocab"], 128);
    assert_eq!(v["max_len"], 6 + 4);
    let runs = v["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 3);
    let first = &runs[0]["report"]["outputs"];
    for r in runs {
        assert!(r["error"].is_null(), "{r}");
        let rep = &r["report"];
        let outputs = rep["outputs"].as_array().expect("outputs");
        assert_eq!(outputs.len(), 5);
        assert!(
            outputs
                .iter()
                .all(|o| o.as_array().map(Vec::len) == Some(4))
        );
        // However the batch is split, the tokens are the same.
        assert_eq!(&rep["outputs"], first, "{r}");
        assert!(rep["tokens_per_s"].as_f64().expect("number") > 0.0);
        assert_eq!(rep["device_tokens_per_s"].as_array().map(Vec::len), Some(2));
    }
    // The 5th prompt is the 1st again: the same tokens.
    assert_eq!(first[4], first[0]);
}

#[test]
fn a_path_that_is_not_a_model_and_a_model_too_large_are_clear_errors() {
    let bin = env!("CARGO_BIN_EXE_hetero-serve");
    let not_model = fixture("tiny_llama.reference.json");
    let out = run(
        bin,
        &[
            "--model",
            not_model.to_str().expect("utf-8"),
            "--device",
            "host",
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a model"), "{stderr}");

    let out = run(bin, &["--model", "no/such/model.gguf", "--device", "host"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown preset") && stderr.contains("Hugging Face folder"),
        "{stderr}"
    );

    let model = fixture("tiny_llama.gguf");
    let prompts = id_prompts("large");
    let out = run(
        bin,
        &[
            "--model",
            model.to_str().expect("utf-8"),
            "--prompts",
            prompts.to_str().expect("utf-8"),
            "--device",
            "host:memory=4KiB",
            "--device",
            "host:memory=8KiB",
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no device can hold")
            && stderr.contains("4096 bytes")
            && stderr.contains("8192 bytes"),
        "{stderr}"
    );
}

#[test]
fn batch_plan_profiles_a_checkpoint() {
    let model = fixture("tiny_llama_hf");
    let out = run(
        env!("CARGO_BIN_EXE_hetero-batch-plan"),
        &[
            "--model",
            model.to_str().expect("utf-8"),
            "--device",
            "host:threads=1,memory=8MiB",
            "--device",
            "host:threads=2,memory=32MiB",
            "--batch",
            "40",
            "--max-len",
            "256",
            "--json",
        ],
    );
    let v = json_of(&out);
    assert_eq!(v["model"]["format"], "huggingface");
    let devices = v["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 2);
    let small = devices[0]["max_batch"].as_u64().expect("B*");
    let large = devices[1]["max_batch"].as_u64().expect("B*");
    assert!(small >= 1 && large > small, "{devices:?}");
    for p in v["plans"].as_array().expect("plans") {
        assert!(p["error"].is_null(), "{p}");
    }
}

/// SmolLM2-135M: the default English prompts, two host devices, one
/// policy. Skipped (with the reason) when `HETERO_TEST_GGUF` is unset.
#[test]
fn smollm2_serves_real_prompts() {
    let Some(path) = std::env::var("HETERO_TEST_GGUF")
        .ok()
        .filter(|p| std::path::Path::new(p).is_file())
    else {
        eprintln!("skipped: HETERO_TEST_GGUF does not name a file");
        return;
    };
    let out = run(
        env!("CARGO_BIN_EXE_hetero-serve"),
        &[
            "--model",
            &path,
            "--device",
            "host:threads=1,memory=2GiB",
            "--device",
            "host:threads=1,memory=2GiB",
            "--batch",
            "2",
            "--gen-len",
            "3",
            "--policy",
            "balanced",
            "--json",
        ],
    );
    let v = json_of(&out);
    assert_eq!(v["model"]["layers"], 30);
    let run = &v["runs"][0];
    assert!(run["error"].is_null(), "{run}");
    assert_eq!(run["texts"].as_array().map(Vec::len), Some(2));
}
