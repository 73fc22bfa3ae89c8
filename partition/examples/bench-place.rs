//! Runs the exact and the linearized DP on every shipped graph of the paper
//! and prints a table: units, ideals, pairs, our objective and time, the
//! reference's objective and time, and the speed-up.
//!
//! `cargo run --release -p hetero-partition --example bench-place -- [DATA_DIR]
//! [--list | --variants | --graph NAME [--cpus L] [--memory BYTES] |
//! --synthetic] [--no-header]`: without a selection it runs everything in
//! one process; `cargo xtask bench-place` runs each variant that
//! `--variants` prints (every graph as shipped, with 8 CPUs, and with the
//! accelerator memory of issue 21's GNMT instance) in its own process, so
//! the peak RSS column is per run.

use std::path::PathBuf;
use std::time::Instant;

use hetero_core::placement::{Cluster, Edge, Graph, Node};
use hetero_partition::{ExactDp, LinearDp, PaperGraph};

/// Accelerator memory of the paper-size instances with binding memory
/// (issue 21: GNMT on accelerators of 629,145,600 bytes).
const MEMORY_VARIANTS: &[(&str, u64)] = &[
    ("LayerGraphs/gnmt_inference", 629_145_600),
    ("LayerGraphs/gnmt_training", 629_145_600),
];

/// (file, reference exact objective, reference seconds, reference linearized objective)
const GRAPHS: &[(&str, Option<f64>, &str, f64)] = &[
    (
        "LayerGraphs/bert24_inference",
        Some(17.7899),
        "<0.1",
        17.7899,
    ),
    (
        "LayerGraphs/bert24_training",
        Some(41.7458),
        "<0.1",
        41.7458,
    ),
    (
        "LayerGraphs/gnmt_inference",
        Some(32.9107),
        "22-35",
        33.0326,
    ),
    ("LayerGraphs/gnmt_training", Some(107.004), "55", 107.004),
    ("LayerGraphs/inceptionv3_inference", None, ">900", 51.5519),
    ("LayerGraphs/inceptionv3_training", None, ">600", 123.93),
    (
        "LayerGraphs/resnet50_inference",
        Some(33.7747),
        "<1",
        33.7747,
    ),
    (
        "LayerGraphs/resnet50_training",
        Some(78.6318),
        "<1",
        78.6498,
    ),
    (
        "OperatorGraphs/bert_l-3_inference",
        Some(27.9186),
        "1.1",
        27.9186,
    ),
    (
        "OperatorGraphs/bert_l-3_training",
        Some(65.3031),
        "17",
        65.3031,
    ),
    (
        "OperatorGraphs/bert_l-6_inference",
        Some(29.5795),
        "11",
        29.5795,
    ),
    (
        "OperatorGraphs/bert_l-6_training",
        Some(72.865),
        "64",
        72.865,
    ),
    (
        "OperatorGraphs/bert_l-12_inference",
        Some(147.478),
        "18-30",
        147.478,
    ),
    (
        "OperatorGraphs/bert_L-12_training",
        Some(437.998),
        "91",
        437.998,
    ),
    (
        "OperatorGraphs/resnet50_inference",
        Some(124.349),
        "<1",
        124.349,
    ),
    (
        "OperatorGraphs/resnet50_training",
        Some(255.194),
        "<1",
        255.194,
    ),
];

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// What one run covers.
enum Selection {
    Everything,
    List,
    Graph(String),
    Synthetic,
}

