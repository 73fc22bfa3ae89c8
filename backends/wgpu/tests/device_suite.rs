//! The core device test suite, once per wgpu adapter (learned from wgpu's
//! own GPU test harness): each test's name names the adapter
//! (`wgpu[0-vulkan-llvmpipe]::reduce_sum_f16`), kernels an adapter lacks are
//! ignored with the reason, and with no adapter at all every test is listed
//! as `wgpu[none]::...` and ignored with the reason. `WGPU_BACKEND=gl` (or
//! `vulkan`) restricts the run to one backend.

use hetero_core::testsuite::{device_tests, device_trials, run_exclusive, skipped_trials};
use hetero_core::{DType, Device, DynDevice, Link, LinkKind, LinkProbe};
use hetero_wgpu::{GemmKernel, MemorySource, WgpuDevice, WgpuDirection, WgpuLink};
use libtest_mimic::{Arguments, Failed, Trial};

#[path = "device_suite/llama_long.rs"]
mod llama_long;

fn main() {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    match hetero_wgpu::devices() {
        Ok(devices) => {
            for device in devices {
                let label = format!("wgpu[{}]", device.label());
                trials.extend(device_trials(&label, &device));
                // The suite ran the kernels this adapter picks by default;
                // check both forms of the GEMM and of the quantized
                // products, each on a device of its own.
                for kernel in [GemmKernel::Tiled, GemmKernel::Blocked] {
                    for test in ["gemm_f32", "matmul_quant_"] {
                        let dev = device.clone();
                        let name = format!(
                            "{label}::{}_with_{kernel:?}_kernel",
                            test.trim_end_matches('_')
                        )
                        .to_lowercase();
                        let skip = device_tests(&Device::capabilities(&device))
                            .into_iter()
                            .filter(|t| t.name.starts_with(test))
                            .find_map(|t| t.skip);
                        trials.push(match skip {
                            Some(reason) => Trial::test(name, || Ok(()))
                                .with_ignored_flag(true)
                                .with_kind(format!("skipped: {reason}")),
                            None => Trial::test(name, move || suite_tests_with(&dev, kernel, test)),
                        });
                    }
                }
                let dev = device.clone();
                trials.push(Trial::test(
                    format!("{label}::attention_causal_long_context_f32"),
                    move || llama_long::attention_long_context(&dev),
                ));
                let dev = device.clone();
                trials.push(Trial::test(
                    format!("{label}::rope_large_positions_f32"),
                    move || llama_long::rope_large_positions(&dev),
                ));
                let dev = device.clone();
                trials.push(Trial::test(
                    format!("{label}::links_are_measured"),
                    move || run_exclusive(|| links(&dev)),
                ));
                let dev = device.clone();
                trials.push(Trial::test(
                    format!("{label}::small_budget_is_enforced_and_device_keeps_working"),
                    move || small_budget(&dev),
                ));
                let dev = device.clone();
                trials.push(Trial::test(
                    format!("{label}::budget_override_is_what_info_reports_and_is_enforced"),
                    move || budget_override(&dev),
                ));
                let dev = device.clone();
                trials.push(Trial::test(
                    format!("{label}::memory_source_is_reported"),
                    move || memory_source(&dev),
                ));
                let dev = device.clone();
                trials.push(Trial::test(
                    format!("{label}::software_adapters_count_host_threads"),
                    move || host_threads(&dev),
                ));
            }
        }
        Err(reason) => {
            eprintln!("wgpu device suite skipped: {reason}");
            trials.extend(skipped_trials(
                "wgpu[none]",
                "skipped: no wgpu adapter (software ones: Debian mesa-vulkan-drivers \
                 libvulkan1 libegl1 libegl-mesa0 libgl1-mesa-dri; cargo xtask setup)",
                &[],
            ));
        }
    }
    // Mesa's exit-time teardown can abort after every result is printed.
    let failed = libtest_mimic::run(&args, trials).has_failed();
    hetero_wgpu::exit_without_teardown(if failed { 101 } else { 0 });
}

/// The suite's tests whose names start with `prefix`, on a device of the
/// same adapter that uses `kernel`.
fn suite_tests_with(device: &WgpuDevice, kernel: GemmKernel, prefix: &str) -> Result<(), Failed> {
    let adapter = hetero_wgpu::adapters()
        .into_iter()
        .find(|a| a.get_info() == *device.adapter_info())
        .ok_or("the adapter disappeared")?;
    let own = WgpuDevice::new(&adapter, 98, None)?;
    own.set_gemm_kernel(kernel);
    let tests: Vec<_> = device_tests(&Device::capabilities(&own))
        .into_iter()
        .filter(|t| t.name.starts_with(prefix))
        .collect();
    if tests.is_empty() {
        return Err(format!("the suite has no {prefix}* test for this adapter").into());
    }
    for t in tests {
        t.run(&own as &dyn DynDevice)
            .map_err(|e| Failed::from(format!("{}: {e}", t.name)))?;
    }
    Ok(())
}

fn links(device: &WgpuDevice) -> Result<(), Failed> {
    let host = hetero_core::DeviceId::new(hetero_core::Backend::Host, 0);
    let probe = LinkProbe {
        sizes_bytes: (0..5).map(|i| 65536usize << (2 * i)).collect(),
        repetitions: 3,
    };
    for direction in [
        WgpuDirection::HostToDevice,
        WgpuDirection::DeviceToHost,
        WgpuDirection::OnDevice,
    ] {
        let link = WgpuLink::new(device.clone(), host, direction);
        let fit = probe
            .measure(&link)
            .map_err(|e| Failed::from(format!("{direction:?}: {e}")))?;
        let gbps = fit.model.bandwidth_bytes_per_s / 1e9;
        if gbps.is_nan() || gbps <= 0.01 {
            return Err(format!("{direction:?}: {gbps} GB/s is implausible").into());
        }
    }
    Ok(())
}

