//! Elementwise kernels on host slices, for every dtype and [`ReduceOp`].
//!
//! The host backend runs these on its threads; collectives use them to reduce
//! data that has arrived in host memory; backends without a kernel compiler
//! may stage through them (and must say so). The operator `match` sits outside
//! each loop so that the compiler vectorises the loop body.

use half::{bf16, f16};

use crate::dtype::{DType, Element, HostSlice, HostSliceMut, ReduceOp};
use crate::error::{Error, Result};

/// Arithmetic of one element type, with hetero's semantics (see [`ReduceOp`]).
pub trait Arith: Element {
    fn add(self, other: Self) -> Self;
    fn mul(self, other: Self) -> Self;
    fn max_of(self, other: Self) -> Self;
    fn min_of(self, other: Self) -> Self;
    /// Divide by a positive count (integers truncate toward zero).
    fn div_count(self, count: usize) -> Self;
    /// Multiply by `alpha` (integers: in f64, truncated toward zero, saturating).
    fn scale_by(self, alpha: f64) -> Self;
    /// Convert to f64, for comparisons in tests and for statistics.
    fn to_f64(self) -> f64;
    /// Convert from f64 (rounding / saturating as `as` does).
    fn from_f64(v: f64) -> Self;

    /// `acc[i] = op(acc[i], src[i])` over equal-length slices (`op` is never
    /// `Avg`). The default is one loop per operator, which the compiler
    /// vectorises; 16-bit floats override it to convert blocks at a time.
    fn combine_slice(op: ReduceOp, acc: &mut [Self], src: &[Self]) {
        match op {
            ReduceOp::Prod => acc.iter_mut().zip(src).for_each(|(a, &b)| *a = a.mul(b)),
            ReduceOp::Max => acc.iter_mut().zip(src).for_each(|(a, &b)| *a = a.max_of(b)),
            ReduceOp::Min => acc.iter_mut().zip(src).for_each(|(a, &b)| *a = a.min_of(b)),
            ReduceOp::Sum | ReduceOp::Avg => {
                acc.iter_mut().zip(src).for_each(|(a, &b)| *a = a.add(b))
            }
        }
    }
}

macro_rules! arith_float {
    ($($t:ty),*) => {$(
        impl Arith for $t {
            #[inline] fn add(self, o: Self) -> Self { self + o }
            #[inline] fn mul(self, o: Self) -> Self { self * o }
            #[inline] fn max_of(self, o: Self) -> Self { self.max(o) }
            #[inline] fn min_of(self, o: Self) -> Self { self.min(o) }
            #[inline] fn div_count(self, c: usize) -> Self { self / c as $t }
            #[inline] fn scale_by(self, a: f64) -> Self { self * a as $t }
            #[inline] fn to_f64(self) -> f64 { self as f64 }
            #[inline] fn from_f64(v: f64) -> Self { v as $t }
        }
    )*};
}
arith_float!(f32, f64);

// 16-bit floats compute in f32 and round once per operation, as their
// hardware units do.
macro_rules! arith_half {
    ($($t:ty),*) => {$(
        impl Arith for $t {
            #[inline] fn add(self, o: Self) -> Self { <$t>::from_f32(self.to_f32() + o.to_f32()) }
            #[inline] fn mul(self, o: Self) -> Self { <$t>::from_f32(self.to_f32() * o.to_f32()) }
            #[inline] fn max_of(self, o: Self) -> Self { <$t>::from_f32(self.to_f32().max(o.to_f32())) }
            #[inline] fn min_of(self, o: Self) -> Self { <$t>::from_f32(self.to_f32().min(o.to_f32())) }
            #[inline] fn div_count(self, c: usize) -> Self { <$t>::from_f32(self.to_f32() / c as f32) }
            #[inline] fn scale_by(self, a: f64) -> Self { <$t>::from_f32(self.to_f32() * a as f32) }
            #[inline] fn to_f64(self) -> f64 { self.to_f64() }
            #[inline] fn from_f64(v: f64) -> Self { <$t>::from_f64(v) }

            fn combine_slice(op: ReduceOp, acc: &mut [Self], src: &[Self]) {
                use half::slice::HalfFloatSliceExt;
                // Blocks converted with the library's (SIMD where available)
                // slice conversions; same arithmetic as the scalar methods:
                // compute in f32, round once.
                const BLOCK: usize = 256;
                let mut a32 = [0f32; BLOCK];
                let mut b32 = [0f32; BLOCK];
                for (a, b) in acc.chunks_mut(BLOCK).zip(src.chunks(BLOCK)) {
                    let n = a.len();
                    a.convert_to_f32_slice(&mut a32[..n]);
                    b.convert_to_f32_slice(&mut b32[..n]);
                    let (x, y) = (&mut a32[..n], &b32[..n]);
                    match op {
                        ReduceOp::Prod => x.iter_mut().zip(y).for_each(|(p, q)| *p *= q),
                        ReduceOp::Max => x.iter_mut().zip(y).for_each(|(p, q)| *p = p.max(*q)),
                        ReduceOp::Min => x.iter_mut().zip(y).for_each(|(p, q)| *p = p.min(*q)),
                        ReduceOp::Sum | ReduceOp::Avg => x.iter_mut().zip(y).for_each(|(p, q)| *p += q),
                    }
                    a.convert_from_f32_slice(x);
                }
            }
        }
    )*};
}
arith_half!(f16, bf16);

