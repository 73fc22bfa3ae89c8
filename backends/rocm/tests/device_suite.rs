//! The core device test suite, once per AMD GPU found. Without the `rocm`
//! feature or without a GPU (`hipErrorNoDevice`), every test is listed as
//! `rocm[none]::...` and reported ignored with the reason.

use hetero_core::Capabilities;
use hetero_core::testsuite::device_tests;
use libtest_mimic::{Arguments, Trial};

fn main() {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    match hetero_rocm::devices() {
        #[cfg(feature = "rocm")]
        Ok(devices) => {
            use hetero_core::{Device, DynDevice};
            for device in devices {
                let label = format!("rocm{}", device.ordinal());
                for test in device_tests(&Device::capabilities(&device)) {
                    let skip = test.skip.clone();
                    let dev = device.clone();
                    let trial = Trial::test(format!("{label}::{}", test.name), move || {
                        test.run(&dev as &dyn DynDevice).map_err(Into::into)
                    });
                    trials.push(match skip {
                        Some(reason) => trial.with_ignored_flag(true).with_kind(reason),
                        None => trial,
                    });
                }
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
            let every_kernel = Capabilities::all();
            for test in device_tests(&every_kernel) {
                trials.push(
                    Trial::test(format!("rocm[none]::{}", test.name), || Ok(()))
                        .with_ignored_flag(true)
                        .with_kind(short),
                );
            }
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
