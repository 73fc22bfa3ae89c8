//! hetero's WGSL kernels.
//!
//! WGSL has no 8- or 16-bit storage types without extensions, so every
//! buffer is bound as `array<u32>` and each kernel works on 32-bit words:
//! one f32 / i32 per word, two f16 (through `unpack2x16float` /
//! `pack2x16float`: no `SHADER_F16` feature, only the common
//! `SHADER_F16_IN_F32` downlevel capability, checked per adapter) or two
//! bf16 (bit shifts, round to nearest even) per word, four u8 per word.
//! Padding lanes at the end of a buffer are combined too; they are never read
//! back. f64 and i64 have no kernels (WGSL has no 64-bit types in its core),
//! nor do integer `scale`s, whose f64 semantics f32 cannot reproduce.

use hetero_core::{DType, ReduceOp};

/// Workgroup size of the elementwise kernels.
pub(crate) const WORKGROUP: u32 = 256;

/// Dtypes with reduce / finish kernels.
pub(crate) const REDUCE_DTYPES: [DType; 5] =
    [DType::F32, DType::F16, DType::BF16, DType::I32, DType::U8];

/// Dtypes with a scale kernel.
pub(crate) const SCALE_DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// What an elementwise kernel does to each word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Elementwise {
    Combine(ReduceOp),
    FinishAvg,
    Scale,
}

impl Elementwise {
    pub(crate) fn name(self, dtype: DType) -> String {
        match self {
            Elementwise::Combine(op) => format!("reduce_{}_{}", op.combine_op(), dtype),
            Elementwise::FinishAvg => format!("finish_avg_{dtype}"),
            Elementwise::Scale => format!("scale_{dtype}"),
        }
    }
}

const HEADER: &str = r#"
struct Params { n: u32, count: u32, alpha: f32, pad: u32 }
@group(0) @binding(0) var<storage, read_write> acc: array<u32>;
@group(0) @binding(1) var<uniform> p: Params;
"#;

const SRC_BINDING: &str = "@group(0) @binding(2) var<storage, read> src: array<u32>;\n";

const BF16: &str = r#"
fn bf16_to_f32(h: u32) -> f32 { return bitcast<f32>(h << 16u); }
fn f32_to_bf16(f: f32) -> u32 {
    let u = bitcast<u32>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) { return ((u >> 16u) | 0x40u) & 0xffffu; }
    return ((u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u) & 0xffffu;
}
fn unpack_bf16(w: u32) -> vec2<f32> { return vec2<f32>(bf16_to_f32(w & 0xffffu), bf16_to_f32(w >> 16u)); }
fn pack_bf16(v: vec2<f32>) -> u32 { return f32_to_bf16(v.x) | (f32_to_bf16(v.y) << 16u); }
"#;

fn float_op(op: ReduceOp, a: &str, b: &str) -> String {
    match op.combine_op() {
        ReduceOp::Prod => format!("({a} * {b})"),
        ReduceOp::Max => format!("max({a}, {b})"),
        ReduceOp::Min => format!("min({a}, {b})"),
        _ => format!("({a} + {b})"),
    }
}

/// The body of `fn word(a: u32, b: u32) -> u32` for this kernel and dtype.
fn word_fn(kind: Elementwise, dtype: DType) -> String {
    let expr_float = |x: &str, y: &str| match kind {
        Elementwise::Combine(op) => float_op(op, x, y),
        Elementwise::FinishAvg => format!("({x} / f32(p.count))"),
        Elementwise::Scale => format!("({x} * p.alpha)"),
    };
    match dtype {
        DType::F32 => format!(
            "return bitcast<u32>({});",
            expr_float("bitcast<f32>(a)", "bitcast<f32>(b)")
        ),
        DType::I32 => {
            let e = match kind {
                Elementwise::Combine(op) => float_op(op, "bitcast<i32>(a)", "bitcast<i32>(b)"),
                Elementwise::FinishAvg => "(bitcast<i32>(a) / i32(p.count))".into(),
                Elementwise::Scale => "0".into(),
            };
            format!("return bitcast<u32>({e});")
        }
        DType::F16 => format!(
            "let x = unpack2x16float(a); let y = unpack2x16float(b); return pack2x16float({});",
            expr_float("x", "y")
        ),
        DType::BF16 => format!(
            "let x = unpack_bf16(a); let y = unpack_bf16(b); return pack_bf16({});",
            expr_float("x", "y")
        ),
        DType::U8 => {
            let e = match kind {
                Elementwise::Combine(op) => float_op(op, "x", "y"),
                Elementwise::FinishAvg => "(x / p.count)".into(),
                Elementwise::Scale => "0u".into(),
            };
            format!(
                "var out = 0u;\n  for (var k = 0u; k < 32u; k = k + 8u) {{\n    let x = (a >> k) & 0xffu; let y = (b >> k) & 0xffu;\n    out = out | ((({e}) & 0xffu) << k);\n  }}\n  return out;"
            )
        }
        DType::F64 | DType::I64 => "return a;".into(),
    }
}

