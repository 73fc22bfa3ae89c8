//! WGSL for f16 KV caches: the conversions `convert_copy` runs and the
//! causal attention reading f16 keys and values. The halves are converted
//! by bit operations, not `pack2x16float` / `unpack2x16float`: WGSL leaves
//! the rounding and overflow of those to the implementation, and these
//! must round to nearest even, overflow to infinity and keep subnormals
//! on every adapter, as the host does (the device suite compares them bit
//! for bit). So no adapter feature is needed either.

/// `f16_to_f32(h)` and `f32_to_f16(f)` on the low 16 bits of a `u32`.
const F16_BITS: &str = r#"
fn f16_to_f32(h: u32) -> f32 {
    let neg = (h & 0x8000u) != 0u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if (e == 0u) {
        // Zero or subnormal: m * 2^-24, exact in f32.
        let v = f32(m) * 5.9604644775390625e-8;
        return select(v, -v, neg);
    }
    let sign = (h & 0x8000u) << 16u;
    if (e == 31u) { return bitcast<f32>(sign | 0x7f800000u | (m << 13u)); }
    return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}
fn f32_to_f16(f: f32) -> u32 {
    let x = bitcast<u32>(f);
    let sign = (x >> 16u) & 0x8000u;
    let a = x & 0x7fffffffu;
    if (a > 0x7f800000u) { return sign | 0x7e00u; }
    // From 65520 (halfway past 65504, ties to the even infinity) up.
    if (a >= 0x477ff000u) { return sign | 0x7c00u; }
    if (a >= 0x38800000u) {
        // Normal: rebias the exponent, round the 13 dropped bits to nearest
        // even (a carry moves into the exponent, as it should).
        let r = a - 0x38000000u;
        return sign | ((r + 0xfffu + ((r >> 13u) & 1u)) >> 13u);
    }
    // 2^-25 and below round to zero (2^-25 itself ties to the even zero).
    if (a <= 0x33000000u) { return sign; }
    // Subnormal: the value over 2^-24, rounded to nearest even.
    let m = (a & 0x7fffffu) | 0x800000u;
    let shift = 126u - (a >> 23u);
    let q = m >> shift;
    let rem = m & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    var r = q;
    if (rem > half || (rem == half && (q & 1u) == 1u)) { r = q + 1u; }
    return sign | r;
}
"#;

/// f32 elements `src[src_start..][..n]` into f16 `dst[dst_off..][..n]`:
/// one invocation per 32-bit word of `dst` the range touches, keeping the
/// half of a boundary word that lies outside it.
pub(crate) fn convert_f32_to_f16() -> String {
    format!(
        "{F16_BITS}{}",
        r#"
struct P { n: u32, src_start: u32, dst_off: u32, words: u32 }
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * 256u;
    for (var i = gid.x; i < p.words; i = i + stride) {
        let w = p.dst_off / 2u + i;
        let old = dst[w];
        var halves = vec2<u32>(old & 0xffffu, old >> 16u);
        for (var j = 0u; j < 2u; j = j + 1u) {
            let e = 2u * w + j;
            if (e >= p.dst_off && e < p.dst_off + p.n) {
                halves[j] = f32_to_f16(bitcast<f32>(src[p.src_start + e - p.dst_off]));
            }
        }
        dst[w] = halves.x | (halves.y << 16u);
    }
}
"#
    )
}

/// f16 elements `src[src_start..][..n]` into f32 `dst[dst_off..][..n]`.
pub(crate) fn convert_f16_to_f32() -> String {
    format!(
        "{F16_BITS}{}",
        r#"
struct P { n: u32, src_start: u32, dst_off: u32, invocations: u32 }
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * 256u;
    for (var i = gid.x; i < p.n; i = i + stride) {
        let e = p.src_start + i;
        let h = (src[e / 2u] >> ((e % 2u) * 16u)) & 0xffffu;
        dst[p.dst_off + i] = bitcast<u32>(f16_to_f32(h));
    }
}
"#
    )
}

/// The causal attention of `llama_kernels` with f16 key and value caches
/// (bound as words, two halves each, widened by [`F16_BITS`] as they are
/// read); everything else is the f32 kernel's, so both stay one source.
pub(crate) fn attention_causal_f16() -> String {
    let f32_kernel = crate::llama_kernels::ATTENTION_CAUSAL_F32;
    let replaced = f32_kernel
        .replace(
            "var<storage, read> k: array<f32>;",
            "var<storage, read> k: array<u32>;",
        )
        .replace(
            "var<storage, read> v: array<f32>;",
            "var<storage, read> v: array<u32>;",
        )
        .replace("k[kb + d]", "key(kb + d)")
        .replace(
            "v[cache + (first + i) * kw + d]",
            "value(cache + (first + i) * kw + d)",
        );
    format!(
        "{F16_BITS}{}{replaced}",
        r#"
fn half_at(w: u32, e: u32) -> f32 { return f16_to_f32((w >> ((e % 2u) * 16u)) & 0xffffu); }
fn key(e: u32) -> f32 { return half_at(k[e / 2u], e); }
fn value(e: u32) -> f32 { return half_at(v[e / 2u], e); }
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel parses and validates with naga, and the f16 attention
    /// really is the f32 one with its reads replaced (a renamed line in the
    /// f32 kernel would otherwise leave an f32 read behind silently).
    #[test]
    fn kernels_are_valid_wgsl_and_the_attention_reads_halves() {
        let attention = attention_causal_f16();
        for (name, src) in [
            ("convert_f32_to_f16", convert_f32_to_f16()),
            ("convert_f16_to_f32", convert_f16_to_f32()),
            ("attention_causal_f16", attention.clone()),
        ] {
            crate::kernels::validate_wgsl(name, &src, wgpu::naga::valid::Capabilities::empty());
        }
        for gone in ["k: array<f32>", "v: array<f32>", "k[kb + d]", "v[cache"] {
            assert!(
                !attention.contains(gone),
                "{gone} left in the f16 attention"
            );
        }
        assert_eq!(attention.matches("key(kb + d)").count(), 1);
        assert_eq!(attention.matches("value(cache").count(), 1);
    }
}
