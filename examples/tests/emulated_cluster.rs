//! The emulated cluster end to end: 2 network namespaces x 2 ranks over
//! shaped links, hetero-collective-bench's all-reduce checked on every
//! rank (it fails on any wrong element), and the hierarchical plan seeing
//! two domains. Without root (or `ip` / `tc`) the test is listed as ignored
//! with the reason.

use std::path::Path;
use std::time::Duration;

use hetero_collectives::netns::{ClusterShape, EmulatedCluster};
use libtest_mimic::{Arguments, Failed, Trial};

fn all_reduce_over_shaped_links() -> Result<(), Failed> {
    let cluster = EmulatedCluster::create(ClusterShape {
        nodes: 2,
        ranks_per_node: 2,
        rate: "1gbit".into(),
        delay_ms: 0.5,
    })
    .map_err(|e| e.to_string())?;
    let bench = Path::new(env!("CARGO_BIN_EXE_hetero-collective-bench"));
    for algo in ["flat-ring", "hierarchical", "auto"] {
        let args: Vec<String> = [
            "--transport",
            "tcp",
            "--algo",
            algo,
            "--max-bytes",
            "1048576",
            "--factor",
            "16",
            "--iters",
            "2",
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let outputs = cluster
            .launch(bench, &args, 29610, Duration::from_secs(120))
            .map_err(|e| e.to_string())?;
        for o in &outputs {
            if !o.success {
                return Err(format!("{algo}: rank {} failed: {}", o.rank, o.stderr).into());
            }
        }
        let report: serde_json::Value = serde_json::from_str(&outputs[0].stdout).map_err(|e| {
            format!(
                "{algo}: rank 0 printed no JSON ({e}): {}",
                outputs[0].stdout
            )
        })?;
        let rows = report["rows"].as_array().ok_or("no rows")?;
        if rows.is_empty() {
            return Err(format!("{algo}: no sizes measured").into());
        }
        for row in rows {
            if row["wrong"].as_u64() != Some(0) {
                return Err(format!("{algo}: wrong elements in {row}").into());
            }
        }
    }
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let mut trial = Trial::test(
        "emulated_cluster::all_reduce_2x2_over_shaped_links",
        all_reduce_over_shaped_links,
    );
    if let Err(reason) = EmulatedCluster::available() {
        trial = trial
            .with_ignored_flag(true)
            .with_kind(format!("skipped: {reason}"));
    }
    libtest_mimic::run(&args, vec![trial]).exit();
}
