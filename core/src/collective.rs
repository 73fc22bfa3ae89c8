//! The `Collective` trait: a communicator of `size` ranks.
//!
//! Implementations (flat ring / tree over a transport, hierarchical over two
//! communicators, NCCL) live in `hetero-collectives` and the backends; core
//! only fixes the shape. Operations are async because they wait on peers.
//!
//! Data is a [`Tensor`] / [`TensorMut`]: a host slice, or a device buffer
//! with the device that owns it. A communicator that cannot read a device's
//! memory stages it through the host, and says so in [`Collective::explain`].

use std::fmt;
use std::ops::Range;

use async_trait::async_trait;

use crate::dtype::{DType, HostSlice, HostSliceMut, ReduceOp};
use crate::dyn_device::{DynBuffer, DynDevice};
use crate::error::{Error, Result};

/// Read-only collective input: host memory or a device buffer.
#[derive(Debug, Clone, Copy)]
pub enum Tensor<'a> {
    Host(HostSlice<'a>),
    Device {
        device: &'a dyn DynDevice,
        buffer: &'a dyn DynBuffer,
    },
}

/// Writable collective data: host memory or a device buffer.
#[derive(Debug)]
pub enum TensorMut<'a> {
    Host(HostSliceMut<'a>),
    Device {
        device: &'a dyn DynDevice,
        buffer: &'a mut dyn DynBuffer,
    },
}

impl Tensor<'_> {
    pub fn dtype(&self) -> DType {
        match self {
            Tensor::Host(s) => s.dtype(),
            Tensor::Device { buffer, .. } => buffer.dtype(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Tensor::Host(s) => s.len(),
            Tensor::Device { buffer, .. } => buffer.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TensorMut<'_> {
    pub fn dtype(&self) -> DType {
        match self {
            TensorMut::Host(s) => s.dtype(),
            TensorMut::Device { buffer, .. } => buffer.dtype(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TensorMut::Host(s) => s.len(),
            TensorMut::Device { buffer, .. } => buffer.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reborrow, so the tensor can be passed to a call and used again afterwards.
    pub fn reborrow(&mut self) -> TensorMut<'_> {
        match self {
            TensorMut::Host(s) => TensorMut::Host(s.reborrow()),
            TensorMut::Device { device, buffer } => TensorMut::Device {
                device: *device,
                buffer: &mut **buffer,
            },
        }
    }
}

impl<'a> From<HostSlice<'a>> for Tensor<'a> {
    fn from(s: HostSlice<'a>) -> Self {
        Tensor::Host(s)
    }
}

impl<'a> From<HostSliceMut<'a>> for TensorMut<'a> {
    fn from(s: HostSliceMut<'a>) -> Self {
        TensorMut::Host(s)
    }
}

/// The element range of rank `rank`'s chunk when `len` elements are split over
/// `size` ranks: the first `len % size` ranks get one element more. Every
/// collective of hetero splits this way, so reduce-scatter output sizes are
/// predictable for any length (not only multiples of `size`).
pub fn chunk_range(len: usize, size: usize, rank: usize) -> Range<usize> {
    if size == 0 {
        return 0..0;
    }
    let base = len / size;
    let extra = len % size;
    let start = rank * base + rank.min(extra);
    let end = start + base + usize::from(rank < extra);
    start.min(len)..end.min(len)
}

/// Check a collective's argument shapes; `field` names the argument.
pub fn check_len(field: &str, actual: usize, expected: usize) -> Result<()> {
    if actual == expected {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("holds {actual} elements, this collective needs {expected}"),
        ))
    }
}

/// A communicator of `size` ranks, of which this is rank `rank`.
///
/// Every rank must call the same operations in the same order with matching
/// dtypes and lengths (as with MPI and NCCL). Results are identical on every
/// rank that receives them. A peer that fails surfaces as
/// [`Error::PeerFailure`] or [`Error::Timeout`], never a hang without end.
#[async_trait]
pub trait Collective: Send + Sync + fmt::Debug {
    fn rank(&self) -> usize;

    fn size(&self) -> usize;

    /// In-place all-reduce: every rank ends with `op` over all ranks' `data`.
    async fn all_reduce(&self, data: TensorMut<'_>, op: ReduceOp) -> Result<()>;

    /// Reduce `input` (same length on every rank) and leave this rank's chunk
    /// ([`chunk_range`]) of the result in `output`.
    async fn reduce_scatter(
        &self,
        input: Tensor<'_>,
        output: TensorMut<'_>,
        op: ReduceOp,
    ) -> Result<()>;

    /// Concatenate every rank's `input` (each of length
    /// `chunk_range(output.len(), size, rank).len()`) into `output` on every rank.
    async fn all_gather(&self, input: Tensor<'_>, output: TensorMut<'_>) -> Result<()>;

    /// Copy `root`'s `data` into `data` on every rank.
    async fn broadcast(&self, data: TensorMut<'_>, root: usize) -> Result<()>;

    /// In-place reduce to `root`: `root`'s `data` ends with the result; the
    /// other ranks' `data` is left unspecified (it may hold partial sums).
    async fn reduce(&self, data: TensorMut<'_>, op: ReduceOp, root: usize) -> Result<()>;

    /// Return once every rank has entered the barrier.
    async fn barrier(&self) -> Result<()>;

    /// One paragraph: which algorithm(s) and data path this communicator uses
    /// (for example "ring over TCP, device buffers staged through the host").
    fn explain(&self) -> String;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn chunks_tile_the_range(len in 0usize..10_000, size in 1usize..64) {
            let mut next = 0;
            for rank in 0..size {
                let r = chunk_range(len, size, rank);
                prop_assert_eq!(r.start, next);
                prop_assert!(r.len() == len / size || r.len() == len / size + 1);
                next = r.end;
            }
            prop_assert_eq!(next, len);
        }
    }
}
