//! Products with many activation rows on Intel AMX (Sapphire Rapids and
//! later): the tile unit's `tdpbf16ps` multiplies 16 x 32 by 32 x 16 bf16
//! tiles into 16 x 16 f32 in about 16 cycles (one every 4.3 ns on this
//! project's Xeon, dependent on the one before or not: measured), where
//! AVX-512 FMAs need about 256.
//!
//! bf16 keeps 8 significant bits of an f32's 24, which alone would move
//! SmolLM2's logits as the 8-bit activations the module refuses do. So
//! every operand (activation, and weight as dequantized exactly) is split
//! into two bf16: `hi = bf16(v)` (round to nearest: `|v - hi| <= 2^-8
//! |v|`) and `lo = bf16(v - hi)` (`v - hi` is exact in f32), so the pair
//! misses `v` by at most `2^-16 |v|`. The product takes `hi_x hi_w + hi_x lo_w + lo_x
//! hi_w` (three tile products, each product exact in the tiles' f32
//! sums; the dropped `lo_x lo_w` is at most `2^-16 |x w|`), so a dot
//! product is off by at most about `3 * 2^-16` of the sum of `|x w|`
//! (checked against an f64 reference on random blocks; the f32 path's
//! bound is about `2^-24` times the length). Measured on SmolLM2-135M
//! Q4_1: the top logits stay within 0.0102 of the float64 reference
//! (0.0081 without the tile unit; 8-bit activations: 0.1) and the greedy
//! continuations of the test prompts are unchanged. Denormal bf16 inputs
//! are flushed by the unit; they only occur as `lo` of values under 1e-33.
//!
//! Layout: the weights are the tiles' A operand (16 output features by 32
//! inputs, a row per feature: the dequantized rows as they are), the
//! activations the B operand (16 pairs of inputs by 16 activation rows,
//! packed once per product by [`PackedRows`]); the 16 x 16 result is
//! (feature, activation row) and is transposed into `y` when stored.
//!
//! The instructions are written with `asm!` (the AMX intrinsics are not
//! stable Rust); Linux hands a process the tile state only after
//! `arch_prctl(ARCH_REQ_XCOMP_PERM)`, asked once in [`available`].

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use hetero_core::QuantType;

/// Inputs per tile row (32 bf16 = 64 bytes, the tiles' widest row).
const K_TILE: usize = 32;
/// Rows and columns of a result tile.
const N_TILE: usize = 16;
/// Environment variable that turns the AMX kernels off (`0` or `off`).
pub(crate) const DISABLE_ENV: &str = "HETERO_HOST_AMX";

/// Whether this process may run the kernels of this module: the CPU has
/// AMX-TILE, AMX-BF16 and AVX-512 BF16, the kernel granted the tile state,
/// and `HETERO_HOST_AMX` does not turn them off. Decided once.
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let off = std::env::var(DISABLE_ENV)
            .map(|v| matches!(v.trim(), "0" | "off" | "false" | "no"))
            .unwrap_or(false);
        !off && cpu_has_amx_bf16() && request_tile_state()
    })
}

/// CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE; and the AVX-512
/// instructions the packing uses.
fn cpu_has_amx_bf16() -> bool {
    if !(is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16"))
    {
        return false;
    }
    // Leaf 7 is valid when the maximum leaf (leaf 0's EAX) reaches it.
    if __cpuid(0).eax < 7 {
        return false;
    }
    let leaf7 = __cpuid_count(7, 0);
    leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0
}

/// Ask Linux for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`): granted to the whole process, including threads
/// that already run; refused where the kernel or hypervisor does not
/// enable AMX (then the tile instructions would fault).
#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: the arch_prctl system call with these arguments only changes
    // which extended states this process may use; it reads and writes no
    // memory of ours. The syscall instruction clobbers rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

/// Other systems: no tile state is requested, so AMX is not used.
#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// Activation rows in the tiles' B layout: for each block of 16 rows and
/// each 32 inputs, a `hi` tile then a `lo` tile, each 16 tile rows (one
/// per pair of inputs) of 16 bf16 pairs (one per activation row), so a
/// block of rows is one contiguous part (packed by one task). Rows past
/// the last are zero.
#[derive(Default)]
pub(crate) struct PackedRows {
    data: Vec<u32>,
    /// Blocks of 16 activation rows.
    row_tiles: usize,
    /// Chunks of 32 inputs.
    chunks: usize,
}

/// u32 (bf16 pairs) in one tile of 16 rows of 64 bytes.
const TILE_U32: usize = N_TILE * N_TILE;

impl PackedRows {
    /// Pack `rows` rows of `inp` values (`inp` a multiple of 32), a block
    /// of 16 rows per task on `workers`.
    ///
    /// # Safety
    /// [`available`] returned true.
    pub(crate) unsafe fn pack(
        &mut self,
        x: &[f32],
        rows: usize,
        inp: usize,
        workers: &crate::workers::Workers,
    ) {
        debug_assert!(inp.is_multiple_of(K_TILE) && x.len() >= rows * inp);
        self.row_tiles = rows.div_ceil(N_TILE);
        self.chunks = inp / K_TILE;
        let part = self.chunks * 2 * TILE_U32;
        // Every element is written below (rows or zero padding): only
        // growth is filled.
        if self.data.len() < self.row_tiles * part {
            self.data.resize(self.row_tiles * part, 0);
        }
        let chunks = self.chunks;
        workers.run_chunks(&mut self.data[..self.row_tiles * part], part, |t, dst| {
            let valid = rows.saturating_sub(t * N_TILE).min(N_TILE);
            for c in 0..chunks {
                // SAFETY: available() (caller) gives AVX-512 BF16; rows
                // t * 16 .. + valid hold inp values with chunk c inside;
                // dst holds this row block's two tiles of every chunk.
                unsafe {
                    pack_tiles(
                        x.as_ptr().add(t * N_TILE * inp + c * K_TILE),
                        inp,
                        valid,
                        dst[c * 2 * TILE_U32..(c + 1) * 2 * TILE_U32].as_mut_ptr(),
                    )
                };
            }
        });
    }

    /// The `hi` tile of row block `t`, chunk `c` (the `lo` tile follows).
    fn tile(&self, t: usize, c: usize) -> *const u32 {
        self.data[(t * self.chunks + c) * 2 * TILE_U32..].as_ptr()
    }
}

/// 32 f32 values split into bf16 `hi` and `lo` (see the module docs),
/// each as 16 pairs of consecutive values (the first in the low half).
///
/// # Safety
/// AVX-512F/BW/BF16; `src` points at 32 readable f32.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn split32(src: *const f32, hi: *mut u8, lo: *mut u8) {
    // SAFETY: 32 values readable at src, 64 bytes writable at hi and lo
    // (caller).
    unsafe {
        let (a, b) = (_mm512_loadu_ps(src), _mm512_loadu_ps(src.add(16)));
        store_pair(split_regs(a, b), hi, lo);
    }
}

/// A split block's `hi` and `lo` (64 bytes each) stored at `hi` and `lo`.
///
/// # Safety
/// AVX-512F; 64 bytes writable at `hi` and at `lo`.
#[target_feature(enable = "avx512f")]
unsafe fn store_pair((hi_v, lo_v): (__m512i, __m512i), hi: *mut u8, lo: *mut u8) {
    // SAFETY: 64 bytes writable at each (caller).
    unsafe {
        _mm512_storeu_si512(hi.cast(), hi_v);
        _mm512_storeu_si512(lo.cast(), lo_v);
    }
}

/// Values 0..16 (`a`) and 16..32 (`b`) split as [`split32`], into
/// registers: (`hi`, `lo`), each 16 bf16 pairs. Both halves are rounded to
/// bf16 by one instruction, widened back to f32 to take the exact rest,
/// which one more rounds.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn split_regs(a: __m512, b: __m512) -> (__m512i, __m512i) {
    // bf16 0..16 from a, 16..32 from b (the second operand is the low half).
    // SAFETY (both transmutes): __m512bh and __m512i are 64 bytes of plain
    // bits.
    let hi_v: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(b, a)) };
    let widen = |h: __m256i| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)));
    let ha = widen(_mm512_castsi512_si256(hi_v));
    let hb = widen(_mm512_extracti64x4_epi64::<1>(hi_v));
    let lo_v: __m512i = unsafe {
        std::mem::transmute(_mm512_cvtne2ps_pbh(
            _mm512_sub_ps(b, hb),
            _mm512_sub_ps(a, ha),
        ))
    };
    (hi_v, lo_v)
}

