//! Stages of a split model in other processes: one stage per rank, the
//! hidden states passed from rank to rank over a point-to-point link.
//!
//! Rank 0 holds the embedding and the first layers (on one or more of its
//! own devices) and does the sampling; ranks `1..R` each hold the next
//! consecutive layers, the last one also the output norm and head. A call
//! goes down the line `0 -> 1 -> ... -> R-1` and the last rank sends the
//! logits back to rank 0. Each rank keeps the KV caches of its own layers,
//! keyed by the id of the sequence's [`KvCache`] on rank 0, so only the
//! hidden state of the new rows crosses a link (`rows x hidden` f32, 2.3
//! KiB per token for SmolLM2-135M).
//!
//! The link is any [`StagePeer`]: this crate knows no transport (the
//! scheduler adapts `hetero_collectives`' TCP and shared-memory
//! transports). Messages between two ranks arrive in the order sent, so
//! a rank needs no reordering, and several calls may be in flight at once:
//! rank 0 keeps up to one micro-batch per stage on the line, as within one
//! process.
//!
//! A message is a little-endian `u32` header length, the header (JSON: a
//! few hundred bytes next to the step it describes) and the payload (f32,
//! little-endian). Every step carries a tag; rank 0 drops an answer whose
//! tag it no longer waits for (a call that failed part way), so a failure
//! never shifts later answers.
//!
//! Failure: a rank whose step fails passes a `Failed` message down the
//! line instead of its output, and rank 0's call fails naming the rank;
//! the ranks go on serving. A rank that dies closes its connections: its
//! neighbours' receives fail at once (`PeerFailure`), each rank that loses
//! its predecessor stops with an error naming it, and rank 0 learns it
//! from the last rank's closed link, or at worst after the link's timeout.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hetero_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::model::{KvCache, LlamaModel, Logits};

/// One direction of the link between two stage processes.
pub trait StagePeer: Send + Sync {
    /// Queue `message` for the peer (returns without waiting for it).
    fn send(&self, message: Vec<u8>) -> Result<()>;
    /// The peer's next message, waiting at most the link's timeout:
    /// `Error::Timeout` when nothing came, `Error::PeerFailure` when the
    /// peer is gone.
    fn recv(&self) -> Result<Vec<u8>>;
    /// Wait until every message sent has been handed to the medium.
    fn flush(&self) -> Result<()>;
    /// Who the peer is ("rank 2").
    fn describe(&self) -> String;
}

/// What a stage in another process holds, as it reports it to rank 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteStage {
    pub rank: usize,
    /// The device's id there ("host:0").
    pub device: String,
    pub device_name: String,
    pub layers: Range<usize>,
    pub weight_bytes: u64,
}

/// One sequence's part of a step: positions `len..len + n` of cache `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SeqStep {
    pub(super) id: u64,
    pub(super) len: usize,
    pub(super) n: usize,
    pub(super) max_len: usize,
}

/// The header of a message on the line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Header {
    /// Run these sequences' new rows (the payload: their hidden state).
    Step {
        tag: u64,
        seqs: Vec<SeqStep>,
        all_rows: bool,
        /// Caches rank 0 dropped since its last message.
        freed: Vec<u64>,
    },
    /// Put the first `n` positions of cache `from` into cache `to`
    /// (prefix caching); no answer.
    Copy {
        from: u64,
        to: u64,
        n: usize,
        max_len: usize,
        freed: Vec<u64>,
    },
    /// The last rank's logits for step `tag` (the payload).
    Out { tag: u64 },
    /// Step `tag` failed on `rank`.
    Failed {
        tag: u64,
        rank: usize,
        device: String,
        message: String,
    },
    /// End of the pipeline: every rank passes it on and returns.
    Stop,
    /// `rank` lost its predecessor (which died): the line is broken, every
    /// rank passes it on and stops, and rank 0's call fails with it.
    Lost { rank: usize, message: String },
}

fn encode(header: &Header, payload: &[f32]) -> Result<Vec<u8>> {
    let json =
        serde_json::to_vec(header).map_err(|e| Error::invalid("stage message", e.to_string()))?;
    let len = u32::try_from(json.len())
        .map_err(|_| Error::invalid("stage message", "header past 4 GiB"))?;
    let mut out = Vec::with_capacity(4 + json.len() + payload.len() * 4);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&json);
    for v in payload {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

fn decode(bytes: &[u8], from: &str) -> Result<(Header, Vec<f32>)> {
    let bad = |reason: String| Error::invalid(format!("stage message from {from}"), reason);
    let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
        return Err(bad(format!(
            "{} bytes, shorter than its length",
            bytes.len()
        )));
    };
    let len = u32::from_le_bytes(*len) as usize;
    if len > rest.len() || !(rest.len() - len).is_multiple_of(4) {
        return Err(bad(format!(
            "a header of {len} bytes and a payload of {} bytes do not fit its {} bytes",
            rest.len().saturating_sub(len),
            bytes.len()
        )));
    }
    let (json, payload) = rest.split_at(len);
    let header: Header =
        serde_json::from_slice(json).map_err(|e| bad(format!("unreadable header: {e}")))?;
    let payload = payload
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((header, payload))
}

