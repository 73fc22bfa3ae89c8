//! WGSL of the Llama-family kernels (f32): RMS norm, rotary embedding,
//! causal attention with grouped kv heads, SiLU-gated product, embedding
//! gather. Each binds its buffers at 0.. and a uniform `P` after them, as
//! the decode kernels in `kernels.rs` do.

/// Largest head dimension [`ATTENTION_CAUSAL_F32`] handles: each of its 64
/// invocations keeps 4 output values in registers.
pub(crate) const ATTENTION_MAX_HEAD_DIM: usize = 256;

/// RMS norm: one 256-wide workgroup per row (rows striding over the
/// workgroups launched), a tree reduction of the sum of squares.
pub(crate) const RMS_NORM_F32: &str = r#"
struct P { rows: u32, cols: u32, eps: f32, pad: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> o: array<f32>;
@group(0) @binding(3) var<uniform> p: P;
var<workgroup> sh: array<f32, 256>;
fn block_sum(v: f32, lid: u32) -> f32 {
    sh[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) { sh[lid] = sh[lid] + sh[lid + s]; }
        workgroupBarrier();
    }
    let r = sh[0];
    workgroupBarrier();
    return r;
}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) l: vec3<u32>, @builtin(workgroup_id) w: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var r = w.x; r < p.rows; r = r + nwg.x) {
        let base = r * p.cols;
        var s = 0.0;
        for (var c = l.x; c < p.cols; c = c + 256u) { let v = x[base + c]; s = s + v * v; }
        let inv = inverseSqrt(block_sum(s, l.x) / f32(p.cols) + p.eps);
        for (var c = l.x; c < p.cols; c = c + 256u) { o[base + c] = x[base + c] * inv * g[c]; }
    }
}
"#;

/// Rotary embedding in place: one invocation per (token, head, pair). The
/// angle `f32(position) * inv_freq` is reduced to about [-pi, pi] before
/// `sin` / `cos` (Cody-Waite: 2 pi split in a short high part, exact in the
/// product with the quotient, and the rest), since some implementations'
/// sin / cos lose accuracy on large arguments.
pub(crate) const ROPE_F32: &str = r#"
struct P { n: u32, heads: u32, half: u32, adjacent: u32 }
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> freq: array<f32>;
@group(0) @binding(2) var<storage, read> pos: array<u32>;
@group(0) @binding(3) var<uniform> p: P;
const INV_TWO_PI: f32 = 0.15915494309189535;
const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_LO: f32 = 0.0019353071795864769;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * 256u;
    for (var i = gid.x; i < p.n; i = i + stride) {
        let pair = i % p.half;
        let row = i / p.half;
        let t = row / p.heads;
        let base = row * 2u * p.half;
        let angle = f32(pos[t]) * freq[pair];
        let k = round(angle * INV_TWO_PI);
        let r = (angle - k * TWO_PI_HI) - k * TWO_PI_LO;
        let c = cos(r);
        let s = sin(r);
        var ia = base + pair;
        var ib = ia + p.half;
        if (p.adjacent == 1u) { ia = base + 2u * pair; ib = ia + 1u; }
        let a = x[ia];
        let b = x[ib];
        x[ia] = a * c - b * s;
        x[ib] = a * s + b * c;
    }
}
"#;

