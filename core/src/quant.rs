//! Block-quantized weight formats (GGUF's Q8_0, Q4_0, Q4_1, Q4_K, Q5_K,
//! Q6_K) as a device holds them: the file's bytes, unchanged, in a `U8`
//! buffer. This module is the one definition of their layouts and the
//! reference dequantization (exactly ggml's `dequantize_row_*`: the same f32
//! operations in the same order, so results match ggml bit for bit), which
//! model loaders, the device suite's references and backends share.
//!
//! Layouts (little-endian; `d`, `m`, `dmin` are f16):
//! - Q8_0 (32 elements, 34 bytes): d, 32 x i8; x = q * d.
//! - Q4_0 (32, 18): d, 16 bytes; element j < 16 is the low nibble of byte
//!   j, element j + 16 its high nibble; x = (q - 8) * d.
//! - Q4_1 (32, 20): d, m, 16 bytes of nibbles as Q4_0; x = q * d + m.
//! - Q4_K (256, 144): d, dmin, 12 bytes of eight 6-bit scales and eight
//!   6-bit mins, 128 bytes of nibbles: four groups of 64 elements, each 32
//!   bytes whose low nibbles are sub-block 2g and high nibbles 2g + 1;
//!   x = d * sc * q - dmin * m.
//! - Q5_K (256, 176): as Q4_K with a 32-byte `qh` before the nibbles: bit
//!   2g of qh[l] is the fifth bit of element l of sub-block 2g, bit 2g + 1
//!   of sub-block 2g + 1.
//! - Q6_K (256, 210): 128 bytes `ql` (low 4 bits), 64 bytes `qh` (high 2
//!   bits), 16 x i8 scales (one per 16 elements), then d;
//!   x = d * scale * (q - 32).

use std::fmt;

use half::f16;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A block-quantized weight format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum QuantType {
    Q8_0,
    Q4_0,
    Q4_1,
    Q4K,
    Q5K,
    Q6K,
}

impl QuantType {
    /// Every format, in a fixed order (tests iterate over this).
    pub const ALL: [QuantType; 6] = [
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
    ];

    /// Elements per block.
    pub const fn block_elems(self) -> usize {
        match self {
            QuantType::Q8_0 | QuantType::Q4_0 | QuantType::Q4_1 => 32,
            QuantType::Q4K | QuantType::Q5K | QuantType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            QuantType::Q8_0 => 34,
            QuantType::Q4_0 => 18,
            QuantType::Q4_1 => 20,
            QuantType::Q4K => 144,
            QuantType::Q5K => 176,
            QuantType::Q6K => 210,
        }
    }

    /// ggml's name ("Q4_1", "Q6_K", ...).
    pub const fn name(self) -> &'static str {
        match self {
            QuantType::Q8_0 => "Q8_0",
            QuantType::Q4_0 => "Q4_0",
            QuantType::Q4_1 => "Q4_1",
            QuantType::Q4K => "Q4_K",
            QuantType::Q5K => "Q5_K",
            QuantType::Q6K => "Q6_K",
        }
    }

    /// Bytes of one row of `cols` elements; an error unless `cols` is a
    /// whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Result<usize> {
        if !cols.is_multiple_of(self.block_elems()) {
            return Err(Error::invalid(
                format!("{self} row"),
                format!(
                    "{cols} columns are not a whole number of {}-element blocks",
                    self.block_elems()
                ),
            ));
        }
        Ok(cols / self.block_elems() * self.block_bytes())
    }

    /// Dequantize whole blocks (`bytes.len()` a multiple of
    /// [`Self::block_bytes`]) onto the end of `out`.
    pub fn dequantize(self, bytes: &[u8], out: &mut Vec<f32>) {
        let n = self.block_bytes();
        out.reserve(bytes.len() / n * self.block_elems());
        for b in bytes.chunks_exact(n) {
            let start = out.len();
            out.resize(start + self.block_elems(), 0.0);
            self.dequantize_block(b, &mut out[start..]);
        }
    }

    /// Dequantize one block (`block.len() == block_bytes`) into `out`
    /// (`block_elems` values).
    pub fn dequantize_block(self, block: &[u8], out: &mut [f32]) {
        match self {
            QuantType::Q8_0 => q8_0(block, out),
            QuantType::Q4_0 => q4_0(block, out),
            QuantType::Q4_1 => q4_1(block, out),
            QuantType::Q4K => q4_k(block, out),
            QuantType::Q5K => q5_k(block, out),
            QuantType::Q6K => q6_k(block, out),
        }
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Shape of a matrix product with quantized weights:
/// `y = x W^T` with `x` f32 `rows x inp`, `W` stored `[out, inp]` as
/// `quant` blocks along each row (a `U8` buffer of `out * row_bytes(inp)`
/// bytes), `y` f32 `rows x out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantMatmulSpec {
    pub rows: usize,
    pub out: usize,
    pub inp: usize,
    pub quant: QuantType,
}

