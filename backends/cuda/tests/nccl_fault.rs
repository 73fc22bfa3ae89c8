//! NCCL fails instead of hanging (issue 20): a rank that never joins, and a
//! rank that stalls mid-job, end the other ranks with `Timeout` or
//! `PeerFailure` within the communicator's timeout.
//!
//! Each rank is a child process (this binary run again with
//! `HETERO_NCCL_FAULT_CHILD` set), so a hang is a child the parent kills and
//! reports, never a hung suite. Both ranks use the one GPU there is: NCCL
//! refuses two ranks of one communicator on one GPU of one host ("Duplicate
//! GPU detected"), so each child gets its own `NCCL_HOSTID` and NCCL treats
//! them as two hosts joined by its socket transport over loopback. Without a
//! GPU or NCCL every test is reported skipped with the reason.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hetero_core::{Collective, DType, Device, Error, HostSlice, HostSliceMut, ReduceOp, TensorMut};
use hetero_cuda::{CudaDevice, NcclCollective};
use libtest_mimic::{Arguments, Failed, Trial};

const CHILD_ENV: &str = "HETERO_NCCL_FAULT_CHILD";
/// The bound on a collective in these tests.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the stalling rank sleeps before its next collective: longer
/// than the timeout, so its peer gives up first.
const STALL: Duration = Duration::from_secs(6);
/// What an abort may add to the timeout before the error is back.
const ABORT_SLACK: Duration = Duration::from_secs(5);
/// A child still running after this is hung: killed, and the test fails.
const CHILD_LIMIT: Duration = Duration::from_secs(45);
const LEN: usize = 4096;

type TestFn = fn() -> Result<(), Failed>;