/// 16 x 16 32-bit elements transposed in registers: `out[j][i] =
/// r[i][j]` (32-, 64- and 128-bit interleaves).
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // a[2i] / a[2i + 1]: rows 2i and 2i + 1 interleaved by 32 bits.
    let a: [__m512; 16] = std::array::from_fn(|k| {
        let (x, z) = (r[k & !1], r[k | 1]);
        if k % 2 == 0 {
            _mm512_unpacklo_ps(x, z)
        } else {
            _mm512_unpackhi_ps(x, z)
        }
    });
    // b[4i + c]: in each 128-bit lane L, column 4L + c of rows 4i..4i + 4.
    let b: [__m512; 16] = std::array::from_fn(|k| {
        let (i, c) = (k / 4, k % 4);
        let (x, z) = (
            _mm512_castps_pd(a[4 * i + (c / 2)]),
            _mm512_castps_pd(a[4 * i + 2 + (c / 2)]),
        );
        _mm512_castpd_ps(if c % 2 == 0 {
            _mm512_unpacklo_pd(x, z)
        } else {
            _mm512_unpackhi_pd(x, z)
        })
    });
    // Columns c, c + 4, c + 8, c + 12: lane L of b[c], b[4 + c], b[8 +
    // c], b[12 + c] for L = 0, 1, 2, 3.
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let c0 = _mm512_shuffle_f32x4::<0x88>(b[c], b[4 + c]);
        let c1 = _mm512_shuffle_f32x4::<0xdd>(b[c], b[4 + c]);
        let c2 = _mm512_shuffle_f32x4::<0x88>(b[8 + c], b[12 + c]);
        let c3 = _mm512_shuffle_f32x4::<0xdd>(b[8 + c], b[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(c0, c2);
        out[c + 4] = _mm512_shuffle_f32x4::<0x88>(c1, c3);
        out[c + 8] = _mm512_shuffle_f32x4::<0xdd>(c0, c2);
        out[c + 12] = _mm512_shuffle_f32x4::<0xdd>(c1, c3);
    }
    out
}

/// One chunk of a block of 16 activation rows in the B layout of
/// [`PackedRows`]: each row's 32 values split, then the `hi` and the `lo`
/// pairs transposed so that tile row `k` holds pair `k` of every
/// activation row. Rows from `valid` on are zero.
///
/// # Safety
/// AVX-512F/BW/BF16; `x` points at `valid` (at most 16) rows of stride
/// `inp` with 32 readable values each; `dst` at two tiles (512 u32).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_tiles(x: *const f32, inp: usize, valid: usize, dst: *mut u32) {
    let mut hi = [_mm512_setzero_ps(); 16];
    let mut lo = [_mm512_setzero_ps(); 16];
    for m in 0..valid {
        // SAFETY: row m's 32 values are readable (caller).
        let (a, b) = unsafe {
            (
                _mm512_loadu_ps(x.add(m * inp)),
                _mm512_loadu_ps(x.add(m * inp + 16)),
            )
        };
        let (h, l) = split_regs(a, b);
        hi[m] = _mm512_castsi512_ps(h);
        lo[m] = _mm512_castsi512_ps(l);
    }
    for (tile, rows) in [transpose16(hi), transpose16(lo)].iter().enumerate() {
        for (k, v) in rows.iter().enumerate() {
            // SAFETY: tile row k of tile `tile` is inside dst's 512 u32.
            unsafe { _mm512_storeu_ps(dst.add(tile * TILE_U32 + k * N_TILE).cast(), *v) };
        }
    }
}

/// 64-byte tile configuration: palette 1, the 8 tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn all_16_by_64() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            c[48 + t] = 16;
        }
        TileConfig(c)
    }
}

thread_local! {
    /// The two weight panels of one task (the one in the tiles and the one
    /// being filled): each, for each chunk of 32 inputs, the `hi` tile then
    /// the `lo` tile of 16 features (rows of 32 bf16).
    static PANEL: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// bf16 in one tile of 16 rows of 64 bytes.
const TILE_U16: usize = N_TILE * K_TILE;

/// Where a task's products go: `y` points at `rows x out` f32 (row
/// stride `out`), and the task's features are the columns from `col0`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    pub(crate) y: *mut f32,
    pub(crate) rows: usize,
    pub(crate) out: usize,
    pub(crate) col0: usize,
}

/// `y[r][col0 + j] = x[r] . w[j]` (`dst`) for the weight rows `w`
/// (quantized, `row_bytes` each; any count) and every activation row of
/// `x`, packed by [`PackedRows::pack`] from `dst.rows` rows.
///
/// # Safety
/// [`available`]; `x` packed from `dst.rows` rows of `inp = w row's
/// elements` values; `dst.y` points at `rows x out` f32 of which the
/// columns `col0..col0 + w.len() / row_bytes` are this caller's alone.
pub(crate) unsafe fn matmul_cols(
    quant: QuantType,
    w: &[u8],
    row_bytes: usize,
    x: &PackedRows,
    dst: Output,
) {
    PANEL.with_borrow_mut(|panel| {
        let len = x.chunks * 2 * TILE_U16;
        if panel.len() < 2 * len {
            panel.resize(2 * len, 0);
        }
        let (now, next) = panel[..2 * len].split_at_mut(len);
        // SAFETY: forwarded; each panel holds two tiles per chunk.
        unsafe { matmul_cols_with(quant, w, row_bytes, x, dst, [now, next]) }
    });
}

