//! The forward pass of a [`LlamaModel`], on one device or split by layers
//! over several.
//!
//! A call takes any number of sequences, each with any number of new
//! tokens after what its [`KvCache`] holds: a prompt is one call of all its
//! tokens (every GEMM over all of them at once), a decode step one token
//! per sequence, and both may mix. The matrices run once over the rows of
//! every sequence together; attention runs per sequence over its own cache.
//!
//! A split model runs each stage on its own device. The sequences of a call
//! are cut into as many micro-batches as there are stages (of about equal
//! rows), and each stage runs on a thread of its own, taking micro-batch
//! `m` while the next stage takes `m - 1` (GPipe's schedule, forward only):
//! all devices are busy except while the pipeline fills and drains. The
//! activations of a micro-batch go from one stage's device to the next
//! through the host (the hidden state, `rows x hidden` f32), which every
//! backend supports.

use std::ops::Range;
use std::sync::mpsc;

use hetero_core::{
    Activation, AppendAttendSeq, AppendAttendSpec, BoxedBuffer, DType, DynBuffer, DynDevice,
    DynDeviceExt, Error, HostSlice, ReduceOp, Result, RopeSpec,
};

use super::model::{KvCache, LlamaModel, Logits};
use super::remote::SeqStep;

/// One sequence's keys and values in the layers of one stage.
pub(super) struct SeqKv<'a> {
    pub(super) k: &'a mut [BoxedBuffer],
    pub(super) v: &'a mut [BoxedBuffer],
    /// Positions cached before this call.
    pub(super) len: usize,
    /// New tokens in this call.
    pub(super) n: usize,
}

/// A run of consecutive sequences that go through the stages together.
pub(super) struct Micro {
    pub(super) seqs: Range<usize>,
    pub(super) ids: Vec<u32>,
    pub(super) positions: Vec<u32>,
    /// Row of each sequence's first new token, within the micro-batch.
    pub(super) offsets: Vec<usize>,
    pub(super) rows: usize,
}

/// Cut sequences with `news[i]` new tokens into at most `parts` runs of
/// about equal rows (every run non-empty).
fn cut(news: &[usize], parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, news.len().max(1));
    let total: usize = news.iter().sum();
    let mut runs = Vec::with_capacity(parts);
    let (mut start, mut acc) = (0, 0);
    for (i, &n) in news.iter().enumerate() {
        acc += n;
        let left_seqs = news.len() - i - 1;
        let left_runs = parts - runs.len() - 1;
        // Close the run once it holds its share of the rows, or when the
        // sequences left are just enough for the runs left.
        if left_runs > 0 && (acc * parts >= total * (runs.len() + 1) || left_seqs == left_runs) {
            runs.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < news.len() {
        runs.push(start..news.len());
    }
    runs
}

impl Micro {
    /// The micro-batch of `seqs` (each cache with its new tokens), as
    /// sequences `0..seqs.len()`.
    pub(super) fn of<'a>(seqs: impl Iterator<Item = (&'a KvCache, &'a [u32])>) -> Micro {
        let mut ids = Vec::new();
        let mut micro = Micro::of_rows(seqs.map(|(cache, tokens)| {
            ids.extend_from_slice(tokens);
            (cache, tokens.len())
        }));
        micro.ids = ids;
        micro
    }

    /// The micro-batch of `seqs` (each cache with its number of new rows),
    /// as sequences `0..seqs.len()`, without token ids (a part that takes
    /// hidden states, or a caller that sets them).
    pub(super) fn of_rows<'a>(seqs: impl Iterator<Item = (&'a KvCache, usize)>) -> Micro {
        let mut micro = Micro {
            seqs: 0..0,
            ids: Vec::new(),
            positions: Vec::new(),
            offsets: Vec::new(),
            rows: 0,
        };
        for (cache, n) in seqs {
            micro.seqs.end += 1;
            micro.offsets.push(micro.rows);
            micro.rows += n;
            micro
                .positions
                .extend((cache.len..cache.len + n).map(|p| p as u32));
        }
        micro
    }
}

impl LlamaModel {
    /// An error unless the model runs from tokens to logits.
    pub(super) fn check_whole(&self) -> Result<()> {
        if self.is_whole() {
            return Ok(());
        }
        Err(Error::invalid(
            "model",
            format!(
                "holds layers {:?} of {} only: a part runs as one stage of a pipeline, \
                 not from tokens to logits",
                self.layers_held(),
                self.config.layers
            ),
        ))
    }

