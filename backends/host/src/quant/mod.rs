//! Matrix products with block-quantized weights, read in their file layout
//! (core's [`QuantType`]), so a model's resident memory is its file's
//! tensor bytes.
//!
//! - Q8_0, Q4_0, Q4_1: the activations are rounded to 8 bits per block
//!   ([`act`]), then every block's product is an integer dot product
//!   scaled once (AVX2 in [`x86`] where the CPU has it, checked at run
//!   time; [`scalar`] everywhere else), as ggml's CPU kernels compute them.
//! - Q4_K, Q5_K, Q6_K: each weight row is dequantized exactly into a
//!   per-thread scratch row and multiplied in f32.
//!
//! Output rows of the weight matrix are split over the device's thread
//! pool; each task computes its rows against every activation row (up to
//! four at a time, so one unpacked weight block serves four sequences).

pub(crate) mod act;
pub(crate) mod scalar;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

use hetero_core::{QuantMatmulSpec, QuantType};
use rayon::prelude::*;

use act::{QuantizedRows, RowView};

/// Multiply-adds below which a product runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// Which implementation of the integer dot products runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    /// The fastest this CPU has.
    pub(crate) fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if x86::available() {
            return Kernel::Avx2;
        }
        Kernel::Scalar
    }
}

/// `y` (one pointer shared by the tasks, each writing its own columns).
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: tasks write disjoint elements of `y` (their own output columns)
// while `matmul` holds the unique borrow of it.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// Whether the integer path (activations rounded to 8 bits) serves `quant`.
fn integer_path(quant: QuantType) -> bool {
    matches!(quant, QuantType::Q8_0 | QuantType::Q4_0 | QuantType::Q4_1)
}

/// `y = x W^T` (lengths validated by the caller).
pub(crate) fn matmul(
    spec: &QuantMatmulSpec,
    x: &[f32],
    w: &[u8],
    y: &mut [f32],
    pool: &rayon::ThreadPool,
    kernel: Kernel,
) {
    let (rows, out, inp) = (spec.rows, spec.out, spec.inp);
    if rows == 0 || out == 0 {
        return;
    }
    let row_bytes = w.len() / out;
    let xq = integer_path(spec.quant).then(|| QuantizedRows::new(x, inp));
    let y_ptr = Out(y.as_mut_ptr());
    let columns = |cols: std::ops::Range<usize>| {
        let y_ptr = y_ptr;
        let mut scratch = Vec::new();
        for j in cols {
            let wrow = &w[j * row_bytes..(j + 1) * row_bytes];
            let mut put = |r: usize, v: f32| {
                // SAFETY: r < rows and j < out, so the index is inside y,
                // and column j belongs to this task alone.
                unsafe { *y_ptr.0.add(r * out + j) = v };
            };
            match &xq {
                Some(xq) => integer_rows(spec.quant, wrow, xq, rows, kernel, &mut put),
                None => {
                    scratch.clear();
                    spec.quant.dequantize(wrow, &mut scratch);
                    for r in 0..rows {
                        put(r, crate::gemv::dot(&x[r * inp..(r + 1) * inp], &scratch));
                    }
                }
            }
        }
    };
    let threads = pool.current_num_threads();
    if threads == 1 || rows * out * inp < PARALLEL_MIN_MACS {
        columns(0..out);
        return;
    }
    // A few tasks per thread so uneven progress evens out.
    let per = out.div_ceil(threads * 4).max(8);
    pool.install(|| {
        (0..out.div_ceil(per))
            .into_par_iter()
            .for_each(|c| columns(c * per..((c + 1) * per).min(out)));
    });
}

/// The dot products of weight row `wrow` with every activation row.
fn integer_rows(
    quant: QuantType,
    wrow: &[u8],
    xq: &QuantizedRows,
    rows: usize,
    kernel: Kernel,
    put: &mut impl FnMut(usize, f32),
) {
    let mut r = 0;
    while r < rows {
        let n = (rows - r).min(4);
        match kernel {
            Kernel::Scalar => {
                for i in r..r + n {
                    put(i, scalar::dot(quant, wrow, xq.row(i)));
                }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                let v = |i: usize| -> RowView<'_> { xq.row(r + i) };
                // SAFETY: Kernel::Avx2 is only chosen when x86::available();
                // the row and block lengths were validated by the caller.
                let mut emit = |vals: &[f32]| {
                    for (i, &val) in vals.iter().enumerate() {
                        put(r + i, val);
                    }
                };
                unsafe {
                    match n {
                        4 => emit(&x86::dot_rows(quant, wrow, [v(0), v(1), v(2), v(3)])),
                        3 => emit(&x86::dot_rows(quant, wrow, [v(0), v(1), v(2)])),
                        2 => emit(&x86::dot_rows(quant, wrow, [v(0), v(1)])),
                        _ => emit(&x86::dot_rows(quant, wrow, [v(0)])),
                    }
                }
            }
        }
        r += n;
    }
}

/// Rows `ids` of a quantized table (rows of `width` elements) into `out`,
/// dequantized exactly (ids and lengths validated by the caller).
pub(crate) fn embedding(
    quant: QuantType,
    table: &[u8],
    width: usize,
    ids: &[u32],
    out: &mut [f32],
) {
    let row_bytes = width / quant.block_elems() * quant.block_bytes();
    let (bb, be) = (quant.block_bytes(), quant.block_elems());
    for (&id, orow) in ids.iter().zip(out.chunks_exact_mut(width)) {
        let row = &table[id as usize * row_bytes..][..row_bytes];
        for (blk, o) in row.chunks_exact(bb).zip(orow.chunks_exact_mut(be)) {
            quant.dequantize_block(blk, o);
        }
    }
}

#[cfg(test)]
mod tests {
    use hetero_core::rng::SplitMix64;
    use hetero_core::testsuite::quant::random_quant_blocks;

    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_equals_scalar_integer_sums() {
        if !x86::available() {
            eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
            return;
        }
        let mut rng = SplitMix64::new(11);
        for case in 0..200 {
            let quant = [QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4_1][case % 3];
            let nb = 1 + rng.below(40);
            let rows = 1 + rng.below(4);
            let w = random_quant_blocks(quant, nb, rng.next_u64());
            let x: Vec<f32> = (0..rows * nb * 32)
                .map(|_| rng.signed_unit_f32() * 3.0)
                .collect();
            let xq = QuantizedRows::new(&x, nb * 32);
            let v = |i: usize| xq.row(i.min(rows - 1));
            // SAFETY: checked available() above; lengths agree.
            let got = unsafe { x86::dot_rows(quant, &w, [v(0), v(1), v(2), v(3)]) };
            for (i, &g) in got.iter().enumerate().take(rows) {
                let want = scalar::dot(quant, &w, xq.row(i));
                let tol = 1e-5 * (1.0 + want.abs()) + 1e-4;
                assert!(
                    (g - want).abs() <= tol,
                    "case {case} {quant} row {i}: {g} vs {want}"
                );
            }
        }
    }
}
