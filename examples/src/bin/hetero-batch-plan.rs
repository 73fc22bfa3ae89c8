//! hetero-batch-plan: profile devices for an LLM and split a batch across
//! them with each allocation policy.

use std::process::ExitCode;

use clap::Parser;
use hetero_backends::{discover, select_devices};
use hetero_core::{Error, Result};
use hetero_scheduler::policy::{AllocationPolicy, Policy};
use hetero_scheduler::real_model::{self, ModelInfo, ModelSource};
use hetero_scheduler::{Allocation, DeviceProfile, StepFit, profile_device};
use serde_json::json;

/// Profile each device for a decoder-only model (the largest batch that
/// really allocates at the maximum length, and a fitted step-time curve),
/// then split a total batch across the devices with the Uniform, HASC and
/// Balanced policies and print the predicted step time and throughput of
/// each, with the ratio to Uniform.
///
/// The step time is that of the decode step's projections (QKV, attention
/// output, MLP, logits) run as real GEMMs on each device; attention over the
/// KV cache, softmax and layer norm are not timed yet.
#[derive(Debug, Parser)]
#[command(name = "hetero-batch-plan", version)]
struct Args {
    /// A device to use, repeatable: `host:threads=2,memory=2GiB` (a host
    /// device with that many threads and that budget; both optional),
    /// `cuda:0`, `wgpu:1`, `wgpu:1,memory=2GiB` (a wgpu adapter with that
    /// budget), `rocm:0`. Default: every device found.
    #[arg(long = "device", value_name = "SPEC")]
    devices: Vec<String>,
    /// Model preset: tiny, opt-125m or bloom-3b (bloom-3b is a shape stand-in:
    /// its sizes, with synthetic weights and no ALiBi, not BLOOM's numerics);
    /// or the path of a real checkpoint (a .gguf file or a Hugging Face
    /// folder, Llama family): its f32 weights are loaded on each device, B*
    /// counts its real KV caches, and the step time is its real forward pass.
    #[arg(long, default_value = "tiny")]
    model: String,
    /// Total batch (sequences decoded together).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Maximum sequence length the KV cache must hold (L_max).
    #[arg(long, default_value_t = 2048)]
    max_len: usize,
    /// Policy: uniform, hasc, balanced, or all (prints the ablation).
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
    let model = match ModelSource::resolve(&args.model)? {
        ModelSource::Preset(shape) => shape,
        ModelSource::Checkpoint(path) => return run_checkpoint(args, &path),
    };
    model.validate()?;
    // Before any device is profiled: a bad name costs no profiling time.
    let policies = Policy::select(&args.policy)?;
    let found = discover(1, &mut |note| eprintln!("{note}"))?;
    let devices = if args.devices.is_empty() {
        found
    } else {
        select_devices(&args.devices, &found)?
    };
    let mut profiles: Vec<DeviceProfile> = Vec::new();
    let mut fits = Vec::new();
    for d in &devices {
        let dev = d.as_dyn();
        eprintln!(
            "profiling {} ({}) for {}...",
            dev.id(),
            dev.info().name,
            model.name
        );
        let (profile, _, fit) =
            match profile_device(dev, &model, args.max_len, 1 << 16, &[1, 4, 16, 32]) {
                Ok(p) => p,
                // A device that cannot run this model is left out, not fatal.
                Err(e @ (Error::Unsupported { .. } | Error::InvalidInput { .. }))
                    if devices.len() > 1 =>
                {
                    eprintln!("  skipped: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
        eprintln!(
            "  B* = {} at length {}; step {:.3} ms + {:.3} ms per sequence (fit error <= {:.1}%)",
            profile.max_batch,
            args.max_len,
            profile.step.fixed_s * 1e3,
            profile.step.per_sequence_s * 1e3,
            fit.max_relative_error * 100.0
        );
        profiles.push(profile);
        fits.push(fit);
    }
    if profiles.is_empty() {
        return Err(Error::invalid("device", "no device can run this model"));
    }
    plan(args, &model.name, json!(model), &profiles, &fits, policies)
}

/// Split the batch with each policy and print the plans.
fn plan(
    args: &Args,
    model_name: &str,
    model_json: serde_json::Value,
    profiles: &[DeviceProfile],
    fits: &[StepFit],
    policies: Vec<Policy>,
) -> Result<()> {
    let mut plans: Vec<(String, Result<Allocation>)> = Vec::new();
    for p in policies {
        plans.push((p.name().into(), p.allocate(profiles, args.batch)));
    }
    // A single requested policy that cannot place the batch is a failure.
    hetero_examples::sole_failure(&mut plans)?;
    if args.json {
        let out = json!({
            "model": model_json,
            "batch": args.batch,
            "max_len": args.max_len,
            "devices": profiles,
            "fits": fits,
            "plans": plans.iter().map(|(n, r)| match r {
                Ok(a) => json!({"policy": n, "allocation": a, "throughput": a.throughput()}),
                Err(e) => json!({"policy": n, "error": e.to_string()}),
            }).collect::<Vec<_>>(),
        });
        println!("{out:#}");
        return Ok(());
    }
    let thr_total: f64 = profiles
        .iter()
        .map(|p| p.step.throughput(p.max_batch))
        .sum();
    println!(
        "{} x {} sequences, L_max {}",
        model_name, args.batch, args.max_len
    );
    println!("{:<8} {:>8} {:>10}  name", "device", "B*", "thr share");
    for p in profiles {
        println!(
            "{:<8} {:>8} {:>9.1}%  {}",
            p.device.to_string(),
            p.max_batch,
            100.0 * p.step.throughput(p.max_batch) / thr_total.max(f64::MIN_POSITIVE),
            p.name
        );
    }
    println!();
    let uniform_thr = plans.iter().find_map(|(n, r)| match r {
        Ok(a) if n == "uniform" && a.overflows.is_empty() => Some(a.throughput()),
        _ => None,
    });
    println!(
        "{:<10} {:>24} {:>12} {:>12} {:>10}",
        "policy", "batches", "step ms", "seq/s", "vs uniform"
    );
    for (name, result) in &plans {
        match result {
            Ok(a) => {
                let batches: Vec<String> = a.batches.iter().map(|b| b.to_string()).collect();
                let note = if a.overflows.is_empty() {
                    String::new()
                } else {
                    let over: Vec<String> = a
                        .overflows
                        .iter()
                        .map(|&g| profiles[g].device.to_string())
                        .collect();
                    format!("  (out of memory on {})", over.join(", "))
                };
                let ratio = match uniform_thr {
                    Some(u) if u > 0.0 && a.overflows.is_empty() => {
                        format!("{:.2}x", a.throughput() / u)
                    }
                    _ => "-".into(),
                };
                println!(
                    "{:<10} {:>24} {:>12.3} {:>12.1} {:>10}{note}",
                    name,
                    batches.join(" / "),
                    a.step_time_s * 1e3,
                    a.throughput(),
                    ratio
                );
            }
            Err(e) => println!("{name:<10} rejected: {e}"),
        }
    }
    Ok(())
}

/// `--model PATH`: a real checkpoint, loaded once per device; B* counts
/// decode steps (KV caches of `--max-len` and a step of B rows), the step
/// time is its forward pass at a context of [`CONTEXT`] tokens.
fn run_checkpoint(args: &Args, path: &std::path::Path) -> Result<()> {
    let policies = Policy::select(&args.policy)?;
    let checkpoint = real_model::open(path)?;
    let info = ModelInfo::of(&checkpoint);
    eprintln!(
        "loaded {} ({}, {}): {:.1} M parameters, {:.1} MiB as f32, {} KiB of KV cache per position",
        info.path,
        info.architecture,
        info.format,
        info.parameters as f64 / 1e6,
        info.resident_bytes as f64 / (1u64 << 20) as f64,
        info.kv_bytes_per_position as f64 / 1024.0
    );
    let found = discover(1, &mut |note| eprintln!("{note}"))?;
    let devices = if args.devices.is_empty() {
        found
    } else {
        select_devices(&args.devices, &found)?
    };
    let shared: Vec<_> = devices.iter().map(|d| d.shared()).collect();
    let loaded = real_model::load_all(&checkpoint, &shared, &mut |g, e| {
        eprintln!("  {} skipped: {e}", shared[g].id());
    })?;
    let mut profiles = Vec::new();
    let mut fits = Vec::new();
    for (g, model) in &loaded {
        let dev = shared[*g].as_ref();
        eprintln!(
            "profiling {} ({}) for {}...",
            dev.id(),
            dev.info().name,
            info.name
        );
        let (profile, _, fit) = match real_model::profile_device(
            model,
            &info.name,
            args.max_len,
            0,
            1 << 16,
            &[1, 4, 16, 32],
            CONTEXT,
            None,
        ) {
            Ok(p) => p,
            Err(e @ Error::InvalidInput { .. }) if loaded.len() > 1 => {
                eprintln!("  skipped: {e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        eprintln!(
            "  B* = {} at length {}; step {:.3} ms + {:.3} ms per sequence (fit error <= {:.1}%)",
            profile.max_batch,
            args.max_len,
            profile.step.fixed_s * 1e3,
            profile.step.per_sequence_s * 1e3,
            fit.max_relative_error * 100.0
        );
        profiles.push(profile);
        fits.push(fit);
    }
    if profiles.is_empty() {
        return Err(Error::invalid(
            "device",
            format!(
                "no device can hold one sequence of {} positions of {} next to its weights",
                args.max_len, info.name
            ),
        ));
    }
    plan(args, &info.name, json!(info), &profiles, &fits, policies)
}

/// Context of the timed decode steps of a checkpoint.
const CONTEXT: usize = 32;
