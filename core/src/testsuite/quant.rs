//! Quantized weights (`matmul_quant`, `embedding_quant`) against f64
//! references over the exact dequantization of [`QuantType`]. Shapes are
//! awkward (one row, odd output counts, rows not a multiple of any
//! vector or tile width, SmolLM2's widths 576 and 1536).
//!
//! The bound is f32 summation's (1e-5 of the sum of absolute products),
//! or the split-bf16 tile products' where a host CPU has AMX (each operand
//! kept to about 16 bits: `3 * 2^-16`, so 5e-5 of that sum; the host
//! backend's `quant/amx.rs` derives it), plus, at most, what rounding the
//! activations to 16 bits per 32 values
//! may cost (half a step, `max |x| / 65534`, times each weight's
//! magnitude): the weights must be dequantized exactly, so a kernel that
//! misreads one nibble, scale or block fails it, and so does one that
//! rounds the activations to 8 bits (that moved SmolLM2's logits enough to
//! change a greedy answer; its error is about 128 times that allowance).

use super::{DeviceTest, err, random_f32};
use crate::device::Capabilities;
use crate::dtype::{DType, HostSlice};
use crate::dyn_device::{DynDevice, DynDeviceExt};
use crate::half::f16;
use crate::quant::{QuantMatmulSpec, QuantType};
use crate::rng::SplitMix64;

/// `x . w` in f64, and the sum of `|x_i w_i|` (the scale a kernel's
/// rounding error is bounded by).
pub fn f64_dot(x: &[f32], w: &[f32]) -> (f64, f64) {
    x.iter().zip(w).fold((0.0, 0.0), |(sum, abs), (&a, &b)| {
        let p = f64::from(a) * f64::from(b);
        (sum + p, abs + p.abs())
    })
}

/// The most that rounding the activations `x` to 16 bits per 32 values
/// (step `max |x| / 32767` of the block) may move `x . w`: half a step per
/// element, times the weight's magnitude.
pub fn i16_rounding_allowance(x: &[f32], w: &[f32]) -> f64 {
    x.chunks(32)
        .zip(w.chunks(32))
        .map(|(xb, wb)| {
            let amax = xb.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
            let w1: f64 = wb.iter().map(|&v| f64::from(v).abs()).sum();
            w1 * amax / 65534.0
        })
        .sum()
}

/// Random blocks of `quant`: random quant bits, scales and minimums drawn
/// as small f16 values (random bits there would be NaNs and infinities no
/// real file holds), Q8_0 values within ggml's -127..=127.
pub fn random_quant_blocks(quant: QuantType, blocks: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let mut w = Vec::with_capacity(blocks * quant.block_bytes());
    for _ in 0..blocks {
        let mut b: Vec<u8> = (0..quant.block_bytes())
            .map(|_| rng.next_u64() as u8)
            .collect();
        let mut scale = |at: usize| {
            let v = f16::from_f32(rng.signed_unit_f32() * 0.05);
            b[at..at + 2].copy_from_slice(&v.to_le_bytes());
        };
        match quant {
            QuantType::Q6K => scale(208),
            QuantType::Q8_0 | QuantType::Q4_0 => scale(0),
            QuantType::Q4_1 | QuantType::Q4K | QuantType::Q5K => {
                scale(0);
                scale(2);
            }
        }
        if quant == QuantType::Q8_0 {
            for q in &mut b[2..] {
                if *q == 0x80 {
                    *q = 0x81;
                }
            }
        }
        w.extend(b);
    }
    w
}

pub(super) fn tests(caps: &Capabilities) -> Vec<DeviceTest> {
    let mut tests = Vec::new();
    for quant in QuantType::ALL {
        let have = caps.quant_types.contains(&quant);
        let name = quant.name().to_lowercase();
        let missing = move || format!("device has no kernels for {quant} weights");
        tests.push(
            DeviceTest::new(format!("matmul_quant_{name}"), move |d| {
                matmul_matches_reference(d, quant)
            })
            .skip_unless(have, missing),
        );
        tests.push(
            DeviceTest::new(format!("embedding_quant_{name}"), move |d| {
                embedding_matches_reference(d, quant)
            })
            .skip_unless(have, missing),
        );
    }
    if caps.quant_types.len() < QuantType::ALL.len() {
        let caps = caps.clone();
        tests.push(DeviceTest::new(
            "missing_quant_kernels_are_unsupported_errors",
            move |d| missing_are_unsupported(d, &caps),
        ));
    }
    tests
}

fn upload_u8(d: &dyn DynDevice, v: &[u8]) -> Result<crate::BoxedBuffer, String> {
    d.alloc_from(HostSlice::new(v)).map_err(err("alloc"))
}

