//! The core device test suite, once per AMD GPU found. Without the `rocm`
//! feature or without a GPU (`hipErrorNoDevice`), every test is listed as
//! `rocm[none]::...` and reported ignored with the reason.

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
                trials.extend(hetero_core::testsuite::device_trials(&label, &device));
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
            trials.extend(skipped_trials("rocm[none]", short, &[]));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
