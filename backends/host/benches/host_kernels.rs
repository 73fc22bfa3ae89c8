//! Host kernel throughput: reduce GB/s per dtype and thread count, GEMM
//! GFLOP/s per size and thread count. The baseline in each group is the
//! single-threaded device, measured in the same run.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hetero_core::{DType, Device, GemmSpec, HostSlice, ReduceOp};
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

criterion_group!(benches, reduce, gemm);
criterion_main!(benches);
