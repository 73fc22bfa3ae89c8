//! Matrix products with block-quantized weights, read in their file layout
//! (core's [`QuantType`]), so a model's resident memory is its file's
//! tensor bytes. The weights are dequantized inside the kernel and the
//! activations stay f32, so the results equal the f32 path's up to the
//! order of the additions (no 8-bit rounding of the activations: it moved
//! SmolLM2's logits by up to 0.1, enough to change a greedy answer) --
//! except for one activation row on x86 CPUs with AVX2, and many rows on
//! CPUs with AMX:
//!
//! - One activation row (decode of one sequence) with AVX2 (AVX-512 CPUs
//!   included): the row is rounded to 16 bits per block once, and each
//!   task runs its range of weight rows through `vpmaddwd` in one call
//!   ([`x86_i16`]: about a third fewer instructions per block; logits
//!   move by at most a few thousandths).
//! - Few activation rows (decode): each task takes a range of weight rows
//!   and computes their dot products with up to four activation rows at
//!   a time, so each block is widened once for four sequences (AVX2 for
//!   Q8_0 / Q4_0 / Q4_1 in [`x86`], checked at run time; [`scalar`] for
//!   the K-quants and on other CPUs).
//! - Some rows (decode of a batch): each task dequantizes three weight
//!   rows at a time (bit for bit as core's reference) and multiplies them
//!   with four activation rows at a time in registers ([`x86::dot_block`]).
//! - Many rows (prefill): each task dequantizes its range of weight rows
//!   into an f32 tile once and multiplies it with matrixmultiply's packed
//!   GEMM (packing pays from about 64 rows).
//! - 12 rows or more on CPUs with AMX-BF16 (Sapphire Rapids and later,
//!   where Linux grants the tile state): the AMX tile unit, each operand
//!   split into two bf16 so about 16 of f32's 24 bits are kept ([`amx`]:
//!   the error bound and why there).
//!
//! Tasks run on the device's persistent workers and the calling thread.

#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;
pub(crate) mod scalar;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_512;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_i16;

use hetero_core::{QuantMatmulSpec, QuantType};

use crate::workers::SharedOut;

/// Multiply-adds below which a product runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 16;
/// Activation rows from which dequantizing weight rows once for all of
/// them pays (below: blocks widened in registers per four rows).
const DEQUANT_MIN_ROWS: usize = 8;
/// Activation rows from which the packed GEMM beats the register blocks.
const TILE_MIN_ROWS: usize = 64;
/// Activation rows from which AMX CPUs use the tile unit ([`amx`]): below,
/// splitting each weight into two bf16 costs more than the tile products
/// save (criterion, Q4_1 576 x 1536 on a 2-core Xeon, same runs, SIMD vs
/// AMX: 8 rows 78 vs 102 us, 16 rows 138 vs 107 us, 32 rows 281 vs 121-125
/// us; the two lines cross at about 12 rows).
#[cfg(target_arch = "x86_64")]
const AMX_MIN_ROWS: usize = 12;
/// Bytes of f32 tile a task dequantizes at most (one GEMM call per tile:
/// the packed GEMM re-packs the activations on every call, so tiles are as
/// large as this allows, one per thread where it fits).
const TILE_BYTES: usize = 2 << 20;

/// Which implementation of the dot products runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512F for the dot products (AVX2 for dequantization).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    /// The fastest this CPU has.
    pub(crate) fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if x86_512::available() {
                return Kernel::Avx512;
            }
            if x86::available() {
                return Kernel::Avx2;
            }
        }
        Kernel::Scalar
    }

    /// Whether the AVX2 kernels may run (AVX-512 CPUs have them too).
    #[cfg(target_arch = "x86_64")]
    fn avx2(self) -> bool {
        matches!(self, Kernel::Avx2 | Kernel::Avx512)
    }
}

