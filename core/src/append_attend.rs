//! One attention step over a batch of sequences that each keep their own
//! KV cache ([`crate::Device::append_and_attend`]): the new tokens' keys and
//! values go into every sequence's cache, then every new token attends
//! causally to its sequence's cached positions.
//!
//! Why one operation and not a loop of `convert_copy` + `attention_causal`
//! per sequence: on a GPU each of those is a launch, so a decode step of 32
//! sequences was ~100 launches per layer. A backend that can address many
//! caches from one kernel (CUDA: a table of device pointers) does the whole
//! step in a fixed number of launches whatever the batch; the host threads
//! the whole batch's (row, head) pairs at once instead of one sequence at
//! a time. The trait's default is the per-sequence loop, which every
//! backend with `attention_causal` has.
//!
//! Layout: `q` and `out` are `[rows][heads * head_dim]`, `k_new` and `v_new`
//! `[rows][kv_heads * head_dim]`, f32; sequence `s` owns the consecutive
//! rows `seqs[s].rows` (in order, covering every row), and its caches hold
//! `max_len` positions of `kv_heads * head_dim` values (f32 or f16, the
//! same dtype for every cache). Row `seqs[s].rows.start + t` is position
//! `cached + t` of its sequence and attends to positions `0..=cached + t`.

use std::ops::Range;

use crate::transformer::CausalAttentionSpec;
use crate::{DType, DeviceBuffer, Error, Result};

/// Heads of an [`crate::Device::append_and_attend`] step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendAttendSpec {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AppendAttendSpec {
    pub fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// The one-sequence causal attention of `rows` new tokens over a cache
    /// of `max_len` positions, as `attention_causal` takes it.
    pub fn causal(&self, rows: usize, max_len: usize) -> CausalAttentionSpec {
        CausalAttentionSpec {
            batch: 1,
            q_len: rows,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            max_len,
        }
    }
}

/// One sequence of an [`crate::Device::append_and_attend`] step: its caches
/// (`B` is a backend's buffer, or `dyn DynBuffer`), how many positions they
/// hold before the step, and the rows of its new tokens.
#[derive(Debug)]
pub struct AppendAttendSeq<'a, B: ?Sized> {
    pub k: &'a mut B,
    pub v: &'a mut B,
    /// Positions already in the caches.
    pub cached: usize,
    /// Its new tokens' rows in `q`, `k_new`, `v_new` and `out`.
    pub rows: Range<usize>,
}

/// What [`check_append_attend`] found: the step's size and every
/// sequence's cache length in positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendAttendShape {
    /// New tokens of all sequences.
    pub rows: usize,
    /// Positions each sequence's caches hold (their length / kv width).
    pub max_lens: Vec<usize>,
    /// The caches' element type (every cache shares it).
    pub cache_dtype: Option<DType>,
}

/// One sequence's view for [`check_append_attend`]: cache lengths and
/// dtypes, positions cached, rows.
#[derive(Debug, Clone)]
pub struct SeqShape {
    pub k_len: usize,
    pub v_len: usize,
    pub k_dtype: DType,
    pub v_dtype: DType,
    pub cached: usize,
    pub rows: Range<usize>,
}

