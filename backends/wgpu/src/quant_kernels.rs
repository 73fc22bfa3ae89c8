//! WGSL of the block-quantized weight kernels: `matmul_quant` (`y = x W^T`
//! with `W` in GGUF's block layout) and `embedding_quant` (a gather of
//! dequantized rows), for every [`QuantType`].
//!
//! The weights stay the file's bytes in an `array<u32>`. Every format is
//! read as *units* of 32 consecutive elements of a row (a whole Q8_0 /
//! Q4_0 / Q4_1 block, or one of the eight 32-element sub-blocks of a K-quant
//! block), so one `dequant(row_byte, unit)` per format serves both kernels.
//! Each dequantization does exactly the f32 operations of
//! `hetero_core::quant`'s reference, in its order (f16 scales converted by
//! `unpack2x16float`, which is exact), so the embedding is bit-exact where
//! the adapter does not contract `a * b + c` into a fused multiply-add;
//! the device suite checks this on every adapter it runs on.
//!
//! The sources are assembled at run time (prelude + format + entry point)
//! and cached per device under their name.

use hetero_core::QuantType;

/// Rows of `x` one `matmul_quant` workgroup multiplies with its weight row
/// (each invocation keeps one partial sum per row; `R` in the WGSL).
pub(crate) const MATMUL_ROWS_PER_GROUP: u32 = 8;

/// Invocations per workgroup of `embedding_quant` and of the lanes
/// `matmul_quant` (the WGSL's `@workgroup_size`).
pub(crate) const LANE_GROUP: u32 = 64;

/// Readers of the weight words: a byte at any offset, a little-endian f16
/// at an even offset, four bytes from an even offset.
const PRELUDE: &str = r#"
fn byte_at(off: u32) -> u32 {
    return (w[off >> 2u] >> ((off & 3u) * 8u)) & 0xffu;
}
fn half_at(off: u32) -> f32 {
    return unpack2x16float(w[off >> 2u] >> ((off & 2u) * 8u)).x;
}
fn word_at(off: u32) -> u32 {
    let i = off >> 2u;
    if ((off & 2u) == 0u) { return w[i]; }
    return (w[i] >> 16u) | (w[i + 1u] << 16u);
}
fn nibbles(word: u32, high: bool) -> u32 {
    if (high) { return (word >> 4u) & 0x0f0f0f0fu; }
    return word & 0x0f0f0f0fu;
}
"#;

/// `dequant(row, u, v)`: the 32 elements of unit `u` of the row starting at
/// byte `row`, as `hetero_core::quant` computes them.
fn dequant_source(quant: QuantType) -> &'static str {
    match quant {
        QuantType::Q8_0 => {
            r#"
const BLOCK_BYTES: u32 = 34u;
fn dequant(row: u32, u: u32, v: ptr<function, array<f32, 32>>) {
    let base = row + u * BLOCK_BYTES;
    let d = half_at(base);
    for (var i = 0u; i < 8u; i = i + 1u) {
        let q = word_at(base + 2u + 4u * i);
        for (var k = 0u; k < 4u; k = k + 1u) {
            let s = bitcast<i32>(q << (24u - 8u * k)) >> 24u;
            (*v)[4u * i + k] = f32(s) * d;
        }
    }
}
"#
        }
        QuantType::Q4_0 => {
            r#"
const BLOCK_BYTES: u32 = 18u;
fn dequant(row: u32, u: u32, v: ptr<function, array<f32, 32>>) {
    let base = row + u * BLOCK_BYTES;
    let d = half_at(base);
    for (var i = 0u; i < 4u; i = i + 1u) {
        let q = word_at(base + 2u + 4u * i);
        for (var k = 0u; k < 4u; k = k + 1u) {
            let b = (q >> (8u * k)) & 0xffu;
            (*v)[4u * i + k] = f32(i32(b & 15u) - 8) * d;
            (*v)[16u + 4u * i + k] = f32(i32(b >> 4u) - 8) * d;
        }
    }
}
"#
        }
        QuantType::Q4_1 => {
            r#"
const BLOCK_BYTES: u32 = 20u;
fn dequant(row: u32, u: u32, v: ptr<function, array<f32, 32>>) {
    let base = row + u * BLOCK_BYTES;
    let d = half_at(base);
    let m = half_at(base + 2u);
    for (var i = 0u; i < 4u; i = i + 1u) {
        let q = word_at(base + 4u + 4u * i);
        for (var k = 0u; k < 4u; k = k + 1u) {
            let b = (q >> (8u * k)) & 0xffu;
            (*v)[4u * i + k] = f32(b & 15u) * d + m;
            (*v)[16u + 4u * i + k] = f32(b >> 4u) * d + m;
        }
    }
}
"#
        }
        QuantType::Q4K | QuantType::Q5K => {
            if quant == QuantType::Q4K {
                Q4K_Q5K_Q4K
            } else {
                Q4K_Q5K_Q5K
            }
        }
        QuantType::Q6K => {
            r#"
const BLOCK_BYTES: u32 = 210u;
fn dequant(row: u32, u: u32, v: ptr<function, array<f32, 32>>) {
    let base = row + (u / 8u) * BLOCK_BYTES;
    let sub = u % 8u;
    let h = sub / 4u;
    let k = sub % 4u;
    let d = half_at(base + 208u);
    let ql = base + 64u * h + 32u * (k & 1u);
    let qh = base + 128u + 32u * h;
    let sc = base + 192u + 8u * h + 2u * k;
    for (var l = 0u; l < 32u; l = l + 1u) {
        var lo = byte_at(ql + l);
        if (k >= 2u) { lo = lo >> 4u; }
        let hi = (byte_at(qh + l) >> (2u * k)) & 3u;
        let q = i32((lo & 15u) | (hi << 4u)) - 32;
        let s = bitcast<i32>(byte_at(sc + l / 16u) << 24u) >> 24u;
        (*v)[l] = (d * f32(s)) * f32(q);
    }
}
"#
        }
    }
}

