//! AVX2 dot products of one quantized weight row (Q8_0, Q4_0, Q4_1) with
//! up to four f32 activation rows at once: each 32-element block is
//! widened to f32 in registers once for all of them (Q4: dequantized as
//! `d q + m`; Q8_0: its scale applied once per block, `d * sum(x q)`).
//! The activations stay f32, so results equal the f32 path up to the
//! order of the additions (and the rounding of `d q + m`).
//! [`super::scalar`] computes the same, and the tests compare the two.

use std::arch::x86_64::*;

use hetero_core::QuantType;

/// Whether this CPU runs the kernels of this module.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// `out[r] = dot(w, xs[r])` for `R` activation rows, with the format fixed
/// per monomorphized loop and raw-pointer reads, so the loop has no branch
/// but its own. Q4 blocks are dequantized in registers ([`dequantized`]);
/// Q8_0 has no offset, so its scale factors out of the block and
/// `d * sum(x q)` saves the four multiplies that would dequantize it.
/// One or two rows keep four independent FMA chains each (the decode case,
/// where FMA latency would bind); three or four rows keep two each, so
/// accumulators, the block's four weight vectors and an activation vector
/// fit the 16 registers.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C ([`available`]); `w` holds whole
/// blocks of `quant` (Q8_0, Q4_0 or Q4_1) and every row of `xs` 32 values
/// per block.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_rows<const R: usize>(
    quant: QuantType,
    w: &[u8],
    xs: [&[f32]; R],
) -> [f32; R] {
    // SAFETY: forwarded; each variant reads what dot_rows_as documents.
    unsafe {
        match quant {
            QuantType::Q8_0 => dot_rows_as::<R, 0>(w, xs),
            QuantType::Q4_0 => dot_rows_as::<R, 1>(w, xs),
            _ => dot_rows_as::<R, 2>(w, xs),
        }
    }
}

/// `F`: 0 Q8_0, 1 Q4_0, 2 Q4_1.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_as<const R: usize, const F: u8>(w: &[u8], xs: [&[f32]; R]) -> [f32; R] {
    let bb = block_bytes::<F>();
    let nb = w.len() / bb;
    let mut acc = [[_mm256_setzero_ps(); 4]; R];
    let xp: [*const f32; R] = std::array::from_fn(|r| xs[r].as_ptr());
    for b in 0..nb {
        // SAFETY: block b lies inside w; each x row holds 32 values per
        // block.
        unsafe {
            let p = w.as_ptr().add(b * bb);
            if F == 0 {
                let d = _mm256_broadcastss_ps(scales(p));
                let q = quants::<F>(p);
                // Consecutive blocks rotate over the accumulators so their
                // scale FMAs do not wait on each other.
                let a = if R <= 2 { b & 3 } else { b & 1 };
                for r in 0..R {
                    let x = xp[r].add(32 * b);
                    let mut t = _mm256_mul_ps(_mm256_loadu_ps(x), q[0]);
                    t = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(8)), q[1], t);
                    t = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(16)), q[2], t);
                    t = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(24)), q[3], t);
                    acc[r][a] = _mm256_fmadd_ps(d, t, acc[r][a]);
                }
            } else {
                let q = dequantized::<F>(p);
                for r in 0..R {
                    let x = xp[r].add(32 * b);
                    for (i, qi) in q.iter().enumerate() {
                        let a = if R <= 2 { i } else { i & 1 };
                        acc[r][a] = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(8 * i)), *qi, acc[r][a]);
                    }
                }
            }
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        let a = _mm256_add_ps(
            _mm256_add_ps(acc[r][0], acc[r][1]),
            _mm256_add_ps(acc[r][2], acc[r][3]),
        );
        out[r] = hsum(a);
    }
    out
}

/// Bytes of one block of format `F` (0 Q8_0, 1 Q4_0, 2 Q4_1).
pub(super) const fn block_bytes<const F: u8>() -> usize {
    match F {
        0 => 34,
        1 => 18,
        _ => 20,
    }
}

/// The block's first two f16s as f32 in lanes 0 and 1: `d`, and for Q4_1
/// `m` (both convert in one F16C op; for the other formats lane 1 is
/// meaningless).
///
/// # Safety
/// AVX2 as for [`dot_rows`]; `p` starts a block (every block is at least
/// 18 bytes, so its first four are readable).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn scales(p: *const u8) -> __m128 {
    // SAFETY: the caller's contract.
    _mm_cvtph_ps(_mm_cvtsi32_si128(unsafe {
        p.cast::<i32>().read_unaligned()
    }))
}

