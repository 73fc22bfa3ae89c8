//! The Llama-family kernels on host slices (shapes already validated by
//! the `Device` impl): RMS norm, rotary embedding, causal attention with
//! grouped kv heads, SiLU-gated product. f32 in and out; sums of squares and
//! softmax normalisers are accumulated in f32 in one pass, as the GPU
//! kernels do, and the suite compares all of them with f64 references.

use hetero_core::{CausalAttentionSpec, RopeLayout, RopeSpec};

/// `out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w` for rows of `w.len()`.
pub(crate) fn rms_norm(x: &[f32], w: &[f32], out: &mut [f32], eps: f32) {
    let cols = w.len();
    for (row, o) in x.chunks(cols).zip(out.chunks_mut(cols)) {
        let ms = row.iter().map(|&v| v * v).sum::<f32>() / cols as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &g) in o.iter_mut().zip(row).zip(w) {
            *o = v * inv * g;
        }
    }
}

/// Rotary embedding in place (see [`RopeSpec`]).
pub(crate) fn rope(spec: &RopeSpec, x: &mut [f32], positions: &[u32], inv_freq: &[f32]) {
    let (hd, half) = (spec.head_dim, spec.head_dim / 2);
    // One table of (cos, sin) per token, shared by its heads.
    let mut table = vec![(0.0f32, 0.0f32); half];
    for (t, &pos) in positions.iter().enumerate() {
        for (entry, &f) in table.iter_mut().zip(inv_freq) {
            let (s, c) = (pos as f32 * f).sin_cos();
            *entry = (c, s);
        }
        for head in x[t * spec.heads * hd..][..spec.heads * hd].chunks_mut(hd) {
            for (i, &(c, s)) in table.iter().enumerate() {
                let (ia, ib) = match spec.layout {
                    RopeLayout::Adjacent => (2 * i, 2 * i + 1),
                    RopeLayout::Halves => (i, i + half),
                };
                let (a, b) = (head[ia], head[ib]);
                head[ia] = a * c - b * s;
                head[ib] = a * s + b * c;
            }
        }
    }
}

/// An element of a key/value cache the attention reads: f32, or f16 for a
/// cache of half the bytes (widened to f32 as it is read; every product
/// and sum stays f32).
pub(crate) trait KvElem: Copy + Send + Sync + 'static {
    /// f16 (two bytes), else f32.
    const HALF: bool;
    fn get(self) -> f32;
    /// `dot(q, k)` (for f32 the shared [`crate::gemv::dot`]).
    fn dot(q: &[f32], k: &[Self]) -> f32;
}

impl KvElem for f32 {
    const HALF: bool = false;
    fn get(self) -> f32 {
        self
    }
    fn dot(q: &[f32], k: &[f32]) -> f32 {
        crate::gemv::dot(q, k)
    }
}

impl KvElem for hetero_core::half::f16 {
    const HALF: bool = true;
    fn get(self) -> f32 {
        self.to_f32()
    }
    fn dot(q: &[f32], k: &[Self]) -> f32 {
        q.iter().zip(k).map(|(&a, &b)| a * b.to_f32()).sum()
    }
}

/// Causal attention of one query row `qrow` (head `kvh`'s keys and values
/// of sequence `b`, positions `0..=pos`) into `o`; `scores` is scratch.
/// The portable loop; AVX2 CPUs run `attention_x86::attend` instead
/// where the head size is a multiple of 8.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_one<T: KvElem>(
    spec: &CausalAttentionSpec,
    qrow: &[f32],
    k: &[T],
    v: &[T],
    b: usize,
    kvh: usize,
    pos: usize,
    scores: &mut [f32],
    o: &mut [f32],
) {
    let (kw, dh) = (spec.kv_width(), spec.head_dim);
    let scale = 1.0 / (dh as f32).sqrt();
    let mut max = f32::NEG_INFINITY;
    for (s, score) in scores[..=pos].iter_mut().enumerate() {
        let krow = &k[(b * spec.max_len + s) * kw + kvh * dh..][..dh];
        *score = T::dot(qrow, krow) * scale;
        max = max.max(*score);
    }
    let z = exp_shifted(&mut scores[..=pos], max);
    o.iter_mut().for_each(|x| *x = 0.0);
    for (s, &p) in scores[..=pos].iter().enumerate() {
        let vrow = &v[(b * spec.max_len + s) * kw + kvh * dh..][..dh];
        let w = p / z;
        for (x, &y) in o.iter_mut().zip(vrow) {
            *x += w * y.get();
        }
    }
}

/// `s = e^(s - max)` for every score; returns their sum.
pub(crate) fn exp_shifted(scores: &mut [f32], max: f32) -> f32 {
    let mut z = 0.0f32;
    for score in scores {
        *score = (*score - max).exp();
        z += *score;
    }
    z
}

