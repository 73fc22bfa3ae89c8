//! CUDA benchmark table: GEMM GFLOP/s, reduce GB/s and host <-> GPU bandwidth
//! per GPU, next to a host device measured in the same run (the baseline).
//! Prints "skipped: <reason>" and exits 0 on a machine without a GPU.
//!
//! `cargo run --release -p hetero-examples --bin hetero-cuda-bench`.

use std::time::Instant;

use hetero_core::host_kernels::Arith;
use hetero_core::probe::GemmProbe;
use hetero_core::{
    DType, DynDevice, DynDeviceExt, HostSlice, LinkProbe, ReduceOp, Result, with_dtype,
};
use hetero_cuda::{CudaHostLink, Direction};

fn main() {
    if let Err(e) = run() {
        eprintln!("cuda_bench: {e}");
        std::process::exit(1);
    }
}

fn reduce_gbps(d: &dyn DynDevice, dtype: DType, len: usize) -> Result<f64> {
    let mut acc = d.alloc(dtype, len)?;
    let src = d.alloc(dtype, len)?;
    d.reduce(ReduceOp::Sum, acc.as_mut(), src.as_ref())?;
    d.synchronize()?;
    let reps = 20;
    let start = Instant::now();
    for _ in 0..reps {
        d.reduce(ReduceOp::Sum, acc.as_mut(), src.as_ref())?;
    }
    d.synchronize()?;
    let secs = start.elapsed().as_secs_f64() / reps as f64;
    Ok(3.0 * (len * dtype.size_bytes()) as f64 / secs / 1e9)
}

fn gemm_gflops(d: &dyn DynDevice, dtype: DType, n: usize) -> Result<f64> {
    if dtype == DType::F32 {
        return Ok(GemmProbe { n, repetitions: 5 }.measure(d)? / 1e9);
    }
    let a = with_dtype!(dtype, T => {
        let values: Vec<T> = (0..n * n).map(|i| T::from_f64((i % 7) as f64 * 0.25)).collect();
        d.alloc_from(HostSlice::new(&values))?
    });
    let mut c = d.alloc(dtype, n * n)?;
    let spec = hetero_core::GemmSpec::new(n, n, n);
    d.gemm(&spec, a.as_ref(), a.as_ref(), c.as_mut())?;
    d.synchronize()?;
    let start = Instant::now();
    let reps = 5;
    for _ in 0..reps {
        d.gemm(&spec, a.as_ref(), a.as_ref(), c.as_mut())?;
    }
    d.synchronize()?;
    Ok(spec.flops() * reps as f64 / start.elapsed().as_secs_f64() / 1e9)
}

fn run() -> Result<()> {
    let gpus = match hetero_cuda::devices() {
        Ok(g) => g,
        Err(e) => {
            println!("skipped: {e}");
            return Ok(());
        }
    };
    let host = hetero_host::HostDevice::builder()
        .memory_budget(8 << 30)
        .build()?;
    println!(
        "{:<34} {:>14} {:>14} {:>10}",
        "benchmark", "host", "gpu", "gpu/host"
    );
    for gpu in &gpus {
        let info = hetero_core::Device::info(gpu);
        println!(
            "# {} ({}), {}",
            info.name,
            info.id,
            info.driver.unwrap_or_default()
        );
        gpu.prepare_kernels()?;
        let rows: Vec<(String, f64, f64)> = vec![
            (
                "gemm f32 1024 (GFLOP/s)".into(),
                gemm_gflops(&host, DType::F32, 1024)?,
                gemm_gflops(gpu, DType::F32, 1024)?,
            ),
            (
                "gemm f32 4096 (GFLOP/s)".into(),
                gemm_gflops(&host, DType::F32, 2048)?,
                gemm_gflops(gpu, DType::F32, 4096)?,
            ),
            (
                "gemm f64 2048 (GFLOP/s)".into(),
                gemm_gflops(&host, DType::F64, 1024)?,
                gemm_gflops(gpu, DType::F64, 2048)?,
            ),
            (
                "gemm f16 4096 (GFLOP/s; host at 512)".into(),
                gemm_gflops(&host, DType::F16, 512)?,
                gemm_gflops(gpu, DType::F16, 4096)?,
            ),
            (
                "gemm bf16 4096 (GFLOP/s; host at 512)".into(),
                gemm_gflops(&host, DType::BF16, 512)?,
                gemm_gflops(gpu, DType::BF16, 4096)?,
            ),
            (
                "reduce sum f32 64 Mi (GB/s)".into(),
                reduce_gbps(&host, DType::F32, 64 << 20)?,
                reduce_gbps(gpu, DType::F32, 64 << 20)?,
            ),
            (
                "reduce sum f16 64 Mi (GB/s)".into(),
                reduce_gbps(&host, DType::F16, 16 << 20)?,
                reduce_gbps(gpu, DType::F16, 64 << 20)?,
            ),
        ];
        for (name, h, g) in rows {
            println!("{name:<34} {h:>14.1} {g:>14.1} {:>10.1}", g / h);
        }
        let probe = LinkProbe {
            sizes_bytes: (0..8).map(|i| 4096usize << (2 * i)).collect(),
            repetitions: 5,
        };
        let host_id = hetero_core::DeviceId::new(hetero_core::Backend::Host, 0);
        for direction in [
            Direction::HostToDevice,
            Direction::DeviceToHost,
            Direction::OnDevice,
        ] {
            let link = CudaHostLink::new(gpu.clone(), host_id, direction);
            let fit = probe.measure(&link)?;
            println!(
                "link {:<29} {:>10.2} GB/s {:>9.1} us latency (r2 {:.3})",
                format!("{direction:?}"),
                fit.model.bandwidth_bytes_per_s / 1e9,
                fit.model.latency_s * 1e6,
                fit.r_squared
            );
        }
    }
    println!(
        "(host baseline: gemm at n = 1024 / 2048 / 1024 and reduce f16 at 16 Mi, to keep the run short)"
    );
    Ok(())
}
