//! hetero-serve-bench: load an OpenAI-compatible server (hetero-serve
//! --http, llama.cpp's llama-server, any other) with concurrent streamed
//! chat requests and print generated tokens/s and time to first token.

use std::net::ToSocketAddrs;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hetero_core::{Error, Result};
use hetero_scheduler::real_model::DEFAULT_PROMPTS;
use hetero_server::load::{self, LoadSpec};
use serde_json::json;

/// For each count of concurrent streams, that many clients each send
/// `--requests-per-stream` streamed chat requests back to back (greedy,
/// `--max-tokens` each, the prompts of hetero-serve's built-in list), one
/// connection per request. Prints per count: requests answered, generated
/// tokens per second over the run, time to first token p50 / p99, mean
/// time per token after the first. Loopback or LAN servers only: this is a
/// plain-HTTP client.
#[derive(Debug, Parser)]
#[command(name = "hetero-serve-bench", version)]
struct Args {
    /// The server, `HOST:PORT` (e.g. `127.0.0.1:8080`).
    #[arg(long)]
    addr: String,
    /// Concurrent streams, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,32,64")]
    streams: Vec<usize>,
    /// Requests each stream sends, one after the other.
    #[arg(long, default_value_t = 2)]
    requests_per_stream: usize,
    /// max_tokens of every request.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// The `model` field to send (default: none; llama-server ignores it,
    /// hetero-serve takes its one model).
    #[arg(long)]
    model: Option<String>,
    /// Seconds a request may take.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    hetero_examples::exit_code(run(&Args::parse()))
}

fn run(args: &Args) -> Result<()> {
    let addr = args
        .addr
        .to_socket_addrs()
        .map_err(|e| Error::invalid("--addr", format!("{:?} is not HOST:PORT: {e}", args.addr)))?
        .next()
        .ok_or_else(|| Error::invalid("--addr", format!("{:?} resolves to nothing", args.addr)))?;
    if args.streams.contains(&0) || args.requests_per_stream == 0 || args.max_tokens == 0 {
        return Err(Error::invalid(
            "--streams / --requests-per-stream / --max-tokens",
            "must be at least 1",
        ));
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(Error::invalid(
            "--timeout",
            "must be a number of seconds > 0",
        ));
    }
    let mut reports = Vec::new();
    for &streams in &args.streams {
        let spec = LoadSpec {
            addr,
            model: args.model.clone(),
            prompts: DEFAULT_PROMPTS.iter().map(|s| s.to_string()).collect(),
            streams,
            requests_per_stream: args.requests_per_stream,
            max_tokens: args.max_tokens,
            timeout: Duration::from_secs_f64(args.timeout),
        };
        eprintln!(
            "{streams} streams x {} requests...",
            args.requests_per_stream
        );
        let (report, _) = load::run(&spec);
        if report.ok == 0 {
            return Err(Error::invalid(
                "--addr",
                format!(
                    "no request to {addr} succeeded: {}",
                    report.first_error.as_deref().unwrap_or("no response")
                ),
            ));
        }
        reports.push(report);
    }
    if args.json {
        println!(
            "{}",
            json!({"addr": args.addr, "max_tokens": args.max_tokens, "runs": reports})
        );
        return Ok(());
    }
    println!(
        "{:>8} {:>9} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "streams", "requests", "ok", "tokens/s", "TTFT p50", "TTFT p99", "ms/token"
    );
    for r in &reports {
        println!(
            "{:>8} {:>9} {:>8} {:>10.1} {:>9.0}ms {:>9.0}ms {:>10.1}",
            r.streams,
            r.requests,
            r.ok,
            r.tokens_per_s,
            r.ttft_p50_s * 1e3,
            r.ttft_p99_s * 1e3,
            r.mean_inter_token_s * 1e3
        );
    }
    Ok(())
}
