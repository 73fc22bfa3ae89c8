//! The Llama-family kernels against naive f64 references: `rms_norm`,
//! `rope` (both layouts), `attention_causal` (decode and prefill blocks,
//! grouped kv heads), `silu_mul`, `embedding`. Sizes are awkward on purpose
//! (odd widths, one head, a group of 3 as in SmolLM2, a width of 576).

use super::{DeviceTest, compare, err, random_f32};
use crate::device::Capabilities;
use crate::dtype::{DType, HostSlice};
use crate::dyn_device::{DynDevice, DynDeviceExt};
use crate::error::Error;
use crate::transformer::{CausalAttentionSpec, RopeLayout, RopeSpec};

/// Relative tolerance (against `max(|want|, 1)`) of f32 kernels that sum in
/// an order of their own.
const TOL: f64 = 1e-4;

/// The suite's Llama-family tests for a device with these capabilities.
pub(super) fn tests(caps: &Capabilities) -> Vec<DeviceTest> {
    let have = caps.llama_dtypes.contains(&DType::F32);
    let missing = || "device has no Llama-family kernels for f32".to_string();
    let mut tests = vec![
        DeviceTest::new("rms_norm_f32", rms_norm_matches_reference).skip_unless(have, missing),
        DeviceTest::new("rope_adjacent_f32", |d| {
            rope_matches_reference(d, RopeLayout::Adjacent)
        })
        .skip_unless(have, missing),
        DeviceTest::new("rope_halves_f32", |d| {
            rope_matches_reference(d, RopeLayout::Halves)
        })
        .skip_unless(have, missing),
        DeviceTest::new("attention_causal_decode_f32", |d| {
            attention_causal_matches_reference(d, false)
        })
        .skip_unless(have, missing),
        DeviceTest::new("attention_causal_prefill_f32", |d| {
            attention_causal_matches_reference(d, true)
        })
        .skip_unless(have, missing),
        DeviceTest::new("attention_causal_decode_f16_cache", |d| {
            attention_causal_matches_reference_as(d, false, DType::F16)
        })
        .skip_unless(caps.kv_cache_takes(DType::F16), no_f16_cache),
        DeviceTest::new("attention_causal_prefill_f16_cache", |d| {
            attention_causal_matches_reference_as(d, true, DType::F16)
        })
        .skip_unless(caps.kv_cache_takes(DType::F16), no_f16_cache),
        DeviceTest::new(
            "convert_copy_f32_f16_rounds_to_nearest",
            convert_copy_rounds_to_nearest,
        )
        .skip_unless(caps.kv_cache_takes(DType::F16), no_f16_cache),
        DeviceTest::new("silu_mul_f32", silu_mul_matches_reference).skip_unless(have, missing),
        // The default gather is built on `copy`, so every device runs it.
        DeviceTest::new("embedding_f32", embedding_matches_reference),
    ];
    if !have {
        tests.push(DeviceTest::new(
            "missing_llama_kernels_are_unsupported_errors",
            missing_are_unsupported,
        ));
    }
    if !caps.kv_cache_takes(DType::F16) {
        tests.push(DeviceTest::new(
            "missing_f16_cache_is_an_unsupported_error",
            missing_f16_cache_is_unsupported,
        ));
    }
    tests
}

fn no_f16_cache() -> String {
    "device reads no f16 KV caches (kv_cache_dtypes)".to_string()
}

/// `values` converted on the device into a new buffer of `dtype`.
pub(super) fn upload_as(
    d: &dyn DynDevice,
    values: &[f32],
    dtype: DType,
) -> Result<crate::BoxedBuffer, String> {
    let src = upload(d, values)?;
    let mut dst = d.alloc(dtype, values.len()).map_err(err("alloc"))?;
    d.convert_copy(src.as_ref(), 0..values.len(), dst.as_mut(), 0)
        .map_err(err("convert_copy"))?;
    Ok(dst)
}

