//! hetero-autosync: search per-variable gradient synchronization strategies
//! for data-parallel training (AutoSync), measuring every candidate on real
//! ranks.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use hetero_collectives::sense::{SenseConfig, sense_topology};
use hetero_collectives::transport::{self, Ranks, connect};
use hetero_collectives::{Hierarchical, TcpConfig, Transport};
use hetero_core::{Error, LinkKind, LinkModel, Result};
use hetero_examples::exit_code;
use hetero_scheduler::sync::cluster::{
    ClusterModel, ClusterSpec, InProcessCluster, LinkSource, measure_copy_speed,
};
use hetero_scheduler::sync::exec::{Driver, serve_worker};
use hetero_scheduler::sync::model::{ModelSpec, PRESETS};
use hetero_scheduler::sync::search::{SearchConfig, SearchReport, search, transfer_accuracy};
use hetero_scheduler::sync::strategy::Layout;

/// Find how to synchronize each variable's gradient in data-parallel
/// training (parameter server, all-reduce flat / hierarchical / auto with
/// fusion groups and fp16 compression, all-gather for sparse gradients,
/// sharding over servers), after AutoSync (Zhang et al., NeurIPS 2020).
///
/// Every candidate runs for real: each rank holds buffers of the model's
/// variables, produces integer-valued gradients on the host (no model is
/// evaluated: a stand-in for the backward pass), synchronizes them as the
/// strategy says and applies SGD; the best strategy and the baselines are
/// checked element by element against a naive sum on every rank.
///
/// In-process ranks (default): one task per rank, nodes joined by an
/// emulated link (one NIC per node at --inter-gbit, --inter-latency-ms).
/// TCP ranks: start one process per rank with torchrun's variables (RANK,
/// WORLD_SIZE, LOCAL_WORLD_SIZE = ranks per node, MASTER_ADDR, MASTER_PORT)
/// and `--transport tcp`; rank 0 searches and prints.
#[derive(Debug, Parser)]
#[command(name = "hetero-autosync", version)]
struct Args {
    /// Model: a preset (bert-large, vgg16, resnet50, ncf) or a JSON file
    /// ({"name": ..., "variables": [{"name", "shape", "dtype", "sparse":
    /// {"rows_touched"}}]}).
    #[arg(long, value_name = "PRESET|FILE")]
    model: String,
    /// `measure`: links sensed at start-up; or a cluster JSON file
    /// ({"nodes", "ranks_per_node", "inter": {"kind", "latency_s",
    /// "bandwidth_bytes_per_s"}, "intra": optional}); links from the file
    /// when it has "intra", else sensed.
    #[arg(long, value_name = "FILE|measure", default_value = "measure")]
    cluster: String,
    #[arg(long, value_enum, default_value_t = TransportKind::Inproc)]
    transport: TransportKind,
    /// Nodes of the emulated cluster (in-process, --cluster measure).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Ranks per node (in-process, --cluster measure).
    #[arg(long, default_value_t = 4)]
    ranks_per_node: usize,
    /// Emulated bandwidth of each node's NIC, Gbit/s (in-process).
    #[arg(long, default_value_t = 1.0)]
    inter_gbit: f64,
    /// Emulated latency between nodes, ms (in-process).
    #[arg(long, default_value_t = 0.5)]
    inter_latency_ms: f64,
    /// Shrink every variable's first axis by this factor (0 < F <= 1), so a
    /// large model fits this machine; `auto` keeps weights and gradients of
    /// all in-process ranks under a quarter of the available memory.
    #[arg(long, default_value = "auto", value_name = "F|auto")]
    scale: String,
    /// Strategies run for real (baselines not counted).
    #[arg(long, default_value_t = 50)]
    trials: usize,
    /// Strategies run between retrainings of the simulator.
    #[arg(long, default_value_t = 5)]
    per_round: usize,
    /// Candidates ranked by the simulator per round.
    #[arg(long, default_value_t = 400)]
    candidates: usize,
    /// Strategies per round drawn at random from the candidates rather
    /// than from the top of the ranking (exploration).
    #[arg(long, default_value_t = 2)]
    explore: usize,
    /// Timed steps per strategy (the median is kept), after --warmup steps.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Leave fp16 compression out of the search space (the baselines never
    /// compress; this shows what the rest of the space gains).
    #[arg(long)]
    no_fp16: bool,
    /// Print the whole report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// A JSON report of another run (another model or cluster): train the
    /// learned simulator on its measurements and report its ranking
    /// accuracy on this run's (transfer).
    #[arg(long, value_name = "REPORT.json")]
    train_from: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportKind {
    /// Ranks are tasks of this process.
    Inproc,
    /// One process per rank, torchrun's environment variables.
    Tcp,
}

fn available_memory() -> Option<f64> {
    hetero_core::system::mem_available().ok().map(|b| b as f64)
}

fn scaled_model(args: &Args, ranks_here: usize) -> Result<ModelSpec> {
    let model = ModelSpec::load(&args.model)?;
    let factor = if args.scale == "auto" {
        // Weights + gradients + a fused copy per rank.
        let need = 3.0 * model.bytes() as f64 * ranks_here as f64;
        let budget = available_memory().unwrap_or(4e9) / 4.0;
        (budget / need).min(1.0)
    } else {
        args.scale.parse::<f64>().map_err(|_| {
            Error::invalid(
                "--scale",
                format!("{:?} is not a number or `auto`", args.scale),
            )
        })?
    };
    model.scaled(factor)
}

fn print_summary(r: &SearchReport, transfer: Option<f64>) {
    println!(
        "model {} ({} variables, {:.1} MB)",
        r.model,
        r.variables,
        r.model_bytes as f64 / 1e6
    );
    println!("cluster {}", r.cluster);
    println!("{:<28} {:>12}", "strategy", "step time s");
    for b in &r.baselines {
        println!("{:<28} {:>12.4}", b.label, b.measured_s);
    }
    if let Some(s) = r.best_search_s {
        println!(
            "{:<28} {:>12.4}   (found at trial {})",
            "best found by the search",
            s,
            r.best_found_at_trial.unwrap_or(0)
        );
    }
    println!(
        "best: {} at {:.4} s, {:.2}x the best baseline ({}, {:.4} s); verified on every rank",
        r.best.label,
        r.best.measured_s,
        r.speedup_over_best_baseline,
        r.best_baseline,
        r.best_baseline_s
    );
    println!(
        "hit rate {:.0}% of {} trials beat the best baseline",
        r.hit_rate * 100.0,
        r.trials.len()
    );
    let pct = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{:.1}%", v * 100.0));
    println!(
        "pairwise ranking accuracy, {}-fold cross-validated over {} held-out pairs (ties under {:.0}% left out): analytic {}, learned {}",
        r.folds,
        r.held_out_pairs,
        r.tie * 100.0,
        pct(r.ranking_accuracy_analytic),
        pct(r.ranking_accuracy_learned)
    );
    if transfer.is_some() {
        println!(
            "learned simulator trained on the other run: {}",
            pct(transfer)
        );
    }
}

async fn drive(args: &Args, driver: &Driver, cm: &ClusterModel, model: &ModelSpec) -> Result<()> {
    let cfg = SearchConfig {
        trials: args.trials,
        per_round: args.per_round,
        candidates: args.candidates,
        explore: args.explore,
        warmup: args.warmup,
        steps: args.steps,
        seed: args.seed,
        fp16: !args.no_fp16,
        ..SearchConfig::default()
    };
    eprintln!(
        "searching {} ({} variables, {:.1} MB per replica) on {} ranks: {} trials",
        model.name,
        model.variables.len(),
        model.bytes() as f64 / 1e6,
        driver.layout().world(),
        cfg.trials
    );
    let report = search(driver, cm, model, &cfg, &mut |line| eprintln!("{line}")).await?;
    let transfer = match &args.train_from {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
            let other: SearchReport = serde_json::from_str(&text)
                .map_err(|e| Error::invalid("--train-from", format!("{}: {e}", p.display())))?;
            transfer_accuracy(&other.data(), &report.data(), report.tie)
        }
        None => None,
    };
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::invalid("report", e.to_string()))?;
    if let Some(p) = &args.output {
        std::fs::write(p, &json).map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print_summary(&report, transfer);
    }
    Ok(())
}

