// The quantized-weight kernels of quant.cu run on the CPU: each block's
// threads are std::threads, __syncthreads() a barrier, __shared__ a
// function-local static (blocks run one after another), the HIP branch of
// prelude.h (_Float16) converts the f16 scales, and the _rn intrinsics are
// plain operations (ISO C++ mode does not contract them).
//
// Driven by tests/quant_on_cpu.rs, which holds the reference: argv[1] is a
// file of cases, each a header of six u32 (format, rows, out, inp, bytes
// per weight row, ids) then x (rows x inp f32), the weights (out rows) and
// the ids (u32); argv[2] receives, per case, y (rows x out f32) from
// hetero_matmul_quant and the gathered rows (ids x inp f32) from
// hetero_embedding_quant. Grids are kept small so the kernels' grid-stride
// loops run more than once.
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>
struct D3 { unsigned x = 0, y = 0, z = 0; };
thread_local D3 threadIdx;
D3 blockIdx, blockDim, gridDim;
std::barrier<>* bar;
#define __syncthreads() bar->arrive_and_wait()
#define __device__
#define __global__
#define __forceinline__ inline
#define __shared__ static
#define __HIP__ 1
static float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static float __fmul_rn(float a, float b) { return a * b; }
static float __fadd_rn(float a, float b) { return a + b; }
static float __fsub_rn(float a, float b) { return a - b; }
#include "prelude.h"
#include "quant.cu"

template <typename F>
void run(unsigned gx, unsigned gy, unsigned threads, F kernel) {
    std::barrier<> b(threads); bar = &b; blockDim.x = threads; gridDim.x = gx; gridDim.y = gy;
    for (unsigned by = 0; by < gy; by++) for (unsigned bx = 0; bx < gx; bx++) {
        blockIdx.x = bx; blockIdx.y = by;
        std::vector<std::thread> ts;
        for (unsigned t = 0; t < threads; t++) ts.emplace_back([&, t] { threadIdx.x = t; kernel(); });
        for (auto& t : ts) t.join();
    }
}

template <typename T>
static bool read_n(FILE* f, std::vector<T>& v, size_t n) {
    v.resize(n);
    return n == 0 || fread(v.data(), sizeof(T), n, f) == n;
}

int main(int argc, char** argv) {
    if (argc != 3) { fprintf(stderr, "usage: quant CASES OUT\n"); return 2; }
    FILE* in = fopen(argv[1], "rb");
    FILE* out = fopen(argv[2], "wb");
    if (!in || !out) { fprintf(stderr, "cannot open the files\n"); return 2; }
    uint32_t h[6];
    int cases = 0;
    while (fread(h, 4, 6, in) == 6) {
        int fmt = (int)h[0];
        u64 rows = h[1], n_out = h[2], inp = h[3], row_bytes = h[4], n_ids = h[5];
        std::vector<float> x;
        std::vector<unsigned char> w;
        std::vector<uint32_t> ids;
        if (!read_n(in, x, rows * inp) || !read_n(in, w, n_out * row_bytes) || !read_n(in, ids, n_ids)) {
            fprintf(stderr, "case %d is cut short\n", cases);
            return 2;
        }
        std::vector<float> y(rows * n_out, -12345.0f), emb(n_ids * inp, -12345.0f);
        unsigned gx = (unsigned)((n_out + 7) / 8), gy = (unsigned)((rows + 7) / 8);
        gx = gx > 3 ? 3 : gx;
        gy = gy > 2 ? 2 : gy;
        run(gx, gy, 256, [&] {
            hetero_matmul_quant(x.data(), w.data(), y.data(), rows, n_out, inp, row_bytes, fmt);
        });
        u64 units = n_ids * (inp / 32);
        run(2, 1, 64, [&] {
            hetero_embedding_quant(w.data(), (const unsigned int*)ids.data(), emb.data(), units, inp / 32, row_bytes, fmt);
        });
        fwrite(y.data(), 4, y.size(), out);
        fwrite(emb.data(), 4, emb.size(), out);
        cases++;
    }
    fclose(out);
    printf("%d cases emulated\n", cases);
    return 0;
}
