//! The live engine: one worker thread per device, a shared bounded wait
//! queue, and per-request event channels. See the module docs of
//! [`live`](super) for the rules.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use hetero_core::{Error, Result};
use hetero_models::llama::Line;
use hetero_models::{
    Continuation, FinishReason, GenerateOptions, KvCache, LlamaModel, Logits, Step, Tokenizer,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::metrics::{Metrics, Outcome};
use super::prefix::PrefixPool;
use super::remote::{RemoteRank, RemoteWorker};

/// A device the engine runs on: its loaded model and its limits.
#[derive(Debug)]
pub struct LiveDevice {
    pub model: LlamaModel,
    /// Sequences it runs at once (the policy's batch for it; >= 1).
    pub slots: usize,
    /// KV-cache positions it holds over all its sequences (>= 1).
    pub kv_tokens: usize,
}

/// Engine-wide settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveConfig {
    /// Requests that may wait for a slot; more are refused.
    pub queue_limit: usize,
    /// Prompt tokens prefilled per round per device, over all sequences
    /// being prefilled (>= 1).
    pub prefill_chunk: usize,
    /// The longest request (prompt + max_tokens) accepted, in positions
    /// (capped by the model's context and the largest device's KV budget).
    pub max_request_len: usize,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            queue_limit: 256,
            prefill_chunk: 256,
            max_request_len: usize::MAX,
        }
    }
}

/// One request: its prompt ids and how to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveRequest {
    pub prompt_ids: Vec<u32>,
    pub options: GenerateOptions,
}

/// Tokens a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// What a request's receiver hears.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// Text now final, in order.
    Text(String),
    /// The last event of a request that finished.
    Done {
        reason: FinishReason,
        usage: Usage,
        /// The device that ran it.
        device: String,
        /// Seconds from arrival to the first generated token.
        time_to_first_token_s: f64,
    },
    /// The last event of a request that could not finish, and why.
    Failed(String),
}

/// Why a request was not queued.
#[derive(Debug)]
pub enum Rejected {
    /// The wait queue holds `waiting` requests, its limit.
    QueueFull { waiting: usize },
    /// The engine is shutting down.
    Closed,
    /// The request itself is wrong (the error names the field).
    Invalid(Error),
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::QueueFull { waiting } => write!(
                f,
                "the server is at capacity: {waiting} requests are already waiting; retry later"
            ),
            Rejected::Closed => write!(f, "the server is shutting down"),
            Rejected::Invalid(e) => write!(f, "{e}"),
        }
    }
}

/// A request waiting for a slot.
pub(crate) struct Queued {
    pub(crate) request: LiveRequest,
    pub(crate) events: UnboundedSender<Event>,
    pub(crate) arrived: Instant,
    /// KV positions it reserves.
    pub(crate) reserve: usize,
}

/// A request on a device.
struct Running {
    /// Names it to the batches in flight on a split model's line (its
    /// index in `running` changes as others leave).
    key: u64,
    /// When its last batch came back (or it started): the batches of a
    /// line take the requests that waited longest first.
    ready: u64,
    prompt: Vec<u32>,
    /// Prompt tokens already in the cache.
    fed: usize,
    /// The token to feed next once the prompt is in.
    next: [u32; 1],
    /// `None` while it travels in a batch on the line.
    cache: Option<KvCache>,
    continuation: Continuation,
    events: UnboundedSender<Event>,
    arrived: Instant,
    first_token_s: Option<f64>,
    last_token: Option<Instant>,
    counted_tokens: usize,
    reserve: usize,
}

impl Running {
    fn prefilling(&self) -> bool {
        self.fed < self.prompt.len()
    }
}

#[derive(Debug)]
pub(crate) struct Limits {
    pub(crate) name: String,
    slots: usize,
    kv_tokens: usize,
}

pub(crate) struct State {
    waiting: VecDeque<Queued>,
    running: Vec<usize>,
    kv_used: Vec<usize>,
    /// Devices that failed for good (a rank whose connection broke).
    dead: Vec<bool>,
    closing: bool,
    cancelled: bool,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    pub(crate) metrics: Metrics,
    tokenizer: Arc<Tokenizer>,
    config: LiveConfig,
    pub(crate) devices: Vec<Limits>,
    max_positions: usize,
    vocab: usize,
}

