//! A model split by layers from the command line: `hetero-generate
//! --split` gives the one-device greedy ids and reports its stages in
//! `--json`; `hetero-place --model` profiles, plans and explains, and
//! leaves out a device too small for any layer. Bad `--split` values are
//! named errors. The same split over processes (`--rank-from-env`, one
//! stage per rank over loopback TCP) gives the same ids, also when the
//! processes are started by `mpirun` (skipped with the reason where no
//! MPI launcher is installed), and a stage process killed mid-run ends the
//! others with an error within the stage timeout. Skipped without
//! `HETERO_TEST_GGUF`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn json(bin: &str, args: &[&str]) -> Result<serde_json::Value, Failed> {
    let out = run(bin, args);
    if !out.status.success() {
        return Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

const GENERATE: &str = env!("CARGO_BIN_EXE_hetero-generate");
const PLACE: &str = env!("CARGO_BIN_EXE_hetero-place");

fn generate_split(model: &str) -> Result<(), Failed> {
    let base = [
        "--model",
        model,
        "--json",
        "--prompt",
        "The capital of Germany is",
        "--max-tokens",
        "12",
    ];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        json(GENERATE, &a)
    };
    let one = with(&["--device", "host"])?;
    assert_eq!(one["devices"].as_array().map(Vec::len), Some(1));
    let layers = one["devices"][0]["layers"][1].as_u64().ok_or("no layers")? as usize + 1;
    let first = layers / 3;
    let split = format!("layers:{first},{}", layers - first);
    let two = with(&[
        "--device",
        "host:threads=1",
        "--device",
        "host:threads=1",
        "--split",
        &split,
    ])?;
    if two["ids"] != one["ids"] {
        return Err(format!("split ids {} vs one device {}", two["ids"], one["ids"]).into());
    }
    let stages = two["devices"].as_array().ok_or("no devices")?;
    assert_eq!(stages.len(), 2);
    assert_eq!(stages[0]["layers"], serde_json::json!([0, first - 1]));
    assert_eq!(stages[1]["layers"], serde_json::json!([first, layers - 1]));
    // auto: the DP's choice, whatever it is, gives the same ids.
    let auto = with(&["--device", "host:threads=1", "--device", "host:threads=1"])?;
    if auto["ids"] != one["ids"] {
        return Err(format!("auto ids {} vs one device {}", auto["ids"], one["ids"]).into());
    }
    // Bad values, named.
    for (split, needle) in [("layers:1,2", "one count per device"), ("bogus", "--split")] {
        let mut a = base.to_vec();
        a.extend_from_slice(&["--device", "host", "--device", "host", "--split", split]);
        let out = run(GENERATE, &a);
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !err.contains(needle) {
            return Err(format!("--split {split}: {}, stderr {err}", out.status).into());
        }
    }
    Ok(())
}

/// `hetero-place --model MODEL --json` on two one-thread hosts, then `extra`.
fn place_on_two_hosts(model: &str, extra: &[&str]) -> Result<serde_json::Value, Failed> {
    let mut args = vec![
        "--model",
        model,
        "--json",
        "--device",
        "host:threads=1",
        "--device",
        "host:threads=1",
    ];
    args.extend_from_slice(extra);
    json(PLACE, &args)
}

fn place_model(model: &str) -> Result<(), Failed> {
    let r = place_on_two_hosts(
        model,
        &["--device", "host:threads=1,memory=1MiB", "--batch", "2"],
    )?;
    let report = &r["report"];
    let dp = &report["dp"];
    let stages = dp["stages"].as_array().ok_or("the DP found no plan")?;
    let layers = r["profiles"][0]["layer_s"]
        .as_array()
        .ok_or("no profile")?
        .len();
    let covered: u64 = stages
        .iter()
        .map(|s| s["layers"][1].as_u64().unwrap_or(0) - s["layers"][0].as_u64().unwrap_or(0) + 1)
        .sum();
    assert_eq!(covered as usize, layers);
    let left = report["left_out"].as_array().ok_or("no left_out")?;
    if left.len() != 1 || left[0][0].as_str() != Some("host:2") {
        return Err(format!("left out: {left:?}").into());
    }
    for base in ["memory_proportional", "equal"] {
        if report[base]["fits"].as_bool() == Some(true) {
            let (d, b) = (
                dp["bottleneck_s"].as_f64().ok_or("dp")?,
                report[base]["bottleneck_s"].as_f64().ok_or("base")?,
            );
            assert!(d <= b + 1e-12, "dp {d} vs {base} {b}");
        }
    }
    Ok(())
}

