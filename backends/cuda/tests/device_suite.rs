//! The core device test suite, once per CUDA device found.
//!
//! With no driver or no device, every test is still listed (named
//! `cuda[none]::...`) and reported as ignored with the reason, so the summary
//! shows what did not run and why.

use hetero_core::probe::GemmProbe;
use hetero_core::testsuite::{device_tests, run_exclusive};
use hetero_core::{Capabilities, Device, DynDevice, LinkProbe};
use hetero_cuda::{CudaDevice, CudaHostLink, Direction};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    match hetero_cuda::devices() {
        Ok(devices) => {
            for device in devices {
                let label = format!("cuda{}", device.ordinal());
                for test in device_tests(&Device::capabilities(&device)) {
                    let skip = test.skip.clone();
                    let dev = device.clone();
                    let trial = Trial::test(format!("{label}::{}", test.name), move || {
                        test.run(&dev as &dyn DynDevice).map_err(Failed::from)
                    });
                    trials.push(match skip {
                        Some(reason) => trial.with_ignored_flag(true).with_kind(reason),
                        None => trial,
                    });
                }
                let dev = device.clone();
                trials.push(Trial::test(
                    format!("{label}::all_kernels_compile_and_load"),
                    move || {
                        dev.prepare_kernels()
                            .map_err(|e| Failed::from(e.to_string()))
                    },
                ));
                let dev = device.clone();
                trials.push(Trial::test(
                    format!("{label}::host_links_are_measured"),
                    move || run_exclusive(|| host_links(&dev)),
                ));
                let dev = device.clone();
                trials.push(Trial::test(
                    format!("{label}::gemm_probe_reports_throughput"),
                    move || {
                        let flops = run_exclusive(|| GemmProbe::quick().measure(&dev))
                            .map_err(|e| Failed::from(e.to_string()))?;
                        if flops > 1e9 {
                            Ok(())
                        } else {
                            Err(format!("{flops} FLOP/s is not a GPU").into())
                        }
                    },
                ));
            }
        }
        Err(reason) => {
            eprintln!("CUDA device suite skipped: {reason}");
            let short = if hetero_cuda::driver_present() {
                "skipped: no CUDA device"
            } else {
                "skipped: no CUDA driver (libcuda.so not loadable)"
            };
            let every_kernel = Capabilities::all();
            let names = device_tests(&every_kernel)
                .into_iter()
                .map(|t| t.name)
                .chain([
                    "all_kernels_compile_and_load".into(),
                    "host_links_are_measured".into(),
                ]);
            for name in names {
                trials.push(
                    Trial::test(format!("cuda[none]::{name}"), || Ok(()))
                        .with_ignored_flag(true)
                        .with_kind(short),
                );
            }
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

fn host_links(device: &CudaDevice) -> Result<(), Failed> {
    let host = hetero_core::DeviceId::new(hetero_core::Backend::Host, 0);
    // 64 KiB to 64 MiB: large enough that even on-GPU copies (~2 TB/s)
    // are not all latency, so the fit sees time grow with size.
    let probe = LinkProbe {
        sizes_bytes: (0..6).map(|i| 65536usize << (2 * i)).collect(),
        repetitions: 3,
    };
    for direction in [
        Direction::HostToDevice,
        Direction::DeviceToHost,
        Direction::OnDevice,
    ] {
        let link = CudaHostLink::new(device.clone(), host, direction);
        let fit = probe
            .measure(&link)
            .map_err(|e| Failed::from(format!("{direction:?}: {e}")))?;
        let gbps = fit.model.bandwidth_bytes_per_s / 1e9;
        if gbps.is_nan() || gbps <= 0.1 {
            return Err(format!("{direction:?}: {gbps} GB/s is implausible").into());
        }
    }
    Ok(())
}