/// Rank 0's end of the line: the stages of the other ranks, in order.
pub struct RemoteTail {
    to_first: Arc<dyn StagePeer>,
    from_last: Arc<dyn StagePeer>,
    stages: Vec<RemoteStage>,
    /// Ids of caches dropped on rank 0, sent with the next message.
    pub(super) freed: Arc<Mutex<Vec<u64>>>,
    next_tag: AtomicU64,
    stopped: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for RemoteTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTail")
            .field("stages", &self.stages)
            .finish()
    }
}

impl RemoteTail {
    /// The line from rank 0 through `stages` (consecutive layers, in
    /// rank order, the last ending at the model's last layer): messages go
    /// to the first stage by `to_first` and come back from the last by
    /// `from_last`.
    pub fn new(
        to_first: Arc<dyn StagePeer>,
        from_last: Arc<dyn StagePeer>,
        stages: Vec<RemoteStage>,
    ) -> Result<Self> {
        if stages.is_empty() {
            return Err(Error::invalid("remote stages", "none given"));
        }
        for pair in stages.windows(2) {
            if pair[1].layers.start != pair[0].layers.end {
                return Err(Error::invalid(
                    format!("remote stage of rank {}", pair[1].rank),
                    format!(
                        "holds layers {:?} but rank {} ends at layer {}",
                        pair[1].layers, pair[0].rank, pair[0].layers.end
                    ),
                ));
            }
        }
        Ok(RemoteTail {
            to_first,
            from_last,
            stages,
            freed: Arc::new(Mutex::new(Vec::new())),
            next_tag: AtomicU64::new(0),
            stopped: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn stages(&self) -> &[RemoteStage] {
        &self.stages
    }

    /// The layers the remote stages hold together.
    pub fn layers(&self) -> Range<usize> {
        self.stages[0].layers.start..self.stages[self.stages.len() - 1].layers.end
    }

    fn take_freed(&self) -> Vec<u64> {
        self.freed
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default()
    }

    /// Send one step down the line; its tag, to wait for with
    /// [`recv_out`](Self::recv_out).
    pub(super) fn send_step(
        &self,
        seqs: Vec<SeqStep>,
        which: Logits,
        hidden: &[f32],
    ) -> Result<u64> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let header = Header::Step {
            tag,
            seqs,
            all_rows: which == Logits::All,
            freed: self.take_freed(),
        };
        self.to_first.send(encode(&header, hidden)?)?;
        Ok(tag)
    }

    /// The logits of step `tag`, dropping answers to older steps (of a
    /// call that failed before it read them).
    pub(super) fn recv_out(&self, tag: u64) -> Result<Vec<f32>> {
        let from = self.from_last.describe();
        loop {
            let (header, payload) = decode(&self.from_last.recv()?, &from)?;
            match header {
                Header::Lost { rank, message } => {
                    return Err(Error::PeerFailure {
                        rank,
                        reason: message,
                    });
                }
                Header::Out { tag: t } | Header::Failed { tag: t, .. } if t < tag => continue,
                Header::Out { tag: t } if t == tag => return Ok(payload),
                Header::Failed {
                    tag: t,
                    rank,
                    device,
                    message,
                } if t == tag => {
                    return Err(Error::invalid(
                        format!("model stage on rank {rank} ({device})"),
                        message,
                    ));
                }
                other => {
                    return Err(Error::invalid(
                        format!("stage message from {from}"),
                        format!("{other:?} while waiting for the answer to step {tag}"),
                    ));
                }
            }
        }
    }

    /// Tell every remote stage to copy a prefix of cache `from` into `to`.
    pub(super) fn copy(&self, from: u64, to: u64, n: usize, max_len: usize) -> Result<()> {
        let header = Header::Copy {
            from,
            to,
            n,
            max_len,
            freed: self.take_freed(),
        };
        self.to_first.send(encode(&header, &[])?)
    }

    /// End the pipeline: every remote stage returns from
    /// [`serve_stage`] once it has passed `Stop` on; this waits for it to
    /// come back from the last one (answers still on the line are dropped).
    pub(super) fn stop(&self) -> Result<()> {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.to_first.send(encode(&Header::Stop, &[])?)?;
        self.to_first.flush()?;
        let from = self.from_last.describe();
        loop {
            match decode(&self.from_last.recv()?, &from)?.0 {
                Header::Stop => return Ok(()),
                Header::Lost { rank, message } => {
                    return Err(Error::PeerFailure {
                        rank,
                        reason: message,
                    });
                }
                _ => {}
            }
        }
    }
}

impl Drop for RemoteTail {
    /// A model dropped without [`LlamaModel::stop_remote`] still tells the
    /// stages to stop (without waiting: a process that exits at once may
    /// lose the message, and its stages then stop on the closed link).
    fn drop(&mut self) {
        if !self.stopped.swap(true, Ordering::AcqRel)
            && let Ok(stop) = encode(&Header::Stop, &[])
        {
            let _ = self.to_first.send(stop);
        }
    }
}

/// What a stage process did before it was told to stop.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StageStats {
    pub steps: u64,
    pub failed_steps: u64,
    pub rows: u64,
    /// Caches held when it stopped.
    pub caches_left: usize,
}

impl LlamaModel {
    /// Run this part of a model as one stage of a pipeline over processes:
    /// take steps from `prev`, run them through the layers held (with a KV
    /// cache per sequence, created when a sequence first comes), and pass
    /// the hidden state to `next` (the logits, from the part with the
    /// head). Idle time is not an error: it waits until `Stop` comes down
    /// the line (`Ok`) or `prev` is gone (the error names it). `rank` and
    /// the device name label failures sent on.
    pub fn serve_stage(
        &self,
        rank: usize,
        prev: &dyn StagePeer,
        next: &dyn StagePeer,
    ) -> Result<StageStats> {
        if self.embedding.is_some() {
            return Err(Error::invalid(
                "model part",
                "holds the embedding: it runs on rank 0, which feeds the line",
            ));
        }
        let device = self.device().id().to_string();
        let from = prev.describe();
        let mut caches: HashMap<u64, KvCache> = HashMap::new();
        // Caches whose prefix copy failed: the reason, for their next step.
        let mut broken: HashMap<u64, String> = HashMap::new();
        let mut stats = StageStats::default();
        loop {
            let bytes = match prev.recv() {
                Ok(b) => b,
                Err(Error::Timeout { .. }) => continue,
                Err(e) => {
                    let message = format!("lost {from} before the pipeline was stopped: {e}");
                    // Tell the rest of the line (rank 0 last) why it ends.
                    if let Ok(lost) = encode(
                        &Header::Lost {
                            rank,
                            message: message.clone(),
                        },
                        &[],
                    ) && next.send(lost).is_ok()
                    {
                        let _ = next.flush();
                    }
                    return Err(Error::invalid(
                        format!("model stage on rank {rank}"),
                        message,
                    ));
                }
            };
            let (header, hidden) = decode(&bytes, &from)?;
            match header {
                Header::Step {
                    tag,
                    seqs,
                    all_rows,
                    freed,
                } => {
                    for id in &freed {
                        caches.remove(id);
                        broken.remove(id);
                    }
                    let which = if all_rows { Logits::All } else { Logits::Last };
                    stats.steps += 1;
                    stats.rows += seqs.iter().map(|s| s.n as u64).sum::<u64>();
                    let out = self.stage_step_remote(&mut caches, &broken, &seqs, hidden, which);
                    let message = match out {
                        Ok(out) if self.head.is_some() => encode(&Header::Out { tag }, &out)?,
                        Ok(out) => encode(
                            &Header::Step {
                                tag,
                                seqs,
                                all_rows,
                                freed,
                            },
                            &out,
                        )?,
                        Err(e) => {
                            stats.failed_steps += 1;
                            encode(
                                &Header::Failed {
                                    tag,
                                    rank,
                                    device: device.clone(),
                                    message: e.to_string(),
                                },
                                &[],
                            )?
                        }
                    };
                    next.send(message)?;
                }
                Header::Copy {
                    from: src,
                    to,
                    n,
                    max_len,
                    freed,
                } => {
                    for id in &freed {
                        caches.remove(id);
                        broken.remove(id);
                    }
                    broken.remove(&to);
                    if let Err(e) = self.copy_remote(&mut caches, src, to, n, max_len) {
                        broken.insert(to, e.to_string());
                    }
                    if self.head.is_none() {
                        next.send(encode(
                            &Header::Copy {
                                from: src,
                                to,
                                n,
                                max_len,
                                freed,
                            },
                            &[],
                        )?)?;
                    }
                }
                failed @ Header::Failed { .. } => next.send(encode(&failed, &[])?)?,
                Header::Lost {
                    rank: lost_at,
                    message,
                } => {
                    next.send(encode(
                        &Header::Lost {
                            rank: lost_at,
                            message: message.clone(),
                        },
                        &[],
                    )?)?;
                    let _ = next.flush();
                    return Err(Error::PeerFailure {
                        rank: lost_at,
                        reason: message,
                    });
                }
                Header::Stop => {
                    next.send(encode(&Header::Stop, &[])?)?;
                    next.flush()?;
                    stats.caches_left = caches.len();
                    return Ok(stats);
                }
                Header::Out { tag } => {
                    return Err(Error::invalid(
                        format!("stage message from {from}"),
                        format!(
                            "logits of step {tag} came down the line; only the last rank sends them, to rank 0"
                        ),
                    ));
                }
            }
        }
    }

