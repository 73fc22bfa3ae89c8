// The quantized-weight kernels of quant.cu run on the CPU (emulate.h: each
// block's threads are std::threads).
//
// Driven by tests/quant_on_cpu.rs, which holds the reference: argv[1] is a
// file of cases, each a header of six u32 (format, rows, out, inp, bytes
// per weight row, ids) then x (rows x inp f32), the weights (out rows) and
// the ids (u32); argv[2] receives, per case, y (rows x out f32) from
// hetero_matmul_quant and the gathered rows (ids x inp f32) from
// hetero_embedding_quant. Grids are kept small so the kernels' grid-stride
// loops run more than once.
#include <cstdint>
#include <cstdio>
#include "emulate.h"
#include "quant.cu"

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
