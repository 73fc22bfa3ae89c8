//! `cargo xtask setup`: install the system packages of every optional
//! piece. As root with apt (Debian, Ubuntu) it installs them
//! non-interactively; otherwise it prints the exact command to run. Then
//! it fetches the real test model with pip (see `test_model`).

use std::process::Command;

use crate::optional::{self, PIECES};

pub fn run() -> Result<(), String> {
    packages()?;
    // A machine without the network still builds and tests: the model's
    // tests are skipped with the reason, so a failed fetch is a warning.
    if let Err(e) = crate::test_model::fetch() {
        eprintln!("xtask setup: warning: {e}; the tests on the real model will be skipped");
    }
    report()
}

fn packages() -> Result<(), String> {
    let wanted: Vec<&str> = PIECES
        .iter()
        .flat_map(|p| p.packages.iter().copied())
        .collect();
    if !optional::on_path("apt-get") || !optional::on_path("dpkg") {
        eprintln!(
            "xtask setup: no apt-get here; install the equivalents of these Debian packages \
             with your system's package manager: {}",
            wanted.join(" ")
        );
        return Ok(());
    }
    let missing: Vec<&str> = wanted.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("xtask setup: every optional package is installed");
        return Ok(());
    }
    if !is_root() {
        eprintln!(
            "xtask setup: not root; to install the optional packages run:\n  \
             sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive \
             apt-get install -y --no-install-recommends {}",
            missing.join(" ")
        );
        return Ok(());
    }
    eprintln!("xtask setup: installing {}", missing.join(" "));
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)
}

/// What the next build will include, after installing.
fn report() -> Result<(), String> {
    let found = optional::probe_all();
    optional::announce(&found);
    for line in optional::summary(&found) {
        eprintln!("{line}");
    }
    Ok(())
}

fn apt(args: &[&str]) -> Result<(), String> {
    eprintln!("xtask setup: apt-get {}", args.join(" "));
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`apt-get {}` failed ({status})", args.join(" ")))
    }
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", package])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
}

/// Effective uid 0 (the second field of `Uid:` in /proc/self/status).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
