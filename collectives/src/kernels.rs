//! Byte-level helpers: reduce received bytes with core's host kernels, stage
//! tensors through aligned host memory, frame messages with a header that lets
//! ranks detect disagreement about the operation, dtype or length.

use hetero_core::host_kernels::{Arith, combine, finish};
use hetero_core::{DType, Error, HostSlice, HostSliceMut, ReduceOp, Result, Tensor, TensorMut};

use crate::error::CollectiveError;

/// `acc = op(acc, src)` elementwise on raw bytes of `dtype` (`Avg` sums).
/// `acc` must be aligned for `dtype` (it is a view of a typed buffer);
/// `src` may be unaligned (it arrived from a peer) and is then copied once.
pub fn combine_bytes(dtype: DType, op: ReduceOp, acc: &mut [u8], src: &[u8]) -> Result<()> {
    hetero_core::with_dtype!(dtype, T => combine_typed::<T>(op, acc, src))
}

fn combine_typed<T: Arith>(op: ReduceOp, acc: &mut [u8], src: &[u8]) -> Result<()> {
    let acc: &mut [T] = bytemuck::try_cast_slice_mut(acc)
        .map_err(|e| Error::invalid("accumulator", format!("not a {} view: {e}", T::DTYPE)))?;
    if src.len() != size_of_val(acc) {
        return Err(Error::invalid(
            "received data",
            format!("{} bytes, expected {}", src.len(), size_of_val(acc)),
        ));
    }
    match bytemuck::try_cast_slice::<u8, T>(src) {
        Ok(s) => combine(op, acc, s),
        Err(_) => {
            let mut copy = vec![<T as bytemuck::Zeroable>::zeroed(); acc.len()];
            bytemuck::cast_slice_mut::<T, u8>(&mut copy).copy_from_slice(src);
            combine(op, acc, &copy)
        }
    }
}

/// Final step of a reduction over `count` contributions (divides for `Avg`).
pub fn finish_bytes(dtype: DType, op: ReduceOp, buf: &mut [u8], count: usize) -> Result<()> {
    if op != ReduceOp::Avg || buf.is_empty() {
        return Ok(());
    }
    hetero_core::with_dtype!(dtype, T => {
        let b: &mut [T] = bytemuck::try_cast_slice_mut(buf)
            .map_err(|e| Error::invalid("buffer", format!("not a {dtype} view: {e}")))?;
        finish::<T>(op, b, count)
    })
}

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

/// Which collective a message belongs to (checked on receipt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpKind {
    AllReduce = 1,
    ReduceScatter = 2,
    AllGather = 3,
    Broadcast = 4,
    Reduce = 5,
    Barrier = 6,
    Probe = 7,
}

impl OpKind {
    fn name(v: u8) -> String {
        match v {
            1 => "all_reduce",
            2 => "reduce_scatter",
            3 => "all_gather",
            4 => "broadcast",
            5 => "reduce",
            6 => "barrier",
            7 => "probe",
            _ => "unknown",
        }
        .to_string()
    }
}

fn dtype_code(d: DType) -> u8 {
    DType::ALL
        .iter()
        .position(|&x| x == d)
        .map_or(255, |i| i as u8)
}

fn dtype_name(c: u8) -> String {
    DType::ALL
        .get(usize::from(c))
        .map_or_else(|| format!("dtype code {c}"), |d| d.to_string())
}

fn op_code(op: ReduceOp) -> u8 {
    ReduceOp::ALL
        .iter()
        .position(|&x| x == op)
        .map_or(255, |i| i as u8)
}

fn op_name(c: u8) -> String {
    ReduceOp::ALL
        .get(usize::from(c))
        .map_or_else(|| "none".to_string(), |d| d.to_string())
}

pub const HEADER: usize = 16;

/// What every message of one collective call carries, so a rank can check
/// its peer called the same thing: op, dtype, reduce op, total element count.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub kind: OpKind,
    pub dtype: DType,
    pub op: Option<ReduceOp>,
    pub len: u64,
}

impl Header {
    fn bytes(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[0] = self.kind as u8;
        h[1] = dtype_code(self.dtype);
        h[2] = self.op.map_or(255, op_code);
        h[8..16].copy_from_slice(&self.len.to_le_bytes());
        h
    }

    /// A message: header followed by `payload`.
    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER + payload.len());
        v.extend_from_slice(&self.bytes());
        v.extend_from_slice(payload);
        v
    }

    /// Like [`Header::frame`], into `v` (cleared first; keeps its allocation).
    pub fn frame_into(&self, v: &mut Vec<u8>, payload: &[u8]) {
        v.clear();
        v.extend_from_slice(&self.bytes());
        v.extend_from_slice(payload);
    }

    /// Check `msg` from `peer` has this header and `payload_bytes` of payload;
    /// return the payload.
    pub fn open<'m>(
        &self,
        rank: usize,
        peer: usize,
        msg: &'m [u8],
        payload_bytes: usize,
    ) -> Result<&'m [u8]> {
        let Some((h, payload)) = msg.split_first_chunk::<HEADER>() else {
            return Err(CollectiveError::Protocol {
                peer,
                reason: format!("{} bytes, shorter than a header", msg.len()),
            }
            .into());
        };
        let mine = self.bytes();
        let mismatch = |field, m: String, t: String| -> Error {
            CollectiveError::Mismatch {
                field,
                rank,
                peer,
                mine: m,
                theirs: t,
            }
            .into()
        };
        if h[0] != mine[0] {
            return Err(mismatch(
                "operation",
                OpKind::name(mine[0]),
                OpKind::name(h[0]),
            ));
        }
        if h[1] != mine[1] {
            return Err(mismatch("dtype", dtype_name(mine[1]), dtype_name(h[1])));
        }
        if h[2] != mine[2] {
            return Err(mismatch("reduce op", op_name(mine[2]), op_name(h[2])));
        }
        if h[8..16] != mine[8..16] {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[8..16]);
            return Err(mismatch(
                "element count",
                self.len.to_string(),
                u64::from_le_bytes(b).to_string(),
            ));
        }
        if payload.len() != payload_bytes {
            return Err(CollectiveError::Protocol {
                peer,
                reason: format!(
                    "payload of {} bytes, expected {payload_bytes}",
                    payload.len()
                ),
            }
            .into());
        }
        Ok(payload)
    }
}