/// f32 -> f16 -> f32 on the device equals IEEE round to nearest even (the
/// `half` crate's conversion), bit for bit, including at an offset, for
/// values at f16's limits (overflow to infinity, subnormals, NaN).
fn convert_copy_rounds_to_nearest(d: &dyn DynDevice) -> Result<(), String> {
    let mut x = random_f32(1000, 990);
    x.extend([
        0.0,
        -0.0,
        65504.0,
        65519.0,
        65520.0,
        -1e6,
        6e-8,
        3e-8,
        1e-9,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        f32::INFINITY,
        f32::NAN,
    ]);
    let src = upload(d, &x)?;
    let mut half = d.alloc(DType::F16, x.len() + 5).map_err(err("alloc"))?;
    d.convert_copy(src.as_ref(), 3..x.len(), half.as_mut(), 5)
        .map_err(err("convert_copy to f16"))?;
    let mut back = d.alloc(DType::F32, x.len() + 5).map_err(err("alloc"))?;
    d.convert_copy(half.as_ref(), 0..x.len() + 5, back.as_mut(), 0)
        .map_err(err("convert_copy to f32"))?;
    let got: Vec<f32> = d.to_vec(back.as_ref()).map_err(err("download"))?;
    for (i, &v) in x.iter().enumerate().skip(3) {
        let want = half::f16::from_f32(v).to_f32();
        let g = got[i + 2];
        if g.to_bits() != want.to_bits() && !(g.is_nan() && want.is_nan()) {
            return Err(format!("element {i}: {v} became {g}, want {want}"));
        }
    }
    if got[..5].iter().any(|&v| v != 0.0) {
        return Err(format!(
            "convert_copy wrote before its offset: {:?}",
            &got[..5]
        ));
    }
    match d.convert_copy(src.as_ref(), 0..x.len(), half.as_mut(), 6) {
        Err(Error::InvalidInput { .. }) => Ok(()),
        other => Err(format!("convert_copy past the destination gave {other:?}")),
    }
}

fn missing_f16_cache_is_unsupported(d: &dyn DynDevice) -> Result<(), String> {
    let src = upload(d, &[1.0; 8])?;
    let mut dst = match d.alloc(DType::F16, 8) {
        Ok(b) => b,
        // A device without f16 buffers at all says so when allocating.
        Err(Error::Unsupported { .. }) => return Ok(()),
        Err(e) => return Err(format!("alloc of f16 gave {e}")),
    };
    match d.convert_copy(src.as_ref(), 0..8, dst.as_mut(), 0) {
        Err(Error::Unsupported { .. }) => Ok(()),
        other => Err(format!(
            "convert_copy to f16 on a device without f16 caches gave {other:?}"
        )),
    }
}

pub(super) fn upload(d: &dyn DynDevice, v: &[f32]) -> Result<crate::BoxedBuffer, String> {
    d.alloc_from(HostSlice::new(v)).map_err(err("alloc"))
}

fn rms_norm_matches_reference(d: &dyn DynDevice) -> Result<(), String> {
    for (rows, cols) in [(1, 1), (3, 64), (5, 127), (2, 576), (1, 4099)] {
        let x = random_f32(rows * cols, 900 + cols as u64);
        let w = random_f32(cols, 901);
        let eps = 1e-5f32;
        let mut want = vec![0.0f32; rows * cols];
        for r in 0..rows {
            let row = &x[r * cols..(r + 1) * cols];
            let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / cols as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            for c in 0..cols {
                want[r * cols + c] = (row[c] as f64 * inv * w[c] as f64) as f32;
            }
        }
        let (xb, wb) = (upload(d, &x)?, upload(d, &w)?);
        let mut out = d.alloc(DType::F32, rows * cols).map_err(err("alloc"))?;
        d.rms_norm(xb.as_ref(), wb.as_ref(), out.as_mut(), eps)
            .map_err(err("rms_norm"))?;
        let got: Vec<f32> = d.to_vec(out.as_ref()).map_err(err("download"))?;
        compare(&format!("rms_norm {rows}x{cols}"), &got, &want, TOL)?;
    }
    let x = upload(d, &[1.0; 8])?;
    let w = upload(d, &[1.0; 3])?;
    let mut out = d.alloc(DType::F32, 8).map_err(err("alloc"))?;
    match d.rms_norm(x.as_ref(), w.as_ref(), out.as_mut(), 1e-5) {
        Err(Error::InvalidInput { .. }) => Ok(()),
        other => Err(format!(
            "rms_norm over rows of 3 in 8 values gave {other:?}"
        )),
    }
}

