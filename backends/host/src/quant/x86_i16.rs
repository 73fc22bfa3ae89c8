//! AVX2 dot products of quantized weight rows (Q8_0, Q4_0, Q4_1) with one
//! activation row rounded to 16-bit integers per 32-element block
//! ([`Rounded`]): `vpmaddwd` multiplies 16 weight/activation pairs and
//! adds them in pairs in one instruction, so a block costs about 14
//! instructions instead of the f32 kernel's 21 (widen, convert,
//! dequantize, FMA). This is the decode of one sequence on AVX2-only
//! CPUs, where those instructions, not memory, bound the product: on the
//! 2-core AVX2 machine a model's sequence of products ran 1.27x faster
//! than with f32 activations (`models/README.md`). With two or more
//! activation rows the f32 kernels stay: there the rounding and the
//! per-row work of this layout measured slower.
//!
//! Why 16 bits and not llama.cpp's 8: rounding each block to 8 bits moved
//! SmolLM2's logits by up to 0.1, enough to change a greedy answer. With
//! 16 bits the step is `max |x| / 32767` per block, 256 times finer, so an
//! element moves by at most `max |x| / 65534`; SmolLM2's top logits moved
//! by 0.006 at most on the test prompts, greedy answers unchanged. The
//! tests bound each product's error by exactly that rounding.
//!
//! Exactness of the integer part: Q4 quants are at most 15 in magnitude
//! (Q4_0 shifted to -8..=7), Q8_0's at most 128, activations at most
//! 32767, so a block's 32 products sum to under 2^28: no overflow of the
//! 32-bit lanes.

use std::arch::x86_64::*;

use super::x86::block_bytes;

/// One activation row rounded per 32-element block to
/// `q = round(x / step)` with `step = max |x| / 32767`; beside each block
/// its `step` and the exact f32 sum of its `x` (for Q4_1's offset `m`).
#[derive(Debug, Default)]
pub(crate) struct Rounded {
    q: Vec<i16>,
    /// `[step, sum of x]` per block.
    scales: Vec<[f32; 2]>,
}

impl Rounded {
    /// `x` (a multiple of 32 values) rounded to 16 bits per block,
    /// reusing this buffer's allocation.
    ///
    /// A block whose sum is not finite (a NaN or an infinity in it, or
    /// values near f32's limit) gets a NaN step, so its products stay
    /// non-finite as on the f32 path instead of being rounded away.
    ///
    /// # Safety
    /// The CPU must have AVX2 ([`super::x86::available`]).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn quantize(&mut self, x: &[f32]) {
        debug_assert!(x.len().is_multiple_of(32));
        self.q.resize(x.len(), 0);
        self.scales.resize(x.len() / 32, [0.0; 2]);
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
        for ((xb, qb), sc) in x
            .chunks_exact(32)
            .zip(self.q.chunks_exact_mut(32))
            .zip(&mut self.scales)
        {
            // SAFETY: xb holds 32 values and qb 32 slots.
            unsafe {
                let v: [__m256; 4] =
                    std::array::from_fn(|i| _mm256_loadu_ps(xb.as_ptr().add(8 * i)));
                let a = v.map(|vi| _mm256_and_ps(vi, abs_mask));
                let amax = hmax(_mm256_max_ps(
                    _mm256_max_ps(a[0], a[1]),
                    _mm256_max_ps(a[2], a[3]),
                ));
                let sum = super::x86::hsum(_mm256_add_ps(
                    _mm256_add_ps(v[0], v[1]),
                    _mm256_add_ps(v[2], v[3]),
                ));
                if !sum.is_finite() {
                    qb.fill(0);
                    *sc = [f32::NAN, sum];
                    continue;
                }
                let (step, inv) = if amax > 0.0 {
                    (amax / 32767.0, 32767.0 / amax)
                } else {
                    (0.0, 0.0)
                };
                let inv = _mm256_set1_ps(inv);
                // Round to nearest (even); |x / step| <= 32767 up to one
                // rounding, and the pack saturates.
                let r = v.map(|vi| _mm256_cvtps_epi32(_mm256_mul_ps(vi, inv)));
                for (half, pair) in [(0, [r[0], r[1]]), (16, [r[2], r[3]])] {
                    // packs works per 128-bit lane: restore element order.
                    let packed = _mm256_permute4x64_epi64(
                        _mm256_packs_epi32(pair[0], pair[1]),
                        0b11_01_10_00,
                    );
                    _mm256_storeu_si256(qb.as_mut_ptr().add(half).cast(), packed);
                }
                *sc = [step, sum];
            }
        }
    }
}

/// `out[j] = dot(row j of w, x)` for consecutive weight rows of
/// `row_bytes` each: the decode of one sequence. The loop over rows runs
/// inside one call, so a row of only 18-48 blocks does not pay a call and
/// the slice checks of its own; rows are read one after another, one
/// sequential stream per thread (interleaving four rows was measured
/// slower on rows of 960 bytes: the prefetchers lose the streams).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C ([`super::x86::available`]); `w`
/// holds `out.len()` rows of `row_bytes`, each whole blocks of `quant`
/// (Q8_0, Q4_0 or Q4_1), and `x` one block of activations per block of a
/// row.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_range(
    quant: hetero_core::QuantType,
    w: &[u8],
    row_bytes: usize,
    x: &Rounded,
    out: &mut [f32],
) {
    use hetero_core::QuantType;
    // SAFETY: forwarded; each variant reads what dot_range_as documents.
    unsafe {
        match quant {
            QuantType::Q8_0 => dot_range_as::<0>(w, row_bytes, x, out),
            QuantType::Q4_0 => dot_range_as::<1>(w, row_bytes, x, out),
            _ => dot_range_as::<2>(w, row_bytes, x, out),
        }
    }
}