/// Placement benchmark: the exact and the linearized DP on every shipped
/// graph of the paper (a markdown table), then a synthetic 50,000-node
/// graph by the linearized DP.
#[derive(Debug, clap::Parser)]
#[command(name = "bench-place")]
struct Args {
    /// Folder of the graphs (default: the shipped dnn-partitioning inputs).
    data_dir: Option<PathBuf>,
    /// Print the graph names and exit.
    #[arg(long, conflicts_with_all = ["graph", "synthetic", "variants"])]
    list: bool,
    /// Print the benchmark's runs, one a line (a graph name and its
    /// options), and exit.
    #[arg(long, conflicts_with_all = ["graph", "synthetic"])]
    variants: bool,
    /// With --graph: this many CPUs instead of the file's.
    #[arg(long, value_name = "L", requires = "graph")]
    cpus: Option<usize>,
    /// With --graph: this accelerator memory (bytes) instead of the file's.
    #[arg(long, value_name = "BYTES", requires = "graph")]
    memory: Option<u64>,
    /// With --graph: also solve the contiguous IP (Cbc in a build with the
    /// `cbc` feature, else microlp) with this time limit, seconds, and
    /// print its objective, bound and gap next to the DP's (the check of
    /// issue 21).
    #[arg(long, value_name = "SECONDS", requires = "graph")]
    ip: Option<f64>,
    /// With --ip: do not give the IP the exact DP's value as its upper
    /// bound and its split as the start (it still has the linearized DP's).
    /// With them (the default) the solver checks the DP's split against
    /// every row itself, and its proof that no split is better does not
    /// depend on the DP.
    #[arg(long, requires = "ip")]
    ip_without_dp_bound: bool,
    /// With --ip (Cbc builds): also write the IP, with its bound, as
    /// gzip-compressed MPS (`FILE.mps.gz`) for another MILP solver.
    #[arg(long, value_name = "FILE.mps", requires = "ip")]
    write_mps: Option<PathBuf>,
    /// Only this graph (a name that --list prints).
    #[arg(long, value_name = "NAME", value_parser = graph_name, conflicts_with = "synthetic")]
    graph: Option<String>,
    /// Only the synthetic graph.
    #[arg(long)]
    synthetic: bool,
    /// Leave out the table header (one process per graph appends rows).
    #[arg(long)]
    no_header: bool,
}

fn graph_name(name: &str) -> Result<String, String> {
    if GRAPHS.iter().any(|g| g.0 == name) {
        Ok(name.to_string())
    } else {
        Err("not a shipped graph; --list prints the names".into())
    }
}

