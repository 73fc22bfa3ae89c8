//! hetero-generate: generate text with a real model on one device, or
//! split by layers over several (`--split`).

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use clap::Parser;
use hetero_backends::{discover, select_devices};
use hetero_collectives::transport::TransportKind;
use hetero_core::{DType, DeviceInfo, DynDevice, Error, Result, SharedDevice};
use hetero_models::llama::KvCacheDtype;
use hetero_models::{
    BenchOptions, Checkpoint, GenerateOptions, LlamaModel, SamplingParams, WeightFormat, bench,
    bytes_needed, choose_device, generate, prompt_ids,
};
use hetero_scheduler::pipeline::{
    PlanOptions, ProfileOptions, RankRole, SplitSpec, StageRank, choose_stages,
};
use hetero_scheduler::real_model::activation_bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

/// Generate text with a Llama-family model (Llama 2/3, TinyLlama,
/// SmolLM/SmolLM2, Qwen2) from a GGUF file (F32, F16, BF16, Q8_0, Q4_0,
/// Q4_1, Q4_K, Q5_K, Q6_K tensors) or a Hugging Face folder (config.json,
/// safetensors, tokenizer.json). Quantized weights stay in their blocks on
/// a device with kernels for them (--weights f32 widens everything).
/// The text streams to stdout as it is generated; what loads and the
/// speeds go to stderr (or, with --json, one object to stdout at the end).
#[derive(Debug, Parser)]
#[command(name = "hetero-generate", version)]
struct Args {
    /// The model: a .gguf file or a Hugging Face folder.
    #[arg(long, value_name = "PATH")]
    model: std::path::PathBuf,
    /// The prompt; read from stdin when absent.
    #[arg(long)]
    prompt: Option<String>,
    /// Treat the prompt as a user message and apply the model's chat template.
    #[arg(long)]
    chat: bool,
    /// A system message before the prompt (with --chat).
    #[arg(long)]
    system: Option<String>,
    /// New tokens at most.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 chooses the most likely token (greedy); higher values sample.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample only among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample only among the most likely tokens holding this much probability.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the sampler: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop before this text, repeatable.
    #[arg(long = "stop", value_name = "TEXT")]
    stop: Vec<String>,
    /// The device: `host`, `host:threads=4,memory=2GiB`,
    /// `host:batch_invariant` (each sequence's logits independent of its
    /// batch, slower), `host:no_amx` (Intel AMX's tile unit left unused,
    /// f32 precision kept for 16+ rows), `cuda:0`, `wgpu:1`, `wgpu:1,memory=2GiB` (a wgpu
    /// adapter with that budget), ...
    /// Default: the fastest kind of device that can hold the model (a GPU,
    /// then the CPU, then software adapters). Repeat it to split the
    /// model's layers over several devices (see --split); a `host` without
    /// `threads=` then leaves one core to each other device in the list
    /// (the thread that drives it).
    #[arg(long = "device", value_name = "SPEC")]
    devices: Vec<String>,
    /// How the model spreads over the --device list: `auto` (the default
    /// with two or more devices) profiles each device and places the
    /// layers by the exact chain DP; `layers:N1,N2,...` puts N1 layers on
    /// the first device, N2 on the next...; `replicate` keeps the whole
    /// model on the first device. With --rank-from-env one count per rank,
    /// and `auto` (the default there) profiles every rank's device and
    /// places consecutive layers on every rank in rank order.
    #[arg(long, value_name = "auto|replicate|layers:N1,N2,...")]
    split: Option<String>,
    /// Per-device profiles of --split auto cached in this JSON file.
    #[arg(long, value_name = "FILE")]
    profile_cache: Option<std::path::PathBuf>,
    /// How the weights are held: `native` keeps quantized tensors in their
    /// blocks where the device has kernels for them, `f32` widens all.
    #[arg(long, default_value = "native", value_parser = ["native", "f32"])]
    weights: String,
    /// The KV cache's dtype: `f16` halves its bytes per position (keys
    /// and values rounded to 11 significant bits; the attention still
    /// sums in f32), `f32` keeps them exact, `auto` is f16 where every
    /// device reads f16 caches (the host) and f32 elsewhere.
    #[arg(long, default_value = "auto", value_name = "auto|f32|f16")]
    kv_dtype: KvCacheDtype,
    /// Measure instead of generating: prefill tokens/s of a 128-token
    /// prompt, decode tokens/s (total) of 1, 8 and 32 sequences after a
    /// 32-token prompt over 64 tokens, and the resident weight bytes.
    /// No prompt is read.
    #[arg(long)]
    bench: bool,
    /// Measured runs per benchmark figure (the median is reported).
    #[arg(long, default_value_t = 3, requires = "bench")]
    bench_repeats: usize,
    /// Sequence counts of the decode measurements (the table is
    /// 1,8,32; fewer or smaller ones make a slow device's run short).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,8,32",
        requires = "bench"
    )]
    bench_batches: Vec<usize>,
    /// Tokens generated per sequence in the decode measurements.
    #[arg(long, default_value_t = 64, requires = "bench")]
    bench_decode_tokens: usize,
    /// Print one JSON object (ids, text, speeds, device) instead of streaming.
    #[arg(long)]
    json: bool,
    /// Run as one stage of the model split over processes, in a job
    /// started like torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)
    /// or by mpirun / mpiexec (Open MPI's or MPICH's rank variables, with
    /// MASTER_ADDR and MASTER_PORT passed: `mpirun -x MASTER_ADDR=HOST -x
    /// MASTER_PORT=PORT`; the messages go over TCP, not MPI):
    /// rank i holds the i-th count of `--split layers:N0,N1,...` on its one
    /// --device (default: the host), or with `--split auto` (the default)
    /// what rank 0 placed on each of its --device (several allowed), every
    /// device of every rank holding consecutive layers in rank order. Rank 0 holds the embedding, reads the
    /// prompt, samples and prints; the hidden states go from rank to rank
    /// and the last rank (which holds the head) sends the logits back. The
    /// other ranks serve until rank 0 is done (or gone).
    #[arg(long)]
    rank_from_env: bool,
    /// With --rank-from-env: ranks on the same host exchange through
    /// shared memory (/dev/shm, or HETERO_SHM_DIR; Linux) instead of
    /// loopback TCP.
    #[arg(long, requires = "rank_from_env")]
    shared_memory: bool,
    /// With --rank-from-env: seconds a rank waits for a message (rank 0
    /// for an answer from the line, the others at start-up) before it
    /// gives up with an error; the rendezvous and the other ranks'
    /// loading get the same limit.
    #[arg(long, default_value_t = 60.0, requires = "rank_from_env")]
    stage_timeout: f64,
}

