//! hetero-serve --http as a user runs it: bad flags are named errors with
//! a non-zero exit; with the real SmolLM2 file (`HETERO_TEST_GGUF`,
//! skipped without it) it prints where it listens, answers a chat
//! request, and on SIGTERM stops cleanly (exit 0).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use hetero_server::client;
use libtest_mimic::{Arguments, Failed, Trial};

fn serve() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hetero-serve"));
    c.args(["--device", "host"]);
    c
}

fn fails_with(args: &[&str], needle: &str) -> Result<(), Failed> {
    let out = serve().args(args).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !err.contains(needle) {
        return Err(format!(
            "{args:?}: status {}, stderr {err:?}, wanted {needle:?}",
            out.status
        )
        .into());
    }
    Ok(())
}

fn bad_flags() -> Result<(), Failed> {
    fails_with(
        &["--model", "tiny", "--http", "127.0.0.1:0"],
        "--model PATH",
    )?;
    fails_with(
        &["--model", "/nonexistent/m.gguf", "--http", "127.0.0.1:0"],
        "/nonexistent/m.gguf",
    )?;
    fails_with(
        &[
            "--model",
            "tiny",
            "--http",
            "127.0.0.1:0",
            "--shutdown-grace=-1",
        ],
        "--shutdown-grace",
    )?;
    Ok(())
}

/// Where a server listens, what it said before, and the rest of its
/// stderr.
type Listening = (
    std::net::SocketAddr,
    Vec<String>,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
);

/// Read `child`'s stderr (piped) until it says where it listens: the
/// address, the lines before, and the rest of its stderr. A child that
/// exits first is an error with what it said.
fn read_until_listening(child: &mut std::process::Child) -> Result<Listening, Failed> {
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut log = Vec::new();
    loop {
        let Some(line) = lines.next() else {
            let _ = child.kill();
            return Err(format!("exited before listening: {log:?}").into());
        };
        let line = line?;
        if let Some(a) = line.strip_prefix("listening on http://") {
            return Ok((a.trim().parse()?, log, lines));
        }
        log.push(line);
    }
}

/// A greedy completion of `prompt` from the server at `addr` is what
/// `hetero-generate` alone on the host gives.
fn same_completion_as_one_device(
    addr: std::net::SocketAddr,
    model: &str,
    prompt: &str,
    max_tokens: usize,
) -> Result<(), Failed> {
    let body = serde_json::json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0});
    let r = client::request(
        addr,
        "POST",
        "/v1/completions",
        Some(body.to_string().as_bytes()),
        Duration::from_secs(120),
    )?;
    let got: serde_json::Value = serde_json::from_slice(&r.body)?;
    let alone = Command::new(env!("CARGO_BIN_EXE_hetero-generate"))
        .args(["--model", model, "--device", "host", "--json"])
        .args(["--prompt", prompt, "--max-tokens", &max_tokens.to_string()])
        .output()?;
    let alone: serde_json::Value = serde_json::from_slice(&alone.stdout)?;
    if r.status != 200 || got["choices"][0]["text"] != alone["text"] {
        return Err(format!("{}: {got} vs one device {}", r.status, alone["text"]).into());
    }
    Ok(())
}