macro_rules! arith_int {
    ($($t:ty),*) => {$(
        impl Arith for $t {
            #[inline] fn add(self, o: Self) -> Self { self.wrapping_add(o) }
            #[inline] fn mul(self, o: Self) -> Self { self.wrapping_mul(o) }
            #[inline] fn max_of(self, o: Self) -> Self { Ord::max(self, o) }
            #[inline] fn min_of(self, o: Self) -> Self { Ord::min(self, o) }
            #[inline] fn div_count(self, c: usize) -> Self { (self as i128 / c as i128) as $t }
            #[inline] fn scale_by(self, a: f64) -> Self { (self as f64 * a) as $t }
            #[inline] fn to_f64(self) -> f64 { self as f64 }
            #[inline] fn from_f64(v: f64) -> Self { v as $t }
        }
    )*};
}
arith_int!(i32, i64, u8);

/// `acc[i] = op(acc[i], src[i])`, `Avg` combining as `Sum`. Lengths must match.
pub fn combine<T: Arith>(op: ReduceOp, acc: &mut [T], src: &[T]) -> Result<()> {
    check_lengths(acc.len(), src.len())?;
    T::combine_slice(op.combine_op(), acc, src);
    Ok(())
}

/// Final step of a reduction over `count` contributions (divides for `Avg`).
pub fn finish<T: Arith>(op: ReduceOp, buf: &mut [T], count: usize) -> Result<()> {
    if count == 0 {
        return Err(Error::invalid(
            "count",
            "a reduction needs at least one contribution",
        ));
    }
    if op == ReduceOp::Avg && count > 1 {
        buf.iter_mut().for_each(|x| *x = x.div_count(count));
    }
    Ok(())
}

/// `buf[i] *= alpha`.
pub fn scale<T: Arith>(buf: &mut [T], alpha: f64) {
    buf.iter_mut().for_each(|x| *x = x.scale_by(alpha));
}

fn check_lengths(acc: usize, src: usize) -> Result<()> {
    if acc == src {
        Ok(())
    } else {
        Err(Error::invalid(
            "reduce operands",
            format!("lengths differ: accumulator {acc}, source {src} elements"),
        ))
    }
}

/// Run `$body` with `$T` bound to the Rust type of `$dtype`.
#[macro_export]
macro_rules! with_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F16 => {
                type $T = $crate::half::f16;
                $body
            }
            $crate::DType::BF16 => {
                type $T = $crate::half::bf16;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
            $crate::DType::I32 => {
                type $T = i32;
                $body
            }
            $crate::DType::I64 => {
                type $T = i64;
                $body
            }
            $crate::DType::U8 => {
                type $T = u8;
                $body
            }
        }
    };
}

fn check_dtypes(acc: DType, src: DType) -> Result<()> {
    if acc == src {
        Ok(())
    } else {
        Err(Error::invalid(
            "reduce operands",
            format!("dtypes differ: accumulator {acc}, source {src}"),
        ))
    }
}

/// [`combine`] on untyped host slices of the same dtype.
pub fn combine_host(op: ReduceOp, mut acc: HostSliceMut<'_>, src: HostSlice<'_>) -> Result<()> {
    check_dtypes(acc.dtype(), src.dtype())?;
    with_dtype!(acc.dtype(), T => combine::<T>(op, acc.typed_mut::<T>()?, src.typed::<T>()?))
}

/// [`finish`] on an untyped host slice.
pub fn finish_host(op: ReduceOp, mut buf: HostSliceMut<'_>, count: usize) -> Result<()> {
    with_dtype!(buf.dtype(), T => finish::<T>(op, buf.typed_mut::<T>()?, count))
}

/// [`scale`] on an untyped host slice.
pub fn scale_host(mut buf: HostSliceMut<'_>, alpha: f64) -> Result<()> {
    with_dtype!(buf.dtype(), T => {
        scale::<T>(buf.typed_mut::<T>()?, alpha);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_semantics() {
        let mut a = [i32::MAX, 7, -7];
        combine(ReduceOp::Sum, &mut a, &[1, 0, 0]).unwrap();
        assert_eq!(a[0], i32::MIN, "sums wrap");
        finish(ReduceOp::Avg, &mut a, 2).unwrap();
        assert_eq!(&a[1..], &[3, -3], "averages truncate toward zero");
        let mut u = [200u8];
        scale(&mut u, 2.0);
        assert_eq!(u, [255], "scaling saturates");
    }

    #[test]
    fn float_max_ignores_nan() {
        let mut a = [f32::NAN, 1.0];
        combine(ReduceOp::Max, &mut a, &[2.0, f32::NAN]).unwrap();
        assert_eq!(a, [2.0, 1.0]);
    }

    #[test]
    fn mismatches_are_errors() {
        let mut a = [1.0f32; 3];
        assert!(combine(ReduceOp::Sum, &mut a, &[1.0; 2]).is_err());
        let b = [1i32; 3];
        assert!(
            combine_host(ReduceOp::Sum, HostSliceMut::new(&mut a), HostSlice::new(&b)).is_err()
        );
        assert!(finish(ReduceOp::Avg, &mut a, 0).is_err());
    }
}
