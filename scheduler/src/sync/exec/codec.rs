//! The executor's wire codec: how gradient and weight payloads are laid
//! out in transport messages and in the sparse all-gather. Nothing here
//! knows about strategies or ranks' roles; `replica.rs` decides what goes
//! where.
//!
//! - a parameter-server message is a sequence of payloads, each prefixed
//!   with its length (u64, little-endian): [`put_payload`] / [`Reader`];
//! - a dense payload is the f32 values, little-endian;
//! - a sparse payload is [`SparseRows`]: the row count (u32), the row
//!   indices (u32), then the rows;
//! - a rank's record in the sparse all-gather is, per variable, its touched
//!   rows' indices (u32) then their values: fixed size, since every rank
//!   touches the same number of rows ([`put_fixed_rows`] /
//!   [`SparseRows::add_fixed_rows`]).

use std::collections::BTreeMap;

use hetero_core::{Error, Result};

pub(super) fn bytes_of(xs: &[f32]) -> &[u8] {
    bytemuck::cast_slice(xs)
}

pub(super) fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Sequential reader of length-prefixed payloads.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    peer: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8], peer: usize) -> Self {
        Reader { buf, at: 0, peer }
    }
    pub(super) fn payload(&mut self) -> Result<&'a [u8]> {
        let bad = || {
            Error::invalid(
                "message",
                format!(
                    "rank {} sent a truncated parameter-server message",
                    self.peer
                ),
            )
        };
        let head = self.buf.get(self.at..self.at + 8).ok_or_else(bad)?;
        let len = u64::from_le_bytes(head.try_into().map_err(|_| bad())?) as usize;
        let body = self
            .buf
            .get(self.at + 8..self.at + 8 + len)
            .ok_or_else(bad)?;
        self.at += 8 + len;
        Ok(body)
    }
}

pub(super) fn put_payload(msg: &mut Vec<u8>, body: &[u8]) {
    msg.extend_from_slice(&(body.len() as u64).to_le_bytes());
    msg.extend_from_slice(body);
}

/// Rows with values: `count`, row indices (u32), then the rows.
#[derive(Debug, Default, Clone)]
pub(super) struct SparseRows {
    pub(super) rows: BTreeMap<usize, Vec<f32>>,
}

impl SparseRows {
    pub(super) fn add(&mut self, row: usize, vals: &[f32]) {
        match self.rows.get_mut(&row) {
            Some(acc) => acc.iter_mut().zip(vals).for_each(|(a, v)| *a += v),
            None => {
                self.rows.insert(row, vals.to_vec());
            }
        }
    }
    pub(super) fn encode(&self) -> Vec<u8> {
        let width = self.rows.values().next().map_or(0, Vec::len);
        let mut out = Vec::with_capacity(4 + self.rows.len() * (4 + 4 * width));
        out.extend_from_slice(&(self.rows.len() as u32).to_le_bytes());
        for r in self.rows.keys() {
            out.extend_from_slice(&(*r as u32).to_le_bytes());
        }
        for v in self.rows.values() {
            out.extend_from_slice(bytes_of(v));
        }
        out
    }
    pub(super) fn decode_into(&mut self, body: &[u8], width: usize, peer: usize) -> Result<()> {
        let bad = || Error::invalid("message", format!("rank {peer} sent malformed sparse rows"));
        let count = u32::from_le_bytes(
            body.get(..4)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ) as usize;
        let idx_end = 4 + 4 * count;
        if body.len() != idx_end + 4 * count * width {
            return Err(bad());
        }
        let vals = f32s(&body[idx_end..]);
        for k in 0..count {
            let c = &body[4 + 4 * k..8 + 4 * k];
            let row = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize;
            self.add(row, &vals[k * width..(k + 1) * width]);
        }
        Ok(())
    }

