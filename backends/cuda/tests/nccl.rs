//! NCCL collectives against a naive single-process reduction, one rank per
//! local GPU (each rank on its own thread, as NCCL needs). Without NCCL or a
//! GPU every test is reported ignored with the reason.

use hetero_core::host_kernels::{Arith, combine, finish};
use hetero_core::testsuite::{compare, test_values, tolerance};
use hetero_core::{
    Collective, DType, DynDevice, DynDeviceExt, HostSlice, HostSliceMut, ReduceOp, Tensor,
    TensorMut, chunk_range, with_dtype,
};
use hetero_cuda::{CudaDevice, NcclCollective};
use libtest_mimic::{Arguments, Failed, Trial};

const LENGTHS: [usize; 5] = [0, 1, 7, 1000, 4099];

fn main() {
    let args = Arguments::from_args();
    let gpus = hetero_cuda::devices();
    let nccl_ok = gpus.as_ref().map_err(|e| e.to_string()).and_then(|g| {
        NcclCollective::unique_id()
            .map(|_| g.clone())
            .map_err(|e| e.to_string())
    });
    let mut trials = Vec::new();
    let mut names = Vec::new();
    for dtype in DType::ALL {
        for op in ReduceOp::ALL {
            names.push((
                format!("all_reduce_{op}_{dtype}"),
                Case::AllReduce(op, dtype),
            ));
        }
        names.push((
            format!("reduce_scatter_sum_{dtype}"),
            Case::ReduceScatter(dtype),
        ));
        names.push((format!("all_gather_{dtype}"), Case::AllGather(dtype)));
        names.push((format!("broadcast_{dtype}"), Case::Broadcast(dtype)));
        names.push((format!("reduce_max_{dtype}"), Case::Reduce(dtype)));
    }
    names.push(("barrier".into(), Case::Barrier));
    for (name, case) in names {
        match &nccl_ok {
            Ok(gpus) => {
                let gpus = gpus.clone();
                let label = format!("nccl[{} gpu]::{name}", gpus.len());
                trials.push(Trial::test(label, move || run_case(&gpus, case)));
            }
            Err(reason) => trials.push(
                Trial::test(format!("nccl[none]::{name}"), || Ok(()))
                    .with_ignored_flag(true)
                    .with_kind(if reason.contains("driver") {
                        "skipped: no CUDA driver".to_string()
                    } else {
                        format!("skipped: {reason}")
                    }),
            ),
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

#[derive(Debug, Clone, Copy)]
enum Case {
    AllReduce(ReduceOp, DType),
    ReduceScatter(DType),
    AllGather(DType),
    Broadcast(DType),
    Reduce(DType),
    Barrier,
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
        .block_on(f)
}

/// Run `body(rank, comm)` on one thread per rank and collect the results.
fn per_rank<R: Send>(
    gpus: &[CudaDevice],
    body: impl Fn(usize, &NcclCollective) -> Result<R, String> + Sync,
) -> Result<Vec<R>, Failed> {
    let comms = NcclCollective::all_local(gpus).map_err(|e| Failed::from(e.to_string()))?;
    let results: Vec<Result<R, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .iter()
            .enumerate()
            .map(|(rank, comm)| {
                let body = &body;
                s.spawn(move || body(rank, comm))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("rank thread panicked".into()))
            })
            .collect()
    });
    results
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(Failed::from)
}

fn run_case(gpus: &[CudaDevice], case: Case) -> Result<(), Failed> {
    let size = gpus.len();
    match case {
        Case::Barrier => {
            per_rank(gpus, |_, c| {
                block_on(c.barrier()).map_err(|e| e.to_string())
            })?;
            Ok(())
        }
        Case::AllReduce(op, dtype) => with_dtype!(dtype, T => all_reduce::<T>(gpus, op, dtype)),
        Case::ReduceScatter(dtype) => with_dtype!(dtype, T => reduce_scatter::<T>(gpus, dtype)),
        Case::AllGather(dtype) => with_dtype!(dtype, T => all_gather::<T>(gpus, dtype, size)),
        Case::Broadcast(dtype) => with_dtype!(dtype, T => broadcast::<T>(gpus, dtype)),
        Case::Reduce(dtype) => with_dtype!(dtype, T => reduce::<T>(gpus, dtype)),
    }
}

fn inputs<T: Arith>(dtype: DType, size: usize, len: usize, case: usize) -> Vec<Vec<T>> {
    (0..size)
        .map(|r| test_values(dtype, len, (case * 31 + r) as u64))
        .collect()
}

fn naive<T: Arith>(op: ReduceOp, inputs: &[Vec<T>]) -> Vec<T> {
    let mut acc = inputs[0].clone();
    for x in &inputs[1..] {
        combine(op, &mut acc, x).expect("same lengths");
    }
    finish(op, &mut acc, inputs.len()).expect("count > 0");
    acc
}

