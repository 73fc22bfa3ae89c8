// The causal attention of llama.cu run on the CPU (emulate.h: each block's
// 256 threads are std::threads), over f32 caches and over f16 caches
// filled by hetero_convert_f32_f16, against a double-precision reference
// that reads the same rounded keys and values. Also checks that
// hetero_convert_f16_f32 gives back exactly the rounded values. The
// 32-lane shuffles exchange through a slot per thread between two
// barriers of the lane group. Cases: grouped heads, prompts after a cached
// prefix, several sequences, more positions than one tile of scores.
// Built and run by tests/attention_on_cpu.rs; exit status 0 when every
// case passes.
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#define HETERO_DYNAMIC_SHARED(T, name) extern T name[]
#include "emulate.h"
float dyn[1 << 16];
float scores[1 << 16];  // decode.cu's dynamic shared memory (unused here)
static float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
static float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static std::vector<std::unique_ptr<std::barrier<>>> lane_groups;
static float shfl_slot[1024];
static float __shfl_xor(float v, int o, int) {
    unsigned t = threadIdx.x;
    auto& group = *lane_groups[t / 32];
    shfl_slot[t] = v;
    group.arrive_and_wait();
    float r = shfl_slot[t ^ (unsigned)o];
    group.arrive_and_wait();
    return r;
}
#include "decode.cu"
#include "llama.cu"

int main() {
    const unsigned threads = 256;
    for (unsigned g = 0; g < threads / 32; g++) lane_groups.emplace_back(new std::barrier<>(32));
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> U(-2, 2);
    // batch, q_len, heads, kv_heads, head_dim, max_len, lens...
    struct Case { u64 batch, q_len, heads, kv_heads, dh, max_len; std::vector<unsigned> lens; };
    std::vector<Case> cases = {
        {1, 1, 1, 1, 4, 1, {1}},
        {3, 1, 6, 3, 64, 17, {1, 17, 9}},
        {1, 4, 6, 3, 64, 40, {23}},
        {2, 3, 6, 2, 8, 10, {3, 10}},
        {1, 1, 2, 1, 64, 300, {300}},
    };
    int fails = 0, runs = 0;
    for (auto& c : cases) for (int half = 0; half < 2; half++) {
        u64 qw = c.heads * c.dh, kw = c.kv_heads * c.dh;
        u64 qn = c.batch * c.q_len * qw, kn = c.batch * c.max_len * kw;
        std::vector<float> q(qn), k(kn), v(kn), out(qn, -12345.0f);
        for (auto& x : q) x = U(rng);
        for (auto& x : k) x = U(rng);
        for (auto& x : v) x = U(rng);
        std::vector<unsigned short> kh(kn), vh(kn);
        std::vector<float> kr = k, vr = v, back(kn);
        if (half) {
            unsigned blocks = (unsigned)std::min<u64>((kn + threads - 1) / threads, 3);
            run(blocks, 1, threads, [&] { hetero_convert_f32_f16(k.data(), kh.data(), kn); });
            run(blocks, 1, threads, [&] { hetero_convert_f32_f16(v.data(), vh.data(), kn); });
            run(blocks, 1, threads, [&] { hetero_convert_f16_f32(kh.data(), back.data(), kn); });
            for (u64 i = 0; i < kn; i++) {
                kr[i] = (float)(_Float16)k[i];
                vr[i] = (float)(_Float16)v[i];
                if (memcmp(&back[i], &kr[i], 4) != 0) {
                    fails++;
                    printf("FAIL convert: %g -> %g, want %g\n", k[i], back[i], kr[i]);
                    break;
                }
            }
        }
        unsigned blocks = (unsigned)(c.batch * c.q_len * c.heads);
        run(blocks, 1, threads, [&] {
            if (half) hetero_attention_causal_f16(q.data(), kh.data(), vh.data(), c.lens.data(), out.data(), c.q_len, c.heads, c.kv_heads, c.dh, c.max_len);
            else hetero_attention_causal_f32(q.data(), k.data(), v.data(), c.lens.data(), out.data(), c.q_len, c.heads, c.kv_heads, c.dh, c.max_len);
        });
        double worst = 0;
        for (u64 b = 0; b < c.batch; b++) for (u64 t = 0; t < c.q_len; t++) for (u64 h = 0; h < c.heads; h++) {
            u64 kvh = h / (c.heads / c.kv_heads), pos = c.lens[b] - c.q_len + t;
            const float* qv = &q[(b * c.q_len + t) * qw + h * c.dh];
            std::vector<double> s(pos + 1);
            double m = -INFINITY, z = 0;
            for (u64 j = 0; j <= pos; j++) {
                double d = 0;
                for (u64 i = 0; i < c.dh; i++) d += (double)qv[i] * kr[(b * c.max_len + j) * kw + kvh * c.dh + i];
                s[j] = d / std::sqrt((double)c.dh);
                m = std::max(m, s[j]);
            }
            for (auto& x : s) { x = std::exp(x - m); z += x; }
            for (u64 i = 0; i < c.dh; i++) {
                double want = 0;
                for (u64 j = 0; j <= pos; j++) want += s[j] / z * vr[(b * c.max_len + j) * kw + kvh * c.dh + i];
                double got = out[(b * c.q_len + t) * qw + h * c.dh + i];
                double err = std::fabs(got - want);
                worst = (err <= 1e-4 * std::max(1.0, std::fabs(want))) ? std::max(worst, err) : INFINITY;
            }
        }
        runs++;
        if (!(worst < INFINITY)) {
            fails++;
            printf("FAIL %s batch=%llu q_len=%llu heads=%llu kv_heads=%llu dh=%llu max_len=%llu\n",
                   half ? "f16" : "f32", c.batch, c.q_len, c.heads, c.kv_heads, c.dh, c.max_len);
        }
    }
    printf("%d runs, %d failed\n", runs, fails);
    return fails != 0;
}
