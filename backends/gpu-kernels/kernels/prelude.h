// hetero's kernel prelude: what every kernel below uses, written so that
// the same text compiles with NVRTC (CUDA) and hiprtc (HIP). No CUDA or
// HIP headers are included: NVRTC gets no include path here, and hiprtc
// provides the HIP device API itself. The two toolchains differ only in
// the 16-bit float conversions and the warp shuffle, bridged by the
// branch below; everything else (blockIdx, __shared__, __syncthreads,
// fmaxf, expf, __int_as_float, ...) is spelled the same in both.
typedef unsigned long long u64;
#if defined(__HIP__) || defined(__HIPCC_RTC__)
// HIP (clang): _Float16 is IEEE binary16 and converts with round to nearest
// even, as PTX's cvt.rn does; the bits cross through memcpy (no aliasing).
__device__ __forceinline__ float h2f(unsigned short h) {
    _Float16 v; __builtin_memcpy(&v, &h, 2); return (float)v;
}
__device__ __forceinline__ unsigned short f2h(float f) {
    _Float16 v = (_Float16)f; unsigned short h; __builtin_memcpy(&h, &v, 2); return h;
}
// A butterfly shuffle within groups of 32 lanes. HIP before ROCm 6.2 has no
// *_sync shuffles; a width of 32 keeps the kernels' 32-lane groups on
// 64-wide wavefronts (gfx9) as well as 32-wide ones (gfx10+).
#define HETERO_SHFL_XOR(v, o) __shfl_xor((v), (o), 32)
#else
__device__ __forceinline__ float h2f(unsigned short h) {
    float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f;
}
__device__ __forceinline__ unsigned short f2h(float f) {
    unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h;
}
#define HETERO_SHFL_XOR(v, o) __shfl_xor_sync(0xffffffffu, (v), (o))
#endif
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
// A kernel's dynamic shared memory (the CPU emulation of the kernels
// defines it first, as a global array).
#ifndef HETERO_DYNAMIC_SHARED
#define HETERO_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif
#define GRID_STRIDE(n) for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)