fn serves_and_stops(model: &str) -> Result<(), Failed> {
    fails_with(
        &[
            "--model",
            model,
            "--http",
            "not-an-address",
            "--slots",
            "1",
            "--max-len",
            "64",
        ],
        "--http",
    )?;
    let mut child = serve()
        .args(["--model", model, "--http", "127.0.0.1:0"])
        .args([
            "--slots",
            "2",
            "--max-len",
            "256",
            "--served-model-name",
            "smol",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let (addr, _, lines) = read_until_listening(&mut child)?;
    let body = serde_json::json!({
        "model": "smol",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_tokens": 24,
    });
    let r = client::request(
        addr,
        "POST",
        "/v1/chat/completions",
        Some(body.to_string().as_bytes()),
        Duration::from_secs(120),
    )?;
    let v = r.json()?;
    if r.status != 200
        || !v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("")
            .contains("Paris")
    {
        let _ = child.kill();
        return Err(format!("answer {}: {v}", r.status).into());
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    if !killed.success() {
        let _ = child.kill();
        return Err("kill -TERM failed".into());
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait()?;
    if !status.success() || !rest.iter().any(|l| l == "stopped") {
        return Err(format!("after SIGTERM: {status}, stderr {rest:?}").into());
    }
    Ok(())
}

/// `--split auto` on devices none of which holds the model: the report
/// says what it chose (one pipeline, or pipelines side by side) and the
/// server answers what one process on one device answers (greedy).
fn auto_split_serves(model: &str) -> Result<(), Failed> {
    let device = "host:threads=1,memory=100MiB";
    let mut child = serve()
        .args(["--model", model, "--http", "127.0.0.1:0", "--split", "auto"])
        .args(["--device", device, "--device", device, "--device", device])
        .args(["--slots", "2", "--max-len", "64"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let (addr, log, lines) = read_until_listening(&mut child)?;
    std::thread::spawn(move || for _ in lines {});
    let result = (|| -> Result<(), Failed> {
        if !log.iter().any(|l| l.starts_with("recommended: ")) {
            return Err(format!("no plan report: {log:?}").into());
        }
        let prompt = "The capital of Germany is";
        same_completion_as_one_device(addr, model, prompt, 8)?;
        Ok(())
    })();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait()?;
    result?;
    if !status.success() {
        return Err(format!("after SIGTERM: {status}").into());
    }
    Ok(())
}

/// Start `hetero-serve --http` with `env`, returning the child and the
/// address once it listens (rank 0) or the child alone (other ranks).
fn spawn_http(
    model: &str,
    env: &[(&str, String)],
    wait_listening: bool,
) -> Result<(std::process::Child, Option<std::net::SocketAddr>), Failed> {
    spawn_http_with(model, env, wait_listening, &[])
}

/// [`spawn_http`] with more flags.
fn spawn_http_with(
    model: &str,
    env: &[(&str, String)],
    wait_listening: bool,
    extra: &[&str],
) -> Result<(std::process::Child, Option<std::net::SocketAddr>), Failed> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hetero-serve"));
    cmd.args(["--model", model, "--http", "127.0.0.1:0", "--rank-from-env"])
        .args(extra)
        .args([
            "--device",
            "host:threads=1",
            "--slots",
            "2",
            "--max-len",
            "256",
        ])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if !wait_listening {
        let stderr = child.stderr.take().ok_or("no stderr")?;
        std::thread::spawn(move || for _ in BufReader::new(stderr).lines() {});
        return Ok((child, None));
    }
    let (addr, _, lines) = read_until_listening(&mut child)?;
    std::thread::spawn(move || for _ in lines {});
    Ok((child, Some(addr)))
}

fn metric(addr: std::net::SocketAddr, line_start: &str) -> Result<f64, Failed> {
    let r = client::request(addr, "GET", "/metrics", None, Duration::from_secs(30))?;
    let text = String::from_utf8(r.body)?;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no {line_start} in {text}").into())
}

/// Requests at once to `addr`; their statuses.
fn burst(addr: std::net::SocketAddr, n: usize) -> Vec<u16> {
    std::thread::scope(|scope| {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                scope.spawn(move || {
                    let body = serde_json::json!({
                        "prompt": format!("Count to {}:", i + 3),
                        "max_tokens": 6,
                        "temperature": 0,
                    });
                    client::request(
                        addr,
                        "POST",
                        "/v1/completions",
                        Some(body.to_string().as_bytes()),
                        Duration::from_secs(120),
                    )
                    .map_or(0, |r| r.status)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0)).collect()
    })
}

/// Two ranks (torchrun's variables): rank 0 serves HTTP and runs requests
/// on rank 1's device too; when rank 1 dies, rank 0 goes on alone; on
/// SIGTERM rank 0 stops and so does a connected rank.
fn two_ranks(model: &str) -> Result<(), Failed> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let env = |rank: usize| {
        vec![
            ("RANK", rank.to_string()),
            ("WORLD_SIZE", "2".to_string()),
            ("MASTER_ADDR", "127.0.0.1".to_string()),
            ("MASTER_PORT", port.to_string()),
        ]
    };
    let (mut rank1, _) = spawn_http(model, &env(1), false)?;
    let (mut rank0, addr) = match spawn_http(model, &env(0), true) {
        Ok(r) => r,
        Err(e) => {
            let _ = rank1.kill();
            return Err(e);
        }
    };
    let addr = addr.ok_or("no address")?;
    let result = (|| -> Result<(), Failed> {
        let statuses = burst(addr, 8);
        if statuses.iter().any(|&s| s != 200) {
            return Err(format!("statuses {statuses:?}").into());
        }
        let on0 = metric(addr, "hetero_device_requests_total{device=\"host:0\"}")?;
        let on1 = metric(
            addr,
            "hetero_device_requests_total{device=\"rank1/host:0\"}",
        )?;
        if on0 + on1 != 8.0 || on0 == 0.0 || on1 == 0.0 {
            return Err(format!("requests per device: {on0} here, {on1} on rank 1").into());
        }
        // Rank 1 dies: rank 0 serves on alone.
        rank1.kill()?;
        rank1.wait()?;
        std::thread::sleep(Duration::from_millis(300));
        let statuses = burst(addr, 4);
        if statuses.iter().any(|&s| s != 200) {
            return Err(format!("after rank 1 died: statuses {statuses:?}").into());
        }
        let after = metric(
            addr,
            "hetero_device_requests_total{device=\"rank1/host:0\"}",
        )?;
        if after != on1 {
            return Err("a dead rank was given requests".into());
        }
        Ok(())
    })();
    let _ = Command::new("kill")
        .args(["-TERM", &rank0.id().to_string()])
        .status();
    let status = rank0.wait()?;
    let _ = rank1.kill();
    result?;
    if !status.success() {
        return Err(format!("rank 0 after SIGTERM: {status}").into());
    }
    Ok(())
}

/// The model split over two processes (`--split layers:12,18`, or
/// `auto`: the ranks' profiles placed in rank order; a stage per rank):
/// rank 0 serves HTTP on the whole line and answers what one process
/// answers (greedy); on SIGTERM rank 0 stops the line and both ranks exit
/// cleanly.
fn stage_ranks(model: &str, split: &str) -> Result<(), Failed> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let env = |rank: usize| {
        vec![
            ("RANK", rank.to_string()),
            ("WORLD_SIZE", "2".to_string()),
            ("MASTER_ADDR", "127.0.0.1".to_string()),
            ("MASTER_PORT", port.to_string()),
        ]
    };
    let split = ["--split", split];
    let (mut rank1, _) = spawn_http_with(model, &env(1), false, &split)?;
    let (mut rank0, addr) = match spawn_http_with(model, &env(0), true, &split) {
        Ok(r) => r,
        Err(e) => {
            let _ = rank1.kill();
            return Err(e);
        }
    };
    let addr = addr.ok_or("no address")?;
    let prompt = "The capital of Germany is";
    let result = (|| -> Result<(), Failed> {
        same_completion_as_one_device(addr, model, prompt, 10)?;
        Ok(())
    })();
    let _ = Command::new("kill")
        .args(["-TERM", &rank0.id().to_string()])
        .status();
    let status0 = rank0.wait()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status1 = loop {
        if let Some(s) = rank1.try_wait()? {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = rank1.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    result?;
    match (status0.success(), status1) {
        (true, Some(s)) if s.success() => Ok(()),
        other => Err(format!("after SIGTERM: rank 0 {status0}, rank 1 {other:?}").into()),
    }
}

fn main() {
    let args = Arguments::from_args();
    let mut trials = vec![Trial::test(
        "serve_http_cli::bad_flags_are_named",
        bad_flags,
    )];
    match std::env::var("HETERO_TEST_GGUF")
        .ok()
        .filter(|p| Path::new(p).is_file())
    {
        Some(p) => {
            let q = p.clone();
            let r = p.clone();
            let a = p.clone();
            let b = p.clone();
            trials.push(Trial::test(
                "serve_http_cli::auto_split_serves",
                move || auto_split_serves(&b),
            ));
            trials.push(Trial::test(
                "serve_http_cli::serves_and_stops_on_sigterm",
                move || serves_and_stops(&p),
            ));
            trials.push(Trial::test(
                "serve_http_cli::two_ranks_serve_and_survive_a_dead_rank",
                move || two_ranks(&q),
            ));
            trials.push(Trial::test(
                "serve_http_cli::model_split_over_two_ranks_serves",
                move || stage_ranks(&r, "layers:12,18"),
            ));
            trials.push(Trial::test(
                "serve_http_cli::model_split_auto_over_two_ranks_serves",
                move || stage_ranks(&a, "auto"),
            ));
        }
        None => {
            for name in [
                "serve_http_cli::serves_and_stops_on_sigterm",
                "serve_http_cli::two_ranks_serve_and_survive_a_dead_rank",
                "serve_http_cli::model_split_over_two_ranks_serves",
                "serve_http_cli::model_split_auto_over_two_ranks_serves",
                "serve_http_cli::auto_split_serves",
            ] {
                trials.push(
                    Trial::test(name, || Ok(()))
                        .with_ignored_flag(true)
                        .with_kind("skipped: HETERO_TEST_GGUF does not name a file"),
                );
            }
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