/// The `nc` (at most 16) weight rows `w` of a 256-value format (the
/// K-quants) into `panel`, split; the panel's other features zero. (The
/// 32-value formats are filled a chunk at a time: [`fill_chunk`].)
///
/// # Safety
/// [`available`]; `panel` holds two tiles per chunk; each row of `w`
/// holds `chunks` chunks of 32 values in whole blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx2,fma,f16c")]
unsafe fn fill_panel(
    quant: QuantType,
    w: &[u8],
    row_bytes: usize,
    nc: usize,
    chunks: usize,
    panel: &mut [u16],
) {
    debug_assert!(panel.len() >= chunks * 2 * TILE_U16 && chunk_format(quant).is_none());
    let base = panel.as_mut_ptr();
    // Where feature f's 32 values of chunk c go: the hi tile, then lo.
    let at = |f: usize, c: usize| {
        let hi = base.wrapping_add(c * 2 * TILE_U16 + f * K_TILE);
        (hi.cast::<u8>(), hi.wrapping_add(TILE_U16).cast::<u8>())
    };
    // Blocks dequantized exactly, one at a time.
    let mut dense = [0.0f32; 256];
    let (bb, be) = (quant.block_bytes(), quant.block_elems());
    for f in 0..nc {
        let row = &w[f * row_bytes..(f + 1) * row_bytes];
        for (b, blk) in row.chunks_exact(bb).enumerate() {
            quant.dequantize_block(blk, &mut dense[..be]);
            for i in 0..be / K_TILE {
                let (hi, lo) = at(f, b * be / K_TILE + i);
                // SAFETY: 32 values of dense; 64 bytes inside the panel at
                // each destination.
                unsafe { split32(dense.as_ptr().add(i * K_TILE), hi, lo) };
            }
        }
    }
    // SAFETY: the panel holds two tiles per chunk.
    unsafe { zero_features(base, nc, chunks) };
}

/// One 32-value block of a 4-bit format (`F`: 1 Q4_0, 2 Q4_1) as
/// [`split_regs`] of [`super::x86_512::exact_block`] would give it, by
/// table: the block's 16 possible values (`(q - 8) d` or `q d + m`, the
/// same arithmetic as core's reference) are computed and split once, and
/// each quant picks its `hi` and `lo` with a word permutation. About a
/// third fewer instructions than dequantizing and splitting 32 values.
///
/// # Safety
/// AVX-512F/BW/BF16, F16C; `p..p + block_bytes::<F>()` is one block.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx2,fma,f16c")]
unsafe fn split_by_table<const F: u8>(p: *const u8) -> (__m512i, __m512i) {
    let bb = super::x86::block_bytes::<F>();
    // SAFETY: the block's bytes are readable (caller): its f16 scales
    // first, its 16 quant bytes last.
    let (s, bytes) = unsafe {
        (
            _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned())),
            _mm_loadu_si128(p.add(bb - 16).cast()),
        )
    };
    let d = _mm512_broadcastss_ps(s);
    let q = _mm512_setr_ps(
        0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
    );
    let values = if F == 1 {
        _mm512_mul_ps(_mm512_sub_ps(q, _mm512_set1_ps(8.0)), d)
    } else {
        // Lane 1 of the converted pair is m.
        let m = _mm512_broadcastss_ps(_mm_movehdup_ps(s));
        _mm512_add_ps(_mm512_mul_ps(q, d), m)
    };
    // SAFETY (both transmutes): __m256bh and __m256i are 32 bytes of plain
    // bits.
    let hi: __m256i = unsafe { std::mem::transmute(_mm512_cvtneps_pbh(values)) };
    let widened = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(hi)));
    let lo: __m256i =
        unsafe { std::mem::transmute(_mm512_cvtneps_pbh(_mm512_sub_ps(values, widened))) };
    // Byte j holds quant j (low nibble) and j + 16 (high): words 0..16
    // the low nibbles, 16..32 the high ones.
    let words = _mm256_cvtepu8_epi16(bytes);
    let index = _mm512_inserti64x4::<1>(
        _mm512_castsi256_si512(_mm256_and_si256(words, _mm256_set1_epi16(0x0F))),
        _mm256_srli_epi16::<4>(words),
    );
    (
        _mm512_permutexvar_epi16(index, _mm512_castsi256_si512(hi)),
        _mm512_permutexvar_epi16(index, _mm512_castsi256_si512(lo)),
    )
}

/// The 32-value block formats whose panels are filled one chunk at a time
/// between the tile products of the panel before (see
/// [`matmul_cols_with`]): `F` of [`super::x86_512::exact_block`].
fn chunk_format(quant: QuantType) -> Option<u8> {
    match quant {
        QuantType::Q8_0 => Some(0),
        QuantType::Q4_0 => Some(1),
        QuantType::Q4_1 => Some(2),
        _ => None,
    }
}

