//! hetero-devices: list this machine's devices, measure them and the links
//! between them, and show the domains a hierarchical collective would use.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hetero_backends::{AnyDevice, discover, link_between};
use hetero_core::probe::GemmProbe;
use hetero_core::{DynDevice, LinkProbe, Result, Topology};

/// List every device of every compiled backend with its memory and measured
/// GEMM throughput, the measured link matrix (latency, bandwidth) and the
/// detected domains.
///
/// Measuring takes a few seconds per device and link; progress goes to
/// stderr. The result is a topology that can be saved (--save) and reloaded
/// (--load), so planning tools can use a measured cluster without
/// re-measuring, or a topology written by hand for a cluster you are not on.
#[derive(Debug, Parser)]
#[command(name = "hetero-devices", version)]
struct Args {
    /// Print the topology as JSON on stdout (the format --save writes and --load reads).
    #[arg(long)]
    json: bool,

    /// Save the measured topology to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,

    /// Show a saved topology instead of measuring this machine.
    #[arg(long, value_name = "FILE", conflicts_with = "save")]
    load: Option<PathBuf>,

    /// Split this machine's CPU into N host devices (threads and memory
    /// divided evenly), e.g. to emulate several workers.
    #[arg(long, value_name = "N", default_value_t = 1)]
    host_devices: usize,

    /// Bandwidth ratio that makes a set of devices a domain.
    #[arg(long, value_name = "RATIO", default_value_t = hetero_core::topology::DEFAULT_DOMAIN_RATIO)]
    domain_ratio: f64,

    /// Smaller, faster probes (512x512 GEMM; 64 KiB to 4 MiB transfers).
    #[arg(long)]
    quick: bool,
}

fn main() -> ExitCode {
    hetero_examples::exit_code(run(&Args::parse()))
}

fn run(args: &Args) -> Result<()> {
    let topology = match &args.load {
        Some(path) => Topology::load(path)?,
        None => measure(args)?,
    }
    .with_domain_ratio(args.domain_ratio)?;

    if let Some(path) = &args.save {
        topology.save(path)?;
        eprintln!("saved topology to {}", path.display());
    }
    let mut out = std::io::stdout().lock();
    let text = if args.json {
        topology.to_json()? + "\n"
    } else {
        render(&topology)
    };
    out.write_all(text.as_bytes())
        .map_err(|e| hetero_core::Error::io("writing to stdout", e))
}

fn measure(args: &Args) -> Result<Topology> {
    let (gemm, links) = if args.quick {
        (GemmProbe::quick(), LinkProbe::quick())
    } else {
        (GemmProbe::default(), LinkProbe::default())
    };
    let devices = discover(args.host_devices, &mut |note| eprintln!("{note}"))?;
    for d in &devices {
        if let Some(source) = d.memory_source() {
            eprintln!("{}: memory budget: {source}", d.as_dyn().id());
        }
    }
    eprintln!(
        "measuring {} device(s) and {} link(s)...",
        devices.len(),
        devices.len() * devices.len()
    );
    let dyns: Vec<&dyn DynDevice> = devices.iter().map(AnyDevice::as_dyn).collect();
    let mut progress = |line: &str| eprintln!("  {line}");
    let (topology, _) = hetero_core::probe::measure_topology(
        &dyns,
        Some(&gemm),
        &links,
        |i, j| Ok(Some(link_between(&devices[i], &devices[j]))),
        &mut progress,
    )?;
    Ok(topology)
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn render(t: &Topology) -> String {
    let mut s = String::new();
    s += "DEVICES\n";
    s += &format!(
        "  {:<4} {:<8} {:<15} {:>10} {:>10} {:>10}  {}\n",
        "#", "id", "kind", "memory", "free", "GFLOP/s", "name"
    );
    for (i, d) in t.devices().iter().enumerate() {
        let info = &d.info;
        s += &format!(
            "  {:<4} {:<8} {:<15} {:>10} {:>10} {:>10}  {}\n",
            i,
            info.id.to_string(),
            info.kind.to_string(),
            gib(info.memory_total_bytes),
            info.memory_free_bytes
                .map(gib)
                .unwrap_or_else(|| "?".into()),
            d.gemm_flops_per_s
                .map(|f| format!("{:.1}", f / 1e9))
                .unwrap_or_else(|| "-".into()),
            info.name
        );
    }
    s += "\nLINKS (row -> column: bandwidth GB/s / latency us)\n";
    s += &format!("  {:<8}", "");
    for d in t.devices() {
        s += &format!(" {:>18}", d.info.id.to_string());
    }
    s += "\n";
    for (i, row) in t.links().iter().enumerate() {
        s += &format!("  {:<8}", t.devices()[i].info.id.to_string());
        for link in row {
            let cell = match link {
                Some(l) => format!(
                    "{:.1} / {:.1}",
                    l.bandwidth_bytes_per_s / 1e9,
                    l.latency_s * 1e6
                ),
                None => "-".into(),
            };
            s += &format!(" {cell:>18}");
        }
        s += "\n";
    }
    let domains = t.domains();
    s += &format!(
        "\nDOMAINS (ratio {}x): {}\n",
        t.domain_ratio(),
        if domains.len() > 1 {
            "hierarchical"
        } else {
            "flat (no bandwidth gap large enough)"
        }
    );
    for (k, d) in domains.iter().enumerate() {
        let ids: Vec<String> = d
            .members
            .iter()
            .map(|&i| t.devices()[i].info.id.to_string())
            .collect();
        s += &format!(
            "  domain {k}: [{}], leader {}",
            ids.join(", "),
            t.devices()[d.leader].info.id
        );
        if let (Some(inside), Some(outside)) = (
            d.internal_bandwidth_bytes_per_s,
            d.external_bandwidth_bytes_per_s,
        ) {
            s += &format!(
                ", {:.1} GB/s inside vs {:.1} GB/s out",
                inside / 1e9,
                outside / 1e9
            );
        }
        s += "\n";
    }
    s
}
