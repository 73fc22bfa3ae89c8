//! cargo xtask: hetero's developer tasks in plain Rust (no shell scripts).
//!
//! `cargo xtask ci` is what CI runs; `cargo xtask test --backend NAME` runs
//! one backend's tests (the device suite once per device that backend finds);
//! `cargo xtask bench` runs the benchmarks.

use std::process::{Command, ExitCode};

mod bench_place;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "hetero's developer tasks", version)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Everything CI checks: formatting, clippy with -D warnings, all tests.
    Ci,
    /// Run tests: the whole workspace, or one backend's crate and device suite.
    Test {
        /// Only this backend's tests.
        #[arg(long, value_enum)]
        backend: Option<BackendName>,
        /// Extra arguments passed to the test binaries (after `--`).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Run the benchmarks (criterion; optimised build).
    Bench {
        /// Only this backend's benchmarks.
        #[arg(long, value_enum)]
        backend: Option<BackendName>,
    },
    /// Run a program as the ranks of an emulated cluster (network
    /// namespaces, shaped links; needs root): builds and runs
    /// hetero-emulated-cluster with these arguments, e.g.
    /// `cargo xtask emulated-cluster --nodes 2 -- target/release/hetero-collective-bench --transport tcp`.
    EmulatedCluster {
        /// Arguments of hetero-emulated-cluster (see its --help).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Placement benchmark (hetero-partition): every shipped graph by the
    /// exact and the linearized DP, one process per graph, then a synthetic
    /// 50,000-node graph by the linearized DP.
    BenchPlace {
        /// Folder of the graphs (default: the shipped dnn-partitioning inputs).
        #[arg(long)]
        data_dir: Option<String>,
    },
    /// Check formatting (cargo fmt --check).
    Fmt,
    /// Run clippy on every target with -D warnings.
    Lint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendName {
    Host,
    Wgpu,
    Cuda,
    Rocm,
}

impl BackendName {
    /// The crate that holds this backend, if it is part of the workspace yet.
    fn package(self) -> Result<&'static str, String> {
        match self {
            BackendName::Host => Ok("hetero-host"),
            BackendName::Cuda => Ok("hetero-cuda"),
            BackendName::Rocm => Ok("hetero-rocm"),
            BackendName::Wgpu => Ok("hetero-wgpu"),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<(), String> {
    match task {
        Task::Ci => {
            fmt()?;
            lint()?;
            let mut args = vec!["test", "--workspace"];
            args.extend(feature_args());
            cargo_test(&args)
        }
        Task::Test { backend, test_args } => {
            let mut args: Vec<String> = vec!["test".into()];
            match backend {
                Some(b) => args.extend(["--package".into(), b.package()?.into()]),
                None => args.push("--workspace".into()),
            }
            args.extend(feature_args().iter().map(|s| s.to_string()));
            if !test_args.is_empty() {
                args.push("--".into());
                args.extend(test_args);
            }
            cargo_test(&args.iter().map(String::as_str).collect::<Vec<_>>())
        }
        Task::Bench { backend } => match backend {
            Some(b) => cargo(&["bench", "--package", b.package()?]),
            None => cargo(&["bench", "--workspace"]),
        },
        Task::EmulatedCluster { args } => {
            let mut all: Vec<&str> = vec![
                "run",
                "--release",
                "--package",
                "hetero-examples",
                "--no-default-features",
                "--bin",
                "hetero-emulated-cluster",
                "--",
            ];
            all.extend(args.iter().map(String::as_str));
            cargo(&all)
        }
        Task::BenchPlace { data_dir } => bench_place::run(data_dir.as_deref()),
        Task::Fmt => fmt(),
        Task::Lint => lint(),
    }
}

fn fmt() -> Result<(), String> {
    cargo(&["fmt", "--all", "--", "--check"])
}

fn lint() -> Result<(), String> {
    let mut args = vec!["clippy", "--workspace", "--all-targets"];
    args.extend(feature_args());
    args.extend(["--", "-D", "warnings"]);
    cargo(&args)
}

/// `--all-features` when the HIP runtime is installed (the `rocm` feature
/// links it), otherwise the default features, saying what is left out.
fn feature_args() -> Vec<&'static str> {
    if hip_runtime_found() {
        vec!["--all-features"]
    } else {
        eprintln!(
            "xtask: no HIP runtime found (HIP_PATH, /opt/rocm, /usr/include/hip); \
             building without hetero-rocm's `rocm` feature (install libamdhip64-dev to include it)"
        );
        Vec::new()
    }
}

/// Whether hip-sys can build: it looks under HIP_PATH, ROCM_PATH or /opt/rocm;
/// Debian's libamdhip64-dev lives under /usr, which we pass as HIP_PATH.
fn hip_runtime_found() -> bool {
    let header = "include/hip/hip_runtime_api.h";
    let has = |root: &str| std::path::Path::new(root).join(header).is_file();
    for var in ["HIP_PATH", "ROCM_PATH"] {
        if let Ok(root) = std::env::var(var) {
            return has(&root);
        }
    }
    if has("/opt/rocm") {
        return true;
    }
    if has("/usr") {
        // SAFETY: xtask is single-threaded; hip-sys's build script reads it.
        unsafe { std::env::set_var("HIP_PATH", "/usr") };
        return true;
    }
    false
}

/// `cargo test ...`, streaming its output, then one closing line that adds
/// up every test binary's summary (ignored tests are the skipped ones: the
/// device suites register what cannot run here as ignored, with the reason).
fn cargo_test(args: &[&str]) -> Result<(), String> {
    use std::io::{BufRead, BufReader, Write};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut child = Command::new(&cargo)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    let mut totals = [0u64; 3];
    if let Some(out) = child.stdout.take() {
        let mut stdout = std::io::stdout().lock();
        for line in BufReader::new(out).lines() {
            let line = line.map_err(|e| format!("reading cargo's output: {e}"))?;
            if let Some(summary) = line.strip_prefix("test result: ") {
                for (slot, word) in totals.iter_mut().zip(["passed", "failed", "ignored"]) {
                    *slot += count_before(summary, word);
                }
            }
            // A closed stdout (e.g. piped into `head`) must not stop the tests.
            let _ = writeln!(stdout, "{line}");
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for cargo: {e}"))?;
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals[0], totals[1], totals[2]
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// The number just before `word` in a libtest summary ("3 passed; 0 failed; ...").
fn count_before(summary: &str, word: &str) -> u64 {
    let tokens: Vec<&str> = summary
        .split(|c: char| c == ';' || c == '.' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .collect();
    tokens
        .windows(2)
        .find(|w| w[1] == word)
        .and_then(|w| w[0].parse().ok())
        .unwrap_or(0)
}

fn cargo(args: &[&str]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

#[cfg(test)]
mod tests {
    use super::count_before;

    #[test]
    fn parses_libtest_summaries() {
        let s =
            "ok. 117 passed; 2 failed; 59 ignored; 0 measured; 0 filtered out; finished in 0.60s";
        assert_eq!(count_before(s, "passed"), 117);
        assert_eq!(count_before(s, "failed"), 2);
        assert_eq!(count_before(s, "ignored"), 59);
        assert_eq!(count_before("FAILED. 1 passed", "failed"), 0);
    }
}