fn all_reduce<T: Arith + Default>(
    gpus: &[CudaDevice],
    op: ReduceOp,
    dtype: DType,
) -> Result<(), Failed> {
    for (case, &len) in LENGTHS.iter().enumerate() {
        let data: Vec<Vec<T>> = inputs(dtype, gpus.len(), len, case);
        let want = naive(op, &data);
        // Even ranks pass a host slice, odd ranks a buffer on their GPU:
        // both data paths are checked against the same reference.
        let got = per_rank(gpus, |rank, c| {
            let mut v = data[rank].clone();
            if rank % 2 == 0 {
                block_on(c.all_reduce(TensorMut::Host(HostSliceMut::new(&mut v)), op))
                    .map_err(|e| e.to_string())?;
                Ok(v)
            } else {
                let d: &dyn DynDevice = c.device();
                let mut b = d
                    .alloc_from(HostSlice::new(&v))
                    .map_err(|e| e.to_string())?;
                block_on(c.all_reduce(
                    TensorMut::Device {
                        device: d,
                        buffer: b.as_mut(),
                    },
                    op,
                ))
                .map_err(|e| e.to_string())?;
                d.to_vec(b.as_ref()).map_err(|e| e.to_string())
            }
        })?;
        for (rank, g) in got.iter().enumerate() {
            compare(
                &format!("rank {rank}, {len} elements"),
                g,
                &want,
                tolerance(dtype),
            )?;
        }
    }
    Ok(())
}

fn reduce_scatter<T: Arith + Default>(gpus: &[CudaDevice], dtype: DType) -> Result<(), Failed> {
    let size = gpus.len();
    for (case, &len) in LENGTHS.iter().enumerate() {
        let data: Vec<Vec<T>> = inputs(dtype, size, len, case);
        let want = naive(ReduceOp::Sum, &data);
        let got = per_rank(gpus, |rank, c| {
            let mut out = vec![T::default(); chunk_range(len, size, rank).len()];
            block_on(c.reduce_scatter(
                Tensor::Host(HostSlice::new(&data[rank])),
                TensorMut::Host(HostSliceMut::new(&mut out)),
                ReduceOp::Sum,
            ))
            .map_err(|e| e.to_string())?;
            Ok(out)
        })?;
        for (rank, g) in got.iter().enumerate() {
            compare(
                &format!("rank {rank}"),
                g,
                &want[chunk_range(len, size, rank)],
                tolerance(dtype),
            )?;
        }
    }
    Ok(())
}

fn all_gather<T: Arith + Default>(
    gpus: &[CudaDevice],
    dtype: DType,
    size: usize,
) -> Result<(), Failed> {
    for (case, &len) in LENGTHS.iter().enumerate() {
        let full: Vec<T> = test_values(dtype, len, case as u64);
        let got = per_rank(gpus, |rank, c| {
            let mine = &full[chunk_range(len, size, rank)];
            let mut out = vec![T::default(); len];
            block_on(c.all_gather(
                Tensor::Host(HostSlice::new(mine)),
                TensorMut::Host(HostSliceMut::new(&mut out)),
            ))
            .map_err(|e| e.to_string())?;
            Ok(out)
        })?;
        for (rank, g) in got.iter().enumerate() {
            compare(&format!("rank {rank}"), g, &full, 0.0)?;
        }
    }
    Ok(())
}

fn broadcast<T: Arith + Default>(gpus: &[CudaDevice], dtype: DType) -> Result<(), Failed> {
    let size = gpus.len();
    let root = size - 1;
    for (case, &len) in LENGTHS.iter().enumerate() {
        let data: Vec<Vec<T>> = inputs(dtype, size, len, case);
        let got = per_rank(gpus, |rank, c| {
            let mut v = data[rank].clone();
            block_on(c.broadcast(TensorMut::Host(HostSliceMut::new(&mut v)), root))
                .map_err(|e| e.to_string())?;
            Ok(v)
        })?;
        for (rank, g) in got.iter().enumerate() {
            compare(&format!("rank {rank}"), g, &data[root], 0.0)?;
        }
    }
    Ok(())
}

fn reduce<T: Arith + Default>(gpus: &[CudaDevice], dtype: DType) -> Result<(), Failed> {
    let size = gpus.len();
    for (case, &len) in LENGTHS.iter().enumerate() {
        let data: Vec<Vec<T>> = inputs(dtype, size, len, case);
        let want = naive(ReduceOp::Max, &data);
        let got = per_rank(gpus, |rank, c| {
            let mut v = data[rank].clone();
            block_on(c.reduce(TensorMut::Host(HostSliceMut::new(&mut v)), ReduceOp::Max, 0))
                .map_err(|e| e.to_string())?;
            Ok(v)
        })?;
        compare("root", &got[0], &want, tolerance(dtype))?;
    }
    Ok(())
}