async fn run_inproc(args: &Args) -> Result<()> {
    let (spec, links) = if args.cluster == "measure" {
        if !(args.inter_gbit > 0.0 && args.inter_latency_ms >= 0.0) {
            return Err(Error::invalid(
                "--inter-gbit",
                "needs a positive bandwidth and a non-negative latency",
            ));
        }
        let spec = ClusterSpec {
            nodes: args.nodes,
            ranks_per_node: args.ranks_per_node,
            inter: LinkModel::new(
                LinkKind::Ethernet,
                args.inter_latency_ms * 1e-3,
                args.inter_gbit * 1e9 / 8.0,
            ),
            intra: None,
        };
        (spec, LinkSource::Measure)
    } else {
        let spec = ClusterSpec::load(std::path::Path::new(&args.cluster))?;
        let links = if spec.intra.is_some() {
            LinkSource::Spec
        } else {
            LinkSource::Measure
        };
        (spec, links)
    };
    let layout = spec.layout()?;
    let model = scaled_model(args, layout.world())?;
    eprintln!(
        "starting {} in-process ranks ({} nodes x {}), links {}",
        layout.world(),
        layout.nodes,
        layout.ranks_per_node,
        if links == LinkSource::Measure {
            "measured"
        } else {
            "from the file"
        }
    );
    let cluster = InProcessCluster::start(&spec, links).await?;
    let result = drive(args, &cluster.driver, &cluster.model, &model).await;
    let stopped = cluster.shutdown().await;
    result.and(stopped)
}

