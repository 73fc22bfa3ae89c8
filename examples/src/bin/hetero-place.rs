//! hetero-place: place a DNN graph (the paper's JSON format) on accelerators
//! and CPUs for pipelined throughput, or score a given split.
//!
//! Prints the split in the paper's output format (`maxLoad`, `fpgas`, `cpus`)
//! on stdout and a human summary on stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hetero_core::placement::{Cluster, Plan};
use hetero_partition::{
    DpEvent, ExactDp, Greedy, IntegerProgram, IpSolver, LinearDp, PaperGraph, PaperSplit,
    PartitionError, PipeDream, ProgressFn, SolveStats, cluster_from_topology, evaluate,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Place the nodes of a DNN graph on k accelerators and l CPUs so that the
/// time per sample under pipelining (the largest device load) is least,
/// after Tarnawski et al., "Efficient Algorithms for Device Placement of DNN
/// Graph Operators" (NeurIPS 2020).
///
/// The graph file is the paper's input format (`maxFPGAs`, `maxCPUs`,
/// `maxSizePerFPGA`, `nodes`, `edges`); k, l and the memory default to the
/// file's values. The split goes to stdout in the paper's output format.
#[derive(Debug, Parser)]
#[command(name = "hetero-place", version)]
struct Args {
    /// Graph file in the paper's JSON format.
    #[arg(long, value_name = "FILE")]
    graph: PathBuf,
    /// Algorithm: exact DP over all ideals, DP over the prefixes of one
    /// topological order, or the greedy baseline.
    #[arg(long, value_enum, default_value_t = Algo::Dp)]
    algo: Algo,
    /// Number of accelerators (default: the file's maxFPGAs).
    #[arg(long, value_name = "K")]
    accelerators: Option<usize>,
    /// Number of CPUs (default: the file's maxCPUs).
    #[arg(long, value_name = "L")]
    cpus: Option<usize>,
    /// Memory of each accelerator, bytes (default: the file's maxSizePerFPGA).
    #[arg(long, value_name = "BYTES")]
    memory: Option<u64>,
    /// Score this split (paper output format, e.g. a human-experts file)
    /// instead of solving. Nodes it leaves out follow their colour class.
    #[arg(long, value_name = "SPLIT.json")]
    score: Option<PathBuf>,
    /// Cluster of several accelerator kinds, JSON: {"accelerators": [{"name":
    /// "a100", "count": 4, "memory_bytes": 40000000000, "speed_factor": 1.0},
    /// ...], "cpus": 1}. Overrides --accelerators, --cpus and --memory.
    #[arg(long, value_name = "CLUSTER.json")]
    cluster: Option<PathBuf>,
    /// Cluster from a measured topology (hetero-topology's JSON): devices
    /// that are not CPUs become accelerator classes (same name, memory and
    /// GEMM throughput), speeds relative to the fastest; CPU devices become
    /// the CPUs. Overrides --accelerators, --cpus and --memory. When the
    /// topology splits the accelerators into domains, they become the
    /// nodes of a two-level interconnect (transfers between nodes cost
    /// the bandwidth ratio times more), which the IPs model, greedy and
    /// PipeDream score with, and the DPs refuse (see --ignore-interconnect).
    #[arg(long, value_name = "TOPOLOGY.json", conflicts_with = "cluster")]
    topology: Option<PathBuf>,
    /// Drop the cluster's two-level interconnect: every transfer costs the
    /// graph's time (what the DPs need).
    #[arg(long)]
    ignore_interconnect: bool,
    /// Exact DP (--algo dp): give up beyond this many ideals of the
    /// contracted graph. The DP's memory and time grow with the ideals;
    /// past the limit the error says so instead of exhausting memory.
    #[arg(long, value_name = "N", default_value_t = ExactDp::default().ideal_limit)]
    ideal_limit: usize,
    /// Time limit of the integer programs, seconds (the best split found by
    /// then is returned, with its optimality gap).
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    time_limit: f64,
    /// With --algo ip or ip-noncontig: also write the integer program to
    /// MPS file, gzip-compressed as <stem>.mps.gz (to solve it with
    /// another solver). Needs --solver cbc.
    #[arg(long, value_name = "FILE.mps")]
    write_mps: Option<PathBuf>,
    /// MILP solver of --algo ip / ip-noncontig: microlp (pure Rust, always
    /// built) or cbc (COIN-OR Cbc, faster on large models; only in a build
    /// with the `cbc` feature, which needs Debian's coinor-libcbc-dev).
    #[arg(long, value_enum, default_value_t = Solver::Microlp)]
    solver: Solver,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Solver {
    Microlp,
    Cbc,
}

impl From<Solver> for IpSolver {
    fn from(s: Solver) -> Self {
        match s {
            Solver::Microlp => IpSolver::MicroLp,
            Solver::Cbc => IpSolver::Cbc,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Algo {
    /// Exact DP over all ideals (contiguous splits).
    Dp,
    /// DP over the prefixes of one topological order (fast, not optimal).
    DpLinear,
    /// Fill accelerators in topological order up to their share of the time.
    Greedy,
    /// Integer program over contiguous splits (see --solver; optimal unless
    /// --time-limit stops it, then the gap is reported).
    Ip,
    /// Integer program over all splits, contiguous or not.
    IpNoncontig,
    /// PipeDream's stage DP over one topological order (a baseline).
    Pipedream,
}

fn run(args: &Args) -> Result<(), PartitionError> {
    let pg = PaperGraph::from_path(&args.graph)?;
    let cluster = match (&args.cluster, &args.topology) {
        (None, Some(path)) => {
            let topology =
                hetero_core::Topology::load(path).map_err(|e| PartitionError::Malformed {
                    what: format!("topology file {}", path.display()),
                    reason: e.to_string(),
                })?;
            cluster_from_topology(&topology)?
        }
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|source| PartitionError::Io {
                context: format!("reading {}", path.display()),
                source,
            })?;
            serde_json::from_str::<Cluster>(&text).map_err(|e| PartitionError::Malformed {
                what: format!("cluster file {}", path.display()),
                reason: e.to_string(),
            })?
        }
        (None, None) => Cluster::homogeneous(
            args.accelerators.unwrap_or(pg.accelerators),
            args.memory.unwrap_or(pg.memory_per_accelerator),
            args.cpus.unwrap_or(pg.cpus),
        ),
    };
    let mut cluster = cluster;
    if args.ignore_interconnect {
        cluster.interconnect = None;
    }
    let g = &pg.graph;
    eprintln!(
        "graph {}: {} nodes, {} edges; {} accelerator(s), {} CPU(s)",
        args.graph.display(),
        g.nodes.len(),
        g.edges.len(),
        cluster.accelerator_count(),
        cluster.cpus
    );
    if let Some(ic) = &cluster.interconnect {
        eprintln!(
            "two-level interconnect: {} accelerator(s) per node, transfers between nodes cost {:.3}x",
            ic.accelerators_per_node, ic.inter_node_cost_factor
        );
        if args.score.is_none() && matches!(args.algo, Algo::Dp | Algo::DpLinear) {
            return Err(PartitionError::Unsupported(
                "the DPs do not model the cluster's two-level interconnect; use --algo ip \
                 (contiguous, exact), ip-noncontig, greedy or pipedream, which do, or \
                 --ignore-interconnect to place as if every transfer cost the graph's time"
                    .into(),
            ));
        }
    }
    let (plan, stats): (Plan, Option<SolveStats>) = if let Some(path) = &args.score {
        let split = PaperSplit::from_path(path)?;
        let assignment = split.complete_assignment(g)?;
        let e = evaluate(g, &cluster, &assignment)?;
        if !e.fits() {
            eprintln!(
                "warning: the split overflows the memory of {:?}",
                e.memory_violations
            );
        }
        (e.plan, None)
    } else {
        let (plan, stats) = match args.algo {
            Algo::Dp => {
                let (progress, bar) = progress_bar();
                let dp = ExactDp {
                    progress: Some(progress),
                    events: Some(Arc::new(report_dp_event)),
                    ideal_limit: args.ideal_limit,
                    ..ExactDp::default()
                };
                let out = dp.solve(g, &cluster);
                bar.finish_and_clear();
                out?
            }
            Algo::DpLinear => LinearDp.solve(g, &cluster)?,
            Algo::Greedy => Greedy.solve(g, &cluster)?,
            Algo::Pipedream => PipeDream.solve(g, &cluster)?,
            Algo::Ip | Algo::IpNoncontig => {
                let mut ip = if args.algo == Algo::Ip {
                    IntegerProgram::contiguous()
                } else {
                    IntegerProgram::non_contiguous()
                }
                .with_time_limit(args.time_limit)
                .with_solver(args.solver.into());
                ip.write_mps = args.write_mps.clone();
                eprintln!(
                    "solving the integer program with {} (time limit {} s)...",
                    ip.solver, args.time_limit
                );
                let (plan, s) = ip.solve(g, &cluster)?;
                eprintln!(
                    "{}: {} variables, {} constraints, solver objective {:.6}, bound {:.6}, gap {:.2}%{}",
                    plan.solver,
                    s.variables,
                    s.constraints,
                    s.solver_objective,
                    s.bound,
                    s.gap * 100.0,
                    if s.stopped_by_time_limit {
                        " (stopped by the time limit: not proven optimal)"
                    } else {
                        " (optimal)"
                    }
                );
                let stats = SolveStats {
                    units: 0,
                    ideals: 0,
                    pairs: 0,
                    upper_bound: s.solver_objective,
                    dp_objective: s.solver_objective,
                    seconds: s.seconds,
                    ..SolveStats::default()
                };
                (plan, stats)
            }
        };
        (plan, Some(stats))
    };
    let out = PaperSplit::from_plan(g, &plan);
    let text = serde_json::to_string_pretty(&out).map_err(|e| PartitionError::Malformed {
        what: "output".into(),
        reason: e.to_string(),
    })?;
    println!("{text}");
    if let Some(s) = stats {
        if plan.solver.starts_with("ip-") {
            eprintln!("{}: {:.3} s", plan.solver, s.seconds);
        } else {
            eprintln!(
                "{}: {} units, {} ideals, {} pairs scored, {:.3} s",
                plan.solver, s.units, s.ideals, s.pairs, s.seconds
            );
        }
    }
    for l in &plan.loads {
        if !l.nodes.is_empty() {
            eprintln!(
                "  {:?}: {} nodes, load {:.6}, memory {} bytes",
                l.slot,
                l.nodes.len(),
                l.load,
                l.memory_bytes
            );
        }
    }
    eprintln!(
        "objective (max load, time per sample): {:.6}",
        plan.objective
    );
    Ok(())
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The exact DP's memory estimate before it enumerates, its count while
/// it does, and whether the satellites' bound was tight, on stderr.
fn report_dp_event(e: &DpEvent) {
    match e {
        DpEvent::Enumerating {
            units,
            satellites,
            bytes_per_ideal,
            limit,
        } => {
            let held = if *satellites > 0 {
                format!(" ({satellites} zero-time units holding memory priced per set)")
            } else {
                String::new()
            };
            eprintln!(
                "exact DP: enumerating the ideals of {units} units{held}; about {bytes_per_ideal} bytes per ideal, so at most {:.0} MiB at the limit of {limit} ideals (--ideal-limit)",
                mib(bytes_per_ideal.saturating_mul(*limit))
            );
        }
        DpEvent::Ideals { ideals, bytes } => {
            eprintln!("exact DP: {ideals} ideals so far, {:.0} MiB", mib(*bytes));
        }
        DpEvent::Enumerated {
            ideals,
            table_bytes,
        } => {
            eprintln!(
                "exact DP: {ideals} ideals; DP table {:.1} MiB",
                mib(*table_bytes)
            );
        }
        DpEvent::SatellitesNotTight { value, lower_bound } => {
            eprintln!(
                "exact DP: with satellites priced per set the best split found is {value:.6} and the bound {lower_bound:.6}; not proven optimal, so the DP runs again on every unit"
            );
        }
        _ => {}
    }
}

/// A progress bar on stderr (indicatif hides it unless stderr is a
/// terminal), shown only for runs over two seconds.
fn progress_bar() -> (Arc<ProgressFn>, ProgressBar) {
    let bar = ProgressBar::hidden();
    let shown = bar.clone();
    let start = Instant::now();
    let first = std::sync::Once::new();
    let tell = move |done: usize, total: usize| {
        if start.elapsed() < Duration::from_secs(2) {
            return;
        }
        first.call_once(|| {
            shown.set_draw_target(ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("[{bar:40}] {percent:>3}% of {len} ideals, {elapsed}")
            {
                shown.set_style(style.progress_chars("#."));
            }
        });
        shown.set_length(total as u64);
        shown.set_position(done as u64);
    };
    (Arc::new(tell), bar)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hetero-place: {e}");
            ExitCode::FAILURE
        }
    }
}
