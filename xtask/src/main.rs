//! cargo xtask: hetero's developer tasks in plain Rust (no shell scripts).
//!
//! `cargo xtask ci` is what CI runs; `cargo xtask test --backend NAME` runs
//! one backend's tests (the device suite once per device that backend finds);
//! `cargo xtask bench` runs the benchmarks; `cargo xtask setup` installs the
//! system packages of the optional features. Every build task first probes
//! the optional system pieces (see `optional`) and turns on the features
//! whose libraries are present, so a fresh machine builds and tests the rest.

use std::process::{Command, ExitCode};

mod bench_llm;
mod bench_place;
mod bench_serve;
mod optional;
mod setup;
mod test_model;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "hetero's developer tasks", version)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Everything CI checks: formatting, clippy with -D warnings, all tests,
    /// with every optional feature whose system library is installed; ends
    /// with what was left out and why, then one line counting the tests.
    Ci,
    /// Install the Debian / Ubuntu packages of every optional feature (as
    /// root with apt, non-interactively), or print the command to run.
    Setup,
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
    /// Real-model benchmark: `hetero-generate --bench` on each device
    /// (prefill of 128 tokens, decode of 1 / 8 / 32 sequences, resident
    /// weights), next to llama.cpp's llama-bench and llama-batched-bench
    /// on the same file in the same run when LLAMA_CPP_BIN names the bin/
    /// folder of a llama.cpp build, with the ratios.
    BenchLlm {
        /// The GGUF file (default: the test model of `cargo xtask setup`).
        #[arg(long)]
        model: Option<String>,
        /// A device spec for hetero-generate, repeatable (default: host).
        #[arg(long = "device")]
        devices: Vec<String>,
        /// Measured runs per figure on each side.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
    /// Serving benchmark: `hetero-serve --http` on the host loaded by
    /// `hetero-serve-bench` (concurrent streamed chat requests), next to
    /// llama.cpp's llama-server on the same file, threads and slots in
    /// the same run when LLAMA_CPP_BIN names the bin/ folder of a
    /// llama.cpp build: tokens/s and time to first token, with ratios.
    BenchServe {
        /// The GGUF file (default: the test model of `cargo xtask setup`).
        #[arg(long)]
        model: Option<String>,
        /// Concurrent streams, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "8,32,64")]
        streams: Vec<usize>,
        /// Sequences each server runs at once.
        #[arg(long, default_value_t = 32)]
        slots: usize,
        /// Positions per sequence (prompt + generated).
        #[arg(long, default_value_t = 2048)]
        max_len: usize,
        /// Requests each stream sends one after the other.
        #[arg(long, default_value_t = 2)]
        requests_per_stream: usize,
        /// max_tokens of every request.
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// Runs per figure on each server.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// A configuration of hetero-serve to measure, repeatable: device
        /// specs joined by `+` (e.g. `host:threads=1+host:threads=1` for
        /// two host devices). Default: one host device with every thread.
        #[arg(long = "hetero")]
        hetero: Vec<String>,
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
            let found = optional::probe_all();
            optional::announce(&found);
            fmt()?;
            lint(&found)?;
            let mut args: Vec<String> = vec!["test".into(), "--workspace".into()];
            args.extend(optional::feature_args(&found, None));
            cargo_test(&args, &found)
        }
        Task::Setup => setup::run(),
        Task::Test { backend, test_args } => {
            let found = optional::probe_all();
            optional::announce(&found);
            let mut args: Vec<String> = vec!["test".into()];
            let package = backend.map(BackendName::package).transpose()?;
            match package {
                Some(p) => args.extend(["--package".into(), p.into()]),
                None => args.push("--workspace".into()),
            }
            args.extend(optional::feature_args(&found, package));
            if !test_args.is_empty() {
                args.push("--".into());
                args.extend(test_args);
            }
            cargo_test(&args, &found)
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
        Task::BenchLlm {
            model,
            devices,
            repeats,
        } => bench_llm::run(model.as_deref(), &devices, repeats),
        Task::BenchServe {
            model,
            streams,
            slots,
            max_len,
            requests_per_stream,
            max_tokens,
            repeats,
            hetero,
        } => bench_serve::run(&bench_serve::Options {
            model: model.as_deref(),
            streams: &streams,
            slots,
            max_len,
            requests_per_stream,
            max_tokens,
            repeats,
            hetero: &hetero
                .iter()
                .map(|c| c.split('+').map(str::to_string).collect())
                .collect::<Vec<_>>(),
        }),
        Task::Fmt => fmt(),
        Task::Lint => lint(&optional::probe_all()),
    }
}

fn fmt() -> Result<(), String> {
    cargo(&["fmt", "--all", "--", "--check"])
}

fn lint(found: &[optional::Found<'_>]) -> Result<(), String> {
    let mut args: Vec<String> = ["clippy", "--workspace", "--all-targets"]
        .map(String::from)
        .to_vec();
    args.extend(optional::feature_args(found, None));
    args.extend(["--", "-D", "warnings"].map(String::from));
    cargo(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `cargo test ...`, streaming its output, then one closing line that adds
/// up every test binary's summary (ignored tests are the skipped ones: the
/// device suites register what cannot run here as ignored, with the reason),
/// just after the summary of the optional pieces left out.
fn cargo_test(args: &[String], found: &[optional::Found<'_>]) -> Result<(), String> {
    use std::io::{BufRead, BufReader, Write};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut command = Command::new(&cargo);
    if std::env::var_os(test_model::ENV).is_none() && test_model::probe().is_ok() {
        command.env(test_model::ENV, test_model::path());
    }
    let mut child = command
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
    let left_out = optional::summary(found);
    if !left_out.is_empty() {
        println!("optional pieces left out:");
        for line in left_out {
            println!("{line}");
        }
    }
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
