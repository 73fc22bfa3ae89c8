// The Llama-family kernels (f32). Launched with DECODE_BLOCK (256)
// threads, a multiple of 32 as warp_sum needs and 256 as block_sum's
// shared array holds.
//
// - hetero_rms_norm_f32: one block per row.
// - hetero_rope_f32: one thread per rotated pair (grid-stride).
// - hetero_attention_causal_f32: one block per (sequence, query token,
//   head), blocks ordered (b * q_len + t) * heads + h. Dynamic shared
//   memory: the query row (dh), the output accumulator (dh) and one tile
//   of scores (HETERO_ATT_TILE). Per tile: each group of 32 lanes takes
//   keys and its lanes split the dot product (coalesced reads of a key
//   row), then the running max / normaliser / accumulator are rescaled
//   (online softmax), each thread owning output dims d = tid, tid +
//   blockDim, ... The 32-lane groups are the CUDA warp; on AMD they are
//   halves of a 64-wide wavefront or a whole 32-wide one (HETERO_SHFL_XOR).
//   hetero_attention_causal_f16 is the same over f16 key/value caches
//   (bits as unsigned short, widened by h2f as they are read).
// - hetero_attention_step_f32 / _f16: the same block per (row, head) for
//   an append_and_attend step, each row reading its own sequence's caches
//   through the step table (below), so a step of any batch is one launch.
// - hetero_kv_append_f32 / _f16: the step's new keys and values into every
//   sequence's caches, one thread per value (grid-stride), f16 rounded by
//   f2h.
// - hetero_silu_mul_f32: elementwise (grid-stride).
// - hetero_convert_f32_f16 / hetero_convert_f16_f32: convert_copy into and
//   out of an f16 KV cache (f2h: round to nearest even, as the host).
#define HETERO_ATT_TILE 256
__device__ __forceinline__ float kv_at(const float* p, u64 i) { return p[i]; }
__device__ __forceinline__ float kv_at(const unsigned short* p, u64 i) { return h2f(p[i]); }
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += HETERO_SHFL_XOR(v, o);
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
// One block's causal attention of the query head at `qv` over cache rows
// 0..=pos (row j of the head at kb + j * kw, vb + j * kw) into o.
template <typename KV>
__device__ void attend_causal_row(const float* qv, const KV* kb, const KV* vb, u64 pos, float* o, u64 dh, u64 kw) {
    HETERO_DYNAMIC_SHARED(float, dyn);
    __shared__ float sh[256];
    float* qs = dyn;
    float* acc = dyn + dh;
    float* p = dyn + 2 * dh;
    float scale = 1.0f / sqrtf((float)dh);
    for (u64 d = threadIdx.x; d < dh; d += blockDim.x) { qs[d] = qv[d]; acc[d] = 0.0f; }
    __syncthreads();
    unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    float m = __int_as_float(0xff800000), z = 0.0f;
    for (u64 s0 = 0; s0 <= pos; s0 += HETERO_ATT_TILE) {
        u64 n = pos + 1 - s0;
        if (n > HETERO_ATT_TILE) n = HETERO_ATT_TILE;
        for (u64 j = warp; j < n; j += warps) {
            const KV* kr = kb + (s0 + j) * kw;
            float s = 0.0f;
            for (u64 d = lane; d < dh; d += 32) s += qs[d] * kv_at(kr, d);
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
            const KV* vr = vb + s0 * kw + d;
            for (u64 j = 0; j < n; j++) a += p[j] * kv_at(vr, j * kw);
            acc[d] = a;
        }
        __syncthreads();
    }
    for (u64 d = threadIdx.x; d < dh; d += blockDim.x) o[d] = acc[d] / z;
}
template <typename KV>
__device__ void attention_causal(const float* q, const KV* k, const KV* v, const unsigned int* lens, float* out, u64 q_len, u64 heads, u64 kv_heads, u64 dh, u64 max_len) {
    u64 h = blockIdx.x % heads, r = blockIdx.x / heads;
    u64 b = r / q_len, t = r % q_len;
    u64 kvh = h / (heads / kv_heads);
    u64 qw = heads * dh, kw = kv_heads * dh;
    u64 pos = (u64)lens[b] - q_len + t;
    const KV* kb = k + b * max_len * kw + kvh * dh;
    const KV* vb = v + b * max_len * kw + kvh * dh;
    attend_causal_row(q + r * qw + h * dh, kb, vb, pos, out + r * qw + h * dh, dh, kw);
}
// The step table of hetero_kv_append_* and hetero_attention_step_*: for
// each of nseq sequences four u64 (its key cache's and value cache's device
// addresses, positions cached before the step, its first row), then for
// each row of the step the index of its sequence (u64).
template <typename KV>
__device__ void attention_step(const float* q, const u64* table, u64 nseq, float* out, u64 heads, u64 kv_heads, u64 dh) {
    u64 h = blockIdx.x % heads, r = blockIdx.x / heads;
    const u64* e = table + 4 * table[4 * nseq + r];
    u64 kvh = h / (heads / kv_heads);
    u64 qw = heads * dh, kw = kv_heads * dh;
    u64 pos = e[2] + (r - e[3]);
    const KV* kb = (const KV*)e[0] + kvh * dh;
    const KV* vb = (const KV*)e[1] + kvh * dh;
    attend_causal_row(q + r * qw + h * dh, kb, vb, pos, out + r * qw + h * dh, dh, kw);
}
extern "C" __global__ void hetero_attention_causal_f32(const float* q, const float* k, const float* v, const unsigned int* lens, float* out, u64 q_len, u64 heads, u64 kv_heads, u64 dh, u64 max_len) {
    attention_causal(q, k, v, lens, out, q_len, heads, kv_heads, dh, max_len);
}
extern "C" __global__ void hetero_attention_causal_f16(const float* q, const unsigned short* k, const unsigned short* v, const unsigned int* lens, float* out, u64 q_len, u64 heads, u64 kv_heads, u64 dh, u64 max_len) {
    attention_causal(q, k, v, lens, out, q_len, heads, kv_heads, dh, max_len);
}
extern "C" __global__ void hetero_attention_step_f32(const float* q, const u64* table, u64 nseq, float* out, u64 heads, u64 kv_heads, u64 dh) {
    attention_step<float>(q, table, nseq, out, heads, kv_heads, dh);
}
extern "C" __global__ void hetero_attention_step_f16(const float* q, const u64* table, u64 nseq, float* out, u64 heads, u64 kv_heads, u64 dh) {
    attention_step<unsigned short>(q, table, nseq, out, heads, kv_heads, dh);
}
__device__ __forceinline__ void kv_store(float* p, float x) { *p = x; }
__device__ __forceinline__ void kv_store(unsigned short* p, float x) { *p = f2h(x); }
template <typename KV>
__device__ void kv_append(const float* k_new, const float* v_new, const u64* table, u64 nseq, u64 n, u64 kw) {
    GRID_STRIDE(n) {
        u64 r = i / kw, c = i % kw;
        const u64* e = table + 4 * table[4 * nseq + r];
        u64 at = (e[2] + (r - e[3])) * kw + c;
        kv_store((KV*)e[0] + at, k_new[i]);
        kv_store((KV*)e[1] + at, v_new[i]);
    }
}
extern "C" __global__ void hetero_kv_append_f32(const float* k_new, const float* v_new, const u64* table, u64 nseq, u64 n, u64 kw) {
    kv_append<float>(k_new, v_new, table, nseq, n, kw);
}
extern "C" __global__ void hetero_kv_append_f16(const float* k_new, const float* v_new, const u64* table, u64 nseq, u64 n, u64 kw) {
    kv_append<unsigned short>(k_new, v_new, table, nseq, n, kw);
}
extern "C" __global__ void hetero_convert_f32_f16(const float* src, unsigned short* dst, u64 n) {
    GRID_STRIDE(n) dst[i] = f2h(src[i]);
}
extern "C" __global__ void hetero_convert_f16_f32(const unsigned short* src, float* dst, u64 n) {
    GRID_STRIDE(n) dst[i] = h2f(src[i]);
}
extern "C" __global__ void hetero_silu_mul_f32(float* g, const float* u, u64 n) {
    GRID_STRIDE(n) { float x = g[i]; g[i] = x / (1.0f + expf(-x)) * u[i]; }
}