/// Causal attention over grouped kv heads: one 64-wide workgroup per
/// (query head, query token, sequence) = workgroup id (x, y, z). Keys are
/// taken in tiles of 64 (one score per invocation, in workgroup memory)
/// with an online softmax: the running max and normaliser rescale the
/// accumulated output at each tile, so nothing grows with the context and
/// any `max_len` fits. Each invocation owns output dims `lid + 64 c`,
/// `c < 4` (head_dim up to 256).
pub(crate) const ATTENTION_CAUSAL_F32: &str = r#"
struct P { heads: u32, group: u32, dh: u32, max_len: u32, q_len: u32, scale: f32, pad0: u32, pad1: u32 }
@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> lens: array<u32>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;
@group(0) @binding(5) var<uniform> p: P;
const LOWEST: f32 = -3.4028235e38;
var<workgroup> qs: array<f32, 256>;
var<workgroup> ps: array<f32, 64>;
var<workgroup> n_keys: u32;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) l: vec3<u32>, @builtin(workgroup_id) w: vec3<u32>) {
    let h = w.x;
    let t = w.y;
    let b = w.z;
    let qw = p.heads * p.dh;
    let kw = (p.heads / p.group) * p.dh;
    let qb = (b * p.q_len + t) * qw + h * p.dh;
    let cache = b * p.max_len * kw + (h / p.group) * p.dh;
    if (l.x == 0u) { n_keys = lens[b] - p.q_len + t + 1u; }
    for (var d = l.x; d < p.dh; d = d + 64u) { qs[d] = q[qb + d]; }
    // Also a barrier: every invocation sees qs and the same key count.
    let n = workgroupUniformLoad(&n_keys);
    var m = LOWEST;
    var z = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    let tiles = (n + 63u) / 64u;
    for (var tile = 0u; tile < tiles; tile = tile + 1u) {
        let first = tile * 64u;
        let j = first + l.x;
        var s = LOWEST;
        if (j < n) {
            let kb = cache + j * kw;
            var dot = 0.0;
            for (var d = 0u; d < p.dh; d = d + 1u) { dot = dot + qs[d] * k[kb + d]; }
            s = dot * p.scale;
        }
        ps[l.x] = s;
        workgroupBarrier();
        // Every invocation reads the same scores in the same order, so all
        // agree on the new max (and below, on the normaliser).
        var tm = m;
        for (var i = 0u; i < 64u; i = i + 1u) { tm = max(tm, ps[i]); }
        let corr = exp(m - tm);
        m = tm;
        workgroupBarrier();
        var e = 0.0;
        if (j < n) { e = exp(s - tm); }
        ps[l.x] = e;
        workgroupBarrier();
        let cnt = min(64u, n - first);
        var ts = 0.0;
        for (var i = 0u; i < cnt; i = i + 1u) { ts = ts + ps[i]; }
        z = z * corr + ts;
        for (var c = 0u; c < 4u; c = c + 1u) {
            let d = l.x + c * 64u;
            if (d < p.dh) {
                var a = acc[c] * corr;
                for (var i = 0u; i < cnt; i = i + 1u) { a = a + ps[i] * v[cache + (first + i) * kw + d]; }
                acc[c] = a;
            }
        }
        workgroupBarrier();
    }
    for (var c = 0u; c < 4u; c = c + 1u) {
        let d = l.x + c * 64u;
        if (d < p.dh) { o[qb + d] = acc[c] / z; }
    }
}
"#;

/// `gate[i] = gate[i] / (1 + exp(-gate[i])) * up[i]`.
pub(crate) const SILU_MUL_F32: &str = r#"
struct P { n: u32, pad0: u32, pad1: u32, pad2: u32 }
@group(0) @binding(0) var<storage, read_write> gate: array<f32>;
@group(0) @binding(1) var<storage, read> up: array<f32>;
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * 256u;
    for (var i = gid.x; i < p.n; i = i + stride) {
        let g = gate[i];
        gate[i] = g / (1.0 + exp(-g)) * up[i];
    }
}
"#;

/// Embedding gather of 32-bit elements: `out[r][c] = table[ids[r]][c]`.
pub(crate) const EMBEDDING_32: &str = r#"
struct P { n: u32, width: u32, pad0: u32, pad1: u32 }
@group(0) @binding(0) var<storage, read> table: array<u32>;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
@group(0) @binding(3) var<uniform> p: P;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * 256u;
    for (var i = gid.x; i < p.n; i = i + stride) {
        out[i] = table[ids[i / p.width] * p.width + i % p.width];
    }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel parses and validates with naga, as in `kernels.rs`.
    #[test]
    fn every_llama_kernel_is_valid_wgsl() {
        for (name, src) in [
            ("rms_norm_f32", RMS_NORM_F32),
            ("rope_f32", ROPE_F32),
            ("attention_causal_f32", ATTENTION_CAUSAL_F32),
            ("silu_mul_f32", SILU_MUL_F32),
            ("embedding_32", EMBEDDING_32),
        ] {
            crate::kernels::validate_wgsl(name, src, wgpu::naga::valid::Capabilities::empty());
        }
    }
}