    /// Add `count` rows of `width` values read from `rec`, laid out as
    /// [`put_fixed_rows`] writes them.
    pub(super) fn add_fixed_rows(
        &mut self,
        rec: &[u8],
        count: usize,
        width: usize,
        peer: usize,
    ) -> Result<()> {
        if rec.len() != fixed_rows_len(count, width) {
            return Err(Error::invalid(
                "message",
                format!(
                    "rank {peer} sent {} bytes for {count} gathered rows of {width}",
                    rec.len()
                ),
            ));
        }
        let vals = f32s(&rec[4 * count..]);
        for j in 0..count {
            let c = &rec[4 * j..4 * j + 4];
            let row = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize;
            self.add(row, &vals[j * width..(j + 1) * width]);
        }
        Ok(())
    }
}

/// Append the rows `rows` of `values` (a matrix of rows of `width`) as a
/// fixed-size part of an all-gather record: the indices (u32), then the
/// rows. Every rank touches the same number of rows, so every rank's
/// record has the same size and needs no length prefix.
pub(super) fn put_fixed_rows(out: &mut Vec<u8>, rows: &[usize], values: &[f32], width: usize) {
    for &r in rows {
        out.extend_from_slice(&(r as u32).to_le_bytes());
    }
    for &r in rows {
        out.extend_from_slice(bytes_of(&values[r * width..(r + 1) * width]));
    }
}

/// Bytes [`put_fixed_rows`] writes for `count` rows of `width`.
pub(super) fn fixed_rows_len(count: usize, width: usize) -> usize {
    4 * count + 4 * count * width
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_read_back_in_order_and_truncation_is_an_error() {
        let mut msg = Vec::new();
        put_payload(&mut msg, b"abc");
        put_payload(&mut msg, b"");
        put_payload(&mut msg, bytes_of(&[1.5, -2.0]));
        let mut rd = Reader::new(&msg, 3);
        assert_eq!(rd.payload().unwrap(), b"abc");
        assert_eq!(rd.payload().unwrap(), b"");
        assert_eq!(f32s(rd.payload().unwrap()), vec![1.5, -2.0]);
        let err = rd.payload().unwrap_err().to_string();
        assert!(err.contains("rank 3 sent a truncated"), "{err}");
        let mut cut = Reader::new(&msg[..msg.len() - 1], 3);
        cut.payload().unwrap();
        cut.payload().unwrap();
        assert!(cut.payload().is_err());
    }

    #[test]
    fn sparse_rows_sum_and_round_trip() {
        let mut a = SparseRows::default();
        a.add(4, &[1.0, 2.0]);
        a.add(1, &[3.0, 4.0]);
        a.add(4, &[0.5, 0.5]);
        let mut b = SparseRows::default();
        b.decode_into(&a.encode(), 2, 0).unwrap();
        b.decode_into(&a.encode(), 2, 0).unwrap();
        assert_eq!(b.rows.get(&1), Some(&vec![6.0, 8.0]));
        assert_eq!(b.rows.get(&4), Some(&vec![3.0, 5.0]));
        assert_eq!(b.rows.len(), 2);
        let bytes = a.encode();
        let err = b.decode_into(&bytes[..bytes.len() - 4], 2, 5).unwrap_err();
        assert!(err.to_string().contains("rank 5"), "{err}");
        assert!(b.decode_into(&[], 2, 5).is_err());
    }

    #[test]
    fn fixed_rows_round_trip() {
        // A 3 x 2 matrix; rows 2 and 0 (a rank's touched rows, in its order).
        let values = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        let mut rec = Vec::new();
        put_fixed_rows(&mut rec, &[2, 0], &values, 2);
        assert_eq!(rec.len(), fixed_rows_len(2, 2));
        let mut sum = SparseRows::default();
        sum.add_fixed_rows(&rec, 2, 2, 0).unwrap();
        sum.add_fixed_rows(&rec, 2, 2, 1).unwrap();
        assert_eq!(sum.rows.get(&2), Some(&vec![8.0, 10.0]));
        assert_eq!(sum.rows.get(&0), Some(&vec![0.0, 2.0]));
        assert!(sum.add_fixed_rows(&rec[1..], 2, 2, 1).is_err());
    }
}