impl QuantMatmulSpec {
    /// Check the operands' lengths (x and y in elements, w in bytes).
    pub fn validate(&self, x_len: usize, w_bytes: usize, y_len: usize) -> Result<()> {
        let row = self.quant.row_bytes(self.inp)?;
        let prod = |a: usize, b: usize, what: &str| {
            a.checked_mul(b).ok_or_else(|| {
                Error::invalid("quantized matmul", format!("{what}: {a} x {b} overflows"))
            })
        };
        let check = |name: &str, have: usize, want: usize, unit: &str| {
            if have == want {
                Ok(())
            } else {
                Err(Error::invalid(
                    name,
                    format!(
                        "holds {have} {unit}, the {} matmul needs {want}",
                        self.quant
                    ),
                ))
            }
        };
        check(
            "quantized matmul x",
            x_len,
            prod(self.rows, self.inp, "x")?,
            "elements",
        )?;
        check(
            "quantized matmul w",
            w_bytes,
            prod(self.out, row, "w")?,
            "bytes",
        )?;
        check(
            "quantized matmul y",
            y_len,
            prod(self.rows, self.out, "y")?,
            "elements",
        )
    }
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn q8_0(b: &[u8], out: &mut [f32]) {
    let d = half(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..34]) {
        *o = f32::from(q as i8) * d;
    }
}

fn q4_0(b: &[u8], out: &mut [f32]) {
    let d = half(b, 0);
    let (lo, hi) = out.split_at_mut(16);
    for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[2..18]) {
        *l = f32::from((q & 0x0F) as i8 - 8) * d;
        *h = f32::from((q >> 4) as i8 - 8) * d;
    }
}

fn q4_1(b: &[u8], out: &mut [f32]) {
    let d = half(b, 0);
    let m = half(b, 2);
    let (lo, hi) = out.split_at_mut(16);
    for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[4..20]) {
        *l = f32::from(q & 0x0F) * d + m;
        *h = f32::from(q >> 4) * d + m;
    }
}

/// Scale and min of sub-block `j` (0..8) from K-quants' 12 packed bytes:
/// bytes 0..4 hold the low 6 bits of scales 0..4 (top 2 bits: high bits of
/// scales 4..8), bytes 4..8 the same for mins, bytes 8..12 the low 4 bits
/// of scales 4..8 (low nibble) and mins 4..8 (high nibble).
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

fn q4_k(b: &[u8], out: &mut [f32]) {
    let d = half(b, 0);
    let dmin = half(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for g in 0..4 {
        let q = &qs[32 * g..32 * g + 32];
        for (sub, shift) in [(2 * g, 0), (2 * g + 1, 4)] {
            let (sc, m) = scale_min_k4(sub, scales);
            let d1 = d * f32::from(sc);
            let m1 = dmin * f32::from(m);
            for (o, &x) in out[32 * sub..32 * sub + 32].iter_mut().zip(q) {
                *o = d1 * f32::from((x >> shift) & 0x0F) - m1;
            }
        }
    }
}

fn q5_k(b: &[u8], out: &mut [f32]) {
    let d = half(b, 0);
    let dmin = half(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for g in 0..4 {
        let q = &qs[32 * g..32 * g + 32];
        for (sub, shift) in [(2 * g, 0), (2 * g + 1, 4)] {
            let (sc, m) = scale_min_k4(sub, scales);
            let d1 = d * f32::from(sc);
            let m1 = dmin * f32::from(m);
            let high_bit = 1u8 << sub;
            for ((o, &x), &h) in out[32 * sub..32 * sub + 32].iter_mut().zip(q).zip(qh) {
                let hi = if h & high_bit != 0 { 16 } else { 0 };
                *o = d1 * f32::from(((x >> shift) & 0x0F) + hi) - m1;
            }
        }
    }
}

fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = half(b, 208);
    // Two halves of 128 elements, each from 64 bytes of ql, 32 of qh and
    // 8 scales; element l + 32k of a half takes the nibble and the 2-bit
    // pair that ggml's interleaving assigns to it.
    for half_idx in 0..2 {
        let ql = &b[64 * half_idx..64 * half_idx + 64];
        let qh = &b[128 + 32 * half_idx..128 + 32 * half_idx + 32];
        let sc = &b[192 + 8 * half_idx..192 + 8 * half_idx + 8];
        let y = &mut y[128 * half_idx..128 * half_idx + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            let s = |k: usize| d * f32::from(sc[is + k] as i8);
            y[l] = s(0) * f32::from(q1);
            y[l + 32] = s(2) * f32::from(q2);
            y[l + 64] = s(4) * f32::from(q3);
            y[l + 96] = s(6) * f32::from(q4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_rows() {
        for q in QuantType::ALL {
            assert_eq!(
                q.row_bytes(q.block_elems() * 3).ok(),
                Some(3 * q.block_bytes())
            );
            assert!(q.row_bytes(q.block_elems() + 1).is_err());
        }
    }

    #[test]
    fn q4_1_block_by_hand() {
        // d = 0.5, m = -1, byte j = (j+1) << 4 | j: element j -> j, j + 16 -> j + 1.
        let mut b = vec![0u8; 20];
        b[0..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        for j in 0..16u8 {
            b[4 + j as usize] = ((j + 1) & 0x0F) << 4 | j;
        }
        let mut out = Vec::new();
        QuantType::Q4_1.dequantize(&b, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], j as f32 * 0.5 - 1.0);
            assert_eq!(out[j + 16], ((j + 1) % 16) as f32 * 0.5 - 1.0);
        }
    }

    #[test]
    fn spec_checks_lengths() {
        let s = QuantMatmulSpec {
            rows: 2,
            out: 3,
            inp: 64,
            quant: QuantType::Q8_0,
        };
        assert!(s.validate(128, 3 * 68, 6).is_ok());
        assert!(s.validate(127, 3 * 68, 6).is_err());
        assert!(s.validate(128, 3 * 68 + 1, 6).is_err());
        assert!(s.validate(128, 3 * 68, 5).is_err());
        let bad = QuantMatmulSpec { inp: 33, ..s };
        assert!(bad.validate(66, 0, 6).is_err());
    }
}
