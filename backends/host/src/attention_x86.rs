//! Attention of one query row and one head with AVX2 and FMA, for head
//! sizes that are a multiple of 8 (every Llama-family model's): the
//! scores of eight positions at a time, their eight dot products reduced
//! together ([`hsum8`]: nine instructions where one horizontal sum per
//! position took seven each), `exp` eight lanes at a time
//! ([`crate::vexp::exp8`]), and the weighted sum of the values with the
//! output held in registers, 64 dimensions at a time. The portable loop in
//! `llama.rs` computes the same and the device suite compares both with
//! f64 references. Keys and values are f32 or f16 ([`KvElem`]): f16 rows
//! are widened eight at a time by F16C as they are read.

use std::arch::x86_64::*;

use crate::llama::KvElem;

/// Keys and values of one head: row `s` starts at `base + s * stride` of
/// `k` and of `v`, and holds `q.len()` values.
pub(crate) struct HeadRows<'a, T> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub base: usize,
    pub stride: usize,
}

/// Eight cache values from `p` as f32 (f16 widened exactly by F16C).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `p..p + 8` is inside one slice.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load8<T: KvElem>(p: *const T) -> __m256 {
    // SAFETY: forwarded; T is f32 or f16 (KvElem's only impls), so eight
    // of them are 32 or 16 bytes.
    unsafe {
        if T::HALF {
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
        } else {
            _mm256_loadu_ps(p.cast())
        }
    }
}

/// `o = softmax(scale * K q) V` over positions `0..n` (`n >= 1`);
/// `scores` holds at least `n` values of scratch.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `q.len() == o.len()` is a
/// multiple of 8; rows `0..n` of `rows` lie inside `k` and `v`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn attend<T: KvElem>(
    q: &[f32],
    rows: &HeadRows<'_, T>,
    n: usize,
    scale: f32,
    scores: &mut [f32],
    o: &mut [f32],
) {
    let dh = q.len();
    debug_assert!(dh.is_multiple_of(8) && o.len() == dh && n >= 1 && scores.len() >= n);
    debug_assert!(rows.base + (n - 1) * rows.stride + dh <= rows.k.len().min(rows.v.len()));
    let (kp, vp, qp) = (rows.k.as_ptr(), rows.v.as_ptr(), q.as_ptr());
    let row = |s: usize| rows.base + s * rows.stride;
    let scale8 = _mm256_set1_ps(scale);
    let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut s = 0;
    while s + 8 <= n {
        let mut acc = [_mm256_setzero_ps(); 8];
        for c in (0..dh).step_by(8) {
            // SAFETY: c + 8 <= dh; rows s..s + 8 are inside k.
            unsafe {
                let qc = _mm256_loadu_ps(qp.add(c));
                for (p, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(qc, load8(kp.add(row(s + p) + c)), *a);
                }
            }
        }
        let sc = _mm256_mul_ps(hsum8(acc), scale8);
        // SAFETY: s + 8 <= n <= scores.len().
        unsafe { _mm256_storeu_ps(scores.as_mut_ptr().add(s), sc) };
        vmax = _mm256_max_ps(vmax, sc);
        s += 8;
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: lanes holds eight f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), vmax) };
    let mut max = lanes.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for (t, score) in scores.iter_mut().enumerate().take(n).skip(s) {
        let mut acc = _mm256_setzero_ps();
        for c in (0..dh).step_by(8) {
            // SAFETY: c + 8 <= dh; row t < n is inside k.
            unsafe {
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c)), load8(kp.add(row(t) + c)), acc);
            }
        }
        *score = crate::quant::x86::hsum(acc) * scale;
        max = max.max(*score);
    }
    // SAFETY: the CPU has AVX2 and FMA (this function's contract).
    let z = unsafe { exp_shifted(&mut scores[..n], max) };
    let inv_z = 1.0 / z;
    for c0 in (0..dh).step_by(64) {
        let nc = ((dh - c0) / 8).min(8);
        let mut acc = [_mm256_setzero_ps(); 8];
        for (t, &p) in scores[..n].iter().enumerate() {
            let w = _mm256_set1_ps(p * inv_z);
            for (j, a) in acc.iter_mut().enumerate() {
                if j < nc {
                    // SAFETY: c0 + 8 j + 8 <= dh; row t < n is inside v.
                    *a = _mm256_fmadd_ps(w, unsafe { load8(vp.add(row(t) + c0 + 8 * j)) }, *a);
                }
            }
        }
        for (j, a) in acc.iter().enumerate().take(nc) {
            // SAFETY: c0 + 8 j + 8 <= dh = o.len().
            unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(c0 + 8 * j), *a) };
        }
    }
}

