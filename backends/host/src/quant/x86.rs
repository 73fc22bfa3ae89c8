//! AVX2 dot products of one quantized weight row with up to four
//! activation rows at once (each weight block is unpacked once for all of
//! them): `maddubs` multiplies unsigned by signed bytes into 16-bit pairs,
//! `madd` sums those into 32-bit lanes, and the per-block scale product
//! goes into an f32 accumulator with one FMA, as ggml's AVX2 kernels do.
//! The same integer sums as [`super::scalar`], which the tests compare.

use std::arch::x86_64::*;

use hetero_core::QuantType;

use super::act::{BLOCK, RowView};

/// Whether this CPU runs the kernels of this module.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// `out[r] = dot(w, xs[r])` for `R` activation rows.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C ([`available`]); `w` holds whole
/// blocks of `quant` (Q8_0, Q4_0 or Q4_1) and every row of `xs` as many
/// 32-element blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_rows<const R: usize>(
    quant: QuantType,
    w: &[u8],
    xs: [RowView<'_>; R],
) -> [f32; R] {
    let bb = quant.block_bytes();
    let nb = w.len() / bb;
    let ones = _mm256_set1_epi16(1);
    let mask = _mm_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut offsets = [0.0f32; R];
    for b in 0..nb {
        let blk = &w[b * bb..(b + 1) * bb];
        let dw = f16_at(blk, 0);
        let offset = match quant {
            QuantType::Q4_0 => -8.0 * dw,
            QuantType::Q4_1 => f16_at(blk, 2),
            _ => 0.0,
        };
        // SAFETY (loads below): blk has bb bytes, the quants end at bb, and
        // each activation row has BLOCK values at b * BLOCK.
        let qs_start = bb - if quant == QuantType::Q8_0 { 32 } else { 16 };
        let (wu, wsign) = if quant == QuantType::Q8_0 {
            let wv = unsafe { _mm256_loadu_si256(blk.as_ptr().add(qs_start).cast()) };
            (_mm256_sign_epi8(wv, wv), Some(wv))
        } else {
            let raw = unsafe { _mm_loadu_si128(blk.as_ptr().add(qs_start).cast()) };
            let lo = _mm_and_si128(raw, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
            (_mm256_set_m128i(hi, lo), None)
        };
        for r in 0..R {
            let x = xs[r];
            let xv = unsafe { _mm256_loadu_si256(x.q.as_ptr().add(b * BLOCK).cast()) };
            // Q8_0's weights are signed: |w| times x with w's sign.
            let xv = match wsign {
                Some(ws) => _mm256_sign_epi8(xv, ws),
                None => xv,
            };
            let pairs = _mm256_maddubs_epi16(wu, xv);
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
            acc[r] = _mm256_fmadd_ps(sums, _mm256_set1_ps(dw * x.d[b]), acc[r]);
            offsets[r] += offset * x.s[b];
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = hsum(acc[r]) + offsets[r];
    }
    out
}

/// The f16 at `b[at..at + 2]` as f32 (F16C).
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_at(b: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([b[at], b[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}
