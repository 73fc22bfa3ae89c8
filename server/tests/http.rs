//! The OpenAI-compatible server end to end, in process, on loopback ports,
//! with the real SmolLM2 model (`HETERO_TEST_GGUF`; skipped with the
//! reason without it): this crate's client and curl (skipped with the
//! reason when it is not installed) as clients; streamed
//! text equal to the whole text for the same seed; a load test where every
//! request is answered exactly once and the metrics add up; 429 when the
//! queue is full; bad bodies named; a disconnected client's slot freed;
//! a clean shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may unwrap

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use hetero_core::SharedDevice;
use hetero_host::HostDevice;
use hetero_models::Checkpoint;
use hetero_scheduler::Policy;
use hetero_scheduler::live::{self, LiveConfig, LiveSetup};
use hetero_server::client;
use hetero_server::load::{self, LoadSpec};
use hetero_server::{AppState, Prompter};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(300);

/// A server on a free loopback port, stopped (and awaited) on drop.
struct Server {
    addr: SocketAddr,
    state: Arc<AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(model: &str, slots: usize, max_len: usize, queue_limit: usize) -> Server {
    let checkpoint = Checkpoint::open(model).unwrap();
    let device: SharedDevice = Arc::new(
        HostDevice::builder()
            .threads(2)
            .memory_budget(2 << 30)
            .build()
            .unwrap(),
    );
    let setup = LiveSetup {
        slots,
        max_len,
        policy: Policy::Balanced,
        config: LiveConfig {
            queue_limit,
            prefill_chunk: 64,
            max_request_len: max_len,
        },
        kv_dtype: hetero_models::llama::KvCacheDtype::Auto,
    };
    let (engine, _) = live::start(&checkpoint, &[device], Vec::new(), &setup, &mut |_| {}).unwrap();
    let tokenizer = checkpoint.tokenizer().unwrap();
    let prompter = Prompter::new(&checkpoint, &tokenizer).unwrap();
    let state = Arc::new(AppState::new(
        Arc::new(engine),
        prompter,
        "smollm2".into(),
        64,
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let serving = state.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            bound_tx.send(listener.local_addr().unwrap()).unwrap();
            hetero_server::serve(
                listener,
                serving,
                async move {
                    let _ = stopped.await;
                },
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        });
    });
    let addr = bound_rx.recv_timeout(TIMEOUT).unwrap();
    Server {
        addr,
        state,
        stop: Some(stop),
        thread: Some(thread),
    }
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> client::HttpResponse {
    client::request(
        addr,
        "POST",
        path,
        Some(body.to_string().as_bytes()),
        TIMEOUT,
    )
    .unwrap()
}

/// The `data:` payloads of a streamed request, `[DONE]` included.
fn stream(addr: SocketAddr, path: &str, body: &Value) -> (u16, Vec<String>) {
    let open = client::open(
        addr,
        "POST",
        path,
        Some(body.to_string().as_bytes()),
        TIMEOUT,
    )
    .unwrap();
    let status = open.status;
    let mut events = Vec::new();
    open.events(&mut |d| {
        events.push(d.to_string());
        true
    })
    .unwrap();
    (status, events)
}

/// The text of streamed chunks (chat deltas or completion texts).
fn streamed_text(events: &[String]) -> String {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| {
            let v: Value = serde_json::from_str(e).unwrap();
            let c = &v["choices"][0];
            c["delta"]["content"]
                .as_str()
                .or(c["text"].as_str())
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

fn metric(addr: SocketAddr, name: &str) -> f64 {
    let r = client::request(addr, "GET", "/metrics", None, TIMEOUT).unwrap();
    let text = String::from_utf8(r.body).unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), Failed> {
    if cond { Ok(()) } else { Err(what().into()) }
}

fn chat(content: &str) -> Value {
    json!({"model": "smollm2", "messages": [{"role": "user", "content": content}]})
}

fn answers_and_streams(model: &str) -> Result<(), Failed> {
    let s = start(model, 4, 512, 64);
    let addr = s.addr;
    // The issue's question, greedy.
    let mut body = chat("What is the capital of France?");
    body["temperature"] = json!(0);
    body["max_tokens"] = json!(24);
    let r = post(addr, "/v1/chat/completions", &body);
    let v = r.json()?;
    check(r.status == 200, || format!("status {}: {v}", r.status))?;
    let text = v["choices"][0]["message"]["content"].as_str().unwrap_or("");
    check(text.contains("Paris"), || format!("answer {v}"))?;
    check(v["usage"]["completion_tokens"].as_u64() > Some(0), || {
        format!("usage {v}")
    })?;
    // Streamed == whole for the same seed, sampled, on both routes.
    for (path, mut body) in [
        (
            "/v1/chat/completions",
            chat("Write a short poem about the sea."),
        ),
        (
            "/v1/completions",
            json!({"prompt": "Once upon a time, in a small village", "model": "smollm2"}),
        ),
    ] {
        body["temperature"] = json!(0.9);
        body["top_p"] = json!(0.95);
        body["seed"] = json!(1234);
        body["max_tokens"] = json!(40);
        // The first request prefills its whole prompt in one batch; every
        // later one with the same prompt takes all but its last position
        // from the prefix cache and feeds that one token alone, which runs
        // other kernels (one row: 16-bit activations on AVX2) and may move
        // the first token's logits in their last bits, enough to flip a
        // sampled token. The same seed gives the same text for the same
        // cache state, so the stream is compared with a whole answer that
        // also found its prefix cached.
        let cold = post(addr, path, &body).json()?;
        check(cold["choices"][0]["finish_reason"].is_string(), || {
            format!("{path}: first answer {cold}")
        })?;
        let whole = post(addr, path, &body).json()?;
        let whole_text = whole["choices"][0]["message"]["content"]
            .as_str()
            .or(whole["choices"][0]["text"].as_str())
            .unwrap_or("")
            .to_string();
        body["stream"] = json!(true);
        let (status, events) = stream(addr, path, &body);
        check(status == 200, || format!("{path} stream status {status}"))?;
        check(events.last().map(String::as_str) == Some("[DONE]"), || {
            format!("{path}: stream does not end with [DONE]: {events:?}")
        })?;
        check(streamed_text(&events) == whole_text, || {
            format!(
                "{path}: streamed {:?} != whole {whole_text:?}",
                streamed_text(&events)
            )
        })?;
        let last: Value = serde_json::from_str(&events[events.len() - 2])?;
        check(
            last["choices"][0]["finish_reason"].is_string()
                && last["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"],
            || format!("{path}: last chunk {last} vs whole {whole}"),
        )?;
    }
    // Models, health.
    let models = client::request(addr, "GET", "/v1/models", None, TIMEOUT)?.json()?;
    check(models["data"][0]["id"] == "smollm2", || format!("{models}"))?;
    let health = client::request(addr, "GET", "/health", None, TIMEOUT)?;
    check(health.status == 200, || format!("health {}", health.status))?;
    Ok(())
}

/// curl, a client of its own: a whole and a streamed chat completion with
/// the same seed (and the same cached prefix) give the same text.
fn curl_client(model: &str) -> Result<(), Failed> {
    let s = start(model, 2, 512, 8);
    let mut body = chat("Write a short poem about the sea.");
    body["temperature"] = json!(0.9);
    body["seed"] = json!(99);
    body["max_tokens"] = json!(32);
    let curl = |body: &Value| -> Result<String, Failed> {
        let out = Command::new("curl")
            .args([
                "-sSN",
                "--max-time",
                "300",
                "-H",
                "Content-Type: application/json",
            ])
            .arg("-d")
            .arg(body.to_string())
            .arg(format!("http://{}/v1/chat/completions", s.addr))
            .output()?;
        if !out.status.success() {
            return Err(format!("curl: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(String::from_utf8(out.stdout)?)
    };
    // Warm the prefix cache first, as in `answers_and_streams`: the whole
    // and the streamed answer then both feed the last prompt token alone.
    curl(&body)?;
    let whole: Value = serde_json::from_str(&curl(&body)?)?;
    let whole_text = whole["choices"][0]["message"]["content"]
        .as_str()
        .ok_or_else(|| format!("no content in {whole}"))?
        .to_string();
    body["stream"] = json!(true);
    let streamed = curl(&body)?;
    let events: Vec<String> = streamed
        .split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data: ").map(str::to_string))
        .collect();
    check(events.last().map(String::as_str) == Some("[DONE]"), || {
        format!("no [DONE]: {streamed:?}")
    })?;
    check(
        !whole_text.is_empty() && streamed_text(&events) == whole_text,
        || {
            format!(
                "curl streamed {:?}, whole {whole_text:?}",
                streamed_text(&events)
            )
        },
    )?;
    Ok(())
}

fn bad_requests(model: &str) -> Result<(), Failed> {
    let s = start(model, 2, 64, 8);
    let addr = s.addr;
    let raw = |path: &str, body: &[u8]| {
        let r = client::request(addr, "POST", path, Some(body), TIMEOUT).unwrap();
        let v = r.json().unwrap_or(Value::Null);
        (r.status, v)
    };
    let long = "word ".repeat(200);
    for (path, body, param) in [
        ("/v1/chat/completions", b"{not json".to_vec(), Value::Null),
        ("/v1/chat/completions", b"[]".to_vec(), Value::Null),
        (
            "/v1/chat/completions",
            br#"{"messages": 3}"#.to_vec(),
            json!("messages"),
        ),
        (
            "/v1/chat/completions",
            chat("hi")
                .to_string()
                .replace("smollm2", "gpt-4")
                .into_bytes(),
            json!("model"),
        ),
        (
            "/v1/chat/completions",
            chat(&long).to_string().into_bytes(),
            json!("messages"),
        ),
        (
            "/v1/completions",
            json!({"prompt": long}).to_string().into_bytes(),
            json!("prompt"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": 1000})
                .to_string()
                .into_bytes(),
            json!("max_tokens"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "temperature": -1})
                .to_string()
                .into_bytes(),
            json!("temperature"),
        ),
    ] {
        let (status, v) = raw(path, &body);
        check(
            status == 400 && v["error"]["param"] == param && v["error"]["message"].is_string(),
            || format!("{path} {}: {status} {v}", String::from_utf8_lossy(&body)),
        )?;
    }
    let r = client::request(addr, "GET", "/v2/nothing", None, TIMEOUT)?;
    check(r.status == 404, || format!("unknown route: {}", r.status))?;
    // The server still answers after all that.
    let mut body =
        json!({"prompt": "The capital of Germany is", "max_tokens": 8, "temperature": 0});
    body["stop"] = json!("\n");
    let v = post(addr, "/v1/completions", &body).json()?;
    check(v["choices"][0]["text"] == " Berlin.", || format!("{v}"))?;
    check(
        metric(addr, "hetero_requests_total{outcome=\"invalid\"}") == 8.0,
        || "invalid requests not counted".into(),
    )?;
    Ok(())
}

fn load_and_metrics(model: &str) -> Result<(), Failed> {
    let s = start(model, 8, 256, 256);
    let addr = s.addr;
    let spec = LoadSpec {
        addr,
        model: Some("smollm2".into()),
        prompts: hetero_scheduler::real_model::DEFAULT_PROMPTS
            .iter()
            .map(|p| p.to_string())
            .collect(),
        streams: 24,
        requests_per_stream: 2,
        max_tokens: 12,
        timeout: TIMEOUT,
    };
    let (report, outcomes) = load::run(&spec);
    check(
        report.ok == 48 && report.statuses.get(&200) == Some(&48),
        || format!("{report:?}"),
    )?;
    for o in &outcomes {
        check(
            o.tokens >= 1 && o.tokens <= 12 && o.ttft_s.is_some(),
            || format!("{o:?}"),
        )?;
    }
    // Tokens counted == tokens returned; every request counted once.
    let returned: usize = outcomes.iter().map(|o| o.tokens).sum();
    check(
        metric(addr, "hetero_generated_tokens_total") == returned as f64,
        || format!("metrics count other tokens than the {returned} returned"),
    )?;
    check(
        metric(addr, "hetero_requests_total{outcome=\"completed\"}") == 48.0
            && metric(addr, "hetero_time_to_first_token_seconds_count") == 48.0
            && metric(addr, "hetero_queue_depth") == 0.0,
        || "request counts do not add up".into(),
    )?;
    check(s.state.engine.is_idle(), || "slots left taken".into())?;
    Ok(())
}

fn queue_full(model: &str) -> Result<(), Failed> {
    // One slot, one waiting place: of 8 requests at once, some are refused.
    let s = start(model, 1, 256, 1);
    let addr = s.addr;
    let results: Vec<client::HttpResponse> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                scope.spawn(move || {
                    let mut body = chat(&format!("Count to {}", i + 10));
                    body["max_tokens"] = json!(24);
                    post(addr, "/v1/chat/completions", &body)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.status == 200).count();
    let refused: Vec<_> = results.iter().filter(|r| r.status == 429).collect();
    check(
        ok >= 1 && !refused.is_empty() && ok + refused.len() == 8,
        || {
            format!(
                "statuses {:?}",
                results.iter().map(|r| r.status).collect::<Vec<_>>()
            )
        },
    )?;
    for r in &refused {
        let v = r.json()?;
        check(
            r.header("retry-after").is_some() && v["error"]["type"] == "rate_limit_error",
            || format!("429 without Retry-After or error object: {v}"),
        )?;
    }
    check(
        metric(addr, "hetero_requests_total{outcome=\"queue_full\"}") == refused.len() as f64,
        || "429s not counted".into(),
    )?;
    Ok(())
}

fn disconnect_frees_the_slot(model: &str) -> Result<(), Failed> {
    let s = start(model, 1, 512, 8);
    let addr = s.addr;
    let mut body = json!({"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0.8, "seed": 3, "stream": true});
    let open = client::open(
        addr,
        "POST",
        "/v1/completions",
        Some(body.to_string().as_bytes()),
        TIMEOUT,
    )?;
    let mut seen = 0;
    open.events(&mut |_| {
        seen += 1;
        seen < 3
    })?;
    // The connection is gone; the one slot must come free for this one.
    body["stream"] = json!(false);
    body["max_tokens"] = json!(8);
    let r = post(addr, "/v1/completions", &body);
    check(r.status == 200, || {
        format!("after a disconnect: {}", r.status)
    })?;
    check(
        metric(addr, "hetero_requests_total{outcome=\"cancelled\"}") == 1.0,
        || "the disconnected request was not cancelled".into(),
    )?;
    Ok(())
}

fn shutdown_finishes_running_requests(model: &str) -> Result<(), Failed> {
    let mut s = start(model, 2, 256, 8);
    let addr = s.addr;
    let body = json!({"prompt": "List three uses of a paperclip:", "max_tokens": 48, "temperature": 0, "stream": true});
    let running = std::thread::spawn(move || stream(addr, "/v1/completions", &body));
    // Let it start, then stop the server.
    std::thread::sleep(Duration::from_millis(300));
    drop(s.stop.take());
    let (status, events) = running.join().unwrap();
    check(
        status == 200 && events.last().map(String::as_str) == Some("[DONE]"),
        || format!("the running request did not finish: {status} {events:?}"),
    )?;
    let finished = events
        .iter()
        .rev()
        .nth(1)
        .and_then(|e| serde_json::from_str::<Value>(e).ok())
        .map(|v| v["choices"][0]["finish_reason"].is_string());
    check(finished == Some(true), || {
        format!("no finish reason: {events:?}")
    })?;
    drop(s);
    // Gone: no new connections.
    check(
        client::request(addr, "GET", "/health", None, Duration::from_secs(2)).is_err(),
        || "still answering after shutdown".into(),
    )?;
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let model = std::env::var("HETERO_TEST_GGUF")
        .ok()
        .filter(|p| std::path::Path::new(p).is_file());
    type Test = fn(&str) -> Result<(), Failed>;
    let tests: [(&str, Test); 6] = [
        ("http::answers_and_streams", answers_and_streams),
        ("http::bad_requests_are_named_400s", bad_requests),
        (
            "http::load_every_request_once_metrics_add_up",
            load_and_metrics,
        ),
        ("http::full_queue_is_429_with_retry_after", queue_full),
        ("http::disconnect_frees_the_slot", disconnect_frees_the_slot),
        (
            "http::shutdown_finishes_running_requests",
            shutdown_finishes_running_requests,
        ),
    ];
    let curl = Command::new("curl").arg("--version").output().is_ok();
    let mut trials: Vec<Trial> = tests
        .into_iter()
        .map(|(name, f)| match &model {
            Some(m) => {
                let m = m.clone();
                Trial::test(name, move || f(&m))
            }
            None => Trial::test(name, || Ok(()))
                .with_ignored_flag(true)
                .with_kind("skipped: HETERO_TEST_GGUF does not name a file"),
        })
        .collect();
    let name = "http::curl_streams_what_it_gets_whole";
    trials.push(match (&model, curl) {
        (Some(m), true) => {
            let m = m.clone();
            Trial::test(name, move || curl_client(&m))
        }
        (None, _) => Trial::test(name, || Ok(()))
            .with_ignored_flag(true)
            .with_kind("skipped: HETERO_TEST_GGUF does not name a file"),
        (_, false) => Trial::test(name, || Ok(()))
            .with_ignored_flag(true)
            .with_kind("skipped: curl is not installed (cargo xtask setup installs it)"),
    });
    libtest_mimic::run(&args, trials).exit();
}
