//! hetero-place: place a DNN graph (the paper's JSON format) on accelerators
//! and CPUs for pipelined throughput, or score a given split.
//!
//! Prints the split in the paper's output format (`maxLoad`, `fpgas`, `cpus`)
//! on stdout and a human summary on stderr.
//!
//! With `--model`, places a real model's layers on the given devices
//! instead: each device profiled, the exact chain DP against the equal and
//! memory-proportional splits and the best single device, optionally each
//! plan loaded and measured (`--measure`).

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
///
/// With --model instead of --graph: split a real model (GGUF or Hugging
/// Face) by layers over the --device list, each device's per-layer costs
/// measured (cached with --profile-cache), the layers placed by the exact
/// chain DP under every device's free memory (weights + the KV cache of
/// --batch sequences of --max-len positions), beside llama.cpp's
/// memory-proportional split, the equal split and the best single device.
#[derive(Debug, Parser)]
#[command(name = "hetero-place", version)]
struct Args {
    /// Graph file in the paper's JSON format.
    #[arg(long, value_name = "FILE", required_unless_present = "model")]
    graph: Option<PathBuf>,
    /// A real model to split by layers (.gguf file or Hugging Face folder).
    #[arg(long, value_name = "PATH", conflicts_with = "graph")]
    model: Option<PathBuf>,
    /// With --model: a device of the pipeline (repeatable): `host`,
    /// `host:threads=1,memory=200MiB`, `wgpu:0`, `wgpu:0,memory=1GiB`,
    /// `cuda:0`, ...; a `host` without `threads=` leaves one core to each
    /// other device in the list (the thread that drives it).
    #[arg(long = "device", value_name = "SPEC", requires = "model")]
    devices: Vec<String>,
    /// With --model: sequences decoded together (profile and KV memory).
    #[arg(long, value_name = "N", default_value_t = 8)]
    batch: usize,
    /// With --model: cached positions when a decode step is timed.
    #[arg(long, value_name = "N", default_value_t = 64)]
    context: usize,
    /// With --model: the KV cache's dtype the plan counts and --measure
    /// runs (`auto`: f16 where every device reads f16 caches).
    #[arg(
        long,
        value_name = "auto|f32|f16",
        default_value = "auto",
        requires = "model"
    )]
    kv_dtype: hetero_models::llama::KvCacheDtype,
    /// With --model: positions each sequence may reach (KV memory).
    #[arg(long, value_name = "N", default_value_t = 512)]
    max_len: usize,
    /// With --model: profiles cached in this JSON file.
    #[arg(long, value_name = "FILE")]
    profile_cache: Option<PathBuf>,
    /// With --model: load every plan that fits and measure its decode
    /// tokens/s (64 steps, or --measure-seconds after 4 steps; one group of --batch sequences per stage in
    /// flight, so each stage call is a step of --batch sequences, as
    /// profiled).
    #[arg(long, requires = "model")]
    measure: bool,
    /// With --measure: measure every plan this many times, the plans taking
    /// turns (round-robin), and report each plan's median round: on a
    /// shared machine whose speed drifts over minutes, turns spread the
    /// drift over the plans instead of charging it to one.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "measure")]
    measure_rounds: usize,
    /// With --measure: seconds after which a plan's measurement stops
    /// (once every sequence has taken four steps; at most 64 steps).
    #[arg(long, value_name = "S", default_value_t = 30.0, requires = "measure")]
    measure_seconds: f64,
    /// With --measure: do not time each plan's stages alone before it
    /// runs. By default, right before each measurement, every stage is
    /// loaded by itself and timed as the profiles time a part (the median
    /// of 7 calls), and the plan's prediction is taken again from these
    /// seconds ("predicted now"): on a machine whose speed drifts (a
    /// shared VM), stages slower alone than profiled are the machine, and
    /// measured / predicted now is what running the stages as a pipeline
    /// costs. Costs, every round, each stage's prefill of --context
    /// positions for the --batch sequences and 8 decode calls (a minute or
    /// more for a stage on a software adapter).
    #[arg(long, requires = "measure")]
    no_retime: bool,
    /// With --model: print the report as one JSON object.
    #[arg(long, requires = "model")]
    json: bool,
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
    let Some(graph) = &args.graph else {
        return Err(PartitionError::Malformed {
            what: "arguments".into(),
            reason: "give --graph FILE or --model PATH".into(),
        });
    };
    let pg = PaperGraph::from_path(graph)?;
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
        graph.display(),
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

