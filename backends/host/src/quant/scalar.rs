//! Portable dot products of one quantized weight row with activations:
//! integer sums per block for the 32-element formats (against
//! [`QuantizedRows`](super::act::QuantizedRows)), exactly the arithmetic
//! of the SIMD paths, which are checked against these.

use hetero_core::QuantType;
use hetero_core::half::f16;

use super::act::{BLOCK, RowView};

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Sum over the blocks of weight row `w` (`quant`: Q8_0, Q4_0 or Q4_1) and
/// activation row `x`.
pub(crate) fn dot(quant: QuantType, w: &[u8], x: RowView<'_>) -> f32 {
    let mut acc = 0.0f32;
    for (b, blk) in w.chunks_exact(quant.block_bytes()).enumerate() {
        let xq = &x.q[b * BLOCK..(b + 1) * BLOCK];
        let dw = half(blk, 0);
        acc += match quant {
            QuantType::Q8_0 => {
                let sumi: i32 = blk[2..34]
                    .iter()
                    .zip(xq)
                    .map(|(&w, &x)| i32::from(w as i8) * i32::from(x))
                    .sum();
                dw * x.d[b] * sumi as f32
            }
            QuantType::Q4_0 | QuantType::Q4_1 => {
                let nibbles = &blk[blk.len() - 16..];
                let (lo, hi) = xq.split_at(16);
                let sumi: i32 = nibbles
                    .iter()
                    .zip(lo.iter().zip(hi))
                    .map(|(&q, (&l, &h))| {
                        i32::from(q & 0x0F) * i32::from(l) + i32::from(q >> 4) * i32::from(h)
                    })
                    .sum();
                // Q4_0 stores q - 8; Q4_1 adds its minimum m: both are a
                // multiple of the block's sum of activations, s = d * sum(q).
                let offset = if quant == QuantType::Q4_0 {
                    -8.0 * dw
                } else {
                    half(blk, 2)
                };
                dw * x.d[b] * sumi as f32 + offset * x.s[b]
            }
            _ => unreachable!("dot is only called for the 32-element formats"),
        };
    }
    acc
}
