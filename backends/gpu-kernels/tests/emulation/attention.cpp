// The causal attention of llama.cu run on the CPU (emulate.h: each block's
// 256 threads are std::threads), over f32 caches and over f16 caches
// filled by hetero_convert_f32_f16, against a double-precision reference
// that reads the same rounded keys and values. Also checks that
// hetero_convert_f16_f32 gives back exactly the rounded values. The
// 32-lane shuffles exchange through a slot per thread between two
// barriers of the lane group. Cases: grouped heads, prompts after a cached
// prefix, several sequences, more positions than one tile of scores.
// Then the append_and_attend step kernels (hetero_kv_append_*,
// hetero_attention_step_*) over sequences with caches of their own,
// addressed through the step table: caches compared bit for bit, outputs
// against the same double-precision reference.
// Built and run by tests/attention_on_cpu.rs; exit status 0 when every
// case passes.
#include <cmath>
#include <cstdint>
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
    // append_and_attend's step kernels: sequences with caches of their own
    // (cached positions, new rows, cache positions), the new keys and
    // values appended through the step table, then every row's attention.
    struct Seq { u64 cached, rows, max_len; };
    std::vector<std::vector<Seq>> steps = {
        {{5, 1, 9}},
        {{0, 1, 1}, {3, 1, 8}, {16, 1, 17}, {299, 1, 300}},
        {{0, 3, 3}, {7, 1, 12}, {2, 5, 7}},
    };
    const u64 heads = 6, kv_heads = 2, dh = 64, qw = heads * dh, kw = kv_heads * dh;
    for (auto& seqs : steps) for (int half = 0; half < 2; half++) {
        u64 rows = 0;
        for (auto& s : seqs) rows += s.rows;
        std::vector<float> q(rows * qw), kn(rows * kw), vn(rows * kw), out(rows * qw, -12345.0f);
        for (auto& x : q) x = U(rng);
        for (auto& x : kn) x = U(rng);
        for (auto& x : vn) x = U(rng);
        auto rd = [&](float x) { return half ? (float)(_Float16)x : x; };
        // Caches start full of their own (rounded) values.
        std::vector<std::vector<float>> kf, vf, kwant, vwant;
        std::vector<std::vector<unsigned short>> kh, vh;
        std::vector<u64> table;
        u64 row = 0;
        for (auto& s : seqs) {
            std::vector<float> k(s.max_len * kw), v(s.max_len * kw);
            for (auto& x : k) x = rd(U(rng));
            for (auto& x : v) x = rd(U(rng));
            std::vector<unsigned short> k16(k.size()), v16(v.size());
            for (size_t i = 0; i < k.size(); i++) {
                _Float16 a = (_Float16)k[i], b = (_Float16)v[i];
                memcpy(&k16[i], &a, 2); memcpy(&v16[i], &b, 2);
            }
            kwant.push_back(k); vwant.push_back(v);
            for (u64 i = 0; i < s.rows * kw; i++) {
                kwant.back()[s.cached * kw + i] = rd(kn[row * kw + i]);
                vwant.back()[s.cached * kw + i] = rd(vn[row * kw + i]);
            }
            kf.push_back(std::move(k)); vf.push_back(std::move(v));
            kh.push_back(std::move(k16)); vh.push_back(std::move(v16));
            row += s.rows;
        }
        row = 0;
        for (size_t i = 0; i < seqs.size(); i++) {
            u64 kp = half ? (u64)(uintptr_t)kh[i].data() : (u64)(uintptr_t)kf[i].data();
            u64 vp = half ? (u64)(uintptr_t)vh[i].data() : (u64)(uintptr_t)vf[i].data();
            table.insert(table.end(), {kp, vp, seqs[i].cached, row});
            row += seqs[i].rows;
        }
        for (size_t i = 0; i < seqs.size(); i++) for (u64 r = 0; r < seqs[i].rows; r++) table.push_back(i);
        u64 nseq = seqs.size(), n = rows * kw;
        unsigned blocks = (unsigned)std::min<u64>((n + threads - 1) / threads, 3);
        run(blocks, 1, threads, [&] {
            if (half) hetero_kv_append_f16(kn.data(), vn.data(), table.data(), nseq, n, kw);
            else hetero_kv_append_f32(kn.data(), vn.data(), table.data(), nseq, n, kw);
        });
        run((unsigned)(rows * heads), 1, threads, [&] {
            if (half) hetero_attention_step_f16(q.data(), table.data(), nseq, out.data(), heads, kv_heads, dh);
            else hetero_attention_step_f32(q.data(), table.data(), nseq, out.data(), heads, kv_heads, dh);
        });
        runs++;
        bool ok = true;
        row = 0;
        for (size_t i = 0; i < seqs.size(); i++) {
            for (u64 j = 0; j < seqs[i].max_len * kw; j++) {
                float gk = half ? (float)h2f(kh[i][j]) : kf[i][j];
                float gv = half ? (float)h2f(vh[i][j]) : vf[i][j];
                if (memcmp(&gk, &kwant[i][j], 4) != 0 || memcmp(&gv, &vwant[i][j], 4) != 0) ok = false;
            }
            for (u64 t = 0; t < seqs[i].rows; t++) for (u64 h = 0; h < heads; h++) {
                u64 kvh = h / (heads / kv_heads), pos = seqs[i].cached + t, r = row + t;
                const float* qv = &q[r * qw + h * dh];
                std::vector<double> s(pos + 1);
                double m = -INFINITY, z = 0;
                for (u64 j = 0; j <= pos; j++) {
                    double d = 0;
                    for (u64 x = 0; x < dh; x++) d += (double)qv[x] * kwant[i][j * kw + kvh * dh + x];
                    s[j] = d / std::sqrt((double)dh);
                    m = std::max(m, s[j]);
                }
                for (auto& x : s) { x = std::exp(x - m); z += x; }
                for (u64 x = 0; x < dh; x++) {
                    double want = 0;
                    for (u64 j = 0; j <= pos; j++) want += s[j] / z * vwant[i][j * kw + kvh * dh + x];
                    double got = out[r * qw + h * dh + x];
                    if (!(std::fabs(got - want) <= 1e-4 * std::max(1.0, std::fabs(want)))) ok = false;
                }
            }
            row += seqs[i].rows;
        }
        if (!ok) {
            fails++;
            printf("FAIL step %s of %zu sequences, %llu rows\n", half ? "f16" : "f32", seqs.size(), rows);
        }
    }
    printf("%d runs, %d failed\n", runs, fails);
    return fails != 0;
}