fn matmul_matches_reference(d: &dyn DynDevice, quant: QuantType) -> Result<(), String> {
    let be = quant.block_elems();
    let mut shapes = vec![
        (1, 1, be),
        (1, 7, 2 * be),
        (2, 13, 3 * be),
        (3, 5, be),
        (4, 33, 2 * be),
        (5, 9, 3 * be),
        (9, 65, be),
        (33, 3, 2 * be),
    ];
    if be == 32 {
        shapes.extend([(1, 200, 576), (6, 40, 1536), (128, 17, 64)]);
    } else {
        shapes.extend([(1, 70, 768), (6, 12, 1536)]);
    }
    for (case, &(rows, out, inp)) in shapes.iter().enumerate() {
        let seed = 7000 + case as u64 * 31 + quant as u64;
        let w = random_quant_blocks(quant, out * inp / be, seed);
        let x = random_f32(rows * inp, seed + 1);
        let mut dense = Vec::new();
        quant.dequantize(&w, &mut dense);
        let spec = QuantMatmulSpec {
            rows,
            out,
            inp,
            quant,
        };
        let xb = d.alloc_from(HostSlice::new(&x)).map_err(err("alloc"))?;
        let wb = upload_u8(d, &w)?;
        let mut yb = d.alloc(DType::F32, rows * out).map_err(err("alloc"))?;
        d.matmul_quant(&spec, xb.as_ref(), wb.as_ref(), yb.as_mut())
            .map_err(err("matmul_quant"))?;
        let got: Vec<f32> = d.to_vec(yb.as_ref()).map_err(err("download"))?;
        for r in 0..rows {
            let xr = &x[r * inp..(r + 1) * inp];
            for j in 0..out {
                let wr = &dense[j * inp..(j + 1) * inp];
                let (want, abs) = f64_dot(xr, wr);
                let rounding = i16_rounding_allowance(xr, wr);
                let g = f64::from(got[r * out + j]);
                let bound = 5e-5 * abs + 1e-6 + 1.01 * rounding;
                if !g.is_finite() || (g - want).abs() > bound {
                    return Err(format!(
                        "{quant} {rows}x{out}x{inp}: y[{r}][{j}] = {g}, reference {want} \
                         (allowed error {bound:.3e})"
                    ));
                }
            }
        }
    }
    // Lengths that disagree with the spec are errors, not reads past the end.
    let spec = QuantMatmulSpec {
        rows: 1,
        out: 2,
        inp: be,
        quant,
    };
    let x = d.alloc(DType::F32, be).map_err(err("alloc"))?;
    let short = upload_u8(d, &vec![0u8; 2 * quant.block_bytes() - 1])?;
    let mut y = d.alloc(DType::F32, 2).map_err(err("alloc"))?;
    if d.matmul_quant(&spec, x.as_ref(), short.as_ref(), y.as_mut())
        .is_ok()
    {
        return Err(format!(
            "{quant}: a weight buffer one byte short was accepted"
        ));
    }
    Ok(())
}

fn embedding_matches_reference(d: &dyn DynDevice, quant: QuantType) -> Result<(), String> {
    let be = quant.block_elems();
    for (case, &(rows, width)) in [(1, be), (7, 2 * be), (50, 3 * be)].iter().enumerate() {
        let table = random_quant_blocks(quant, rows * width / be, 8100 + case as u64);
        let mut dense = Vec::new();
        quant.dequantize(&table, &mut dense);
        let ids: Vec<u32> = (0..5).map(|i| ((i * 7 + 3) % rows) as u32).collect();
        let tb = upload_u8(d, &table)?;
        let mut out = d
            .alloc(DType::F32, ids.len() * width)
            .map_err(err("alloc"))?;
        d.embedding_quant(quant, tb.as_ref(), &ids, out.as_mut())
            .map_err(err("embedding_quant"))?;
        let got: Vec<f32> = d.to_vec(out.as_ref()).map_err(err("download"))?;
        for (r, &id) in ids.iter().enumerate() {
            let want = &dense[id as usize * width..(id as usize + 1) * width];
            let row = &got[r * width..(r + 1) * width];
            if let Some(i) = (0..width).find(|&i| row[i].to_bits() != want[i].to_bits()) {
                return Err(format!(
                    "{quant} embedding row {r} (id {id}) element {i}: {} != {} (must be exact)",
                    row[i], want[i]
                ));
            }
        }
        let bad = [rows as u32];
        let mut one = d.alloc(DType::F32, width).map_err(err("alloc"))?;
        if d.embedding_quant(quant, tb.as_ref(), &bad, one.as_mut())
            .is_ok()
        {
            return Err(format!("{quant}: an id past the table was accepted"));
        }
    }
    Ok(())
}

fn missing_are_unsupported(d: &dyn DynDevice, caps: &Capabilities) -> Result<(), String> {
    for quant in QuantType::ALL {
        if caps.quant_types.contains(&quant) {
            continue;
        }
        let be = quant.block_elems();
        let spec = QuantMatmulSpec {
            rows: 1,
            out: 1,
            inp: be,
            quant,
        };
        let x = d.alloc(DType::F32, be).map_err(err("alloc"))?;
        let w = upload_u8(d, &vec![0u8; quant.block_bytes()])?;
        let mut y = d.alloc(DType::F32, 1).map_err(err("alloc"))?;
        match d.matmul_quant(&spec, x.as_ref(), w.as_ref(), y.as_mut()) {
            Err(crate::Error::Unsupported { .. }) => {}
            other => {
                return Err(format!(
                    "{quant} matmul: expected Unsupported, got {other:?}"
                ));
            }
        }
    }
    Ok(())
}
