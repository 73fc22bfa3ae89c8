//! Building a CPU emulation driver (`tests/emulation/*.cpp` with
//! `emulate.h`) of the kernels: shared by the tests that run them.

use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::Trial;

/// `trial`, ignored with the reason when there is no C++ compiler.
pub fn needs_cxx(trial: Trial) -> Trial {
    match Command::new("c++").arg("--version").output() {
        Ok(out) if out.status.success() => trial,
        _ => trial
            .with_ignored_flag(true)
            .with_kind("skipped: no C++ compiler (c++) on PATH"),
    }
}

/// A scratch folder removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Result<Scratch, String> {
        let dir = std::env::temp_dir().join(format!("hetero-{what}-emu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Compile `tests/emulation/{driver}.cpp` against the kernel sources into
/// `dir`; the executable's path, or the compiler's errors.
pub fn build(driver: &str, dir: &Path) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = dir.join(driver);
    let out = Command::new("c++")
        .args(["-std=c++20", "-O2", "-pthread", "-I"])
        .arg(root.join("kernels"))
        .arg(root.join(format!("tests/emulation/{driver}.cpp")))
        .arg("-o")
        .arg(&exe)
        .output()
        .map_err(|e| format!("running c++: {e}"))?;
    if out.status.success() {
        Ok(exe)
    } else {
        Err(format!(
            "c++ failed on the kernels:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Build `tests/emulation/{driver}.cpp` and run it: a driver that checks
/// its kernels itself and exits 0 when every case passes (its report goes
/// to the test's output); otherwise the report, naming `what` disagrees.
#[allow(dead_code)] // quant_on_cpu checks its driver's output itself
pub fn build_and_run(driver: &str, what: &str) -> Result<(), libtest_mimic::Failed> {
    let scratch = Scratch::new(driver)?;
    let exe = build(driver, &scratch.0)?;
    let out = Command::new(&exe)
        .output()
        .map_err(|e| format!("running {}: {e}", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        eprint!("{text}");
        Ok(())
    } else {
        Err(format!("the emulated {what} disagrees ({}):\n{text}", out.status).into())
    }
}