/// The event text of a request cancelled by a shutdown.
pub(crate) const CANCELLED: &str = "cancelled: the server is shutting down";

/// How long [`Shared::admit`] may block.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// Not at all: the device has work already.
    No,
    /// Until a request can be admitted or the engine stops.
    Forever,
    /// At most this long.
    For(std::time::Duration),
}

pub(crate) enum Admitted {
    /// Requests for the device (possibly none).
    Requests(Vec<Queued>),
    /// The engine was cancelled, or closed with nothing left for it.
    Stop,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The requests device `g` should start now: the head of the queue
    /// while it fits the device and no emptier device (running / slots)
    /// fits it too, so that devices fill in the proportions of their
    /// slots. Blocks as `wait` says while there are none.
    pub(crate) fn admit(&self, g: usize, wait: Wait) -> Admitted {
        let mut st = self.lock();
        let deadline = match wait {
            Wait::For(d) => Some(Instant::now() + d),
            _ => None,
        };
        loop {
            if st.cancelled {
                return Admitted::Stop;
            }
            let mut admitted = Vec::new();
            while let Some(front) = st.waiting.front() {
                if front.events.is_closed() {
                    st.waiting.pop_front();
                    self.metrics.outcome(Outcome::Cancelled);
                    continue;
                }
                let fits = |st: &State, h: usize| {
                    let d = &self.devices[h];
                    !st.dead[h]
                        && st.running[h] < d.slots
                        && st.kv_used[h] + front.reserve <= d.kv_tokens
                };
                if !fits(&st, g) {
                    break;
                }
                let occupancy =
                    |st: &State, h: usize| st.running[h] as f64 / self.devices[h].slots as f64;
                let mine = occupancy(&st, g);
                if (0..self.devices.len())
                    .any(|h| h != g && fits(&st, h) && occupancy(&st, h) < mine)
                {
                    break;
                }
                let Some(q) = st.waiting.pop_front() else {
                    break;
                };
                st.running[g] += 1;
                st.kv_used[g] += q.reserve;
                admitted.push(q);
            }
            self.metrics.set_queue_depth(st.waiting.len());
            self.metrics.set_running(g, st.running[g]);
            let busy = st.running[g] > 0;
            if !admitted.is_empty() || matches!(wait, Wait::No) {
                return Admitted::Requests(admitted);
            }
            if st.closing && st.waiting.is_empty() && !busy {
                return Admitted::Stop;
            }
            match deadline {
                None => st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Admitted::Requests(admitted);
                    }
                    st = self
                        .wake
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    /// KV positions of device `g` not reserved by running requests.
    pub(crate) fn kv_room(&self, g: usize) -> usize {
        let st = self.lock();
        self.devices[g].kv_tokens.saturating_sub(st.kv_used[g])
    }

    /// Give up a request's slot and positions on device `g`.
    pub(crate) fn release(&self, g: usize, reserve: usize) {
        let mut st = self.lock();
        st.running[g] = st.running[g].saturating_sub(1);
        st.kv_used[g] = st.kv_used[g].saturating_sub(reserve);
        self.metrics.set_running(g, st.running[g]);
        drop(st);
        // Another device may have held back for this one's lower occupancy.
        self.wake.notify_all();
    }

    /// Device `g` is gone (a rank that failed): it takes no more requests;
    /// when no device is left, the waiting requests fail.
    pub(crate) fn mark_dead(&self, g: usize, why: &str) {
        let mut st = self.lock();
        st.dead[g] = true;
        if st.dead.iter().all(|&d| d) {
            for q in st.waiting.drain(..) {
                let _ = q
                    .events
                    .send(Event::Failed(format!("no device is left: {why}")));
                self.metrics.outcome(Outcome::Failed);
            }
            self.metrics.set_queue_depth(0);
        }
        drop(st);
        self.wake.notify_all();
    }
}

/// Live continuous batching over devices; see the module docs.
pub struct Engine {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("devices", &self.shared.devices)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl Engine {
    /// Start a worker per device. Every device must hold the same model
    /// (the same configuration).
    pub fn start(
        devices: Vec<LiveDevice>,
        tokenizer: Arc<Tokenizer>,
        config: LiveConfig,
    ) -> Result<Engine> {
        Self::start_with_ranks(devices, Vec::new(), tokenizer, config)
    }

    /// Like [`start`](Self::start), with the devices of other processes
    /// too (ranks accepted by [`accept_ranks`](super::accept_ranks)), each
    /// one more device after the local ones.
    pub fn start_with_ranks(
        devices: Vec<LiveDevice>,
        ranks: Vec<RemoteRank>,
        tokenizer: Arc<Tokenizer>,
        config: LiveConfig,
    ) -> Result<Engine> {
        let Some(first) = devices.first() else {
            return Err(Error::invalid("devices", "the engine needs at least one"));
        };
        if config.prefill_chunk == 0 {
            return Err(Error::invalid("prefill chunk", "must be at least 1 token"));
        }
        let c = first.model.config().clone();
        for (g, d) in devices.iter().enumerate() {
            if d.slots == 0 || d.kv_tokens == 0 {
                return Err(Error::invalid(
                    format!("device {g}"),
                    "needs at least one slot and one KV position",
                ));
            }
            if *d.model.config() != c {
                return Err(Error::invalid(
                    format!("device {g}"),
                    "holds another model than device 0",
                ));
            }
        }
        for r in &ranks {
            let h = &r.hello;
            if (h.vocab, h.max_positions) != (c.vocab, c.max_positions) {
                return Err(Error::invalid(
                    format!("rank {}", h.rank),
                    "holds another model than this process",
                ));
            }
            if h.slots == 0 || h.kv_tokens == 0 {
                return Err(Error::invalid(
                    format!("rank {}", h.rank),
                    "needs at least one slot and one KV position",
                ));
            }
        }
        let limits: Vec<Limits> = devices
            .iter()
            .map(|d| Limits {
                name: d.model.device().id().to_string(),
                slots: d.slots,
                kv_tokens: d.kv_tokens,
            })
            .chain(ranks.iter().map(|r| Limits {
                name: r.hello.device.clone(),
                slots: r.hello.slots,
                kv_tokens: r.hello.kv_tokens,
            }))
            .collect();
        let metrics = Metrics::new(
            &limits
                .iter()
                .map(|l| (l.name.clone(), l.slots))
                .collect::<Vec<_>>(),
        );
        let n = limits.len();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                waiting: VecDeque::new(),
                running: vec![0; n],
                kv_used: vec![0; n],
                dead: vec![false; n],
                closing: false,
                cancelled: false,
            }),
            wake: Condvar::new(),
            metrics,
            tokenizer,
            config,
            devices: limits,
            max_positions: c.max_positions,
            vocab: c.vocab,
        });
        let mut workers = Vec::new();
        for (g, d) in devices.into_iter().enumerate() {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("hetero-live-{g}"))
                .spawn(move || Worker::new(g, d.model, shared).run())
                .map_err(|e| Error::invalid("engine", format!("cannot start a worker: {e}")))?;
            workers.push(handle);
        }
        let local = workers.len();
        for (i, r) in ranks.into_iter().enumerate() {
            let g = local + i;
            let worker = RemoteWorker::start(g, shared.clone(), r)?;
            let handle = std::thread::Builder::new()
                .name(format!("hetero-live-{g}"))
                .spawn(move || worker.run())
                .map_err(|e| Error::invalid("engine", format!("cannot start a worker: {e}")))?;
            workers.push(handle);
        }
        Ok(Engine {
            shared,
            workers: Mutex::new(workers),
        })
    }

    /// Queue a request; its events arrive on the returned receiver. Dropping
    /// the receiver cancels the request at the next round.
    pub fn submit(
        &self,
        request: LiveRequest,
    ) -> std::result::Result<UnboundedReceiver<Event>, Rejected> {
        let reserve = self.check(&request).map_err(|e| {
            self.shared.metrics.outcome(Outcome::Invalid);
            Rejected::Invalid(e)
        })?;
        let (events, receiver) = unbounded_channel();
        let mut st = self.shared.lock();
        if st.closing || st.cancelled {
            return Err(Rejected::Closed);
        }
        if st.waiting.len() >= self.shared.config.queue_limit {
            self.shared.metrics.outcome(Outcome::QueueFull);
            return Err(Rejected::QueueFull {
                waiting: st.waiting.len(),
            });
        }
        st.waiting.push_back(Queued {
            request,
            events,
            arrived: Instant::now(),
            reserve,
        });
        self.shared.metrics.set_queue_depth(st.waiting.len());
        drop(st);
        self.shared.wake.notify_all();
        Ok(receiver)
    }

    /// The KV positions `request` reserves, or why it can never run.
    fn check(&self, request: &LiveRequest) -> Result<usize> {
        let s = &self.shared;
        let prompt = request.prompt_ids.len();
        if prompt == 0 {
            return Err(Error::invalid("prompt", "has no tokens"));
        }
        if prompt >= s.max_positions {
            return Err(Error::invalid(
                "prompt",
                format!(
                    "{prompt} tokens leave no room in the model's context of {} positions",
                    s.max_positions
                ),
            ));
        }
        if let Some(bad) = request.prompt_ids.iter().find(|&&t| t as usize >= s.vocab) {
            return Err(Error::invalid(
                "prompt",
                format!("token id {bad} is past the vocabulary of {}", s.vocab),
            ));
        }
        if request.options.max_tokens == 0 {
            return Err(Error::invalid("max_tokens", "must be at least 1"));
        }
        request.options.sampling.validate()?;
        let reserve = prompt
            .saturating_add(request.options.max_tokens)
            .min(s.max_positions);
        let longest = self.longest_request();
        if reserve > longest {
            return Err(Error::invalid(
                "max_tokens",
                format!(
                    "the prompt ({prompt} tokens) and max_tokens ({}) need {reserve} positions; \
                     this server runs requests of {longest} positions at most: lower max_tokens \
                     or shorten the prompt",
                    request.options.max_tokens
                ),
            ));
        }
        Ok(reserve)
    }

    /// Refuse new requests; queued and running ones still finish, then the
    /// workers stop.
    pub fn close(&self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_all();
    }

    /// End every queued and running request now, each with a `Failed`
    /// event, and stop the workers.
    pub fn cancel(&self) {
        let mut st = self.shared.lock();
        st.closing = true;
        st.cancelled = true;
        for q in st.waiting.drain(..) {
            let _ = q.events.send(Event::Failed(CANCELLED.into()));
            self.shared.metrics.outcome(Outcome::Cancelled);
        }
        self.shared.metrics.set_queue_depth(0);
        drop(st);
        self.shared.wake.notify_all();
    }

    /// Wait for the workers to stop (after [`close`](Self::close) or
    /// [`cancel`](Self::cancel)).
    pub fn join(&self) {
        let handles: Vec<_> =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }

    /// Whether [`close`](Self::close) or [`cancel`](Self::cancel) was called.
    pub fn is_closing(&self) -> bool {
        self.shared.lock().closing
    }

    /// Whether nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        let st = self.shared.lock();
        st.waiting.is_empty() && st.running.iter().all(|&r| r == 0)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Requests waiting for a slot now.
    pub fn queue_depth(&self) -> usize {
        self.shared.lock().waiting.len()
    }

    /// The longest request (prompt + max_tokens) accepted, in positions:
    /// the configured limit, capped by the context and by the KV positions
    /// of the device that holds the most.
    pub fn longest_request(&self) -> usize {
        let s = &self.shared;
        let largest = s.devices.iter().map(|d| d.kv_tokens).max().unwrap_or(0);
        s.config.max_request_len.min(s.max_positions).min(largest)
    }

    /// The model's context, in positions.
    pub fn max_positions(&self) -> usize {
        self.shared.max_positions
    }

    /// The devices, with their slots and KV positions.
    pub fn devices(&self) -> Vec<(String, usize, usize)> {
        self.shared
            .devices
            .iter()
            .map(|d| (d.name.clone(), d.slots, d.kv_tokens))
            .collect()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.shared.tokenizer
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.cancel();
        self.join();
    }
}

