//! A split model's stages as a standing line that batches travel down,
//! each with its own caches: several batches in flight at once, one per
//! stage, so every stage works while the caller samples.
//!
//! [`LlamaModel::forward_batch`] keeps the stages busy only within one
//! call (its micro-batches fill and drain the pipeline every step), and
//! a server's next step of a sequence cannot start before its token is
//! sampled. A [`Line`] takes whole batches instead: while stage 1 runs
//! batch A, stage 0 runs batch B; A's tokens are sampled while B moves on.
//! With as many batches in flight as stages every stage works all the
//! time, bar imbalance (vLLM's virtual engines, Petals' micro-batches).
//!
//! A batch owns its sequences' caches while it travels: a cache is in
//! one batch at a time and each stage touches only its own layers of it,
//! so the stages never share a cache, and the caller gets the caches back
//! with the logits. Caches advance only if the batch went through every
//! stage; a batch that fails at a stage comes back at once with the
//! error, and the line goes on with the others.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use hetero_core::{Error, Result};

use super::forward::Micro;
use super::model::{KvCache, LlamaModel, Logits};
use super::remote::SeqStep;

/// A batch back from the line: the caller's tag, its caches (in the order
/// sent), and per cache the logits of the rows asked for, or why the batch
/// failed.
#[derive(Debug)]
pub struct Landed {
    pub tag: u64,
    pub caches: Vec<KvCache>,
    pub logits: Result<Vec<Vec<f32>>>,
}

/// A batch on its way down the line.
struct Batch {
    tag: u64,
    caches: Vec<KvCache>,
    news: Vec<usize>,
    micro: Micro,
    which: Logits,
    /// The hidden state between stages (none before the first).
    hidden: Option<Vec<f32>>,
}

impl Batch {
    /// Back to the caller: caches advanced when the logits are there.
    fn land(mut self, model: &LlamaModel, out: Result<Vec<f32>>) -> Landed {
        let logits = out.map(|all| {
            for (cache, n) in self.caches.iter_mut().zip(&self.news) {
                cache.len += n;
            }
            model.logits_per_sequence(&self.micro, &self.news, all, self.which)
        });
        Landed {
            tag: self.tag,
            caches: self.caches,
            logits,
        }
    }
}

/// How much one of this process's stages worked on a [`Line`] so far: its
/// calls and the seconds they took. Set against the time the line ran, it
/// says how busy the stage was; set against the profile's prediction, it
/// says whether the stage ran at its profiled speed while the others ran
/// (devices that share a processor slow each other).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageBusy {
    pub calls: u64,
    pub busy_s: f64,
}

impl StageBusy {
    /// Mean seconds of one call (0 before the first).
    pub fn mean_call_s(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.busy_s / self.calls as f64
        }
    }
}

/// A stage thread's counters, read by the caller while the line runs.
#[derive(Default)]
struct StageClock {
    calls: AtomicU64,
    busy_ns: AtomicU64,
}

impl StageClock {
    fn add(&self, since: Instant) {
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns.fetch_add(ns, Relaxed);
        self.calls.fetch_add(1, Relaxed);
    }

    fn read(&self) -> StageBusy {
        StageBusy {
            calls: self.calls.load(Relaxed),
            busy_s: self.busy_ns.load(Relaxed) as f64 * 1e-9,
        }
    }
}

/// The stages of a model as a standing line (see the module docs); made
/// by [`LlamaModel::with_line`].
pub struct Line<'m> {
    model: &'m LlamaModel,
    /// One per stage of this process, in order.
    clocks: Arc<[StageClock]>,
    first: Option<mpsc::Sender<Batch>>,
    out: mpsc::Receiver<Landed>,
    /// Batches refused at `send`, to be received in turn.
    pending: VecDeque<Landed>,
    in_flight: usize,
}

impl std::fmt::Debug for Line<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Line")
            .field("stages", &self.stages())
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl Line<'_> {
    /// Stages of the pipeline (this process's and the other ranks'): as
    /// many batches in flight keep them all busy.
    pub fn stages(&self) -> usize {
        self.model.pipeline_len()
    }

    /// Batches sent and not received yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Work of each of this process's stages so far, in order (the stages
    /// of other processes are not counted here: they keep their own).
    pub fn stage_busy(&self) -> Vec<StageBusy> {
        self.clocks.iter().map(StageClock::read).collect()
    }

    /// Send a batch: `tokens[i]` new tokens after what `caches[i]` holds
    /// (as [`LlamaModel::forward_batch`]), tagged `tag` for the caller.
    /// A batch that cannot run (an empty one, a cache of another model or
    /// too short, a token past the vocabulary) comes back at once through
    /// [`recv`](Self::recv) with the error, its caches unchanged.
    pub fn send(&mut self, tag: u64, caches: Vec<KvCache>, tokens: &[&[u32]], which: Logits) {
        let model = self.model;
        let micro = Micro::of(caches.iter().zip(tokens.iter().copied()));
        let batch = Batch {
            tag,
            news: tokens.iter().map(|t| t.len()).collect(),
            micro,
            which,
            hidden: None,
            caches,
        };
        let checked = if batch.caches.is_empty() || batch.caches.len() != tokens.len() {
            Err(Error::invalid(
                "batch",
                format!(
                    "{} caches for {} token lists; a batch needs at least one sequence",
                    batch.caches.len(),
                    tokens.len()
                ),
            ))
        } else {
            batch
                .caches
                .iter()
                .zip(tokens)
                .enumerate()
                .try_for_each(|(i, (c, t))| model.check_new_tokens(i, c, t))
        };
        self.in_flight += 1;
        let refused = match (checked, &self.first) {
            (Err(e), _) => Some((batch, e)),
            (Ok(()), Some(first)) => first.send(batch).err().map(|mpsc::SendError(b)| {
                (
                    b,
                    Error::invalid("model line", "its first stage has stopped"),
                )
            }),
            (Ok(()), None) => Some((batch, Error::invalid("model line", "is closed"))),
        };
        if let Some((batch, e)) = refused {
            // Straight back through the receiving side, in order with the
            // others.
            self.pending.push_back(batch.land(model, Err(e)));
        }
    }

    /// The next batch back (in the order they finish), blocking until one
    /// is; `None` when none is in flight.
    pub fn recv(&mut self) -> Option<Landed> {
        if self.in_flight == 0 {
            return None;
        }
        self.in_flight -= 1;
        if let Some(landed) = self.pending.pop_front() {
            return Some(landed);
        }
        match self.out.recv() {
            Ok(landed) => Some(landed),
            // Every stage thread holds a way out until it stops, and they
            // stop only when the line is dropped: unreachable in practice,
            // but a lost batch must still be accounted for.
            Err(_) => Some(Landed {
                tag: u64::MAX,
                caches: Vec::new(),
                logits: Err(Error::invalid("model line", "a stage stopped")),
            }),
        }
    }
}

