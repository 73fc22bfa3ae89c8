//! MPI's own collectives as a [`Collective`] (feature `mpi`; links the MPI
//! library found by `mpicc`, e.g. Debian's libopenmpi-dev).
//!
//! For jobs started by `mpirun` / `srun`: [`MpiCollective::world`]
//! initialises MPI once per process (thread level `MPI_THREAD_SERIALIZED`;
//! calls are serialised by a lock) and wraps `MPI_COMM_WORLD`. A process
//! started without a launcher is a world of one rank. Every operation maps
//! to one MPI call (`MPI_Allreduce`, `MPI_Reduce_scatter_block` (an
//! all-reduce when the length does not divide evenly), `MPI_Allgatherv`,
//! `MPI_Bcast`, `MPI_Reduce`, `MPI_Barrier`) on host memory; device buffers
//! are staged through the host. MPI calls block the calling thread (they are
//! not cancellable futures). Usable as any level of
//! [`crate::Hierarchical::compose`], typically between nodes.
//!
//! Dtypes with an MPI equivalent (f32, f64, i32, i64, u8) reduce natively;
//! f16 and bf16 move as 16-bit words (gather, broadcast) but cannot be
//! reduced by MPI: `Unsupported`. `Avg` is a sum divided by the rank count
//! afterwards, as everywhere in this crate.

use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use hetero_core::{Collective, DType, Error, ReduceOp, Result, Tensor, TensorMut, chunk_range};
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::combine::finish_bytes;
use crate::staging::{Staged, read_tensor, read_tensor_mut, write_tensor};

/// The process's MPI universe: initialised once, never finalised before
/// exit (MPI cannot be initialised twice in one process).
struct World {
    /// Both `None` once [`MpiCollective::finalize`] ran.
    universe: Option<Universe>,
    comm: Option<SimpleCommunicator>,
}

// SAFETY: MPI is initialised with MPI_THREAD_SERIALIZED (checked), and every
// use of the communicator goes through the `Mutex` in `MpiCollective`, so
// no two threads call MPI at the same time.
unsafe impl Send for World {}
// SAFETY: as above; shared references only reach MPI under the lock.
unsafe impl Sync for World {}

static WORLD: OnceLock<std::result::Result<Arc<Mutex<World>>, String>> = OnceLock::new();

/// `MPI_COMM_WORLD` of this process.
#[derive(Clone)]
pub struct MpiCollective {
    world: Arc<Mutex<World>>,
    rank: usize,
    size: usize,
}

impl std::fmt::Debug for MpiCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiCollective")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish()
    }
}

fn op_of(op: ReduceOp) -> SystemOperation {
    match op {
        ReduceOp::Sum | ReduceOp::Avg => SystemOperation::sum(),
        ReduceOp::Prod => SystemOperation::product(),
        ReduceOp::Max => SystemOperation::max(),
        ReduceOp::Min => SystemOperation::min(),
    }
}

fn no_reduce(dtype: DType) -> Error {
    Error::unsupported_in(
        "MPI",
        format!(
            "reducing {dtype} with MPI: MPI has no {dtype} type (use f32, f64, i32, i64 or u8)"
        ),
    )
}

/// Run `$body` with `$t` the Rust type MPI uses for `dtype`'s elements
/// (16-bit floats as `u16` words: movable, not reducible).
macro_rules! with_mpi_type {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::F64 => {
                type $t = f64;
                $body
            }
            DType::I32 => {
                type $t = i32;
                $body
            }
            DType::I64 => {
                type $t = i64;
                $body
            }
            DType::U8 => {
                type $t = u8;
                $body
            }
            DType::F16 | DType::BF16 => {
                type $t = u16;
                $body
            }
        }
    };
}

fn reducible(dtype: DType) -> Result<()> {
    match dtype {
        DType::F16 | DType::BF16 => Err(no_reduce(dtype)),
        _ => Ok(()),
    }
}

fn typed<T: bytemuck::Pod>(s: &Staged) -> Result<&[T]> {
    bytemuck::try_cast_slice(s.bytes())
        .map_err(|e| Error::invalid("buffer", format!("staging view: {e}")))
}

