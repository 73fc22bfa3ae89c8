//! The attention of an `append_and_attend` step: every new row of every
//! sequence attends to its own sequence's cache, and the whole batch's
//! (row, head) pairs are split over the device's thread pool in one go.
//! A decode step of 32 sequences of SmolLM2 is 288 such pairs; the
//! per-sequence loop handed the pool 9 at a time, 32 times per layer.

use hetero_core::append_attend::{AppendAttendSpec, row_sequences};

use crate::llama::{KvElem, attend_one};
use crate::workers::Workers;

/// One sequence's caches (already holding the step's keys and values),
/// positions cached before the step and its rows.
pub(crate) struct StepCache<'a, T> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub cached: usize,
    pub rows: std::ops::Range<usize>,
}

/// Causal attention of every row of `q` (`[rows][heads * head_dim]`) into
/// `out`; the sequences' rows are consecutive and cover `q` (checked by
/// `check_append_attend`), their caches hold `cached + rows` positions.
pub(crate) fn attention_step<T: KvElem>(
    spec: &AppendAttendSpec,
    q: &[f32],
    seqs: &[StepCache<'_, T>],
    out: &mut [f32],
    workers: &Workers,
) {
    let (qw, kw, dh) = (spec.q_width(), spec.kv_width(), spec.head_dim);
    let heads = spec.heads;
    let group = heads / spec.kv_heads;
    let ranges: Vec<_> = seqs.iter().map(|s| s.rows.clone()).collect();
    let of_row = row_sequences(&ranges);
    let longest = seqs
        .iter()
        .map(|s| s.cached + s.rows.len())
        .max()
        .unwrap_or(0);
    #[cfg(target_arch = "x86_64")]
    let avx2 = crate::quant::x86::available() && dh.is_multiple_of(8);
    let scale = 1.0 / (dh as f32).sqrt();
    // The portable loop reads sequence 0 of a one-sequence cache.
    let causal = spec.causal(1, longest);
    let work = |first: usize, out: &mut [f32]| {
        let mut scores = vec![0.0f32; longest];
        for (i, o) in out.chunks_mut(dh).enumerate() {
            let (r, h) = ((first + i) / heads, (first + i) % heads);
            let seq = &seqs[of_row[r] as usize];
            let pos = seq.cached + (r - seq.rows.start);
            let qh = &q[r * qw + h * dh..][..dh];
            let kvh = h / group;
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                let rows = crate::attention_x86::HeadRows {
                    k: seq.k,
                    v: seq.v,
                    base: kvh * dh,
                    stride: kw,
                };
                // SAFETY: the CPU has AVX2, FMA and F16C and dh is a
                // multiple of 8 (checked above); check_append_attend
                // checked that the cache holds cached + rows positions of
                // kw values, so rows 0..=pos lie inside k and v.
                unsafe { crate::attention_x86::attend(qh, &rows, pos + 1, scale, &mut scores, o) };
                continue;
            }
            attend_one(&causal, qh, seq.k, seq.v, 0, kvh, pos, &mut scores, o);
        }
    };
    let units = of_row.len() * heads;
    // Multiply-adds of the step: every row reads its positions so far.
    let attended: usize = seqs
        .iter()
        .map(|s| (s.cached + 1..=s.cached + s.rows.len()).sum::<usize>())
        .sum();
    let threads = workers.threads().min(units).max(1);
    if threads == 1 || attended * qw < 1 << 14 {
        work(0, out);
        return;
    }
    let per = units.div_ceil(threads * 2);
    workers.run_chunks(out, per * dh, |c, part| work(c * per, part));
}