/// `--rank-from-env`: join the job, with `--stage-timeout` as the
/// transport's limit.
fn join_ranks(args: &Args) -> Result<StageRank> {
    if !(args.stage_timeout.is_finite() && args.stage_timeout > 0.0) {
        return Err(Error::invalid(
            "--stage-timeout",
            "must be a positive number of seconds",
        ));
    }
    let kind = if args.shared_memory {
        TransportKind::SharedMemory
    } else {
        TransportKind::Tcp
    };
    StageRank::join(
        kind,
        Some(std::time::Duration::from_secs_f64(args.stage_timeout)),
    )
}

fn main() -> ExitCode {
    hetero_examples::exit_code(run(&Args::parse()))
}

/// One JSON object on stdout (`--json`).
fn print_json(value: &serde_json::Value) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| Error::invalid("json", e.to_string()))?;
    println!("{text}");
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// `--bench`: measure and print a table (or the JSON object).
/// The model's stages for `--json`: device, first and last layer, bytes.
fn stage_json(model: &LlamaModel) -> serde_json::Value {
    serde_json::Value::Array(
        model
            .stages()
            .iter()
            .map(|s| {
                json!({
                    "device": s.device_id,
                    "device_name": s.device_name,
                    "rank": s.rank,
                    "layers": [s.layers.start, s.layers.end - 1],
                    "resident_bytes": s.weight_bytes,
                })
            })
            .collect(),
    )
}

