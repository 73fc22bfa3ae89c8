//! The core device test suite, once per host device configuration.
//!
//! Two configurations: a single-threaded device with a small budget (the
//! emulated small device) and a multi-threaded one, so both the serial and
//! the threaded kernel paths are checked against the naive references.

use hetero_core::rng::SplitMix64;
use hetero_core::testsuite::device_trials;
use hetero_core::testsuite::quant::{f64_dot, random_quant_blocks};
use hetero_core::{
    DType, Device, DynDevice, Error, HostSlice, HostSliceMut, QuantMatmulSpec, QuantType,
};
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
    trials.push(amx_trial());
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

/// Quantized products on the AMX tile unit, through the device's public
/// API, against an f64 reference; listed as skipped with the reason where
/// the CPU or OS gives no AMX (the unit tests in `quant/` check the same
/// kernel in more shapes).
fn amx_trial() -> Trial {
    const NAME: &str = "host::amx_products_match_f64_reference";
    match HostDevice::builder().index(0).memory_budget(64 << 20).build() {
        Ok(d) if d.uses_amx() => Trial::test(NAME, move || amx_products(&d)),
        Ok(_) => Trial::test(NAME, || Ok(())).with_ignored_flag(true).with_kind(
            "skipped: no AMX-BF16 on this CPU, the OS did not grant the tile state, or HETERO_HOST_AMX=off",
        ),
        Err(e) => Trial::test(NAME, move || Err(format!("cannot create host device: {e}").into())),
    }
}

fn amx_products(d: &HostDevice) -> Result<(), Failed> {
    let mut rng = SplitMix64::new(77);
    for (case, quant) in [
        QuantType::Q4_1,
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4K,
    ]
    .into_iter()
    .enumerate()
    {
        let (rows, out) = (32 + 17 * case, 40 + 9 * case);
        let inp = 256 * (1 + case % 2);
        let w = random_quant_blocks(quant, out * inp / quant.block_elems(), rng.next_u64());
        let x: Vec<f32> = (0..rows * inp)
            .map(|_| rng.signed_unit_f32() * 3.0)
            .collect();
        let spec = QuantMatmulSpec {
            rows,
            out,
            inp,
            quant,
        };
        let mut xb = Device::alloc(d, DType::F32, x.len())?;
        Device::upload(d, &mut xb, 0, HostSlice::new(&x))?;
        let mut wb = Device::alloc(d, DType::U8, w.len())?;
        Device::upload(d, &mut wb, 0, HostSlice::new(&w))?;
        let mut yb = Device::alloc(d, DType::F32, rows * out)?;
        Device::matmul_quant(d, &spec, &xb, &wb, &mut yb)?;
        let mut y = vec![0.0f32; rows * out];
        Device::download(d, &yb, 0, HostSliceMut::new(&mut y))?;
        let mut dense = Vec::new();
        quant.dequantize(&w, &mut dense);
        for r in 0..rows {
            for j in 0..out {
                let (want, abs) =
                    f64_dot(&x[r * inp..(r + 1) * inp], &dense[j * inp..(j + 1) * inp]);
                let got = f64::from(y[r * out + j]);
                if (got - want).abs() > 5e-5 * abs + 1e-6 {
                    return Err(format!(
                        "{quant} {rows}x{inp} by {out}: y[{r}][{j}] = {got}, want {want}"
                    )
                    .into());
                }
            }
        }
    }
    Ok(())
}