/// WGSL source of one elementwise kernel (entry point `main`).
pub(crate) fn elementwise_source(kind: Elementwise, dtype: DType) -> String {
    let mut src = String::from(HEADER);
    let binary = matches!(kind, Elementwise::Combine(_));
    if binary {
        src += SRC_BINDING;
    }
    if dtype == DType::BF16 {
        src += BF16;
    }
    src += &format!(
        "fn word(a: u32, b: u32) -> u32 {{\n  {}\n}}\n",
        word_fn(kind, dtype)
    );
    let other = if binary { "src[i]" } else { "0u" };
    src += &format!(
        "@compute @workgroup_size({WORKGROUP})\nfn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{\n  let stride = nwg.x * {WORKGROUP}u;\n  for (var i = gid.x; i < p.n; i = i + stride) {{\n    acc[i] = word(acc[i], {other});\n  }}\n}}\n"
    );
    src
}

/// Tile edge of the GEMM kernel.
pub(crate) const TILE: u32 = 16;

/// Row-major f32 GEMM with shared-memory tiles (entry point `main`).
pub(crate) const GEMM_F32: &str = r#"
struct G { m: u32, n: u32, k: u32, ta: u32, tb: u32, alpha: f32, beta: f32, pad: u32 }
@group(0) @binding(0) var<storage, read> A: array<f32>;
@group(0) @binding(1) var<storage, read> B: array<f32>;
@group(0) @binding(2) var<storage, read_write> C: array<f32>;
@group(0) @binding(3) var<uniform> g: G;
var<workgroup> tile_a: array<array<f32, 16>, 16>;
var<workgroup> tile_b: array<array<f32, 16>, 16>;
fn a_at(i: u32, q: u32) -> f32 {
    if (i >= g.m || q >= g.k) { return 0.0; }
    if (g.ta == 1u) { return A[q * g.m + i]; }
    return A[i * g.k + q];
}
fn b_at(q: u32, j: u32) -> f32 {
    if (q >= g.k || j >= g.n) { return 0.0; }
    if (g.tb == 1u) { return B[j * g.k + q]; }
    return B[q * g.n + j];
}
@compute @workgroup_size(16, 16)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.y * 16u + lid.y;
    let col = wid.x * 16u + lid.x;
    var sum = 0.0;
    let tiles = (g.k + 15u) / 16u;
    for (var t = 0u; t < tiles; t = t + 1u) {
        tile_a[lid.y][lid.x] = a_at(row, t * 16u + lid.x);
        tile_b[lid.y][lid.x] = b_at(t * 16u + lid.y, col);
        workgroupBarrier();
        for (var q = 0u; q < 16u; q = q + 1u) {
            sum = sum + tile_a[lid.y][q] * tile_b[q][lid.x];
        }
        workgroupBarrier();
    }
    if (row < g.m && col < g.n) {
        let idx = row * g.n + col;
        if (g.beta == 0.0) {
            C[idx] = g.alpha * sum;
        } else {
            C[idx] = g.alpha * sum + g.beta * C[idx];
        }
    }
}
"#;

/// Output block edge of [`GEMM_F32_BLOCKED`] per invocation.
pub(crate) const BLOCK: u32 = 4;
/// Workgroup edge of [`GEMM_F32_BLOCKED`].
pub(crate) const BLOCKED_WG: u32 = 8;

