//! The core device test suite, once per wgpu adapter (learned from wgpu's
//! own GPU test harness): each test's name names the adapter
//! (`wgpu[0-vulkan-llvmpipe]::reduce_sum_f16`), kernels an adapter lacks are
//! ignored with the reason, and with no adapter at all every test is listed
//! as `wgpu[none]::...` and ignored with the reason. `WGPU_BACKEND=gl` (or
//! `vulkan`) restricts the run to one backend.

use hetero_core::testsuite::{device_tests, device_trials, run_exclusive, skipped_trials};
use hetero_core::{DType, Device, DynDevice, LinkProbe};
use hetero_wgpu::{GemmKernel, WgpuDevice, WgpuDirection, WgpuLink};
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
                // The suite ran the kernel this adapter picks by default;
                // check both kernels, each on a device of its own.
                for kernel in [GemmKernel::Tiled, GemmKernel::Blocked] {
                    let dev = device.clone();
                    let name = format!("{label}::gemm_f32_with_{kernel:?}_kernel").to_lowercase();
                    trials.push(Trial::test(name, move || gemm_with(&dev, kernel)));
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

fn gemm_with(device: &WgpuDevice, kernel: GemmKernel) -> Result<(), Failed> {
    let adapter = hetero_wgpu::adapters()
        .into_iter()
        .find(|a| a.get_info() == *device.adapter_info())
        .ok_or("the adapter disappeared")?;
    let own = WgpuDevice::new(&adapter, 98, None)?;
    own.set_gemm_kernel(kernel);
    let gemm = device_tests(&Device::capabilities(&own))
        .into_iter()
        .find(|t| t.name == "gemm_f32")
        .ok_or("the suite has no gemm_f32 test")?;
    gemm.run(&own as &dyn DynDevice).map_err(Failed::from)
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
