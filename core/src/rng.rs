//! The one seeded pseudo-random generator of the workspace (SplitMix64).
//!
//! Used wherever hetero needs numbers that are random-looking but the same on
//! every run: the device test suite's inputs (so a failure reproduces), the
//! synthetic weights of the decode model, and the sync-strategy sampler.
//! Tests and snapshots depend on the exact sequences, so the mixing
//! constants and every derived draw below must not change.

/// SplitMix64 (Steele, Lea, Flood 2014): a 64-bit counter run through a
/// mixing function. Small, fast, and every seed (zero included) is fine;
/// not for cryptography.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose first draw is the mix of `seed + golden gamma`.
    pub const fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, from the top 53 bits (every value exact in f64).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[-1, 1)` as f32, from the top 24 bits (every value exact in f32).
    pub fn signed_unit_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// Uniform in `0..n` (by remainder, so very slightly biased for huge
    /// `n`); `n = 0` is treated as 1 and gives 0.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Uniform in `[lo, hi)` (by remainder); an empty range (`hi <= lo`) gives `lo`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        // `hi - lo` can exceed i64::MAX; as u64 the difference is exact.
        let span = hi.wrapping_sub(lo) as u64;
        lo.wrapping_add((self.next_u64() % span) as i64)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A uniformly chosen element of `xs`, `None` when it is empty.
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> Option<T> {
        (!xs.is_empty()).then(|| xs[self.below(xs.len())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_draws_match_the_reference_splitmix64() {
        // Reference values of SplitMix64 seeded with 0 and 1234567.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut r = SplitMix64::new(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn derived_draws_stay_in_range() {
        let mut r = SplitMix64::new(42);
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            let s = r.signed_unit_f32();
            assert!((-1.0..1.0).contains(&s));
            assert!(r.below(7) < 7);
            let x = r.range(-16, 17);
            assert!((-16..17).contains(&x));
            let wide = r.range(i32::MIN as i64, i32::MAX as i64);
            assert!((i32::MIN as i64..i32::MAX as i64).contains(&wide));
        }
        assert_eq!(r.below(0), 0);
        assert_eq!(r.range(5, 5), 5);
        assert_eq!(r.range(5, -5), 5);
        assert_eq!(r.pick::<u8>(&[]), None);
        assert_eq!(r.pick(&[9]), Some(9));
    }
}