fn main() -> std::process::ExitCode {
    let args = <Args as clap::Parser>::parse();
    let dir = args.data_dir.unwrap_or_else(|| {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/dnn-partitioning/throughput-inputs"
        ))
    });
    let header = !args.no_header;
    let selection = if args.list {
        Selection::List
    } else if let Some(name) = args.graph {
        Selection::Graph(name)
    } else if args.synthetic {
        Selection::Synthetic
    } else {
        Selection::Everything
    };
    if args.variants {
        for g in GRAPHS {
            println!("{}", g.0);
            println!("{} --cpus 8", g.0);
            for &(name, memory) in MEMORY_VARIANTS {
                if name == g.0 {
                    println!("{name} --memory {memory}");
                    println!("{name} --memory {memory} --cpus 8");
                }
            }
        }
        return std::process::ExitCode::SUCCESS;
    }
    if let Selection::List = selection {
        for g in GRAPHS {
            println!("{}", g.0);
        }
        return std::process::ExitCode::SUCCESS;
    }
    let run_graphs = !matches!(selection, Selection::Synthetic);
    let run_synthetic = matches!(selection, Selection::Everything | Selection::Synthetic);
    if header && run_graphs {
        println!(
            "| graph | CPUs | memory (bytes) | units | ideals | pairs | exact DP | reference | DP time (s) | ref time (s) | speed-up | linear DP | ref linear | linear time (s) | peak RSS (MiB) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    }
    let mut failed = false;
    for &(name, reference, ref_time, ref_linear) in GRAPHS {
        let selected = match &selection {
            Selection::Graph(only) => only == name,
            _ => run_graphs,
        };
        if !selected {
            continue;
        }
        let path = dir.join(format!("{name}.json"));
        let pg = match PaperGraph::from_path(&path) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("{name}: {e}");
                failed = true;
                continue;
            }
        };
        let mut cluster = pg.cluster();
        let cpus = args.cpus.unwrap_or(pg.cpus);
        let memory = args.memory.unwrap_or(pg.memory_per_accelerator);
        // the reference values are for the file's own cluster
        let as_shipped = cpus == pg.cpus && memory == pg.memory_per_accelerator;
        let (reference, ref_time, ref_linear) = if as_shipped {
            (reference, ref_time, ref_linear.to_string())
        } else {
            (None, "-", "-".to_string())
        };
        cluster.cpus = cpus;
        for a in &mut cluster.accelerators {
            a.memory_bytes = memory;
        }
        let t = Instant::now();
        let linear = LinearDp.solve(&pg.graph, &cluster);
        let lin_time = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let exact = ExactDp::default().solve(&pg.graph, &cluster);
        let time = t.elapsed().as_secs_f64();
        let (Ok((plan, stats)), Ok((lplan, _))) = (exact, linear) else {
            eprintln!("{name}: a solver failed");
            failed = true;
            continue;
        };
        // the reference's time as an upper bound ("<1") gives no ratio
        let ratio = if ref_time.starts_with('<') || ref_time == "-" {
            "-".to_string()
        } else {
            ref_time
                .trim_start_matches('>')
                .split('-')
                .next_back()
                .and_then(|x| x.parse::<f64>().ok())
                .map_or("-".to_string(), |r| {
                    let at_least = if ref_time.starts_with('>') { ">" } else { "" };
                    format!("{at_least}{:.0}x", r / time)
                })
        };
        let ok = reference.is_none_or(|r| ((plan.objective - r) / r).abs() < 1e-5)
            // the exact DP is never worse than the linearized one
            && plan.objective <= lplan.objective * (1.0 + 1e-9);
        failed |= !ok;
        println!(
            "| {name} | {cpus} | {memory} | {} | {} | {} | {:.6} | {} | {:.3} | {ref_time} | {ratio} | {:.6} | {ref_linear} | {:.3} | {} |{}",
            stats.units,
            stats.ideals,
            stats.pairs,
            plan.objective,
            reference.map_or(
                if as_shipped { "not finished" } else { "-" }.to_string(),
                |r| r.to_string()
            ),
            time,
            lplan.objective,
            lin_time,
            peak_rss_mib().map_or("-".into(), |m| format!("{m:.0}")),
            if ok { "" } else { " MISMATCH" }
        );
    }
    if let (Some(limit), Selection::Graph(name)) = (args.ip, &selection) {
        failed |= !check_with_ip(
            &dir,
            name,
            args.cpus,
            args.memory,
            limit,
            !args.ip_without_dp_bound,
            args.write_mps.clone(),
        );
    }
    if run_synthetic {
        // A synthetic transformer-like graph of 50,000 operators, linearized DP.
        let g = transformer(5_000);
        let cluster = Cluster::homogeneous(8, u64::MAX, 1);
        let t = Instant::now();
        match LinearDp.solve(&g, &cluster) {
            Ok((plan, stats)) => println!(
                "\nsynthetic transformer, {} nodes, {} edges, 8 accelerators + 1 CPU: linearized DP {:.3} in {:.2} s ({} pairs), peak RSS {} MiB",
                g.nodes.len(),
                g.edges.len(),
                plan.objective,
                t.elapsed().as_secs_f64(),
                stats.pairs,
                peak_rss_mib().map_or("-".into(), |m| format!("{m:.0}")),
            ),
            Err(e) => {
                eprintln!("synthetic transformer: {e}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// The contiguous IP on one graph (the DP's check): prints the IP's
/// objective, bound and gap and the DP's value; false when they disagree
/// (an IP proven optimal with another value) or a solver fails.
fn check_with_ip(
    dir: &std::path::Path,
    name: &str,
    cpus: Option<usize>,
    memory: Option<u64>,
    limit: f64,
    dp_bound: bool,
    write_mps: Option<PathBuf>,
) -> bool {
    use hetero_partition::{IntegerProgram, IpSolver};
    let Ok(pg) = PaperGraph::from_path(&dir.join(format!("{name}.json"))) else {
        eprintln!("{name}: cannot read the graph");
        return false;
    };
    let mut cluster = pg.cluster();
    cluster.cpus = cpus.unwrap_or(pg.cpus);
    for a in &mut cluster.accelerators {
        a.memory_bytes = memory.unwrap_or(pg.memory_per_accelerator);
    }
    let solver = if cfg!(feature = "cbc") {
        IpSolver::Cbc
    } else {
        IpSolver::MicroLp
    };
    let (dp, dp_split) = match ExactDp::default().solve(&pg.graph, &cluster) {
        Ok((plan, _)) => (plan.objective, plan.assignment),
        Err(e) => {
            eprintln!("{name}: exact DP: {e}");
            return false;
        }
    };
    let t = Instant::now();
    let mut ip = IntegerProgram::contiguous()
        .with_time_limit(limit)
        .with_solver(solver);
    ip.write_mps = write_mps;
    if dp_bound {
        // A cutoff: the IP keeps every split of at most the DP's value
        // (so its optimum if the DP is right; none if the DP's value were
        // below the optimum: infeasible, a mismatch), and the DP's split as
        // its first incumbent (Cbc checks it against every row); proving
        // that no split is lower is the IP's own work.
        ip = ip.with_upper_bound(dp).with_start(dp_split);
    }
    let ip = ip.solve(&pg.graph, &cluster);
    match ip {
        Ok((plan, s)) => {
            let agrees = s.stopped_by_time_limit || (plan.objective - dp).abs() <= 1e-6 * dp;
            println!(
                "contiguous IP ({solver}{}), {name}, {} CPUs, memory {}: {} variables, {} constraints, objective {:.6}, bound {:.6}, gap {:.4}%, {}, {:.0} s wall; exact DP {dp:.6}{}",
                if dp_bound {
                    ", started from the DP's split and value"
                } else {
                    ""
                },
                cluster.cpus,
                cluster.accelerators.first().map_or(0, |a| a.memory_bytes),
                s.variables,
                s.constraints,
                plan.objective,
                s.bound,
                s.gap * 100.0,
                if s.stopped_by_time_limit {
                    "stopped by the time limit"
                } else {
                    "proven optimal"
                },
                t.elapsed().as_secs_f64(),
                if agrees { "" } else { " MISMATCH" }
            );
            agrees
        }
        Err(e) => {
            eprintln!("{name}: contiguous IP: {e}");
            false
        }
    }
}

/// `layers` transformer blocks of 10 operators each (Q, K, V projections,
/// attention, output projection, residual add, layer norm, two feed-forward
/// matmuls, residual add + norm), with deterministic pseudo-random costs.
fn transformer(layers: usize) -> Graph {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 1000) as f64 / 1000.0
    };
    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    let node = |nodes: &mut Vec<Node>, heavy: f64, r: f64| {
        let id = nodes.len();
        nodes.push(Node {
            id: id as u64,
            name: None,
            cpu_time: heavy * (8.0 + 4.0 * r),
            accelerator_time: heavy * (0.5 + 0.5 * r),
            memory_bytes: (heavy * 1e6) as u64,
            accelerator_ok: true,
            color_class: None,
            backward: false,
        });
        id
    };
    let edge = |edges: &mut Vec<Edge>, src: usize, dst: usize, cost: f64| {
        edges.push(Edge {
            src,
            dst,
            transfer_time: cost,
            bytes: None,
        });
    };
    let mut x = node(&mut nodes, 0.1, rnd());
    for _ in 0..layers {
        let q = node(&mut nodes, 1.0, rnd());
        let k = node(&mut nodes, 1.0, rnd());
        let v = node(&mut nodes, 1.0, rnd());
        let att = node(&mut nodes, 2.0, rnd());
        let out = node(&mut nodes, 1.0, rnd());
        let add = node(&mut nodes, 0.1, rnd());
        let ln = node(&mut nodes, 0.1, rnd());
        let ff1 = node(&mut nodes, 4.0, rnd());
        let ff2 = node(&mut nodes, 4.0, rnd());
        let add2 = node(&mut nodes, 0.2, rnd());
        let c = 0.05;
        for t in [q, k, v, add] {
            edge(&mut edges, x, t, c);
        }
        for s in [q, k, v] {
            edge(&mut edges, s, att, c);
        }
        edge(&mut edges, att, out, c);
        edge(&mut edges, out, add, c);
        edge(&mut edges, add, ln, c);
        for t in [ff1, add2] {
            edge(&mut edges, ln, t, c);
        }
        edge(&mut edges, ff1, ff2, 4.0 * c);
        edge(&mut edges, ff2, add2, c);
        x = add2;
    }
    Graph { nodes, edges }
}
