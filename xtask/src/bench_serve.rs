//! `cargo xtask bench-serve`: the HTTP serving benchmark. Starts
//! `hetero-serve --http` on the host and, when `LLAMA_CPP_BIN` names the
//! `bin/` folder of a llama.cpp build with `llama-server` (built from its
//! public source outside this repository; never committed), llama.cpp's
//! server on the same file with the same threads, slots and per-slot
//! context, both on loopback ports; then loads each in turn with
//! `hetero-serve-bench` (concurrent streams of streamed greedy chat
//! requests), alternating which goes first, and prints generated tokens/s
//! and time to first token per stream count, with the same-run ratios.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bench_llm::LLAMA_CPP_ENV;

/// A server process, killed on drop.
struct Server {
    name: String,
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one load run measured.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    tokens_per_s: f64,
    ttft_p50_s: f64,
    ttft_p99_s: f64,
    ok: u64,
    requests: u64,
}

pub struct Options<'a> {
    pub model: Option<&'a str>,
    pub streams: &'a [usize],
    pub slots: usize,
    pub max_len: usize,
    pub requests_per_stream: usize,
    pub max_tokens: usize,
    pub repeats: usize,
    /// hetero's configurations: each a list of device specs (default: one
    /// host device with every thread).
    pub hetero: &'a [Vec<String>],
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

fn release_binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("release").join(name)
}

/// `hetero-serve --http` on `devices` (device specs).
fn hetero_server(model: &Path, o: &Options<'_>, devices: &[String]) -> Result<Server, String> {
    let mut cmd = Command::new(release_binary("hetero-serve"));
    cmd.args(["--model", &model.to_string_lossy(), "--http", "127.0.0.1:0"]);
    for d in devices {
        cmd.args(["--device", d]);
    }
    let mut child = cmd
        .args(["--slots", &o.slots.to_string()])
        .args(["--max-len", &o.max_len.to_string()])
        .args(["--queue-limit", "4096"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start hetero-serve: {e}"))?;
    let stderr = child.stderr.take().ok_or("hetero-serve has no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let addr = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(a) = line.strip_prefix("listening on http://") {
                    break a.trim().to_string();
                }
                seen.push(line);
            }
            _ => {
                let _ = child.kill();
                return Err(format!(
                    "hetero-serve stopped before listening: {}",
                    seen.join("\n")
                ));
            }
        }
    };
    // Keep draining its stderr so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(Server {
        name: format!("hetero [{}]", devices.join(" + ")),
        child,
        addr,
    })
}

