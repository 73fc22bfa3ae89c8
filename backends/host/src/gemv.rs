//! f32 GEMM with few rows against a matrix stored transposed
//! (`C = alpha A B^T + beta C`, `B` stored `n x k`): a decode step's
//! projections, one row per sequence against `[out, in]` weights.
//! matrixmultiply packs all of `B` into panels on every call, which for a
//! handful of rows costs more than the products; here every output is a
//! dot product of two contiguous rows, and the columns of `C` are split
//! over the device's threads.

/// Rows of A up to which this path is used (above it, packing pays).
pub(crate) const MAX_ROWS: usize = 4;

/// Dot product with eight independent accumulators (vectorizable; the
/// order of the sum differs from a naive loop by rounding only).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, a_tail) = a.split_at(a.len() / 8 * 8);
    let (b8, b_tail) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + tail
}

/// Columns `cols` of `C` (`m x n`, row-major) into `out` (`m x cols.len()`).
#[allow(clippy::too_many_arguments)]
fn block(
    m: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    cols: std::ops::Range<usize>,
    alpha: f32,
    out: &mut [f32],
) {
    let w = cols.len();
    for (jj, j) in cols.enumerate() {
        let brow = &b[j * k..(j + 1) * k];
        for i in 0..m {
            out[i * w + jj] = alpha * dot(&a[i * k..(i + 1) * k], brow);
        }
    }
}

/// `C = alpha A B^T + beta C` for `A` `m x k`, `B` `n x k`, `C` `m x n`
/// (lengths validated by the caller); `beta == 0` does not read `C`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bt(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
    threads: usize,
) {
    // Spawning pays once each thread has a few hundred thousand products.
    let threads = threads.min((m * n * k) / (1 << 18)).max(1);
    let per = n.div_ceil(threads);
    let mut parts: Vec<(std::ops::Range<usize>, Vec<f32>)> = (0..threads)
        .map(|t| {
            let cols = (t * per).min(n)..((t + 1) * per).min(n);
            let len = m * cols.len();
            (cols, vec![0.0; len])
        })
        .collect();
    if threads == 1 {
        let (cols, out) = &mut parts[0];
        block(m, k, a, b, cols.clone(), alpha, out);
    } else {
        std::thread::scope(|s| {
            for (cols, out) in parts.iter_mut() {
                let cols = cols.clone();
                s.spawn(move || block(m, k, a, b, cols, alpha, out));
            }
        });
    }
    for (cols, out) in &parts {
        let w = cols.len();
        for i in 0..m {
            let dst = &mut c[i * n + cols.start..i * n + cols.end];
            let src = &out[i * w..(i + 1) * w];
            if beta == 0.0 {
                dst.copy_from_slice(src);
            } else {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = s + beta * *d;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hetero_core::rng::SplitMix64;

    #[test]
    fn matches_a_naive_loop_on_many_shapes() {
        let mut rng = SplitMix64::new(0x6e4);
        for case in 0..300 {
            let m = 1 + rng.below(MAX_ROWS);
            let n = 1 + rng.below(90);
            // Large enough in some cases to split over threads.
            let k = 1 + rng.below(if case % 10 == 0 { 20_000 } else { 70 });
            let threads = 1 + rng.below(4);
            let (alpha, beta) = [(1.0, 0.0), (0.5, 1.0), (-2.0, 0.25)][case % 3];
            let mut vals =
                |len: usize| -> Vec<f32> { (0..len).map(|_| rng.signed_unit_f32()).collect() };
            let (a, b, c0) = (vals(m * k), vals(n * k), vals(m * n));
            let mut c = c0.clone();
            gemm_bt(m, n, k, alpha, &a, &b, beta, &mut c, threads);
            for i in 0..m {
                for j in 0..n {
                    let dot: f64 = (0..k)
                        .map(|p| a[i * k + p] as f64 * b[j * k + p] as f64)
                        .sum();
                    let want = alpha as f64 * dot + beta as f64 * c0[i * n + j] as f64;
                    let got = c[i * n + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * (k as f64).sqrt() * want.abs().max(1.0),
                        "case {case} ({m}x{n}x{k}, {threads} threads) C[{i}][{j}] = {got}, want {want}"
                    );
                }
            }
        }
    }
}
