//! The core device test suite, once per AMD GPU found: every kernel the
//! device announces (reduce, average, scale, GEMM, the decode-step and
//! Llama-family kernels, all compiled by hiprtc from the shared source) is
//! checked against the host references, plus loading every kernel of the
//! code object. Without the `rocm` feature or without a GPU
//! (`hipErrorNoDevice`), every test is listed as `rocm[none]::...` and
//! reported ignored with the reason. (`tests/hiprtc_compile.rs` compiles
//! the kernels for several targets without a GPU.)

use hetero_core::testsuite::skipped_trials;
use libtest_mimic::Arguments;

fn main() {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    match hetero_rocm::devices() {
        #[cfg(feature = "rocm")]
        Ok(devices) => {
            for device in devices {
                let label = format!("rocm{}", device.ordinal());
                eprintln!("{label}: {}", device.arch());
                trials.extend(hetero_core::testsuite::device_trials(&label, &device));
                let dev = device.clone();
                let load = libtest_mimic::Trial::test(
                    format!("{label}::all_kernels_compile_and_load"),
                    move || {
                        dev.prepare_kernels()
                            .map_err(|e| libtest_mimic::Failed::from(e.to_string()))
                    },
                );
                // A GPU the installed ROCm cannot compile for: its kernels
                // are absent (the suite skips them by capability), say why.
                trials.push(match device.kernels_supported() {
                    Ok(()) => load,
                    Err(why) => load
                        .with_ignored_flag(true)
                        .with_kind(format!("skipped: {why}")),
                });
            }
        }
        // Without the feature, `devices()` is always an error.
        #[cfg(not(feature = "rocm"))]
        Ok(_) => {}
        Err(reason) => {
            eprintln!("ROCm device suite skipped: {reason}");
            let short = if reason.to_string().contains("without the `rocm` feature") {
                "skipped: built without feature rocm (needs the HIP runtime: Debian libamdhip64-dev; cargo xtask setup)"
            } else {
                "skipped: no AMD GPU"
            };
            trials.extend(skipped_trials(
                "rocm[none]",
                short,
                &["all_kernels_compile_and_load"],
            ));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
