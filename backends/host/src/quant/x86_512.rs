//! AVX-512 versions of [`super::x86`]'s kernels (16 lanes and 32
//! registers: a block of 32 is two vectors, and the register blocks are
//! 4 x 4), chosen at run time where the CPU has AVX-512F. Same arithmetic
//! as the AVX2 kernels; the tests compare both with f64 references.

use std::arch::x86_64::*;

use hetero_core::QuantType;

/// Whether this CPU runs the kernels of this module.
pub(crate) fn available() -> bool {
    super::x86::available() && is_x86_feature_detected!("avx512f")
}

/// The 32 quants of block `blk` as f32, elements 0..16 and 16..32.
///
/// # Safety
/// AVX-512F ([`available`]); `blk` is one whole block of `quant` (Q8_0,
/// Q4_0 or Q4_1).
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn widen(quant: QuantType, blk: &[u8]) -> [__m512; 2] {
    let bb = quant.block_bytes();
    // SAFETY (loads): blk holds bb bytes and the quants end at bb.
    if quant == QuantType::Q8_0 {
        let p = unsafe { blk.as_ptr().add(2) };
        let lo = unsafe { _mm_loadu_si128(p.cast()) };
        let hi = unsafe { _mm_loadu_si128(p.add(16).cast()) };
        [
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)),
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)),
        ]
    } else {
        let raw = unsafe { _mm_loadu_si128(blk.as_ptr().add(bb - 16).cast()) };
        let mask = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(raw, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
        [
            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)),
            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)),
        ]
    }
}

/// As [`super::x86::dot_rows`].
///
/// # Safety
/// AVX-512F ([`available`]); lengths as for [`super::x86::dot_rows`].
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(crate) unsafe fn dot_rows<const R: usize>(
    quant: QuantType,
    w: &[u8],
    xs: [&[f32]; R],
    sums: [&[f32]; R],
) -> [f32; R] {
    let bb = quant.block_bytes();
    let nb = w.len() / bb;
    let mut acc = [_mm512_setzero_ps(); R];
    let mut offsets = [0.0f32; R];
    for b in 0..nb {
        let blk = &w[b * bb..(b + 1) * bb];
        let dw = super::x86::f16_at(blk, 0);
        let d = _mm512_set1_ps(dw);
        let offset = match quant {
            QuantType::Q4_0 => -8.0 * dw,
            QuantType::Q4_1 => super::x86::f16_at(blk, 2),
            _ => 0.0,
        };
        // SAFETY: blk is one whole block; each x row holds 32 values at 32 b.
        let q = unsafe { widen(quant, blk) };
        for r in 0..R {
            let x = unsafe { xs[r].as_ptr().add(32 * b) };
            let t = _mm512_mul_ps(unsafe { _mm512_loadu_ps(x) }, q[0]);
            let t = _mm512_fmadd_ps(unsafe { _mm512_loadu_ps(x.add(16)) }, q[1], t);
            acc[r] = _mm512_fmadd_ps(d, t, acc[r]);
            offsets[r] += offset * sums[r][b];
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        out[r] = _mm512_reduce_add_ps(acc[r]) + offsets[r];
    }
    out
}

/// As [`super::x86::dot_block`], rows a multiple of 16 long.
///
/// # Safety
/// AVX-512F ([`available`]); every row has the length of `xs[0]`, a
/// multiple of 16.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(crate) unsafe fn dot_block<const R: usize, const C: usize>(
    xs: [&[f32]; R],
    ws: [&[f32]; C],
) -> [[f32; C]; R] {
    let k = xs[0].len();
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    for i in (0..k).step_by(16) {
        // SAFETY: i + 16 <= k and every row holds k values.
        let wv: [__m512; C] =
            std::array::from_fn(|c| unsafe { _mm512_loadu_ps(ws[c].as_ptr().add(i)) });
        for r in 0..R {
            let xv = unsafe { _mm512_loadu_ps(xs[r].as_ptr().add(i)) };
            for c in 0..C {
                acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
            }
        }
    }
    let mut out = [[0.0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            out[r][c] = _mm512_reduce_add_ps(acc[r][c]);
        }
    }
    out
}
