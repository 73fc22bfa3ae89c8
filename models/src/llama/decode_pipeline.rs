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

use hetero_core::{Error, Result};

use super::line::{Line, StageBusy};
use super::model::{KvCache, LlamaModel, Logits};

/// The sampler of [`LlamaModel::decode_pipelined`]: `(group, sequences,
/// their logits)` to each sequence's next token, `None` when it is done.
pub type PickFn<'a> = dyn FnMut(usize, &[usize], Vec<Vec<f32>>) -> Vec<Option<u32>> + 'a;

impl LlamaModel {
    /// Decode `caches` (each already holding its prompt but its last
    /// token) starting from `next[i]`, in `groups` (ranges of sequence
    /// indices) circulating through the stages. After each step of a
    /// group, `pick(group, seqs, logits)` returns, per sequence of `seqs`
    /// (logits in the same order), its next token or `None` when it is
    /// done; a group ends when all its sequences are. Every cache advances
    /// by the tokens it was fed, also when the call fails part way.
    /// Returns how much each of this process's stages worked
    /// ([`Line::stage_busy`]).
    pub fn decode_pipelined(
        &self,
        caches: &mut [KvCache],
        next: &[u32],
        groups: &[Range<usize>],
        pick: &mut PickFn<'_>,
    ) -> Result<Vec<StageBusy>> {
        self.check_whole()?;
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
        // The caches travel with their group's batches (see `line.rs`);
        // each is back in its place when the call returns.
        let mut held: Vec<Option<KvCache>> = caches
            .iter_mut()
            .map(|c| Some(std::mem::replace(c, KvCache::detached())))
            .collect();
        let room = |c: &KvCache| c.len < c.max_len;
        let result = self.with_line(|line| -> Result<Vec<StageBusy>> {
            let mut members: Vec<Vec<usize>> = vec![Vec::new(); groups.len()];
            // Group g's sequences `seqs` (all held here) with their next ids.
            let send = |line: &mut Line<'_>,
                        held: &mut [Option<KvCache>],
                        g: usize,
                        seqs: &[usize],
                        ids: Vec<u32>| {
                let batch = seqs.iter().filter_map(|&i| held[i].take()).collect();
                let tokens: Vec<&[u32]> = ids.chunks(1).collect();
                line.send(g as u64, batch, &tokens, Logits::Last);
            };
            for (g, range) in groups.iter().enumerate() {
                let seqs: Vec<usize> = range
                    .clone()
                    .filter(|&i| held[i].as_ref().is_some_and(room))
                    .collect();
                if !seqs.is_empty() {
                    let ids = seqs.iter().map(|&i| next[i]).collect();
                    send(line, &mut held, g, &seqs, ids);
                    members[g] = seqs;
                }
            }
            let mut failed = None;
            while let Some(landed) = line.recv() {
                let g = landed.tag as usize;
                let Some(seqs) = members.get_mut(g).map(std::mem::take) else {
                    failed.get_or_insert(Error::invalid("pipelined decode", "lost a group"));
                    continue;
                };
                for (&i, cache) in seqs.iter().zip(landed.caches) {
                    held[i] = Some(cache);
                }
                let rows = match landed.logits {
                    Ok(rows) if failed.is_none() => rows,
                    Ok(_) => continue,
                    Err(e) => {
                        failed.get_or_insert(e);
                        continue;
                    }
                };
                let picks = pick(g, &seqs, rows);
                let (mut again, mut ids) = (Vec::new(), Vec::new());
                for (&i, p) in seqs.iter().zip(picks) {
                    if let Some(id) = p
                        && held[i].as_ref().is_some_and(room)
                    {
                        again.push(i);
                        ids.push(id);
                    }
                }
                if !again.is_empty() {
                    send(line, &mut held, g, &again, ids);
                    members[g] = again;
                }
            }
            failed.map_or_else(|| Ok(line.stage_busy()), Err)
        });
        for (cache, back) in caches.iter_mut().zip(held) {
            if let Some(back) = back {
                *cache = back;
            }
        }
        result?
    }
}
