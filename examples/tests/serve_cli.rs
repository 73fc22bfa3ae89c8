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
    // The name is checked before any device is profiled.
    assert!(!stderr.contains("profiling"), "{stderr}");
    assert!(
        stderr.contains("uniform, hasc, balanced or all"),
        "{stderr}"
    );
}

#[test]
fn profiles_are_cached_and_buckets_reported() {
    let dir = std::env::temp_dir().join(format!("hetero-serve-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cache = dir.join("profiles.json");
    let cache_arg = cache.to_str().expect("utf-8 path");
    let host = [
        "--device",
        "host:threads=1,memory=4MiB",
        "--policy",
        "uniform",
    ];
    let run = |extra: &[&str]| {
        let mut args = host.to_vec();
        args.extend_from_slice(&["--profile-cache", cache_arg, "--buckets", "16,64"]);
        args.extend_from_slice(extra);
        serve(&args)
    };
    let first = run(&[]);
    assert!(cache.exists(), "the cache file is written");
    let second = run(&[]);
    // Same B* at every length, the second time from the file.
    assert_eq!(
        first["devices"][0]["max_batch"],
        second["devices"][0]["max_batch"]
    );
    assert_eq!(first["buckets"], second["buckets"]);
    let buckets = second["buckets"].as_array().expect("buckets");
    assert_eq!(buckets.len(), 2);
    let at = |i: usize| buckets[i]["max_batch"].as_u64().expect("B*");
    assert!(
        at(0) >= at(1),
        "a shorter length holds at least as many: {buckets:?}"
    );
    let text = std::fs::read_to_string(&cache).expect("cache");
    let saved: serde_json::Value = serde_json::from_str(&text).expect("JSON cache");
    assert_eq!(saved["entries"].as_array().expect("entries").len(), 3);

    // A corrupt cache is a clear error, and the file is left as it was.
    std::fs::write(&cache, "{not json").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_hetero-serve"))
        .args(["--model", "tiny", "--batch", "2", "--json"])
        .args(host)
        .args(["--profile-cache", cache_arg])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--profile-cache"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&cache).expect("cache"), "{not json");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_processes_serve_as_ranks_of_one_job() {
    // over TCP, then with shared memory between the two (same host)
    #[cfg(target_os = "linux")]
    let transports: &[&[&str]] = &[&[], &["--shared-memory"]];
    #[cfg(not(target_os = "linux"))]
    let transports: &[&[&str]] = &[&[]];
    for extra in transports {
        serve_as_two_ranks(extra);
    }
    without_requests_is_an_error();
}

/// Two hetero-serve processes as ranks 0 and 1 (torchrun's variables).
fn serve_as_two_ranks(extra: &[&str]) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let spawn = |rank: usize| {
        Command::new(env!("CARGO_BIN_EXE_hetero-serve"))
            .args([
                "--model",
                "tiny",
                "--device",
                "host:threads=1,memory=64MiB",
                "--batch",
                "4",
                "--prompt-len",
                "2",
                "--gen-len",
                "4",
                "--requests",
                "7",
                "--rank-from-env",
                "--json",
            ])
            .args(extra)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starts")
    };
    let ranks = [spawn(0), spawn(1)];
    let outs: Vec<_> = ranks
        .into_iter()
        .map(|c| c.wait_with_output().expect("finishes"))
        .collect();
    for (rank, o) in outs.iter().enumerate() {
        assert!(
            o.status.success(),
            "rank {rank} {extra:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert!(outs[1].stdout.is_empty(), "only rank 0 reports");
    let v: serde_json::Value = serde_json::from_slice(&outs[0].stdout).expect("JSON");
    let devices = v["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 2, "both ranks' profiles: {v}");
    for r in v["runs"].as_array().expect("runs") {
        assert!(r["error"].is_null(), "{r}");
        assert_eq!(r["report"]["outputs"].as_array().expect("outputs").len(), 7);
    }
}

fn without_requests_is_an_error() {
    // Without --requests the flag is a clear error.
    let out = Command::new(env!("CARGO_BIN_EXE_hetero-serve"))
        .args(["--rank-from-env", "--device", "host:threads=1,memory=64MiB"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--requests"));
}