/// One plan's measurement as soon as it is taken (on stderr: a run with
/// software adapters takes minutes, and the table comes at the end), with
/// each stage's mean call against the plan's seconds for it.
fn tell_measured(
    plan: &hetero_scheduler::pipeline::SplitChoice,
    m: &hetero_scheduler::pipeline::DecodeMeasurement,
    now: Option<&hetero_scheduler::pipeline::Retimed>,
) {
    let predicted = plan.predicted_tokens_per_s;
    let against_now = now.map_or(String::new(), |r| {
        format!(
            "; {:.1} predicted from the stages timed alone just before ({:.2})",
            r.predicted_tokens_per_s,
            ratio(m.tokens_per_s, r.predicted_tokens_per_s)
        )
    });
    eprintln!(
        "  {}: {:.1} tok/s measured, {predicted:.1} predicted ({:.2}){against_now}",
        plan.name,
        m.tokens_per_s,
        m.tokens_per_s / predicted
    );
    for (i, (s, w)) in plan.stages.iter().zip(&m.stages).enumerate() {
        let alone = now
            .and_then(|r| r.stage_s.get(i))
            .map_or(String::new(), |&t| {
                format!(
                    "; alone now {:.2} ms ({:.2}x profile)",
                    t * 1e3,
                    ratio(t, s.seconds)
                )
            });
        eprintln!(
            "    {} layers {}-{}: {:.2} ms a step ({:.2} predicted, {:.2}x), busy {:.0}%{alone}",
            s.device,
            s.layers[0],
            s.layers[1],
            w.mean_call_s * 1e3,
            s.seconds * 1e3,
            step_ratio(s, w),
            w.busy_fraction * 100.0
        );
    }
}

/// `a / b`, 0 where `b` is not positive (a stage or plan predicted to
/// take no time, or to produce nothing).
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// A stage's measured mean step over the step its plan predicted (0 for
/// a stage predicted to take no time).
fn step_ratio(
    s: &hetero_scheduler::pipeline::plan::StageChoice,
    w: &hetero_scheduler::pipeline::StageWork,
) -> f64 {
    ratio(w.mean_call_s, s.seconds)
}