    /// Why sequence `i` (`tokens` after what `cache` holds) cannot run,
    /// if it cannot.
    pub(super) fn check_new_tokens(&self, i: usize, cache: &KvCache, tokens: &[u32]) -> Result<()> {
        let c = &self.config;
        if tokens.is_empty() {
            return Err(Error::invalid(format!("sequence {i}"), "has no new tokens"));
        }
        if cache.k.len() != self.layers.len() {
            return Err(Error::invalid(
                format!("sequence {i} cache"),
                "belongs to another model",
            ));
        }
        if cache.len + tokens.len() > cache.max_len {
            return Err(Error::invalid(
                format!("sequence {i}"),
                format!(
                    "{} cached + {} new positions exceed its KV cache of {}",
                    cache.len,
                    tokens.len(),
                    cache.max_len
                ),
            ));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(Error::invalid(
                format!("sequence {i} tokens"),
                format!("id {bad} is past the vocabulary of {}", c.vocab),
            ));
        }
        Ok(())
    }

    /// The last stage's output of micro-batch `m` (`news[j]` new rows of
    /// its `j`-th sequence) cut into each sequence's logits.
    pub(super) fn logits_per_sequence(
        &self,
        m: &Micro,
        news: &[usize],
        all: Vec<f32>,
        which: Logits,
    ) -> Vec<Vec<f32>> {
        let vocab = self.config.vocab;
        match which {
            Logits::Last => all.chunks(vocab).map(<[f32]>::to_vec).collect(),
            Logits::All => m
                .offsets
                .iter()
                .zip(news)
                .map(|(&r0, &n)| all[r0 * vocab..(r0 + n) * vocab].to_vec())
                .collect(),
        }
    }