/// The 32 quants of the block at `p` (format `F`) as f32 (Q8_0: the
/// signed values; Q4_0, Q4_1: the nibbles 0..=15), elements 0..8, 8..16,
/// 16..24, 24..32, each widened straight from memory. A Q4 byte `j` holds
/// element `j` (low nibble) and `j + 16` (high nibble): widening each half
/// of the 16 bytes to 32-bit lanes leaves both nibbles one mask or one
/// shift away, with no in-register byte shuffles.
///
/// # Safety
/// AVX2 as for [`dot_rows`]; `p..p + block_bytes::<F>()` is one block.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn quants<const F: u8>(p: *const u8) -> [__m256; 4] {
    // SAFETY (loads): the quants end at the block's end.
    unsafe {
        if F == 0 {
            std::array::from_fn(|i| {
                let bytes = _mm_loadl_epi64(p.add(2 + 8 * i).cast());
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes))
            })
        } else {
            let mask = _mm256_set1_epi32(0x0F);
            let quants = p.add(block_bytes::<F>() - 16);
            let a = _mm256_cvtepu8_epi32(_mm_loadl_epi64(quants.cast()));
            let b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(quants.add(8).cast()));
            [
                _mm256_cvtepi32_ps(_mm256_and_si256(a, mask)),
                _mm256_cvtepi32_ps(_mm256_and_si256(b, mask)),
                _mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4)),
                _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4)),
            ]
        }
    }
}

/// The Q4 block at `p` (`F` 1 Q4_0, 2 Q4_1) dequantized in registers as
/// `d q + m` (Q4_0: `m = -8 d`), one FMA per 8 values.
///
/// # Safety
/// AVX2 as for [`dot_rows`]; `p..p + block_bytes::<F>()` is one block.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dequantized<const F: u8>(p: *const u8) -> [__m256; 4] {
    debug_assert!(F != 0, "Q8_0 is scaled per block, not dequantized");
    // SAFETY: the caller's contract.
    let (s, q) = unsafe { (scales(p), quants::<F>(p)) };
    let d = _mm256_broadcastss_ps(s);
    let m = if F == 1 {
        _mm256_mul_ps(d, _mm256_set1_ps(-8.0))
    } else {
        // Lane 1 of the converted pair is m.
        _mm256_broadcastss_ps(_mm_movehdup_ps(s))
    };
    q.map(|qi| _mm256_fmadd_ps(qi, d, m))
}

/// Dequantize whole blocks of `quant` (Q8_0, Q4_0 or Q4_1) onto `out`
/// (32 values per block), bit for bit as core's reference: the same f32
/// operations (`q * d`, `(q - 8) * d`, `q * d + m`, no fused multiply-add).
///
/// # Safety
/// AVX2 as for [`dot_rows`]; `out` holds 32 values per block of `w`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dequantize(quant: QuantType, w: &[u8], out: &mut [f32]) {
    // SAFETY: forwarded; each variant reads what dequantize_as documents.
    unsafe {
        match quant {
            QuantType::Q8_0 => dequantize_as::<0>(w, out),
            QuantType::Q4_0 => dequantize_as::<1>(w, out),
            _ => dequantize_as::<2>(w, out),
        }
    }
}

/// [`dequantize`] for format `F` (0 Q8_0, 1 Q4_0, 2 Q4_1): one loop with
/// no branch per block, both f16 scales converted in one op.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_as<const F: u8>(w: &[u8], out: &mut [f32]) {
    let bb = block_bytes::<F>();
    let eight = _mm256_set1_ps(8.0);
    for (blk, o) in w.chunks_exact(bb).zip(out.chunks_exact_mut(32)) {
        // SAFETY: blk is one whole block.
        let (s, q) = unsafe { (scales(blk.as_ptr()), quants::<F>(blk.as_ptr())) };
        let d = _mm256_broadcastss_ps(s);
        let m = _mm256_broadcastss_ps(_mm_movehdup_ps(s));
        for (i, qi) in q.into_iter().enumerate() {
            let v = match F {
                1 => _mm256_mul_ps(_mm256_sub_ps(qi, eight), d),
                2 => _mm256_add_ps(_mm256_mul_ps(qi, d), m),
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

/// The sum of the eight lanes of `v` (AVX2 and FMA only, so every AVX2
/// kernel of the crate may call it).
#[target_feature(enable = "avx2,fma")]
pub(crate) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}
