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

/// As [`super::x86::dot_rows`], without the block sums: each block is
/// dequantized in registers (`d q + m`, one FMA per 16 values; Q4_0's
/// offset is `m = -8 d`) and multiplied into two accumulators per row, with
/// the format fixed per monomorphized loop and raw-pointer reads, so the
/// loop has no branch but its own.
///
/// # Safety
/// AVX-512F ([`available`]); lengths as for [`super::x86::dot_rows`].
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
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
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn dot_rows_as<const R: usize, const F: u8>(w: &[u8], xs: [&[f32]; R]) -> [f32; R] {
    let bb = match F {
        0 => 34,
        1 => 18,
        _ => 20,
    };
    let nb = w.len() / bb;
    // Two accumulators per row for the even blocks, two for the odd ones:
    // four independent FMA chains per row.
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    let xp: [*const f32; R] = std::array::from_fn(|r| xs[r].as_ptr());
    let mut b = 0;
    while b + 2 <= nb {
        // SAFETY: blocks b and b + 1 lie inside w; each x row holds 32
        // values per block.
        unsafe {
            let (w0, w1) = block::<F>(w.as_ptr().add(b * bb), bb);
            let (w2, w3) = block::<F>(w.as_ptr().add((b + 1) * bb), bb);
            for r in 0..R {
                let x = xp[r].add(32 * b);
                acc[r][0] = _mm512_fmadd_ps(_mm512_loadu_ps(x), w0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(_mm512_loadu_ps(x.add(16)), w1, acc[r][1]);
                acc[r][2] = _mm512_fmadd_ps(_mm512_loadu_ps(x.add(32)), w2, acc[r][2]);
                acc[r][3] = _mm512_fmadd_ps(_mm512_loadu_ps(x.add(48)), w3, acc[r][3]);
            }
        }
        b += 2;
    }
    if b < nb {
        // SAFETY: block b lies inside w.
        unsafe {
            let (w0, w1) = block::<F>(w.as_ptr().add(b * bb), bb);
            for r in 0..R {
                let x = xp[r].add(32 * b);
                acc[r][0] = _mm512_fmadd_ps(_mm512_loadu_ps(x), w0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(_mm512_loadu_ps(x.add(16)), w1, acc[r][1]);
            }
        }
    }
    let mut out = [0.0f32; R];
    for r in 0..R {
        let a = _mm512_add_ps(
            _mm512_add_ps(acc[r][0], acc[r][1]),
            _mm512_add_ps(acc[r][2], acc[r][3]),
        );
        out[r] = _mm512_reduce_add_ps(a);
    }
    out
}

/// The block at `p` (`bb` bytes of format `F`) dequantized in registers:
/// elements 0..16 and 16..32 as `d q + m` (Q4_0: `m = -8 d`; Q8_0: `d q`).
/// Both f16 scales of Q4_1 (`d`, `m`, adjacent) convert in one F16C op.
///
/// # Safety
/// AVX-512F; `p..p + bb` is one block of format `F`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
unsafe fn block<const F: u8>(p: *const u8, bb: usize) -> (__m512, __m512) {
    // SAFETY: the block's bytes are readable (the caller's contract).
    unsafe {
        let scales = _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()));
        let d = _mm512_broadcastss_ps(scales);
        let (q0, q1) = if F == 0 {
            let lo = _mm_loadu_si128(p.add(2).cast());
            let hi = _mm_loadu_si128(p.add(18).cast());
            (
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)),
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)),
            )
        } else {
            let mask = _mm_set1_epi8(0x0F);
            let raw = _mm_loadu_si128(p.add(bb - 16).cast());
            let lo = _mm_and_si128(raw, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
            (
                _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)),
                _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)),
            )
        };
        match F {
            0 => (_mm512_mul_ps(q0, d), _mm512_mul_ps(q1, d)),
            1 => {
                let m = _mm512_mul_ps(d, _mm512_set1_ps(-8.0));
                (_mm512_fmadd_ps(q0, d, m), _mm512_fmadd_ps(q1, d, m))
            }
            _ => {
                // Lane 1 of the converted pair is m.
                let m = _mm512_broadcastss_ps(_mm_movehdup_ps(scales));
                (_mm512_fmadd_ps(q0, d, m), _mm512_fmadd_ps(q1, d, m))
            }
        }
    }
}

/// The block at `p` (format `F`: 0 Q8_0, 1 Q4_0, 2 Q4_1) dequantized in
/// registers bit for bit as core's reference (`q * d`, `(q - 8) * d`,
/// `q * d + m`: no fused multiply-add): elements 0..16 and 16..32.
///
/// # Safety
/// AVX-512F; `p..p + block_bytes::<F>()` is one block.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
pub(crate) unsafe fn exact_block<const F: u8>(p: *const u8) -> (__m512, __m512) {
    let bb = super::x86::block_bytes::<F>();
    // SAFETY: the block's bytes are readable (the caller's contract): its
    // scales first, its 16 or 32 quant bytes last.
    unsafe {
        let s = _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()));
        let d = _mm512_broadcastss_ps(s);
        if F == 0 {
            let q = |at: usize| {
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(at).cast())))
            };
            return (_mm512_mul_ps(q(2), d), _mm512_mul_ps(q(18), d));
        }
        // Byte j holds value j (low nibble) and j + 16 (high).
        let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(bb - 16).cast()));
        let qa = _mm512_cvtepi32_ps(_mm512_and_si512(bytes, _mm512_set1_epi32(0x0F)));
        let qb = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(bytes));
        if F == 1 {
            let eight = _mm512_set1_ps(8.0);
            (
                _mm512_mul_ps(_mm512_sub_ps(qa, eight), d),
                _mm512_mul_ps(_mm512_sub_ps(qb, eight), d),
            )
        } else {
            // Lane 1 of the converted pair is m.
            let m = _mm512_broadcastss_ps(_mm_movehdup_ps(s));
            (
                _mm512_add_ps(_mm512_mul_ps(qa, d), m),
                _mm512_add_ps(_mm512_mul_ps(qb, d), m),
            )
        }
    }
}

/// As [`super::x86::dequantize`] (bit for bit as core's reference), 16
/// lanes at a time: about half the instructions per block.
///
/// # Safety
/// AVX-512F ([`available`]); `out` holds 32 values per block of `w`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(crate) unsafe fn dequantize(quant: QuantType, w: &[u8], out: &mut [f32]) {
    // SAFETY: forwarded; each variant reads what exact_block documents.
    unsafe {
        match quant {
            QuantType::Q8_0 => dequantize_as::<0>(w, out),
            QuantType::Q4_0 => dequantize_as::<1>(w, out),
            _ => dequantize_as::<2>(w, out),
        }
    }
}

/// [`dequantize`] for format `F`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn dequantize_as<const F: u8>(w: &[u8], out: &mut [f32]) {
    let bb = super::x86::block_bytes::<F>();
    for (blk, o) in w.chunks_exact(bb).zip(out.chunks_exact_mut(32)) {
        // SAFETY: blk is one whole block; o holds 32 values.
        unsafe {
            let (a, b) = exact_block::<F>(blk.as_ptr());
            _mm512_storeu_ps(o.as_mut_ptr(), a);
            _mm512_storeu_ps(o.as_mut_ptr().add(16), b);
        }
    }
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
