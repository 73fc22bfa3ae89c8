//! MpiCollective (feature `mpi`): a world of one rank when started without
//! a launcher, and three ranks under `mpirun` (this test binary runs itself
//! as the MPI program), every operation x MPI-reducible dtype x op x
//! awkward size against the naive reduction. Without the feature, or
//! without `mpirun`, the tests are listed as ignored with the reason.

mod common;

#[cfg(feature = "mpi")]
use libtest_mimic::Failed;
use libtest_mimic::{Arguments, Trial};

#[cfg(feature = "mpi")]
mod checks {
    use super::common::{SIZES, data, naive};
    use hetero_collectives::mpi::MpiCollective;
    use hetero_collectives::staging::Staged;
    use hetero_core::{Collective, DType, ReduceOp, Tensor, TensorMut, chunk_range};

    const DTYPES: [DType; 5] = [DType::F32, DType::F64, DType::I32, DType::I64, DType::U8];
    const OPS: [ReduceOp; 5] = [
        ReduceOp::Sum,
        ReduceOp::Prod,
        ReduceOp::Max,
        ReduceOp::Min,
        ReduceOp::Avg,
    ];

    /// Every operation on this rank; the first mismatch, if any.
    pub fn run_all() -> Result<usize, String> {
        let c = MpiCollective::world().map_err(|e| e.to_string())?;
        let (rank, n) = (c.rank(), c.size());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| e.to_string())?;
        let mut checked = 0;
        rt.block_on(async {
            for dtype in DTYPES {
                for op in OPS {
                    for (seed, &len) in SIZES.iter().enumerate() {
                        let want = naive(dtype, op, n, len, seed);
                        let mut mine = data(dtype, rank, len, seed);
                        c.all_reduce(TensorMut::Host(mine.host_mut().map_err(|e| e.to_string())?), op)
                            .await
                            .map_err(|e| e.to_string())?;
                        if mine.bytes() != want.bytes() {
                            return Err(format!("all_reduce {dtype} {op:?} len {len} differs on rank {rank}"));
                        }
                        let r = chunk_range(len, n, rank);
                        let input = data(dtype, rank, len, seed);
                        let mut out = Staged::zeroed(dtype, r.len());
                        c.reduce_scatter(
                            Tensor::Host(input.host().map_err(|e| e.to_string())?),
                            TensorMut::Host(out.host_mut().map_err(|e| e.to_string())?),
                            op,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                        let es = dtype.size_bytes();
                        if out.bytes() != &want.bytes()[r.start * es..r.end * es] {
                            return Err(format!("reduce_scatter {dtype} {op:?} len {len} differs on rank {rank}"));
                        }
                        let root = seed % n;
                        let mut red = data(dtype, rank, len, seed);
                        c.reduce(TensorMut::Host(red.host_mut().map_err(|e| e.to_string())?), op, root)
                            .await
                            .map_err(|e| e.to_string())?;
                        if rank == root && red.bytes() != want.bytes() {
                            return Err(format!("reduce {dtype} {op:?} len {len} to {root} differs"));
                        }
                        checked += 3;
                    }
                }
                for (seed, &len) in SIZES.iter().enumerate() {
                    // all_gather: rank r contributes chunk r of rank-r data.
                    let r = chunk_range(len, n, rank);
                    let full = data(dtype, rank, len, seed);
                    let es = dtype.size_bytes();
                    let mut part = Staged::zeroed(dtype, r.len());
                    part.bytes_mut().copy_from_slice(&full.bytes()[r.start * es..r.end * es]);
                    let mut out = Staged::zeroed(dtype, len);
                    c.all_gather(
                        Tensor::Host(part.host().map_err(|e| e.to_string())?),
                        TensorMut::Host(out.host_mut().map_err(|e| e.to_string())?),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    for q in 0..n {
                        let rq = chunk_range(len, n, q);
                        let src = data(dtype, q, len, seed);
                        if out.bytes()[rq.start * es..rq.end * es] != src.bytes()[rq.start * es..rq.end * es] {
                            return Err(format!("all_gather {dtype} len {len}: chunk of rank {q} differs on rank {rank}"));
                        }
                    }
                    let root = (seed + 1) % n;
                    let mut b = data(dtype, rank, len, seed);
                    c.broadcast(TensorMut::Host(b.host_mut().map_err(|e| e.to_string())?), root)
                        .await
                        .map_err(|e| e.to_string())?;
                    if b.bytes() != data(dtype, root, len, seed).bytes() {
                        return Err(format!("broadcast {dtype} len {len} from {root} differs on rank {rank}"));
                    }
                    checked += 2;
                }
            }
            // 16-bit floats move but do not reduce.
            let mut h = Staged::zeroed(DType::F16, 4);
            let e = c
                .all_reduce(TensorMut::Host(h.host_mut().map_err(|e| e.to_string())?), ReduceOp::Sum)
                .await
                .err()
                .ok_or("f16 all_reduce should be Unsupported")?;
            if !e.is_unsupported() {
                return Err(format!("f16 all_reduce: {e}"));
            }
            c.barrier().await.map_err(|e| e.to_string())?;
            Ok(checked)
        })
    }
}

#[cfg(feature = "mpi")]
fn single_rank() -> Result<(), Failed> {
    checks::run_all().map(|_| ()).map_err(Failed::from)
}

#[cfg(feature = "mpi")]
fn three_ranks() -> Result<(), Failed> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new("mpirun")
        .args(["--oversubscribe", "-np", "3"])
        .arg(&exe)
        .env("HETERO_MPI_CHILD", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .map_err(|e| format!("running mpirun: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || text.matches("mpi child ok").count() != 3 {
        return Err(format!("mpirun -np 3 failed:\n{text}").into());
    }
    Ok(())
}

fn mpirun_found() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("mpirun").is_file()))
}

fn main() {
    #[cfg(feature = "mpi")]
    if std::env::var_os("HETERO_MPI_CHILD").is_some() {
        let outcome = checks::run_all();
        let _ = hetero_collectives::mpi::MpiCollective::finalize();
        match outcome {
            Ok(n) => {
                println!("mpi child ok ({n} checks)");
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("mpi child failed: {e}");
                std::process::exit(1);
            }
        }
    }
    let args = Arguments::from_args();
    let skip = |t: Trial, why: &str| {
        t.with_ignored_flag(true)
            .with_kind(format!("skipped: {why}"))
    };
    let mut trials = Vec::new();
    #[cfg(feature = "mpi")]
    {
        trials.push(Trial::test("mpi::single_rank_world", single_rank));
        let t = Trial::test("mpi::three_ranks_under_mpirun", three_ranks);
        trials.push(if mpirun_found() {
            t
        } else {
            skip(t, "mpirun is not installed (Debian: openmpi-bin)")
        });
    }
    #[cfg(not(feature = "mpi"))]
    {
        let why = "built without the `mpi` feature of hetero-collectives (needs MPI and libclang: \
                   Debian libopenmpi-dev openmpi-bin libclang-dev; cargo xtask setup)";
        trials.push(skip(Trial::test("mpi::single_rank_world", || Ok(())), why));
        let _ = mpirun_found();
        trials.push(skip(
            Trial::test("mpi::three_ranks_under_mpirun", || Ok(())),
            why,
        ));
    }
    libtest_mimic::run(&args, trials).exit();
}
