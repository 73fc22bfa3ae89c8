//! Past the core suite's sizes: causal attention over a 4096-position cache
//! with head_dim 128 (decode and a prefill block at the end of the cache),
//! and rotary embeddings at positions up to 32767, where unreduced f32
//! sin / cos arguments reach tens of thousands of radians.

use hetero_core::{
    CausalAttentionSpec, DType, Device, HostSlice, HostSliceMut, RopeLayout, RopeSpec,
};
use hetero_wgpu::{WgpuBuffer, WgpuDevice};
use libtest_mimic::Failed;

/// Seeded values in [-2, 2).
fn values(len: usize, mut seed: u64) -> Vec<f32> {
    (0..len)
        .map(|_| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((seed >> 33) % 4096) as f32 / 1024.0 - 2.0
        })
        .collect()
}

fn upload(d: &WgpuDevice, v: &[f32]) -> Result<WgpuBuffer, Failed> {
    let mut b = d.alloc(DType::F32, v.len())?;
    d.upload(&mut b, 0, HostSlice::new(v))?;
    Ok(b)
}

fn download(d: &WgpuDevice, b: &WgpuBuffer, len: usize) -> Result<Vec<f32>, Failed> {
    let mut v = vec![0.0f32; len];
    d.download(b, 0, HostSliceMut::new(&mut v))?;
    Ok(v)
}

fn compare(what: &str, got: &[f32], want: &[f64], tol: f64) -> Result<(), Failed> {
    let worst = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs() / w.abs().max(1.0))
        .fold(0.0, f64::max);
    if worst.is_nan() || worst > tol {
        return Err(format!("{what}: worst relative error {worst:e} over {tol:e}").into());
    }
    Ok(())
}

pub fn attention_long_context(d: &WgpuDevice) -> Result<(), Failed> {
    for (q_len, lens) in [(1, vec![4096u32, 2500]), (8, vec![4096, 8])] {
        let spec = CausalAttentionSpec {
            batch: 2,
            q_len,
            heads: 4,
            kv_heads: 2,
            head_dim: 128,
            max_len: 4096,
        };
        let (qw, kw, dh) = (spec.q_width(), spec.kv_width(), spec.head_dim);
        let q = values(spec.batch * q_len * qw, 1);
        let k = values(spec.batch * spec.max_len * kw, 2);
        let v = values(spec.batch * spec.max_len * kw, 3);
        let mut want = vec![0.0f64; q.len()];
        for b in 0..spec.batch {
            for t in 0..q_len {
                let pos = lens[b] as usize - q_len + t;
                for h in 0..spec.heads {
                    let kvh = h / spec.group();
                    let qrow = &q[(b * q_len + t) * qw + h * dh..][..dh];
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
                    let o = &mut want[(b * q_len + t) * qw + h * dh..][..dh];
                    for (s, &p) in e.iter().enumerate() {
                        let vrow = &v[(b * spec.max_len + s) * kw + kvh * dh..][..dh];
                        for (x, &y) in o.iter_mut().zip(vrow) {
                            *x += p / z * y as f64;
                        }
                    }
                }
            }
        }
        let (qb, kb, vb) = (upload(d, &q)?, upload(d, &k)?, upload(d, &v)?);
        let mut out = d.alloc(DType::F32, q.len())?;
        d.attention_causal(&spec, &qb, &kb, &vb, &lens, &mut out)?;
        let got = download(d, &out, q.len())?;
        compare(
            &format!("attention_causal q_len {q_len} lens {lens:?}"),
            &got,
            &want,
            1e-4,
        )?;
    }
    Ok(())
}

pub fn rope_large_positions(d: &WgpuDevice) -> Result<(), Failed> {
    let (heads, head_dim) = (2, 64);
    let positions: Vec<u32> = vec![0, 1, 4095, 8191, 12_345, 20_000, 32_767];
    let freq: Vec<f32> = (0..head_dim / 2)
        .map(|i| 10_000f64.powf(-2.0 * i as f64 / head_dim as f64) as f32)
        .collect();
    for layout in [RopeLayout::Adjacent, RopeLayout::Halves] {
        let spec = RopeSpec {
            tokens: positions.len(),
            heads,
            head_dim,
            layout,
        };
        let x = values(positions.len() * heads * head_dim, 4);
        let mut want: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        for (t, &p) in positions.iter().enumerate() {
            for h in 0..heads {
                let base = (t * heads + h) * head_dim;
                for (i, &f) in freq.iter().enumerate() {
                    let (sin, cos) = ((p as f32 * f) as f64).sin_cos();
                    let (ia, ib) = match layout {
                        RopeLayout::Adjacent => (base + 2 * i, base + 2 * i + 1),
                        RopeLayout::Halves => (base + i, base + i + head_dim / 2),
                    };
                    let (a, b) = (x[ia] as f64, x[ib] as f64);
                    want[ia] = a * cos - b * sin;
                    want[ib] = a * sin + b * cos;
                }
            }
        }
        let mut xb = upload(d, &x)?;
        let fb = upload(d, &freq)?;
        d.rope(&spec, &mut xb, &positions, &fb)?;
        let got = download(d, &xb, x.len())?;
        compare(&format!("rope {layout:?}"), &got, &want, 1e-4)?;
    }
    Ok(())
}
