//! Element types, reduction operators and typed views of host memory.

use std::fmt;

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Element type of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I32,
    I64,
    U8,
}

impl DType {
    /// Every dtype, in a fixed order (tests iterate over this).
    pub const ALL: [DType; 7] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F64,
        DType::I32,
        DType::I64,
        DType::U8,
    ];

    /// Size of one element in bytes.
    pub const fn size_bytes(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }

    /// True for the floating-point dtypes.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    }

    /// Lower-case name, as in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F64 => "f64",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Elementwise reduction operator.
///
/// `Avg` follows NCCL's model: partial results accumulate as a sum and the
/// final step divides by the number of contributions (see
/// [`crate::Device::finish_reduce`]). Integer sums and products wrap; integer
/// averages divide with truncation toward zero. `Max`/`Min` on floats ignore a
/// NaN operand when the other is a number (IEEE `maxNum`/`minNum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReduceOp {
    Sum,
    Prod,
    Max,
    Min,
    Avg,
}

impl ReduceOp {
    /// Every operator, in a fixed order.
    pub const ALL: [ReduceOp; 5] = [
        ReduceOp::Sum,
        ReduceOp::Prod,
        ReduceOp::Max,
        ReduceOp::Min,
        ReduceOp::Avg,
    ];

    /// The operator used to combine partial results (`Avg` combines as `Sum`).
    pub const fn combine_op(self) -> ReduceOp {
        match self {
            ReduceOp::Avg => ReduceOp::Sum,
            other => other,
        }
    }

    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Prod => "prod",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::Avg => "avg",
        }
    }
}

impl fmt::Display for ReduceOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A Rust type that is one of the [`DType`]s. Sealed: the set is fixed.
pub trait Element:
    bytemuck::Pod + Copy + Send + Sync + PartialEq + fmt::Debug + sealed::Sealed + 'static
{
    /// The dtype of this element type.
    const DTYPE: DType;
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t { const DTYPE: DType = DType::$d; }
    )*};
}
element!(f32 => F32, f16 => F16, bf16 => BF16, f64 => F64, i32 => I32, i64 => I64, u8 => U8);

/// A typed, read-only view of host memory, as the collective and device APIs take it.
///
/// Built from a `&[T]` with `T: Element`, so the bytes are always correctly
/// aligned for the dtype.
#[derive(Debug, Clone, Copy)]
pub struct HostSlice<'a> {
    dtype: DType,
    bytes: &'a [u8],
}

/// A typed, writable view of host memory. See [`HostSlice`].
#[derive(Debug)]
pub struct HostSliceMut<'a> {
    dtype: DType,
    bytes: &'a mut [u8],
}

impl<'a> HostSlice<'a> {
    /// View a typed slice.
    pub fn new<T: Element>(data: &'a [T]) -> Self {
        HostSlice {
            dtype: T::DTYPE,
            bytes: bytemuck::cast_slice(data),
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size_bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The raw bytes (native endianness).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The elements as `T`; an error if `T` is not this slice's dtype.
    pub fn typed<T: Element>(&self) -> Result<&'a [T]> {
        check_dtype::<T>(self.dtype)?;
        bytemuck::try_cast_slice(self.bytes)
            .map_err(|e| Error::invalid("host slice", format!("cannot view as {}: {e}", T::DTYPE)))
    }

    /// Elements `range` of this slice.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Result<HostSlice<'a>> {
        let bytes = byte_range(self.dtype, self.len(), range)?;
        Ok(HostSlice {
            dtype: self.dtype,
            bytes: &self.bytes[bytes],
        })
    }
}

impl<'a> HostSliceMut<'a> {
    /// View a typed mutable slice.
    pub fn new<T: Element>(data: &'a mut [T]) -> Self {
        HostSliceMut {
            dtype: T::DTYPE,
            bytes: bytemuck::cast_slice_mut(data),
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size_bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.bytes
    }

    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        self.bytes
    }

    /// A read-only view of the same memory.
    pub fn as_slice(&self) -> HostSlice<'_> {
        HostSlice {
            dtype: self.dtype,
            bytes: self.bytes,
        }
    }

    /// Reborrow, so the view can be passed on and used again afterwards.
    pub fn reborrow(&mut self) -> HostSliceMut<'_> {
        HostSliceMut {
            dtype: self.dtype,
            bytes: self.bytes,
        }
    }

    /// The elements as `T`; an error if `T` is not this slice's dtype.
    pub fn typed_mut<T: Element>(&mut self) -> Result<&mut [T]> {
        check_dtype::<T>(self.dtype)?;
        bytemuck::try_cast_slice_mut(self.bytes)
            .map_err(|e| Error::invalid("host slice", format!("cannot view as {}: {e}", T::DTYPE)))
    }

    /// Elements `range` of this slice.
    pub fn slice_mut(&mut self, range: std::ops::Range<usize>) -> Result<HostSliceMut<'_>> {
        let bytes = byte_range(self.dtype, self.len(), range)?;
        Ok(HostSliceMut {
            dtype: self.dtype,
            bytes: &mut self.bytes[bytes],
        })
    }
}

impl<'a, T: Element> From<&'a [T]> for HostSlice<'a> {
    fn from(v: &'a [T]) -> Self {
        HostSlice::new(v)
    }
}

impl<'a, T: Element> From<&'a mut [T]> for HostSliceMut<'a> {
    fn from(v: &'a mut [T]) -> Self {
        HostSliceMut::new(v)
    }
}

fn check_dtype<T: Element>(actual: DType) -> Result<()> {
    if T::DTYPE == actual {
        Ok(())
    } else {
        Err(Error::invalid(
            "dtype",
            format!("expected {}, the data is {actual}", T::DTYPE),
        ))
    }
}

fn byte_range(
    dtype: DType,
    len: usize,
    range: std::ops::Range<usize>,
) -> Result<std::ops::Range<usize>> {
    if range.start > range.end || range.end > len {
        return Err(Error::invalid(
            "range",
            format!(
                "{}..{} is outside a slice of {len} elements",
                range.start, range.end
            ),
        ));
    }
    let s = dtype.size_bytes();
    Ok(range.start * s..range.end * s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_slice_checks_dtype_and_ranges() {
        let v = [1.0f32, 2.0, 3.0];
        let s = HostSlice::new(&v);
        assert_eq!(s.len(), 3);
        assert_eq!(s.dtype(), DType::F32);
        assert_eq!(s.typed::<f32>().unwrap(), &v);
        assert!(s.typed::<i32>().is_err());
        assert_eq!(s.slice(1..3).unwrap().typed::<f32>().unwrap(), &[2.0, 3.0]);
        let err = s.slice(2..4).unwrap_err().to_string();
        assert!(err.contains("outside"), "{err}");
    }

    #[test]
    fn dtype_sizes_match_rust_types() {
        assert_eq!(DType::F16.size_bytes(), size_of::<f16>());
        assert_eq!(DType::BF16.size_bytes(), size_of::<bf16>());
        assert_eq!(DType::I64.size_bytes(), size_of::<i64>());
        assert_eq!(
            serde_json::to_string(&DType::BF16).unwrap(),
            "\"bf16\"".to_string()
        );
    }
}