    /// Each stage's layers of every cache (with `news[i]` new tokens for
    /// cache `i`), borrowed apart so the stages can run at once:
    /// `[stage][sequence]`.
    pub(super) fn split_caches<'c>(
        &self,
        caches: impl Iterator<Item = &'c mut KvCache>,
        news: impl Iterator<Item = usize>,
    ) -> Vec<Vec<SeqKv<'c>>> {
        let mut kv: Vec<Vec<SeqKv<'c>>> = self.stages.iter().map(|_| Vec::new()).collect();
        for (cache, n) in caches.zip(news) {
            let len = cache.len;
            let (mut k, mut v) = (&mut cache.k[..], &mut cache.v[..]);
            for (s, stage) in self.stages.iter().enumerate() {
                let (ks, k_rest) = std::mem::take(&mut k).split_at_mut(stage.layers.len());
                let (vs, v_rest) = std::mem::take(&mut v).split_at_mut(stage.layers.len());
                (k, v) = (k_rest, v_rest);
                kv[s].push(SeqKv {
                    k: ks,
                    v: vs,
                    len,
                    n,
                });
            }
        }
        kv
    }

    /// Run several sequences at once, each with its new tokens; per
    /// sequence, the logits of the rows `which` asks for. Caches are
    /// advanced only if the whole call succeeds.
    pub fn forward_batch(
        &self,
        seqs: &mut [(&mut KvCache, &[u32])],
        which: Logits,
    ) -> Result<Vec<Vec<f32>>> {
        self.check_whole()?;
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        for (i, (cache, tokens)) in seqs.iter().enumerate() {
            self.check_new_tokens(i, cache, tokens)?;
        }
        let news: Vec<usize> = seqs.iter().map(|(_, t)| t.len()).collect();
        // Each sequence's step for the stages of other processes.
        let steps: Vec<SeqStep> = seqs
            .iter()
            .map(|(c, t)| SeqStep {
                id: c.id,
                len: c.len,
                n: t.len(),
                max_len: c.max_len,
            })
            .collect();
        let parts = if self.pipeline_len() > 1 {
            self.micro_batches
        } else {
            1
        };
        let micros: Vec<Micro> = cut(&news, parts)
            .into_iter()
            .map(|run| {
                let mut micro = Micro::of(seqs[run.clone()].iter().map(|(c, t)| (&**c, *t)));
                micro.seqs = run;
                micro
            })
            .collect();

        let mut kv =
            self.split_caches(seqs.iter_mut().map(|(c, _)| &mut **c), news.iter().copied());

        let outs = if self.pipeline_len() == 1 || micros.len() == 1 {
            let mut outs = Vec::with_capacity(micros.len());
            for m in &micros {
                let mut x = None;
                for (s, kv_s) in kv.iter_mut().enumerate() {
                    x = Some(self.run_stage(s, m, x, &mut kv_s[m.seqs.clone()], which)?);
                }
                if let Some(tail) = &self.tail {
                    let tag = tail.send_step(
                        steps[m.seqs.clone()].to_vec(),
                        which,
                        &x.unwrap_or_default(),
                    )?;
                    x = Some(tail.recv_out(tag)?);
                }
                outs.push(x.unwrap_or_default());
            }
            outs
        } else {
            self.run_pipelined(&micros, &mut kv, &steps, which)?
        };
        drop(kv);
        for (cache, tokens) in seqs.iter_mut() {
            cache.len += tokens.len();
        }

        let mut logits = Vec::with_capacity(seqs.len());
        for (m, all) in micros.iter().zip(outs) {
            logits.extend(self.logits_per_sequence(m, &news[m.seqs.clone()], all, which));
        }
        Ok(logits)
    }

    /// Every stage on a thread of its own, micro-batches passed down the
    /// line; the last stage's outputs in micro-batch order. The first
    /// failing stage's error is returned (a stage whose input stops
    /// because an earlier one failed fails too, after it).
    fn run_pipelined(
        &self,
        micros: &[Micro],
        kv: &mut [Vec<SeqKv<'_>>],
        steps: &[SeqStep],
        which: Logits,
    ) -> Result<Vec<Vec<f32>>> {
        let last = self.stages.len() - 1;
        std::thread::scope(|scope| {
            let mut handles = Vec::with_capacity(kv.len() + 2);
            let mut input: Option<mpsc::Receiver<Vec<f32>>> = None;
            for (s, kv_s) in kv.iter_mut().enumerate() {
                let (tx, rx) = if s < last || self.tail.is_some() {
                    let (tx, rx) = mpsc::channel();
                    (Some(tx), Some(rx))
                } else {
                    (None, None)
                };
                let from = std::mem::replace(&mut input, rx);
                handles.push(scope.spawn(move || -> Result<Vec<Vec<f32>>> {
                    let mut outs = Vec::new();
                    for m in micros {
                        let x = match &from {
                            None => None,
                            Some(rx) => Some(rx.recv().map_err(|_| {
                                Error::invalid(
                                    format!("model stage {s}"),
                                    "got no input: an earlier stage failed",
                                )
                            })?),
                        };
                        let out = self.run_stage(s, m, x, &mut kv_s[m.seqs.clone()], which)?;
                        match &tx {
                            // A later stage that failed has hung up; its
                            // error is the one returned.
                            Some(tx) => drop(tx.send(out)),
                            None => outs.push(out),
                        }
                    }
                    Ok(outs)
                }));
            }
            if let (Some(tail), Some(from)) = (&self.tail, input) {
                // Two threads: one sends each micro-batch down the line as
                // it comes, the other takes the answers in the same order,
                // so the other processes' stages overlap as these do.
                let (sent_tx, sent_rx) = mpsc::channel::<u64>();
                handles.push(scope.spawn(move || -> Result<Vec<Vec<f32>>> {
                    for m in micros {
                        let x = from.recv().map_err(|_| {
                            Error::invalid("remote stages", "got no input: an earlier stage failed")
                        })?;
                        let tag = tail.send_step(steps[m.seqs.clone()].to_vec(), which, &x)?;
                        if sent_tx.send(tag).is_err() {
                            break;
                        }
                    }
                    Ok(Vec::new())
                }));
                handles.push(scope.spawn(move || -> Result<Vec<Vec<f32>>> {
                    let mut outs = Vec::with_capacity(micros.len());
                    for tag in sent_rx {
                        outs.push(tail.recv_out(tag)?);
                    }
                    if outs.len() < micros.len() {
                        return Err(Error::invalid(
                            "remote stages",
                            "got no input: an earlier stage failed",
                        ));
                    }
                    Ok(outs)
                }));
            }
            let mut results = Vec::with_capacity(handles.len());
            for h in handles {
                results.push(
                    h.join().unwrap_or_else(|_| {
                        Err(Error::invalid("model stage", "its thread panicked"))
                    }),
                );
            }
            let mut last_outs = Vec::new();
            for r in results {
                last_outs = r?;
            }
            Ok(last_outs)
        })
    }

    /// Run a part without the embedding (one stage of a pipeline over
    /// processes) on `hidden`, the hidden state of every new row of the
    /// sequences `seqs` (each cache with its number of new rows): the
    /// hidden state out, or the logits `which` asks for from a part with
    /// the head. Caches advance only if the call succeeds.
    pub(super) fn forward_hidden(
        &self,
        seqs: &mut [(&mut KvCache, usize)],
        hidden: Vec<f32>,
        which: Logits,
    ) -> Result<Vec<f32>> {
        let rows: usize = seqs.iter().map(|(_, n)| n).sum();
        if hidden.len() != rows * self.config.hidden {
            return Err(Error::invalid(
                "hidden state",
                format!(
                    "{} values for {rows} rows of {}",
                    hidden.len(),
                    self.config.hidden
                ),
            ));
        }
        for (i, (cache, n)) in seqs.iter().enumerate() {
            if *n == 0 || cache.len + n > cache.max_len || cache.k.len() != self.layers.len() {
                return Err(Error::invalid(
                    format!("sequence {i}"),
                    format!(
                        "{n} new rows after {} of a cache of {} positions",
                        cache.len, cache.max_len
                    ),
                ));
            }
        }
        let micro = Micro::of_rows(seqs.iter().map(|(cache, n)| (&**cache, *n)));
        let news: Vec<usize> = seqs.iter().map(|(_, n)| *n).collect();
        let mut x = Some(hidden);
        {
            let mut kv =
                self.split_caches(seqs.iter_mut().map(|(c, _)| &mut **c), news.into_iter());
            for (s, kv_s) in kv.iter_mut().enumerate() {
                x = Some(self.run_stage(s, &micro, x, kv_s, which)?);
            }
        }
        for (cache, n) in seqs.iter_mut() {
            cache.len += *n;
        }
        Ok(x.unwrap_or_default())
    }

    /// Stage `s` on micro-batch `m`: the embedding (first stage) or the
    /// previous stage's hidden state `x` (host f32) in; the hidden state
    /// (host f32) out, or from the last stage the logits of the rows
    /// `which` asks for.
    pub(super) fn run_stage(
        &self,
        s: usize,
        m: &Micro,
        x: Option<Vec<f32>>,
        kv: &mut [SeqKv<'_>],
        which: Logits,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let stage = &self.stages[s];
        let d: &dyn DynDevice = stage.device.as_ref();
        let rows = m.rows;
        let h = c.hidden;
        let mut x = match x {
            None => {
                let embedding = self.embedding.as_ref().ok_or_else(|| {
                    Error::invalid("model part", "has no embedding: give it hidden states")
                })?;
                let mut x = d.alloc(DType::F32, rows * h)?;
                embedding.gather(d, &m.ids, x.as_mut())?;
                x
            }
            Some(host) => d.alloc_from(HostSlice::new(&host))?,
        };
        let mut normed = d.alloc(DType::F32, rows * h)?;
        let first = self.layers_held().start;
        for (i, l) in stage.layers.clone().enumerate() {
            self.layer(d, s, l - first, i, m, &mut x, &mut normed, kv)?;
        }
        let head = match &self.head {
            Some(head) if s + 1 == self.stages.len() => head,
            _ => return d.to_vec(x.as_ref()),
        };

        // The rows whose logits are wanted.
        let (picked, picked_rows) = match which {
            Logits::All => (x, rows),
            Logits::Last if kv.len() == 1 && rows == 1 => (x, 1),
            Logits::Last => {
                // Each sequence's last row, gathered in one call (one
                // launch where the backend has a gather kernel).
                let mut last = d.alloc(DType::F32, kv.len() * h)?;
                let rows: Vec<u32> = kv
                    .iter()
                    .zip(&m.offsets)
                    .map(|(seq, &r0)| (r0 + seq.n - 1) as u32)
                    .collect();
                d.embedding(x.as_ref(), &rows, last.as_mut())?;
                (last, kv.len())
            }
        };
        let mut final_norm = d.alloc(DType::F32, picked_rows * h)?;
        d.rms_norm(
            picked.as_ref(),
            head.norm.as_ref(),
            final_norm.as_mut(),
            c.rms_eps,
        )?;
        let out_w = head
            .output
            .as_ref()
            .or(self.embedding.as_ref())
            .ok_or_else(|| Error::invalid("model part", "has a head but no output matrix"))?;
        let logits = out_w.apply(d, final_norm.as_ref(), picked_rows, c.vocab, h)?;
        d.to_vec(logits.as_ref())
    }

    /// The model's `l`-th held layer (the stage's `i`-th) on the
    /// micro-batch's hidden state `x`.
    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        d: &dyn DynDevice,
        s: usize,
        l: usize,
        i: usize,
        m: &Micro,
        x: &mut BoxedBuffer,
        normed: &mut BoxedBuffer,
        kv: &mut [SeqKv<'_>],
    ) -> Result<()> {
        let c = &self.config;
        let layer = &self.layers[l];
        let rows = m.rows;
        let (h, qw, kvw) = (c.hidden, c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let alloc = |n: usize| d.alloc(DType::F32, n);
        // y = x W^T for a weight stored [out, in].
        let linear = |x: &BoxedBuffer, w: &super::model::Matrix, out: usize, inp: usize| {
            w.apply(d, x.as_ref(), rows, out, inp)
        };
        let rope = |x: &mut BoxedBuffer, heads: usize| -> Result<()> {
            let spec = RopeSpec {
                tokens: rows,
                heads,
                head_dim: c.head_dim,
                layout: c.rope_layout,
            };
            d.rope(
                &spec,
                x.as_mut(),
                &m.positions,
                self.stages[s].inv_freq.as_ref(),
            )
        };

        d.rms_norm(
            x.as_ref(),
            layer.attn_norm.as_ref(),
            normed.as_mut(),
            c.rms_eps,
        )?;
        let mut q = linear(normed, &layer.q, qw, h)?;
        let mut k = linear(normed, &layer.k, kvw, h)?;
        let mut v = linear(normed, &layer.v, kvw, h)?;
        if let Some([bq, bk, bv]) = &layer.biases {
            d.bias_activation(q.as_mut(), bq.as_ref(), Activation::Identity)?;
            d.bias_activation(k.as_mut(), bk.as_ref(), Activation::Identity)?;
            d.bias_activation(v.as_mut(), bv.as_ref(), Activation::Identity)?;
        }
        rope(&mut q, c.heads)?;
        rope(&mut k, c.kv_heads)?;
        // Every sequence's new keys and values into its caches (rounded to
        // their dtype) and its rows' attention, in one device call: a
        // backend that reaches all caches from one kernel (CUDA) launches a
        // fixed number of kernels whatever the batch.
        let mut att = alloc(rows * qw)?;
        let mut step: Vec<AppendAttendSeq<'_, dyn DynBuffer>> = kv
            .iter_mut()
            .zip(&m.offsets)
            .map(|(seq, &r0)| AppendAttendSeq {
                k: seq.k[i].as_mut(),
                v: seq.v[i].as_mut(),
                cached: seq.len,
                rows: r0..r0 + seq.n,
            })
            .collect();
        let spec = AppendAttendSpec {
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
        };
        d.append_and_attend(
            &spec,
            q.as_ref(),
            k.as_ref(),
            v.as_ref(),
            &mut step,
            att.as_mut(),
        )?;
        drop(step);
        let o = linear(&att, &layer.o, h, qw)?;
        d.reduce(ReduceOp::Sum, x.as_mut(), o.as_ref())?;
        d.rms_norm(
            x.as_ref(),
            layer.ffn_norm.as_ref(),
            normed.as_mut(),
            c.rms_eps,
        )?;
        let mut gate = linear(normed, &layer.gate, c.intermediate, h)?;
        let up = linear(normed, &layer.up, c.intermediate, h)?;
        d.silu_mul(gate.as_mut(), up.as_ref())?;
        let down = linear(&gate, &layer.down, h, c.intermediate)?;
        d.reduce(ReduceOp::Sum, x.as_mut(), down.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::cut;

    #[test]
    fn cuts_cover_every_sequence_in_order_with_nonempty_runs() {
        let mut rng = 7u64;
        for _ in 0..2000 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (rng >> 33) as usize % 12 + 1;
            let parts = (rng >> 20) as usize % 5 + 1;
            let news: Vec<usize> = (0..len)
                .map(|i| ((rng >> (i % 30)) as usize % 40) + 1)
                .collect();
            let runs = cut(&news, parts);
            assert_eq!(runs.len(), parts.min(len), "{news:?} in {parts}");
            let mut next = 0;
            for r in &runs {
                assert_eq!(r.start, next);
                assert!(r.end > r.start);
                next = r.end;
            }
            assert_eq!(next, len);
        }
    }

    #[test]
    fn cuts_balance_rows() {
        assert_eq!(cut(&[1; 8], 2), vec![0..4, 4..8]);
        assert_eq!(
            cut(&[10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 2),
            vec![0..1, 1..11]
        );
        assert_eq!(cut(&[3, 3, 3], 3), vec![0..1, 1..2, 2..3]);
        assert_eq!(cut(&[5], 4), vec![0..1]);
    }
}
