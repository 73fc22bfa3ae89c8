//! Decoding through a split model with every stage busy.
//!
//! One forward call cuts its batch into micro-batches, but a decode step
//! cannot start before the previous one's tokens are sampled, so within a
//! call the pipeline fills and drains every step: with `S` stages at most
//! `S / (2S - 1)` of the devices' time is used. Here the sequences are
//! grouped and the groups circulate: while stage 1 runs group A's step `t`,
//! stage 0 already runs group B's step `t` (or A's `t + 1`, once A's
//! tokens are sampled), as pipeline-parallel servers (vLLM's virtual
//! engines, Petals) keep several micro-batches in flight. With as many
//! groups as stages every stage works all the time, bar imbalance.
//!
//! The caller samples: `pick` gets a group's logits (one row per running
//! sequence) on the calling thread and says each sequence's next token, or
//! that it is done.

use std::ops::Range;
use std::sync::mpsc;

use hetero_core::{Error, Result};

use super::forward::{Micro, SeqKv};
use super::model::{KvCache, LlamaModel, Logits};
use super::remote::SeqStep;

/// The sampler of [`LlamaModel::decode_pipelined`]: `(group, sequences,
/// their logits)` to each sequence's next token, `None` when it is done.
pub type PickFn<'a> = dyn FnMut(usize, &[usize], Vec<Vec<f32>>) -> Vec<Option<u32>> + 'a;

/// What a stage thread receives: a group's sequences (indices into the
/// caches) and its input (token ids for the first stage, hidden states
/// for the others).
struct Work {
    group: usize,
    seqs: Vec<usize>,
    ids: Vec<u32>,
    hidden: Option<Vec<f32>>,
}

