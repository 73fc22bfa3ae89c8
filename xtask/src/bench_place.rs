//! `cargo xtask bench-place`: the placement benchmark of hetero-partition,
//! each run the example lists with `--variants` (every shipped graph as
//! shipped and with 8 CPUs, GNMT with binding accelerator memory) in a
//! process of its own so that the peak resident memory printed per run is
//! its alone, then the synthetic 50,000-node transformer-like graph
//! (linearized DP).

use std::process::Command;

/// Cargo arguments that build and run hetero-partition's `bench-place` example.
const EXAMPLE: &[&str] = &[
    "run",
    "--quiet",
    "--release",
    "--package",
    "hetero-partition",
    "--example",
    "bench-place",
    "--",
];

/// Run the benchmark; `data_dir` replaces the shipped graphs' folder.
pub fn run(data_dir: Option<&str>) -> Result<(), String> {
    let graphs = example(&["--variants"], data_dir)?;
    let names: Vec<&str> = graphs.lines().filter(|l| !l.trim().is_empty()).collect();
    if names.is_empty() {
        return Err("bench-place listed no graphs".into());
    }
    let mut failures = Vec::new();
    for (i, name) in names.iter().enumerate() {
        eprintln!("xtask: bench-place {}/{}: {name}", i + 1, names.len());
        // a graph name, then its options (`--cpus 8`, `--memory BYTES`)
        let mut args = vec!["--graph"];
        args.extend(name.split_whitespace());
        if i > 0 {
            args.push("--no-header");
        }
        match example(&args, data_dir) {
            Ok(table) => print!("{table}"),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    eprintln!("xtask: bench-place: synthetic transformer");
    match example(&["--synthetic"], data_dir) {
        Ok(line) => print!("{line}"),
        Err(e) => failures.push(format!("synthetic transformer: {e}")),
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// Run the example with `args` and return what it printed on stdout; its
/// stderr goes to ours.
fn example(args: &[&str], data_dir: Option<&str>) -> Result<String, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut all: Vec<&str> = EXAMPLE.to_vec();
    all.extend(data_dir);
    all.extend(args);
    let output = Command::new(&cargo)
        .args(&all)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        // print what it measured before failing (a MISMATCH row says which)
        print!("{stdout}");
        Err(format!(
            "`cargo {}` failed ({})",
            all.join(" "),
            output.status
        ))
    }
}
