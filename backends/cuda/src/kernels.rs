//! hetero's CUDA kernels: elementwise reduce, finish (average) and scale for
//! every dtype, the decode-step and Llama-family kernels (f32) and a row
//! gather per element size, as CUDA C compiled once per device by NVRTC.
//!
//! The arithmetic matches `hetero_core::host_kernels` exactly: integer sums
//! and products wrap (computed in unsigned types, where C defines wrapping),
//! integer averages truncate toward zero, scaling integers goes through f64
//! and saturates, 16-bit floats compute in f32 and round once (round to
//! nearest even, NaN kept quiet), float max/min ignore a NaN operand. No
//! CUDA headers are needed: the 16-bit conversions are PTX `cvt` and bit
//! arithmetic, so NVRTC alone (no toolkit include path) compiles this.

use hetero_core::{DType, ReduceOp};

/// Kernel name for `acc = op(acc, src)`.
pub(crate) fn reduce_name(op: ReduceOp, dtype: DType) -> String {
    format!("hetero_reduce_{}_{}", op.combine_op().name(), dtype.name())
}

pub(crate) fn avg_name(dtype: DType) -> String {
    format!("hetero_finish_avg_{}", dtype.name())
}

pub(crate) fn scale_name(dtype: DType) -> String {
    format!("hetero_scale_{}", dtype.name())
}

/// The decode-step kernels (f32), in the same module.
pub(crate) const DECODE_NAMES: [&str; 4] = [
    "hetero_layer_norm_f32",
    "hetero_bias_act_f32",
    "hetero_attention_decode_f32",
    "hetero_argmax_f32",
];

/// Threads per block of the decode-step kernels (a power of two).
pub(crate) const DECODE_BLOCK: u32 = 256;

/// Largest `max_len` the attention kernel holds in shared memory.
pub(crate) const ATTENTION_MAX_LEN: usize = 11 * 1024;

