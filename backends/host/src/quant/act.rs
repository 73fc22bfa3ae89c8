//! Activations rounded to 8 bits per 32-element block, as ggml's
//! `quantize_row_q8_0` / `q8_1` do for its integer dot products: per block
//! a scale `d = max|x| / 127`, values `q = round(x / d)` in -127..=127, and
//! `s = d * sum(q)` (the term Q4_0's offset and Q4_1's minimum multiply).
//! The rounding error of one product is at most `|w| * d / 2` per element,
//! the bound the device suite checks.

/// Elements per activation block (the 32-element weight formats' block).
pub(crate) const BLOCK: usize = 32;

/// `rows` rows of `cols` activations in 8-bit blocks.
#[derive(Debug, Default)]
pub(crate) struct QuantizedRows {
    pub(crate) cols: usize,
    /// `rows * cols` values.
    pub(crate) q: Vec<i8>,
    /// Per block: the scale `d`.
    pub(crate) d: Vec<f32>,
    /// Per block: `d * sum(q)`.
    pub(crate) s: Vec<f32>,
}

impl QuantizedRows {
    /// Round `x` (`rows x cols`, `cols` a multiple of [`BLOCK`]).
    pub(crate) fn new(x: &[f32], cols: usize) -> Self {
        let blocks = x.len() / BLOCK;
        let mut out = QuantizedRows {
            cols,
            q: vec![0; x.len()],
            d: Vec::with_capacity(blocks),
            s: Vec::with_capacity(blocks),
        };
        for (xb, qb) in x.chunks_exact(BLOCK).zip(out.q.chunks_exact_mut(BLOCK)) {
            let amax = xb.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in qb.iter_mut().zip(xb) {
                // Rounds half away from zero, as C's roundf; |v * id| <= 127.
                let r = (v * id).round() as i8;
                *q = r;
                sum += i32::from(r);
            }
            out.d.push(d);
            out.s.push(d * sum as f32);
        }
        out
    }

    /// Row `r`: its values, scales and sums.
    pub(crate) fn row(&self, r: usize) -> RowView<'_> {
        let nb = self.cols / BLOCK;
        RowView {
            q: &self.q[r * self.cols..(r + 1) * self.cols],
            d: &self.d[r * nb..(r + 1) * nb],
            s: &self.s[r * nb..(r + 1) * nb],
        }
    }
}

/// One row of [`QuantizedRows`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowView<'a> {
    pub(crate) q: &'a [i8],
    pub(crate) d: &'a [f32],
    pub(crate) s: &'a [f32],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_within_half_a_step() {
        let mut rng = hetero_core::rng::SplitMix64::new(7);
        let x: Vec<f32> = (0..256).map(|_| rng.signed_unit_f32() * 4.0).collect();
        let qr = QuantizedRows::new(&x, 128);
        for r in 0..2 {
            let v = qr.row(r);
            for (b, chunk) in x[r * 128..(r + 1) * 128].chunks(BLOCK).enumerate() {
                let d = v.d[b];
                let mut sum = 0.0;
                for (i, &xi) in chunk.iter().enumerate() {
                    let q = f32::from(v.q[b * BLOCK + i]);
                    assert!((q * d - xi).abs() <= d / 2.0 + 1e-6);
                    sum += q;
                }
                assert_eq!(v.s[b], d * sum);
            }
        }
        let zeros = QuantizedRows::new(&[0.0; 32], 32);
        assert_eq!(zeros.d, [0.0]);
        assert!(zeros.q.iter().all(|&q| q == 0));
    }
}
