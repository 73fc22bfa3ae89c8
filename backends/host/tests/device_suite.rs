//! The core device test suite, once per host device configuration.
//!
//! Two configurations: a single-threaded device with a small budget (the
//! emulated small device) and a multi-threaded one, so both the serial and
//! the threaded kernel paths are checked against the naive references.

use hetero_core::testsuite::device_trials;
use hetero_core::{DType, DynDevice, Error};
use hetero_host::HostDevice;
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let configs = [("cpu0-1thread", 1usize), ("cpu1-4threads", 4usize)];
    let mut trials = Vec::new();
    for (index, (label, threads)) in configs.into_iter().enumerate() {
        let device = match HostDevice::builder()
            .index(index as u32)
            .threads(threads)
            .memory_budget(64 << 20)
            .build()
        {
            Ok(d) => d,
            Err(e) => {
                trials.push(Trial::test(format!("host[{label}]::create"), move || {
                    Err(Failed::from(format!("cannot create host device: {e}")))
                }));
                continue;
            }
        };
        trials.extend(device_trials(&format!("host[{label}]"), &device));
    }
    trials.push(Trial::test(
        "host::foreign_buffers_are_rejected",
        foreign_buffers,
    ));
    trials.push(Trial::test(
        "host::info_counts_its_threads_on_the_host_processor",
        threads_on_the_host_processor,
    ));
    libtest_mimic::run(&args, trials).exit();
}

fn foreign_buffers() -> Result<(), Failed> {
    let a = HostDevice::builder()
        .index(0)
        .memory_budget(1 << 20)
        .build()?;
    let b = HostDevice::builder()
        .index(1)
        .memory_budget(1 << 20)
        .build()?;
    let mut on_a = DynDevice::alloc(&a, DType::F32, 4)?;
    let on_b = DynDevice::alloc(&b, DType::F32, 4)?;
    match DynDevice::reduce(&a, hetero_core::ReduceOp::Sum, on_a.as_mut(), on_b.as_ref()) {
        Err(Error::InvalidInput { reason, .. }) if reason.contains("host:1") => Ok(()),
        other => Err(format!("reduce with a buffer of another device gave {other:?}").into()),
    }
}

/// The placement's contention term reads which devices draw on the host's
/// processor, and how many threads: a host device, its own thread count.
fn threads_on_the_host_processor() -> Result<(), Failed> {
    for threads in [1usize, 3] {
        let d = HostDevice::builder()
            .index(0)
            .threads(threads)
            .memory_budget(1 << 20)
            .build()?;
        let info = DynDevice::info(&d);
        if info.host_threads != Some(threads as u32) {
            return Err(format!("{threads} threads reported as {:?}", info.host_threads).into());
        }
    }
    Ok(())
}
