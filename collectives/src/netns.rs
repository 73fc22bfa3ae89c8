//! An emulated cluster on one Linux machine: one network namespace per
//! node, joined by a bridge in a "switch" namespace, every node's link
//! shaped with `tc` (netem rate and delay when the kernel has `sch_netem`,
//! otherwise `tbf`, rate only, and [`EmulatedCluster::shaping`] says so).
//! Links inside a node are not shaped: ranks of one node talk over the
//! node's own address. Addresses are in 198.18.0.0/24 (RFC 2544's
//! benchmarking range); nothing outside the namespaces is touched.
//!
//! Needs root and the `ip` and `tc` tools ([`EmulatedCluster::available`]
//! says why not). Namespaces are named `hx<pid>…`; dropping the cluster
//! kills what it launched and deletes them, and [`EmulatedCluster::create`]
//! first deletes those left by processes that no longer exist (killed
//! before they could clean up).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hetero_core::{Error, Result};

/// Shape of the emulated cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterShape {
    pub nodes: usize,
    pub ranks_per_node: usize,
    /// `tc` rate of each node's link, e.g. `1gbit`.
    pub rate: String,
    /// One-way delay between two nodes in milliseconds (half on each end).
    pub delay_ms: f64,
}

impl Default for ClusterShape {
    fn default() -> Self {
        ClusterShape {
            nodes: 2,
            ranks_per_node: 4,
            rate: "1gbit".into(),
            delay_ms: 0.5,
        }
    }
}