/// One device's loop.
struct Worker {
    g: usize,
    model: Arc<LlamaModel>,
    shared: Arc<Shared>,
    running: Vec<Running>,
    prefixes: PrefixPool,
    /// Batches on the line: tag, and each member's key and prompt tokens
    /// fed (0: a decode step).
    flights: Vec<(u64, Vec<(u64, usize)>)>,
    /// Counts request keys, batch tags and `ready` times.
    ticks: u64,
}

impl Worker {
    fn new(g: usize, model: LlamaModel, shared: Arc<Shared>) -> Self {
        Worker {
            g,
            model: Arc::new(model),
            shared,
            running: Vec::new(),
            prefixes: PrefixPool::default(),
            flights: Vec::new(),
            ticks: 0,
        }
    }

    fn tick(&mut self) -> u64 {
        self.ticks += 1;
        self.ticks
    }

    /// Serve until stopped. A model split into a pipeline runs its rounds
    /// as batches on a standing line, one batch per stage in flight, so
    /// every stage works while the others' batches are sampled; a model
    /// on one device runs one batch per round.
    fn run(mut self) {
        if self.model.pipeline_len() > 1 {
            let model = self.model.clone();
            if model.with_line(|line| self.serve(Some(line))).is_ok() {
                return;
            }
        }
        self.serve(None);
    }

