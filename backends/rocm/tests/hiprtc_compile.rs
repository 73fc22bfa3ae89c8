//! Every kernel of the shared source (hetero-gpu-kernels) compiled by hiprtc
//! for real AMD GPU targets, on any machine with the HIP runtime: no GPU
//! and no `rocm` feature needed (hiprtc and comgr are loaded at run time).
//! A compile error, or a kernel missing from a code object, fails.
//!
//! A target the installed ROCm does not know (its comgr does not list it)
//! is reported ignored with the reason, never compiled: hiprtc of ROCm 5.2
//! aborts the process on such a target. No hiprtc at all: every target
//! ignored with the reason. Each compile runs in a child process (this
//! binary again, with `HETERO_HIPRTC_CHILD` naming the target), so even an
//! abort inside hiprtc fails one trial instead of the whole harness.

use std::process::Command;

use libtest_mimic::{Arguments, Failed, Trial};

/// Targets from three generations: CDNA 2 (MI200), CDNA 1 (MI100), RDNA 2,
/// CDNA 3 (MI300) and RDNA 3.
const TARGETS: [&str; 5] = ["gfx90a", "gfx908", "gfx1030", "gfx942", "gfx1100"];

const CHILD: &str = "HETERO_HIPRTC_CHILD";
/// Set in a child: compile a source with an error instead of the kernels.
const BROKEN: &str = "HETERO_HIPRTC_BROKEN";
/// What the broken source's error must mention (the undeclared name).
const BROKEN_NAME: &str = "hetero_undeclared_name";

fn main() {
    if let Ok(target) = std::env::var(CHILD) {
        child(&target);
    }
    let args = Arguments::from_args();
    // The reason in full on stderr, a short one in each trial's kind.
    let version = hetero_rocm::rtc::compiler_version().map_err(|e| {
        eprintln!("hiprtc compile test skipped: {e}");
        match e {
            hetero_rocm::RocmError::MissingLibrary { library, .. } => format!(
                "{library} is not loadable (the HIP runtime: Debian libamdhip64-dev, cargo xtask setup)"
            ),
            other => other.to_string(),
        }
    });
    if let Ok(v) = &version {
        eprintln!("hiprtc compile test with {v}");
    }
    let mut trials: Vec<Trial> = TARGETS
        .iter()
        .map(|&target| {
            let trial = Trial::test(
                format!("hiprtc::{target}::every_kernel_compiles"),
                move || compile_in_child(target, false),
            );
            match &version {
                Err(e) => trial
                    .with_ignored_flag(true)
                    .with_kind(format!("skipped: {e}")),
                Ok(_) => match hetero_rocm::rtc::check_target(target) {
                    Ok(()) => trial,
                    Err(e) => {
                        eprintln!("{target}: {e}");
                        trial.with_ignored_flag(true).with_kind(format!(
                            "skipped: {target} is not a target of the installed ROCm ({})",
                            version.as_deref().unwrap_or("?")
                        ))
                    }
                },
            }
        })
        .collect();
    // The check itself: a source with an error must fail, with the log.
    let broken = Trial::test(
        "hiprtc::gfx90a::a_compile_error_fails",
        || match compile_in_child("gfx90a", true) {
            Ok(()) => Err("a source with an error compiled".into()),
            Err(e) if e.message().is_some_and(|m| m.contains(BROKEN_NAME)) => Ok(()),
            Err(e) => Err(format!("the failure does not show the compiler's log: {e:?}").into()),
        },
    );
    trials.push(match &version {
        Err(e) => broken
            .with_ignored_flag(true)
            .with_kind(format!("skipped: {e}")),
        Ok(_) if hetero_rocm::rtc::check_target("gfx90a").is_err() => broken
            .with_ignored_flag(true)
            .with_kind("skipped: the installed ROCm does not know gfx90a"),
        Ok(_) => broken,
    });
    libtest_mimic::run(&args, trials).exit();
}

/// Run this binary as a child that compiles for `target` (the kernels, or
/// a source with an error when `broken`).
fn compile_in_child(target: &str, broken: bool) -> Result<(), Failed> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut command = Command::new(exe);
    command.env(CHILD, target);
    if broken {
        command.env(BROKEN, "1");
    }
    let out = command
        .output()
        .map_err(|e| format!("running the compile child: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        eprint!("{text}");
        Ok(())
    } else {
        Err(format!("compiling for {target} failed ({}):\n{text}", out.status).into())
    }
}

/// The child: compile (into a fresh cache directory), check every kernel
/// is in the code object, check a second load comes from the directory
/// unchanged, exit.
fn child(target: &str) -> ! {
    let mut source = hetero_gpu_kernels::source();
    if std::env::var_os(BROKEN).is_some() {
        source += &format!(
            "extern \"C\" __global__ void hetero_broken(float* x) {{ x[0] = {BROKEN_NAME}; }}\n"
        );
    }
    let names = hetero_gpu_kernels::all_names();
    let start = std::time::Instant::now();
    if std::env::var_os(BROKEN).is_some() {
        match hetero_rocm::rtc::compile(&source, target) {
            Ok(_) => println!("{target}: the broken source compiled"),
            Err(e) => println!("{e}"),
        }
        std::process::exit(1);
    }
    let dir = std::env::temp_dir().join(format!(
        "hetero-hiprtc-test-{}-{target}",
        std::process::id()
    ));
    let result = compile_and_reload(&dir, target, &names);
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(size) => {
            println!(
                "{target}: {} kernels, {size} bytes of code object, {:.1} s",
                names.len(),
                start.elapsed().as_secs_f64()
            );
            std::process::exit(0)
        }
        Err(e) => {
            println!("{e}");
            std::process::exit(1)
        }
    }
}

fn compile_and_reload(
    dir: &std::path::Path,
    target: &str,
    names: &[String],
) -> Result<usize, String> {
    use hetero_rocm::code_cache::{Origin, load_or_compile};
    let (code, origin) = load_or_compile(Some(dir), target).map_err(|e| e.to_string())?;
    if origin != Origin::Compiled {
        return Err(format!("{target}: a fresh cache directory gave {origin:?}"));
    }
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !hetero_rocm::rtc::defines_kernel(&code, n))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{target}: kernels missing from the code object: {missing:?}"
        ));
    }
    let (again, origin) = load_or_compile(Some(dir), target).map_err(|e| e.to_string())?;
    if origin != Origin::Disk || again != code {
        return Err(format!(
            "{target}: the second load was {origin:?}, {} bytes against {}",
            again.len(),
            code.len()
        ));
    }
    Ok(code.len())
}