fn run_bench(
    args: &Args,
    model: &LlamaModel,
    info: &DeviceInfo,
    stages: serde_json::Value,
) -> Result<()> {
    let options = BenchOptions {
        repeats: args.bench_repeats,
        decode_batches: args.bench_batches.clone(),
        decode_tokens: args.bench_decode_tokens,
        ..BenchOptions::default()
    };
    let report = bench(model, &options, &mut |phase| {
        eprintln!("measuring {phase}...")
    })?;
    if args.json {
        let out = json!({
            "model": args.model.display().to_string(),
            "device": info.id.to_string(),
            "device_name": info.name,
            "weights": args.weights,
            "prefill_tokens_per_s": report.prefill_tokens_per_s,
            "decode_tokens_per_s": report.decode_tokens_per_s,
            "resident_weight_bytes": report.resident_weight_bytes,
            "kv_bytes_per_position": report.kv_bytes_per_position,
            "kv_cache_dtype": model.kv_cache_dtype().to_string(),
            "devices": stages,
        });
        print_json(&out)?;
        return Ok(());
    }
    println!(
        "{} on {} ({}), weights {}",
        args.model.display(),
        info.id,
        info.name,
        args.weights
    );
    println!("| measure | tokens/s |");
    println!("|---|---|");
    println!(
        "| prefill, {} tokens | {:.1} |",
        options.prefill_tokens, report.prefill_tokens_per_s
    );
    for (batch, rate) in &report.decode_tokens_per_s {
        println!("| decode, {batch} sequence(s), total | {rate:.1} |");
    }
    println!(
        "resident weights: {} bytes ({:.1} MiB)",
        report.resident_weight_bytes,
        mib(report.resident_weight_bytes)
    );
    Ok(())
}

