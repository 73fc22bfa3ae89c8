//! Dequantization to f32, exactly as ggml's `dequantize_row_*` functions
//! compute it: the same block layouts and the same f32 operations in the
//! same order (so results match ggml, and gguf-py, bit for bit). Each
//! function takes whole blocks; the caller has checked the byte length.
//!
//! Layouts (little-endian, `d`/`m`/`dmin` are f16):
//! - Q8_0 (32 elements, 34 bytes): d, 32 x i8; x = q * d.
//! - Q4_0 (32, 18): d, 16 bytes; element j < 16 is the low nibble of byte
//!   j, element j + 16 its high nibble; x = (q - 8) * d.
//! - Q4_1 (32, 20): d, m, 16 bytes of nibbles as Q4_0; x = q * d + m.
//! - Q4_K (256, 144): d, dmin, 12 bytes of eight 6-bit scales and eight
//!   6-bit mins, 128 bytes of nibbles: four groups of 64 elements, each 32
//!   bytes whose low nibbles are sub-block 2g and high nibbles 2g + 1;
//!   x = d * sc * q - dmin * m.
//! - Q5_K (256, 176): as Q4_K with a 32-byte `qh` before the nibbles: bit
//!   2g of qh[l] is the fifth bit of element l of sub-block 2g, bit 2g + 1
//!   of sub-block 2g + 1.
//! - Q6_K (256, 210): 128 bytes `ql` (low 4 bits), 64 bytes `qh` (high 2
//!   bits), 16 x i8 scales (one per 16 elements), then d;
//!   x = d * scale * (q - 32).

use half::{bf16, f16};

use super::types::GgmlType;

const QK_K: usize = 256;

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
        GgmlType::Q8_0 => bytes.chunks_exact(34).for_each(|b| q8_0(b, out)),
        GgmlType::Q4_0 => bytes.chunks_exact(18).for_each(|b| q4_0(b, out)),
        GgmlType::Q4_1 => bytes.chunks_exact(20).for_each(|b| q4_1(b, out)),
        GgmlType::Q4K => bytes.chunks_exact(144).for_each(|b| q4_k(b, out)),
        GgmlType::Q5K => bytes.chunks_exact(176).for_each(|b| q5_k(b, out)),
        GgmlType::Q6K => bytes.chunks_exact(210).for_each(|b| q6_k(b, out)),
        _ => return None,
    }
    Some(())
}

fn q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 0);
    out.extend(b[2..34].iter().map(|&q| f32::from(q as i8) * d));
}

fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 0);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|&q| f32::from((q & 0x0F) as i8 - 8) * d));
    out.extend(qs.iter().map(|&q| f32::from((q >> 4) as i8 - 8) * d));
}

fn q4_1(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 0);
    let m = half(b, 2);
    let qs = &b[4..20];
    out.extend(qs.iter().map(|&q| f32::from(q & 0x0F) * d + m));
    out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
}

/// Scale and min of sub-block `j` (0..8) from K-quants' 12 packed bytes:
/// bytes 0..4 hold the low 6 bits of scales 0..4 (top 2 bits: high bits of
/// scales 4..8), bytes 4..8 the same for mins, bytes 8..12 the low 4 bits
/// of scales 4..8 (low nibble) and mins 4..8 (high nibble).
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 0);
    let dmin = half(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for g in 0..4 {
        let q = &qs[32 * g..32 * g + 32];
        for (sub, shift) in [(2 * g, 0), (2 * g + 1, 4)] {
            let (sc, m) = scale_min_k4(sub, scales);
            let d1 = d * f32::from(sc);
            let m1 = dmin * f32::from(m);
            out.extend(q.iter().map(|&x| d1 * f32::from((x >> shift) & 0x0F) - m1));
        }
    }
}

fn q5_k(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 0);
    let dmin = half(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for g in 0..4 {
        let q = &qs[32 * g..32 * g + 32];
        for (sub, shift) in [(2 * g, 0), (2 * g + 1, 4)] {
            let (sc, m) = scale_min_k4(sub, scales);
            let d1 = d * f32::from(sc);
            let m1 = dmin * f32::from(m);
            let high_bit = 1u8 << sub;
            out.extend(q.iter().zip(qh).map(|(&x, &h)| {
                let hi = if h & high_bit != 0 { 16 } else { 0 };
                d1 * f32::from(((x >> shift) & 0x0F) + hi) - m1
            }));
        }
    }
}

fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 208);
    let start = out.len();
    out.resize(start + QK_K, 0.0);
    let y = &mut out[start..];
    // Two halves of 128 elements, each from 64 bytes of ql, 32 of qh and
    // 8 scales; element l + 32k of a half takes the nibble and the 2-bit
    // pair that ggml's interleaving assigns to it.
    for half_idx in 0..2 {
        let ql = &b[64 * half_idx..64 * half_idx + 64];
        let qh = &b[128 + 32 * half_idx..128 + 32 * half_idx + 32];
        let sc = &b[192 + 8 * half_idx..192 + 8 * half_idx + 8];
        let y = &mut y[128 * half_idx..128 * half_idx + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            let s = |k: usize| d * f32::from(sc[is + k] as i8);
            y[l] = s(0) * f32::from(q1);
            y[l + 32] = s(2) * f32::from(q2);
            y[l + 64] = s(4) * f32::from(q3);
            y[l + 96] = s(6) * f32::from(q4);
        }
    }
}