/// Causal attention over grouped kv heads (see [`CausalAttentionSpec`]);
/// the (query row, head) pairs, one `head_dim` slice of `out` each, are
/// split over the device's thread pool: a decode step of one sequence has
/// a single query row, so splitting rows alone would leave the other
/// threads waiting.
pub(crate) fn attention_causal<T: KvElem>(
    spec: &CausalAttentionSpec,
    q: &[f32],
    k: &[T],
    v: &[T],
    lens: &[u32],
    out: &mut [f32],
    workers: &crate::workers::Workers,
) {
    let (qw, dh) = (spec.q_width(), spec.head_dim);
    let heads = spec.heads;
    let units = spec.batch * spec.q_len * heads;
    // Units first..first + out.len() / dh; unit u is row u / heads, head
    // u % heads, and its output is out[u * dh..][..dh].
    #[cfg(target_arch = "x86_64")]
    let avx2 = crate::quant::x86::available() && dh.is_multiple_of(8);
    let scale = 1.0 / (dh as f32).sqrt();
    let work = |first: usize, out: &mut [f32]| {
        let mut scores = vec![0.0f32; spec.max_len];
        for (i, o) in out.chunks_mut(dh).enumerate() {
            let (r, h) = ((first + i) / heads, (first + i) % heads);
            let (b, t) = (r / spec.q_len, r % spec.q_len);
            let pos = lens[b] as usize - spec.q_len + t;
            let qh = &q[r * qw + h * dh..][..dh];
            let kvh = h / spec.group();
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                let rows = crate::attention_x86::HeadRows {
                    k,
                    v,
                    base: b * spec.max_len * spec.kv_width() + kvh * dh,
                    stride: spec.kv_width(),
                };
                // SAFETY: the CPU has AVX2, FMA and F16C and dh is a multiple
                // of 8 (checked above); the spec was validated against
                // the cache lengths, so rows 0..=pos of sequence b lie
                // inside k and v.
                unsafe { crate::attention_x86::attend(qh, &rows, pos + 1, scale, &mut scores, o) };
                continue;
            }
            attend_one(spec, qh, k, v, b, kvh, pos, &mut scores, o);
        }
    };
    // Work grows with query rows x attended positions; the pool pays off
    // from a few thousand multiply-adds per thread.
    let attended: usize = lens.iter().map(|&l| l as usize).sum::<usize>() * spec.q_len;
    let threads = workers.threads().min(units).max(1);
    if threads == 1 || attended * qw < 1 << 14 {
        work(0, out);
        return;
    }
    let per = units.div_ceil(threads * 2);
    workers.run_chunks(out, per * dh, |c, part| work(c * per, part));
}

/// `gate[i] = silu(gate[i]) * up[i]`.
/// Split over the device's thread pool from [`SILU_PARALLEL_MIN`] values
/// (a batch of 8 sequences of SmolLM2 is 12,288: one `exp` each ran on the
/// calling thread alone while the pool waited).
pub(crate) fn silu_mul(gate: &mut [f32], up: &[f32], workers: &crate::workers::Workers) {
    let n = gate.len();
    let threads = workers.threads();
    if threads == 1 || n < SILU_PARALLEL_MIN {
        silu_mul_part(gate, up);
        return;
    }
    let per = n.div_ceil(threads * 2);
    workers.run_chunks(gate, per, |c, g| {
        silu_mul_part(g, &up[c * per..][..g.len()]);
    });
}

/// Values of a [`silu_mul`] from which the pool shares the work.
const SILU_PARALLEL_MIN: usize = 4096;

fn silu_mul_part(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::vexp::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { silu_mul_avx2(gate, up) };
        return;
    }
    silu_mul_scalar(gate, up);
}

/// `gate[i] = silu(gate[i]) * up[i]`, one value at a time.
fn silu_mul_scalar(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// [`silu_mul_part`] eight values at a time with [`crate::vexp::exp8`].
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(gate: &mut [f32], up: &[f32]) {
    use std::arch::x86_64::*;
    let n = gate.len().min(up.len());
    let one = _mm256_set1_ps(1.0);
    for i in (0..n / 8 * 8).step_by(8) {
        // SAFETY: i + 8 <= n, inside both slices.
        unsafe {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let u = _mm256_loadu_ps(up.as_ptr().add(i));
            let e = crate::vexp::exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let y = _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u);
            _mm256_storeu_ps(gate.as_mut_ptr().add(i), y);
        }
    }
    silu_mul_scalar(&mut gate[n / 8 * 8..n], &up[n / 8 * 8..n]);
}

#[cfg(test)]
mod tests {
    use hetero_core::half::f16;
    use hetero_core::rng::SplitMix64;

    use super::*;

    /// The portable loop (what CPUs without AVX2 run) reads f16 caches as
    /// their f32 values: against the same loop on the widened cache, over
    /// grouped heads and every position of random sequences.
    #[test]
    fn portable_loop_reads_f16_caches_as_their_values() {
        let mut rng = SplitMix64::new(31);
        for case in 0..60 {
            let (kv_heads, group) = (1 + rng.below(3), 1 + rng.below(3));
            let head_dim = 1 + rng.below(40);
            let max_len = 1 + rng.below(30);
            let spec = CausalAttentionSpec {
                batch: 1,
                q_len: 1,
                heads: kv_heads * group,
                kv_heads,
                head_dim,
                max_len,
            };
            let n = max_len * spec.kv_width();
            let halves: Vec<f16> = (0..n)
                .map(|_| f16::from_f32(rng.signed_unit_f32() * 3.0))
                .collect();
            let widened: Vec<f32> = halves.iter().map(|h| h.to_f32()).collect();
            let q: Vec<f32> = (0..spec.q_width()).map(|_| rng.signed_unit_f32()).collect();
            let pos = rng.below(max_len);
            let mut scores = vec![0.0f32; max_len];
            for h in 0..spec.heads {
                let qh = &q[h * head_dim..][..head_dim];
                let (mut a, mut b) = (vec![0.0f32; head_dim], vec![0.0f32; head_dim]);
                let kvh = h / group;
                attend_one(
                    &spec,
                    qh,
                    &halves,
                    &halves,
                    0,
                    kvh,
                    pos,
                    &mut scores,
                    &mut a,
                );
                attend_one(
                    &spec,
                    qh,
                    &widened,
                    &widened,
                    0,
                    kvh,
                    pos,
                    &mut scores,
                    &mut b,
                );
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() <= 1e-5, "case {case} head {h}: {x} vs {y}");
                }
            }
        }
    }
}