/// `hetero-place --model --measure --measure-rounds 2 --json`: every plan
/// that fits measured twice, its reported rate the upper of the two (the
/// median of an even count), each of its stages' calls, seconds and
/// busy fraction reported beside the plan's predicted seconds, and the
/// plan predicted again from its stages timed alone (the default).
fn place_model_measured(model: &str) -> Result<(), Failed> {
    let r = place_on_two_hosts(
        model,
        &[
            "--batch",
            "2",
            "--context",
            "8",
            "--max-len",
            "96",
            "--measure",
            "--measure-rounds",
            "2",
            "--measure-seconds",
            "2",
        ],
    )?;
    let measured = r["measured"].as_array().ok_or("no measured plans")?;
    let report = &r["report"];
    let dp_name = report["dp"]["name"].as_str().ok_or("no DP plan")?;
    if !measured.iter().any(|m| m["plan"].as_str() == Some(dp_name)) {
        return Err(format!("the DP's plan {dp_name} was not measured: {measured:?}").into());
    }
    for m in measured {
        let rounds: Vec<f64> = m["rounds_tokens_per_s"]
            .as_array()
            .ok_or("no rounds")?
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect();
        let rate = m["tokens_per_s"].as_f64().ok_or("no rate")?;
        if rounds.len() != 2 || rounds.iter().any(|&x| x <= 0.0) || rate != rounds[0].max(rounds[1])
        {
            return Err(format!("rounds {rounds:?}, reported {rate}: {m}").into());
        }
        let stages = m["stages"].as_array().ok_or("no stages")?;
        if stages.is_empty() {
            return Err(format!("no stage measured: {m}").into());
        }
        // Each stage timed alone just before (the default), and the plan
        // predicted again from those seconds: a pipeline's batch over its
        // slowest stage, summed over the pipelines side by side.
        let alone: Vec<f64> = stages
            .iter()
            .filter_map(|s| s["alone_now_step_s"].as_f64())
            .collect();
        let now = m["predicted_now_tokens_per_s"]
            .as_f64()
            .ok_or("no prediction from the stages timed alone")?;
        let groups: Vec<usize> = match report_plan(report, m)?["groups"].as_array() {
            Some(g) => g
                .iter()
                .filter_map(|n| n.as_u64())
                .map(|n| n as usize)
                .collect(),
            None => vec![stages.len()],
        };
        let mut want = 0.0;
        let mut next = 0;
        for g in groups {
            let slowest = alone
                .get(next..next + g)
                .ok_or("fewer timings than stages")?;
            want += 2.0 / slowest.iter().copied().fold(0.0, f64::max);
            next += g;
        }
        let against = m["measured_over_predicted_now"]
            .as_f64()
            .unwrap_or(f64::NAN);
        if alone.len() != stages.len()
            || alone.iter().any(|&t| t <= 0.0)
            || (now - want).abs() > 1e-9 * want
            || (against - rate / now).abs() > 1e-9
        {
            return Err(
                format!("stages alone {alone:?}, predicted now {now} (want {want}): {m}").into(),
            );
        }
        for s in stages {
            let calls = s["calls"].as_u64().ok_or("no calls")?;
            let mean = s["mean_step_s"].as_f64().ok_or("no mean step")?;
            let predicted = s["predicted_step_s"].as_f64().ok_or("no predicted step")?;
            let busy = s["busy_fraction"].as_f64().ok_or("no busy fraction")?;
            // At least four steps of a group per stage (the measurement's
            // floor), each of which took time; busy at most the whole run
            // (a little over 1 is the clocks' granularity).
            if calls < 4
                || mean <= 0.0
                || predicted <= 0.0
                || !(0.0..=1.01).contains(&busy)
                || busy == 0.0
            {
                return Err(format!("stage {s} of {}", m["plan"]).into());
            }
        }
    }
    Ok(())
}

