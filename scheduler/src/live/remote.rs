//! Devices of other processes: ranks of a job started like torchrun
//! (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`) or by an MPI
//! launcher with those variables. Rank 0 runs the engine that takes the
//! requests; every other rank runs an engine of its own on its one device
//! and connects to rank 0, which treats it as one more device with the
//! slots and KV positions the rank measured.
//!
//! The link is one TCP connection per rank carrying JSON lines: the rank's
//! [`Hello`] first, then rank 0 sends [`ToRank`] messages (a request to
//! start, a request to cancel) and the rank answers [`FromRank`] messages
//! (each request's events, in order, ending with its `Done` or `Failed`).
//! This is a control plane of a few hundred bytes per token, so a line of
//! JSON per event costs nothing next to the step it reports; the
//! collectives' transports move tensors, not request streams.
//!
//! Failure: a rank whose connection breaks is marked dead (it takes no
//! more requests) and each of its running requests ends with `Failed`
//! naming the rank; the other devices go on. Rank 0 admits to a rank at
//! most its slots at once, so a rank's own queue never refuses.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hetero_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedSender;

use super::engine::{Admitted, Engine, Event, LiveRequest, Rejected, Shared, Wait};
use super::metrics::Outcome;

/// What a rank says when it connects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub rank: usize,
    /// The rank's device (its id and name).
    pub device: String,
    pub slots: usize,
    pub kv_tokens: usize,
    /// The model it loaded, to check it is rank 0's.
    pub model: String,
    pub parameters: u64,
    pub vocab: usize,
    pub max_positions: usize,
}

/// Rank 0 to a rank.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToRank {
    Start { id: u64, request: LiveRequest },
    Cancel { id: u64 },
}

/// A rank to rank 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FromRank {
    pub id: u64,
    pub event: Event,
}

/// A rank connected to rank 0, not yet part of an engine.
#[derive(Debug)]
pub struct RemoteRank {
    pub hello: Hello,
    stream: TcpStream,
}

/// Longest line accepted on the link (a request with a long prompt is a
/// few hundred KiB of JSON).
const MAX_LINE: usize = 64 << 20;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::io(what, e)
}

