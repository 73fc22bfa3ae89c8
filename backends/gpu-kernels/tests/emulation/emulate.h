// What the CPU emulation of the kernels needs in place of a GPU: each
// block's threads are std::threads, __syncthreads() a barrier, __shared__ a
// function-local static (blocks run one after another, so one copy per
// block is right), the HIP branch of prelude.h (_Float16) gives the 16-bit
// conversions, and the _rn intrinsics are plain operations (ISO C++ mode,
// -std=c++20, does not contract them into fused multiply-adds).
// Included by the per-kernel drivers (gemm.cpp, quant.cpp) before the
// kernel source they test.
#include <barrier>
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

// Run `kernel` over a gx x gy grid of blocks of `threads` threads.
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
