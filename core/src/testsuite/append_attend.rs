//! `append_and_attend` (one attention step over sequences with their own
//! caches) against the per-sequence reference: for every sequence, the
//! caches afterwards hold its old positions unchanged and its new keys and
//! values (rounded to the cache's dtype) at `cached..cached + rows`, and its
//! rows of `out` are the f64 causal attention over those caches. Mixed steps
//! on purpose: decode rows beside prefill blocks, empty and long caches,
//! grouped heads as in SmolLM2 (9 over 3, dim 64).

use super::llama::{reference_attention, upload, upload_as};
use super::{DeviceTest, compare, err, random_f32};
use crate::append_attend::{AppendAttendSeq, AppendAttendSpec};
use crate::device::Capabilities;
use crate::dtype::DType;
use crate::dyn_device::{DynDevice, DynDeviceExt};
use crate::error::Error;
use crate::transformer::CausalAttentionSpec;

const TOL: f64 = 1e-4;

pub(super) fn tests(caps: &Capabilities) -> Vec<DeviceTest> {
    let have = caps.llama_dtypes.contains(&DType::F32);
    let f16 = caps.kv_cache_takes(DType::F16);
    vec![
        DeviceTest::new("append_and_attend_f32_cache", |d| {
            append_and_attend_matches_reference(d, DType::F32)
        })
        .skip_unless(have, || "device has no Llama-family kernels for f32".into()),
        DeviceTest::new("append_and_attend_f16_cache", |d| {
            append_and_attend_matches_reference(d, DType::F16)
        })
        .skip_unless(have && f16, || {
            "device has no f32 Llama kernels or reads no f16 KV caches".into()
        }),
    ]
}

/// `(heads, kv_heads, head_dim)` and per sequence `(cached, new rows,
/// cache positions)`.
type Case = ((usize, usize, usize), Vec<(usize, usize, usize)>);

fn cases() -> Vec<Case> {
    vec![
        // One sequence, the whole step (no staging on the default path).
        ((4, 2, 8), vec![(5, 1, 9)]),
        // A decode step of five sequences, one row each.
        (
            (9, 3, 64),
            vec![(0, 1, 1), (3, 1, 8), (16, 1, 17), (1, 1, 2), (40, 1, 64)],
        ),
        // Prefill blocks beside decode rows, a chunk after a cached prefix.
        (
            (6, 2, 16),
            vec![(0, 3, 3), (7, 1, 12), (2, 5, 7), (30, 1, 31)],
        ),
        // Many sequences, one kv head for all query heads.
        ((8, 1, 32), (0..33).map(|i| (i % 7, 1 + i % 2, 9)).collect()),
    ]
}

fn rounded(values: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F16 => values
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect(),
        _ => values.to_vec(),
    }
}

/// A cache's values as f32 (an f16 cache widened on the device).
fn cache_values(d: &dyn DynDevice, b: &dyn crate::DynBuffer) -> Result<Vec<f32>, String> {
    if b.dtype() == DType::F32 {
        return d.to_vec(b).map_err(err("download cache"));
    }
    let mut wide = d.alloc(DType::F32, b.len()).map_err(err("alloc"))?;
    d.convert_copy(b, 0..b.len(), wide.as_mut(), 0)
        .map_err(err("convert_copy cache"))?;
    d.to_vec(wide.as_ref()).map_err(err("download cache"))
}