fn run(args: &Args) -> Result<()> {
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    sampling.validate()?;
    let split = match &args.split {
        Some(s) => Some(s.parse::<SplitSpec>()?),
        None if args.devices.len() > 1 => Some(SplitSpec::Auto),
        None => None,
    };
    if args.max_tokens == 0 {
        return Err(Error::invalid("--max-tokens", "must be at least 1"));
    }
    let link = if args.rank_from_env {
        Some(join_ranks(args)?)
    } else {
        None
    };
    let text = match &args.prompt {
        Some(p) => p.clone(),
        // Only rank 0 reads a prompt.
        None if args.bench || link.as_ref().is_some_and(|l| l.rank() > 0) => String::new(),
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("reading the prompt from stdin (end with Ctrl-D)...");
            }
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| Error::io("stdin", e))?;
            s
        }
    };
    let checkpoint = Checkpoint::open(&args.model)?;
    let config = checkpoint.config();
    eprintln!(
        "model: {} ({}, {}), {} layers, hidden {}, {} heads / {} kv heads, vocabulary {}, {:.1} M parameters",
        args.model.display(),
        checkpoint.format_name(),
        config.architecture.name(),
        config.layers,
        config.hidden,
        config.heads,
        config.kv_heads,
        config.vocab,
        config.parameters() as f64 / 1e6
    );
    let tokenizer = checkpoint.tokenizer()?;
    let (prompt_text, ids) = prompt_ids(
        &checkpoint,
        &tokenizer,
        &text,
        args.chat,
        args.system.as_deref(),
    )?;
    let stop_ids = checkpoint.stop_ids(&tokenizer)?;

    let found = discover(1, &mut |_| {})?;
    let devices = if args.devices.is_empty() {
        found
    } else {
        select_devices(&args.devices, &found)?
    };
    let max_len = if args.bench {
        // The benchmark's largest cache set: 32 sequences of 96 positions.
        32 * 96
    } else {
        (ids.len() + args.max_tokens).min(config.max_positions)
    };
    let format = match args.weights.as_str() {
        "f32" => WeightFormat::F32,
        _ => WeightFormat::Native,
    };
    let bar = ProgressBar::hidden();
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
    }
    bar.set_style(
        ProgressStyle::with_template("loading {bar:40} {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut model = match (&split, &link) {
        (_, Some(link)) => {
            let mine: Vec<SharedDevice> = if args.devices.is_empty() {
                vec![
                    select_devices(&["host".to_string()], &devices)?
                        .remove(0)
                        .shared(),
                ]
            } else {
                devices.iter().map(|d| d.shared()).collect()
            };
            let counts = match &split {
                Some(SplitSpec::Layers(counts)) => Some(counts.as_slice()),
                // Every rank profiles its own devices; rank 0 places the
                // layers in rank order and tells the others.
                Some(SplitSpec::Auto) | None => None,
                Some(SplitSpec::Replicate) => {
                    return Err(Error::invalid(
                        "--split",
                        "replicate runs a whole model per process; with --rank-from-env give \
                         auto or layers:N0,N1,... (one count per rank)",
                    ));
                }
            };
            let profile = ProfileOptions {
                batch: 1,
                kv_dtype: args.kv_dtype,
                ..ProfileOptions::default()
            };
            let plan = PlanOptions {
                batch: 1,
                max_len,
                activation_bytes: activation_bytes(config, ids.len().max(1), 1),
            };
            let stages = link.plan_stages(
                &checkpoint,
                &mine,
                counts,
                profile,
                plan,
                args.profile_cache.as_deref(),
                &mut |m| eprintln!("{m}"),
            )?;
            let mut part = LlamaModel::load_split(&checkpoint, &stages, format, &mut |p| {
                bar.set_length(p.total_bytes);
                bar.set_position(p.done_bytes);
            })?;
            bar.finish_and_clear();
            part.set_kv_cache_dtype(args.kv_dtype)?;
            match link.run(part)? {
                RankRole::Head(model) => *model,
                RankRole::Served(stats) => {
                    if args.json {
                        print_json(&json!({"rank": link.rank(), "stage": stats}))?;
                    } else {
                        eprintln!(
                            "rank {}: stopped after {} steps ({} rows, {} failed)",
                            link.rank(),
                            stats.steps,
                            stats.rows,
                            stats.failed_steps
                        );
                    }
                    return Ok(());
                }
            }
        }
        (Some(spec), None) => {
            let shared: Vec<_> = devices.iter().map(|d| d.shared()).collect();
            let plan = PlanOptions {
                batch: 1,
                max_len,
                activation_bytes: activation_bytes(config, ids.len().max(1), 1),
            };
            let profile = ProfileOptions {
                batch: 1,
                kv_dtype: args.kv_dtype,
                ..ProfileOptions::default()
            };
            let (stages, report) = choose_stages(
                &checkpoint,
                &shared,
                spec,
                plan,
                profile,
                args.profile_cache.as_deref(),
                &mut |m| eprintln!("{m}"),
            )?;
            if let Some(report) = report {
                eprint!("{}", report.explain());
            }
            LlamaModel::load_split(&checkpoint, &stages, format, &mut |p| {
                bar.set_length(p.total_bytes);
                bar.set_position(p.done_bytes);
            })?
        }
        (None, None) => {
            // The least any device will hold (f32 where it lacks block kernels).
            let dyns: Vec<&dyn DynDevice> = devices.iter().map(|d| d.as_dyn()).collect();
            let need = |d: &dyn DynDevice| {
                bytes_needed(
                    checkpoint.resident_weight_bytes(&format.kept_formats(d)),
                    // A device without f16 caches that is asked for them
                    // fails when the model is loaded, with the reason.
                    config
                        .kv_bytes_per_position_as(args.kv_dtype.resolve([d]).unwrap_or(DType::F32))
                        * max_len as u64,
                )
            };
            let device = &devices[choose_device(&dyns, &need)?];
            let info = device.as_dyn().info();
            let weight_bytes =
                checkpoint.resident_weight_bytes(&format.kept_formats(device.as_dyn()));
            eprintln!(
                "device: {} ({}), loading {:.1} MiB of weights ({})",
                info.id,
                info.name,
                mib(weight_bytes),
                if weight_bytes < checkpoint.f32_weight_bytes() {
                    "quantized blocks as stored, f32 for the rest"
                } else {
                    "f32"
                }
            );
            LlamaModel::load_as(&checkpoint, device.shared(), format, &mut |p| {
                bar.set_length(p.total_bytes);
                bar.set_position(p.done_bytes);
            })?
        }
    };
    bar.finish_and_clear();
    model.set_kv_cache_dtype(args.kv_dtype)?;
    eprintln!(
        "kv cache: {} ({:.1} KiB per position)",
        model.kv_cache_dtype(),
        model.kv_bytes_per_position() as f64 / 1024.0
    );
    let stages = stage_json(&model);
    for s in model.stages() {
        eprintln!(
            "stage: {} ({}) holds layers {}-{}, {:.1} MiB of weights",
            s.device_id,
            s.device_name,
            s.layers.start,
            s.layers.end - 1,
            mib(s.weight_bytes)
        );
    }
    let info = model.device().info();
    let result = generate_and_print(
        args,
        &model,
        &info,
        stages,
        &tokenizer,
        &prompt_text,
        &ids,
        stop_ids,
        sampling,
    );
    // Rank 0 stops the other ranks (also after a failure) and hands its
    // last messages to the network.
    if let Some(link) = &link {
        let stopped = model.stop_remote().and_then(|()| link.flush());
        result?;
        stopped?;
        return Ok(());
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn generate_and_print(
    args: &Args,
    model: &LlamaModel,
    info: &DeviceInfo,
    stages: serde_json::Value,
    tokenizer: &hetero_models::Tokenizer,
    prompt_text: &str,
    ids: &[u32],
    stop_ids: Vec<u32>,
    sampling: SamplingParams,
) -> Result<()> {
    if args.bench {
        return run_bench(args, model, info, stages);
    }

    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling,
        stop: args.stop.clone(),
        stop_ids,
    };
    let mut stdout = std::io::stdout();
    let g = generate(model, tokenizer, ids, &options, &mut |piece| {
        if !args.json {
            // A closed pipe ends the stream; the summary still goes to stderr.
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
    })?;
    if args.json {
        let out = json!({
            "model": args.model.display().to_string(),
            "device": info.id.to_string(),
            "device_name": info.name,
            "prompt": prompt_text,
            "prompt_ids": g.prompt_ids,
            "ids": g.ids,
            "text": g.text,
            "finish_reason": g.finish_reason,
            "prefill_seconds": g.prefill_seconds,
            "decode_seconds": g.decode_seconds,
            "decode_steps": g.decode_steps,
            "prefill_tokens_per_s": g.prefill_tokens_per_s,
            "decode_tokens_per_s": g.decode_tokens_per_s,
            "devices": stages,
        });
        print_json(&out)?;
    } else {
        println!();
        eprintln!(
            "{} prompt tokens in {:.3} s ({:.1} tokens/s prefill), {} tokens, {:.1} tokens/s decode, finished: {:?}",
            g.prompt_ids.len(),
            g.prefill_seconds,
            g.prefill_tokens_per_s,
            g.ids.len(),
            g.decode_tokens_per_s,
            g.finish_reason
        );
    }
    Ok(())
}
