//! Staging: host memory aligned for every dtype ([`Staged`]), typed views
//! of aligned bytes, and copies of a tensor (host slice or device buffer)
//! into and out of host memory, so the algorithms work on host bytes
//! whatever the tensor lives on.

use hetero_core::{DType, Error, HostSlice, HostSliceMut, Result, Tensor, TensorMut};

/// Host memory aligned for every dtype (8 bytes), holding `len` elements.
#[derive(Debug)]
pub struct Staged {
    words: Vec<u64>,
    bytes: usize,
    dtype: DType,
}

impl Staged {
    pub fn zeroed(dtype: DType, len: usize) -> Self {
        let bytes = len * dtype.size_bytes();
        Staged {
            words: vec![0u64; bytes.div_ceil(8)],
            bytes,
            dtype,
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn len(&self) -> usize {
        self.bytes / self.dtype.size_bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.bytes]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.words)[..self.bytes]
    }

    pub fn host(&self) -> Result<HostSlice<'_>> {
        host_view(self.dtype, self.bytes())
    }

    pub fn host_mut(&mut self) -> Result<HostSliceMut<'_>> {
        let dtype = self.dtype;
        host_view_mut(dtype, self.bytes_mut())
    }
}

/// A typed view of aligned bytes.
pub fn host_view(dtype: DType, bytes: &[u8]) -> Result<HostSlice<'_>> {
    hetero_core::with_dtype!(dtype, T => {
        let t: &[T] = bytemuck::try_cast_slice(bytes)
            .map_err(|e| Error::invalid("buffer", format!("not a {dtype} view: {e}")))?;
        Ok(HostSlice::new(t))
    })
}

/// A typed mutable view of aligned bytes.
pub fn host_view_mut(dtype: DType, bytes: &mut [u8]) -> Result<HostSliceMut<'_>> {
    hetero_core::with_dtype!(dtype, T => {
        let t: &mut [T] = bytemuck::try_cast_slice_mut(bytes)
            .map_err(|e| Error::invalid("buffer", format!("not a {dtype} view: {e}")))?;
        Ok(HostSliceMut::new(t))
    })
}

/// Copy a tensor's contents into host memory (device buffers are downloaded).
pub fn read_tensor(t: &Tensor<'_>) -> Result<Staged> {
    let mut s = Staged::zeroed(t.dtype(), t.len());
    match t {
        Tensor::Host(h) => s.bytes_mut().copy_from_slice(h.as_bytes()),
        Tensor::Device { device, buffer } => {
            if !s.is_empty() {
                device.download(*buffer, 0, s.host_mut()?)?;
            }
        }
    }
    Ok(s)
}

/// Copy a tensor's contents into staging, for read-modify-write.
pub fn read_tensor_mut(t: &TensorMut<'_>) -> Result<Staged> {
    let mut s = Staged::zeroed(t.dtype(), t.len());
    match t {
        TensorMut::Host(h) => s.bytes_mut().copy_from_slice(h.as_bytes()),
        TensorMut::Device { device, buffer } => {
            if !s.is_empty() {
                device.download(&**buffer, 0, s.host_mut()?)?;
            }
        }
    }
    Ok(s)
}

/// Write staged host memory back into a tensor (device buffers are uploaded).
pub fn write_tensor(t: &mut TensorMut<'_>, s: &Staged) -> Result<()> {
    match t {
        TensorMut::Host(h) => h.as_bytes_mut().copy_from_slice(s.bytes()),
        TensorMut::Device { device, buffer } => {
            if !s.is_empty() {
                device.upload(&mut **buffer, 0, s.host()?)?;
            }
        }
    }
    Ok(())
}
