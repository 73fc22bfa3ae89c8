//! Host buffers: typed views over 8-byte-aligned storage, accounted against
//! their device's budget until dropped.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hetero_core::{DType, DeviceBuffer, DeviceId, Element, Error, Result};

/// The budget ledger shared by a device and its buffers.
#[derive(Debug)]
pub(crate) struct Ledger {
    pub(crate) device: DeviceId,
    pub(crate) budget: u64,
    pub(crate) allocated: AtomicU64,
}

impl Ledger {
    /// Reserve `bytes` against the budget, or fail with `OutOfMemory`.
    pub(crate) fn reserve(&self, bytes: u64) -> Result<()> {
        self.allocated
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes)
                    .filter(|&total| total <= self.budget)
            })
            .map(|_| ())
            .map_err(|used| Error::OutOfMemory {
                device: self.device,
                requested_bytes: bytes,
                available_bytes: Some(self.budget.saturating_sub(used)),
            })
    }

    pub(crate) fn release(&self, bytes: u64) {
        self.allocated.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// A buffer in host memory owned by a [`crate::HostDevice`].
pub struct HostBuffer {
    // u64 words, so every dtype's view is aligned.
    words: Vec<u64>,
    dtype: DType,
    len: usize,
    ledger: Arc<Ledger>,
    reserved: u64,
}

impl fmt::Debug for HostBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostBuffer")
            .field("device", &self.ledger.device)
            .field("dtype", &self.dtype)
            .field("len", &self.len)
            .finish()
    }
}

impl HostBuffer {
    /// Zero-filled buffer, reserved against `ledger`'s budget.
    pub(crate) fn zeroed(ledger: &Arc<Ledger>, dtype: DType, len: usize) -> Result<Self> {
        let too_big = || Error::OutOfMemory {
            device: ledger.device,
            requested_bytes: u64::MAX,
            available_bytes: Some(
                ledger
                    .budget
                    .saturating_sub(ledger.allocated.load(Ordering::Acquire)),
            ),
        };
        let bytes = len.checked_mul(dtype.size_bytes()).ok_or_else(too_big)?;
        let reserved = u64::try_from(bytes).map_err(|_| too_big())?;
        ledger.reserve(reserved)?;
        let n_words = bytes.div_ceil(8);
        let mut words = Vec::new();
        if words.try_reserve_exact(n_words).is_err() {
            ledger.release(reserved);
            return Err(Error::OutOfMemory {
                device: ledger.device,
                requested_bytes: reserved,
                available_bytes: None,
            });
        }
        words.resize(n_words, 0);
        Ok(HostBuffer {
            words,
            dtype,
            len,
            ledger: Arc::clone(ledger),
            reserved,
        })
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len * self.dtype.size_bytes()]
    }

    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        let n = self.len * self.dtype.size_bytes();
        &mut bytemuck::cast_slice_mut(&mut self.words)[..n]
    }

    /// The elements as `T`; an error if `T` is not this buffer's dtype.
    pub fn typed<T: Element>(&self) -> Result<&[T]> {
        self.check::<T>()?;
        Ok(&bytemuck::cast_slice(&self.words)[..self.len])
    }

    pub fn typed_mut<T: Element>(&mut self) -> Result<&mut [T]> {
        self.check::<T>()?;
        let len = self.len;
        Ok(&mut bytemuck::cast_slice_mut(&mut self.words)[..len])
    }

    fn check<T: Element>(&self) -> Result<()> {
        if T::DTYPE == self.dtype {
            Ok(())
        } else {
            Err(Error::invalid(
                "buffer dtype",
                format!("buffer holds {}, accessed as {}", self.dtype, T::DTYPE),
            ))
        }
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        self.ledger.release(self.reserved);
    }
}

impl DeviceBuffer for HostBuffer {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.len
    }
    fn device(&self) -> DeviceId {
        self.ledger.device
    }
}