impl LlamaModel {
    /// Run `f` with this model's stages as a standing [`Line`] (one thread
    /// per local stage, and two for the stages of other processes); the
    /// threads stop when `f` returns, after the batches still in flight
    /// (dropped with their caches).
    pub fn with_line<R>(&self, f: impl FnOnce(&mut Line<'_>) -> R) -> Result<R> {
        self.check_whole()?;
        let stages = self.stages.len();
        Ok(std::thread::scope(|scope| {
            let (out_tx, out) = mpsc::channel::<Landed>();
            let (first, mut input) = mpsc::channel::<Batch>();
            let clocks: Arc<[StageClock]> = (0..stages).map(|_| StageClock::default()).collect();
            for s in 0..stages {
                let (tx, rx) = mpsc::channel::<Batch>();
                let from = std::mem::replace(&mut input, rx);
                let last = s + 1 == stages && self.tail.is_none();
                let out_tx = out_tx.clone();
                let clocks = clocks.clone();
                scope.spawn(move || {
                    for mut batch in from {
                        let started = Instant::now();
                        let step =
                            catch_unwind(AssertUnwindSafe(|| self.line_stage(s, &mut batch)))
                                .unwrap_or_else(|_| {
                                    Err(Error::invalid(format!("model stage {s}"), "panicked"))
                                });
                        clocks[s].add(started);
                        let passed = match step {
                            Ok(out) if !last => {
                                batch.hidden = Some(out);
                                match tx.send(batch) {
                                    Ok(()) => continue,
                                    Err(mpsc::SendError(b)) => {
                                        let e = Error::invalid(
                                            format!("model stage {}", s + 1),
                                            "has stopped",
                                        );
                                        b.land(self, Err(e))
                                    }
                                }
                            }
                            out => batch.land(self, out),
                        };
                        if out_tx.send(passed).is_err() {
                            break;
                        }
                    }
                });
            }
            if let Some(tail) = &self.tail {
                // One thread sends each batch down to the other processes
                // as it comes, the other takes the answers in the same
                // order, so their stages overlap with these.
                let (sent_tx, sent_rx) = mpsc::channel::<(u64, Batch)>();
                let from = std::mem::replace(&mut input, mpsc::channel().1);
                let to_out = out_tx.clone();
                scope.spawn(move || {
                    for mut batch in from {
                        let steps = batch
                            .caches
                            .iter()
                            .zip(&batch.news)
                            .map(|(c, &n)| SeqStep {
                                id: c.id,
                                len: c.len,
                                n,
                                max_len: c.max_len,
                            })
                            .collect();
                        let hidden = batch.hidden.take().unwrap_or_default();
                        let sent = match tail.send_step(steps, batch.which, &hidden) {
                            Ok(tag) => sent_tx.send((tag, batch)).is_ok(),
                            Err(e) => to_out.send(batch.land(self, Err(e))).is_ok(),
                        };
                        if !sent {
                            break;
                        }
                    }
                });
                let to_out = out_tx.clone();
                scope.spawn(move || {
                    for (tag, batch) in sent_rx {
                        let out = tail.recv_out(tag);
                        if to_out.send(batch.land(self, out)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(out_tx);
            drop(input);
            let mut line = Line {
                model: self,
                clocks,
                first: Some(first),
                out,
                pending: VecDeque::new(),
                in_flight: 0,
            };
            let r = f(&mut line);
            // Closing the first stage's input stops the threads in turn.
            line.first = None;
            drop(line);
            r
        }))
    }

    /// Stage `s` on `batch`: its hidden state (or token ids) in, its
    /// hidden state or logits out.
    fn line_stage(&self, s: usize, batch: &mut Batch) -> Result<Vec<f32>> {
        let mut kv = self.split_caches(batch.caches.iter_mut(), batch.news.iter().copied());
        let hidden = batch.hidden.take();
        self.run_stage(s, &batch.micro, hidden, &mut kv[s], batch.which)
    }
}