    /// The cache of sequence `id` holding exactly `len` positions (an
    /// older, longer one is cut back: rank 0 reused or cleared it).
    fn remote_cache<'c>(
        &self,
        caches: &'c mut HashMap<u64, KvCache>,
        id: u64,
        len: usize,
        max_len: usize,
    ) -> Result<&'c mut KvCache> {
        if max_len > self.config.max_positions {
            return Err(Error::invalid(
                format!("sequence {id}"),
                format!(
                    "asks for {max_len} positions, past the model's {}",
                    self.config.max_positions
                ),
            ));
        }
        let cache = match caches.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.new_cache(max_len)?),
        };
        if cache.max_len != max_len || cache.len < len {
            return Err(Error::invalid(
                format!("sequence {id}"),
                format!(
                    "starts at position {len} of {max_len}, but this stage holds {} of {}",
                    cache.len, cache.max_len
                ),
            ));
        }
        cache.len = len;
        Ok(cache)
    }

    fn stage_step_remote(
        &self,
        caches: &mut HashMap<u64, KvCache>,
        broken: &HashMap<u64, String>,
        seqs: &[SeqStep],
        hidden: Vec<f32>,
        which: Logits,
    ) -> Result<Vec<f32>> {
        for s in seqs {
            if let Some(reason) = broken.get(&s.id) {
                return Err(Error::invalid(
                    format!("sequence {}", s.id),
                    format!("its prefix copy failed: {reason}"),
                ));
            }
            self.remote_cache(caches, s.id, s.len, s.max_len)?;
        }
        // Distinct ids, so the caches can be borrowed together.
        let mut seen = std::collections::HashSet::new();
        if !seqs.iter().all(|s| seen.insert(s.id)) {
            return Err(Error::invalid("step", "names a sequence twice"));
        }
        let mut picked: Vec<(u64, &mut KvCache)> = caches
            .iter_mut()
            .filter(|(id, _)| seen.contains(id))
            .map(|(&id, c)| (id, c))
            .collect();
        let order: HashMap<u64, usize> = seqs.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
        picked.sort_by_key(|(id, _)| order[id]);
        let mut batch: Vec<(&mut KvCache, usize)> = picked
            .into_iter()
            .zip(seqs)
            .map(|((_, c), s)| (c, s.n))
            .collect();
        self.forward_hidden(&mut batch, hidden, which)
    }

    fn copy_remote(
        &self,
        caches: &mut HashMap<u64, KvCache>,
        from: u64,
        to: u64,
        n: usize,
        max_len: usize,
    ) -> Result<()> {
        self.remote_cache(caches, to, 0, max_len)?;
        let mut target = caches
            .remove(&to)
            .ok_or_else(|| Error::invalid(format!("sequence {to}"), "has no cache"))?;
        let result = match caches.get(&from) {
            Some(source) => self.copy_prefix(source, n, &mut target),
            None => Err(Error::invalid(
                format!("sequence {from}"),
                "has no cache on this stage to copy a prefix from",
            )),
        };
        caches.insert(to, target);
        result
    }
}

/// Ids for rank 0's caches, unique within the process.
pub(super) fn next_cache_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let h = Header::Step {
            tag: 7,
            seqs: vec![SeqStep {
                id: 3,
                len: 5,
                n: 2,
                max_len: 64,
            }],
            all_rows: true,
            freed: vec![1, 2],
        };
        let payload = [1.5f32, -2.0, 0.0, f32::MAX];
        let (back, p) = decode(&encode(&h, &payload).unwrap(), "test").unwrap();
        assert_eq!(back, h);
        assert_eq!(p, payload);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            vec![],
            vec![1, 0],
            vec![255, 255, 255, 255, 1],
            vec![2, 0, 0, 0, b'{', b'}', 1],
            vec![2, 0, 0, 0, b'{', b'x'],
        ] {
            assert!(decode(&bytes, "test").is_err(), "{bytes:?}");
        }
    }
}
