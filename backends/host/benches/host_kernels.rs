//! Host kernel throughput: reduce GB/s per dtype and thread count, GEMM
//! GFLOP/s per size and thread count, quantized products per row count
//! with and without the AMX tile unit. The baseline in each group is the
//! single-threaded device (quantized products: the SIMD kernels), measured
//! in the same run.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hetero_core::{DType, Device, GemmSpec, HostSlice, QuantMatmulSpec, QuantType, ReduceOp};
use hetero_host::HostDevice;

fn devices() -> Vec<HostDevice> {
    let all = hetero_host::hardware_threads();
    let mut threads = vec![1];
    if all > 1 {
        threads.push(all);
    }
    threads
        .into_iter()
        .map(|t| {
            HostDevice::builder()
                .threads(t)
                .memory_budget(2 << 30)
                .build()
                .expect("host device")
        })
        .collect()
}

fn reduce(c: &mut Criterion) {
    let len = 4 << 20; // 4 Mi elements
    for dtype in [DType::F32, DType::F16, DType::I32] {
        let mut group = c.benchmark_group(format!("reduce_sum_{dtype}"));
        // Bytes read and written by acc = acc + src.
        group.throughput(Throughput::Bytes((3 * len * dtype.size_bytes()) as u64));
        for d in devices() {
            let mut acc = d.alloc(dtype, len).expect("alloc");
            let src = d.alloc(dtype, len).expect("alloc");
            group.bench_function(BenchmarkId::new("threads", d.threads()), |b| {
                b.iter(|| d.reduce(ReduceOp::Sum, &mut acc, &src).expect("reduce"))
            });
        }
        group.finish();
    }
}

fn gemm(c: &mut Criterion) {
    for n in [256usize, 1024] {
        let mut group = c.benchmark_group(format!("gemm_f32_{n}"));
        let spec = GemmSpec::new(n, n, n);
        group.throughput(Throughput::Elements(spec.flops() as u64));
        let values: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.25).collect();
        for d in devices() {
            let mut a = d.alloc(DType::F32, n * n).expect("alloc");
            d.upload(&mut a, 0, HostSlice::new(&values))
                .expect("upload");
            let mut cbuf = d.alloc(DType::F32, n * n).expect("alloc");
            group.bench_function(BenchmarkId::new("threads", d.threads()), |b| {
                b.iter(|| d.gemm(&spec, &a, &a, &mut cbuf).expect("gemm"))
            });
        }
        group.finish();
    }
}

/// Q4_1 products of SmolLM2-135M's shapes (576 -> 1536, the MLP's up
/// projection) at decode and prefill row counts, all threads: the AVX-512
/// (or AVX2) kernels against the AMX tile unit where the CPU has one.
fn quant_matmul(c: &mut Criterion) {
    let (inp, out) = (576usize, 1536usize);
    let quant = QuantType::Q4_1;
    let weights = hetero_core::testsuite::quant::random_quant_blocks(quant, out * inp / 32, 7);
    let all = hetero_host::hardware_threads();
    let mut devices = vec![("simd", false)];
    let with_amx = HostDevice::builder()
        .threads(all)
        .build()
        .expect("host device");
    if with_amx.uses_amx() {
        devices.push(("amx", true));
    }
    for rows in [1usize, 8, 16, 32, 64, 128] {
        let mut group = c.benchmark_group(format!("matmul_q4_1_576x1536_rows_{rows}"));
        let spec = QuantMatmulSpec {
            rows,
            out,
            inp,
            quant,
        };
        group.throughput(Throughput::Elements((2 * rows * inp * out) as u64));
        let x: Vec<f32> = (0..rows * inp)
            .map(|i| ((i % 13) as f32 - 6.0) * 0.1)
            .collect();
        for (label, amx) in &devices {
            let d = HostDevice::builder()
                .threads(all)
                .memory_budget(2 << 30)
                .amx(*amx)
                .build()
                .expect("host device");
            let mut xb = d.alloc(DType::F32, x.len()).expect("alloc");
            d.upload(&mut xb, 0, HostSlice::new(&x)).expect("upload");
            let mut wb = d.alloc(DType::U8, weights.len()).expect("alloc");
            d.upload(&mut wb, 0, HostSlice::new(&weights))
                .expect("upload");
            let mut yb = d.alloc(DType::F32, rows * out).expect("alloc");
            group.bench_function(BenchmarkId::new(*label, all), |b| {
                b.iter(|| d.matmul_quant(&spec, &xb, &wb, &mut yb).expect("matmul"))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, reduce, gemm, quant_matmul);
criterion_main!(benches);