fn llama_server(
    bin: &Path,
    model: &Path,
    o: &Options<'_>,
    threads: usize,
) -> Result<Server, String> {
    let port = free_port()?;
    let exe = bin.join("llama-server");
    let child = Command::new(&exe)
        .args(["-m", &model.to_string_lossy(), "--host", "127.0.0.1"])
        .args(["--port", &port.to_string(), "-t", &threads.to_string()])
        .args(["-np", &o.slots.to_string()])
        .args(["-c", &(o.slots * o.max_len).to_string()])
        .env("LD_LIBRARY_PATH", bin)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let server = Server {
        name: format!("llama-server ({threads} threads)"),
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    // Ready when /health answers 200.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        if healthy(&server.addr) {
            return Ok(server);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err("llama-server did not become healthy within 120 s".into())
}

/// Whether `GET /health` at `addr` answers 200.
fn healthy(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

fn load(server: &Server, streams: usize, o: &Options<'_>) -> Result<Run, String> {
    let out = Command::new(release_binary("hetero-serve-bench"))
        .args(["--addr", &server.addr, "--json"])
        .args(["--streams", &streams.to_string()])
        .args(["--requests-per-stream", &o.requests_per_stream.to_string()])
        .args(["--max-tokens", &o.max_tokens.to_string()])
        .output()
        .map_err(|e| format!("cannot run hetero-serve-bench: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "hetero-serve-bench against {} failed: {}",
            server.name,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("hetero-serve-bench printed no JSON: {e}"))?;
    let r = &v["runs"][0];
    Ok(Run {
        tokens_per_s: r["tokens_per_s"].as_f64().unwrap_or(0.0),
        ttft_p50_s: r["ttft_p50_s"].as_f64().unwrap_or(0.0),
        ttft_p99_s: r["ttft_p99_s"].as_f64().unwrap_or(0.0),
        ok: r["ok"].as_u64().unwrap_or(0),
        requests: r["requests"].as_u64().unwrap_or(0),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn run(o: &Options<'_>) -> Result<(), String> {
    let model = o.model.map_or_else(crate::test_model::path, PathBuf::from);
    if !model.is_file() {
        return Err(format!(
            "{} is not a file (run `cargo xtask setup` for the test model, or pass --model)",
            model.display()
        ));
    }
    crate::cargo(&[
        "build",
        "--release",
        "--quiet",
        "--package",
        "hetero-examples",
        "--bin",
        "hetero-serve",
        "--bin",
        "hetero-serve-bench",
    ])?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut servers = Vec::new();
    match std::env::var_os(LLAMA_CPP_ENV).map(PathBuf::from) {
        Some(bin) => {
            eprintln!("xtask: bench-serve: llama-server from {}", bin.display());
            servers.push(llama_server(&bin, &model, o, threads)?);
        }
        None => eprintln!(
            "xtask: bench-serve: {LLAMA_CPP_ENV} is not set: hetero's figures only (set it to \
             the bin/ folder of a llama.cpp build with llama-server for the side-by-side ratios)"
        ),
    }
    let llama = servers.len();
    let default = [vec![format!("host:threads={threads}")]];
    let configs = if o.hetero.is_empty() {
        &default[..]
    } else {
        o.hetero
    };
    for devices in configs {
        eprintln!(
            "xtask: bench-serve: hetero-serve --http on {}",
            devices.join(" + ")
        );
        servers.push(hetero_server(&model, o, devices)?);
    }
    // results[server][streams index] = runs
    let mut results = vec![vec![Vec::<Run>::new(); o.streams.len()]; servers.len()];
    for rep in 0..o.repeats.max(1) {
        for (k, &streams) in o.streams.iter().enumerate() {
            // Rotate which server goes first.
            let mut order: Vec<usize> = (0..servers.len()).collect();
            order.rotate_left((rep + k) % servers.len());
            for s in order {
                eprintln!(
                    "xtask: bench-serve: run {} of {}, {streams} streams, {}",
                    rep + 1,
                    o.repeats.max(1),
                    servers[s].name
                );
                results[s][k].push(load(&servers[s], streams, o)?);
            }
        }
    }
    println!(
        "\nServing {} : {} requests per stream, {} tokens each, greedy, {} slots of {} positions; \
         medians of {} runs\n",
        model.display(),
        o.requests_per_stream,
        o.max_tokens,
        o.slots,
        o.max_len,
        o.repeats.max(1)
    );
    print!("| streams |");
    for s in &servers {
        print!(" {} tokens/s | TTFT p50 / p99 (ms) |", s.name);
    }
    let ratios = if llama == 1 { servers.len() - 1 } else { 0 };
    for s in &servers[llama..servers.len().min(llama + ratios)] {
        print!(" {} / llama tokens/s | TTFT p99 / llama |", s.name);
    }
    println!();
    println!("|---|{}", "---|---|".repeat(servers.len() + ratios));
    for (k, &streams) in o.streams.iter().enumerate() {
        print!("| {streams} |");
        let mut med = Vec::new();
        for runs in results.iter().map(|r| &r[k]) {
            let tps = median(runs.iter().map(|r| r.tokens_per_s).collect());
            let p50 = median(runs.iter().map(|r| r.ttft_p50_s).collect());
            let p99 = median(runs.iter().map(|r| r.ttft_p99_s).collect());
            let failed: u64 = runs.iter().map(|r| r.requests - r.ok).sum();
            let note = if failed > 0 {
                format!(" ({failed} failed)")
            } else {
                String::new()
            };
            print!(" {tps:.1}{note} | {:.0} / {:.0} |", p50 * 1e3, p99 * 1e3);
            med.push((tps, p99));
        }
        if ratios > 0 {
            let (l_tps, l_p99) = med[0];
            for (h, &(h_tps, h_p99)) in med.iter().enumerate().skip(1) {
                // Per-run ratios too: the spread says how much to trust the median.
                let runs: Vec<String> = results[0][k]
                    .iter()
                    .zip(&results[h][k])
                    .map(|(l, h)| format!("{:.2}", h.tokens_per_s / l.tokens_per_s))
                    .collect();
                print!(
                    " {:.2}x (runs {}) | {:.2}x |",
                    h_tps / l_tps,
                    runs.join(", "),
                    h_p99 / l_p99
                );
            }
        }
        println!();
    }
    Ok(())
}