/// `--model`: profile, plan, report, and with `--measure` run every plan.
fn run_model(args: &Args, path: &std::path::Path) -> hetero_core::Result<()> {
    use hetero_scheduler::pipeline::{
        DecodeMeasurement, PlanOptions, ProfileOptions, Retimed, SplitChoice, measure_side_by_side,
        plan_devices, retime_stages,
    };
    if args.measure_rounds == 0 {
        return Err(hetero_core::Error::invalid(
            "--measure-rounds",
            "0 rounds measure nothing; give 1 or more",
        ));
    }
    if !(args.measure_seconds.is_finite() && args.measure_seconds >= 0.0) {
        return Err(hetero_core::Error::invalid(
            "--measure-seconds",
            format!(
                "{} is not a number of seconds (0 or more)",
                args.measure_seconds
            ),
        ));
    }
    let checkpoint = hetero_models::Checkpoint::open(path)?;
    let found = hetero_backends::discover(1, &mut |_| {})?;
    let specs = if args.devices.is_empty() {
        vec!["host".to_string()]
    } else {
        args.devices.clone()
    };
    let devices: Vec<hetero_core::SharedDevice> = hetero_backends::select_devices(&specs, &found)?
        .iter()
        .map(|d| d.shared())
        .collect();
    let profile = ProfileOptions {
        batch: args.batch,
        context: args.context,
        kv_dtype: args.kv_dtype,
        ..ProfileOptions::default()
    };
    let options = PlanOptions {
        batch: args.batch,
        max_len: args.max_len,
        activation_bytes: hetero_scheduler::real_model::activation_bytes(
            checkpoint.config(),
            args.batch.max(args.context),
            args.batch,
        ),
    };
    let (profiles, report) = plan_devices(
        &checkpoint,
        &devices,
        options,
        profile,
        args.profile_cache.as_deref(),
        &mut |m| eprintln!("{m}"),
    )?;
    // Each plan's rounds: the measurement, and its stages timed alone
    // just before (unless --no-retime).
    type Round = (DecodeMeasurement, Option<Retimed>);
    let mut measured: Vec<(SplitChoice, Vec<Round>)> = Vec::new();
    if args.measure {
        let mut plans: Vec<SplitChoice> = report.dp.iter().cloned().collect();
        plans.push(report.memory_proportional.clone());
        plans.push(report.equal.clone());
        plans.extend(report.best_single.iter().cloned());
        // Several pipelines (or copies) side by side run all at once; a
        // replica plan of one copy is the single device, measured above.
        plans.extend(
            report
                .replicas
                .iter()
                .filter(|r| r.stages.len() > 1)
                .cloned(),
        );
        plans.extend(report.pipelines.iter().cloned());
        measured = plans
            .into_iter()
            .filter(|p| p.fits)
            .map(|p| (p, Vec::new()))
            .collect();
        let rounds = args.measure_rounds;
        for round in 1..=rounds {
            for (plan, runs) in &mut measured {
                if rounds > 1 {
                    eprintln!("measuring {} (round {round} of {rounds})...", plan.name);
                } else {
                    eprintln!("measuring {}...", plan.name);
                }
                let now = if args.no_retime {
                    None
                } else {
                    Some(retime_stages(
                        &checkpoint,
                        &devices,
                        plan,
                        args.kv_dtype,
                        args.batch,
                        args.context,
                        profile.repetitions,
                    )?)
                };
                let m = measure_side_by_side(
                    &checkpoint,
                    &devices,
                    plan,
                    args.kv_dtype,
                    args.batch,
                    args.context,
                    64,
                    args.measure_seconds,
                )?;
                tell_measured(plan, &m, now.as_ref());
                runs.push((m, now));
            }
        }
    }
    // Each plan's median round (the upper middle of an even count).
    let median = |runs: &[Round]| -> Round {
        let mut sorted: Vec<&Round> = runs.iter().collect();
        sorted.sort_by(|a, b| a.0.tokens_per_s.total_cmp(&b.0.tokens_per_s));
        sorted[sorted.len() / 2].clone()
    };
    let measured: Vec<(SplitChoice, Round, Vec<f64>)> = measured
        .into_iter()
        .filter(|(_, runs)| !runs.is_empty())
        .map(|(plan, runs)| {
            let rates = runs.iter().map(|r| r.0.tokens_per_s).collect();
            (plan, median(&runs), rates)
        })
        .collect();
    if args.json {
        let out = serde_json::json!({
            "model": path.display().to_string(),
            "profiles": profiles,
            "report": report,
            "measured": measured.iter().map(|(plan, (m, now), rounds)| serde_json::json!({
                "plan": plan.name,
                "tokens_per_s": m.tokens_per_s,
                "rounds_tokens_per_s": rounds,
                "predicted_tokens_per_s": plan.predicted_tokens_per_s,
                "measured_over_predicted": m.tokens_per_s / plan.predicted_tokens_per_s,
                "predicted_now_tokens_per_s": now.as_ref().map(|r| r.predicted_tokens_per_s),
                "measured_over_predicted_now": now
                    .as_ref()
                    .map(|r| ratio(m.tokens_per_s, r.predicted_tokens_per_s)),
                "seconds": m.seconds,
                "stages": plan.stages.iter().zip(&m.stages).enumerate().map(|(i, (s, w))| serde_json::json!({
                    "device": s.device,
                    "layers": s.layers,
                    "calls": w.calls,
                    "mean_step_s": w.mean_call_s,
                    "predicted_step_s": s.seconds,
                    "alone_now_step_s": now.as_ref().and_then(|r| r.stage_s.get(i)),
                    "busy_fraction": w.busy_fraction,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&out)
                .map_err(|e| hetero_core::Error::invalid("report", e.to_string()))?
        );
        return Ok(());
    }
    for p in &profiles {
        let free = report
            .devices
            .iter()
            .position(|d| *d == p.device)
            .map_or(0, |i| report.memory_bytes[i]);
        println!(
            "{} ({}): {:.3} ms per layer (mean), embedding {:.3} ms, head {:.3} ms, boundary {:.3} ms, {:.1} MiB free",
            p.device,
            p.device_name,
            p.layer_s.iter().sum::<f64>() / p.layer_s.len().max(1) as f64 * 1e3,
            p.embed_s * 1e3,
            p.head_s * 1e3,
            p.boundary_s * 1e3,
            free as f64 / 1048576.0
        );
    }
    print!("{}", report.explain());
    if !measured.is_empty() {
        if args.measure_rounds > 1 {
            println!(
                "measured: each plan's median of {} rounds",
                args.measure_rounds
            );
        }
        println!(
            "| plan | measured tok/s | predicted tok/s | measured / predicted | each stage's step, measured / predicted | each stage busy | predicted now tok/s | measured / predicted now | each stage alone now / predicted |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for (plan, (m, now), _) in &measured {
            let steps: Vec<String> = plan
                .stages
                .iter()
                .zip(&m.stages)
                .map(|(s, w)| format!("{:.2}", step_ratio(s, w)))
                .collect();
            let busy: Vec<String> = m
                .stages
                .iter()
                .map(|w| format!("{:.0}%", w.busy_fraction * 100.0))
                .collect();
            // With --no-retime, nothing was timed alone: a dash in each column.
            let (predicted_now, against_now, alone) = match now {
                Some(r) => (
                    format!("{:.1}", r.predicted_tokens_per_s),
                    format!("{:.2}", ratio(m.tokens_per_s, r.predicted_tokens_per_s)),
                    plan.stages
                        .iter()
                        .zip(&r.stage_s)
                        .map(|(s, &t)| format!("{:.2}", ratio(t, s.seconds)))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            println!(
                "| {} | {:.1} | {:.1} | {:.2} | {} | {} | {predicted_now} | {against_now} | {alone} |",
                plan.name,
                m.tokens_per_s,
                plan.predicted_tokens_per_s,
                m.tokens_per_s / plan.predicted_tokens_per_s,
                steps.join(", "),
                busy.join(", ")
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.model {
        return hetero_examples::exit_code(run_model(&args, path));
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hetero-place: {e}");
            ExitCode::FAILURE
        }
    }
}