/// Chunk `c` of the weight rows `features` (at most 16) of `w` (32-value
/// blocks, format `f` of [`chunk_format`]) into `panel`, split.
///
/// # Safety
/// AVX2/F16C/AVX-512 BF16; `panel` holds two tiles per chunk, chunk `c`
/// among them; each row of `w` holds block `c`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx2,fma,f16c")]
unsafe fn fill_chunk(
    f: u8,
    w: &[u8],
    row_bytes: usize,
    features: std::ops::Range<usize>,
    c: usize,
    panel: *mut u16,
) {
    let hi = panel.wrapping_add(c * 2 * TILE_U16);
    let at = move |feature: usize| {
        let h = hi.wrapping_add(feature * K_TILE);
        (h.cast::<u8>(), h.wrapping_add(TILE_U16).cast::<u8>())
    };
    macro_rules! rows {
        ($f:literal) => {{
            let bb = super::x86::block_bytes::<$f>();
            debug_assert!(w.len() >= features.end * row_bytes && row_bytes >= (c + 1) * bb);
            for feature in features.clone() {
                let (h, l) = at(feature);
                // SAFETY: block c of this row lies inside w; 64 bytes at h
                // and at l inside the panel (caller).
                unsafe {
                    let block = w.as_ptr().add(feature * row_bytes + c * bb);
                    let split = if $f == 0 {
                        let (a, b) = super::x86_512::exact_block::<$f>(block);
                        split_regs(a, b)
                    } else {
                        split_by_table::<$f>(block)
                    };
                    store_pair(split, h, l);
                }
            }
        }};
    }
    match f {
        0 => rows!(0),
        1 => rows!(1),
        _ => rows!(2),
    }
}

/// Zero features `from..16` of every chunk of `panel` (a panel of fewer
/// than 16 weight rows: the tiles read all 16).
///
/// # Safety
/// `panel` holds two tiles per chunk for `chunks` chunks.
unsafe fn zero_features(panel: *mut u16, from: usize, chunks: usize) {
    for c in 0..chunks {
        for f in from..N_TILE {
            let hi = panel.wrapping_add(c * 2 * TILE_U16 + f * K_TILE);
            // SAFETY: 64 bytes inside the panel at each (caller).
            unsafe {
                std::ptr::write_bytes(hi.cast::<u8>(), 0, 64);
                std::ptr::write_bytes(hi.wrapping_add(TILE_U16).cast::<u8>(), 0, 64);
            }
        }
    }
}

/// Bytes of packed activations one pass over a range of chunks may read:
/// about half of a 48 KiB L1 data cache, the rest for the weight panels.
const ACTIVATIONS_IN_L1: usize = 24 * 1024;

/// Chunks per pass (see [`matmul_cols_with`]) for `row_tiles` row tiles:
/// their activations within [`ACTIVATIONS_IN_L1`], at least 2.
fn chunks_per_pass(row_tiles: usize) -> usize {
    (ACTIVATIONS_IN_L1 / (row_tiles * 2 * TILE_U32 * 4)).max(2)
}

thread_local! {
    /// The partial sums of a task's products between passes: per panel
    /// and row tile, its accumulator tile (16 x 16 f32).
    static PARTIAL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`matmul_cols`] with the task's two panels.