const DECODE: &str = r#"
__device__ float block_sum(float v, float* sh) {
    sh[threadIdx.x] = v; __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    float r = sh[0]; __syncthreads(); return r;
}
__device__ float block_max(float v, float* sh) {
    sh[threadIdx.x] = v; __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] = fmaxf(sh[threadIdx.x], sh[threadIdx.x + s]);
        __syncthreads();
    }
    float r = sh[0]; __syncthreads(); return r;
}
extern "C" __global__ void hetero_layer_norm_f32(const float* x, const float* g, const float* b, float* out, u64 cols, float eps) {
    __shared__ float sh[256];
    const float* row = x + blockIdx.x * cols;
    float* o = out + blockIdx.x * cols;
    float s = 0.0f;
    for (u64 c = threadIdx.x; c < cols; c += blockDim.x) s += row[c];
    float mean = block_sum(s, sh) / (float)cols;
    float v = 0.0f;
    for (u64 c = threadIdx.x; c < cols; c += blockDim.x) { float d = row[c] - mean; v += d * d; }
    float inv = rsqrtf(block_sum(v, sh) / (float)cols + eps);
    for (u64 c = threadIdx.x; c < cols; c += blockDim.x) o[c] = (row[c] - mean) * inv * g[c] + b[c];
}
extern "C" __global__ void hetero_bias_act_f32(float* x, const float* bias, u64 n, u64 cols, int act) {
    GRID_STRIDE(n) {
        float v = x[i] + bias[i % cols];
        if (act == 1) v = fmaxf(v, 0.0f);
        else if (act == 2) v = 0.5f * v * (1.0f + tanhf(0.7978845608f * (v + 0.044715f * v * v * v)));
        x[i] = v;
    }
}
extern "C" __global__ void hetero_attention_decode_f32(const float* q, const float* k, const float* v, const int* lens, float* out, u64 heads, u64 dh, u64 max_len) {
    extern __shared__ float scores[];
    __shared__ float sh[256];
    u64 b = blockIdx.x / heads, h = blockIdx.x % heads, w = heads * dh;
    u64 len = (u64)lens[b];
    const float* qv = q + b * w + h * dh;
    float scale = rsqrtf((float)dh);
    float m = __int_as_float(0xff800000);
    for (u64 t = threadIdx.x; t < len; t += blockDim.x) {
        const float* kv = k + (b * max_len + t) * w + h * dh;
        float s = 0.0f;
        for (u64 d = 0; d < dh; d++) s += qv[d] * kv[d];
        s *= scale; scores[t] = s; m = fmaxf(m, s);
    }
    m = block_max(m, sh);
    float z = 0.0f;
    for (u64 t = threadIdx.x; t < len; t += blockDim.x) { float e = expf(scores[t] - m); scores[t] = e; z += e; }
    z = block_sum(z, sh);
    for (u64 d = threadIdx.x; d < dh; d += blockDim.x) {
        float acc = 0.0f;
        for (u64 t = 0; t < len; t++) acc += scores[t] * v[(b * max_len + t) * w + h * dh + d];
        out[b * w + h * dh + d] = acc / z;
    }
}
extern "C" __global__ void hetero_argmax_f32(const float* x, unsigned int* out, u64 cols) {
    __shared__ float best_v[256];
    __shared__ unsigned int best_i[256];
    const float* row = x + blockIdx.x * cols;
    float bv = __int_as_float(0xff800000); unsigned int bi = 0xffffffffu;
    for (u64 c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = row[c];
        if (v > bv || (v == bv && (unsigned int)c < bi)) { bv = v; bi = (unsigned int)c; }
    }
    best_v[threadIdx.x] = bv; best_i[threadIdx.x] = bi; __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float ov = best_v[threadIdx.x + s]; unsigned int oi = best_i[threadIdx.x + s];
            if (ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < best_i[threadIdx.x])) {
                best_v[threadIdx.x] = ov; best_i[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = best_i[0] == 0xffffffffu ? 0u : best_i[0];
}
"#;

/// The Llama-family kernels (f32), in the same module.
pub(crate) const LLAMA_NAMES: [&str; 4] = [
    "hetero_rms_norm_f32",
    "hetero_rope_f32",
    "hetero_attention_causal_f32",
    "hetero_silu_mul_f32",
];

/// Keys per shared-memory tile of `hetero_attention_causal_f32` (its
/// `HETERO_ATT_TILE`): the scores of one tile live in shared memory, the
/// softmax runs online over the tiles, so any `max_len` works.
pub(crate) const ATTENTION_TILE: usize = 256;

/// Element sizes (bytes) of the embedding gather kernels, one per size.
pub(crate) const GATHER_SIZES: [usize; 4] = [1, 2, 4, 8];

/// Kernel name of the row gather of `size`-byte elements.
pub(crate) fn gather_name(size: usize) -> String {
    format!("hetero_gather_b{}", size * 8)
}

/// Launched with `DECODE_BLOCK` threads (a multiple of 32, as `warp_sum`
/// needs; 256, as `block_sum`'s shared array holds).
///
/// - `hetero_rms_norm_f32`: one block per row.
/// - `hetero_rope_f32`: one thread per rotated pair (grid-stride).
/// - `hetero_attention_causal_f32`: one block per (sequence, query token,
///   head), blocks ordered `(b * q_len + t) * heads + h`. Dynamic shared
///   memory: the query row (`dh`), the output accumulator (`dh`) and one
///   tile of scores (`HETERO_ATT_TILE`). Per tile: each warp takes keys and
///   its lanes split the dot product (coalesced reads of a key row), then
///   the running max / normaliser / accumulator are rescaled (online
///   softmax), each thread owning output dims `d = tid, tid + blockDim...`.
/// - `hetero_silu_mul_f32`: elementwise (grid-stride).
const LLAMA: &str = r#"
#define HETERO_ATT_TILE 256
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
extern "C" __global__ void hetero_rms_norm_f32(const float* x, const float* w, float* out, u64 cols, float eps) {
    __shared__ float sh[256];
    const float* row = x + (u64)blockIdx.x * cols;
    float* o = out + (u64)blockIdx.x * cols;
    float s = 0.0f;
    for (u64 c = threadIdx.x; c < cols; c += blockDim.x) { float v = row[c]; s += v * v; }
    float inv = 1.0f / sqrtf(block_sum(s, sh) / (float)cols + eps);
    for (u64 c = threadIdx.x; c < cols; c += blockDim.x) o[c] = row[c] * inv * w[c];
}
extern "C" __global__ void hetero_rope_f32(float* x, const unsigned int* pos, const float* inv_freq, u64 n, u64 heads, u64 half, int halves) {
    GRID_STRIDE(n) {
        u64 j = i % half, th = i / half;
        u64 t = th / heads;
        float s, c;
        sincosf((float)pos[t] * inv_freq[j], &s, &c);
        float* head = x + th * 2 * half;
        u64 ia = halves ? j : 2 * j;
        u64 ib = halves ? j + half : 2 * j + 1;
        float a = head[ia], b = head[ib];
        head[ia] = a * c - b * s;
        head[ib] = a * s + b * c;
    }
}
extern "C" __global__ void hetero_attention_causal_f32(const float* q, const float* k, const float* v, const unsigned int* lens, float* out, u64 q_len, u64 heads, u64 kv_heads, u64 dh, u64 max_len) {
    extern __shared__ float dyn[];
    __shared__ float sh[256];
    float* qs = dyn;
    float* acc = dyn + dh;
    float* p = dyn + 2 * dh;
    u64 h = blockIdx.x % heads, r = blockIdx.x / heads;
    u64 b = r / q_len, t = r % q_len;
    u64 kvh = h / (heads / kv_heads);
    u64 qw = heads * dh, kw = kv_heads * dh;
    u64 pos = (u64)lens[b] - q_len + t;
    const float* qv = q + r * qw + h * dh;
    const float* kb = k + b * max_len * kw + kvh * dh;
    const float* vb = v + b * max_len * kw + kvh * dh;
    float scale = 1.0f / sqrtf((float)dh);
    for (u64 d = threadIdx.x; d < dh; d += blockDim.x) { qs[d] = qv[d]; acc[d] = 0.0f; }
    __syncthreads();
    unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    float m = __int_as_float(0xff800000), z = 0.0f;
    for (u64 s0 = 0; s0 <= pos; s0 += HETERO_ATT_TILE) {
        u64 n = pos + 1 - s0;
        if (n > HETERO_ATT_TILE) n = HETERO_ATT_TILE;
        for (u64 j = warp; j < n; j += warps) {
            const float* kr = kb + (s0 + j) * kw;
            float s = 0.0f;
            for (u64 d = lane; d < dh; d += 32) s += qs[d] * kr[d];
            s = warp_sum(s);
            if (lane == 0) p[j] = s * scale;
        }
        __syncthreads();
        float tm = __int_as_float(0xff800000);
        for (u64 j = threadIdx.x; j < n; j += blockDim.x) tm = fmaxf(tm, p[j]);
        float mn = fmaxf(m, block_max(tm, sh));
        float corr = expf(m - mn);
        float ls = 0.0f;
        for (u64 j = threadIdx.x; j < n; j += blockDim.x) { float e = expf(p[j] - mn); p[j] = e; ls += e; }
        z = z * corr + block_sum(ls, sh);
        m = mn;
        for (u64 d = threadIdx.x; d < dh; d += blockDim.x) {
            float a = acc[d] * corr;
            const float* vr = vb + s0 * kw + d;
            for (u64 j = 0; j < n; j++) a += p[j] * vr[j * kw];
            acc[d] = a;
        }
        __syncthreads();
    }
    float* o = out + r * qw + h * dh;
    for (u64 d = threadIdx.x; d < dh; d += blockDim.x) o[d] = acc[d] / z;
}
extern "C" __global__ void hetero_silu_mul_f32(float* g, const float* u, u64 n) {
    GRID_STRIDE(n) { float x = g[i]; g[i] = x / (1.0f + expf(-x)) * u[i]; }
}
"#;

/// Storage type of the gather kernel for `size`-byte elements.
fn gather_type(size: usize) -> &'static str {
    match size {
        1 => "unsigned char",
        2 => "unsigned short",
        4 => "unsigned int",
        _ => "u64",
    }
}

