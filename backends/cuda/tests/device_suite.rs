//! The core device test suite, once per CUDA device found.
//!
//! With no driver or no device, every test is still listed (named
//! `cuda[none]::...`) and reported as ignored with the reason, so the summary
//! shows what did not run and why.

use hetero_core::probe::GemmProbe;
use hetero_core::testsuite::{device_trials, run_exclusive, skipped_trials};
use hetero_core::{Device, LinkProbe};
use hetero_cuda::{CudaDevice, CudaHostLink, CudaPeerLink, Direction, Nvml};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    match hetero_cuda::devices() {
        Ok(devices) => {
            peer_trials(&devices, &mut trials);
            for device in devices {
                let label = format!("cuda{}", device.ordinal());
                trials.extend(device_trials(&label, &device));
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
                let pcie = Trial::test(format!("{label}::nvml_reports_pcie_link"), move || {
                    run_exclusive(|| pcie_link(&dev))
                });
                trials.push(match Nvml::get() {
                    Ok(_) => pcie,
                    Err(_) => pcie
                        .with_ignored_flag(true)
                        .with_kind("skipped: NVML (libnvidia-ml.so.1) not loadable"),
                });
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
            trials.extend(skipped_trials(
                "cuda[none]",
                short,
                &[
                    "all_kernels_compile_and_load",
                    "host_links_are_measured",
                    "nvml_reports_pcie_link",
                    "peer_copies",
                ],
            ));
        }
    }
    // The kernel source through clang: runs without a GPU.
    let ptx = Trial::test("cuda::kernel_source_compiles_to_ptx_with_clang", || {
        let clang = hetero_cuda::ptx_check::clang_with_nvptx()?;
        let dir = std::env::temp_dir().join(format!("hetero-cuda-ptx-{}", std::process::id()));
        let result = hetero_cuda::ptx_check::compile_kernels_to_ptx(clang, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        result.map_err(Failed::from)
    });
    trials.push(match hetero_cuda::ptx_check::clang_with_nvptx() {
        Ok(_) => ptx,
        Err(why) => ptx
            .with_ignored_flag(true)
            .with_kind(format!("skipped: {why}")),
    });
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

/// Peer copies between every ordered pair of GPUs (bit-exact, then measured
/// as a link), and the one check that needs a single GPU: a device is not
/// its own peer. With fewer than two GPUs the pair tests are listed as
/// skipped with the reason.
fn peer_trials(devices: &[CudaDevice], trials: &mut Vec<Trial>) {
    if let Some(first) = devices.first().cloned() {
        trials.push(Trial::test(
            "cuda0::peer_path_rejects_the_device_itself",
            move || match first.peer_path(&first) {
                Err(hetero_core::Error::InvalidInput { .. }) => Ok(()),
                other => Err(format!("expected an invalid-argument error, got {other:?}").into()),
            },
        ));
    }
    if devices.len() < 2 {
        trials.push(
            Trial::test("cuda::peer_copies", || Ok(()))
                .with_ignored_flag(true)
                .with_kind(format!(
                    "skipped: needs two CUDA devices, this machine has {}",
                    devices.len()
                )),
        );
        return;
    }
    for a in devices {
        for b in devices {
            if a.ordinal() == b.ordinal() {
                continue;
            }
            let (a, b) = (a.clone(), b.clone());
            trials.push(Trial::test(
                format!("cuda{}::peer_copy_to_cuda{}", a.ordinal(), b.ordinal()),
                move || run_exclusive(|| peer_copy(&a, &b)),
            ));
        }
    }
}

fn peer_copy(a: &CudaDevice, b: &CudaDevice) -> Result<(), Failed> {
    let err = |e: hetero_core::Error| Failed::from(e.to_string());
    let n = 1 << 20;
    let data: Vec<i32> = (0..n as u32)
        .map(|i| i.wrapping_mul(2_654_435_761) as i32)
        .collect();
    let mut src = Device::alloc(a, hetero_core::DType::I32, n).map_err(err)?;
    Device::upload(a, &mut src, 0, hetero_core::HostSlice::new(&data)).map_err(err)?;
    let mut dst = Device::alloc(b, hetero_core::DType::I32, n).map_err(err)?;
    // An offset copy of the middle, so ranges are checked too.
    a.copy_to_peer(&src, 1000..n - 1000, b, &mut dst, 10)
        .map_err(err)?;
    let mut back = vec![0i32; n];
    Device::download(b, &dst, 0, hetero_core::HostSliceMut::new(&mut back)).map_err(err)?;
    if back[10..10 + n - 2000] != data[1000..n - 1000] {
        return Err("peer copy changed the data".into());
    }
    let link = CudaPeerLink::new(a.clone(), b.clone()).map_err(err)?;
    let probe = LinkProbe {
        sizes_bytes: (0..6).map(|i| 65536usize << (2 * i)).collect(),
        repetitions: 3,
    };
    let fit = probe.measure(&link).map_err(err)?;
    eprintln!(
        "cuda{} -> cuda{}: {:?}, {:.1} GB/s, {:.1} us",
        a.ordinal(),
        b.ordinal(),
        link.path(),
        fit.model.bandwidth_bytes_per_s / 1e9,
        fit.model.latency_s * 1e6
    );
    Ok(())
}

/// NVML's PCIe figures are plausible, and the theoretical bandwidth they
/// imply is above what pageable host -> GPU copies really reach.
fn pcie_link(device: &CudaDevice) -> Result<(), Failed> {
    let link = device
        .pcie_link()
        .map_err(|e| Failed::from(e.to_string()))?;
    let theoretical = link
        .max_bandwidth_bytes_per_s()
        .ok_or_else(|| format!("unknown PCIe generation in {link:?}"))?;
    let measured = LinkProbe {
        sizes_bytes: (0..4).map(|i| 1usize << (20 + 2 * i)).collect(),
        repetitions: 3,
    }
    .measure(&CudaHostLink::new(
        device.clone(),
        hetero_core::DeviceId::new(hetero_core::Backend::Host, 0),
        Direction::HostToDevice,
    ))
    .map_err(|e| Failed::from(e.to_string()))?
    .model
    .bandwidth_bytes_per_s;
    eprintln!(
        "cuda{}: PCIe {link:?}, theoretical {:.1} GB/s, measured host->device {:.1} GB/s",
        device.ordinal(),
        theoretical / 1e9,
        measured / 1e9
    );
    if link.max_width == 0 || link.max_generation == 0 {
        return Err(format!("implausible PCIe link {link:?}").into());
    }
    if measured > theoretical * 1.05 {
        return Err(format!(
            "measured {measured:.3e} B/s exceeds PCIe's theoretical {theoretical:.3e} B/s"
        )
        .into());
    }
    Ok(())
}
