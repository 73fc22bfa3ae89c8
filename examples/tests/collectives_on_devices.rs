//! Collectives of `hetero-collectives` over accelerator buffers (wgpu
//! adapters, CUDA GPUs): three in-process ranks each hold their data in a
//! buffer on the accelerator; the communicator stages it through the host.
//! Results are compared with a naive host reduction. Without an accelerator
//! the check is listed as ignored with the reason.

use std::sync::Arc;

use hetero_backends::{AnyDevice, discover};
use hetero_collectives::{Algorithm, FlatCollective, InProcessTransport, Transport};
use hetero_core::host_kernels::{Arith, combine, finish};
use hetero_core::testsuite::{compare, tolerance};
use hetero_core::{
    Collective, DType, DynDevice, DynDeviceExt, HostSlice, ReduceOp, Tensor, TensorMut,
    chunk_range, with_dtype,
};
use libtest_mimic::{Arguments, Failed, Trial};

const RANKS: usize = 3;
const LEN: usize = 1001; // not a multiple of the rank count

fn values<T: Arith>(rank: usize) -> Vec<T> {
    (0..LEN)
        .map(|i| T::from_f64(((rank * 5 + i * 3) % 7) as f64 - 2.0))
        .collect()
}

fn naive<T: Arith>(op: ReduceOp) -> Vec<T> {
    let mut acc = values::<T>(0);
    for r in 1..RANKS {
        combine(op, &mut acc, &values::<T>(r)).expect("same length");
    }
    finish(op, &mut acc, RANKS).expect("ranks > 0");
    acc
}

async fn rank_work<T: Arith + Default>(
    device: Arc<dyn DynDevice>,
    comm: FlatCollective,
    rank: usize,
    dtype: DType,
    op: ReduceOp,
) -> Result<(), String> {
    let d = device.as_ref();
    let e = |e: hetero_core::Error| e.to_string();
    // all_reduce in place on a device buffer.
    let mut buf = d
        .alloc_from(HostSlice::new(&values::<T>(rank)))
        .map_err(e)?;
    comm.all_reduce(
        TensorMut::Device {
            device: d,
            buffer: buf.as_mut(),
        },
        op,
    )
    .await
    .map_err(e)?;
    let got: Vec<T> = d.to_vec(buf.as_ref()).map_err(e)?;
    let want = naive::<T>(op);
    compare(
        &format!("all_reduce {op} {dtype} rank {rank}"),
        &got,
        &want,
        tolerance(dtype),
    )?;
    // reduce_scatter from a device buffer into a device buffer.
    let input = d
        .alloc_from(HostSlice::new(&values::<T>(rank)))
        .map_err(e)?;
    let mine = chunk_range(LEN, RANKS, rank);
    let mut out = d.alloc(dtype, mine.len()).map_err(e)?;
    comm.reduce_scatter(
        Tensor::Device {
            device: d,
            buffer: input.as_ref(),
        },
        TensorMut::Device {
            device: d,
            buffer: out.as_mut(),
        },
        op,
    )
    .await
    .map_err(e)?;
    let got: Vec<T> = d.to_vec(out.as_ref()).map_err(e)?;
    compare(
        &format!("reduce_scatter rank {rank}"),
        &got,
        &want[mine.clone()],
        tolerance(dtype),
    )?;
    // all_gather the reduced chunks back into a full device buffer.
    let mut full = d.alloc(dtype, LEN).map_err(e)?;
    comm.all_gather(
        Tensor::Device {
            device: d,
            buffer: out.as_ref(),
        },
        TensorMut::Device {
            device: d,
            buffer: full.as_mut(),
        },
    )
    .await
    .map_err(e)?;
    let got: Vec<T> = d.to_vec(full.as_ref()).map_err(e)?;
    compare(
        &format!("all_gather rank {rank}"),
        &got,
        &want,
        tolerance(dtype),
    )
}

fn run_case(device: Arc<dyn DynDevice>, dtype: DType, op: ReduceOp) -> Result<(), Failed> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(e.to_string()))?;
    let results: Vec<Result<(), String>> = rt.block_on(async {
        let handles: Vec<_> = InProcessTransport::group(RANKS)
            .into_iter()
            .enumerate()
            .map(|(rank, t)| {
                let transport: Arc<dyn Transport> = Arc::new(t);
                let comm = FlatCollective::unmeasured(transport, Algorithm::Auto);
                let device = Arc::clone(&device);
                tokio::spawn(async move {
                    with_dtype!(dtype, T => rank_work::<T>(device, comm, rank, dtype, op).await)
                })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(
                h.await
                    .unwrap_or_else(|e| Err(format!("rank task failed: {e}"))),
            );
        }
        out
    });
    results
        .into_iter()
        .collect::<Result<Vec<()>, String>>()
        .map(|_| ())
        .map_err(Failed::from)
}

fn main() {
    let args = Arguments::from_args();
    let devices = discover(1, &mut |note| eprintln!("{note}")).unwrap_or_default();
    let accelerators: Vec<AnyDevice> = devices
        .into_iter()
        .filter(|d| !matches!(d, AnyDevice::Host(_)))
        .collect();
    let cases = [
        (DType::F32, ReduceOp::Sum),
        (DType::F32, ReduceOp::Avg),
        (DType::F32, ReduceOp::Max),
        (DType::I32, ReduceOp::Sum),
        (DType::U8, ReduceOp::Min),
    ];
    let mut trials = Vec::new();
    if accelerators.is_empty() {
        for (dtype, op) in cases {
            trials.push(
                Trial::test(format!("collectives[none]::{op}_{dtype}"), || Ok(()))
                    .with_ignored_flag(true)
                    .with_kind("skipped: no accelerator found"),
            );
        }
    }
    for device in accelerators {
        for (dtype, op) in cases {
            let shared = device.shared();
            let caps = shared.capabilities();
            let name = format!("collectives[{}]::{op}_{dtype}", shared.id());
            let trial = Trial::test(name, move || run_case(shared, dtype, op));
            // The communicator reduces on the host; the device only stores
            // the data, so every dtype the device can hold works. The check
            // is kept to dtypes the device computes with, for symmetry.
            trials.push(if caps.reduce_dtypes.contains(&dtype) {
                trial
            } else {
                trial
                    .with_ignored_flag(true)
                    .with_kind(format!("device has no {dtype} kernels"))
            });
        }
    }
    // Mesa's exit-time teardown can abort after every result is printed.
    let failed = libtest_mimic::run(&args, trials).has_failed();
    hetero_backends::exit_after_tests(failed);
}
