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
            BackendName::Rocm => Ok("hetero-rocm"),
            other => Err(format!(
                "the {other:?} backend is not part of this workspace yet; available: host, cuda, rocm"
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
            let mut args = vec!["test", "--workspace"];
            args.extend(feature_args());
            cargo(&args)
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
