//! hetero-collective-bench as three separate processes over the
//! shared-memory transport (torchrun's variables, rendezvous on loopback):
//! every rank checks every result, rank 0 reports none wrong and the ring
//! files are gone afterwards.
#![cfg(target_os = "linux")]

use std::process::{Command, Stdio};

#[test]
fn three_processes_all_reduce_over_shared_memory() {
    let dir = std::env::temp_dir().join(format!("hetero-shm-procs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    // a free port for the rendezvous
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let world = 3;
    let spawn = |rank: usize| {
        Command::new(env!("CARGO_BIN_EXE_hetero-collective-bench"))
            .args([
                "--transport",
                "shm",
                "--algo",
                "auto",
                "--min-bytes",
                "8",
                "--max-bytes",
                // larger than the default 1 MiB ring: streamed through it
                "4194304",
                "--factor",
                "16",
                "--iters",
                "2",
                "--json",
            ])
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("HETERO_SHM_DIR", &dir)
            .env("HETERO_COLLECTIVE_TIMEOUT_S", "60")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a rank")
    };
    let ranks: Vec<_> = (0..world).map(spawn).collect();
    let outputs: Vec<_> = ranks
        .into_iter()
        .map(|c| c.wait_with_output().expect("rank runs"))
        .collect();
    for (rank, out) in outputs.iter().enumerate() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "rank {rank}: {stderr}");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&outputs[0].stdout).expect("rank 0 prints JSON");
    assert!(
        report["explain"]
            .as_str()
            .is_some_and(|s| s.contains("shared memory to 2 local peer(s)")),
        "{report}"
    );
    let rows = report["rows"].as_array().expect("rows");
    // 8 B, 128 B, ... 4 MiB
    assert_eq!(rows.len(), 6, "{report}");
    assert_eq!(rows[5]["bytes"], 4_194_304, "{report}");
    for row in rows {
        assert_eq!(row["wrong"], 0, "{row}");
    }
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "ring files left behind: {left:?}");
    std::fs::remove_dir_all(&dir).ok();
}