/// Read one line of at most [`MAX_LINE`] bytes; `None` at the end.
fn read_line(reader: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = std::io::Read::take(&mut *reader, MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.len() > MAX_LINE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a message of over 64 MiB",
        ));
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Rank 0: accept `count` ranks on `listener` within `timeout`, each
/// holding the model described by (`model`, `parameters`, `vocab`,
/// `max_positions`).
pub fn accept_ranks(
    listener: &TcpListener,
    count: usize,
    timeout: Duration,
    expect: &Hello,
) -> Result<Vec<RemoteRank>> {
    let deadline = Instant::now() + timeout;
    listener
        .set_nonblocking(true)
        .map_err(io("setting the rank listener non-blocking"))?;
    let mut ranks: Vec<RemoteRank> = Vec::new();
    while ranks.len() < count {
        match listener.accept() {
            Ok((stream, peer)) => {
                stream
                    .set_nonblocking(false)
                    .map_err(io("configuring a rank's connection"))?;
                stream
                    .set_read_timeout(Some(
                        deadline
                            .saturating_duration_since(Instant::now())
                            .max(Duration::from_millis(1)),
                    ))
                    .map_err(io("configuring a rank's connection"))?;
                let mut reader =
                    BufReader::new(stream.try_clone().map_err(io("a rank's connection"))?);
                let line = read_line(&mut reader)
                    .map_err(io(format!("reading the hello of {peer}")))?
                    .ok_or_else(|| {
                        Error::invalid("rank", format!("{peer} closed before its hello"))
                    })?;
                let hello: Hello = serde_json::from_str(&line).map_err(|e| {
                    Error::invalid("rank", format!("{peer} sent no hello ({e}): {line:?}"))
                })?;
                if (
                    &hello.model,
                    hello.parameters,
                    hello.vocab,
                    hello.max_positions,
                ) != (
                    &expect.model,
                    expect.parameters,
                    expect.vocab,
                    expect.max_positions,
                ) {
                    return Err(Error::invalid(
                        "rank",
                        format!(
                            "rank {} loaded {} ({} parameters), not rank 0's {} ({}); start every \
                             rank with the same --model",
                            hello.rank,
                            hello.model,
                            hello.parameters,
                            expect.model,
                            expect.parameters
                        ),
                    ));
                }
                if hello.rank == 0 || ranks.iter().any(|r| r.hello.rank == hello.rank) {
                    return Err(Error::invalid(
                        "rank",
                        format!("rank {} connected twice (or claims rank 0)", hello.rank),
                    ));
                }
                stream
                    .set_read_timeout(None)
                    .map_err(io("configuring a rank's connection"))?;
                ranks.push(RemoteRank { hello, stream });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(Error::Timeout {
                        what: format!(
                            "waiting for {} of {count} ranks to connect (connected: {:?})",
                            count - ranks.len(),
                            ranks.iter().map(|r| r.hello.rank).collect::<Vec<_>>()
                        ),
                        after: timeout,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(Error::io("accepting a rank", e)),
        }
    }
    ranks.sort_by_key(|r| r.hello.rank);
    Ok(ranks)
}

/// A request running on a rank, as rank 0 tracks it.
struct InFlight {
    events: UnboundedSender<Event>,
    reserve: usize,
    arrived: Instant,
    last_token: Option<Instant>,
    cancel_sent: bool,
}

/// Rank 0's side of one rank: the device index `g` in the engine.
pub(crate) struct RemoteWorker {
    g: usize,
    shared: Arc<Shared>,
    writer: TcpStream,
    in_flight: Arc<Mutex<HashMap<u64, InFlight>>>,
    next_id: u64,
}

impl RemoteWorker {
    /// Start the reader of `rank`'s events and return its worker.
    pub(crate) fn start(g: usize, shared: Arc<Shared>, rank: RemoteRank) -> Result<Self> {
        let in_flight: Arc<Mutex<HashMap<u64, InFlight>>> = Arc::default();
        let reader = rank.stream.try_clone().map_err(io("a rank's connection"))?;
        let (s, f) = (shared.clone(), in_flight.clone());
        let name = rank.hello.device.clone();
        std::thread::Builder::new()
            .name(format!("hetero-live-rank-{}", rank.hello.rank))
            .spawn(move || read_events(g, s, f, reader, &name))
            .map_err(|e| Error::invalid("engine", format!("cannot start a rank reader: {e}")))?;
        Ok(RemoteWorker {
            g,
            shared,
            writer: rank.stream,
            in_flight,
            next_id: 0,
        })
    }

    fn send(&mut self, message: &ToRank) -> std::io::Result<()> {
        let mut line = serde_json::to_string(message).map_err(std::io::Error::other)?;
        line.push('\n');
        self.writer.write_all(line.as_bytes())
    }

    /// Forward what is admitted to this rank, and cancellations, until
    /// the engine stops.
    pub(crate) fn run(mut self) {
        loop {
            // Short waits: a client's disconnect is noticed and forwarded
            // within this time.
            let admitted = match self
                .shared
                .admit(self.g, Wait::For(Duration::from_millis(50)))
            {
                Admitted::Requests(v) => v,
                Admitted::Stop => {
                    let ids: Vec<u64> = self.lock().keys().copied().collect();
                    for id in ids {
                        let _ = self.send(&ToRank::Cancel { id });
                    }
                    // The rank sees the end of the stream and stops.
                    let _ = self.writer.shutdown(std::net::Shutdown::Write);
                    return;
                }
            };
            for q in admitted {
                let id = self.next_id;
                self.next_id += 1;
                self.shared
                    .metrics
                    .prompt_tokens(q.request.prompt_ids.len());
                self.lock().insert(
                    id,
                    InFlight {
                        events: q.events,
                        reserve: q.reserve,
                        arrived: q.arrived,
                        last_token: None,
                        cancel_sent: false,
                    },
                );
                if self
                    .send(&ToRank::Start {
                        id,
                        request: q.request,
                    })
                    .is_err()
                {
                    // The reader sees the broken connection and fails
                    // every request in flight, this one included.
                    break;
                }
            }
            let closed: Vec<u64> = self
                .lock()
                .iter_mut()
                .filter(|(_, f)| !f.cancel_sent && f.events.is_closed())
                .map(|(id, f)| {
                    f.cancel_sent = true;
                    *id
                })
                .collect();
            for id in closed {
                let _ = self.send(&ToRank::Cancel { id });
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, InFlight>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Rank 0: relay a rank's events to the requests' receivers until the
/// connection ends; then the rank is dead and its requests fail.
fn read_events(
    g: usize,
    shared: Arc<Shared>,
    in_flight: Arc<Mutex<HashMap<u64, InFlight>>>,
    stream: TcpStream,
    name: &str,
) {
    let mut reader = BufReader::new(stream);
    let lock = || in_flight.lock().unwrap_or_else(|e| e.into_inner());
    let why = loop {
        let line = match read_line(&mut reader) {
            Ok(Some(l)) => l,
            Ok(None) => break format!("{name} closed its connection"),
            Err(e) => break format!("{name}: {e}"),
        };
        let message: FromRank = match serde_json::from_str(&line) {
            Ok(m) => m,
            Err(e) => break format!("{name} sent a message that is not one ({e})"),
        };
        let mut map = lock();
        let Some(f) = map.get_mut(&message.id) else {
            continue;
        };
        let now = Instant::now();
        match message.event {
            Event::Text(t) => {
                match f.last_token {
                    None => shared
                        .metrics
                        .ttft(now.duration_since(f.arrived).as_secs_f64()),
                    Some(last) => shared
                        .metrics
                        .inter_token(now.duration_since(last).as_secs_f64()),
                }
                f.last_token = Some(now);
                let _ = f.events.send(Event::Text(t));
            }
            Event::Done {
                reason,
                usage,
                time_to_first_token_s,
                ..
            } => {
                if f.last_token.is_none() {
                    shared
                        .metrics
                        .ttft(now.duration_since(f.arrived).as_secs_f64());
                }
                // Counted before the client hears of it, so that metrics
                // read after a response include it.
                for _ in 0..usage.completion_tokens {
                    shared.metrics.generated_token();
                }
                shared.metrics.outcome(if f.events.is_closed() {
                    Outcome::Cancelled
                } else {
                    Outcome::Completed
                });
                shared.metrics.device_request(g);
                let Some(f) = map.remove(&message.id) else {
                    continue;
                };
                drop(map);
                shared.release(g, f.reserve);
                let _ = f.events.send(Event::Done {
                    reason,
                    usage,
                    device: name.to_string(),
                    time_to_first_token_s,
                });
            }
            Event::Failed(e) => {
                let outcome = if f.cancel_sent {
                    Outcome::Cancelled
                } else {
                    let _ = f.events.send(Event::Failed(format!("{name}: {e}")));
                    Outcome::Failed
                };
                shared.metrics.outcome(outcome);
                let reserve = f.reserve;
                map.remove(&message.id);
                drop(map);
                shared.release(g, reserve);
            }
        }
    };
    shared.mark_dead(g, &why);
    let failed: Vec<InFlight> = lock().drain().map(|(_, f)| f).collect();
    for f in failed {
        let _ = f.events.send(Event::Failed(why.clone()));
        shared.metrics.outcome(Outcome::Failed);
        shared.release(g, f.reserve);
    }
}

/// A rank other than 0: connect to rank 0 at `master` (retrying until
/// `timeout`: rank 0 may not listen yet), say `hello`, then run what rank
/// 0 sends on `engine` until it closes the connection.
pub async fn serve_rank(
    engine: Arc<Engine>,
    master: &str,
    hello: &Hello,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let stream = loop {
        match tokio::net::TcpStream::connect(master).await {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(Error::io(format!("connecting to rank 0 at {master}"), e)),
        }
    };
    let (read, mut write) = stream.into_split();
    let (out, mut outgoing) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut line =
        serde_json::to_string(hello).map_err(|e| Error::invalid("hello", e.to_string()))?;
    line.push('\n');
    write
        .write_all(line.as_bytes())
        .await
        .map_err(io("sending the hello to rank 0"))?;
    let writer = tokio::spawn(async move {
        while let Some(l) = outgoing.recv().await {
            if write.write_all(l.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let mut lines = tokio::io::BufReader::new(read).lines();
    let mut cancels: HashMap<u64, tokio::sync::oneshot::Sender<()>> = HashMap::new();
    let result = loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => break Ok(()),
            Err(e) => break Err(Error::io("reading from rank 0", e)),
        };
        if line.len() > MAX_LINE {
            break Err(Error::invalid("rank 0", "sent a message of over 64 MiB"));
        }
        let message: ToRank = match serde_json::from_str(&line) {
            Ok(m) => m,
            Err(e) => break Err(Error::invalid("rank 0", format!("sent no message ({e})"))),
        };
        cancels.retain(|_, c| !c.is_closed());
        match message {
            ToRank::Cancel { id } => {
                if let Some(c) = cancels.remove(&id) {
                    let _ = c.send(());
                }
            }
            ToRank::Start { id, request } => {
                let out = out.clone();
                let send = move |event: Event| {
                    let mut l = serde_json::to_string(&FromRank { id, event }).unwrap_or_default();
                    l.push('\n');
                    let _ = out.send(l);
                };
                match engine.submit(request) {
                    Err(r) => send(Event::Failed(match r {
                        Rejected::Invalid(e) => e.to_string(),
                        other => other.to_string(),
                    })),
                    Ok(mut events) => {
                        let (cancel, mut cancelled) = tokio::sync::oneshot::channel();
                        cancels.insert(id, cancel);
                        tokio::spawn(async move {
                            loop {
                                tokio::select! {
                                    e = events.recv() => match e {
                                        Some(e) => {
                                            let last = !matches!(e, Event::Text(_));
                                            send(e);
                                            if last {
                                                return;
                                            }
                                        }
                                        None => {
                                            send(Event::Failed("the rank's engine stopped".into()));
                                            return;
                                        }
                                    },
                                    _ = &mut cancelled => {
                                        // Dropping the receiver cancels it on the device.
                                        send(Event::Failed("cancelled".into()));
                                        return;
                                    }
                                }
                            }
                        });
                    }
                }
            }
        }
    };
    drop(out);
    let _ = writer.await;
    result
}