/// [`dot_range`] for format `F` (0 Q8_0, 1 Q4_0, 2 Q4_1), one loop.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_range_as<const F: u8>(w: &[u8], row_bytes: usize, x: &Rounded, out: &mut [f32]) {
    for (j, o) in out.iter_mut().enumerate() {
        let row = &w[j * row_bytes..(j + 1) * row_bytes];
        // SAFETY: the row is whole blocks of F, x one block per block.
        *o = unsafe { dot_row::<F>(row, x) };
    }
}

/// The block at `p` (format `F`) as two vectors of 16 `i16`: elements
/// 0..16 and 16..32 (Q4_0 shifted to -8..=7, Q4_1 as the nibbles 0..=15).
///
/// # Safety
/// AVX2 as for [`dot_range`]; `p..p + block_bytes::<F>()` is one block.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn weights<const F: u8>(p: *const u8) -> (__m256i, __m256i) {
    // SAFETY (loads): the quants end at the block's end.
    unsafe {
        if F == 0 {
            (
                _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(2).cast())),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(18).cast())),
            )
        } else {
            // Byte j holds element j (low nibble) and j + 16 (high).
            let raw = _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(block_bytes::<F>() - 16).cast()));
            let lo = _mm256_and_si256(raw, _mm256_set1_epi16(0x0F));
            let hi = _mm256_srli_epi16(raw, 4);
            if F == 1 {
                let eight = _mm256_set1_epi16(8);
                (_mm256_sub_epi16(lo, eight), _mm256_sub_epi16(hi, eight))
            } else {
                (lo, hi)
            }
        }
    }
}

/// The dot product of one weight row (format `F`: 0 Q8_0, 1 Q4_0, 2
/// Q4_1) with `x`, two blocks at a time. Per pair: both blocks' f16
/// scales converted in one op and multiplied by both `[step, sum]` pairs
/// in one more (`[d0 step0, m0 sum0, d1 step1, m1 sum1]`: per block these
/// were a quarter of the instructions). Per block: the weights widened to
/// two vectors of 16 `i16`, two `vpmaddwd`, one add, one conversion and
/// one FMA by `d * step`, consecutive blocks rotating over four
/// accumulators so their FMAs do not wait on each other. Q4_1's
/// `m * sum(x)` goes to a second set, lanes 1 and 3.
///
/// # Safety
/// AVX2 as for [`dot_range`]; `w` is whole blocks of `F` and `x` holds
/// one block per block of `w`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dot_row<const F: u8>(w: &[u8], x: &Rounded) -> f32 {
    let bb = block_bytes::<F>();
    let nb = w.len() / bb;
    debug_assert!(x.scales.len() >= nb);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut offset = [_mm_setzero_ps(); 4];
    // Blocks b..b + n (n = 2, or 1 for an odd last block) into
    // accumulators k.., their scales converted and multiplied together:
    // [d0, m0, d1, m1] * [step0, sum0, step1, sum1] in one op each. The
    // accumulators are indexed by constants, so they stay in registers.
    let mut blocks = |b: usize, k: usize, n: usize| {
        // SAFETY: blocks b..b + n lie inside w; x holds 32 values and one
        // [step, sum] pair per block.
        unsafe {
            let p = w.as_ptr().add(b * bb);
            let first = _mm_cvtsi32_si128(p.cast::<i32>().read_unaligned());
            let (halves, ss) = if n == 2 {
                (
                    _mm_insert_epi32(first, p.add(bb).cast::<i32>().read_unaligned(), 1),
                    _mm_loadu_ps(x.scales.as_ptr().add(b).cast()),
                )
            } else {
                (
                    first,
                    _mm_castpd_ps(_mm_load_sd(x.scales.as_ptr().add(b).cast())),
                )
            };
            let t = _mm_mul_ps(_mm_cvtph_ps(halves), ss);
            if F == 2 {
                offset[k] = _mm_add_ps(offset[k], t);
            }
            let scale = [
                _mm256_broadcastss_ps(t),
                _mm256_broadcastss_ps(_mm_movehl_ps(t, t)),
            ];
            for i in 0..n {
                let (w0, w1) = weights::<F>(p.add(i * bb));
                let q = x.q.as_ptr().add(32 * (b + i));
                let s = _mm256_add_epi32(
                    _mm256_madd_epi16(w0, _mm256_loadu_si256(q.cast())),
                    _mm256_madd_epi16(w1, _mm256_loadu_si256(q.add(16).cast())),
                );
                acc[k + i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale[i], acc[k + i]);
            }
        }
    };
    for g in 0..nb / 4 {
        blocks(4 * g, 0, 2);
        blocks(4 * g + 2, 2, 2);
    }
    if nb % 4 >= 2 {
        blocks(nb / 4 * 4, 0, 2);
    }
    if nb % 2 == 1 {
        blocks(nb - 1, 2, 1);
    }
    let a = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut out = super::x86::hsum(a);
    if F == 2 {
        let o = _mm_add_ps(
            _mm_add_ps(offset[0], offset[1]),
            _mm_add_ps(offset[2], offset[3]),
        );
        // m * sum in lane 1 (first block of a pair) and lane 3 (second).
        let o = _mm_movehdup_ps(o);
        out += _mm_cvtss_f32(_mm_add_ss(o, _mm_movehl_ps(o, o)));
    }
    out
}

/// The largest of the eight lanes of `v`.
#[target_feature(enable = "avx2,fma,f16c")]
fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    _mm_cvtss_f32(m)
}
