//! cargo xtask: hetero's developer tasks in plain Rust (no shell scripts).
//!
//! `cargo xtask ci` is what CI runs; `cargo xtask test --backend NAME` runs
//! one backend's tests (the device suite once per device that backend finds);
//! `cargo xtask bench` runs the benchmarks.

use std::process::{Command, ExitCode};

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
            other => Err(format!(
                "the {other:?} backend is not part of this workspace yet; available: host, cuda"
            )),
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
            cargo(&["test", "--workspace", "--all-features"])
        }
        Task::Test { backend, test_args } => {
            let mut args: Vec<String> = vec!["test".into()];
            match backend {
                Some(b) => args.extend(["--package".into(), b.package()?.into()]),
                None => args.push("--workspace".into()),
            }
            if !test_args.is_empty() {
                args.push("--".into());
                args.extend(test_args);
            }
            cargo(&args.iter().map(String::as_str).collect::<Vec<_>>())
        }
        Task::Bench { backend } => match backend {
            Some(b) => cargo(&["bench", "--package", b.package()?]),
            None => cargo(&["bench", "--workspace"]),
        },
        Task::Fmt => fmt(),
        Task::Lint => lint(),
    }
}

fn fmt() -> Result<(), String> {
    cargo(&["fmt", "--all", "--", "--check"])
}

fn lint() -> Result<(), String> {
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ])
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