/// A second device on the same adapter with a 1 MiB budget: the budget is
/// what `memory()` reports, allocations past it fail, smaller ones work.
fn small_budget(device: &WgpuDevice) -> Result<(), Failed> {
    let adapter = hetero_wgpu::adapters()
        .into_iter()
        .find(|a| a.get_info() == *device.adapter_info())
        .ok_or("the adapter disappeared")?;
    let small = WgpuDevice::new(&adapter, 99, Some(1 << 20))?;
    if Device::memory(&small)?.total_bytes != 1 << 20 {
        return Err("budget not reported as the total".into());
    }
    let held = Device::alloc(&small, DType::F32, 200_000)?; // 800 KB
    match Device::alloc(&small, DType::F32, 100_000) {
        Err(e) if e.is_out_of_memory() => {}
        other => return Err(format!("alloc past the budget gave {other:?}").into()),
    }
    drop(held);
    let again = Device::alloc(&small, DType::F32, 100_000)?;
    if hetero_core::DeviceBuffer::len(&again) != 100_000 {
        return Err("wrong length".into());
    }
    Ok(())
}

/// `with_budget` (what `--device wgpu:N,memory=SIZE` opens): the override is
/// the source, `info()` and `memory()` report it, and allocating past it is
/// `OutOfMemory` while the device keeps working.
fn budget_override(device: &WgpuDevice) -> Result<(), Failed> {
    const BUDGET: u64 = 3 << 20;
    let own = device.with_budget(BUDGET)?;
    if Device::id(&own) != Device::id(device) {
        return Err("the reopened device has another id".into());
    }
    if *own.memory_source() != MemorySource::Override || own.budget() != BUDGET {
        return Err(format!("{} bytes from {:?}", own.budget(), own.memory_source()).into());
    }
    let info = Device::info(&own);
    let free = info.memory_free_bytes.ok_or("no free memory reported")?;
    if info.memory_total_bytes != BUDGET || free > BUDGET {
        return Err(format!("info(): total {}, free {free}", info.memory_total_bytes).into());
    }
    let held = Device::alloc(&own, DType::F32, 512 << 10)?; // 2 MiB
    let usage = Device::memory(&own)?;
    if usage.total_bytes != BUDGET || usage.allocated_bytes != 2 << 20 {
        return Err(format!("memory() after 2 MiB: {usage:?}").into());
    }
    if usage.free_bytes.is_none_or(|f| f > 1 << 20) {
        return Err(format!("free after 2 of 3 MiB: {:?}", usage.free_bytes).into());
    }
    match Device::alloc(&own, DType::F32, 512 << 10) {
        Err(e) if e.is_out_of_memory() => {}
        other => return Err(format!("2 MiB more past a 3 MiB budget gave {other:?}").into()),
    }
    let small = Device::alloc(&own, DType::U8, 1 << 20)?;
    drop((held, small));
    if Device::memory(&own)?.allocated_bytes != 0 {
        return Err("the ledger did not return to zero".into());
    }
    // The device it was opened from keeps its own budget.
    if *device.memory_source() == MemorySource::Override {
        return Err("the original device took the override".into());
    }
    Ok(())
}

/// Where the default budget came from: a software adapter's share of host
/// memory (its link to the host is shared memory), a hardware adapter's
/// sysfs VRAM total or the fallback, never an override.
fn memory_source(device: &WgpuDevice) -> Result<(), Failed> {
    let software = device.adapter_info().device_type == wgpu::DeviceType::Cpu;
    let host = hetero_core::DeviceId::new(hetero_core::Backend::Host, 0);
    let kind = WgpuLink::new(device.clone(), host, WgpuDirection::HostToDevice).kind();
    match (software, device.memory_source()) {
        (
            true,
            MemorySource::SoftwareHostShare {
                host_available_bytes,
            },
        ) => {
            if device.budget() != host_available_bytes / 2 || kind != LinkKind::SharedMemory {
                return Err(format!(
                    "budget {} of {host_available_bytes} available, link {kind}",
                    device.budget()
                )
                .into());
            }
        }
        (false, MemorySource::Sysfs { path }) => {
            let text = std::fs::read_to_string(path)?;
            if text.trim().parse::<u64>().ok() != Some(device.budget()) {
                return Err(format!("budget {} but {text:?}", device.budget()).into());
            }
        }
        (_, MemorySource::Fallback { reason }) => {
            if device.budget() != hetero_wgpu::FALLBACK_GPU_BUDGET_BYTES {
                return Err(format!("fallback ({reason}) of {} bytes", device.budget()).into());
            }
        }
        (_, other) => return Err(format!("software {software}: {other:?}").into()),
    }
    if software && kind != LinkKind::SharedMemory {
        return Err(format!("a software adapter's host link is {kind}").into());
    }
    Ok(())
}

/// A software adapter (llvmpipe: lavapipe, or GL's) works on the host's
/// processor and says with how many threads; a hardware adapter has its
/// own processor (the placement's contention term reads this).
fn host_threads(device: &WgpuDevice) -> Result<(), Failed> {
    let info = Device::info(device);
    let software = info.name.contains("llvmpipe");
    let hardware = matches!(
        info.kind,
        hetero_core::DeviceKind::DiscreteGpu | hetero_core::DeviceKind::IntegratedGpu
    );
    match info.host_threads {
        Some(n) if software && n >= 1 => Ok(()),
        None if hardware => Ok(()),
        None if !software => Ok(()),
        other => Err(format!(
            "{} ({}) reports {other:?} host threads",
            info.name, info.kind
        )
        .into()),
    }
}