fn typed_mut<T: bytemuck::Pod>(s: &mut Staged) -> Result<&mut [T]> {
    bytemuck::try_cast_slice_mut(s.bytes_mut())
        .map_err(|e| Error::invalid("buffer", format!("staging view: {e}")))
}

/// Element counts and offsets of every rank's chunk.
fn counts(total: usize, size: usize) -> (Vec<i32>, Vec<i32>) {
    let counts: Vec<i32> = (0..size)
        .map(|r| chunk_range(total, size, r).len() as i32)
        .collect();
    let displs = (0..size)
        .map(|r| chunk_range(total, size, r).start as i32)
        .collect();
    (counts, displs)
}

impl MpiCollective {
    /// `MPI_COMM_WORLD`, initialising MPI on first use.
    pub fn world() -> Result<Self> {
        let w = WORLD
            .get_or_init(|| {
                let (universe, level) = mpi::initialize_with_threading(mpi::Threading::Serialized)
                    .ok_or_else(|| "MPI was already initialised by someone else".to_string())?;
                if level < mpi::Threading::Serialized {
                    return Err(format!(
                        "this MPI library offers thread level {level:?}; hetero needs Serialized"
                    ));
                }
                let comm = universe.world();
                Ok(Arc::new(Mutex::new(World {
                    universe: Some(universe),
                    comm: Some(comm),
                })))
            })
            .clone()
            .map_err(|e| Error::unsupported_in("MPI", e.to_string()))?;
        let (rank, size) = {
            let g = w.lock().map_err(|_| poisoned())?;
            let c = g.comm.as_ref().ok_or_else(finalized)?;
            (c.rank() as usize, c.size() as usize)
        };
        Ok(MpiCollective {
            world: w,
            rank,
            size,
        })
    }

    fn with<R>(&self, f: impl FnOnce(&SimpleCommunicator) -> Result<R>) -> Result<R> {
        let g = self.world.lock().map_err(|_| poisoned())?;
        f(g.comm.as_ref().ok_or_else(finalized)?)
    }

    /// Finalise MPI (`MPI_Finalize`); call once before the process exits,
    /// after the last collective on every rank (launchers report ranks that
    /// exit without it). Later calls fail; MPI cannot be started again.
    pub fn finalize() -> Result<()> {
        if let Some(Ok(w)) = WORLD.get() {
            let mut g = w.lock().map_err(|_| poisoned())?;
            g.comm = None;
            g.universe = None;
        }
        Ok(())
    }

    fn check_root(&self, root: usize) -> Result<()> {
        if root >= self.size {
            return Err(Error::invalid(
                "root",
                format!("rank {root} is out of range for {} ranks", self.size),
            ));
        }
        Ok(())
    }
}

fn finalized() -> Error {
    Error::invalid("mpi", "MPI has been finalized in this process")
}

fn poisoned() -> Error {
    Error::invalid("mpi", "a thread panicked while calling MPI")
}

/// Guard against 32-bit MPI counts.
fn count_ok(len: usize) -> Result<()> {
    if len > i32::MAX as usize {
        return Err(Error::unsupported_in(
            "MPI",
            format!("{len} elements: MPI counts are 32-bit (split the buffer)"),
        ));
    }
    Ok(())
}

