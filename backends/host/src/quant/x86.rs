//! AVX2 dot products of one quantized weight row (Q8_0, Q4_0, Q4_1) with
//! up to four f32 activation rows at once: each 32-element block is
//! widened to f32 in registers once for all of them, and
//! `sum(x * (d q + m)) = d * sum(x q) + m * sum(x)` takes one FMA per
//! block for the scale (the block sums of x are computed once per row).
//! The activations stay f32, so results equal the f32 path up to the
//! order of the additions. [`super::scalar`] computes the same, and the
//! tests compare the two.

use std::arch::x86_64::*;

use hetero_core::QuantType;

/// Whether this CPU runs the kernels of this module.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// `out[r] = dot(w, xs[r])` for `R` activation rows; `sums[r][b]` is the
/// sum of block `b` of `xs[r]`.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C ([`available`]); `w` holds whole
/// blocks of `quant` (Q8_0, Q4_0 or Q4_1), every row of `xs` 32 values per
/// block and every row of `sums` one per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_rows<const R: usize>(
    quant: QuantType,
    w: &[u8],
    xs: [&[f32]; R],
    sums: [&[f32]; R],
) -> [f32; R] {
    let bb = quant.block_bytes();
    let nb = w.len() / bb;
    let mut acc = [_mm256_setzero_ps(); R];
    let mut offsets = [0.0f32; R];
    for b in 0..nb {
        let blk = &w[b * bb..(b + 1) * bb];
        let d = _mm256_set1_ps(f16_at(blk, 0));
        let offset = match quant {
            QuantType::Q4_0 => -8.0 * f16_at(blk, 0),
            QuantType::Q4_1 => f16_at(blk, 2),
            _ => 0.0,
        };
        // SAFETY: blk holds one whole block of quant.
        let q = unsafe { widen(quant, blk) };
        for r in 0..R {
            let x = unsafe { xs[r].as_ptr().add(32 * b) };
            let mut t = _mm256_mul_ps(unsafe { _mm256_loadu_ps(x) }, q[0]);
            t = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(x.add(8)) }, q[1], t);
            t = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(x.add(16)) }, q[2], t);
            t = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(x.add(24)) }, q[3], t);
            acc[r] = _mm256_fmadd_ps(d, t, acc[r]);
            offsets[r] += offset * sums[r][b];
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = hsum(acc[r]) + offsets[r];
    }
    out
}

/// The 32 quants of block `blk` as f32 (Q8_0: the signed values; Q4_0,
/// Q4_1: the nibbles 0..=15), elements 0..8, 8..16, 16..24, 24..32.
///
/// # Safety
/// AVX2 as for [`dot_rows`]; `blk` is one whole block of `quant` (Q8_0,
/// Q4_0 or Q4_1).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen(quant: QuantType, blk: &[u8]) -> [__m256; 4] {
    let bb = quant.block_bytes();
    debug_assert_eq!(blk.len(), bb);
    // SAFETY (loads): blk holds bb bytes and the quants end at bb.
    if quant == QuantType::Q8_0 {
        let p = unsafe { blk.as_ptr().add(2) };
        let lo = unsafe { _mm_loadu_si128(p.cast()) };
        let hi = unsafe { _mm_loadu_si128(p.add(16).cast()) };
        [
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))),
        ]
    } else {
        let raw = unsafe { _mm_loadu_si128(blk.as_ptr().add(bb - 16).cast()) };
        let mask = _mm_set1_epi8(0x0F);
        // Low nibbles are elements 0..16, high nibbles 16..32.
        let lo = _mm_and_si128(raw, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
        [
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))),
        ]
    }
}

/// Dequantize whole blocks of `quant` (Q8_0, Q4_0 or Q4_1) onto `out`
/// (32 values per block), bit for bit as core's reference: the same f32
/// operations (`q * d`, `(q - 8) * d`, `q * d + m`, no fused multiply-add).
///
/// # Safety
/// AVX2 as for [`dot_rows`]; `out` holds 32 values per block of `w`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dequantize(quant: QuantType, w: &[u8], out: &mut [f32]) {
    let bb = quant.block_bytes();
    for (blk, o) in w.chunks_exact(bb).zip(out.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(f16_at(blk, 0));
        // SAFETY: blk is one whole block.
        let q = unsafe { widen(quant, blk) };
        let eight = _mm256_set1_ps(8.0);
        let m = _mm256_set1_ps(if quant == QuantType::Q4_1 {
            f16_at(blk, 2)
        } else {
            0.0
        });
        for (i, qi) in q.into_iter().enumerate() {
            let v = match quant {
                QuantType::Q4_0 => _mm256_mul_ps(_mm256_sub_ps(qi, eight), d),
                QuantType::Q4_1 => _mm256_add_ps(_mm256_mul_ps(qi, d), m),
                _ => _mm256_mul_ps(qi, d),
            };
            // SAFETY: o holds 32 values.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(8 * i), v) };
        }
    }
}

/// Dot products of `R` activation rows with `C` dequantized weight rows
/// (f32, all of one length, a multiple of 8): `out[r][c] = xs[r] . ws[c]`,
/// register-blocked so every load of x serves `C` products and every load
/// of w `R` of them (12 accumulators for 4 x 3).
///
/// # Safety
/// AVX2 and FMA ([`available`]); every row has the length of `xs[0]`, a
/// multiple of 8.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_block<const R: usize, const C: usize>(
    xs: [&[f32]; R],
    ws: [&[f32]; C],
) -> [[f32; C]; R] {
    let k = xs[0].len();
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    for i in (0..k).step_by(8) {
        // SAFETY: i + 8 <= k and every row holds k values.
        let wv: [__m256; C] =
            std::array::from_fn(|c| unsafe { _mm256_loadu_ps(ws[c].as_ptr().add(i)) });
        for r in 0..R {
            let xv = unsafe { _mm256_loadu_ps(xs[r].as_ptr().add(i)) };
            for c in 0..C {
                acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
            }
        }
    }
    let mut out = [[0.0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            out[r][c] = hsum(acc[r][c]);
        }
    }
    out
}

/// The f16 at `b[at..at + 2]` as f32 (F16C).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
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