/// Q4_K and Q5_K share the scale / min packing; `HIGH_BITS` says whether
/// a 32-byte `qh` precedes the nibbles (Q5_K).
const Q4K_Q5K_COMMON: &str = r#"
fn scale_min(s: u32, j: u32) -> vec2<u32> {
    if (j < 4u) {
        return vec2<u32>(byte_at(s + j) & 63u, byte_at(s + j + 4u) & 63u);
    }
    let a = byte_at(s + j + 4u);
    return vec2<u32>((a & 15u) | ((byte_at(s + j - 4u) >> 6u) << 4u),
                     (a >> 4u) | ((byte_at(s + j) >> 6u) << 4u));
}
fn dequant(row: u32, u: u32, v: ptr<function, array<f32, 32>>) {
    let base = row + (u / 8u) * BLOCK_BYTES;
    let sub = u % 8u;
    let d = half_at(base);
    let dmin = half_at(base + 2u);
    let sm = scale_min(base + 4u, sub);
    let d1 = d * f32(sm.x);
    let m1 = dmin * f32(sm.y);
    let qs = base + QS + 32u * (sub / 2u);
    let high = (sub & 1u) == 1u;
    for (var i = 0u; i < 8u; i = i + 1u) {
        let q = nibbles(w[(qs >> 2u) + i], high);
        var hb = 0u;
        if (HIGH_BITS) { hb = w[((base + 16u) >> 2u) + i]; }
        for (var k = 0u; k < 4u; k = k + 1u) {
            var x = (q >> (8u * k)) & 15u;
            if (HIGH_BITS && ((hb >> (8u * k + sub)) & 1u) == 1u) { x = x + 16u; }
            (*v)[4u * i + k] = d1 * f32(x) - m1;
        }
    }
}
"#;

const Q4K_Q5K_Q4K: &str = "
const BLOCK_BYTES: u32 = 144u;
const QS: u32 = 16u;
const HIGH_BITS: bool = false;
";

const Q4K_Q5K_Q5K: &str = "
const BLOCK_BYTES: u32 = 176u;
const QS: u32 = 48u;
const HIGH_BITS: bool = true;
";