async fn run_tcp(args: &Args) -> Result<()> {
    let cfg = TcpConfig::from_env()?;
    if cfg.local_world_size == 0 || cfg.world_size % cfg.local_world_size != 0 {
        return Err(Error::invalid(
            "LOCAL_WORLD_SIZE",
            format!(
                "{} does not divide WORLD_SIZE {}: every node must run the same number of ranks",
                cfg.local_world_size, cfg.world_size
            ),
        ));
    }
    let layout = Layout::new(cfg.world_size / cfg.local_world_size, cfg.local_world_size)?;
    let t: Arc<dyn Transport> = connect(transport::TransportKind::Tcp, Ranks::Job(cfg), None)
        .await?
        .into_single()?;
    let topo = sense_topology(t.clone(), &SenseConfig::default()).await?;
    let hier = Hierarchical::new(t.clone(), &topo)?;
    if t.rank() != 0 {
        let r = serve_worker(t.clone(), hier, layout).await;
        t.flush().await?;
        return r;
    }
    let model = scaled_model(args, layout.ranks_per_node)?;
    let cm = ClusterModel::from_topology(
        layout,
        &topo,
        measure_copy_speed(),
        "measured at start-up over TCP",
    )?;
    let driver = Driver::new(t.clone(), hier, layout)?;
    let result = drive(args, &driver, &cm, &model).await;
    let stopped = driver.stop().await;
    result.and(stopped)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the tokio runtime", e));
    exit_code(runtime.and_then(|rt| {
        rt.block_on(async {
            if ModelSpec::preset(&args.model).is_none()
                && !std::path::Path::new(&args.model).exists()
            {
                return Err(Error::invalid(
                    "--model",
                    format!(
                        "{:?} is neither a preset ({}) nor a file",
                        args.model,
                        PRESETS.join(", ")
                    ),
                ));
            }
            match args.transport {
                TransportKind::Inproc => run_inproc(&args).await,
                TransportKind::Tcp => run_tcp(&args).await,
            }
        })
    }))
}