/// What one rank printed.
#[derive(Debug, Clone)]
pub struct RankOutput {
    pub rank: usize,
    /// Exited with status 0 before the deadline.
    pub success: bool,
    /// Killed at the deadline.
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Live namespaces; deleted on drop.
#[derive(Debug)]
pub struct EmulatedCluster {
    tag: String,
    shape: ClusterShape,
    shaping: String,
    created: Vec<String>,
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .map_err(|e| Error::io(format!("running {cmd:?}"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::invalid(
            "emulated cluster",
            format!(
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))
}

fn in_ns(ns: &str, args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

fn tool_exists(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl EmulatedCluster {
    /// `Err(reason)` when namespaces cannot be created here.
    pub fn available() -> std::result::Result<(), String> {
        // Effective uid 0 (the second field of Uid: in /proc/self/status).
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let root = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0");
        if !root {
            return Err("creating network namespaces needs root".into());
        }
        for tool in ["ip", "tc"] {
            if !tool_exists(tool) {
                return Err(format!("`{tool}` is not installed (Debian: iproute2)"));
            }
        }
        Ok(())
    }

    /// Delete namespaces left by emulated clusters whose process is gone.
    fn remove_stale() {
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let Some(rest) = name.strip_prefix("hx") else {
                continue;
            };
            let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(pid) = pid.parse::<u32>()
                && pid != std::process::id()
                && !process_alive(pid)
            {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }

    /// Create the namespaces, bridge, links and shaping.
    pub fn create(shape: ClusterShape) -> Result<Self> {
        Self::available().map_err(|r| Error::invalid("emulated cluster", r))?;
        if shape.nodes == 0 || shape.nodes > 250 || shape.ranks_per_node == 0 {
            return Err(Error::invalid(
                "emulated cluster",
                format!(
                    "{} nodes x {} ranks: use 1..=250 nodes and at least one rank per node",
                    shape.nodes, shape.ranks_per_node
                ),
            ));
        }
        if !(shape.delay_ms >= 0.0 && shape.delay_ms.is_finite()) {
            return Err(Error::invalid(
                "delay",
                format!("{} ms is not a non-negative delay", shape.delay_ms),
            ));
        }
        Self::remove_stale();
        // Process-unique tag; a counter separates clusters of one process.
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("hx{}c{k}", std::process::id());
        let mut c = EmulatedCluster {
            tag,
            shape,
            shaping: String::new(),
            created: Vec::new(),
        };
        c.build()?;
        Ok(c)
    }

    fn switch(&self) -> String {
        format!("{}sw", self.tag)
    }

    /// Namespace of node `k`.
    pub fn node(&self, k: usize) -> String {
        format!("{}n{k}", self.tag)
    }

    /// Address of node `k` (rank 0 is on node 0: the rendezvous address).
    pub fn address(k: usize) -> String {
        format!("198.18.0.{}", k + 1)
    }

    /// How links were shaped (tc qdisc and parameters).
    pub fn shaping(&self) -> &str {
        &self.shaping
    }

    pub fn shape(&self) -> &ClusterShape {
        &self.shape
    }

    fn shape_link(&mut self, ns: &str, dev: &str) -> Result<()> {
        let half = format!("{}ms", self.shape.delay_ms / 2.0);
        let rate = self.shape.rate.clone();
        let netem = in_ns(
            ns,
            &[
                "tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", &half, "rate", &rate,
                "limit", "100000",
            ],
        );
        if netem.is_ok() {
            self.shaping = format!(
                "netem rate {rate}, delay {half} per end ({} ms between nodes)",
                self.shape.delay_ms
            );
            return Ok(());
        }
        in_ns(
            ns,
            &[
                "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", &rate, "burst", "128kb",
                "latency", "400ms",
            ],
        )?;
        self.shaping = format!("tbf rate {rate}, no added delay (this kernel has no sch_netem)");
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        let sw = self.switch();
        ip(&["netns", "add", &sw])?;
        self.created.push(sw.clone());
        in_ns(&sw, &["ip", "link", "add", "br0", "type", "bridge"])?;
        in_ns(&sw, &["ip", "link", "set", "br0", "up"])?;
        in_ns(&sw, &["ip", "link", "set", "lo", "up"])?;
        for k in 0..self.shape.nodes {
            let ns = self.node(k);
            ip(&["netns", "add", &ns])?;
            self.created.push(ns.clone());
            let port = format!("p{k}");
            in_ns(&ns, &["ip", "link", "set", "lo", "up"])?;
            in_ns(
                &ns,
                &[
                    "ip", "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                    &sw,
                ],
            )?;
            let addr = format!("{}/24", Self::address(k));
            in_ns(&ns, &["ip", "addr", "add", &addr, "dev", "eth0"])?;
            in_ns(&ns, &["ip", "link", "set", "eth0", "up"])?;
            in_ns(&sw, &["ip", "link", "set", &port, "master", "br0"])?;
            in_ns(&sw, &["ip", "link", "set", &port, "up"])?;
            self.shape_link(&ns, "eth0")?;
            self.shape_link(&sw, &port)?;
        }
        Ok(())
    }

    /// Run `program args` as every rank (`ranks_per_node` processes in each
    /// node's namespace) with torchrun's variables (`RANK`, `WORLD_SIZE`,
    /// `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR` = node 0,
    /// `MASTER_PORT`); wait at most `timeout` for all of them (ranks still
    /// running then are killed and marked `timed_out`).
    pub fn launch(
        &self,
        program: &Path,
        args: &[String],
        port: u16,
        timeout: Duration,
    ) -> Result<Vec<RankOutput>> {
        let rpn = self.shape.ranks_per_node;
        let world = self.shape.nodes * rpn;
        let mut children: Vec<(usize, Child)> = Vec::new();
        let kill_all = |children: &mut Vec<(usize, Child)>| {
            for (_, c) in children.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        };
        for rank in 0..world {
            let node = rank / rpn;
            let spawned = Command::new("ip")
                .args(["netns", "exec", &self.node(node)])
                .arg(program)
                .args(args)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_RANK", (rank % rpn).to_string())
                .env("LOCAL_WORLD_SIZE", rpn.to_string())
                .env("MASTER_ADDR", Self::address(0))
                .env("MASTER_PORT", port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn();
            match spawned {
                Ok(c) => children.push((rank, c)),
                Err(e) => {
                    kill_all(&mut children);
                    return Err(Error::io(
                        format!("starting rank {rank}: {}", program.display()),
                        e,
                    ));
                }
            }
        }
        // Wait for every rank, killing all of them at the deadline.
        let deadline = Instant::now() + timeout;
        let mut outputs = Vec::with_capacity(world);
        let mut readers = Vec::new();
        for (rank, mut child) in children {
            let out = child.stdout.take();
            let err = child.stderr.take();
            // Drain pipes on threads so a chatty rank cannot block on a full pipe.
            let read = |p: Option<Box<dyn std::io::Read + Send>>| {
                std::thread::spawn(move || {
                    let mut s = String::new();
                    if let Some(mut p) = p {
                        let _ = p.read_to_string(&mut s);
                    }
                    s
                })
            };
            let o = read(out.map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
            let e = read(err.map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
            readers.push((rank, child, o, e));
        }
        let mut timed_out = false;
        for (rank, mut child, o, e) in readers {
            let status = loop {
                match child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) if Instant::now() < deadline && !timed_out => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        timed_out = true;
                        let _ = child.kill();
                        break child.wait().ok();
                    }
                }
            };
            let killed = timed_out && !status.is_some_and(|s| s.success());
            outputs.push(RankOutput {
                rank,
                success: status.is_some_and(|s| s.success()) && !killed,
                timed_out: killed,
                stdout: o.join().unwrap_or_default(),
                stderr: e.join().unwrap_or_default(),
            });
        }
        Ok(outputs)
    }
}

impl Drop for EmulatedCluster {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
