//! The tiled GEMM kernel (`kernels/gemm.cu`) compiled as C++ and run on the
//! CPU with one thread per GPU thread (`tests/emulation/gemm.cpp`), against
//! a double-precision reference: the kernel's indexing, transposes,
//! alpha / beta and edge tiles are checked on machines with no GPU. It does
//! not replace running on a GPU (no warps, no real memory model).
//!
//! Needs a C++20 compiler with `_Float16` (`c++`, GCC 12 or clang 15 and
//! later); without one the trial is reported ignored with the reason.

use std::path::Path;
use std::process::Command;

use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let trial = Trial::test("gemm_kernel_matches_f64_on_cpu", run);
    let trial = match Command::new("c++").arg("--version").output() {
        Ok(out) if out.status.success() => trial,
        _ => trial
            .with_ignored_flag(true)
            .with_kind("skipped: no C++ compiler (c++) on PATH"),
    };
    libtest_mimic::run(&args, vec![trial]).exit();
}

fn run() -> Result<(), Failed> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("hetero-gemm-emu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let exe = dir.join("gemm");
    let result = (|| {
        let out = Command::new("c++")
            .args(["-std=c++20", "-O2", "-pthread", "-I"])
            .arg(root.join("kernels"))
            .arg(root.join("tests/emulation/gemm.cpp"))
            .arg("-o")
            .arg(&exe)
            .output()
            .map_err(|e| format!("running c++: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "c++ failed on the kernel:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let out = Command::new(&exe)
            .output()
            .map_err(|e| format!("running {}: {e}", exe.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            eprint!("{text}");
            Ok(())
        } else {
            Err(format!(
                "the emulated GEMM disagrees ({}):\n{text}",
                out.status
            ))
        }
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(Failed::from)
}