impl LlamaModel {
    /// Decode `caches` (each already holding its prompt but its last
    /// token) starting from `next[i]`, in `groups` (ranges of sequence
    /// indices) circulating through the stages. After each step of a
    /// group, `pick(group, seqs, logits)` returns, per sequence of `seqs`
    /// (logits in the same order), its next token or `None` when it is
    /// done; a group ends when all its sequences are. Every cache advances
    /// by the tokens it was fed, also when the call fails part way.
    pub fn decode_pipelined(
        &self,
        caches: &mut [KvCache],
        next: &[u32],
        groups: &[Range<usize>],
        pick: &mut PickFn<'_>,
    ) -> Result<()> {
        if !self.is_whole() {
            return Err(Error::invalid(
                "model",
                "is a part; decode needs the whole model",
            ));
        }
        if next.len() != caches.len() {
            return Err(Error::invalid(
                "next tokens",
                format!("{} for {} caches", next.len(), caches.len()),
            ));
        }
        let mut covered = vec![false; caches.len()];
        for g in groups {
            for i in g.clone() {
                if i >= caches.len() || std::mem::replace(&mut covered[i], true) {
                    return Err(Error::invalid(
                        "decode groups",
                        format!(
                            "{g:?} overlaps another group or passes the {} caches",
                            caches.len()
                        ),
                    ));
                }
            }
        }
        let stages = self.stages.len();
        let ids: Vec<u64> = caches.iter().map(|c| c.id).collect();
        let lens: Vec<usize> = caches.iter().map(|c| c.len).collect();
        let maxes: Vec<usize> = caches.iter().map(|c| c.max_len).collect();
        let mut fed = vec![0usize; caches.len()];
        // Each stage's layers of every cache; each stage advances its
        // own copy of a cache's length.
        let mut kv = self.split_caches(caches.iter_mut(), std::iter::repeat(1));
        let result = std::thread::scope(|scope| -> Result<()> {
            let (first_tx, mut input) = mpsc::channel::<Work>();
            let (out_tx, out_rx) = mpsc::channel::<(Work, Vec<f32>)>();
            let mut handles = Vec::with_capacity(stages + 2);
            // Only the thread that hands out logits holds `out_tx`, so the
            // loop below sees the line closed as soon as it stops.
            let mut out_tx = Some(out_tx);
            for (s, kv_s) in kv.iter_mut().enumerate() {
                let (tx, rx) = mpsc::channel::<Work>();
                let from = std::mem::replace(&mut input, rx);
                let last = s + 1 == stages && self.tail.is_none();
                let out_tx = if last { out_tx.take() } else { None };
                handles.push(scope.spawn(move || -> Result<()> {
                    for mut work in from {
                        let out = self.stage_step(s, &mut work, kv_s)?;
                        if let Some(out_tx) = &out_tx {
                            if out_tx.send((work, out)).is_err() {
                                break;
                            }
                        } else if tx
                            .send(Work {
                                hidden: Some(out),
                                ..work
                            })
                            .is_err()
                        {
                            break;
                        }
                    }
                    Ok(())
                }));
            }
            if let (Some(tail), Some(out_tx)) = (&self.tail, out_tx.take()) {
                // The stages of other processes: one thread sends each
                // group's step down the line, another takes the answers in
                // the same order.
                let from = std::mem::replace(&mut input, mpsc::channel().1);
                let (sent_tx, sent_rx) = mpsc::channel::<(u64, Work)>();
                let (ids, maxes) = (&ids, &maxes);
                let mut tail_lens = lens.clone();
                handles.push(scope.spawn(move || -> Result<()> {
                    for mut work in from {
                        let steps = work
                            .seqs
                            .iter()
                            .map(|&i| SeqStep {
                                id: ids[i],
                                len: tail_lens[i],
                                n: 1,
                                max_len: maxes[i],
                            })
                            .collect();
                        let hidden = work.hidden.take().unwrap_or_default();
                        let tag = tail.send_step(steps, Logits::Last, &hidden)?;
                        for &i in &work.seqs {
                            tail_lens[i] += 1;
                        }
                        if sent_tx.send((tag, work)).is_err() {
                            break;
                        }
                    }
                    Ok(())
                }));
                handles.push(scope.spawn(move || -> Result<()> {
                    for (tag, work) in sent_rx {
                        let out = tail.recv_out(tag)?;
                        if out_tx.send((work, out)).is_err() {
                            break;
                        }
                    }
                    Ok(())
                }));
            }
            drop(out_tx);
            drop(input);
            let mut running = 0;
            for (g, range) in groups.iter().enumerate() {
                let seqs: Vec<usize> = range.clone().filter(|&i| lens[i] < maxes[i]).collect();
                if seqs.is_empty() {
                    continue;
                }
                let ids = seqs.iter().map(|&i| next[i]).collect();
                running += 1;
                let _ = first_tx.send(Work {
                    group: g,
                    seqs,
                    ids,
                    hidden: None,
                });
            }
            let mut failed = None;
            while running > 0 {
                let Ok((work, logits)) = out_rx.recv() else {
                    failed = Some(Error::invalid(
                        "pipelined decode",
                        "a stage stopped before the groups were done",
                    ));
                    break;
                };
                for &i in &work.seqs {
                    fed[i] += 1;
                }
                let vocab = self.config.vocab;
                let rows: Vec<Vec<f32>> = logits.chunks(vocab).map(<[f32]>::to_vec).collect();
                let picks = pick(work.group, &work.seqs, rows);
                let mut seqs = Vec::new();
                let mut ids = Vec::new();
                for (&i, p) in work.seqs.iter().zip(picks) {
                    if let Some(id) = p
                        && lens[i] + fed[i] < maxes[i]
                    {
                        seqs.push(i);
                        ids.push(id);
                    }
                }
                if seqs.is_empty() {
                    running -= 1;
                } else {
                    let _ = first_tx.send(Work {
                        group: work.group,
                        seqs,
                        ids,
                        hidden: None,
                    });
                }
            }
            drop(first_tx);
            let mut first_err = None;
            for h in handles {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(Error::invalid("model stage", "its thread panicked")));
                if let (Err(e), None) = (r, &first_err) {
                    first_err = Some(e);
                }
            }
            match first_err.or(failed) {
                Some(e) => Err(e),
                None => Ok(()),
            }
        });
        drop(kv);
        for (cache, n) in caches.iter_mut().zip(fed) {
            cache.len += n;
        }
        result
    }

    /// Stage `s` on one group's step: its sequences' caches in this
    /// stage, advanced by one position each.
    fn stage_step(&self, s: usize, work: &mut Work, kv_s: &mut [SeqKv<'_>]) -> Result<Vec<f32>> {
        let mut picked: Vec<SeqKv<'_>> = Vec::with_capacity(work.seqs.len());
        let mut wanted = work.seqs.iter().peekable();
        for (i, seq) in kv_s.iter_mut().enumerate() {
            if wanted.peek() == Some(&&i) {
                wanted.next();
                picked.push(SeqKv {
                    k: &mut *seq.k,
                    v: &mut *seq.v,
                    len: seq.len,
                    max_len: seq.max_len,
                    n: 1,
                });
            }
        }
        let micro = Micro {
            seqs: 0..picked.len(),
            ids: work.ids.clone(),
            positions: picked.iter().map(|q| q.len as u32).collect(),
            offsets: (0..picked.len()).collect(),
            rows: picked.len(),
        };
        let out = self.run_stage(s, &micro, work.hidden.take(), &mut picked, Logits::Last)?;
        drop(picked);
        for &i in &work.seqs {
            kv_s[i].len += 1;
        }
        Ok(out)
    }
}