#[async_trait]
impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    async fn all_reduce(&self, mut data: TensorMut<'_>, op: ReduceOp) -> Result<()> {
        let dtype = data.dtype();
        reducible(dtype)?;
        count_ok(data.len())?;
        let input = read_tensor_mut(&data)?;
        let mut out = Staged::zeroed(dtype, input.len());
        self.with(|c| {
            with_mpi_type!(dtype, T => {
                c.all_reduce_into(typed::<T>(&input)?, typed_mut::<T>(&mut out)?, op_of(op));
            });
            Ok(())
        })?;
        finish_bytes(dtype, op, out.bytes_mut(), self.size)?;
        write_tensor(&mut data, &out)
    }

    async fn reduce_scatter(
        &self,
        input: Tensor<'_>,
        mut output: TensorMut<'_>,
        op: ReduceOp,
    ) -> Result<()> {
        let dtype = input.dtype();
        reducible(dtype)?;
        count_ok(input.len())?;
        let mine = chunk_range(input.len(), self.size, self.rank);
        hetero_core::collective::check_len("output", output.len(), mine.len())?;
        let staged = read_tensor(&input)?;
        let mut out = Staged::zeroed(dtype, mine.len());
        if input.len().is_multiple_of(self.size) {
            self.with(|c| {
                with_mpi_type!(dtype, T => {
                    c.reduce_scatter_block_into(typed::<T>(&staged)?, typed_mut::<T>(&mut out)?, op_of(op));
                });
                Ok(())
            })?;
        } else {
            // rsmpi has no MPI_Reduce_scatter with uneven counts: all-reduce
            // and keep this rank's chunk (twice the traffic; documented).
            let mut all = Staged::zeroed(dtype, input.len());
            self.with(|c| {
                with_mpi_type!(dtype, T => {
                    c.all_reduce_into(typed::<T>(&staged)?, typed_mut::<T>(&mut all)?, op_of(op));
                });
                Ok(())
            })?;
            let es = dtype.size_bytes();
            out.bytes_mut()
                .copy_from_slice(&all.bytes()[mine.start * es..mine.end * es]);
        }
        finish_bytes(dtype, op, out.bytes_mut(), self.size)?;
        write_tensor(&mut output, &out)
    }

    async fn all_gather(&self, input: Tensor<'_>, mut output: TensorMut<'_>) -> Result<()> {
        let dtype = input.dtype();
        count_ok(output.len())?;
        let mine = chunk_range(output.len(), self.size, self.rank);
        hetero_core::collective::check_len("input", input.len(), mine.len())?;
        let staged = read_tensor(&input)?;
        let mut out = Staged::zeroed(dtype, output.len());
        let (counts, displs) = counts(output.len(), self.size);
        self.with(|c| {
            with_mpi_type!(dtype, T => {
                let recv: &mut [T] = typed_mut::<T>(&mut out)?;
                let mut part = PartitionMut::new(recv, &counts[..], &displs[..]);
                c.all_gather_varcount_into(typed::<T>(&staged)?, &mut part);
            });
            Ok(())
        })?;
        write_tensor(&mut output, &out)
    }

    async fn broadcast(&self, mut data: TensorMut<'_>, root: usize) -> Result<()> {
        self.check_root(root)?;
        let dtype = data.dtype();
        count_ok(data.len())?;
        let mut s = read_tensor_mut(&data)?;
        self.with(|c| {
            with_mpi_type!(dtype, T => {
                c.process_at_rank(root as i32).broadcast_into(typed_mut::<T>(&mut s)?);
            });
            Ok(())
        })?;
        write_tensor(&mut data, &s)
    }

    async fn reduce(&self, mut data: TensorMut<'_>, op: ReduceOp, root: usize) -> Result<()> {
        self.check_root(root)?;
        let dtype = data.dtype();
        reducible(dtype)?;
        count_ok(data.len())?;
        let input = read_tensor_mut(&data)?;
        let mut out = Staged::zeroed(dtype, input.len());
        let is_root = self.rank == root;
        self.with(|c| {
            let p = c.process_at_rank(root as i32);
            with_mpi_type!(dtype, T => {
                if is_root {
                    p.reduce_into_root(typed::<T>(&input)?, typed_mut::<T>(&mut out)?, op_of(op));
                } else {
                    p.reduce_into(typed::<T>(&input)?, op_of(op));
                }
            });
            Ok(())
        })?;
        if is_root {
            finish_bytes(dtype, op, out.bytes_mut(), self.size)?;
            write_tensor(&mut data, &out)?;
        }
        Ok(())
    }

    async fn barrier(&self) -> Result<()> {
        self.with(|c| {
            c.barrier();
            Ok(())
        })
    }

    fn explain(&self) -> String {
        format!(
            "MPI's own collectives on MPI_COMM_WORLD ({} ranks; {}); host memory, device buffers staged through the host; calls serialised by a lock",
            self.size,
            mpi::environment::library_version().unwrap_or_else(|_| "unknown MPI library".into())
        )
    }
}
