//! `exp` of eight f32 at once (AVX2 + FMA), for the softmax of attention
//! and the SiLU of the feed-forward block: one libm `expf` call per value
//! was a tenth of a batched decode step's samples.
//!
//! The method is the classic one (Cephes' `expf`): `x = n ln 2 + r` with
//! `|r| <= ln 2 / 2`, `e^r` by a degree-7 polynomial, `2^n` put into the
//! exponent bits. Relative error within a few f32 ulps of the true value
//! over the range where `exp` is a normal f32; the tests compare with f64
//! `exp` on many values. Below `-87.3` (where `e^x` leaves the normal
//! range) it returns 0, where libm returns a subnormal below 1.2e-38: no
//! softmax or SiLU can tell the two apart. NaN stays NaN, large values
//! give infinity.

use std::arch::x86_64::*;

/// Whether this CPU runs [`exp8`].
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// `e^x` lane by lane.
///
/// # Safety
/// The CPU must have AVX2 and FMA ([`available`]).
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // e^x overflows above this and is subnormal below the other.
    const HI: f32 = 88.722_83;
    const LO: f32 = -87.336_55;
    let c = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(LO)), _mm256_set1_ps(HI));
    let n = _mm256_round_ps(
        _mm256_mul_ps(c, _mm256_set1_ps(LOG2E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), c);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    // e^r = 1 + r + r^2 (1/2 + r (1/6 + ...)), Cephes' coefficients.
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for k in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(k));
    }
    let r2 = _mm256_mul_ps(r, r);
    let e = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
    // 2^n as 2^(n/2) 2^(n - n/2): n is within -126..=128 after the clamp,
    // and 2^128 alone is not an f32 although e^x below 88.72 is.
    let n = _mm256_cvtps_epi32(n);
    let half = _mm256_srai_epi32(n, 1);
    let pow2 = |k: __m256i| {
        _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(k, _mm256_set1_epi32(127)),
            23,
        ))
    };
    let mut y = _mm256_mul_ps(
        _mm256_mul_ps(e, pow2(half)),
        pow2(_mm256_sub_epi32(n, half)),
    );
    // Out of range: 0 below, infinity above; NaN stays NaN.
    let zero = _mm256_setzero_ps();
    y = _mm256_blendv_ps(y, zero, _mm256_cmp_ps(x, _mm256_set1_ps(LO), _CMP_LT_OQ));
    y = _mm256_blendv_ps(
        y,
        _mm256_set1_ps(f32::INFINITY),
        _mm256_cmp_ps(x, _mm256_set1_ps(HI), _CMP_GT_OQ),
    );
    _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q))
}

#[cfg(test)]
mod tests {
    use hetero_core::rng::SplitMix64;

    use super::*;

    fn exp_of(v: [f32; 8]) -> [f32; 8] {
        let mut out = [0.0f32; 8];
        // SAFETY: callers check available(); out holds eight f32.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp8(_mm256_loadu_ps(v.as_ptr()))) };
        out
    }

    #[test]
    fn matches_f64_exp_within_a_few_ulps() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX2/FMA");
            return;
        }
        let mut rng = SplitMix64::new(3);
        let mut worst = 0.0f64;
        for i in 0..200_000 {
            // Mostly the softmax / SiLU range, then the whole normal range.
            let span = if i % 4 == 0 { 87.0 } else { 20.0 };
            let v: [f32; 8] = std::array::from_fn(|_| rng.signed_unit_f32() * span);
            for (x, y) in v.iter().zip(exp_of(v)) {
                let want = f64::from(*x).exp();
                let rel = (f64::from(y) - want).abs() / want;
                worst = worst.max(rel);
                assert!(
                    rel < 5e-7,
                    "exp({x}) = {y}, want {want} (relative error {rel:e})"
                );
            }
        }
        eprintln!("worst relative error {worst:e}");
    }

    #[test]
    fn edges_are_zero_infinity_and_nan() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX2/FMA");
            return;
        }
        let v = [
            0.0,
            -0.0,
            1.0,
            -88.0,
            -1000.0,
            89.0,
            f32::NAN,
            f32::NEG_INFINITY,
        ];
        let y = exp_of(v);
        assert_eq!(y[0], 1.0);
        assert_eq!(y[1], 1.0);
        assert!(
            (y[2] - std::f32::consts::E).abs() <= f32::EPSILON * 3.0,
            "{}",
            y[2]
        );
        assert_eq!(y[3], 0.0);
        assert_eq!(y[4], 0.0);
        assert_eq!(y[5], f32::INFINITY);
        assert!(y[6].is_nan());
        assert_eq!(y[7], 0.0);
        // The largest finite result and the smallest normal one.
        let y = exp_of([88.7, -87.3, 88.72, 80.0, -80.0, 0.5, -0.5, 10.0]);
        for (x, y) in [88.7f32, -87.3, 88.72, 80.0, -80.0, 0.5, -0.5, 10.0]
            .iter()
            .zip(y)
        {
            let want = f64::from(*x).exp();
            assert!(
                y.is_finite() && ((f64::from(y) - want) / want).abs() < 5e-7,
                "exp({x}) = {y}"
            );
        }
    }
}
