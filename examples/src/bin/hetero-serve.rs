//! hetero-serve: decode an LLM batch across mixed devices in lock-step with
//! each allocation policy, and measure tokens/s and per-token latency.

use std::process::ExitCode;

use clap::Parser;
use hetero_core::{DynDevice, Error, Result};
use hetero_examples::{discover, select_devices};
use hetero_scheduler::policy::policy;
use hetero_scheduler::{DeviceProfile, ModelShape, ServeReport, profile_device, serve};
use serde_json::json;

/// Profile each device for a decoder-only model (largest batch that really
/// allocates at the maximum length; fitted step-time curve of the real
/// decode step), split the batch with each policy, then really decode it:
/// every device runs one step per round for its share, and a round lasts
/// as long as the slowest device. Prints per device B*, throughput share
/// and batch, and per policy the measured tokens/s and per-token latency;
/// `--policy all` adds the ratio to uniform (the ablation). Weights are
/// synthetic; the arithmetic is real, in f32.
#[derive(Debug, Parser)]
#[command(name = "hetero-serve", version)]
struct Args {
    /// A device, repeatable: `host:threads=2,memory=2GiB`, `cuda:0`,
    /// `wgpu:1`, `rocm:0`. Default: every device found.
    #[arg(long = "device", value_name = "SPEC")]
    devices: Vec<String>,
    /// Model preset: tiny, opt-125m or bloom-3b.
    #[arg(long, default_value = "tiny")]
    model: String,
    /// Total batch (sequences decoded together).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Prompt tokens per sequence (fed through decode steps).
    #[arg(long, default_value_t = 8)]
    prompt_len: usize,
    /// Tokens to generate per sequence.
    #[arg(long, default_value_t = 16)]
    gen_len: usize,
    /// Policy: uniform, hasc, balanced, or all (the ablation).
    #[arg(long, default_value = "all")]
    policy: String,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    hetero_examples::exit_code(run(&Args::parse()))
}

fn run(args: &Args) -> Result<()> {
    let model = ModelShape::preset(&args.model)?;
    let found = discover(1, &mut |note| eprintln!("{note}"))?;
    let devices = if args.devices.is_empty() {
        found
    } else {
        select_devices(&args.devices, &found)?
    };
    let max_len = args.prompt_len + args.gen_len;
    let mut used = Vec::new();
    let mut profiles: Vec<DeviceProfile> = Vec::new();
    for d in &devices {
        let dev = d.as_dyn();
        eprintln!("profiling {} ({})...", dev.id(), dev.info().name);
        match profile_device(dev, &model, max_len, 1 << 14, &[1, 4, 16]) {
            Ok((p, _, _)) => {
                eprintln!(
                    "  B* = {}, step {:.3} ms + {:.3} ms per sequence",
                    p.max_batch,
                    p.step.fixed_s * 1e3,
                    p.step.per_sequence_s * 1e3
                );
                profiles.push(p);
                used.push(dev);
            }
            Err(e @ (Error::Unsupported { .. } | Error::InvalidInput { .. }))
                if devices.len() > 1 =>
            {
                eprintln!("  skipped: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    if used.is_empty() {
        return Err(Error::invalid("device", "no device can run this model"));
    }
    let names: Vec<&str> = match args.policy.as_str() {
        "all" => vec!["uniform", "hasc", "balanced"],
        one => vec![one],
    };
    let mut runs: Vec<(String, Result<ServeReport>)> = Vec::new();
    let mut predicted: Vec<Option<f64>> = Vec::new();
    for name in names {
        let allocation = policy(name)?.allocate(&profiles, args.batch);
        predicted.push(allocation.as_ref().ok().map(|a| a.throughput()));
        let outcome = allocation.and_then(|a| {
            if let Some(&g) = a.overflows.first() {
                // Running it would only reproduce the out-of-memory error.
                return Err(Error::OutOfMemory {
                    device: profiles[g].device,
                    requested_bytes: model.step_bytes(a.batches[g], max_len),
                    available_bytes: None,
                });
            }
            eprintln!("decoding with {name}: batches {:?}...", a.batches);
            serve(&used, &model, &a.batches, args.prompt_len, args.gen_len)
        });
        runs.push((name.into(), outcome));
    }
    if runs.len() == 1
        && let Some((_, Err(_))) = runs.first()
        && let Some((_, Err(e))) = runs.pop()
    {
        return Err(e);
    }
    if args.json {
        let out = json!({
            "model": model.name,
            "batch": args.batch,
            "prompt_len": args.prompt_len,
            "gen_len": args.gen_len,
            "devices": profiles,
            "runs": runs.iter().map(|(n, r)| match r {
                Ok(rep) => json!({"policy": n, "report": rep}),
                Err(e) => json!({"policy": n, "error": e.to_string()}),
            }).collect::<Vec<_>>(),
        });
        println!("{out:#}");
        return Ok(());
    }
    print_tables(args, &model, &profiles, &used, &runs, &predicted);
    Ok(())
}

fn print_tables(
    args: &Args,
    model: &ModelShape,
    profiles: &[DeviceProfile],
    used: &[&dyn DynDevice],
    runs: &[(String, Result<ServeReport>)],
    predicted: &[Option<f64>],
) {
    let thr: Vec<f64> = profiles
        .iter()
        .map(|p| p.step.throughput(p.max_batch))
        .collect();
    let total: f64 = thr.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    println!(
        "{}: batch {}, prompt {}, generate {} tokens",
        model.name, args.batch, args.prompt_len, args.gen_len
    );
    print!("{:<8} {:>7} {:>8}", "device", "B*", "share");
    for (name, _) in runs {
        print!(" {:>9}", format!("B {name}"));
    }
    println!("  name");
    for (g, p) in profiles.iter().enumerate() {
        print!(
            "{:<8} {:>7} {:>7.1}%",
            p.device.to_string(),
            p.max_batch,
            100.0 * thr[g] / total
        );
        for (_, r) in runs {
            match r {
                Ok(rep) => print!(" {:>9}", rep.batches[g]),
                Err(_) => print!(" {:>9}", "-"),
            }
        }
        println!("  {}", used[g].info().name);
    }
    println!();
    let uniform = runs.iter().find_map(|(n, r)| match r {
        Ok(rep) if n == "uniform" => Some(rep.tokens_per_s),
        _ => None,
    });
    println!(
        "{:<10} {:>12} {:>16} {:>11} {:>18}",
        "policy", "tokens/s", "ms per token", "vs uniform", "predicted tokens/s"
    );
    for ((name, r), pred) in runs.iter().zip(predicted) {
        let pred = pred
            .map(|p| format!("{p:.1}"))
            .unwrap_or_else(|| "-".into());
        match r {
            Ok(rep) => {
                let ratio = uniform
                    .map(|u| format!("{:.2}x", rep.tokens_per_s / u))
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<10} {:>12.1} {:>16.3} {:>11} {:>18}",
                    name,
                    rep.tokens_per_s,
                    rep.per_token_latency_s * 1e3,
                    ratio,
                    pred
                );
            }
            Err(e) => println!("{name:<10} failed: {e}"),
        }
    }
}
