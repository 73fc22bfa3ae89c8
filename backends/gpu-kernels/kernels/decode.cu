// The decode-step kernels (f32): layer norm, bias + activation, attention
// of one decode step, argmax per row. Launched with DECODE_BLOCK (256)
// threads, one block per row (layer norm, argmax) or per (sequence, head)
// (attention, whose scores live in dynamic shared memory); bias_act is
// grid-stride. block_sum / block_max are also used by llama.cu.
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
    HETERO_DYNAMIC_SHARED(float, scores);
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
