//! Message framing: every message of a collective call starts with a
//! 16-byte [`Header`] (operation, dtype, reduce op, total element count),
//! so a rank detects a peer that called another operation, or the same one
//! with other arguments, and reports the disagreement instead of reducing
//! garbage.

use hetero_core::{DType, Error, ReduceOp, Result};

use crate::error::CollectiveError;

/// Which collective a message belongs to (checked on receipt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpKind {
    AllReduce = 1,
    ReduceScatter = 2,
    AllGather = 3,
    Broadcast = 4,
    Reduce = 5,
    Barrier = 6,
    Probe = 7,
}

impl OpKind {
    fn name(v: u8) -> String {
        match v {
            1 => "all_reduce",
            2 => "reduce_scatter",
            3 => "all_gather",
            4 => "broadcast",
            5 => "reduce",
            6 => "barrier",
            7 => "probe",
            _ => "unknown",
        }
        .to_string()
    }
}

fn dtype_code(d: DType) -> u8 {
    DType::ALL
        .iter()
        .position(|&x| x == d)
        .map_or(255, |i| i as u8)
}

fn dtype_name(c: u8) -> String {
    DType::ALL
        .get(usize::from(c))
        .map_or_else(|| format!("dtype code {c}"), |d| d.to_string())
}

fn op_code(op: ReduceOp) -> u8 {
    ReduceOp::ALL
        .iter()
        .position(|&x| x == op)
        .map_or(255, |i| i as u8)
}

fn op_name(c: u8) -> String {
    ReduceOp::ALL
        .get(usize::from(c))
        .map_or_else(|| "none".to_string(), |d| d.to_string())
}

pub const HEADER: usize = 16;

/// What every message of one collective call carries, so a rank can check
/// its peer called the same thing: op, dtype, reduce op, total element count.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub kind: OpKind,
    pub dtype: DType,
    pub op: Option<ReduceOp>,
    pub len: u64,
}

impl Header {
    fn bytes(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[0] = self.kind as u8;
        h[1] = dtype_code(self.dtype);
        h[2] = self.op.map_or(255, op_code);
        h[8..16].copy_from_slice(&self.len.to_le_bytes());
        h
    }

    /// A message: header followed by `payload`.
    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER + payload.len());
        v.extend_from_slice(&self.bytes());
        v.extend_from_slice(payload);
        v
    }

    /// Like [`Header::frame`], into `v` (cleared first; keeps its allocation).
    pub fn frame_into(&self, v: &mut Vec<u8>, payload: &[u8]) {
        v.clear();
        v.extend_from_slice(&self.bytes());
        v.extend_from_slice(payload);
    }

    /// Check `msg` from `peer` has this header and `payload_bytes` of payload;
    /// return the payload.
    pub fn open<'m>(
        &self,
        rank: usize,
        peer: usize,
        msg: &'m [u8],
        payload_bytes: usize,
    ) -> Result<&'m [u8]> {
        let Some((h, payload)) = msg.split_first_chunk::<HEADER>() else {
            return Err(CollectiveError::Protocol {
                peer,
                reason: format!("{} bytes, shorter than a header", msg.len()),
            }
            .into());
        };
        let mine = self.bytes();
        let mismatch = |field, m: String, t: String| -> Error {
            CollectiveError::Mismatch {
                field,
                rank,
                peer,
                mine: m,
                theirs: t,
            }
            .into()
        };
        if h[0] != mine[0] {
            return Err(mismatch(
                "operation",
                OpKind::name(mine[0]),
                OpKind::name(h[0]),
            ));
        }
        if h[1] != mine[1] {
            return Err(mismatch("dtype", dtype_name(mine[1]), dtype_name(h[1])));
        }
        if h[2] != mine[2] {
            return Err(mismatch("reduce op", op_name(mine[2]), op_name(h[2])));
        }
        if h[8..16] != mine[8..16] {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[8..16]);
            return Err(mismatch(
                "element count",
                self.len.to_string(),
                u64::from_le_bytes(b).to_string(),
            ));
        }
        if payload.len() != payload_bytes {
            return Err(CollectiveError::Protocol {
                peer,
                reason: format!(
                    "payload of {} bytes, expected {payload_bytes}",
                    payload.len()
                ),
            }
            .into());
        }
        Ok(payload)
    }
}