/// The report's plan that measurement `m` names.
fn report_plan<'a>(
    report: &'a serde_json::Value,
    m: &serde_json::Value,
) -> Result<&'a serde_json::Value, Failed> {
    let name = m["plan"].as_str().ok_or("a measurement names no plan")?;
    [
        "dp",
        "memory_proportional",
        "equal",
        "best_single",
        "replicas",
        "pipelines",
    ]
    .iter()
    .map(|k| &report[k])
    .find(|p| p["name"].as_str() == Some(name))
    .ok_or_else(|| format!("no plan {name} in the report").into())
}

/// Start `counts.len()` processes of hetero-generate as the ranks of one
/// job (torchrun's variables), each holding its count of layers on a
/// one-thread host device.
fn spawn_ranks(model: &str, counts: &[usize], extra: &[&str]) -> Result<Vec<Child>, Failed> {
    let split = format!(
        "layers:{}",
        counts
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let devices = vec![vec!["host:threads=1"]; counts.len()];
    spawn_job(model, &split, &devices, extra)
}

/// Start one hetero-generate per entry of `devices` as the ranks of one
/// job (rank i on the device specs `devices[i]`), all with `--split split`.
fn spawn_job(
    model: &str,
    split: &str,
    devices: &[Vec<&str>],
    extra: &[&str],
) -> Result<Vec<Child>, Failed> {
    let port = free_port()?;
    let mut children = Vec::new();
    for (rank, specs) in devices.iter().enumerate() {
        let child = Command::new(GENERATE)
            .args([
                "--model",
                model,
                "--rank-from-env",
                "--split",
                split,
                "--json",
            ])
            .args(specs.iter().flat_map(|d| ["--device", d]))
            .args(extra)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", devices.len().to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match child {
            Ok(c) => children.push(c),
            Err(e) => {
                for mut c in children {
                    let _ = c.kill();
                }
                return Err(e.into());
            }
        }
    }
    Ok(children)
}

/// Wait for every child until `deadline`, killing those still running
/// then; their outputs (`None` for one that had to be killed).
fn wait_all(children: Vec<Child>, deadline: Instant) -> Vec<Option<Output>> {
    let mut outs = Vec::new();
    for mut c in children {
        loop {
            match c.try_wait() {
                Ok(Some(_)) => {
                    outs.push(c.wait_with_output().ok());
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    outs.push(None);
                    break;
                }
            }
        }
    }
    outs
}

/// The prompt and token count the multi-process cases generate.
const RANKS_PROMPT: [&str; 4] = [
    "--prompt",
    "The capital of Germany is",
    "--max-tokens",
    "12",
];

/// `hetero-generate --json` of [`RANKS_PROMPT`] on one host device, and
/// the model's layer count.
fn one_device_reference(model: &str) -> Result<(serde_json::Value, usize), Failed> {
    let mut args = vec!["--model", model, "--json", "--device", "host"];
    args.extend_from_slice(&RANKS_PROMPT);
    let one = json(GENERATE, &args)?;
    let layers = one["devices"][0]["layers"][1].as_u64().ok_or("no layers")? as usize + 1;
    Ok((one, layers))
}

/// Rank 0's `--json` (`got`) has the one-device ids and `ranks` stages,
/// the last on rank `ranks - 1` (`label` names the case in the error).
fn one_device_ids_over_ranks(
    label: &str,
    got: &serde_json::Value,
    one: &serde_json::Value,
    ranks: usize,
) -> Result<(), Failed> {
    if got["ids"] != one["ids"] {
        return Err(format!("{label}: ids {} vs one device {}", got["ids"], one["ids"]).into());
    }
    let stages = got["devices"].as_array().ok_or("no devices")?;
    if stages.len() != ranks || stages[ranks - 1]["rank"] != ranks - 1 {
        return Err(format!("{label}: stages {stages:?}").into());
    }
    Ok(())
}