    fn serve(&mut self, mut line: Option<&mut Line<'_>>) {
        loop {
            let Some(admitted) = self.admit() else {
                return;
            };
            if !admitted.is_empty() {
                // The new reservations are counted: make their room.
                self.prefixes.evict_to(self.shared.kv_room(self.g));
            }
            for q in admitted {
                self.start(q);
            }
            self.drop_cancelled();
            match line.as_deref_mut() {
                Some(line) => self.line_round(line),
                None if self.running.is_empty() => {}
                None => self.round(),
            }
        }
    }

    /// Take the requests this device should start now; `None` when the
    /// worker should stop. Blocks while there is nothing to do.
    fn admit(&mut self) -> Option<Vec<Queued>> {
        let wait = if self.running.is_empty() {
            Wait::Forever
        } else {
            Wait::No
        };
        match self.shared.admit(self.g, wait) {
            Admitted::Requests(v) => Some(v),
            Admitted::Stop => {
                for r in self.running.drain(..) {
                    let _ = r.events.send(Event::Failed(CANCELLED.into()));
                    self.shared.metrics.outcome(Outcome::Cancelled);
                    self.shared.release(self.g, r.reserve);
                }
                None
            }
        }
    }

    /// Give up a request's slot and positions.
    fn release(&self, reserve: usize) {
        self.shared.release(self.g, reserve);
    }

