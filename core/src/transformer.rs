//! Shapes of the Llama-family kernels (`rms_norm`, `rope`,
//! `attention_causal`, `silu_mul`, `embedding`): what each buffer holds and
//! the checks every backend runs before launching, so that a bad shape is
//! the same `InvalidInput` everywhere and never a read out of bounds.

use serde::{Deserialize, Serialize};

use crate::{Error, QuantType, Result};

/// Which pairs of a head's values a rotary embedding rotates together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeLayout {
    /// `(x[2i], x[2i + 1])`: GGUF files of the `llama` architecture, whose
    /// converter permuted the Q and K rows so that this layout computes the
    /// same function as the original checkpoint (GPT-J style).
    Adjacent,
    /// `(x[i], x[i + head_dim / 2])`: Hugging Face checkpoints, and GGUF
    /// architectures llama.cpp runs with the NeoX rotary (`qwen2`).
    Halves,
}

/// Rotary embedding of `tokens` rows of `heads * head_dim` values, in place.
///
/// Row `t` is at position `positions[t]`; pair `i` (of `head_dim / 2`) of
/// every head turns by the angle `positions[t] * inv_freq[i]` (computed in
/// f32): `(a, b) -> (a cos - b sin, a sin + b cos)`. The inverse
/// frequencies are a buffer so that every scaling scheme (linear, Llama 3's)
/// is the model's to compute once, not each kernel's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RopeSpec {
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub layout: RopeLayout,
}

impl RopeSpec {
    /// Check the buffer lengths and positions against the spec.
    pub fn validate(&self, x: usize, inv_freq: usize, positions: &[u32]) -> Result<()> {
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(Error::invalid(
                "rope head_dim",
                format!("{} is not a positive even number", self.head_dim),
            ));
        }
        let want = self
            .tokens
            .checked_mul(self.heads)
            .and_then(|v| v.checked_mul(self.head_dim))
            .ok_or_else(|| Error::invalid("rope shape", "tokens x heads x head_dim overflows"))?;
        if x != want {
            return Err(Error::invalid(
                "rope x",
                format!(
                    "holds {x} elements, {} tokens x {} heads x {} need {want}",
                    self.tokens, self.heads, self.head_dim
                ),
            ));
        }
        if inv_freq != self.head_dim / 2 {
            return Err(Error::invalid(
                "rope inv_freq",
                format!(
                    "holds {inv_freq} values, head_dim {} needs {}",
                    self.head_dim,
                    self.head_dim / 2
                ),
            ));
        }
        if positions.len() != self.tokens {
            return Err(Error::invalid(
                "rope positions",
                format!("{} positions for {} tokens", positions.len(), self.tokens),
            ));
        }
        Ok(())
    }
}

/// Causal attention with grouped key/value heads, for decode (`q_len` 1)
/// and for a prefill block (`q_len` prompt tokens at once).
///
/// - `q` and `out`: `[batch][q_len][heads * head_dim]`;
/// - caches: `[batch][max_len][kv_heads * head_dim]`, already holding the
///   keys and values of the `q_len` new tokens;
/// - `lens[b]`: positions of sequence `b` in its cache after this step, so
///   query `t` is at position `lens[b] - q_len + t` and attends to cache
///   positions `0..=lens[b] - q_len + t`;
/// - query head `h` reads kv head `h / (heads / kv_heads)`;
/// - scores are scaled by `1 / sqrt(head_dim)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CausalAttentionSpec {
    pub batch: usize,
    pub q_len: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub max_len: usize,
}