/// Inverse frequencies of theta 10000, as Llama computes them.
fn inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| theta.powf(-2.0 * i as f64 / head_dim as f64) as f32)
        .collect()
}

fn reference_rope(spec: &RopeSpec, x: &[f32], positions: &[u32], freq: &[f32]) -> Vec<f32> {
    let (hd, half) = (spec.head_dim, spec.head_dim / 2);
    let mut out = x.to_vec();
    for (t, &pos) in positions.iter().enumerate().take(spec.tokens) {
        for h in 0..spec.heads {
            let base = (t * spec.heads + h) * hd;
            for (i, &f) in freq.iter().enumerate() {
                // The angle is an f32 product, as the kernels compute it.
                let angle = (pos as f32 * f) as f64;
                let (sin, cos) = angle.sin_cos();
                let (ia, ib) = match spec.layout {
                    RopeLayout::Adjacent => (base + 2 * i, base + 2 * i + 1),
                    RopeLayout::Halves => (base + i, base + i + half),
                };
                let (a, b) = (x[ia] as f64, x[ib] as f64);
                out[ia] = (a * cos - b * sin) as f32;
                out[ib] = (a * sin + b * cos) as f32;
            }
        }
    }
    out
}

fn rope_matches_reference(d: &dyn DynDevice, layout: RopeLayout) -> Result<(), String> {
    let cases = [
        (1, 1, 2, 10_000.0),
        (7, 3, 16, 500_000.0),
        (5, 9, 64, 100_000.0),
        (3, 2, 6, 10_000.0),
    ];
    for (case, &(tokens, heads, head_dim, theta)) in cases.iter().enumerate() {
        let spec = RopeSpec {
            tokens,
            heads,
            head_dim,
            layout,
        };
        let x = random_f32(tokens * heads * head_dim, 910 + case as u64);
        let freq = inv_freq(head_dim, theta);
        // Positions out of order and repeated (a batch of decode steps),
        // up to a few hundred: f32 sin/cos of large angles differ by more
        // than the tolerance between implementations, and do in HF too.
        let positions: Vec<u32> = (0..tokens as u32)
            .map(|t| (t * 37 + case as u32 * 101) % 400)
            .collect();
        let want = reference_rope(&spec, &x, &positions, &freq);
        let mut xb = upload(d, &x)?;
        let fb = upload(d, &freq)?;
        d.rope(&spec, xb.as_mut(), &positions, fb.as_ref())
            .map_err(err("rope"))?;
        let got: Vec<f32> = d.to_vec(xb.as_ref()).map_err(err("download"))?;
        compare(&format!("rope {layout:?} case {case}"), &got, &want, 1e-3)?;
        let mut bad = positions.clone();
        bad.pop();
        match d.rope(&spec, xb.as_mut(), &bad, fb.as_ref()) {
            Err(Error::InvalidInput { .. }) => {}
            other => return Err(format!("rope with a position missing gave {other:?}")),
        }
    }
    Ok(())
}