    fn start(&mut self, q: Queued) {
        let continuation = Continuation::new(q.request.options.clone());
        let cache = self.model.new_cache(q.reserve);
        match (continuation, cache) {
            (Ok(continuation), Ok(mut cache)) => {
                self.shared
                    .metrics
                    .prompt_tokens(q.request.prompt_ids.len());
                let key = self.tick();
                let mut fed = 0;
                if let Some((from, n)) = self.prefixes.best(&q.request.prompt_ids) {
                    let n = n.min(cache.max_len());
                    if self.model.copy_prefix(from, n, &mut cache).is_ok() {
                        fed = n;
                        self.shared.metrics.cached_prompt_tokens(n);
                    } else {
                        cache.clear();
                    }
                }
                self.running.push(Running {
                    key,
                    ready: key,
                    prompt: q.request.prompt_ids,
                    fed,
                    next: [0],
                    cache: Some(cache),
                    continuation,
                    events: q.events,
                    arrived: q.arrived,
                    first_token_s: None,
                    last_token: None,
                    counted_tokens: 0,
                    reserve: q.reserve,
                })
            }
            (Err(e), _) | (_, Err(e)) => {
                let _ = q.events.send(Event::Failed(format!(
                    "{} cannot start the request: {e}",
                    self.shared.devices[self.g].name
                )));
                self.shared.metrics.outcome(Outcome::Failed);
                self.release(q.reserve);
            }
        }
    }