/// `s = e^(s - max)` for every score, eight at a time; returns their sum.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn exp_shifted(scores: &mut [f32], max: f32) -> f32 {
    let n = scores.len();
    let m = _mm256_set1_ps(max);
    let mut acc = _mm256_setzero_ps();
    for i in (0..n / 8 * 8).step_by(8) {
        // SAFETY: i + 8 <= n; the CPU has AVX2 and FMA.
        unsafe {
            let p = scores.as_mut_ptr().add(i);
            let e = crate::vexp::exp8(_mm256_sub_ps(_mm256_loadu_ps(p), m));
            _mm256_storeu_ps(p, e);
            acc = _mm256_add_ps(acc, e);
        }
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: lanes holds eight f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    lanes.iter().sum::<f32>() + crate::llama::exp_shifted(&mut scores[n / 8 * 8..], max)
}

/// The lane sums of eight vectors, in order: `[sum a[0], .., sum a[7]]`.
#[target_feature(enable = "avx2,fma")]
fn hsum8(a: [__m256; 8]) -> __m256 {
    // Pairwise: [a0 a0 a1 a1 | a0 a0 a1 a1] partial sums, then fours.
    let h01 = _mm256_hadd_ps(a[0], a[1]);
    let h23 = _mm256_hadd_ps(a[2], a[3]);
    let h45 = _mm256_hadd_ps(a[4], a[5]);
    let h67 = _mm256_hadd_ps(a[6], a[7]);
    // [a0 a1 a2 a3 | a0 a1 a2 a3] (low and high halves' sums), same for 4..8.
    let q0 = _mm256_hadd_ps(h01, h23);
    let q1 = _mm256_hadd_ps(h45, h67);
    let lo = _mm256_permute2f128_ps(q0, q1, 0x20);
    let hi = _mm256_permute2f128_ps(q0, q1, 0x31);
    _mm256_add_ps(lo, hi)
}

#[cfg(test)]
mod tests {
    use hetero_core::rng::SplitMix64;

    use super::*;

    /// Against f64 softmax attention on random heads of 8..128 values
    /// and 1..70 positions (so both the blocks of eight and the tail run).
    #[test]
    fn matches_f64_attention() {
        matches_f64_attention_as::<f32>();
    }

    /// The same with f16 keys and values (the reference reads the same
    /// rounded values).
    #[test]
    fn matches_f64_attention_f16_cache() {
        matches_f64_attention_as::<hetero_core::half::f16>();
    }

    fn matches_f64_attention_as<T: KvElem + FromF32>() {
        if !crate::quant::x86::available() {
            eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
            return;
        }
        let mut rng = SplitMix64::new(9);
        for case in 0..400 {
            let dh = 8 * (1 + rng.below(16));
            let n = 1 + rng.below(70);
            let stride = dh * (1 + rng.below(3));
            let base = rng.below(stride - dh + 1);
            let len = base + (n - 1) * stride + dh;
            let mut r = |m: f32| -> Vec<T> {
                (0..len)
                    .map(|_| T::from_f32(rng.signed_unit_f32() * m))
                    .collect()
            };
            let (k, v) = (r(2.0), r(1.0));
            let q: Vec<f32> = (0..dh).map(|_| rng.signed_unit_f32() * 2.0).collect();
            let scale = 1.0 / (dh as f32).sqrt();
            let mut scores = vec![0.0f32; n];
            let mut o = vec![0.0f32; dh];
            let rows = HeadRows {
                k: &k,
                v: &v,
                base,
                stride,
            };
            // SAFETY: checked available(); rows 0..n lie inside k and v.
            unsafe { attend(&q, &rows, n, scale, &mut scores, &mut o) };
            let s: Vec<f64> = (0..n)
                .map(|t| {
                    let kr = &k[base + t * stride..][..dh];
                    q.iter()
                        .zip(kr)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b.get()))
                        .sum::<f64>()
                        * f64::from(scale)
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for (d, &g) in o.iter().enumerate() {
                let want: f64 = (0..n)
                    .map(|t| e[t] / z * f64::from(v[base + t * stride + d].get()))
                    .sum();
                assert!(
                    (f64::from(g) - want).abs() <= 1e-5,
                    "case {case} (dh {dh}, n {n}) dim {d}: {g} vs {want}"
                );
            }
        }
    }

    trait FromF32 {
        fn from_f32(x: f32) -> Self;
    }
    impl FromF32 for f32 {
        fn from_f32(x: f32) -> Self {
            x
        }
    }
    impl FromF32 for hetero_core::half::f16 {
        fn from_f32(x: f32) -> Self {
            hetero_core::half::f16::from_f32(x)
        }
    }
}
