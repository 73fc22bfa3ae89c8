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
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut log = Vec::new();
    let addr = loop {
        let Some(line) = lines.next() else {
            let _ = child.kill();
            return Err(format!("exited before listening: {log:?}").into());
        };
        let line = line?;
        if let Some(a) = line.strip_prefix("listening on http://") {
            break a.trim().parse::<std::net::SocketAddr>()?;
        }
        log.push(line);
    };
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
        Some(p) => trials.push(Trial::test(
            "serve_http_cli::serves_and_stops_on_sigterm",
            move || serves_and_stops(&p),
        )),
        None => trials.push(
            Trial::test("serve_http_cli::serves_and_stops_on_sigterm", || Ok(()))
                .with_ignored_flag(true)
                .with_kind("skipped: HETERO_TEST_GGUF does not name a file"),
        ),
    }
    libtest_mimic::run(&args, trials).exit();
}
