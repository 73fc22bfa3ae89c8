// Tiled GEMM for f32, f64, f16 and bf16: the GEMM of backends without a BLAS
// (hetero-rocm: Debian ships no rocBLAS / hipBLAS); hetero-cuda uses cuBLAS.
//
// Semantics are hetero_core's GemmSpec and the host backend's: row-major
// C[m x n] = alpha * op(A) * op(B) + beta * C, op(A) of shape m x k (A is
// stored k x m when trans_a), op(B) of shape k x n (B stored n x k when
// trans_b). beta == 0 never reads C (a NaN there is overwritten, as BLAS
// and matrixmultiply do). f16 / bf16 accumulate in f32 with f32 scalars and
// round once when stored, f32 uses f32 scalars, f64 computes in f64.
//
// Launch: HETERO_GEMM_THREADS (256) threads per block, a grid of
// (ceil(n / 64), ceil(m / 64)) blocks. Each block computes a 64 x 64 tile
// of C, stepping through k 16 at a time with both operand tiles in shared
// memory; thread (tx, ty) of the 16 x 16 layout owns rows ty + 16 i and
// columns tx + 16 j (i, j < 4) of the tile, so neighbouring threads store
// neighbouring columns. Loads run along each operand's contiguous index.
#define HETERO_GEMM_TILE 64
#define HETERO_GEMM_K 16
#define HETERO_GEMM_THREADS 256

struct hetero_gemm_f32_io {
    typedef float T; typedef float Acc;
    static __device__ __forceinline__ float load(float x) { return x; }
    static __device__ __forceinline__ float store(float x) { return x; }
};
struct hetero_gemm_f64_io {
    typedef double T; typedef double Acc;
    static __device__ __forceinline__ double load(double x) { return x; }
    static __device__ __forceinline__ double store(double x) { return x; }
};
struct hetero_gemm_f16_io {
    typedef unsigned short T; typedef float Acc;
    static __device__ __forceinline__ float load(unsigned short x) { return h2f(x); }
    static __device__ __forceinline__ unsigned short store(float x) { return f2h(x); }
};
struct hetero_gemm_bf16_io {
    typedef unsigned short T; typedef float Acc;
    static __device__ __forceinline__ float load(unsigned short x) { return b2f(x); }
    static __device__ __forceinline__ unsigned short store(float x) { return f2b(x); }
};

template <typename IO>
__device__ __forceinline__ void hetero_gemm_tile(const typename IO::T* a, const typename IO::T* b, typename IO::T* c, u64 m, u64 n, u64 k, int trans_a, int trans_b, double alpha_d, double beta_d) {
    typedef typename IO::Acc Acc;
    // One padding column against shared-memory bank conflicts.
    __shared__ Acc as[HETERO_GEMM_K][HETERO_GEMM_TILE + 1];
    __shared__ Acc bs[HETERO_GEMM_K][HETERO_GEMM_TILE + 1];
    const unsigned tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const u64 row0 = (u64)blockIdx.y * HETERO_GEMM_TILE, col0 = (u64)blockIdx.x * HETERO_GEMM_TILE;
    const Acc alpha = (Acc)alpha_d, beta = (Acc)beta_d;
    Acc acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = (Acc)0;
    for (u64 p0 = 0; p0 < k; p0 += HETERO_GEMM_K) {
        for (unsigned e = threadIdx.x; e < HETERO_GEMM_TILE * HETERO_GEMM_K; e += HETERO_GEMM_THREADS) {
            // Element (r, q) of op(A)'s tile and (q, s) of op(B)'s, with
            // consecutive e along the index that is contiguous in memory.
            unsigned r, q, s;
            if (trans_a) { r = e % HETERO_GEMM_TILE; q = e / HETERO_GEMM_TILE; }
            else { q = e % HETERO_GEMM_K; r = e / HETERO_GEMM_K; }
            u64 i = row0 + r, p = p0 + q;
            as[q][r] = (i < m && p < k) ? IO::load(trans_a ? a[p * m + i] : a[i * k + p]) : (Acc)0;
            if (trans_b) { q = e % HETERO_GEMM_K; s = e / HETERO_GEMM_K; }
            else { s = e % HETERO_GEMM_TILE; q = e / HETERO_GEMM_TILE; }
            u64 j = col0 + s;
            p = p0 + q;
            bs[q][s] = (j < n && p < k) ? IO::load(trans_b ? b[j * k + p] : b[p * n + j]) : (Acc)0;
        }
        __syncthreads();
        for (unsigned q = 0; q < HETERO_GEMM_K; q++) {
            Acc av[4], bv[4];
            for (int i = 0; i < 4; i++) av[i] = as[q][ty + 16 * i];
            for (int j = 0; j < 4; j++) bv[j] = bs[q][tx + 16 * j];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) acc[i][j] += av[i] * bv[j];
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; i++) {
        u64 r = row0 + ty + 16 * i;
        if (r >= m) continue;
        for (int j = 0; j < 4; j++) {
            u64 col = col0 + tx + 16 * j;
            if (col >= n) continue;
            Acc v = alpha * acc[i][j];
            if (beta != (Acc)0) v += beta * IO::load(c[r * n + col]);
            c[r * n + col] = IO::store(v);
        }
    }
}

extern "C" __global__ void hetero_gemm_f32(const float* a, const float* b, float* c, u64 m, u64 n, u64 k, int trans_a, int trans_b, double alpha, double beta) {
    hetero_gemm_tile<hetero_gemm_f32_io>(a, b, c, m, n, k, trans_a, trans_b, alpha, beta);
}
extern "C" __global__ void hetero_gemm_f64(const double* a, const double* b, double* c, u64 m, u64 n, u64 k, int trans_a, int trans_b, double alpha, double beta) {
    hetero_gemm_tile<hetero_gemm_f64_io>(a, b, c, m, n, k, trans_a, trans_b, alpha, beta);
}
extern "C" __global__ void hetero_gemm_f16(const unsigned short* a, const unsigned short* b, unsigned short* c, u64 m, u64 n, u64 k, int trans_a, int trans_b, double alpha, double beta) {
    hetero_gemm_tile<hetero_gemm_f16_io>(a, b, c, m, n, k, trans_a, trans_b, alpha, beta);
}
extern "C" __global__ void hetero_gemm_bf16(const unsigned short* a, const unsigned short* b, unsigned short* c, u64 m, u64 n, u64 k, int trans_a, int trans_b, double alpha, double beta) {
    hetero_gemm_tile<hetero_gemm_bf16_io>(a, b, c, m, n, k, trans_a, trans_b, alpha, beta);
}