fn append_and_attend_matches_reference(d: &dyn DynDevice, dtype: DType) -> Result<(), String> {
    for (case, ((heads, kv_heads, head_dim), seqs)) in cases().into_iter().enumerate() {
        let spec = AppendAttendSpec {
            heads,
            kv_heads,
            head_dim,
        };
        let (qw, kw) = (spec.q_width(), spec.kv_width());
        let rows: usize = seqs.iter().map(|s| s.1).sum();
        let seed = 1300 + 10 * case as u64 + u64::from(dtype == DType::F16);
        let q = random_f32(rows * qw, seed);
        let k_new = random_f32(rows * kw, seed + 1);
        let v_new = random_f32(rows * kw, seed + 2);
        // Every cache starts full of values of its own: what the step must
        // keep (old positions) or overwrite (its new ones).
        let mut old_k = Vec::new();
        let mut old_v = Vec::new();
        let mut caches = Vec::new();
        for (s, &(_, _, positions)) in seqs.iter().enumerate() {
            let k = rounded(&random_f32(positions * kw, seed + 100 + s as u64), dtype);
            let v = rounded(&random_f32(positions * kw, seed + 500 + s as u64), dtype);
            caches.push((upload_as(d, &k, dtype)?, upload_as(d, &v, dtype)?));
            old_k.push(k);
            old_v.push(v);
        }
        let (qb, kb, vb) = (upload(d, &q)?, upload(d, &k_new)?, upload(d, &v_new)?);
        let mut out = d.alloc(DType::F32, rows * qw).map_err(err("alloc"))?;
        let mut starts = Vec::new();
        let mut step: Vec<AppendAttendSeq<'_, dyn crate::DynBuffer>> = Vec::new();
        let mut row = 0;
        for ((k, v), &(cached, n, _)) in caches.iter_mut().zip(&seqs) {
            starts.push(row);
            step.push(AppendAttendSeq {
                k: k.as_mut(),
                v: v.as_mut(),
                cached,
                rows: row..row + n,
            });
            row += n;
        }
        d.append_and_attend(
            &spec,
            qb.as_ref(),
            kb.as_ref(),
            vb.as_ref(),
            &mut step,
            out.as_mut(),
        )
        .map_err(err("append_and_attend"))?;
        drop(step);
        let got: Vec<f32> = d.to_vec(out.as_ref()).map_err(err("download"))?;
        for (s, &(cached, n, positions)) in seqs.iter().enumerate() {
            let r0 = starts[s];
            let mut want_k = old_k[s].clone();
            let mut want_v = old_v[s].clone();
            want_k[cached * kw..(cached + n) * kw]
                .copy_from_slice(&rounded(&k_new[r0 * kw..(r0 + n) * kw], dtype));
            want_v[cached * kw..(cached + n) * kw]
                .copy_from_slice(&rounded(&v_new[r0 * kw..(r0 + n) * kw], dtype));
            let what = format!("case {case} sequence {s} ({dtype} cache)");
            let (k, v) = &caches[s];
            compare(
                &format!("{what} keys"),
                &cache_values(d, k.as_ref())?,
                &want_k,
                0.0,
            )?;
            compare(
                &format!("{what} values"),
                &cache_values(d, v.as_ref())?,
                &want_v,
                0.0,
            )?;
            let causal = CausalAttentionSpec {
                batch: 1,
                q_len: n,
                heads,
                kv_heads,
                head_dim,
                max_len: positions,
            };
            let want = reference_attention(
                &causal,
                &q[r0 * qw..(r0 + n) * qw],
                &want_k,
                &want_v,
                &[(cached + n) as u32],
            );
            compare(
                &format!("{what} out"),
                &got[r0 * qw..(r0 + n) * qw],
                &want,
                TOL,
            )?;
        }
    }
    // A sequence with no room for its new rows is refused before anything
    // is written.
    let spec = AppendAttendSpec {
        heads: 2,
        kv_heads: 1,
        head_dim: 4,
    };
    let before = random_f32(8, 1399);
    let (mut k, mut v) = (upload_as(d, &before, dtype)?, upload_as(d, &before, dtype)?);
    let two = upload(d, &[0.5; 8])?;
    let mut out = d.alloc(DType::F32, 16).map_err(err("alloc"))?;
    let q = upload(d, &[0.5; 16])?;
    let mut step = [AppendAttendSeq {
        k: k.as_mut(),
        v: v.as_mut(),
        cached: 1,
        rows: 0..2,
    }];
    match d.append_and_attend(
        &spec,
        q.as_ref(),
        two.as_ref(),
        two.as_ref(),
        &mut step,
        out.as_mut(),
    ) {
        Err(Error::InvalidInput { .. }) => {}
        other => return Err(format!("two rows after 1 of 2 positions gave {other:?}")),
    }
    compare(
        "a refused step's cache",
        &cache_values(d, k.as_ref())?,
        &rounded(&before, dtype),
        0.0,
    )
}