fn main() {
    if let Ok(role) = std::env::var(CHILD_ENV) {
        std::process::exit(child(&role));
    }
    let args = Arguments::from_args();
    let ready = hetero_cuda::devices()
        .map_err(|e| e.to_string())
        .and_then(|g| {
            if g.is_empty() {
                Err("no CUDA device".to_string())
            } else if !hetero_cuda::nccl_present() {
                Err("libnccl cannot be loaded".to_string())
            } else {
                Ok(())
            }
        });
    let tests: [(&str, TestFn); 2] = [
        ("join_times_out_when_a_rank_never_joins", lonely_join),
        ("stalled_peer_ends_both_ranks_with_an_error", stalled_peer),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f)| match &ready {
            Ok(()) => Trial::test(format!("nccl_fault::{name}"), f),
            Err(why) => Trial::test(format!("nccl_fault[none]::{name}"), || Ok(()))
                .with_ignored_flag(true)
                .with_kind(format!("skipped: {why}")),
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

// ---- parent side ----

/// A child rank with its stdout lines arriving on a channel.
struct Rank {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

fn spawn(role: &str, rank: usize) -> Result<Rank, Failed> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(CHILD_ENV, role)
        // Two "hosts" for NCCL, joined over loopback sockets only.
        .env("NCCL_HOSTID", format!("hetero-nccl-fault-{rank}"))
        .env("NCCL_SOCKET_IFNAME", "lo")
        .env("NCCL_NET", "Socket")
        .env("NCCL_IB_DISABLE", "1")
        .env("NCCL_P2P_DISABLE", "1")
        .env("NCCL_SHM_DISABLE", "1")
        .env("NCCL_DEBUG", "WARN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (tx, lines) = mpsc::channel();
    let out = child.stdout.take().ok_or("no stdout pipe")?;
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut err = child.stderr.take().ok_or("no stderr pipe")?;
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    Ok(Rank {
        child,
        lines,
        stderr,
    })
}

impl Rank {
    /// The next stdout line starting with `prefix`, before `deadline`.
    fn expect(&self, prefix: &str, deadline: Instant) -> Option<String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => {
                    return Some(line[prefix.len()..].to_string());
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Wait for the child to exit (killing it past `deadline`) and return
    /// its remaining stdout lines and its stderr.
    fn finish(mut self, deadline: Instant) -> (bool, Vec<String>, String) {
        let mut hung = false;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() >= deadline => {
                    hung = true;
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        let lines = self.lines.try_iter().collect();
        let stderr = self.stderr.join().unwrap_or_default();
        (hung, lines, stderr)
    }
}

/// A child's `RESULT <kind> <elapsed_ms> <message>` line.
struct Outcome {
    kind: String,
    elapsed: Duration,
    message: String,
}

fn outcome(lines: &[String]) -> Option<Outcome> {
    let line = lines.iter().find_map(|l| l.strip_prefix("RESULT "))?;
    let mut parts = line.splitn(3, ' ');
    let kind = parts.next()?.to_string();
    let ms: u64 = parts.next()?.parse().ok()?;
    Some(Outcome {
        kind,
        elapsed: Duration::from_millis(ms),
        message: parts.next().unwrap_or("").to_string(),
    })
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}

/// The outcome must be an error of the bounded kinds, back within the timeout
/// plus the abort's slack.
fn check(rank: usize, hung: bool, lines: &[String], stderr: &str) -> Result<Outcome, Failed> {
    if hung {
        return Err(format!(
            "rank {rank} hung: killed after {CHILD_LIMIT:?}\n{}",
            tail(stderr)
        )
        .into());
    }
    let o = outcome(lines).ok_or_else(|| {
        format!(
            "rank {rank} reported no result: {lines:?}\n{}",
            tail(stderr)
        )
    })?;
    if o.kind != "timeout" && o.kind != "peer_failure" {
        return Err(format!(
            "rank {rank}: expected a timeout or a peer failure, got {} ({})\n{}",
            o.kind,
            o.message,
            tail(stderr)
        )
        .into());
    }
    if o.elapsed > OP_TIMEOUT + ABORT_SLACK {
        return Err(format!(
            "rank {rank}: the error came after {:?}, past the {OP_TIMEOUT:?} timeout plus {ABORT_SLACK:?}",
            o.elapsed
        )
        .into());
    }
    eprintln!(
        "  rank {rank}: {} after {:.2} s: {}",
        o.kind,
        o.elapsed.as_secs_f64(),
        o.message
    );
    Ok(o)
}

fn lonely_join() -> Result<(), Failed> {
    let deadline = Instant::now() + CHILD_LIMIT;
    let rank = spawn(&format!("lonely:{}", OP_TIMEOUT.as_millis()), 0)?;
    let (hung, lines, stderr) = rank.finish(deadline);
    check(0, hung, &lines, &stderr)?;
    if !lines.iter().any(|l| l == "GPU_OK") {
        return Err(format!(
            "the GPU did not work after the abort: {lines:?}\n{}",
            tail(&stderr)
        )
        .into());
    }
    Ok(())
}

fn stalled_peer() -> Result<(), Failed> {
    let deadline = Instant::now() + CHILD_LIMIT;
    let role = format!("rank0:{}:{}", OP_TIMEOUT.as_millis(), STALL.as_millis());
    let r0 = spawn(&role, 0)?;
    let Some(id) = r0.expect("ID ", deadline) else {
        let (_, lines, stderr) = r0.finish(deadline);
        return Err(format!("rank 0 printed no NCCL id: {lines:?}\n{}", tail(&stderr)).into());
    };
    let role = format!(
        "rank1:{}:{}:{id}",
        OP_TIMEOUT.as_millis(),
        STALL.as_millis()
    );
    let r1 = spawn(&role, 1)?;
    let (hung0, lines0, err0) = r0.finish(deadline);
    let (hung1, lines1, err1) = r1.finish(deadline);
    for (rank, lines, err) in [(0, &lines0, &err0), (1, &lines1, &err1)] {
        if !lines.iter().any(|l| l == "FIRST_OK") {
            return Err(format!(
                "rank {rank}: the first all-reduce, with both ranks in, did not succeed: {lines:?}\n{}",
                tail(err)
            )
            .into());
        }
    }
    let o0 = check(0, hung0, &lines0, &err0)?;
    check(1, hung1, &lines1, &err1)?;
    // Rank 0 waited on a peer that was asleep: only the timeout can end it.
    if o0.kind != "timeout" {
        return Err(format!("rank 0 should time out, got {} ({})", o0.kind, o0.message).into());
    }
    if o0.elapsed < OP_TIMEOUT {
        return Err(format!("rank 0 gave up after {:?}, before its timeout", o0.elapsed).into());
    }
    Ok(())
}

// ---- child side ----

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
        .block_on(f)
}

fn kind(r: &Result<(), Error>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(Error::Timeout { .. }) => "timeout",
        Err(Error::PeerFailure { .. }) => "peer_failure",
        Err(_) => "other",
    }
}

fn report(r: &Result<(), Error>, start: Instant) {
    let msg = r.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
    println!(
        "RESULT {} {} {}",
        kind(r),
        start.elapsed().as_millis(),
        msg.replace('\n', " ")
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn all_reduce_ones(comm: &NcclCollective, rank: usize) -> Result<Vec<f32>, Error> {
    let mut v = vec![rank as f32 + 1.0; LEN];
    block_on(comm.all_reduce(TensorMut::Host(HostSliceMut::new(&mut v)), ReduceOp::Sum))?;
    Ok(v)
}

/// Run one child role; the exit code is 0 when the role ran to its report.
fn child(role: &str) -> i32 {
    let parts: Vec<&str> = role.split(':').collect();
    let ms = |i: usize| {
        parts
            .get(i)
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or(OP_TIMEOUT)
    };
    let gpu: CudaDevice = match hetero_cuda::devices() {
        Ok(g) if !g.is_empty() => g[0].clone(),
        other => {
            println!("RESULT other 0 no GPU: {:?}", other.err());
            return 1;
        }
    };
    match parts[0] {
        "lonely" => {
            // Rank 0 of 2; rank 1 never comes.
            let start = Instant::now();
            let r = NcclCollective::unique_id()
                .and_then(|id| {
                    NcclCollective::from_unique_id_with_timeout(gpu.clone(), &id, 0, 2, ms(1))
                })
                .map(drop);
            report(&r, start);
            let works = (|| -> Result<bool, Error> {
                let mut b = gpu.alloc(DType::F32, 3)?;
                gpu.upload(&mut b, 0, HostSlice::new(&[1.0f32, 2.0, 3.0]))?;
                let mut back = vec![0.0f32; 3];
                gpu.download(&b, 0, HostSliceMut::new(&mut back))?;
                Ok(back == [1.0, 2.0, 3.0])
            })();
            println!(
                "{}",
                if matches!(works, Ok(true)) {
                    "GPU_OK"
                } else {
                    "GPU_BROKEN"
                }
            );
            0
        }
        "rank0" | "rank1" => {
            let rank = usize::from(parts[0] == "rank1");
            let id = if rank == 0 {
                match NcclCollective::unique_id() {
                    Ok(id) => {
                        println!("ID {}", hex(&id));
                        id
                    }
                    Err(e) => {
                        println!("RESULT other 0 {e}");
                        return 1;
                    }
                }
            } else {
                match parts.get(3).and_then(|s| unhex(s)) {
                    Some(id) => id,
                    None => {
                        println!("RESULT other 0 bad id argument");
                        return 1;
                    }
                }
            };
            let mut comm = match NcclCollective::from_unique_id_with_timeout(
                gpu,
                &id,
                rank,
                2,
                Duration::from_secs(30),
            ) {
                Ok(c) => c,
                Err(e) => {
                    report(&Err(e), Instant::now());
                    return 1;
                }
            };
            comm.set_timeout(ms(1));
            match all_reduce_ones(&comm, rank) {
                Ok(v) if v.iter().all(|&x| x == 3.0) => println!("FIRST_OK"),
                Ok(v) => println!("FIRST_WRONG {:?}", &v[..4]),
                Err(e) => println!("FIRST_ERR {e}"),
            }
            if rank == 1 {
                std::thread::sleep(ms(2));
            }
            let start = Instant::now();
            let r = all_reduce_ones(&comm, rank).map(drop);
            report(&r, start);
            // A third call must fail at once: the communicator is aborted.
            if r.is_err() {
                let again = Instant::now();
                let r3 = all_reduce_ones(&comm, rank).map(drop);
                println!("AFTER_ABORT {} {}", kind(&r3), again.elapsed().as_millis());
            }
            drop(comm);
            0
        }
        other => {
            println!("RESULT other 0 unknown role {other}");
            1
        }
    }
}