/// `y[r][j] = sum over units of x[r] . dequant(W[j])`, for GPUs: workgroup
/// (x = weight row, y = a group of [`MATMUL_ROWS_PER_GROUP`] rows of `x`,
/// both striding over the grid), its invocations taking units in turn (so
/// neighbours read neighbouring blocks), then a tree sum.
const MATMUL_MAIN: &str = r#"
struct P { rows: u32, out: u32, inp: u32, row_bytes: u32, units: u32, pad0: u32, pad1: u32, pad2: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: P;
const R: u32 = 8u;
const G: u32 = 64u;
var<workgroup> sh: array<f32, 512>;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) l: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var j = wg.x; j < p.out; j = j + nwg.x) {
        let row = j * p.row_bytes;
        for (var r0 = wg.y * R; r0 < p.rows; r0 = r0 + nwg.y * R) {
            let n = min(R, p.rows - r0);
            var acc = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
            for (var u = l.x; u < p.units; u = u + G) {
                var v: array<f32, 32>;
                dequant(row, u, &v);
                for (var r = 0u; r < n; r = r + 1u) {
                    let xb = (r0 + r) * p.inp + 32u * u;
                    var s = 0.0;
                    for (var e = 0u; e < 32u; e = e + 1u) { s = s + v[e] * x[xb + e]; }
                    acc[r] = acc[r] + s;
                }
            }
            for (var r = 0u; r < R; r = r + 1u) { sh[r * G + l.x] = acc[r]; }
            workgroupBarrier();
            for (var s = G / 2u; s > 0u; s = s >> 1u) {
                if (l.x < s) {
                    for (var r = 0u; r < R; r = r + 1u) {
                        sh[r * G + l.x] = sh[r * G + l.x] + sh[r * G + l.x + s];
                    }
                }
                workgroupBarrier();
            }
            if (l.x < n) { y[(r0 + l.x) * p.out + j] = sh[l.x * G]; }
            workgroupBarrier();
        }
    }
}
"#;

/// The same product without workgroup memory or barriers, for software
/// adapters (whose barriers are slow, as for the GEMM): one invocation per
/// (weight row, [`MATMUL_ROWS_PER_GROUP`] rows of `x`) takes every unit of
/// its row, so a whole SIMD lane group of llvmpipe's works.
const MATMUL_LANES_MAIN: &str = r#"
struct P { rows: u32, out: u32, inp: u32, row_bytes: u32, units: u32, pad0: u32, pad1: u32, pad2: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: P;
const R: u32 = 8u;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var j = gid.x; j < p.out; j = j + nwg.x * 64u) {
        let row = j * p.row_bytes;
        for (var r0 = gid.y * R; r0 < p.rows; r0 = r0 + nwg.y * R) {
            let n = min(R, p.rows - r0);
            var acc = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
            for (var u = 0u; u < p.units; u = u + 1u) {
                var v: array<f32, 32>;
                dequant(row, u, &v);
                for (var r = 0u; r < n; r = r + 1u) {
                    let xb = (r0 + r) * p.inp + 32u * u;
                    var s = 0.0;
                    for (var e = 0u; e < 32u; e = e + 1u) { s = s + v[e] * x[xb + e]; }
                    acc[r] = acc[r] + s;
                }
            }
            for (var r = 0u; r < n; r = r + 1u) { y[(r0 + r) * p.out + j] = acc[r]; }
        }
    }
}
"#;

/// `out[r][32 u ..][..32] = dequant(table row ids[r], unit u)`: one unit per
/// invocation, striding over the grid.
const EMBEDDING_MAIN: &str = r#"
struct P { n: u32, units: u32, row_bytes: u32, pad: u32 }
@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * 64u;
    for (var i = gid.x; i < p.n; i = i + stride) {
        let r = i / p.units;
        let u = i % p.units;
        var v: array<f32, 32>;
        dequant(ids[r] * p.row_bytes, u, &v);
        for (var e = 0u; e < 32u; e = e + 1u) { out[32u * i + e] = v[e]; }
    }
}
"#;

fn with_format(quant: QuantType, main: &str) -> String {
    let mut s = String::from(PRELUDE);
    s.push_str(dequant_source(quant));
    if matches!(quant, QuantType::Q4K | QuantType::Q5K) {
        s.push_str(Q4K_Q5K_COMMON);
    }
    s.push_str(main);
    s
}

/// The `matmul_quant` kernel for `quant`: workgroups that share a weight
/// row, or (`lanes`) one invocation per weight row.
pub(crate) fn matmul_source(quant: QuantType, lanes: bool) -> String {
    with_format(
        quant,
        if lanes {
            MATMUL_LANES_MAIN
        } else {
            MATMUL_MAIN
        },
    )
}

/// The `embedding_quant` kernel for `quant`.
pub(crate) fn embedding_source(quant: QuantType) -> String {
    with_format(quant, EMBEDDING_MAIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel of every format parses and validates with naga.
    #[test]
    fn every_quant_kernel_is_valid_wgsl() {
        for quant in QuantType::ALL {
            for (name, src) in [
                ("matmul", matmul_source(quant, false)),
                ("matmul lanes", matmul_source(quant, true)),
                ("embedding", embedding_source(quant)),
            ] {
                // `unpack2x16float`: the device reports these formats
                // only where it has this capability.
                crate::kernels::validate_wgsl(
                    name,
                    &src,
                    wgpu::naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32,
                );
            }
        }
    }
}