/// Naive causal attention in f64.
pub(super) fn reference_attention(
    spec: &CausalAttentionSpec,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    lens: &[u32],
) -> Vec<f32> {
    let (qw, kw, dh) = (spec.q_width(), spec.kv_width(), spec.head_dim);
    let mut out = vec![0.0f32; spec.batch * spec.q_len * qw];
    for b in 0..spec.batch {
        for t in 0..spec.q_len {
            let pos = lens[b] as usize - spec.q_len + t;
            for h in 0..spec.heads {
                let kvh = h / spec.group();
                let qrow = &q[(b * spec.q_len + t) * qw + h * dh..][..dh];
                let scores: Vec<f64> = (0..=pos)
                    .map(|s| {
                        let krow = &k[(b * spec.max_len + s) * kw + kvh * dh..][..dh];
                        qrow.iter()
                            .zip(krow)
                            .map(|(&a, &c)| a as f64 * c as f64)
                            .sum::<f64>()
                            / (dh as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..dh {
                    let acc: f64 = (0..=pos)
                        .map(|s| e[s] / z * v[(b * spec.max_len + s) * kw + kvh * dh + i] as f64)
                        .sum();
                    out[(b * spec.q_len + t) * qw + h * dh + i] = acc as f32;
                }
            }
        }
    }
    out
}

fn attention_causal_matches_reference(d: &dyn DynDevice, prefill: bool) -> Result<(), String> {
    attention_causal_matches_reference_as(d, prefill, DType::F32)
}

/// The causal attention cases with key and value caches of `kv` (filled by
/// `convert_copy`; the reference reads the same rounded values).
fn attention_causal_matches_reference_as(
    d: &dyn DynDevice,
    prefill: bool,
    kv: DType,
) -> Result<(), String> {
    let spec = |batch, q_len, heads, kv_heads, head_dim, max_len| CausalAttentionSpec {
        batch,
        q_len,
        heads,
        kv_heads,
        head_dim,
        max_len,
    };
    let cases: Vec<(CausalAttentionSpec, Vec<u32>)> = if prefill {
        vec![
            (spec(1, 1, 1, 1, 4, 1), vec![1]),
            (spec(1, 7, 4, 2, 16, 9), vec![7]),
            // A prompt appended after a cached prefix (chunked prefill).
            (spec(1, 5, 9, 3, 64, 40), vec![23]),
            (spec(2, 3, 6, 2, 8, 10), vec![3, 10]),
            (spec(1, 70, 4, 1, 32, 80), vec![70]),
        ]
    } else {
        vec![
            (spec(1, 1, 1, 1, 4, 1), vec![1]),
            (spec(3, 1, 9, 3, 64, 17), vec![1, 17, 9]),
            (spec(2, 1, 8, 8, 16, 300), vec![300, 123]),
            (spec(4, 1, 6, 2, 8, 33), vec![5, 1, 33, 20]),
        ]
    };
    for (case, (spec, lens)) in cases.iter().enumerate() {
        let seed = 920 + case as u64 + if prefill { 50 } else { 0 };
        let qn = spec.batch * spec.q_len * spec.q_width();
        let kn = spec.batch * spec.max_len * spec.kv_width();
        let q = random_f32(qn, seed);
        let round = |x: Vec<f32>| -> Vec<f32> {
            if kv == DType::F16 {
                x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect()
            } else {
                x
            }
        };
        let k = random_f32(kn, seed + 1);
        let v = random_f32(kn, seed + 2);
        let want = reference_attention(spec, &q, &round(k.clone()), &round(v.clone()), lens);
        let (qb, kb, vb) = (upload(d, &q)?, upload_as(d, &k, kv)?, upload_as(d, &v, kv)?);
        let mut out = d.alloc(DType::F32, qn).map_err(err("alloc"))?;
        d.attention_causal(
            spec,
            qb.as_ref(),
            kb.as_ref(),
            vb.as_ref(),
            lens,
            out.as_mut(),
        )
        .map_err(err("attention_causal"))?;
        let got: Vec<f32> = d.to_vec(out.as_ref()).map_err(err("download"))?;
        compare(
            &format!("attention_causal {spec:?} lens {lens:?}"),
            &got,
            &want,
            TOL,
        )?;
        let mut bad = lens.clone();
        bad[0] = spec.max_len as u32 + 1;
        match d.attention_causal(
            spec,
            qb.as_ref(),
            kb.as_ref(),
            vb.as_ref(),
            &bad,
            out.as_mut(),
        ) {
            Err(Error::InvalidInput { .. }) => {}
            other => {
                return Err(format!(
                    "attention with a length past the cache gave {other:?}"
                ));
            }
        }
    }
    Ok(())
}

fn silu_mul_matches_reference(d: &dyn DynDevice) -> Result<(), String> {
    for len in [1, 33, 1536, 70_001] {
        let gate = random_f32(len, 960 + len as u64);
        let up = random_f32(len, 961);
        let want: Vec<f32> = gate
            .iter()
            .zip(&up)
            .map(|(&g, &u)| {
                let g = g as f64;
                (g / (1.0 + (-g).exp()) * u as f64) as f32
            })
            .collect();
        let mut gb = upload(d, &gate)?;
        let ub = upload(d, &up)?;
        d.silu_mul(gb.as_mut(), ub.as_ref())
            .map_err(err("silu_mul"))?;
        let got: Vec<f32> = d.to_vec(gb.as_ref()).map_err(err("download"))?;
        compare(&format!("silu_mul {len}"), &got, &want, TOL)?;
    }
    let mut g = upload(d, &[0.0; 4])?;
    let u = upload(d, &[0.0; 5])?;
    match d.silu_mul(g.as_mut(), u.as_ref()) {
        Err(Error::InvalidInput { .. }) => Ok(()),
        other => Err(format!("silu_mul of 4 and 5 values gave {other:?}")),
    }
}

fn embedding_matches_reference(d: &dyn DynDevice) -> Result<(), String> {
    let (rows, width) = (50, 7);
    let table = random_f32(rows * width, 970);
    let ids = [3u32, 0, 49, 3, 17];
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&i| table[i as usize * width..][..width].to_vec())
        .collect();
    let tb = upload(d, &table)?;
    let mut out = d
        .alloc(DType::F32, ids.len() * width)
        .map_err(err("alloc"))?;
    d.embedding(tb.as_ref(), &ids, out.as_mut())
        .map_err(err("embedding"))?;
    let got: Vec<f32> = d.to_vec(out.as_ref()).map_err(err("download"))?;
    compare("embedding", &got, &want, 0.0)?;
    match d.embedding(tb.as_ref(), &[1, 50, 2, 0, 0], out.as_mut()) {
        Err(Error::InvalidInput { .. }) => Ok(()),
        other => Err(format!(
            "embedding of id 50 in a table of 50 rows gave {other:?}"
        )),
    }
}

fn missing_are_unsupported(d: &dyn DynDevice) -> Result<(), String> {
    let x = upload(d, &[1.0; 4])?;
    let mut y = upload(d, &[1.0; 4])?;
    let expect = |what: &str, r: crate::Result<()>| match r {
        Err(e) if e.is_unsupported() => Ok(()),
        other => Err(format!(
            "{what} on a device without it gave {other:?}, want Unsupported"
        )),
    };
    expect(
        "rms_norm",
        d.rms_norm(x.as_ref(), x.as_ref(), y.as_mut(), 1e-5),
    )?;
    let rope = RopeSpec {
        tokens: 1,
        heads: 1,
        head_dim: 4,
        layout: RopeLayout::Halves,
    };
    let f = upload(d, &[1.0; 2])?;
    expect("rope", d.rope(&rope, y.as_mut(), &[0], f.as_ref()))?;
    let att = CausalAttentionSpec {
        batch: 1,
        q_len: 1,
        heads: 1,
        kv_heads: 1,
        head_dim: 4,
        max_len: 1,
    };
    expect(
        "attention_causal",
        d.attention_causal(&att, x.as_ref(), x.as_ref(), x.as_ref(), &[1], y.as_mut()),
    )?;
    expect("silu_mul", d.silu_mul(y.as_mut(), x.as_ref()))
}
