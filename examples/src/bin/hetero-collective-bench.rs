//! hetero-collective-bench: nccl-tests style all-reduce benchmark of
//! hetero-collectives, every result checked.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hetero_collectives::combine::{combine_bytes, finish_bytes};
use hetero_collectives::sense::{SenseConfig, measured_flat, sense_topology};
use hetero_collectives::staging::Staged;
use hetero_collectives::transport::{self, Endpoints, connect_from_env, finalize_mpi};
use hetero_collectives::{Algorithm, HierPlan, Hierarchical, Scheme, Transport};
use hetero_core::host_kernels::Arith;
use hetero_core::{Collective, DType, Error, ReduceOp, Result, TensorMut};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Algo {
    FlatRing,
    FlatTree,
    /// Flat recursive doubling (log2 n steps of the whole message).
    FlatRecursiveDoubling,
    /// Flat recursive halving-doubling (Rabenseifner).
    FlatHalvingDoubling,
    /// Flat, algorithm chosen per size by the cost model (ring, tree,
    /// recursive doubling or halving-doubling).
    FlatAuto,
    /// Hierarchical: leader or sharded per size by the cost model (or
    /// --tune); flat only when the topology has one domain.
    Hierarchical,
    /// Hierarchical, always the leader scheme.
    HierarchicalLeader,
    /// Hierarchical, always the sharded scheme (equal domains).
    HierarchicalSharded,
    /// The library's default: measured topology, then flat, leader or
    /// sharded per size by the cost model (or --tune), the flat algorithm
    /// by the model; collapses to flat when the topology has one domain.
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportKind {
    Inproc,
    Tcp,
    /// TCP rendezvous, then shared memory between ranks of one host (same
    /// host name, boot id and network namespace), TCP to the others.
    Shm,
    Mpi,
}

impl TransportKind {
    fn kind(self) -> transport::TransportKind {
        match self {
            TransportKind::Inproc => transport::TransportKind::InProcess,
            TransportKind::Tcp => transport::TransportKind::Tcp,
            TransportKind::Shm => transport::TransportKind::SharedMemory,
            TransportKind::Mpi => transport::TransportKind::Mpi,
        }
    }
}

/// All-reduce benchmark in the style of nccl-tests: for each size from
/// `--min-bytes` to `--max-bytes` (times `--factor`), prints size, count,
/// type, op, time, algbw, busbw (algbw x 2(n-1)/n, as nccl-tests) and #wrong
/// (every element of every rank is checked against a naive reduction after
/// the timed iterations). Also measures a single-thread memcpy of the largest
/// size in the same run, as a baseline.
///
/// `--transport inproc` runs `--ranks` ranks as tasks of this process.
/// `--transport tcp` runs them as tasks over loopback TCP, or, when `RANK`
/// is set (torchrun, or by hand with WORLD_SIZE, MASTER_ADDR, MASTER_PORT),
/// runs this process as that one rank. `--transport shm` is `tcp` with
/// shared-memory rings (under /dev/shm, or HETERO_SHM_DIR) between ranks
/// of one host (Linux).
#[derive(Debug, Parser)]
#[command(name = "hetero-collective-bench", version)]
struct Args {
    #[arg(long, value_enum, default_value = "auto")]
    algo: Algo,
    #[arg(long, value_enum, default_value = "inproc")]
    transport: TransportKind,
    /// Number of ranks (ignored when RANK / WORLD_SIZE are set).
    #[arg(long, default_value_t = 4)]
    ranks: usize,
    #[arg(long, default_value_t = 8)]
    min_bytes: usize,
    #[arg(long, default_value_t = 64 << 20)]
    max_bytes: usize,
    /// Size multiplier between rows.
    #[arg(long, default_value_t = 2)]
    factor: usize,
    /// Timed iterations per size.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// f32, f16, bf16, f64, i32, i64 or u8.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// sum, prod, max, min or avg.
    #[arg(long, default_value = "sum")]
    op: String,
    /// Receive timeout in seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout_s: f64,
    /// Hierarchical algorithms: domains of this many consecutive ranks (one
    /// per machine, as torchrun's LOCAL_WORLD_SIZE gives them) instead of
    /// the domains the measured bandwidth ratios find; the measured links
    /// still price the schemes. 0: measured domains.
    #[arg(long, default_value_t = 0)]
    ranks_per_domain: usize,
    /// Hierarchical algorithms: pipeline segment size in KiB (0: one
    /// segment, no pipelining).
    #[arg(long, default_value_t = 1024)]
    segment_kib: usize,
    /// `--algo auto` or `hierarchical`: before the benchmark, time every
    /// scheme at 1 KiB, 4 KiB, ... up to `--max-bytes` (median of this many
    /// runs) and use the fastest per size instead of the cost model's pick
    /// (0: off).
    #[arg(long, default_value_t = 0)]
    tune: usize,
    /// Hierarchical algorithms: rank 0 writes the measured topology (JSON,
    /// `hetero-devices --load` reads it) to this file.
    #[arg(long, value_name = "FILE")]
    save_topology: Option<std::path::PathBuf>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
}

fn parse_dtype(s: &str) -> Result<DType> {
    DType::ALL
        .into_iter()
        .find(|d| d.name() == s)
        .ok_or_else(|| Error::invalid("--dtype", format!("unknown dtype {s:?}")))
}

fn parse_op(s: &str) -> Result<ReduceOp> {
    ReduceOp::ALL
        .into_iter()
        .find(|d| d.name() == s)
        .ok_or_else(|| Error::invalid("--op", format!("unknown op {s:?}")))
}

/// Small integers, exact in every dtype for the sizes of a benchmark.
fn fill(dtype: DType, rank: usize, len: usize) -> Staged {
    let mut s = Staged::zeroed(dtype, len);
    hetero_core::with_dtype!(dtype, T => {
        let bytes = s.bytes_mut();
        let es = dtype.size_bytes();
        for i in 0..len {
            let k = ((rank * 7 + i * 3) % 4) as f64;
            let x = <T as Arith>::from_f64(k);
            bytes[i * es..(i + 1) * es].copy_from_slice(bytemuck_bytes(&x));
        }
    });
    s
}

fn bytemuck_bytes<T: hetero_core::Element>(x: &T) -> &[u8] {
    hetero_core::HostSlice::new(std::slice::from_ref(x)).as_bytes()
}

#[derive(Debug, Clone)]
struct Row {
    bytes: usize,
    count: usize,
    dtype: String,
    op: String,
    time_us: f64,
    algbw_gb_s: f64,
    busbw_gb_s: f64,
    wrong: i64,
    /// Hierarchical algorithms: the scheme this size ran with.
    scheme: Option<String>,
}

struct Setup {
    dtype: DType,
    op: ReduceOp,
    sizes: Vec<usize>,
    iters: usize,
    warmup: usize,
    algo: Algo,
    ranks_per_domain: usize,
    segment_bytes: usize,
    save_topology: Option<std::path::PathBuf>,
    tune: usize,
    max_bytes: usize,
}

/// The communicator, and for the hierarchical algorithms the scheme each
/// size of the run will use.
async fn make_comm(
    t: Arc<dyn Transport>,
    s: &Setup,
) -> Result<(Box<dyn Collective>, Vec<Option<String>>)> {
    let flat = vec![None; s.sizes.len()];
    let algo = s.algo;
    let cfg = SenseConfig::default();
    Ok(match algo {
        Algo::FlatRing => (
            Box::new(measured_flat(t, Algorithm::Ring, &cfg).await?.0),
            flat,
        ),
        Algo::FlatTree => (
            Box::new(measured_flat(t, Algorithm::Tree, &cfg).await?.0),
            flat,
        ),
        Algo::FlatRecursiveDoubling => (
            Box::new(
                measured_flat(t, Algorithm::RecursiveDoubling, &cfg)
                    .await?
                    .0,
            ),
            flat,
        ),
        Algo::FlatHalvingDoubling => (
            Box::new(measured_flat(t, Algorithm::HalvingDoubling, &cfg).await?.0),
            flat,
        ),
        Algo::FlatAuto => (
            Box::new(measured_flat(t, Algorithm::Auto, &cfg).await?.0),
            flat,
        ),
        Algo::Auto | Algo::Hierarchical | Algo::HierarchicalLeader | Algo::HierarchicalSharded => {
            let topo = sense_topology(t.clone(), &cfg).await?;
            if let (Some(path), 0) = (&s.save_topology, t.rank()) {
                topo.save(path)?;
            }
            let plan = match s.ranks_per_domain {
                0 => HierPlan::new(&topo)?,
                per => {
                    let n = t.size();
                    if !n.is_multiple_of(per) {
                        return Err(Error::invalid(
                            "--ranks-per-domain",
                            format!("{per} does not divide the {n} ranks"),
                        ));
                    }
                    let domains = (0..n / per).map(|k| (k * per..(k + 1) * per).collect());
                    HierPlan::with_domains(&topo, domains.collect())?
                }
            };
            let h = Hierarchical::from_plan(t, plan.with_segment_bytes(s.segment_bytes))?;
            let mut h = match algo {
                Algo::HierarchicalLeader => h.with_scheme(Scheme::Leader),
                Algo::HierarchicalSharded => h.with_scheme(Scheme::Sharded),
                Algo::Hierarchical => h.hierarchical_only(),
                _ => h,
            };
            if matches!(algo, Algo::Auto | Algo::Hierarchical) && s.tune > 0 {
                let table = h.tune(s.max_bytes, s.tune).await?;
                if h.rank() == 0 {
                    for (bytes, times, best) in table {
                        let t: Vec<String> = times
                            .iter()
                            .map(|(k, t)| format!("{} {:.1} us", k.name(), t * 1e6))
                            .collect();
                        eprintln!("# tuned {bytes} B: {} -> {}", t.join(", "), best.name());
                    }
                }
            }
            let schemes = s
                .sizes
                .iter()
                .map(|&b| Some(h.scheme_for(b).name().to_string()))
                .collect();
            (Box::new(h), schemes)
        }
    })
}

/// One rank's benchmark; rank 0's rows (with #wrong summed over ranks).
async fn rank_main(t: Arc<dyn Transport>, s: Arc<Setup>) -> Result<(Vec<Row>, String)> {
    let (comm, schemes) = make_comm(t.clone(), &s).await?;
    let out = bench_comm(&*comm, s, &schemes).await?;
    // Hand every queued message to the network before this process may exit.
    t.flush().await?;
    Ok(out)
}

/// The benchmark on one rank's communicator.
async fn bench_comm(
    comm: &dyn Collective,
    s: Arc<Setup>,
    schemes: &[Option<String>],
) -> Result<(Vec<Row>, String)> {
    let rank = comm.rank();
    let n = comm.size();
    let es = s.dtype.size_bytes();
    let mut rows = Vec::new();
    for (i, &bytes) in s.sizes.iter().enumerate() {
        let count = bytes / es;
        let mut buf = fill(s.dtype, rank, count);
        for _ in 0..s.warmup {
            comm.all_reduce(TensorMut::Host(buf.host_mut()?), s.op)
                .await?;
        }
        comm.barrier().await?;
        let start = Instant::now();
        for _ in 0..s.iters {
            comm.all_reduce(TensorMut::Host(buf.host_mut()?), s.op)
                .await?;
        }
        let secs = start.elapsed().as_secs_f64() / s.iters.max(1) as f64;
        // Check one fresh all-reduce against the naive reduction.
        let mut buf = fill(s.dtype, rank, count);
        comm.all_reduce(TensorMut::Host(buf.host_mut()?), s.op)
            .await?;
        let mut want = fill(s.dtype, 0, count);
        for r in 1..n {
            combine_bytes(
                s.dtype,
                s.op,
                want.bytes_mut(),
                fill(s.dtype, r, count).bytes(),
            )?;
        }
        finish_bytes(s.dtype, s.op, want.bytes_mut(), n)?;
        let wrong = buf
            .bytes()
            .chunks(es)
            .zip(want.bytes().chunks(es))
            .filter(|(a, b)| a != b)
            .count() as i64;
        let mut w = [wrong];
        comm.all_reduce(
            TensorMut::Host(hetero_core::HostSliceMut::new(&mut w[..])),
            ReduceOp::Sum,
        )
        .await?;
        let mut secs_max = [secs];
        comm.all_reduce(
            TensorMut::Host(hetero_core::HostSliceMut::new(&mut secs_max[..])),
            ReduceOp::Max,
        )
        .await?;
        let secs = secs_max[0];
        let algbw = bytes as f64 / secs / 1e9;
        let busbw = algbw * 2.0 * (n as f64 - 1.0) / n as f64;
        rows.push(Row {
            bytes,
            count,
            dtype: s.dtype.to_string(),
            op: s.op.to_string(),
            time_us: secs * 1e6,
            algbw_gb_s: algbw,
            busbw_gb_s: if n > 1 { busbw } else { 0.0 },
            wrong: w[0],
            scheme: schemes.get(i).cloned().flatten(),
        });
    }
    Ok((rows, comm.explain()))
}

fn memcpy_gb_s(bytes: usize) -> f64 {
    let src = vec![1u8; bytes.max(1)];
    let mut dst = vec![0u8; bytes.max(1)];
    dst.copy_from_slice(&src);
    let reps = 5;
    let start = Instant::now();
    for _ in 0..reps {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    }
    bytes as f64 * reps as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn run(args: Args) -> Result<()> {
    let dtype = parse_dtype(&args.dtype)?;
    let op = parse_op(&args.op)?;
    if args.factor < 2 || args.min_bytes == 0 || args.max_bytes < args.min_bytes {
        return Err(Error::invalid(
            "sizes",
            "need --factor >= 2 and 0 < --min-bytes <= --max-bytes",
        ));
    }
    let mut sizes = Vec::new();
    let mut b = args.min_bytes;
    while b <= args.max_bytes {
        sizes.push(b / dtype.size_bytes() * dtype.size_bytes());
        b = b.saturating_mul(args.factor);
    }
    let last = args.max_bytes / dtype.size_bytes() * dtype.size_bytes();
    if sizes.last() != Some(&last) {
        sizes.push(last);
    }
    let timeout = Duration::from_secs_f64(args.timeout_s.max(0.001));
    // One rank of a job started by torchrun or an MPI launcher.
    let env_rank = transport::Launcher::detect(|n| std::env::var(n).ok()).is_some();
    let ranks = args.ranks.max(1);
    let setup = Arc::new(Setup {
        dtype,
        op,
        sizes,
        iters: args.iters.max(1),
        warmup: args.warmup,
        algo: args.algo,
        ranks_per_domain: args.ranks_per_domain,
        segment_bytes: args.segment_kib.saturating_mul(1024),
        save_topology: args.save_topology.clone(),
        tune: args.tune,
        max_bytes: args.max_bytes,
    });
    let workers = if env_rank { 2 } else { ranks.max(2) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the tokio runtime", e))?;
    let mut job_rank = None;
    let (world, results) = rt.block_on(async {
        // In-process: `ranks` tasks; TCP and shared memory: the rank RANK
        // (or an MPI launcher's rank variable) names, or `ranks` tasks over
        // loopback; MPI: mpirun's world.
        let endpoints = connect_from_env(args.transport.kind(), ranks, Some(timeout)).await?;
        let transports: Vec<Arc<dyn Transport>> = match endpoints {
            Endpoints::Mpi(comm) => {
                job_rank = Some(comm.rank());
                let world = comm.size();
                let out = bench_comm(&*comm, setup.clone(), &[]).await;
                finalize_mpi()?;
                return Ok::<_, Error>((world, vec![out]));
            }
            Endpoints::Transports(ts) => ts,
        };
        let world = transports.first().map_or(ranks, |t| t.size());
        if let [one] = transports.as_slice() {
            job_rank = Some(one.rank());
        }
        let hs: Vec<_> = transports
            .into_iter()
            .map(|t| tokio::spawn(rank_main(t, setup.clone())))
            .collect();
        let mut out = Vec::new();
        for h in hs {
            out.push(
                h.await
                    .map_err(|e| Error::invalid("rank task", e.to_string()))?,
            );
        }
        Ok((world, out))
    })?;
    let mut first = None;
    for r in results {
        let r = r?;
        first.get_or_insert(r);
    }
    let Some((rows, explain)) = first else {
        return Err(Error::invalid("--ranks", "no rank ran"));
    };
    let my_rank = job_rank.unwrap_or(0);
    if my_rank != 0 {
        return Ok(());
    }
    let memcpy = memcpy_gb_s(args.max_bytes);
    let transport = format!("{:?}", args.transport).to_lowercase();
    let algo = format!("{:?}", args.algo);
    if args.json {
        let doc = json!({
            "transport": transport,
            "ranks": world,
            "algo": algo,
            "explain": explain,
            "memcpy_gb_s": memcpy,
            "rows": rows.iter().map(|r| json!({
                "bytes": r.bytes, "count": r.count, "type": r.dtype, "redop": r.op,
                "time_us": r.time_us, "algbw_gb_s": r.algbw_gb_s, "busbw_gb_s": r.busbw_gb_s,
                "wrong": r.wrong, "scheme": r.scheme,
            })).collect::<Vec<_>>(),
        });
        println!("{doc:#}");
    } else {
        println!(
            "# hetero-collective-bench: all_reduce, {world} ranks, transport {transport}, algo {algo}"
        );
        println!("# {explain}");
        println!(
            "#{:>12} {:>12} {:>6} {:>6} {:>11} {:>9} {:>9} {:>7}",
            "size(B)", "count", "type", "redop", "time(us)", "algbw", "busbw", "#wrong"
        );
        for r in &rows {
            println!(
                " {:>12} {:>12} {:>6} {:>6} {:>11.1} {:>9.3} {:>9.3} {:>7}{}",
                r.bytes,
                r.count,
                r.dtype,
                r.op,
                r.time_us,
                r.algbw_gb_s,
                r.busbw_gb_s,
                r.wrong,
                r.scheme
                    .as_deref()
                    .map(|x| format!("  {x}"))
                    .unwrap_or_default()
            );
        }
        let wrong: i64 = rows.iter().map(|r| r.wrong).sum();
        println!("# bandwidths in GB/s; #wrong total: {wrong}");
        println!(
            "# single-thread memcpy of {} bytes in this run: {memcpy:.3} GB/s",
            args.max_bytes
        );
    }
    if rows.iter().any(|r| r.wrong > 0) {
        return Err(Error::invalid(
            "results",
            "some elements were wrong (see #wrong)",
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hetero-collective-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
