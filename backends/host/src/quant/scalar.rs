//! Portable dot product of one quantized weight row with an f32
//! activation row: each block dequantized exactly (core's
//! [`QuantType::dequantize_block`]) into a scratch block, then multiplied.

use hetero_core::QuantType;

/// Sum over the blocks of weight row `w` (any `quant`) times `x`.
pub(crate) fn dot(quant: QuantType, w: &[u8], x: &[f32]) -> f32 {
    let mut block = [0.0f32; 256];
    let be = quant.block_elems();
    let mut acc = 0.0f32;
    for (blk, xb) in w.chunks_exact(quant.block_bytes()).zip(x.chunks_exact(be)) {
        quant.dequantize_block(blk, &mut block[..be]);
        acc += crate::gemv::dot(xb, &block[..be]);
    }
    acc
}
