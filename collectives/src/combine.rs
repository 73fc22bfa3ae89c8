//! Reductions on raw bytes: what a rank does with the bytes a peer sent
//! (combine them into its own with core's host kernels) and the final step
//! of a reduction (`Avg` divides by the number of contributions).

use hetero_core::host_kernels::{Arith, combine, finish};
use hetero_core::{DType, Error, ReduceOp, Result};

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