/// Every kernel name the module defines (tests check they all load).
pub(crate) fn all_names() -> Vec<String> {
    let mut names: Vec<String> = DECODE_NAMES.iter().map(|s| s.to_string()).collect();
    names.extend(LLAMA_NAMES.iter().map(|s| s.to_string()));
    names.extend(GATHER_SIZES.iter().map(|&s| gather_name(s)));
    for dtype in DType::ALL {
        for op in [ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Max, ReduceOp::Min] {
            names.push(reduce_name(op, dtype));
        }
        names.push(avg_name(dtype));
        names.push(scale_name(dtype));
    }
    names
}

const PRELUDE: &str = r#"
typedef unsigned long long u64;
__device__ __forceinline__ float h2f(unsigned short h) {
    float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f;
}
__device__ __forceinline__ unsigned short f2h(float f) {
    unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h;
}
__device__ __forceinline__ float b2f(unsigned short b) {
    return __uint_as_float(((unsigned int)b) << 16);
}
__device__ __forceinline__ unsigned short f2b(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
__device__ __forceinline__ long long sat_i64(double v) {
    if (v != v) return 0;
    if (v >= 9223372036854775807.0) return 9223372036854775807LL;
    if (v <= -9223372036854775808.0) return (-9223372036854775807LL - 1);
    return (long long)v;
}
__device__ __forceinline__ int sat_i32(double v) {
    if (v != v) return 0;
    if (v >= 2147483647.0) return 2147483647;
    if (v <= -2147483648.0) return (-2147483647 - 1);
    return (int)v;
}
__device__ __forceinline__ unsigned char sat_u8(double v) {
    if (v != v || v <= 0.0) return 0;
    if (v >= 255.0) return 255;
    return (unsigned char)v;
}
#define GRID_STRIDE(n) for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)
"#;

/// How one dtype is stored, loaded into its compute type and stored back.
struct Spec {
    dtype: DType,
    storage: &'static str,
    compute: &'static str,
    load: &'static str,
    store: &'static str,
    add: &'static str,
    mul: &'static str,
    max: &'static str,
    min: &'static str,
    avg: &'static str,
    scale: &'static str,
}

const SPECS: [Spec; 7] = [
    Spec {
        dtype: DType::F32,
        storage: "float",
        compute: "float",
        load: "(X)",
        store: "(X)",
        add: "a + b",
        mul: "a * b",
        max: "fmaxf(a, b)",
        min: "fminf(a, b)",
        avg: "a / (float)count",
        scale: "a * (float)alpha",
    },
    Spec {
        dtype: DType::F64,
        storage: "double",
        compute: "double",
        load: "(X)",
        store: "(X)",
        add: "a + b",
        mul: "a * b",
        max: "fmax(a, b)",
        min: "fmin(a, b)",
        avg: "a / (double)count",
        scale: "a * alpha",
    },
    Spec {
        dtype: DType::F16,
        storage: "unsigned short",
        compute: "float",
        load: "h2f(X)",
        store: "f2h(X)",
        add: "a + b",
        mul: "a * b",
        max: "fmaxf(a, b)",
        min: "fminf(a, b)",
        avg: "a / (float)count",
        scale: "a * (float)alpha",
    },
    Spec {
        dtype: DType::BF16,
        storage: "unsigned short",
        compute: "float",
        load: "b2f(X)",
        store: "f2b(X)",
        add: "a + b",
        mul: "a * b",
        max: "fmaxf(a, b)",
        min: "fminf(a, b)",
        avg: "a / (float)count",
        scale: "a * (float)alpha",
    },
    Spec {
        dtype: DType::I32,
        storage: "int",
        compute: "int",
        load: "(X)",
        store: "(X)",
        add: "(int)((unsigned int)a + (unsigned int)b)",
        mul: "(int)((unsigned int)a * (unsigned int)b)",
        max: "(a > b ? a : b)",
        min: "(a < b ? a : b)",
        avg: "(int)((long long)a / (long long)count)",
        scale: "sat_i32((double)a * alpha)",
    },
    Spec {
        dtype: DType::I64,
        storage: "long long",
        compute: "long long",
        load: "(X)",
        store: "(X)",
        add: "(long long)((u64)a + (u64)b)",
        mul: "(long long)((u64)a * (u64)b)",
        max: "(a > b ? a : b)",
        min: "(a < b ? a : b)",
        avg: "a / (long long)count",
        scale: "sat_i64((double)a * alpha)",
    },
    Spec {
        dtype: DType::U8,
        storage: "unsigned char",
        compute: "unsigned int",
        load: "(unsigned int)(X)",
        store: "(unsigned char)(X)",
        add: "a + b",
        mul: "a * b",
        max: "(a > b ? a : b)",
        min: "(a < b ? a : b)",
        avg: "a / (unsigned int)count",
        scale: "sat_u8((double)a * alpha)",
    },
];

/// The CUDA C source of every kernel.
pub(crate) fn source() -> String {
    let mut src = String::from(PRELUDE);
    src += DECODE;
    src += LLAMA;
    for size in GATHER_SIZES {
        // Row r of out is row ids[r] of the table; one thread per element.
        src += &format!(
            "extern \"C\" __global__ void {name}(const {t}* table, const unsigned int* ids, {t}* out, u64 n, u64 width) {{\n  GRID_STRIDE(n) {{ out[i] = table[(u64)ids[i / width] * width + i % width]; }}\n}}\n",
            name = gather_name(size),
            t = gather_type(size),
        );
    }
    for s in &SPECS {
        let load = |x: &str| s.load.replace('X', x);
        let store = |x: &str| s.store.replace('X', x);
        for (op, expr) in [
            (ReduceOp::Sum, s.add),
            (ReduceOp::Prod, s.mul),
            (ReduceOp::Max, s.max),
            (ReduceOp::Min, s.min),
        ] {
            src += &format!(
                "extern \"C\" __global__ void {name}({t}* acc, const {t}* src, u64 n) {{\n  GRID_STRIDE(n) {{ {c} a = {la}; {c} b = {lb}; acc[i] = {st}; }}\n}}\n",
                name = reduce_name(op, s.dtype),
                t = s.storage,
                c = s.compute,
                la = load("acc[i]"),
                lb = load("src[i]"),
                st = store(expr),
            );
        }
        src += &format!(
            "extern \"C\" __global__ void {name}({t}* buf, u64 n, u64 count) {{\n  GRID_STRIDE(n) {{ {c} a = {la}; buf[i] = {st}; }}\n}}\n",
            name = avg_name(s.dtype),
            t = s.storage,
            c = s.compute,
            la = load("buf[i]"),
            st = store(s.avg),
        );
        src += &format!(
            "extern \"C\" __global__ void {name}({t}* buf, u64 n, double alpha) {{\n  GRID_STRIDE(n) {{ {c} a = {la}; buf[i] = {st}; }}\n}}\n",
            name = scale_name(s.dtype),
            t = s.storage,
            c = s.compute,
            la = load("buf[i]"),
            st = store(s.scale),
        );
    }
    src
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_defines_every_kernel_once() {
        let src = source();
        for name in all_names() {
            let decl = format!("void {name}(");
            assert_eq!(src.matches(&decl).count(), 1, "{name}");
        }
        assert_eq!(
            all_names().len(),
            DType::ALL.len() * 6 + DECODE_NAMES.len() + LLAMA_NAMES.len() + GATHER_SIZES.len()
        );
    }

    #[test]
    fn attention_tile_matches_the_source() {
        let define = format!("#define HETERO_ATT_TILE {ATTENTION_TILE}\n");
        assert!(source().contains(&define));
        assert_eq!(DECODE_BLOCK % 32, 0);
    }

    #[test]
    fn every_dtype_has_a_gather_kernel() {
        for dtype in DType::ALL {
            assert!(GATHER_SIZES.contains(&dtype.size_bytes()), "{dtype}");
        }
    }
}