/// How a device runs its quantized products (chosen when it is built).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Paths {
    pub(crate) kernel: Kernel,
    /// Every row computed as it would be alone
    /// (`HostDeviceBuilder::batch_invariant`).
    pub(crate) batch_invariant: bool,
    /// Many rows on the AMX tile unit (`HostDeviceBuilder::amx`; only
    /// with [`Kernel::Avx512`] where `amx::available()`).
    pub(crate) amx: bool,
}

impl Paths {
    /// The fastest paths of this CPU; `amx` off turns the tile unit off.
    pub(crate) fn detect(batch_invariant: bool, amx: bool) -> Paths {
        let kernel = Kernel::detect();
        #[cfg(target_arch = "x86_64")]
        let amx = amx && kernel == Kernel::Avx512 && amx::available();
        #[cfg(not(target_arch = "x86_64"))]
        let amx = {
            let _ = amx;
            false
        };
        Paths {
            kernel,
            batch_invariant,
            amx,
        }
    }

    /// `kernel` alone: no tile unit, rows as the row count suggests.
    #[cfg(test)]
    fn plain(kernel: Kernel) -> Paths {
        Paths {
            kernel,
            batch_invariant: false,
            amx: false,
        }
    }
}

/// `y = x W^T` (lengths validated by the caller).
pub(crate) fn matmul(
    spec: &QuantMatmulSpec,
    x: &[f32],
    w: &[u8],
    y: &mut [f32],
    workers: &crate::workers::Workers,
    paths: Paths,
) {
    let kernel = paths.kernel;
    if paths.batch_invariant {
        // Every row through the register blocks, whatever the row count:
        // each row's sums then take the same operations as alone.
        run(spec, x, None, w, y, workers, kernel, false);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if kernel.avx2() && spec.rows == 1 && spec.quant.block_elems() == 32 {
        // One sequence: the activations rounded to 16 bits (x86_i16),
        // once here for all tasks, into a buffer this thread keeps. Two or
        // more rows keep f32 activations (measured slower rounded). On
        // AVX-512 CPUs too (an Intel Xeon: 96 -> 121 tokens/s decoding
        // one sequence of SmolLM2-135M Q4_1; not measured on AMD's).
        ROUNDED.with_borrow_mut(|x16| {
            // SAFETY: Avx2 and Avx512 are only chosen when x86::available().
            unsafe { x16.quantize(x) };
            run(spec, x, Some(x16), w, y, workers, kernel, true);
        });
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // inp is a whole number of blocks of 32 or 256 (spec.validate), as
    // the tiles' 32-value chunks need.
    if paths.amx && spec.rows >= AMX_MIN_ROWS {
        PACKED.with_borrow_mut(|packed| {
            // SAFETY: amx::available() was checked; x holds rows x inp.
            unsafe { packed.pack(x, spec.rows, spec.inp, workers) };
            run_amx(spec, packed, w, y, workers);
        });
        return;
    }
    run(spec, x, None, w, y, workers, kernel, true);
}

/// [`matmul`] on the tile unit: the output features split into tasks of
/// whole 16-feature tiles.
#[cfg(target_arch = "x86_64")]
fn run_amx(
    spec: &QuantMatmulSpec,
    packed: &amx::PackedRows,
    w: &[u8],
    y: &mut [f32],
    workers: &crate::workers::Workers,
) {
    let out = spec.out;
    if out == 0 {
        return;
    }
    let row_bytes = w.len() / out;
    let y_ptr = SharedOut::new(y);
    let task = |cols: std::ops::Range<usize>| {
        // SAFETY: amx::available() was checked by the caller; packed holds
        // spec.rows rows of spec.inp values; y is rows x out and the
        // columns `cols` are this task's alone.
        unsafe {
            amx::matmul_cols(
                spec.quant,
                &w[cols.start * row_bytes..cols.end * row_bytes],
                row_bytes,
                packed,
                amx::Output {
                    y: y_ptr.at(0),
                    rows: spec.rows,
                    out,
                    col0: cols.start,
                },
            );
        }
    };
    let threads = workers.threads();
    if threads == 1 {
        task(0..out);
        return;
    }
    // Whole tiles, a few tasks per thread so uneven progress evens out.
    let per = out.div_ceil(threads * 4).next_multiple_of(16);
    workers.run(out.div_ceil(per), |c| {
        task(c * per..((c + 1) * per).min(out))
    });
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// The activations of this thread's last product on the tile unit.
    static PACKED: std::cell::RefCell<amx::PackedRows> = Default::default();
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// The activation row of this thread's last one-row product, rounded.
    static ROUNDED: std::cell::RefCell<x86_i16::Rounded> = Default::default();
}

/// The activation row rounded to 16 bits: on AVX2-only CPUs, for one row.
#[cfg(target_arch = "x86_64")]
type RoundedRow<'a> = Option<&'a x86_i16::Rounded>;
#[cfg(not(target_arch = "x86_64"))]
type RoundedRow<'a> = Option<&'a ()>;

/// [`matmul`], with the one activation row also given rounded (`x16`,
/// from `x`) where the 16-bit kernel runs; `by_rows` lets many rows take
/// the dequantizing paths (off: the register blocks for every count).
#[allow(clippy::too_many_arguments)] // the operands, the pool, and two choices
fn run(
    spec: &QuantMatmulSpec,
    x: &[f32],
    x16: RoundedRow<'_>,
    w: &[u8],
    y: &mut [f32],
    workers: &crate::workers::Workers,
    kernel: Kernel,
    by_rows: bool,
) {
    let (rows, out, inp) = (spec.rows, spec.out, spec.inp);
    if rows == 0 || out == 0 {
        return;
    }
    let row_bytes = w.len() / out;
    let y_ptr = SharedOut::new(y);
    let tiled = by_rows && rows >= TILE_MIN_ROWS;
    let dequant = by_rows && !tiled && rows >= DEQUANT_MIN_ROWS;
    let task = |cols: std::ops::Range<usize>| {
        if tiled {
            tile(
                spec,
                x,
                &w[cols.start * row_bytes..cols.end * row_bytes],
                y_ptr,
                cols.start,
                kernel,
            );
            return;
        }
        if dequant {
            let put = |r: usize, j: usize, v: f32| {
                // SAFETY: r < rows and j < out (a column of this task's).
                unsafe { *y_ptr.at(r * out + j) = v };
            };
            dequantized_rows(spec, x, w, row_bytes, cols, kernel, put);
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(x16) = x16 {
            // One sequence: y is one row, and this task's columns are its
            // own slice of it.
            // SAFETY: cols lies inside 0..out = y, and belongs to this
            // task alone while y is borrowed mutably for the whole run.
            let ys = unsafe { std::slice::from_raw_parts_mut(y_ptr.at(cols.start), cols.len()) };
            // SAFETY: x16 is only given for Kernel::Avx2 / Avx512, chosen
            // only when x86::available(); it was rounded from x, one block of
            // activations per block of each weight row.
            unsafe {
                x86_i16::dot_range(
                    spec.quant,
                    &w[cols.start * row_bytes..cols.end * row_bytes],
                    row_bytes,
                    x16,
                    ys,
                );
            }
            return;
        }
        for j in cols {
            let wrow = &w[j * row_bytes..(j + 1) * row_bytes];
            let mut put = |r: usize, v: f32| {
                // SAFETY: r < rows and j < out, so the index is inside y,
                // and column j belongs to this task alone.
                unsafe { *y_ptr.at(r * out + j) = v };
            };
            // Batch-invariant: at most two rows per call, where the AVX2
            // kernel's accumulators are the ones it uses for one row.
            let group = if by_rows { 4 } else { 2 };
            dots(spec.quant, wrow, x, rows, inp, kernel, group, &mut put);
        }
    };
    let threads = workers.threads();
    let tile_rows = (TILE_BYTES / 4 / inp).max(8);
    if threads == 1 || rows * out * inp < PARALLEL_MIN_MACS {
        if tiled {
            (0..out.div_ceil(tile_rows))
                .for_each(|c| task(c * tile_rows..((c + 1) * tile_rows).min(out)));
        } else {
            task(0..out);
        }
        return;
    }
    let per = if tiled {
        tile_rows.min(out.div_ceil(threads)).max(8)
    } else {
        // A few tasks per thread so uneven progress evens out.
        out.div_ceil(threads * 4).max(8)
    };
    workers.run(out.div_ceil(per), |c| {
        task(c * per..((c + 1) * per).min(out))
    });
}

/// The dot products of weight row `wrow` with every activation row, at
/// most `group` (1 to 4) rows per kernel call.
#[allow(clippy::too_many_arguments)] // the operands, the kernel, the grouping
fn dots(
    quant: QuantType,
    wrow: &[u8],
    x: &[f32],
    rows: usize,
    inp: usize,
    kernel: Kernel,
    group: usize,
    put: &mut impl FnMut(usize, f32),
) {
    let small_blocks = quant.block_elems() == 32;
    let mut r = 0;
    while r < rows {
        let n = (rows - r).min(group);
        match kernel {
            #[cfg(target_arch = "x86_64")]
            k @ (Kernel::Avx512 | Kernel::Avx2) if small_blocks => {
                let xr = |i: usize| &x[(r + i) * inp..(r + i + 1) * inp];
                let mut emit = |vals: &[f32]| {
                    for (i, &val) in vals.iter().enumerate() {
                        put(r + i, val);
                    }
                };
                let mut vals = [0.0f32; 4];
                // The same call for 1..=4 rows on either instruction set.
                macro_rules! rows {
                    ($($i:literal)+) => {
                        // SAFETY: Kernel::Avx512 / Avx2 are only chosen when
                        // x86_512::available() / x86::available(); the
                        // lengths were validated by the caller.
                        unsafe {
                            let v = if k == Kernel::Avx512 {
                                x86_512::dot_rows(quant, wrow, [$(xr($i)),+])
                            } else {
                                x86::dot_rows(quant, wrow, [$(xr($i)),+])
                            };
                            vals[..v.len()].copy_from_slice(&v);
                        }
                    };
                }
                match n {
                    4 => rows!(0 1 2 3),
                    3 => rows!(0 1 2),
                    2 => rows!(0 1),
                    _ => rows!(0),
                }
                emit(&vals[..n]);
            }
            _ => {
                for i in r..r + n {
                    put(i, scalar::dot(quant, wrow, &x[i * inp..(i + 1) * inp]));
                }
            }
        }
        r += n;
    }
}

/// Weight rows `cols` dequantized three at a time, each group multiplied
/// with the activation rows four at a time in registers; `put(r, j, v)`
/// stores `y[r][j]`.
fn dequantized_rows(
    spec: &QuantMatmulSpec,
    x: &[f32],
    w: &[u8],
    row_bytes: usize,
    cols: std::ops::Range<usize>,
    kernel: Kernel,
    put: impl Fn(usize, usize, f32),
) {
    const R: usize = 4;
    // Weight rows per group: 4 x 4 accumulators fit AVX-512's 32
    // registers, 4 x 3 AVX2's 16.
    #[cfg(target_arch = "x86_64")]
    let group = if kernel == Kernel::Avx512 { 4 } else { 3 };
    #[cfg(not(target_arch = "x86_64"))]
    let group = 3;
    let (rows, inp, quant) = (spec.rows, spec.inp, spec.quant);
    let mut scratch = vec![0.0f32; group * inp];
    let mut j = cols.start;
    while j < cols.end {
        let nc = (cols.end - j).min(group);
        let wb = &w[j * row_bytes..(j + nc) * row_bytes];
        let dense = &mut scratch[..nc * inp];
        dequantize_blocks(quant, wb, dense, kernel);
        let wr = |c: usize| &scratch[c * inp..(c + 1) * inp];
        let xr = |r: usize| &x[r * inp..(r + 1) * inp];
        let mut r = 0;
        while r < rows {
            let nr = (rows - r).min(R);
            match kernel {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512 if nr == R && nc == 4 => {
                    // SAFETY: available() checked at detection; rows of inp
                    // values, inp a multiple of 32.
                    let v = unsafe {
                        x86_512::dot_block(
                            [xr(r), xr(r + 1), xr(r + 2), xr(r + 3)],
                            [wr(0), wr(1), wr(2), wr(3)],
                        )
                    };
                    for (i, row) in v.iter().enumerate() {
                        for (c, &val) in row.iter().enumerate() {
                            put(r + i, j + c, val);
                        }
                    }
                }
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 if nr == R && nc == 3 => {
                    // SAFETY: available() checked at detection; rows of inp
                    // values, inp a multiple of 32.
                    let v = unsafe {
                        x86::dot_block(
                            [xr(r), xr(r + 1), xr(r + 2), xr(r + 3)],
                            [wr(0), wr(1), wr(2)],
                        )
                    };
                    for (i, row) in v.iter().enumerate() {
                        for (c, &val) in row.iter().enumerate() {
                            put(r + i, j + c, val);
                        }
                    }
                }
                _ => {
                    for i in r..r + nr {
                        for c in 0..nc {
                            put(i, j + c, crate::gemv::dot(xr(i), wr(c)));
                        }
                    }
                }
            }
            r += nr;
        }
        j += nc;
    }
}

/// Whole blocks `w` of `quant` dequantized onto `out` (its values per
/// block), bit for bit as core's reference, by this CPU's fastest kernel.
fn dequantize_blocks(quant: QuantType, w: &[u8], out: &mut [f32], kernel: Kernel) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 if quant.block_elems() == 32 => {
            // SAFETY: chosen only when x86_512::available(); out holds 32
            // values per block of w.
            unsafe { x86_512::dequantize(quant, w, out) }
        }
        #[cfg(target_arch = "x86_64")]
        k if k.avx2() && quant.block_elems() == 32 => {
            // SAFETY: chosen only when x86::available(); out holds 32
            // values per block of w.
            unsafe { x86::dequantize(quant, w, out) }
        }
        _ => {
            let be = quant.block_elems();
            for (blk, o) in w
                .chunks_exact(quant.block_bytes())
                .zip(out.chunks_exact_mut(be))
            {
                quant.dequantize_block(blk, o);
            }
        }
    }
}

/// Columns `col0..col0 + w.len() / row_bytes` of `y`: the weight rows `w`
/// dequantized into an f32 tile, then one packed GEMM.
fn tile(spec: &QuantMatmulSpec, x: &[f32], w: &[u8], y: SharedOut, col0: usize, kernel: Kernel) {
    let (rows, out, inp) = (spec.rows, spec.out, spec.inp);
    let quant = spec.quant;
    let mut t = vec![0.0f32; w.len() / quant.block_bytes() * quant.block_elems()];
    dequantize_blocks(quant, w, &mut t, kernel);
    let n = t.len() / inp;
    // SAFETY: x is rows x inp, t is n x inp (read as its transpose, inp x
    // n), and C starts at column col0 of y (rows x out, row stride out)
    // with col0 + n <= out; the columns col0..col0 + n are this task's.
    unsafe {
        matrixmultiply::sgemm(
            rows,
            inp,
            n,
            1.0,
            x.as_ptr(),
            inp as isize,
            1,
            t.as_ptr(),
            1,
            inp as isize,
            0.0,
            y.at(col0),
            out as isize,
            1,
        );
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
    let (bb, be) = (quant.block_bytes(), quant.block_elems());
    let row_bytes = width / be * bb;
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
    use hetero_core::testsuite::quant::{f64_dot, i16_rounding_allowance, random_quant_blocks};

    use super::*;

    /// f64 dot product of the exactly dequantized row with x, and the sum
    /// of the absolute products.
    fn reference(quant: QuantType, w: &[u8], x: &[f32]) -> (f64, f64) {
        let mut dense = Vec::new();
        quant.dequantize(w, &mut dense);
        f64_dot(x, &dense)
    }

    /// With `batch_invariant`, every row of a product is bit for bit the
    /// row computed alone, for every format, kernel and row count (the
    /// counts cross the 4-row groups, the 8-row dequantizing and the
    /// 64-row tiled thresholds the normal mode switches at).
    #[test]
    fn batch_invariant_rows_equal_rows_alone() {
        let workers = crate::workers::Workers::new(2, 0).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = SplitMix64::new(23);
        let kernels: Vec<Kernel> =
            [Kernel::Scalar, Kernel::detect()]
                .into_iter()
                .fold(Vec::new(), |mut v, k| {
                    if !v.contains(&k) {
                        v.push(k);
                    }
                    v
                });
        for kernel in kernels {
            for (case, quant) in QuantType::ALL.into_iter().enumerate() {
                let be = quant.block_elems();
                let inp = be * (1 + case % 3);
                let out = 37;
                let w = random_quant_blocks(quant, out * inp / be, 900 + case as u64);
                for rows in [1, 2, 3, 5, 8, 9, 17, 64, 70] {
                    let x: Vec<f32> = (0..rows * inp)
                        .map(|_| rng.signed_unit_f32() * 2.0)
                        .collect();
                    let spec = QuantMatmulSpec {
                        rows,
                        out,
                        inp,
                        quant,
                    };
                    let mut y = vec![0.0f32; rows * out];
                    // The tile unit asked for too: invariance takes precedence.
                    let paths = Paths {
                        batch_invariant: true,
                        amx: true,
                        ..Paths::plain(kernel)
                    };
                    matmul(&spec, &x, &w, &mut y, &workers, paths);
                    for r in 0..rows {
                        let one = QuantMatmulSpec { rows: 1, ..spec };
                        let mut alone = vec![0.0f32; out];
                        matmul(
                            &one,
                            &x[r * inp..(r + 1) * inp],
                            &w,
                            &mut alone,
                            &workers,
                            paths,
                        );
                        for j in 0..out {
                            assert_eq!(
                                y[r * out + j].to_bits(),
                                alone[j].to_bits(),
                                "{quant} {kernel:?} {rows} rows: y[{r}][{j}]"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The tile-unit product (through [`matmul`], as the device calls it)
    /// against the f64 reference, for every format, with row counts
    /// across the 16-row tiles and their pairs and feature counts that
    /// are not whole tiles; within the split-bf16 bound of the `amx`
    /// module docs (about 3 * 2^-16 of the sum of |x w|).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn amx_matches_f64_reference() {
        if !amx::available() {
            eprintln!(
                "skipped: this CPU or kernel gives no AMX-BF16 (or {} turns it off)",
                amx::DISABLE_ENV
            );
            return;
        }
        let workers = crate::workers::Workers::new(2, 0).unwrap_or_else(|e| panic!("{e}"));
        let mut rng = SplitMix64::new(41);
        for case in 0..60 {
            let quant = QuantType::ALL[case % QuantType::ALL.len()];
            let nb = 1 + rng.below(if quant.block_elems() == 32 { 24 } else { 3 });
            let inp = nb * quant.block_elems();
            let rows = AMX_MIN_ROWS + rng.below(60);
            let out = 1 + rng.below(70);
            let w = random_quant_blocks(quant, nb * out, rng.next_u64());
            let x: Vec<f32> = (0..rows * inp)
                .map(|_| rng.signed_unit_f32() * 3.0)
                .collect();
            let spec = QuantMatmulSpec {
                quant,
                rows,
                inp,
                out,
            };
            let mut y = vec![f32::NAN; rows * out];
            let paths = Paths {
                amx: true,
                ..Paths::plain(Kernel::Avx512)
            };
            matmul(&spec, &x, &w, &mut y, &workers, paths);
            let row_bytes = w.len() / out;
            for r in 0..rows {
                for j in 0..out {
                    let (want, abs) = reference(
                        quant,
                        &w[j * row_bytes..(j + 1) * row_bytes],
                        &x[r * inp..(r + 1) * inp],
                    );
                    let got = f64::from(y[r * out + j]);
                    assert!(
                        (got - want).abs() <= 5e-5 * abs + 1e-6,
                        "case {case}: {quant} {rows}x{inp} by {out}: y[{r}][{j}] = {got}, want {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn scalar_matches_f64_reference() {
        let mut rng = SplitMix64::new(5);
        for case in 0..120 {
            let quant = QuantType::ALL[case % QuantType::ALL.len()];
            let nb = 1 + rng.below(12);
            let w = random_quant_blocks(quant, nb, rng.next_u64());
            let x: Vec<f32> = (0..nb * quant.block_elems())
                .map(|_| rng.signed_unit_f32() * 3.0)
                .collect();
            let (want, abs) = reference(quant, &w, &x);
            let got = f64::from(scalar::dot(quant, &w, &x));
            assert!(
                (got - want).abs() <= 1e-5 * abs + 1e-6,
                "{quant}: {got} vs {want}"
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_dequantize_is_bit_exact() {
        if !x86::available() {
            eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
            return;
        }
        for (i, quant) in [QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4_1]
            .into_iter()
            .enumerate()
        {
            let w = random_quant_blocks(quant, 300, 40 + i as u64);
            let mut want = Vec::new();
            quant.dequantize(&w, &mut want);
            let mut got = vec![0.0f32; want.len()];
            // SAFETY: checked available() above; got holds 32 per block.
            unsafe { x86::dequantize(quant, &w, &mut got) };
            for (k, (g, r)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), r.to_bits(), "{quant} element {k}: {g} vs {r}");
            }
            if x86_512::available() {
                got.fill(f32::NAN);
                // SAFETY: checked available(); got holds 32 per block.
                unsafe { x86_512::dequantize(quant, &w, &mut got) };
                for (k, (g, r)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        r.to_bits(),
                        "avx512 {quant} element {k}: {g} vs {r}"
                    );
                }
            } else {
                eprintln!("the AVX-512 dequantization skipped: this CPU lacks AVX-512F");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn register_blocks_match_f64_reference() {
        let mut rng = SplitMix64::new(17);
        for case in 0..100 {
            let k = 32 * (1 + rng.below(20));
            let mut row = || -> Vec<f32> { (0..k).map(|_| rng.signed_unit_f32() * 2.0).collect() };
            let xs: Vec<Vec<f32>> = (0..4).map(|_| row()).collect();
            let ws: Vec<Vec<f32>> = (0..4).map(|_| row()).collect();
            let check = |got: &[f32], cols: usize, what: &str| {
                for r in 0..4 {
                    for c in 0..cols {
                        let (want, abs) = f64_dot(&xs[r], &ws[c]);
                        let g = f64::from(got[r * cols + c]);
                        assert!(
                            (g - want).abs() <= 1e-5 * abs + 1e-6,
                            "{what} case {case} [{r}][{c}]: {g} vs {want}"
                        );
                    }
                }
            };
            let x = |i: usize| xs[i].as_slice();
            let w = |i: usize| ws[i].as_slice();
            if x86::available() {
                // SAFETY: checked available(); rows of k, a multiple of 32.
                let v = unsafe { x86::dot_block([x(0), x(1), x(2), x(3)], [w(0), w(1), w(2)]) };
                check(&v.concat(), 3, "avx2");
            }
            if x86_512::available() {
                // SAFETY: checked available(); rows of k, a multiple of 32.
                let v = unsafe {
                    x86_512::dot_block([x(0), x(1), x(2), x(3)], [w(0), w(1), w(2), w(3)])
                };
                check(&v.concat(), 4, "avx512");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_dot_rows_match_f64_reference() {
        if !x86::available() {
            eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
            return;
        }
        let mut rng = SplitMix64::new(11);
        for case in 0..300 {
            let quant = [QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4_1][case % 3];
            let nb = 1 + rng.below(50);
            let w = random_quant_blocks(quant, nb, rng.next_u64());
            let rows: Vec<Vec<f32>> = (0..4)
                .map(|_| (0..nb * 32).map(|_| rng.signed_unit_f32() * 3.0).collect())
                .collect();
            let x = |i: usize| rows[i].as_slice();
            // SAFETY: checked available() above; lengths agree.
            let xs = [x(0), x(1), x(2), x(3)];
            let mut all = vec![unsafe { x86::dot_rows(quant, &w, xs) }];
            // One and two rows take other accumulator layouts; padded to
            // four with the four-row results so the check below indexes
            // rows the same way.
            // SAFETY: as above.
            let one = unsafe { x86::dot_rows(quant, &w, [x(0)]) };
            let two = unsafe { x86::dot_rows(quant, &w, [x(0), x(1)]) };
            all.push([one[0], all[0][1], all[0][2], all[0][3]]);
            all.push([two[0], two[1], all[0][2], all[0][3]]);
            if x86_512::available() {
                // SAFETY: checked available(); lengths agree.
                all.push(unsafe { x86_512::dot_rows(quant, &w, xs) });
            }
            for (i, &g) in all.iter().flatten().enumerate() {
                let i = i % 4;
                let (want, abs) = reference(quant, &w, x(i));
                let g = f64::from(g);
                assert!(
                    (g - want).abs() <= 1e-5 * abs + 1e-6,
                    "case {case} {quant} row {i}: {g} vs {want}"
                );
            }
        }
    }

    /// The 16-bit kernel against the f64 product of the exact weights
    /// with the *unrounded* activations: the error may be the f32 path's
    /// plus at most half a step per element (`sum |w| step / 2` per
    /// block), and no more.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn i16_dot_range_matches_f64_reference_within_the_rounding() {
        if !x86::available() {
            eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
            return;
        }
        let mut rng = SplitMix64::new(23);
        for case in 0..300 {
            let quant = [QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4_1][case % 3];
            let nb = 1 + rng.below(50);
            let n_rows = 1 + rng.below(5);
            let w = random_quant_blocks(quant, nb * n_rows, rng.next_u64());
            let row_bytes = w.len() / n_rows;
            let k = nb * 32;
            // Magnitudes from 0.01 to 200, some with a block of zeros or
            // one outlier.
            let scale = [3.0, 0.01, 200.0, 1.0][case % 4];
            let mut x: Vec<f32> = (0..k)
                .map(|i| {
                    if case % 5 == 0 && i < 32 {
                        0.0
                    } else {
                        rng.signed_unit_f32() * scale
                    }
                })
                .collect();
            if case % 7 == 0 {
                x[rng.below(k)] = 100.0 * scale;
            }
            let mut x16 = x86_i16::Rounded::default();
            let mut got = vec![0.0f32; n_rows];
            // SAFETY: checked available() above; n_rows rows of row_bytes,
            // k values for each.
            unsafe {
                x16.quantize(&x);
                x86_i16::dot_range(quant, &w, row_bytes, &x16, &mut got);
            }
            for (j, &g) in got.iter().enumerate() {
                let wrow = &w[j * row_bytes..(j + 1) * row_bytes];
                let (want, abs) = reference(quant, wrow, &x);
                let mut dense = Vec::new();
                quant.dequantize(wrow, &mut dense);
                let rounding = i16_rounding_allowance(&x, &dense);
                let g = f64::from(g);
                assert!(
                    (g - want).abs() <= 1.01 * rounding + 1e-5 * abs + 1e-6,
                    "case {case} {quant} row {j}: {g} vs {want} (rounding bound {rounding})"
                );
            }
        }
    }

    /// A non-finite activation makes its products non-finite, as on the
    /// f32 path, instead of being rounded to an integer.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn i16_rounding_keeps_non_finite_values_visible() {
        if !x86::available() {
            eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
            return;
        }
        for quant in [QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4_1] {
            let w = random_quant_blocks(quant, 2, 3);
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut x = vec![0.5f32; 64];
                x[40] = bad;
                let mut x16 = x86_i16::Rounded::default();
                let mut v = [0.0f32];
                // SAFETY: checked available() above; one row of two
                // blocks.
                unsafe {
                    x16.quantize(&x);
                    x86_i16::dot_range(quant, &w, w.len(), &x16, &mut v);
                }
                assert!(!v[0].is_finite(), "{quant} {bad}: got {}", v[0]);
            }
        }
    }
}