/// Row-major f32 GEMM without shared memory or barriers: each invocation
/// computes a 4 x 4 block of C from global memory. Software adapters
/// (lavapipe, llvmpipe) run workgroup barriers slowly, so they get this one.
pub(crate) const GEMM_F32_BLOCKED: &str = r#"
struct G { m: u32, n: u32, k: u32, ta: u32, tb: u32, alpha: f32, beta: f32, pad: u32 }
@group(0) @binding(0) var<storage, read> A: array<f32>;
@group(0) @binding(1) var<storage, read> B: array<f32>;
@group(0) @binding(2) var<storage, read_write> C: array<f32>;
@group(0) @binding(3) var<uniform> g: G;
fn a_at(i: u32, q: u32) -> f32 {
    if (i >= g.m) { return 0.0; }
    if (g.ta == 1u) { return A[q * g.m + i]; }
    return A[i * g.k + q];
}
fn b_at(q: u32, j: u32) -> f32 {
    if (j >= g.n) { return 0.0; }
    if (g.tb == 1u) { return B[j * g.k + q]; }
    return B[q * g.n + j];
}
@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r0 = gid.y * 4u;
    let c0 = gid.x * 4u;
    if (r0 >= g.m || c0 >= g.n) { return; }
    var acc: array<vec4<f32>, 4>;
    for (var q = 0u; q < g.k; q = q + 1u) {
        let b = vec4<f32>(b_at(q, c0), b_at(q, c0 + 1u), b_at(q, c0 + 2u), b_at(q, c0 + 3u));
        acc[0] = acc[0] + a_at(r0, q) * b;
        acc[1] = acc[1] + a_at(r0 + 1u, q) * b;
        acc[2] = acc[2] + a_at(r0 + 2u, q) * b;
        acc[3] = acc[3] + a_at(r0 + 3u, q) * b;
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        let row = r0 + i;
        if (row >= g.m) { break; }
        for (var j = 0u; j < 4u; j = j + 1u) {
            let col = c0 + j;
            if (col < g.n) {
                let idx = row * g.n + col;
                if (g.beta == 0.0) {
                    C[idx] = g.alpha * acc[i][j];
                } else {
                    C[idx] = g.alpha * acc[i][j] + g.beta * C[idx];
                }
            }
        }
    }
}
"#;

/// Decode-step kernels (f32). Each binds its buffers at 0.. and a uniform
/// `P` after them; reductions use a 256-wide workgroup.
pub(crate) const LAYER_NORM_F32: &str = r#"
struct P { cols: u32, eps: f32, pad0: u32, pad1: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> o: array<f32>;
@group(0) @binding(4) var<uniform> p: P;
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
fn main(@builtin(local_invocation_id) l: vec3<u32>, @builtin(workgroup_id) w: vec3<u32>) {
    let base = w.x * p.cols;
    var s = 0.0;
    for (var c = l.x; c < p.cols; c = c + 256u) { s = s + x[base + c]; }
    let mean = block_sum(s, l.x) / f32(p.cols);
    var v = 0.0;
    for (var c = l.x; c < p.cols; c = c + 256u) { let d = x[base + c] - mean; v = v + d * d; }
    let inv = inverseSqrt(block_sum(v, l.x) / f32(p.cols) + p.eps);
    for (var c = l.x; c < p.cols; c = c + 256u) { o[base + c] = (x[base + c] - mean) * inv * g[c] + b[c]; }
}
"#;

pub(crate) const BIAS_ACT_F32: &str = r#"
struct P { n: u32, cols: u32, act: u32, pad: u32 }
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> bias: array<f32>;
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * 256u;
    for (var i = gid.x; i < p.n; i = i + stride) {
        var v = x[i] + bias[i % p.cols];
        if (p.act == 1u) { v = max(v, 0.0); }
        if (p.act == 2u) { v = 0.5 * v * (1.0 + tanh(0.7978845608 * (v + 0.044715 * v * v * v))); }
        x[i] = v;
    }
}
"#;

