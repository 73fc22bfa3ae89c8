// The tiled GEMM of gemm.cu run on the CPU (emulate.h: each block's 256
// threads are std::threads).
// Checked against a double-precision reference over edge shapes (not
// multiples of the tiles, k = 0), every transpose, beta 0 (C holds NaN,
// which must not be read), 1 and -0.5, and f16 / bf16 rounded once.
// Built and run by tests/gemm_on_cpu.rs; exit status 0 when every case passes.
#include <cmath>
#include <cstdio>
#include <random>
#include "emulate.h"
#include "gemm.cu"

int main() {
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> U(-1, 1);
    int fails = 0, cases = 0;
    int shapes[][3] = {{1,1,1},{3,5,7},{64,64,16},{65,63,17},{130,70,33},{1,200,40},{100,1,0},{17,129,64}};
    for (auto& s : shapes) for (int ta = 0; ta < 2; ta++) for (int tb = 0; tb < 2; tb++) for (int bi = 0; bi < 3; bi++) {
        u64 m = s[0], n = s[1], k = s[2];
        double alpha = 1.5, beta = bi == 0 ? 0.0 : (bi == 1 ? 1.0 : -0.5);
        std::vector<float> a(m * k), b(k * n), c(m * n), c0;
        for (auto& v : a) v = U(rng); for (auto& v : b) v = U(rng); for (auto& v : c) v = U(rng);
        if (beta == 0.0) for (auto& v : c) v = NAN;
        c0 = c;
        run((n + 63) / 64, (m + 63) / 64, 256, [&] { hetero_gemm_f32(a.data(), b.data(), c.data(), m, n, k, ta, tb, alpha, beta); });
        double maxerr = 0;
        for (u64 i = 0; i < m; i++) for (u64 j = 0; j < n; j++) {
            double acc = 0;
            for (u64 p = 0; p < k; p++) acc += (double)(ta ? a[p * m + i] : a[i * k + p]) * (double)(tb ? b[j * k + p] : b[p * n + j]);
            double want = alpha * acc + (beta != 0 ? beta * c0[i * n + j] : 0);
            double err = std::fabs(want - c[i * n + j]);
            if (!(err <= 1e-4 * (1 + k))) maxerr = INFINITY; else maxerr = std::max(maxerr, err);
        }
        cases++;
        if (!(maxerr < INFINITY)) { fails++; printf("FAIL m=%llu n=%llu k=%llu ta=%d tb=%d beta=%g\n", m, n, k, ta, tb, beta); }
    }
    // f16 and bf16: one case each against f32 reference of rounded inputs, rounded once.
    for (int which = 0; which < 2; which++) {
        u64 m = 37, n = 70, k = 45;
        std::vector<unsigned short> a(m * k), b(k * n), c(m * n);
        auto enc = [&](float f) { return which ? f2b(f) : f2h(f); };
        auto dec = [&](unsigned short h) { return which ? b2f(h) : h2f(h); };
        for (auto& v : a) v = enc(U(rng)); for (auto& v : b) v = enc(U(rng)); for (auto& v : c) v = enc(U(rng));
        auto c0 = c;
        run((n + 63) / 64, (m + 63) / 64, 256, [&] {
            if (which) hetero_gemm_bf16(a.data(), b.data(), c.data(), m, n, k, 1, 0, 2.0, 0.5);
            else hetero_gemm_f16(a.data(), b.data(), c.data(), m, n, k, 1, 0, 2.0, 0.5);
        });
        int bad = 0;
        for (u64 i = 0; i < m; i++) for (u64 j = 0; j < n; j++) {
            double acc = 0;
            for (u64 p = 0; p < k; p++) acc += (double)dec(a[p * m + i]) * dec(b[p * n + j]);
            double want = 2.0 * acc + 0.5 * dec(c0[i * n + j]);
            double got = dec(c[i * n + j]);
            double tol = (which ? 8e-3 : 1e-3) * std::max(1.0, std::fabs(want)) + 1e-4 * k;
            if (std::fabs(got - want) > tol) bad++;
        }
        cases++;
        if (bad) { fails++; printf("FAIL %s: %d elements\n", which ? "bf16" : "f16", bad); }
    }
    printf("%d cases, %d failed\n", cases, fails);
    return fails != 0;
}
