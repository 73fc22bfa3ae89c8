// Block-quantized weights (GGUF's Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K, the
// layouts of hetero_core::quant): the file's bytes stay in device memory and
// are dequantized inside the kernels. `fmt` is the format's index in
// QuantType::ALL (HETERO_QUANT_FORMATS in lib.rs).
//
// Every format is read as units of 32 consecutive elements of a row (a
// whole block of the 32-element formats, one of the eight sub-blocks of a
// K-quant block), so hetero_dequant32 serves both kernels. It does the f32
// operations of hetero_core::quant's reference in its order, through the
// _rn intrinsics, which the compiler never contracts into a fused
// multiply-add: the gather is bit-exact with the reference.

__device__ __forceinline__ float hetero_q_half(const unsigned char* p) {
    return h2f((unsigned short)(p[0] | (p[1] << 8)));
}

// Scale and min of sub-block j (0..8) from a K-quant's 12 packed bytes.
__device__ __forceinline__ void hetero_q_scale_min(const unsigned char* s, unsigned j, unsigned* sc, unsigned* mn) {
    if (j < 4) {
        *sc = s[j] & 63u;
        *mn = s[j + 4] & 63u;
    } else {
        *sc = (s[j + 4] & 15u) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// The 32 elements of unit u of the row starting at `row`.
__device__ void hetero_dequant32(int fmt, const unsigned char* row, u64 u, float* v) {
    if (fmt == 0) {  // Q8_0: d, 32 x i8
        const unsigned char* b = row + u * 34;
        float d = hetero_q_half(b);
        for (int j = 0; j < 32; j++) v[j] = __fmul_rn((float)(signed char)b[2 + j], d);
    } else if (fmt == 1) {  // Q4_0: d, 16 bytes of nibbles, x = (q - 8) d
        const unsigned char* b = row + u * 18;
        float d = hetero_q_half(b);
        for (int j = 0; j < 16; j++) {
            unsigned q = b[2 + j];
            v[j] = __fmul_rn((float)((int)(q & 15u) - 8), d);
            v[j + 16] = __fmul_rn((float)((int)(q >> 4) - 8), d);
        }
    } else if (fmt == 2) {  // Q4_1: d, m, 16 bytes of nibbles, x = q d + m
        const unsigned char* b = row + u * 20;
        float d = hetero_q_half(b), m = hetero_q_half(b + 2);
        for (int j = 0; j < 16; j++) {
            unsigned q = b[4 + j];
            v[j] = __fadd_rn(__fmul_rn((float)(q & 15u), d), m);
            v[j + 16] = __fadd_rn(__fmul_rn((float)(q >> 4), d), m);
        }
    } else if (fmt == 3 || fmt == 4) {  // Q4_K, Q5_K: x = d sc q - dmin m
        const u64 bytes = fmt == 3 ? 144 : 176;
        const unsigned char* b = row + (u / 8) * bytes;
        unsigned sub = (unsigned)(u % 8), sc, mn;
        hetero_q_scale_min(b + 4, sub, &sc, &mn);
        float d1 = __fmul_rn(hetero_q_half(b), (float)sc);
        float m1 = __fmul_rn(hetero_q_half(b + 2), (float)mn);
        const unsigned char* qs = b + (fmt == 3 ? 16 : 48) + 32 * (sub / 2);
        unsigned shift = (sub & 1u) * 4u;
        for (int l = 0; l < 32; l++) {
            unsigned x = (qs[l] >> shift) & 15u;
            if (fmt == 4 && ((b[16 + l] >> sub) & 1u)) x += 16u;
            v[l] = __fsub_rn(__fmul_rn(d1, (float)x), m1);
        }
    } else {  // Q6_K: x = (d scale) (q - 32)
        const unsigned char* b = row + (u / 8) * 210;
        unsigned sub = (unsigned)(u % 8), h = sub / 4, k = sub % 4;
        float d = hetero_q_half(b + 208);
        const unsigned char* ql = b + 64 * h + 32 * (k & 1u);
        const unsigned char* qh = b + 128 + 32 * h;
        const unsigned char* sc = b + 192 + 8 * h + 2 * k;
        for (int l = 0; l < 32; l++) {
            unsigned lo = ql[l];
            if (k >= 2) lo >>= 4;
            int q = (int)((lo & 15u) | (((qh[l] >> (2 * k)) & 3u) << 4)) - 32;
            v[l] = __fmul_rn(__fmul_rn(d, (float)(signed char)sc[l / 16]), (float)q);
        }
    }
}

// y = x W^T (x: rows x inp f32, W: out rows of row_bytes, y: rows x out).
// A block of HETERO_QUANT_THREADS threads: warp w (32 threads) owns weight
// row 8 blockIdx.x + w, its lanes take the row's units in turn (neighbours
// read neighbouring blocks), each lane keeping one sum per row of x for
// HETERO_QUANT_ROWS rows (blockIdx.y); then a tree sum over the lanes in
// shared memory. Both grid dimensions stride, so any shape fits the grid.
#define HETERO_QUANT_ROWS 8
extern "C" __global__ void hetero_matmul_quant(const float* x, const unsigned char* w, float* y, u64 rows, u64 out, u64 inp, u64 row_bytes, int fmt) {
    __shared__ float sh[8 * HETERO_QUANT_ROWS * 32];
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const u64 units = inp / 32;
    for (u64 j0 = (u64)blockIdx.x * 8; j0 < out; j0 += (u64)gridDim.x * 8) {
        const u64 j = j0 + warp;
        for (u64 r0 = (u64)blockIdx.y * HETERO_QUANT_ROWS; r0 < rows; r0 += (u64)gridDim.y * HETERO_QUANT_ROWS) {
            const u64 n = rows - r0 < HETERO_QUANT_ROWS ? rows - r0 : HETERO_QUANT_ROWS;
            float acc[HETERO_QUANT_ROWS];
            for (int r = 0; r < HETERO_QUANT_ROWS; r++) acc[r] = 0.0f;
            if (j < out) {
                for (u64 u = lane; u < units; u += 32) {
                    float v[32];
                    hetero_dequant32(fmt, w + j * row_bytes, u, v);
                    for (u64 r = 0; r < n; r++) {
                        const float* xr = x + (r0 + r) * inp + 32 * u;
                        float s = 0.0f;
                        for (int e = 0; e < 32; e++) s += v[e] * xr[e];
                        acc[r] += s;
                    }
                }
            }
            float* mine = sh + warp * HETERO_QUANT_ROWS * 32;
            for (int r = 0; r < HETERO_QUANT_ROWS; r++) mine[r * 32 + lane] = acc[r];
            __syncthreads();
            for (unsigned s = 16; s > 0; s >>= 1) {
                if (lane < s) {
                    for (int r = 0; r < HETERO_QUANT_ROWS; r++) mine[r * 32 + lane] += mine[r * 32 + lane + s];
                }
                __syncthreads();
            }
            if (lane < n && j < out) y[(r0 + lane) * out + j] = mine[lane * 32];
            __syncthreads();
        }
    }
}

// out[r] = dequantized row ids[r] (rows of `units` units): one unit per
// thread, grid-stride.
extern "C" __global__ void hetero_embedding_quant(const unsigned char* w, const unsigned int* ids, float* out, u64 n, u64 units, u64 row_bytes, int fmt) {
    GRID_STRIDE(n) {
        float v[32];
        hetero_dequant32(fmt, w + (u64)ids[i / units] * row_bytes, i % units, v);
        for (int e = 0; e < 32; e++) out[i * 32 + e] = v[e];
    }
}