/// Check an append-and-attend step before anything is written: the heads
/// group, every f32 operand holds `rows` rows, the sequences' rows are
/// consecutive, in order, non-empty and cover every row, each cache pair
/// shares one dtype (the same for all) and has room for its new tokens.
pub fn check_append_attend(
    spec: &AppendAttendSpec,
    q_len: usize,
    k_new_len: usize,
    v_new_len: usize,
    out_len: usize,
    seqs: &[SeqShape],
) -> Result<AppendAttendShape> {
    if spec.kv_heads == 0 || spec.head_dim == 0 || !spec.heads.is_multiple_of(spec.kv_heads) {
        return Err(Error::invalid(
            "attention heads",
            format!(
                "{} query heads do not group over {} kv heads of dim {}",
                spec.heads, spec.kv_heads, spec.head_dim
            ),
        ));
    }
    let (qw, kw) = (spec.q_width(), spec.kv_width());
    let rows = seqs.last().map_or(0, |s| s.rows.end);
    let mut next = 0;
    for (s, seq) in seqs.iter().enumerate() {
        if seq.rows.start != next || seq.rows.is_empty() {
            return Err(Error::invalid(
                format!("append_and_attend sequence {s}"),
                format!(
                    "its rows {:?} do not follow the previous sequence's (next row {next}) or are empty",
                    seq.rows
                ),
            ));
        }
        next = seq.rows.end;
    }
    let want = |width: usize| {
        rows.checked_mul(width)
            .ok_or_else(|| Error::invalid("append_and_attend", "sizes overflow usize"))
    };
    for (name, have, want) in [
        ("append_and_attend q", q_len, want(qw)?),
        ("append_and_attend out", out_len, want(qw)?),
        ("append_and_attend k_new", k_new_len, want(kw)?),
        ("append_and_attend v_new", v_new_len, want(kw)?),
    ] {
        if have != want {
            return Err(Error::invalid(
                name,
                format!("holds {have} elements, {rows} rows need {want}"),
            ));
        }
    }
    let cache_dtype = seqs.first().map(|s| s.k_dtype);
    let mut max_lens = Vec::with_capacity(seqs.len());
    for (s, seq) in seqs.iter().enumerate() {
        let what = format!("append_and_attend sequence {s} caches");
        if Some(seq.k_dtype) != cache_dtype || seq.v_dtype != seq.k_dtype {
            return Err(Error::invalid(
                what,
                format!(
                    "hold {} keys and {} values where every cache of the step holds {}",
                    seq.k_dtype,
                    seq.v_dtype,
                    cache_dtype.map_or("-".into(), |d| d.to_string())
                ),
            ));
        }
        if seq.k_len != seq.v_len || !seq.k_len.is_multiple_of(kw) {
            return Err(Error::invalid(
                what,
                format!(
                    "hold {} keys and {} values, not the same whole positions of {kw}",
                    seq.k_len, seq.v_len
                ),
            ));
        }
        let max_len = seq.k_len / kw;
        if seq.cached + seq.rows.len() > max_len {
            return Err(Error::invalid(
                what,
                format!(
                    "hold {max_len} positions: {} cached and {} new do not fit",
                    seq.cached,
                    seq.rows.len()
                ),
            ));
        }
        max_lens.push(max_len);
    }
    Ok(AppendAttendShape {
        rows,
        max_lens,
        cache_dtype,
    })
}

/// The shapes [`check_append_attend`] checks, read off the sequences.
pub fn seq_shapes<B: DeviceBuffer + ?Sized>(seqs: &[AppendAttendSeq<'_, B>]) -> Vec<SeqShape> {
    seqs.iter()
        .map(|s| SeqShape {
            k_len: s.k.len(),
            v_len: s.v.len(),
            k_dtype: s.k.dtype(),
            v_dtype: s.v.dtype(),
            cached: s.cached,
            rows: s.rows.clone(),
        })
        .collect()
}

/// The sequence of every row (`seqs` checked by [`check_append_attend`]).
pub fn row_sequences(seqs: &[Range<usize>]) -> Vec<u32> {
    let mut of_row = Vec::with_capacity(seqs.last().map_or(0, |r| r.end));
    for (s, rows) in seqs.iter().enumerate() {
        of_row.extend(std::iter::repeat_n(s as u32, rows.len()));
    }
    of_row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(cached: usize, rows: Range<usize>, positions: usize) -> SeqShape {
        SeqShape {
            k_len: positions * 4,
            v_len: positions * 4,
            k_dtype: DType::F16,
            v_dtype: DType::F16,
            cached,
            rows,
        }
    }

    const SPEC: AppendAttendSpec = AppendAttendSpec {
        heads: 4,
        kv_heads: 2,
        head_dim: 2,
    };

    #[test]
    fn accepts_consecutive_sequences_with_room() {
        let seqs = [seq(3, 0..1, 8), seq(0, 1..4, 4)];
        let shape = check_append_attend(&SPEC, 4 * 8, 4 * 4, 4 * 4, 4 * 8, &seqs).unwrap();
        assert_eq!(shape.rows, 4);
        assert_eq!(shape.max_lens, [8, 4]);
        assert_eq!(shape.cache_dtype, Some(DType::F16));
        assert_eq!(row_sequences(&[0..1, 1..4]), [0, 1, 1, 1]);
    }

    #[test]
    fn rejects_gaps_overflowing_caches_and_mixed_dtypes() {
        let gap = [seq(0, 0..1, 8), seq(0, 2..3, 8)];
        assert!(check_append_attend(&SPEC, 24, 12, 12, 24, &gap).is_err());
        let full = [seq(7, 0..2, 8)];
        let err = check_append_attend(&SPEC, 16, 8, 8, 16, &full).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
        let mut mixed = [seq(0, 0..1, 8), seq(0, 1..2, 8)];
        mixed[1].v_dtype = DType::F32;
        assert!(check_append_attend(&SPEC, 16, 8, 8, 16, &mixed).is_err());
        let short_q = [seq(0, 0..2, 8)];
        assert!(check_append_attend(&SPEC, 8, 8, 8, 16, &short_q).is_err());
        let bad_heads = AppendAttendSpec { heads: 3, ..SPEC };
        assert!(check_append_attend(&bad_heads, 0, 0, 0, 0, &[]).is_err());
    }
}