/// A loopback port free a moment ago, for rank 0's rendezvous.
fn free_port() -> Result<u16, Failed> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The model split over 2 and 3 processes (hidden states over loopback
/// TCP) gives the one-device greedy ids; every rank exits cleanly.
fn ranks_give_one_device_ids(model: &str) -> Result<(), Failed> {
    let prompt = RANKS_PROMPT;
    let (one, layers) = one_device_reference(model)?;
    for counts in [
        vec![layers / 2, layers - layers / 2],
        vec![layers / 3, layers / 3, layers - 2 * (layers / 3)],
    ] {
        let children = spawn_ranks(model, &counts, &prompt)?;
        let outs = wait_all(children, Instant::now() + Duration::from_secs(180));
        let first = all_succeeded(&outs, &format!("{counts:?}"))?;
        let got: serde_json::Value = serde_json::from_slice(&first.stdout)?;
        one_device_ids_over_ranks(&format!("{counts:?}"), &got, &one, counts.len())?;
    }
    Ok(())
}

/// A launcher's arguments to start `n` processes, rank 0 at the port.
type LaunchArgs = fn(usize, u16) -> Vec<String>;

/// The MPI launcher on this machine: how to start `n` processes with
/// rank 0's address passed to each, by flavour (Open MPI's `mpirun`,
/// MPICH's `mpiexec`); `Err` says why there is none.
fn mpi_launcher() -> Result<(&'static str, LaunchArgs), String> {
    let version = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    if version("mpirun").is_some_and(|v| v.contains("Open MPI")) {
        return Ok(("mpirun", |n, port| {
            // Root in containers and CI; two processes on a 2-core machine.
            // Each line tagged with its rank: the ranks' multi-line JSON
            // interleaves on the launcher's stdout.
            let mut a: Vec<String> = [
                "--allow-run-as-root",
                "--oversubscribe",
                "--tag-output",
                "-np",
            ]
            .map(String::from)
            .to_vec();
            a.push(n.to_string());
            a.extend(["-x".into(), "MASTER_ADDR=127.0.0.1".into()]);
            a.extend(["-x".into(), format!("MASTER_PORT={port}")]);
            a
        }));
    }
    if version("mpiexec").is_some_and(|v| v.contains("HYDRA") || v.contains("MPICH")) {
        return Ok(("mpiexec", |n, port| {
            let mut a = vec!["-prepend-rank".to_string(), "-n".to_string(), n.to_string()];
            a.extend(["-genv", "MASTER_ADDR", "127.0.0.1"].map(String::from));
            a.extend(["-genv".into(), "MASTER_PORT".into(), port.to_string()]);
            a
        }));
    }
    Err(
        "no MPI launcher (Open MPI's mpirun or MPICH's mpiexec) on the PATH; \
         install openmpi-bin to run it"
            .into(),
    )
}

/// The model split over 2 processes started by the MPI launcher (its rank
/// variables, rank 0's address passed through it; the hidden states over
/// TCP) gives the one-device greedy ids.
fn mpirun_ranks_give_one_device_ids(model: &str) -> Result<(), Failed> {
    let (launcher, launch_args) = mpi_launcher()?;
    let prompt = RANKS_PROMPT;
    let (one, layers) = one_device_reference(model)?;
    let port = free_port()?;
    let split = format!("layers:{},{}", layers / 2, layers - layers / 2);
    let child = Command::new(launcher)
        .args(launch_args(2, port))
        .arg(GENERATE)
        .args(["--model", model, "--rank-from-env", "--split", &split])
        .args(["--json", "--device", "host:threads=1"])
        .args(prompt)
        // Only the launcher's variables say who is who.
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let outs = wait_all(vec![child], Instant::now() + Duration::from_secs(180));
    let out = all_succeeded(&outs, launcher)?;
    // Every rank's JSON on the launcher's stdout: rank 0's has the ids,
    // the other's its stage's counts.
    let mut printed = Vec::new();
    for text in lines_by_rank(&out.stdout).values() {
        for v in serde_json::Deserializer::from_str(text).into_iter::<serde_json::Value>() {
            printed.push(v?);
        }
    }
    let got = printed
        .iter()
        .find(|v| v.get("ids").is_some())
        .ok_or("no rank printed ids")?;
    if !printed
        .iter()
        .any(|v| v["rank"] == 1 && v["stage"]["steps"].as_u64() > Some(0))
    {
        return Err(format!("{launcher}: rank 1 ran no step: {printed:?}").into());
    }
    one_device_ids_over_ranks(launcher, got, &one, 2)
}

/// The launcher's stdout split by rank: Open MPI's `--tag-output` prefixes
/// each line with `[job,rank]<stdout>:`, MPICH's `-prepend-rank` with
/// `[rank] `; the ranks' lines interleave, so each rank's text is gathered
/// before it is parsed.
fn lines_by_rank(stdout: &[u8]) -> std::collections::BTreeMap<String, String> {
    let mut by_rank = std::collections::BTreeMap::<String, String>::new();
    for line in String::from_utf8_lossy(stdout).lines() {
        let (rank, rest) = match line.strip_prefix('[').and_then(|l| l.split_once(']')) {
            Some((tag, rest)) => {
                let rank = tag.rsplit(',').next().unwrap_or(tag).trim().to_string();
                let rest = rest.strip_prefix("<stdout>:").unwrap_or(rest);
                (rank, rest.strip_prefix(' ').unwrap_or(rest))
            }
            None => (String::new(), line),
        };
        let text = by_rank.entry(rank).or_default();
        text.push_str(rest);
        text.push('\n');
    }
    by_rank
}

/// Every rank ended successfully (`label` names the case in the error);
/// rank 0's output.
fn all_succeeded<'a>(outs: &'a [Option<Output>], label: &str) -> Result<&'a Output, Failed> {
    for (rank, out) in outs.iter().enumerate() {
        let out = out
            .as_ref()
            .ok_or(format!("{label}: rank {rank} did not end"))?;
        if !out.status.success() {
            return Err(format!(
                "{label}: rank {rank}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
    }
    outs.first()
        .and_then(Option::as_ref)
        .ok_or_else(|| format!("{label}: no rank 0").into())
}

/// `--split auto` over processes: every rank profiles its device, rank 0
/// places consecutive layers on every rank in rank order; with memory
/// budgets under which no rank holds the whole model, the split serves
/// the one-device greedy ids. A rank that cannot hold a layer fails the
/// job with its name.
fn auto_split_over_ranks(model: &str) -> Result<(), Failed> {
    let prompt = ["--prompt", "The capital of Germany is", "--max-tokens", "8"];
    let mut args = vec!["--model", model, "--json", "--device", "host"];
    args.extend_from_slice(&prompt);
    let one = json(GENERATE, &args)?;
    let whole = one["devices"][0]["resident_bytes"]
        .as_u64()
        .ok_or("no resident_bytes")?;
    let layers = one["devices"][0]["layers"][1].as_u64().ok_or("no layers")? as usize + 1;
    // Each rank gets 70% of the model's resident bytes: none holds it
    // alone, two together do.
    let budget = format!("host:threads=1,memory={}", whole * 7 / 10);
    let children = spawn_job(
        model,
        "auto",
        &[vec![budget.as_str()], vec![budget.as_str()]],
        &prompt,
    )?;
    let outs = wait_all(children, Instant::now() + Duration::from_secs(240));
    let first = all_succeeded(&outs, "auto")?;
    let explained = String::from_utf8_lossy(&first.stderr);
    if !explained.contains("dp in any order") {
        return Err(format!("rank 0 did not explain the plan: {explained}").into());
    }
    let got: serde_json::Value = serde_json::from_slice(&first.stdout)?;
    if got["ids"] != one["ids"] {
        return Err(format!("ids {} vs one device {}", got["ids"], one["ids"]).into());
    }
    let stages = got["devices"].as_array().ok_or("no devices")?;
    let spans: Vec<(u64, u64)> = stages
        .iter()
        .map(|s| {
            (
                s["layers"][0].as_u64().unwrap_or(u64::MAX),
                s["layers"][1].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    let covered = spans.len() == 2
        && spans[0].0 == 0
        && spans[1].0 == spans[0].1 + 1
        && spans[1].1 == layers as u64 - 1;
    if !covered {
        return Err(format!("stages {stages:?} do not cover 0..{layers} in rank order").into());
    }
    // Several devices per rank: rank 0 runs two (each with 40% of the
    // model's bytes), rank 1 one; every device holds consecutive layers.
    let small = format!("host:threads=1,memory={}", whole * 4 / 10);
    let children = spawn_job(
        model,
        "auto",
        &[vec![small.as_str(), small.as_str()], vec![budget.as_str()]],
        &prompt,
    )?;
    let outs = wait_all(children, Instant::now() + Duration::from_secs(240));
    let first = all_succeeded(&outs, "two devices on rank 0")?;
    let got: serde_json::Value = serde_json::from_slice(&first.stdout)?;
    if got["ids"] != one["ids"] {
        return Err(format!(
            "two devices on rank 0: ids {} vs one device {}",
            got["ids"], one["ids"]
        )
        .into());
    }
    let stages = got["devices"].as_array().ok_or("no devices")?;
    if stages.len() != 3 {
        return Err(format!("two devices on rank 0: stages {stages:?}").into());
    }
    // A rank whose budget holds no layer: every rank fails, naming it.
    let tiny = "host:threads=1,memory=1MiB";
    let children = spawn_job(
        model,
        "auto",
        &[vec!["host:threads=1"], vec![tiny]],
        &prompt,
    )?;
    let outs = wait_all(children, Instant::now() + Duration::from_secs(240));
    for (rank, out) in outs.iter().enumerate() {
        let out = out.as_ref().ok_or(format!("rank {rank} did not end"))?;
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !err.contains("rank 1") {
            return Err(format!("rank {rank} with a 1 MiB rank 1: {}: {err}", out.status).into());
        }
    }
    Ok(())
}

/// A stage process that dies (SIGKILL) ends the others with an error
/// naming what was lost, within the stage timeout: never a hang.
fn dead_stage_ends_the_others(model: &str) -> Result<(), Failed> {
    let layers = 30;
    let timeout = 10;
    let counts = [10, 10, layers - 20];
    let t = timeout.to_string();
    let extra = [
        "--prompt",
        "Count from one to one thousand, one number per line.",
        "--max-tokens",
        "1000",
        "--stage-timeout",
        &t,
    ];
    let mut children = spawn_ranks(model, &counts, &extra)?;
    // Kill rank 1 once it serves (rank 0 is then joining or generating).
    let stderr = children[1].stderr.take().ok_or("rank 1 stderr")?;
    let serving = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("serving until"));
    let _ = children[1].kill();
    let killed = Instant::now();
    let outs = wait_all(children, killed + Duration::from_secs(timeout + 30));
    if !serving {
        return Err("rank 1 never said it was serving".into());
    }
    let elapsed = killed.elapsed();
    for rank in [0, 2] {
        let out = outs[rank].as_ref().ok_or(format!(
            "rank {rank} still ran {elapsed:?} after rank 1 died"
        ))?;
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !err.contains("rank") {
            return Err(format!("rank {rank} after rank 1 died: {}: {err}", out.status).into());
        }
    }
    if elapsed > Duration::from_secs(timeout + 5) {
        return Err(format!("the ranks took {elapsed:?} to stop (timeout {timeout} s)").into());
    }
    Ok(())
}

/// A trial on the model file.
type TrialFn = fn(&str) -> Result<(), Failed>;

fn main() {
    let args = Arguments::from_args();
    let path = std::env::var("HETERO_TEST_GGUF")
        .ok()
        .filter(|p| Path::new(p).is_file());
    let mut trials = Vec::new();
    let cases: [(&str, TrialFn); 6] = [
        ("split_cli::auto_split_over_ranks", auto_split_over_ranks),
        (
            "split_cli::ranks_give_one_device_ids",
            ranks_give_one_device_ids,
        ),
        (
            "split_cli::dead_stage_ends_the_others",
            dead_stage_ends_the_others,
        ),
        (
            "split_cli::generate_split_gives_one_device_ids",
            generate_split,
        ),
        ("split_cli::place_model_plans_and_leaves_out", place_model),
        (
            "split_cli::place_model_measures_every_plan_and_stage",
            place_model_measured,
        ),
    ];
    for (name, f) in cases {
        match &path {
            Some(p) => {
                let p = p.clone();
                trials.push(Trial::test(name, move || f(&p)));
            }
            None => trials.push(
                Trial::test(name, || Ok(()))
                    .with_ignored_flag(true)
                    .with_kind("skipped: HETERO_TEST_GGUF does not name a file"),
            ),
        }
    }
    let name = "split_cli::mpirun_ranks_give_one_device_ids";
    match (&path, mpi_launcher()) {
        (Some(p), Ok(_)) => {
            let p = p.clone();
            trials.push(Trial::test(name, move || {
                mpirun_ranks_give_one_device_ids(&p)
            }));
        }
        (None, _) => trials.push(
            Trial::test(name, || Ok(()))
                .with_ignored_flag(true)
                .with_kind("skipped: HETERO_TEST_GGUF does not name a file"),
        ),
        (_, Err(why)) => trials.push(
            Trial::test(name, || Ok(()))
                .with_ignored_flag(true)
                .with_kind(format!("skipped: {why}")),
        ),
    }
    libtest_mimic::run(&args, trials).exit();
}
