//! hetero-bench: kernel throughput and link bandwidth of every device of
//! every compiled backend, next to the host device measured in the same run.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use hetero_backends::{AnyDevice, discover, link_between};
use hetero_core::host_kernels::Arith;
use hetero_core::{
    DType, DynDevice, DynDeviceExt, GemmSpec, HostSlice, LinkProbe, ReduceOp, Result, with_dtype,
};
use serde_json::json;

/// Measure, per device: GEMM GFLOP/s (f32, and f16 / bf16 where the device
/// has them), elementwise reduce GB/s (f32, f16), and the bandwidth of the
/// links host -> device, device -> host and within the device. The first
/// row is the host device: the baseline the ratio column divides by.
/// Kernels a device lacks show as "-".
#[derive(Debug, Parser)]
#[command(name = "hetero-bench", version)]
struct Args {
    /// Square GEMM size.
    #[arg(long, default_value_t = 1024)]
    gemm_n: usize,
    /// Elements per reduce operand.
    #[arg(long, default_value_t = 16 << 20)]
    reduce_len: usize,
    /// Timed repetitions per figure (the best is reported).
    #[arg(long, default_value_t = 5)]
    repetitions: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    hetero_examples::exit_code(run(&Args::parse()))
}

/// Best time of `reps` runs of `f` (after one warm-up), seconds.
fn best_of(d: &dyn DynDevice, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    d.synchronize()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        f()?;
        d.synchronize()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn gemm_gflops(d: &dyn DynDevice, dtype: DType, n: usize, reps: usize) -> Result<Option<f64>> {
    if !d.capabilities().gemm_dtypes.contains(&dtype) {
        return Ok(None);
    }
    let a = with_dtype!(dtype, T => {
        let v: Vec<T> = (0..n * n).map(|i| T::from_f64((i % 7) as f64 * 0.25)).collect();
        d.alloc_from(HostSlice::new(&v))?
    });
    let mut c = d.alloc(dtype, n * n)?;
    let spec = GemmSpec::new(n, n, n);
    let t = best_of(d, reps, || {
        d.gemm(&spec, a.as_ref(), a.as_ref(), c.as_mut())
    })?;
    Ok(Some(spec.flops() / t / 1e9))
}

fn reduce_gbps(d: &dyn DynDevice, dtype: DType, len: usize, reps: usize) -> Result<Option<f64>> {
    if !d.capabilities().reduce_dtypes.contains(&dtype) {
        return Ok(None);
    }
    let mut acc = d.alloc(dtype, len)?;
    let src = d.alloc(dtype, len)?;
    let t = best_of(d, reps, || {
        d.reduce(ReduceOp::Sum, acc.as_mut(), src.as_ref())
    })?;
    Ok(Some(3.0 * (len * dtype.size_bytes()) as f64 / t / 1e9))
}

fn cell(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into())
}

fn run(args: &Args) -> Result<()> {
    let devices = discover(1, &mut |note| eprintln!("{note}"))?;
    let host = devices[0].clone();
    let probe = LinkProbe {
        sizes_bytes: (0..7).map(|i| 16384usize << (2 * i)).collect(),
        repetitions: 3,
    };
    let mut rows = Vec::new();
    for device in &devices {
        let d = device.as_dyn();
        let info = d.info();
        eprintln!("measuring {} ({})...", info.id, info.name);
        let mut figures = vec![
            gemm_gflops(d, DType::F32, args.gemm_n, args.repetitions)?,
            gemm_gflops(d, DType::F16, args.gemm_n, args.repetitions)?,
            gemm_gflops(d, DType::BF16, args.gemm_n, args.repetitions)?,
            reduce_gbps(d, DType::F32, args.reduce_len, args.repetitions)?,
            reduce_gbps(d, DType::F16, args.reduce_len, args.repetitions)?,
        ];
        let pairs = [(&host, device), (device, &host), (device, device)];
        for (a, b) in pairs {
            let same_host = matches!((a, b), (AnyDevice::Host(_), AnyDevice::Host(_)));
            if same_host && !std::ptr::eq(a, b) {
                figures.push(None);
                continue;
            }
            let fit = probe.measure(link_between(a, b).as_ref())?;
            figures.push(Some(fit.model.bandwidth_bytes_per_s / 1e9));
        }
        rows.push((info, figures));
    }
    let headers = [
        "gemm f32 GFLOP/s",
        "gemm f16 GFLOP/s",
        "gemm bf16 GFLOP/s",
        "reduce f32 GB/s",
        "reduce f16 GB/s",
        "host->dev GB/s",
        "dev->host GB/s",
        "on-dev GB/s",
    ];
    if args.json {
        let out: Vec<_> = rows
            .iter()
            .map(|(info, f)| {
                let mut m = serde_json::Map::new();
                m.insert("device".into(), json!(info.id.to_string()));
                m.insert("name".into(), json!(info.name));
                for (h, v) in headers.iter().zip(f) {
                    m.insert((*h).into(), json!(v));
                }
                serde_json::Value::Object(m)
            })
            .collect();
        println!(
            "{}",
            json!({"gemm_n": args.gemm_n, "reduce_len": args.reduce_len, "devices": out})
        );
        return Ok(());
    }
    println!(
        "gemm {n}x{n}x{n}, reduce of {len} elements, best of {r}; ratios against {host}",
        n = args.gemm_n,
        len = args.reduce_len,
        r = args.repetitions,
        host = rows[0].0.id
    );
    print!("{:<10}", "device");
    for h in headers {
        print!(" {h:>17}");
    }
    println!(" {:>13} {:>15}", "gemm f32 /host", "reduce f32 /host");
    let (base_gemm, base_reduce) = (rows[0].1[0], rows[0].1[3]);
    for (info, f) in &rows {
        print!("{:<10}", info.id.to_string());
        for v in f {
            print!(" {:>17}", cell(*v));
        }
        let ratio = |x: Option<f64>, base: Option<f64>| match (x, base) {
            (Some(x), Some(b)) if b > 0.0 => format!("{:.2}", x / b),
            _ => "-".into(),
        };
        println!(
            " {:>13} {:>15}   {}",
            ratio(f[0], base_gemm),
            ratio(f[3], base_reduce),
            info.name
        );
    }
    Ok(())
}