pub(crate) const ATTENTION_F32: &str = r#"
struct P { heads: u32, dh: u32, max_len: u32, pad: u32 }
@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> lens: array<u32>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<uniform> p: P;
var<workgroup> sh: array<f32, 256>;
fn block_reduce(v: f32, lid: u32, is_max: bool) -> f32 {
    sh[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            if (is_max) { sh[lid] = max(sh[lid], sh[lid + s]); } else { sh[lid] = sh[lid] + sh[lid + s]; }
        }
        workgroupBarrier();
    }
    let r = sh[0];
    workgroupBarrier();
    return r;
}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) l: vec3<u32>, @builtin(workgroup_id) w: vec3<u32>) {
    let b = w.x / p.heads;
    let h = w.x % p.heads;
    let width = p.heads * p.dh;
    let len = lens[b];
    let qb = b * width + h * p.dh;
    let sb = w.x * p.max_len;
    let scale = inverseSqrt(f32(p.dh));
    var m = -3.4028235e38;
    for (var t = l.x; t < len; t = t + 256u) {
        let kb = (b * p.max_len + t) * width + h * p.dh;
        var s = 0.0;
        for (var d = 0u; d < p.dh; d = d + 1u) { s = s + q[qb + d] * k[kb + d]; }
        s = s * scale;
        scores[sb + t] = s;
        m = max(m, s);
    }
    m = block_reduce(m, l.x, true);
    var z = 0.0;
    for (var t = l.x; t < len; t = t + 256u) { let e = exp(scores[sb + t] - m); scores[sb + t] = e; z = z + e; }
    z = block_reduce(z, l.x, false);
    storageBarrier();
    for (var d = l.x; d < p.dh; d = d + 256u) {
        var acc = 0.0;
        for (var t = 0u; t < len; t = t + 1u) { acc = acc + scores[sb + t] * v[(b * p.max_len + t) * width + h * p.dh + d]; }
        o[qb + d] = acc / z;
    }
}
"#;

pub(crate) const ARGMAX_F32: &str = r#"
struct P { cols: u32, pad0: u32, pad1: u32, pad2: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<uniform> p: P;
var<workgroup> bv: array<f32, 256>;
var<workgroup> bi: array<u32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) l: vec3<u32>, @builtin(workgroup_id) w: vec3<u32>) {
    let base = w.x * p.cols;
    var best = -3.4028235e38;
    var idx = 0xffffffffu;
    for (var c = l.x; c < p.cols; c = c + 256u) {
        let v = x[base + c];
        if (v > best || (v == best && c < idx)) { best = v; idx = c; }
    }
    bv[l.x] = best;
    bi[l.x] = idx;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (l.x < s) {
            let ov = bv[l.x + s];
            let oi = bi[l.x + s];
            if (ov > bv[l.x] || (ov == bv[l.x] && oi < bi[l.x])) { bv[l.x] = ov; bi[l.x] = oi; }
        }
        workgroupBarrier();
    }
    if (l.x == 0u) {
        if (bi[0] == 0xffffffffu) { out[w.x] = 0u; } else { out[w.x] = bi[0]; }
    }
}
"#;

/// Parse and validate `src` with naga (panicking with the kernel's name
/// and naga's message): the unit tests of every WGSL source file use it.
#[cfg(test)]
pub(crate) fn validate_wgsl(name: &str, src: &str, caps: wgpu::naga::valid::Capabilities) {
    let module = wgpu::naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{name}: {}\n{src}", e.emit_to_string(src)));
    wgpu::naga::valid::Validator::new(wgpu::naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {e:?}\n{src}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel parses and validates with naga (the front end wgpu uses),
    /// so a typo fails here rather than on a device.
    #[test]
    fn every_kernel_is_valid_wgsl() {
        let mut sources = vec![
            ("gemm_f32".to_string(), GEMM_F32.to_string()),
            ("gemm_f32_blocked".to_string(), GEMM_F32_BLOCKED.to_string()),
            ("layer_norm_f32".to_string(), LAYER_NORM_F32.to_string()),
            ("bias_act_f32".to_string(), BIAS_ACT_F32.to_string()),
            ("attention_f32".to_string(), ATTENTION_F32.to_string()),
            ("argmax_f32".to_string(), ARGMAX_F32.to_string()),
        ];
        for dtype in REDUCE_DTYPES {
            for op in [ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Max, ReduceOp::Min] {
                let k = Elementwise::Combine(op);
                sources.push((k.name(dtype), elementwise_source(k, dtype)));
            }
            sources.push((
                Elementwise::FinishAvg.name(dtype),
                elementwise_source(Elementwise::FinishAvg, dtype),
            ));
        }
        for dtype in SCALE_DTYPES {
            sources.push((
                Elementwise::Scale.name(dtype),
                elementwise_source(Elementwise::Scale, dtype),
            ));
        }
        for (name, src) in sources {
            // unpack2x16float / pack2x16float; the device checks the
            // adapter's SHADER_F16_IN_F32 downlevel flag before using them.
            validate_wgsl(
                &name,
                &src,
                wgpu::naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32,
            );
        }
    }
}
