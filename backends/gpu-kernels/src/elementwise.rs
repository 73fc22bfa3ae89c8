//! The elementwise kernels, generated per dtype (and per element size for
//! the gather): reduce, finish (average), scale, row gather. Generated
//! rather than written out because only the types and one expression
//! differ between the 7 x 6 kernels; the table below says, per dtype, how
//! a value is stored, loaded into its compute type and stored back.

use hetero_core::{DType, ReduceOp};

/// Kernel name for `acc = op(acc, src)`.
pub fn reduce_name(op: ReduceOp, dtype: DType) -> String {
    format!("hetero_reduce_{}_{}", op.combine_op().name(), dtype.name())
}

/// Kernel name of the average's final division for `dtype`.
pub fn avg_name(dtype: DType) -> String {
    format!("hetero_finish_avg_{}", dtype.name())
}

/// Kernel name of `buf *= alpha` for `dtype`.
pub fn scale_name(dtype: DType) -> String {
    format!("hetero_scale_{}", dtype.name())
}

/// Element sizes (bytes) of the embedding gather kernels, one per size.
pub const GATHER_SIZES: [usize; 4] = [1, 2, 4, 8];

/// Kernel name of the row gather of `size`-byte elements.
pub fn gather_name(size: usize) -> String {
    format!("hetero_gather_b{}", size * 8)
}

/// Storage type of the gather kernel for `size`-byte elements.
fn gather_type(size: usize) -> &'static str {
    match size {
        1 => "unsigned char",
        2 => "unsigned short",
        4 => "unsigned int",
        _ => "u64",
    }
}

/// How one dtype is stored, loaded into its compute type and stored back.
struct Spec {
    dtype: DType,
    storage: &'static str,
    compute: &'static str,
    load: &'static str,
    store: &'static str,
    add: &'static str,
    mul: &'static str,
    max: &'static str,
    min: &'static str,
    avg: &'static str,
    scale: &'static str,
}

const SPECS: [Spec; 7] = [
    Spec {
        dtype: DType::F32,
        storage: "float",
        compute: "float",
        load: "(X)",
        store: "(X)",
        add: "a + b",
        mul: "a * b",
        max: "fmaxf(a, b)",
        min: "fminf(a, b)",
        avg: "a / (float)count",
        scale: "a * (float)alpha",
    },
    Spec {
        dtype: DType::F64,
        storage: "double",
        compute: "double",
        load: "(X)",
        store: "(X)",
        add: "a + b",
        mul: "a * b",
        max: "fmax(a, b)",
        min: "fmin(a, b)",
        avg: "a / (double)count",
        scale: "a * alpha",
    },
    Spec {
        dtype: DType::F16,
        storage: "unsigned short",
        compute: "float",
        load: "h2f(X)",
        store: "f2h(X)",
        add: "a + b",
        mul: "a * b",
        max: "fmaxf(a, b)",
        min: "fminf(a, b)",
        avg: "a / (float)count",
        scale: "a * (float)alpha",
    },
    Spec {
        dtype: DType::BF16,
        storage: "unsigned short",
        compute: "float",
        load: "b2f(X)",
        store: "f2b(X)",
        add: "a + b",
        mul: "a * b",
        max: "fmaxf(a, b)",
        min: "fminf(a, b)",
        avg: "a / (float)count",
        scale: "a * (float)alpha",
    },
    Spec {
        dtype: DType::I32,
        storage: "int",
        compute: "int",
        load: "(X)",
        store: "(X)",
        add: "(int)((unsigned int)a + (unsigned int)b)",
        mul: "(int)((unsigned int)a * (unsigned int)b)",
        max: "(a > b ? a : b)",
        min: "(a < b ? a : b)",
        avg: "(int)((long long)a / (long long)count)",
        scale: "sat_i32((double)a * alpha)",
    },
    Spec {
        dtype: DType::I64,
        storage: "long long",
        compute: "long long",
        load: "(X)",
        store: "(X)",
        add: "(long long)((u64)a + (u64)b)",
        mul: "(long long)((u64)a * (u64)b)",
        max: "(a > b ? a : b)",
        min: "(a < b ? a : b)",
        avg: "a / (long long)count",
        scale: "sat_i64((double)a * alpha)",
    },
    Spec {
        dtype: DType::U8,
        storage: "unsigned char",
        compute: "unsigned int",
        load: "(unsigned int)(X)",
        store: "(unsigned char)(X)",
        add: "a + b",
        mul: "a * b",
        max: "(a > b ? a : b)",
        min: "(a < b ? a : b)",
        avg: "a / (unsigned int)count",
        scale: "sat_u8((double)a * alpha)",
    },
];

/// The generated kernels' source (after the prelude).
pub(crate) fn source() -> String {
    let mut src = String::new();
    for size in GATHER_SIZES {
        // Row r of out is row ids[r] of the table; one thread per element.
        src += &format!(
            "extern \"C\" __global__ void {name}(const {t}* table, const unsigned int* ids, {t}* out, u64 n, u64 width) {{\n  GRID_STRIDE(n) {{ out[i] = table[(u64)ids[i / width] * width + i % width]; }}\n}}\n",
            name = gather_name(size),
            t = gather_type(size),
        );
    }
    for s in &SPECS {
        let load = |x: &str| s.load.replace('X', x);
        let store = |x: &str| s.store.replace('X', x);
        for (op, expr) in [
            (ReduceOp::Sum, s.add),
            (ReduceOp::Prod, s.mul),
            (ReduceOp::Max, s.max),
            (ReduceOp::Min, s.min),
        ] {
            src += &format!(
                "extern \"C\" __global__ void {name}({t}* acc, const {t}* src, u64 n) {{\n  GRID_STRIDE(n) {{ {c} a = {la}; {c} b = {lb}; acc[i] = {st}; }}\n}}\n",
                name = reduce_name(op, s.dtype),
                t = s.storage,
                c = s.compute,
                la = load("acc[i]"),
                lb = load("src[i]"),
                st = store(expr),
            );
        }
        src += &format!(
            "extern \"C\" __global__ void {name}({t}* buf, u64 n, u64 count) {{\n  GRID_STRIDE(n) {{ {c} a = {la}; buf[i] = {st}; }}\n}}\n",
            name = avg_name(s.dtype),
            t = s.storage,
            c = s.compute,
            la = load("buf[i]"),
            st = store(s.avg),
        );
        src += &format!(
            "extern \"C\" __global__ void {name}({t}* buf, u64 n, double alpha) {{\n  GRID_STRIDE(n) {{ {c} a = {la}; buf[i] = {st}; }}\n}}\n",
            name = scale_name(s.dtype),
            t = s.storage,
            c = s.compute,
            la = load("buf[i]"),
            st = store(s.scale),
        );
    }
    src
}