///
/// While the tile unit multiplies one panel, the vector unit fills the
/// next one (32-value formats): a third of a chunk's features after each
/// third of its tile products, so the two units work side by side instead
/// of in turn. Criterion, 576 x 1536 Q4_1 at 32 rows, 2 threads, on this
/// project's Xeon: 187 us with the panel filled whole before its
/// products; 172 us with the next panel filled a chunk after each chunk's
/// products; 132 us in thirds (sixths: no better). With a whole chunk of
/// fill between products, perf put about a tenth of the samples on one
/// panel store: the fill's stores waited behind the slow tile
/// instructions, so they are spread out instead.
///
/// Passes over the inputs: each pass takes a range of chunks whose packed
/// activations stay in the L1 cache ([`chunks_per_pass`]) and runs every
/// panel of the task over it, keeping the panels' accumulator tiles in
/// memory between passes (in one pass, every panel reads all the
/// activations again from L2: 72 KiB per 16 features at 32 rows). Measured
/// 123-128 us against 136-142 us in one pass at 32 rows; no difference at
/// 64 and 128 rows.
///
/// # Safety
/// As [`matmul_cols`]; each panel holds two tiles per chunk of `x`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx2,fma,f16c")]
unsafe fn matmul_cols_with(
    quant: QuantType,
    w: &[u8],
    row_bytes: usize,
    x: &PackedRows,
    dst: Output,
    panels: [&mut [u16]; 2],
) {
    let chunks = x.chunks;
    debug_assert_eq!(
        row_bytes / quant.block_bytes() * quant.block_elems(),
        chunks * K_TILE
    );
    let n = w.len() / row_bytes;
    if n == 0 || x.row_tiles == 0 {
        // (the next panel is filled during the first row tiles' products)
        return;
    }
    let format = chunk_format(quant);
    // 256-value blocks are filled whole: one pass.
    let per_pass = match format {
        Some(_) => chunks_per_pass(x.row_tiles).min(chunks),
        None => chunks,
    };
    let passes = chunks.div_ceil(per_pass);
    PARTIAL.with_borrow_mut(|partial| {
        let len = if passes > 1 {
            n.div_ceil(N_TILE) * x.row_tiles * N_TILE * N_TILE
        } else {
            0
        };
        if partial.len() < len {
            partial.resize(len, 0.0);
        }
        let config = TileConfig::all_16_by_64();
        // SAFETY: available() granted the tile state; the configuration is
        // valid for palette 1 (8 tiles of at most 16 rows of 64 bytes).
        unsafe { asm!("ldtilecfg [{0}]", in(reg) config.0.as_ptr(), options(nostack, readonly)) };
        let [first, second] = panels;
        for pass in 0..passes {
            let range = pass * per_pass..((pass + 1) * per_pass).min(chunks);
            let pass = Pass {
                chunks: range,
                first: pass == 0,
                last: pass + 1 == passes,
            };
            // SAFETY: forwarded (caller); partial holds every panel's and
            // row tile's accumulators when there are several passes.
            unsafe {
                one_pass(
                    quant,
                    w,
                    row_bytes,
                    x,
                    dst,
                    [&mut *first, &mut *second],
                    &pass,
                    partial,
                )
            };
        }
        // SAFETY: releases the tile state configured above.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    });
}

/// A range of chunks of [`matmul_cols_with`]: the first pass starts the
/// accumulators at zero, the last stores them into `y`, the others keep
/// them in the partial sums.
struct Pass {
    chunks: std::ops::Range<usize>,
    first: bool,
    last: bool,
}

/// One [`Pass`] over every panel of the task.
///
/// # Safety
/// As [`matmul_cols_with`], with the tiles configured (16 rows of 64
/// bytes); `partial` holds `256` f32 per panel and row tile unless the
/// pass is both first and last.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn one_pass(
    quant: QuantType,
    w: &[u8],
    row_bytes: usize,
    x: &PackedRows,
    dst: Output,
    panels: [&mut [u16]; 2],
    pass: &Pass,
    partial: &mut [f32],
) {
    let n = w.len() / row_bytes;
    let format = chunk_format(quant);
    let range = pass.chunks.clone();
    let [first, second] = panels;
    let nc0 = n.min(N_TILE);
    match format {
        Some(f) => {
            if nc0 < N_TILE {
                // SAFETY: the panel holds two tiles per chunk of x.
                unsafe { zero_features(first.as_mut_ptr(), nc0, x.chunks) };
            }
            for c in range.clone() {
                // SAFETY: the caller's contract; chunk c inside the panel.
                unsafe {
                    fill_chunk(
                        f,
                        &w[..nc0 * row_bytes],
                        row_bytes,
                        0..nc0,
                        c,
                        first.as_mut_ptr(),
                    )
                };
            }
        }
        // SAFETY: the caller's contract; the first panel whole.
        None => unsafe {
            fill_panel(
                quant,
                &w[..nc0 * row_bytes],
                row_bytes,
                nc0,
                x.chunks,
                first,
            )
        },
    }
    let mut panel: *mut u16 = first.as_mut_ptr();
    let mut next: *mut u16 = second.as_mut_ptr();
    let mut result = Aligned([0.0f32; N_TILE * N_TILE]);
    // The partial sums of panel p, row tile t: its accumulator.
    let base = partial.as_mut_ptr();
    let sums = |p: usize, t: usize| base.wrapping_add((p * x.row_tiles + t) * N_TILE * N_TILE);
    let mut j = 0;
    while j < n {
        let p = j / N_TILE;
        let nc = (n - j).min(N_TILE);
        // The next panel's rows (none after the last).
        let nj = j + nc;
        let nn = (n - nj).min(N_TILE);
        let next_w = &w[nj * row_bytes..(nj + nn) * row_bytes];
        if nn > 0 && nn < N_TILE && format.is_some() {
            // SAFETY: the next panel holds two tiles per chunk.
            unsafe { zero_features(next, nn, x.chunks) };
        }
        let fill_next = |c: usize, features: std::ops::Range<usize>| {
            let features = features.start.min(nn)..features.end.min(nn);
            if let (Some(f), false) = (format, features.is_empty()) {
                // SAFETY: the next panel is not the one in the tiles; its
                // rows hold every chunk (caller).
                unsafe { fill_chunk(f, next_w, row_bytes, features, c, next) };
            }
        };
        let mut t = 0;
        while t < x.row_tiles {
            let two = t + 1 < x.row_tiles;
            // One accumulator per row tile (tmm0: row tile t, tmm1: t + 1)
            // takes all three products of a chunk: dependent products
            // issue as fast as independent ones (measured: 4.3 ns each
            // either way on this unit). tmm2 / tmm3 hold the weights' hi /
            // lo, tmm4 / tmm5 and tmm6 / tmm7 the activations' of the two
            // row tiles.
            // SAFETY: tiles configured (caller); the partial sums of this
            // panel and row tiles t, t + 1 are a tile of 16 rows of 64
            // bytes each inside `partial` (caller) when this is not the
            // first pass; every other load reads 16 rows of 64 bytes at a
            // stride of 64 inside the panel (chunk c) and the packed
            // activations (row tiles t and t + 1, chunk c).
            unsafe {
                if pass.first {
                    asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
                } else {
                    asm!(
                        "tileloadd tmm0, [{r} + {s}]",
                        r = in(reg) sums(p, t),
                        s = in(reg) 64usize,
                        options(nostack, readonly),
                    );
                    if two {
                        asm!(
                            "tileloadd tmm1, [{r} + {s}]",
                            r = in(reg) sums(p, t + 1),
                            s = in(reg) 64usize,
                            options(nostack, readonly),
                        );
                    }
                }
                for c in range.clone() {
                    let a = panel.add(c * 2 * TILE_U16).cast_const();
                    let b0 = x.tile(t, c);
                    if two {
                        let b1 = x.tile(t + 1, c);
                        asm!(
                            "tileloadd tmm2, [{ahi} + {s}]",
                            "tileloadd tmm4, [{b0hi} + {s}]",
                            "tdpbf16ps tmm0, tmm2, tmm4",
                            "tileloadd tmm6, [{b1hi} + {s}]",
                            "tdpbf16ps tmm1, tmm2, tmm6",
                            ahi = in(reg) a,
                            b0hi = in(reg) b0,
                            b1hi = in(reg) b1,
                            s = in(reg) 64usize,
                            options(nostack, readonly),
                        );
                        if t == 0 {
                            fill_next(c, 0..6);
                        }
                        asm!(
                            "tileloadd tmm5, [{b0lo} + {s}]",
                            "tdpbf16ps tmm0, tmm2, tmm5",
                            "tileloadd tmm7, [{b1lo} + {s}]",
                            "tdpbf16ps tmm1, tmm2, tmm7",
                            b0lo = in(reg) b0.add(TILE_U32),
                            b1lo = in(reg) b1.add(TILE_U32),
                            s = in(reg) 64usize,
                            options(nostack, readonly),
                        );
                        if t == 0 {
                            fill_next(c, 6..11);
                        }
                        asm!(
                            "tileloadd tmm3, [{alo} + {s}]",
                            "tdpbf16ps tmm0, tmm3, tmm4",
                            "tdpbf16ps tmm1, tmm3, tmm6",
                            alo = in(reg) a.add(TILE_U16),
                            s = in(reg) 64usize,
                            options(nostack, readonly),
                        );
                        if t == 0 {
                            fill_next(c, 11..16);
                        }
                    } else {
                        asm!(
                            "tileloadd tmm2, [{ahi} + {s}]",
                            "tileloadd tmm4, [{b0hi} + {s}]",
                            "tdpbf16ps tmm0, tmm2, tmm4",
                            "tileloadd tmm5, [{b0lo} + {s}]",
                            "tdpbf16ps tmm0, tmm2, tmm5",
                            "tileloadd tmm3, [{alo} + {s}]",
                            "tdpbf16ps tmm0, tmm3, tmm4",
                            ahi = in(reg) a,
                            alo = in(reg) a.add(TILE_U16),
                            b0hi = in(reg) b0,
                            b0lo = in(reg) b0.add(TILE_U32),
                            s = in(reg) 64usize,
                            options(nostack, readonly),
                        );
                        if t == 0 {
                            fill_next(c, 0..N_TILE);
                        }
                    }
                }
            }
            for (tile, first) in [(t, true), (t + 1, false)] {
                if tile >= x.row_tiles {
                    break;
                }
                let to = if pass.last {
                    result.0.as_mut_ptr()
                } else {
                    sums(p, tile)
                };
                // SAFETY: `to` holds 16 rows of 64 bytes (result, or this
                // panel's and row tile's partial sums inside `partial`).
                unsafe {
                    if first {
                        asm!("tilestored [{r} + {s}], tmm0", r = in(reg) to, s = in(reg) 64usize, options(nostack));
                    } else {
                        asm!("tilestored [{r} + {s}], tmm1", r = in(reg) to, s = in(reg) 64usize, options(nostack));
                    }
                }
                if pass.last {
                    let valid = (dst.rows - tile * N_TILE).min(N_TILE);
                    let y = dst.y.wrapping_add(tile * N_TILE * dst.out + dst.col0 + j);
                    // SAFETY: rows tile * 16 .. + valid of y, columns col0 +
                    // j .. + nc: inside y and this caller's (contract).
                    unsafe { store_transposed(&result, y, dst.out, valid, nc) };
                }
            }
            t += 2;
        }
        if format.is_none() && nn > 0 {
            // SAFETY: the next panel holds two tiles per chunk; its rows
            // whole blocks (caller).
            let next = unsafe { std::slice::from_raw_parts_mut(next, x.chunks * 2 * TILE_U16) };
            // SAFETY: the caller's contract.
            unsafe { fill_panel(quant, next_w, row_bytes, nn, x.chunks, next) };
        }
        std::mem::swap(&mut panel, &mut next);
        j += nc;
    }
}

/// A result tile, aligned for whole-line tile stores and vector loads.
#[repr(C, align(64))]
struct Aligned([f32; N_TILE * N_TILE]);

/// `y[m * out + f] = tile[f][m]` for the first `rows` activation rows `m`
/// and `features` features `f`: the result tile (a row per feature)
/// transposed in registers (32-, 64- and 128-bit interleaves) and stored
/// a row of `y` at a time.
///
/// # Safety
/// AVX-512F; `y` points at `rows` rows of stride `out` with `features`
/// writable f32 each.
#[target_feature(enable = "avx512f")]
unsafe fn store_transposed(tile: &Aligned, y: *mut f32, out: usize, rows: usize, features: usize) {
    let t = &tile.0;
    let r: [__m512; 16] = std::array::from_fn(|f| {
        // SAFETY: row f of the tile is 16 f32 inside it.
        unsafe { _mm512_load_ps(t.as_ptr().add(f * N_TILE)) }
    });
    let mask: __mmask16 = if features >= N_TILE {
        0xffff
    } else {
        (1u16 << features) - 1
    };
    for (m, v) in transpose16(r).into_iter().enumerate().take(rows) {
        // SAFETY: row m < rows of y, `features` values (caller).
        unsafe { _mm512_mask_storeu_ps(y.add(m * out), mask, v) };
    }
}

#[cfg(test)]
mod tests {
    use hetero_core::rng::SplitMix64;
    use hetero_core::testsuite::quant::random_quant_blocks;

    use super::*;

    /// The table fill gives, bit for bit, what dequantizing the block
    /// exactly and splitting it gives: on random blocks, and on blocks
    /// whose scales are any finite f16 (subnormal, large, negative zero).
    #[test]
    fn table_split_equals_dequantized_split() {
        // (the tile unit itself is not needed here)
        if !(is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
            && is_x86_feature_detected!("f16c"))
        {
            eprintln!("skipped: this CPU has no AVX-512 BF16");
            return;
        }
        let mut rng = SplitMix64::new(17);
        for quant in [QuantType::Q4_0, QuantType::Q4_1] {
            let bb = quant.block_bytes();
            let mut blocks = random_quant_blocks(quant, 2000, rng.next_u64());
            for block in blocks.chunks_exact_mut(bb).skip(1000) {
                for at in [0, 2].into_iter().filter(|&at| at + 2 <= bb - 16) {
                    // any finite f16: exponent bits not all ones
                    let bits = loop {
                        let b = rng.next_u64() as u16;
                        if b & 0x7C00 != 0x7C00 {
                            break b;
                        }
                    };
                    block[at..at + 2].copy_from_slice(&bits.to_le_bytes());
                }
            }
            for (i, block) in blocks.chunks_exact(bb).enumerate() {
                let bits = |v: __m512i| -> [u16; 32] {
                    // SAFETY: plain bits of the same size.
                    unsafe { std::mem::transmute(v) }
                };
                // SAFETY: AVX-512F/BW/BF16 and F16C checked above (AVX2
                // and FMA come with AVX-512F); block is one whole block.
                let (want, got) = unsafe {
                    let (a, b) = match quant {
                        QuantType::Q4_0 => super::super::x86_512::exact_block::<1>(block.as_ptr()),
                        _ => super::super::x86_512::exact_block::<2>(block.as_ptr()),
                    };
                    let got = match quant {
                        QuantType::Q4_0 => split_by_table::<1>(block.as_ptr()),
                        _ => split_by_table::<2>(block.as_ptr()),
                    };
                    (split_regs(a, b), got)
                };
                assert_eq!(bits(want.0), bits(got.0), "{quant} block {i}: hi");
                assert_eq!(bits(want.1), bits(got.1), "{quant} block {i}: lo");
            }
        }
    }
}