impl CausalAttentionSpec {
    /// Values of one token's queries.
    pub fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Values of one token's keys (or values).
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Query heads per kv head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads.max(1)
    }

    /// Check the buffer lengths and per-sequence lengths against the spec.
    pub fn validate(&self, q: usize, k: usize, v: usize, out: usize, lens: &[u32]) -> Result<()> {
        if self.kv_heads == 0 || self.head_dim == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::invalid(
                "attention heads",
                format!(
                    "{} query heads do not group over {} kv heads of dim {}",
                    self.heads, self.kv_heads, self.head_dim
                ),
            ));
        }
        let mul = |a: usize, b: usize| {
            a.checked_mul(b)
                .ok_or_else(|| Error::invalid("attention shape", "sizes overflow usize"))
        };
        let q_want = mul(mul(self.batch, self.q_len)?, self.q_width())?;
        let cache = mul(mul(self.batch, self.max_len)?, self.kv_width())?;
        for (name, have, want) in [
            ("attention q", q, q_want),
            ("attention k cache", k, cache),
            ("attention v cache", v, cache),
            ("attention out", out, q_want),
        ] {
            if have != want {
                return Err(Error::invalid(
                    name,
                    format!("holds {have} elements, the attention shape needs {want}"),
                ));
            }
        }
        if lens.len() != self.batch {
            return Err(Error::invalid(
                "attention lengths",
                format!("{} lengths for a batch of {}", lens.len(), self.batch),
            ));
        }
        if self.q_len == 0 {
            return Err(Error::invalid("attention q_len", "is 0"));
        }
        if let Some((b, l)) = lens
            .iter()
            .enumerate()
            .find(|(_, l)| (**l as usize) < self.q_len || **l as usize > self.max_len)
        {
            return Err(Error::invalid(
                format!("attention lengths[{b}]"),
                format!(
                    "{l} is not in {}..={} (q_len..=max_len)",
                    self.q_len, self.max_len
                ),
            ));
        }
        Ok(())
    }
}

/// Rows of an RMS norm over `x_len` elements with a weight of `cols`, writing `out_len`.
pub fn rms_norm_rows(x_len: usize, cols: usize, out_len: usize) -> Result<usize> {
    if cols == 0 || !x_len.is_multiple_of(cols) || out_len != x_len {
        return Err(Error::invalid(
            "rms_norm",
            format!("x {x_len} / weight {cols} / out {out_len} elements are not rows of one width"),
        ));
    }
    Ok(x_len / cols)
}

/// Row width of an embedding gather of `ids.len()` rows into `out_len`
/// elements from a table of `table_len`; every id must name a row.
pub fn embedding_width(table_len: usize, out_len: usize, ids: &[u32]) -> Result<usize> {
    let width = gather_width(out_len, ids)?;
    if !table_len.is_multiple_of(width) {
        return Err(Error::invalid(
            "embedding table",
            format!("{table_len} elements are not rows of {width}"),
        ));
    }
    check_ids(ids, table_len / width)?;
    Ok(width)
}

/// Row width of an embedding gather from a `quant` table of `table_bytes`
/// into `out_len` f32 elements: whole blocks per row, every id a row.
pub fn quant_embedding_width(
    quant: QuantType,
    table_bytes: usize,
    out_len: usize,
    ids: &[u32],
) -> Result<usize> {
    let width = gather_width(out_len, ids)?;
    let row_bytes = quant.row_bytes(width)?;
    if !table_bytes.is_multiple_of(row_bytes) {
        return Err(Error::invalid(
            "embedding table",
            format!("{table_bytes} bytes are not {quant} rows of {width} elements"),
        ));
    }
    check_ids(ids, table_bytes / row_bytes)?;
    Ok(width)
}

/// Elements per output row of a gather of `ids.len()` rows.
fn gather_width(out_len: usize, ids: &[u32]) -> Result<usize> {
    if ids.is_empty() || !out_len.is_multiple_of(ids.len()) || out_len == 0 {
        return Err(Error::invalid(
            "embedding out",
            format!("{out_len} elements are not {} rows", ids.len()),
        ));
    }
    Ok(out_len / ids.len())
}

fn check_ids(ids: &[u32], rows: usize) -> Result<()> {
    if let Some((i, id)) = ids.iter().enumerate().find(|(_, id)| **id as usize >= rows) {
        return Err(Error::invalid(
            format!("embedding ids[{i}]"),
            format!("{id} is past the table's {rows} rows"),
        ));
    }
    Ok(())
}
