//! hetero-nccl-allreduce: start NCCL the way torchrun jobs start, with the
//! unique id distributed by hetero-collectives' TCP rendezvous, then
//! all-reduce GPU buffers and check the result.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use hetero_collectives::transport::{Ranks, TransportKind, connect};
use hetero_collectives::{Algorithm, FlatCollective, TcpConfig};
use hetero_core::{
    Collective, DynDevice, DynDeviceExt, Error, HostSlice, HostSliceMut, ReduceOp, Result,
    TensorMut,
};
use hetero_cuda::{CudaDevice, NCCL_UNIQUE_ID_BYTES, NcclCollective};

/// One process per GPU, started with torchrun's variables (`RANK`,
/// `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`). Rank 0 creates
/// the NCCL unique id; a broadcast over the TCP communicator of
/// hetero-collectives hands it to every rank; each rank opens GPU
/// `LOCAL_RANK` and joins the NCCL communicator, all-reduces a buffer of
/// `--elements` f32 values a few times, checks the sum and prints the time
/// and bus bandwidth.
#[derive(Debug, Parser)]
#[command(name = "hetero-nccl-allreduce", version)]
struct Args {
    /// f32 elements per all-reduce.
    #[arg(long, default_value_t = 1 << 24)]
    elements: usize,
    /// Timed repetitions.
    #[arg(long, default_value_t = 10)]
    repetitions: usize,
    /// Seconds the NCCL join and each all-reduce may take before the
    /// communicator is aborted and this rank exits with a timeout error
    /// (a rank that died or stalled never hangs the others).
    #[arg(long, default_value_t = hetero_cuda::DEFAULT_NCCL_TIMEOUT.as_secs_f64())]
    timeout: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<()> {
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| Error::invalid("--timeout", "must be a positive number of seconds"))?;
    let cfg = TcpConfig::from_env()?;
    let (rank, size) = (cfg.rank, cfg.world_size);
    let tcp = connect(TransportKind::Tcp, Ranks::Job(cfg.clone()), None)
        .await?
        .into_single()?;
    let control = FlatCollective::unmeasured(tcp, Algorithm::Auto);
    // Rank 0's id, to every rank: 128 bytes broadcast over TCP.
    let mut id = if rank == 0 {
        NcclCollective::unique_id()?
    } else {
        vec![0u8; NCCL_UNIQUE_ID_BYTES]
    };
    control
        .broadcast(TensorMut::Host(HostSliceMut::new(&mut id)), 0)
        .await?;
    let gpu = CudaDevice::new(cfg.local_rank)?;
    let nccl = NcclCollective::from_unique_id_with_timeout(gpu.clone(), &id, rank, size, timeout)?;
    eprintln!("rank {rank}/{size}: {}", nccl.explain());
    let d: &dyn DynDevice = &gpu;
    let n = args.elements;
    // Rank r contributes r + 1 everywhere: the sum is size (size + 1) / 2.
    let mut buf = d.alloc_from(HostSlice::new(&vec![(rank + 1) as f32; n]))?;
    nccl.all_reduce(
        TensorMut::Device {
            device: d,
            buffer: buf.as_mut(),
        },
        ReduceOp::Sum,
    )
    .await?;
    let got: Vec<f32> = d.to_vec(buf.as_ref())?;
    let want = (size * (size + 1) / 2) as f32;
    if let Some(i) = got.iter().position(|&v| v != want) {
        return Err(Error::invalid(
            "all_reduce result",
            format!("element {i} is {}, want {want}", got[i]),
        ));
    }
    let start = Instant::now();
    for _ in 0..args.repetitions.max(1) {
        nccl.all_reduce(
            TensorMut::Device {
                device: d,
                buffer: buf.as_mut(),
            },
            ReduceOp::Sum,
        )
        .await?;
    }
    let t = start.elapsed().as_secs_f64() / args.repetitions.max(1) as f64;
    let bytes = (n * 4) as f64;
    let busbw = bytes / t * 2.0 * (size as f64 - 1.0) / size as f64;
    control.barrier().await?;
    println!(
        "rank {rank}/{size}: {n} f32 all-reduced in {:.3} ms, algbw {:.1} GB/s, busbw {:.1} GB/s, result correct",
        t * 1e3,
        bytes / t / 1e9,
        busbw / 1e9
    );
    Ok(())
}
