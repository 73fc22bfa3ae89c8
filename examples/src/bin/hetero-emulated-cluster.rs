//! hetero-emulated-cluster: run a program as the ranks of an emulated
//! multi-node cluster on this machine (network namespaces, shaped links).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hetero_collectives::netns::{ClusterShape, EmulatedCluster};
use hetero_core::{Error, Result};

/// Create one network namespace per node (addresses 198.18.0.k, joined by
/// a bridge), shape every node's link with tc (netem rate and delay, or
/// tbf rate only where the kernel lacks sch_netem), leave links inside a
/// node unshaped, and run PROGRAM as `ranks-per-node` processes per node
/// with torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
/// LOCAL_WORLD_SIZE, MASTER_ADDR = node 0, MASTER_PORT). Prints rank 0's
/// output; the failing ranks' errors when some fail. Every namespace is
/// deleted afterwards (and namespaces left by a killed run are deleted by
/// the next). Needs root.
///
/// Example: hetero-emulated-cluster -- target/release/hetero-collective-bench --transport tcp
#[derive(Debug, Parser)]
#[command(name = "hetero-emulated-cluster", version)]
struct Args {
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    #[arg(long, default_value_t = 4)]
    ranks_per_node: usize,
    /// Bandwidth of each node's link (tc syntax: 1gbit, 100mbit).
    #[arg(long, default_value = "1gbit")]
    rate: String,
    /// One-way delay between two nodes, milliseconds.
    #[arg(long, default_value_t = 0.5)]
    delay_ms: f64,
    /// Rendezvous port on rank 0.
    #[arg(long, default_value_t = 29500)]
    port: u16,
    /// Kill every rank after this many seconds.
    #[arg(long, default_value_t = 1800.0)]
    timeout_s: f64,
    /// The program each rank runs, and its arguments.
    #[arg(required = true, last = true, value_name = "PROGRAM [ARGS]")]
    command: Vec<String>,
}

fn run(args: Args) -> Result<()> {
    let Some((program, rest)) = args.command.split_first() else {
        return Err(Error::invalid(
            "PROGRAM",
            "give the program to run after --",
        ));
    };
    let program = PathBuf::from(program);
    if !program.is_file() {
        return Err(Error::invalid(
            "PROGRAM",
            format!("{} is not a file (give its path)", program.display()),
        ));
    }
    if !(args.timeout_s > 0.0 && args.timeout_s.is_finite()) {
        return Err(Error::invalid("--timeout-s", "must be a positive number"));
    }
    let cluster = EmulatedCluster::create(ClusterShape {
        nodes: args.nodes,
        ranks_per_node: args.ranks_per_node,
        rate: args.rate,
        delay_ms: args.delay_ms,
    })?;
    eprintln!(
        "# emulated cluster: {} nodes x {} ranks, node links: {}",
        args.nodes,
        args.ranks_per_node,
        cluster.shaping()
    );
    let outputs = cluster.launch(
        &program,
        rest,
        args.port,
        Duration::from_secs_f64(args.timeout_s),
    )?;
    if let Some(r0) = outputs.first() {
        print!("{}", r0.stdout);
        eprint!("{}", r0.stderr);
    }
    let failed: Vec<_> = outputs.iter().filter(|o| !o.success).collect();
    for o in &failed {
        if o.rank != 0 {
            let tail: Vec<&str> = o.stderr.lines().rev().take(5).collect();
            eprintln!(
                "--- rank {}{}",
                o.rank,
                if o.timed_out {
                    " (killed at the deadline)"
                } else {
                    ""
                }
            );
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(
            "ranks",
            format!(
                "{} of {} ranks failed: {:?}",
                failed.len(),
                outputs.len(),
                failed.iter().map(|o| o.rank).collect::<Vec<_>>()
            ),
        ))
    }
}

fn main() -> ExitCode {
    hetero_examples::exit_code(run(Args::parse()))
}
