//! Dequantization to f32, exactly as ggml's `dequantize_row_*` functions
//! compute it: the same block layouts and the same f32 operations in the
//! same order (so results match ggml, and gguf-py, bit for bit). Each
//! function takes whole blocks; the caller has checked the byte length.
//!
//! The block formats are core's [`QuantType`]: their layouts and
//! dequantization live there, shared with the devices' quantized kernels.

use half::{bf16, f16};
use hetero_core::QuantType;

use super::types::GgmlType;

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dequantizes `bytes` of type `ty` onto the end of `out`. `None` when the
/// type is not one this module handles; `bytes` must be whole blocks.
pub(crate) fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut Vec<f32>) -> Option<()> {
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|c| half(c, 0))),
        GgmlType::Bf16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => QuantType::Q8_0.dequantize(bytes, out),
        GgmlType::Q4_0 => QuantType::Q4_0.dequantize(bytes, out),
        GgmlType::Q4_1 => QuantType::Q4_1.dequantize(bytes, out),
        GgmlType::Q4K => QuantType::Q4K.dequantize(bytes, out),
        GgmlType::Q5K => QuantType::Q5K.dequantize(bytes, out),
        GgmlType::Q6K => QuantType::Q6K.dequantize(bytes, out),
        _ => return None,
    }
    Some(())
}