    /// Remove the requests whose client went away (those on the line
    /// once their batch is back).
    fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let r = &self.running[i];
            if r.events.is_closed() && r.cache.is_some() {
                let r = self.running.swap_remove(i);
                self.shared.metrics.outcome(Outcome::Cancelled);
                self.release(r.reserve);
                self.keep_prefix(r);
            } else {
                i += 1;
            }
        }
    }

    /// The requests of the next batch, from `order` (at most `cap`, those
    /// not on the line), and the prompt tokens each feeds (0: its next
    /// token): every decoding request, and prompt tokens up to the chunk
    /// for those being prefilled.
    fn choose(&self, order: impl Iterator<Item = usize>, cap: usize) -> Vec<(usize, usize)> {
        let mut budget = self.shared.config.prefill_chunk;
        let mut included = Vec::new();
        for i in order {
            if included.len() == cap {
                break;
            }
            let r = &self.running[i];
            if r.cache.is_none() {
                continue;
            }
            if r.prefilling() {
                if budget == 0 {
                    continue;
                }
                let n = budget.min(r.prompt.len() - r.fed);
                budget -= n;
                included.push((i, n));
            } else {
                included.push((i, 0));
            }
        }
        included
    }

    /// One forward pass: a token for every decoding sequence, and prompt
    /// tokens up to the chunk for those being prefilled; then a step of
    /// every sequence whose prompt is in.
    fn round(&mut self) {
        let included = self.choose(0..self.running.len(), usize::MAX);
        let mut wanted = included.iter().peekable();
        let mut batch: Vec<(&mut KvCache, &[u32])> = Vec::new();
        for (i, r) in self.running.iter_mut().enumerate() {
            let Some(&(_, n)) = wanted.next_if(|&&(j, _)| j == i) else {
                continue;
            };
            let Running {
                prompt,
                fed,
                next,
                cache: Some(cache),
                ..
            } = r
            else {
                continue;
            };
            let tokens = if n > 0 {
                &prompt[*fed..*fed + n]
            } else {
                &next[..]
            };
            batch.push((cache, tokens));
        }
        let result = self.model.forward_batch(&mut batch, Logits::Last);
        drop(batch);
        self.apply(included, result);
    }

    /// A round of a split model: batches sent down the line while fewer
    /// than its stages are in flight (the requests that waited longest
    /// first, each batch at most its share of the running ones), then the
    /// next batch back applied.
    fn line_round(&mut self, line: &mut Line<'_>) {
        let stages = line.stages().max(1);
        let cap = self.running.len().div_ceil(stages).max(1);
        while line.in_flight() < stages {
            let mut order: Vec<usize> = (0..self.running.len()).collect();
            order.sort_by_key(|&i| self.running[i].ready);
            let included = self.choose(order.into_iter(), cap);
            if included.is_empty() {
                break;
            }
            let mut caches = Vec::with_capacity(included.len());
            let mut tokens = Vec::with_capacity(included.len());
            let mut members = Vec::with_capacity(included.len());
            for &(i, n) in &included {
                let r = &mut self.running[i];
                tokens.push(if n > 0 {
                    r.prompt[r.fed..r.fed + n].to_vec()
                } else {
                    r.next.to_vec()
                });
                caches.extend(r.cache.take());
                members.push((r.key, n));
            }
            let tag = self.tick();
            self.flights.push((tag, members));
            let tokens: Vec<&[u32]> = tokens.iter().map(Vec::as_slice).collect();
            line.send(tag, caches, &tokens, Logits::Last);
        }
        let Some(landed) = line.recv() else {
            return;
        };
        let Some(at) = self.flights.iter().position(|(t, _)| *t == landed.tag) else {
            return;
        };
        let (_, members) = self.flights.swap_remove(at);
        let ready = self.tick();
        let mut included = Vec::with_capacity(members.len());
        for ((key, n), cache) in members.into_iter().zip(landed.caches) {
            if let Some(i) = self.running.iter().position(|r| r.key == key) {
                self.running[i].cache = Some(cache);
                self.running[i].ready = ready;
                included.push((i, n));
            }
        }
        self.apply(included, landed.logits);
    }

    /// A batch's outcome: `included` (request index, prompt tokens fed)
    /// and its logits, one row per request; each request whose prompt is
    /// in takes its step, and the finished or failed ones leave.
    fn apply(&mut self, included: Vec<(usize, usize)>, result: Result<Vec<Vec<f32>>>) {
        self.shared.metrics.round(self.g, included.len());
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                let message = format!("{} failed: {e}", self.shared.devices[self.g].name);
                let failed = included
                    .iter()
                    .map(|&(i, _)| (i, Event::Failed(message.clone()), Outcome::Failed))
                    .collect();
                self.finish(failed);
                return;
            }
        };
        let device = &self.shared.devices[self.g].name;
        let metrics = &self.shared.metrics;
        let mut finished = Vec::new();
        for ((i, n), logits) in included.into_iter().zip(logits) {
            let r = &mut self.running[i];
            if n > 0 {
                r.fed += n;
                if r.prefilling() {
                    continue;
                }
            }
            let room = r.cache.as_ref().is_some_and(|c| c.len() < c.max_len());
            let step = r.continuation.step(&self.shared.tokenizer, &logits, room);
            let now = Instant::now();
            match (r.first_token_s, r.last_token) {
                (None, _) => {
                    let s = now.duration_since(r.arrived).as_secs_f64();
                    r.first_token_s = Some(s);
                    metrics.ttft(s);
                }
                (Some(_), Some(last)) => {
                    metrics.inter_token(now.duration_since(last).as_secs_f64())
                }
                (Some(_), None) => {}
            }
            r.last_token = Some(now);
            let generated = r.continuation.ids().len();
            for _ in r.counted_tokens..generated {
                metrics.generated_token();
            }
            r.counted_tokens = generated;
            match step {
                Ok(Step::Continue { text, next_id }) => {
                    r.next = [next_id];
                    // A send fails only when the client went away: the
                    // request is removed at the next round.
                    if !text.is_empty() {
                        let _ = r.events.send(Event::Text(text));
                    }
                }
                Ok(Step::Finished { text, reason }) => {
                    if !text.is_empty() {
                        let _ = r.events.send(Event::Text(text));
                    }
                    let done = Event::Done {
                        reason,
                        usage: Usage {
                            prompt_tokens: r.prompt.len(),
                            completion_tokens: generated,
                        },
                        device: device.clone(),
                        time_to_first_token_s: r.first_token_s.unwrap_or(0.0),
                    };
                    finished.push((i, done, Outcome::Completed));
                }
                Err(e) => finished.push((i, Event::Failed(e.to_string()), Outcome::Failed)),
            }
        }
        self.finish(finished);
    }

    /// Send each listed request its last event and remove it.
    fn finish(&mut self, mut list: Vec<(usize, Event, Outcome)>) {
        // Remove from the back so that the other indices stay valid.
        list.sort_by_key(|(i, _, _)| std::cmp::Reverse(*i));
        for (i, event, outcome) in list {
            let r = self.running.remove(i);
            // Counted before the client hears of it, so that metrics read
            // after a response include it.
            if outcome == Outcome::Completed {
                self.shared.metrics.device_request(self.g);
            }
            let outcome = if r.events.is_closed() {
                Outcome::Cancelled
            } else {
                outcome
            };
            self.shared.metrics.outcome(outcome);
            self.release(r.reserve);
            let failed = matches!(event, Event::Failed(_));
            let _ = r.events.send(event);
            if !failed {
                self.keep_prefix(r);
            }
        }
    }

    /// Keep a finished request's cache for later requests that begin with
    /// the same tokens, within the room the running requests leave.
    fn keep_prefix(&mut self, r: Running) {
        let Some(cache) = r.cache else {
            return;
        };
        let fed = cache.len();
        let mut tokens: Vec<u32> = r.prompt.iter().copied().take(fed).collect();
        if fed > r.prompt.len() {
            let ids = r.continuation.ids();
            tokens.extend(ids.iter().take(fed - r.prompt.len()));
        }
        if tokens.len() == fed {
            self.prefixes.insert(tokens, cache);
        }
        self.prefixes.evict_to(self.shared.kv_room(self.g));
    }
}
