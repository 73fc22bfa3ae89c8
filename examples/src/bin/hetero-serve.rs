//! hetero-serve: decode an LLM batch across mixed devices in lock-step with
//! each allocation policy, and measure tokens/s and per-token latency.

use std::process::ExitCode;

use clap::Parser;
use hetero_scheduler::pipeline::{
    PlanOptions, ProfileOptions, RankRole, SplitSpec, StageRank, choose_pipelines,
};
use std::sync::Arc;

use hetero_backends::{discover, select_devices};
use hetero_collectives::transport::{Ranks, TransportKind, connect};
use hetero_collectives::{Algorithm, FlatCollective, TcpConfig, all_gather_bytes};
use hetero_core::{Collective, DynDevice, Error, Result};
use hetero_scheduler::continuous::{ContinuousReport, serve_continuous, serve_continuous_rank};
use hetero_scheduler::live;
use hetero_scheduler::real_model::{self, ModelInfo, ModelSource, RealServeReport};
use hetero_scheduler::{
    AllocationPolicy, DeviceProfile, MemoryProfile, ModelShape, Policy, ProfileCache, ServeReport,
    exchange_profiles, profile_buckets_cached, profile_device_cached, serve, synthetic_requests,
};
use serde_json::json;

/// Profile each device for a decoder-only model (largest batch that really
/// allocates at the maximum length; fitted step-time curve of the real
/// decode step), split the batch with each policy, then really decode it:
/// every device runs one step per round for its share, and a round lasts
/// as long as the slowest device. Prints per device B*, throughput share
/// and batch, and per policy the measured tokens/s and per-token latency;
/// `--policy all` adds the ratio to uniform (the ablation). Weights are
/// synthetic; the arithmetic is real, in f32.
///
/// With `--requests N`, each policy's batches become KV-cache slots and N
/// requests of varied lengths (prompt 1..=prompt-len, generation
/// 1..=gen-len) are served with continuous batching: a finished request's
/// slot takes the next queued one; the next tokens of all devices are
/// gathered every round by an all-gather (hetero-collectives).
///
/// With `--http ADDR` and a checkpoint (`--model PATH`) it is a server
/// instead: OpenAI-compatible routes (chat and text completions, streamed
/// or whole, /v1/models, /health, /metrics), requests joining the devices'
/// running batches as they arrive. See the `--http` flags below.
#[derive(Debug, Parser)]
#[command(name = "hetero-serve", version)]
struct Args {
    /// A device, repeatable: `host:threads=2,memory=2GiB`, `cuda:0`,
    /// `wgpu:1`, `wgpu:1,memory=2GiB` (a wgpu adapter with that budget),
    /// `rocm:0`; `host:batch_invariant` makes a request's sampled text with
    /// a seed independent of the other requests and of the prefix cache
    /// (slower); `host:no_amx` leaves Intel AMX's tile unit unused. A
    /// `host` without `threads=` leaves one core to each other device in
    /// the list (the thread that drives it). Default: every device found.
    #[arg(long = "device", value_name = "SPEC")]
    devices: Vec<String>,
    /// With --http: how the model spreads over the devices. `replicate`
    /// (the default) loads a copy on each and the policy splits the
    /// requests; `auto` profiles every device and runs what is predicted
    /// fastest: one copy's layers over all of them as a pipeline (placed by
    /// the exact chain DP; for a model too large for any one device), a
    /// copy per device, or several pipelines side by side (the report on
    /// stderr says which and why); `layers:N1,N2,...` gives N1
    /// layers to the first device, N2 to the next... With --rank-from-env
    /// `auto` and `layers:` give every rank one stage (one count per rank;
    /// `auto` profiles each rank's device and places the layers in rank
    /// order), `replicate` a whole copy per rank.
    #[arg(long, value_name = "replicate|auto|layers:N1,N2,...")]
    split: Option<String>,
    /// Model preset: tiny, opt-125m or bloom-3b (bloom-3b is a shape stand-in:
    /// its sizes, with synthetic weights and no ALiBi, not BLOOM's numerics);
    /// or the path of a real checkpoint (a .gguf file or a Hugging Face
    /// folder, Llama family): its weights are loaded on each device, B* is
    /// found with its real KV cache, and real prompts are decoded greedily.
    #[arg(long, default_value = "tiny")]
    model: String,
    /// With a checkpoint: prompts, one per line, tokenized with its
    /// tokenizer (a checkpoint without one takes lines of token ids) and
    /// cycled to fill the batch. Default: a built-in list of English prompts.
    #[arg(long, value_name = "FILE")]
    prompts: Option<std::path::PathBuf>,
    /// Total batch (sequences decoded together).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Prompt tokens per sequence (fed through decode steps). With a
    /// checkpoint the prompts' own lengths are used instead.
    #[arg(long, default_value_t = 8)]
    prompt_len: usize,
    /// Tokens to generate per sequence.
    #[arg(long, default_value_t = 16)]
    gen_len: usize,
    /// Policy: uniform, hasc, balanced, or all (the ablation).
    #[arg(long, default_value = "all")]
    policy: String,
    /// Serve this many requests with continuous batching (0: decode one
    /// fixed batch per policy).
    #[arg(long, default_value_t = 0)]
    requests: usize,
    /// Reuse memory profiles (B*) from this JSON file when it holds one for
    /// the same device (id, name, memory), model and length; new profiles
    /// are added and the file rewritten atomically. Created if missing.
    #[arg(long, value_name = "FILE")]
    profile_cache: Option<std::path::PathBuf>,
    /// Also find each device's B* at these maximum lengths (length buckets,
    /// e.g. `512,1024,2048`), reported next to the profiles.
    #[arg(long, value_name = "LENS", value_delimiter = ',')]
    buckets: Vec<usize>,
    /// Run as one rank of a multi-process job started like torchrun (RANK,
    /// WORLD_SIZE, MASTER_ADDR, MASTER_PORT) or by mpirun / mpiexec (their
    /// rank variables, with MASTER_ADDR and MASTER_PORT passed, e.g.
    /// `mpirun -x MASTER_ADDR=HOST -x MASTER_PORT=PORT`; messages over
    /// TCP): this process serves its one
    /// `--device`, the ranks exchange their profiles so every rank computes
    /// the same allocation, and each round's barrier is an all-gather over
    /// TCP. Rank 0 prints the report. Needs `--requests` (continuous
    /// batching). With `--http`: every rank loads the model on its one
    /// `--device`; rank 0 serves HTTP and runs requests on the other
    /// ranks' devices too (they connect to MASTER_ADDR:MASTER_PORT).
    #[arg(long)]
    rank_from_env: bool,
    /// With --rank-from-env: ranks on the same host exchange through
    /// shared memory (/dev/shm, or HETERO_SHM_DIR; Linux) instead of
    /// loopback TCP; ranks on other hosts stay on TCP.
    #[arg(long, requires = "rank_from_env")]
    shared_memory: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Serve the checkpoint (`--model PATH`) over HTTP at this address
    /// (e.g. `127.0.0.1:8080`; port 0 picks a free one) with
    /// OpenAI-compatible routes: POST /v1/chat/completions and
    /// /v1/completions (streaming with "stream": true), GET /v1/models,
    /// /health and /metrics (Prometheus). Requests join the running batch
    /// of a device as they arrive (live continuous batching). Prints
    /// `listening on http://ADDR` on stderr once ready; SIGINT or SIGTERM
    /// stops it after the running requests finish.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// With --http: sequences running at once over all devices, split
    /// among them by --policy (with `all`: balanced).
    #[arg(long, default_value_t = 32)]
    slots: usize,
    /// With --http: the longest request served (prompt + max_tokens), in
    /// positions. Each device's KV memory is measured at this length and
    /// counted per token. Default: the model's context, at most 2048.
    #[arg(long)]
    max_len: Option<usize>,
    /// With --http: requests that may wait for a slot; beyond, 429.
    #[arg(long, default_value_t = 256)]
    queue_limit: usize,
    /// With --http: prompt tokens prefilled per round per device, so that a
    /// long prompt delays the running requests by one chunk at most.
    #[arg(long, default_value_t = 256)]
    prefill_chunk: usize,
    /// The KV cache's dtype. `f16` halves its bytes per
    /// position (about twice the sequences in the same memory; keys and
    /// values rounded to 11 significant bits, the attention still sums in
    /// f32), `f32` keeps them exact, `auto` is f16 where every device
    /// reads f16 caches (the host) and f32 elsewhere.
    #[arg(long, default_value = "auto", value_name = "auto|f32|f16")]
    kv_dtype: hetero_models::llama::KvCacheDtype,
    /// With --http: max_tokens of a request that gives none.
    #[arg(long, default_value_t = 256)]
    default_max_tokens: usize,
    /// With --http: the model's id in requests and /v1/models. Default: the
    /// file (or folder) name.
    #[arg(long, value_name = "NAME")]
    served_model_name: Option<String>,
    /// With --http: seconds a shutdown waits for running requests before
    /// cancelling them.
    #[arg(long, default_value_t = 30.0)]
    shutdown_grace: f64,
}

/// Where the continuous-batching rounds run.
enum Servers<'a> {
    /// Every device of this process, ranks of an in-process group.
    Local(&'a [hetero_core::SharedDevice]),
    /// This process's one device, a rank of a communicator across processes.
    Rank {
        device: hetero_core::SharedDevice,
        comm: Arc<dyn Collective>,
    },
}

/// The profile cache named by `--profile-cache`: empty when the file does
/// not exist yet; an unreadable or corrupt file is an error (it is never
/// overwritten, so nothing is lost).
fn load_cache(path: Option<&std::path::Path>) -> Result<ProfileCache> {
    match path {
        Some(p) if p.exists() => ProfileCache::load(p).map_err(|e| {
            Error::invalid(
                "--profile-cache",
                format!("{e}; delete the file or name another one"),
            )
        }),
        _ => Ok(ProfileCache::default()),
    }
}

/// The devices `--device` names, or every device found.
fn chosen_devices(args: &Args) -> Result<Vec<hetero_backends::AnyDevice>> {
    let found = discover(1, &mut |note| eprintln!("{note}"))?;
    if args.devices.is_empty() {
        Ok(found)
    } else {
        select_devices(&args.devices, &found)
    }
}

fn main() -> ExitCode {
    hetero_examples::exit_code(run(&Args::parse()))
}

fn run(args: &Args) -> Result<()> {
    if let Some(addr) = &args.http {
        return run_http(args, addr);
    }
    let model = match ModelSource::resolve(&args.model)? {
        ModelSource::Preset(shape) => shape,
        ModelSource::Checkpoint(path) => return run_checkpoint(args, &path),
    };
    // Before any device is profiled: a typo should not cost a profiling run.
    let policies = Policy::select(&args.policy)?;
    if args.rank_from_env && args.requests == 0 {
        return Err(Error::invalid(
            "--rank-from-env",
            "needs --requests N: across processes only continuous batching is served",
        ));
    }
    if model.dtype != hetero_core::DType::F32 {
        eprintln!(
            "note: {} is stored as {} in its preset; hetero's decode step stores and computes \
             f32, so memory is profiled (and B* found) for f32",
            model.name, model.dtype
        );
    }
    let devices = chosen_devices(args)?;
    let max_len = args.prompt_len + args.gen_len;
    if let Some(&bad) = args.buckets.iter().find(|&&len| len == 0) {
        return Err(Error::invalid(
            "--buckets",
            format!("lengths must be at least 1, got {bad}"),
        ));
    }
    let mut cache = load_cache(args.profile_cache.as_deref())?;
    let mut used = Vec::new();
    let mut shared = Vec::new();
    let mut profiles: Vec<DeviceProfile> = Vec::new();
    let mut buckets: Vec<MemoryProfile> = Vec::new();
    for d in &devices {
        let dev = d.as_dyn();
        eprintln!("profiling {} ({})...", dev.id(), dev.info().name);
        let profiled =
            profile_device_cached(dev, &model, max_len, 1 << 14, &[1, 4, 16], &mut cache).and_then(
                |(p, _, _, cached)| {
                    let b =
                        profile_buckets_cached(dev, &model, &args.buckets, 1 << 14, &mut cache)?;
                    Ok((p, cached, b))
                },
            );
        match profiled {
            Ok((p, cached, b)) => {
                eprintln!(
                    "  B* = {}{}, step {:.3} ms + {:.3} ms per sequence",
                    p.max_batch,
                    if cached {
                        " (from the profile cache)"
                    } else {
                        ""
                    },
                    p.step.fixed_s * 1e3,
                    p.step.per_sequence_s * 1e3
                );
                for m in &b {
                    eprintln!("  B* at length {} = {}", m.max_len, m.max_batch);
                }
                buckets.extend(b);
                profiles.push(p);
                used.push(dev);
                shared.push(d.shared());
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
    if let Some(path) = &args.profile_cache {
        cache.save(path)?;
    }
    if args.rank_from_env {
        let [device] = <[_; 1]>::try_from(shared).map_err(|d: Vec<_>| {
            Error::invalid(
                "--device",
                format!(
                    "with --rank-from-env each rank serves exactly one device; {} were selected",
                    d.len()
                ),
            )
        })?;
        return run_ranked(
            args,
            &model,
            &profiles[0],
            &buckets,
            device,
            &policies,
            max_len,
        );
    }
    if args.requests > 0 {
        let rt = runtime()?;
        return run_continuous(
            args,
            &model,
            &profiles,
            &buckets,
            Servers::Local(&shared),
            &policies,
            max_len,
            &rt,
        );
    }
    let mut runs: Vec<(String, Result<ServeReport>)> = Vec::new();
    let mut predicted: Vec<Option<f64>> = Vec::new();
    for &p in &policies {
        let name = p.name();
        let allocation = p.allocate(&profiles, args.batch);
        predicted.push(allocation.as_ref().ok().map(|a| a.throughput()));
        let outcome = allocation.and_then(|a| {
            // Running it would only reproduce the out-of-memory error.
            a.check_fits(&profiles, &model, max_len)?;
            eprintln!("decoding with {name}: batches {:?}...", a.batches);
            serve(&used, &model, &a.batches, args.prompt_len, args.gen_len)
        });
        runs.push((name.into(), outcome));
    }
    hetero_examples::sole_failure(&mut runs)?;
    if args.json {
        let out = json!({
            "model": model.name,
            "batch": args.batch,
            "prompt_len": args.prompt_len,
            "gen_len": args.gen_len,
            "devices": profiles,
            "buckets": buckets,
            "runs": runs.iter().map(|(n, r)| match r {
                Ok(rep) => json!({"policy": n, "report": rep}),
                Err(e) => json!({"policy": n, "error": e.to_string()}),
            }).collect::<Vec<_>>(),
        });
        println!("{out:#}");
        return Ok(());
    }
    print_tables(args, &model, &profiles, &used, &runs, &predicted);
    print_buckets(&buckets);
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the tokio runtime", e))
}

/// `--rank-from-env`: join the other ranks over TCP, exchange profiles,
/// serve this process's device as one rank.
fn run_ranked(
    args: &Args,
    model: &ModelShape,
    mine: &DeviceProfile,
    buckets: &[MemoryProfile],
    device: hetero_core::SharedDevice,
    policies: &[Policy],
    max_len: usize,
) -> Result<()> {
    let cfg = TcpConfig::from_env()?;
    let rt = runtime()?;
    // `--shared-memory`: the TCP mesh upgraded with shared-memory rings
    // between the ranks of one host.
    let kind = if args.shared_memory {
        TransportKind::SharedMemory
    } else {
        TransportKind::Tcp
    };
    let transport = rt
        .block_on(connect(kind, Ranks::Job(cfg), None))?
        .into_single()?;
    let comm: Arc<dyn Collective> = Arc::new(FlatCollective::unmeasured(
        transport.clone(),
        Algorithm::Ring,
    ));
    let profiles = rt.block_on(exchange_profiles(mine, async |bytes| {
        all_gather_bytes(&*comm, &bytes).await
    }))?;
    let served = run_continuous(
        args,
        model,
        &profiles,
        buckets,
        Servers::Rank { device, comm },
        policies,
        max_len,
        &rt,
    );
    // Hand the last messages to the network before this process exits.
    let flushed = rt.block_on(transport.flush());
    served.and(flushed)
}

#[allow(clippy::too_many_arguments)]
fn run_continuous(
    args: &Args,
    model: &ModelShape,
    profiles: &[DeviceProfile],
    buckets: &[MemoryProfile],
    servers: Servers<'_>,
    policies: &[Policy],
    max_len: usize,
    rt: &tokio::runtime::Runtime,
) -> Result<()> {
    let requests = synthetic_requests(args.requests, args.prompt_len, args.gen_len, model.vocab)?;
    let mut runs: Vec<(String, Result<ContinuousReport>)> = Vec::new();
    for &p in policies {
        let name = p.name();
        let outcome = p.allocate(profiles, args.batch).and_then(|a| {
            a.check_fits(profiles, model, max_len)?;
            eprintln!(
                "serving {} requests with {name}: slots {:?}...",
                requests.len(),
                a.batches
            );
            match &servers {
                Servers::Local(devices) => rt
                    .block_on(serve_continuous(
                        devices,
                        model,
                        &a.batches,
                        max_len,
                        requests.clone(),
                    ))
                    .map(Some),
                Servers::Rank { device, comm } => rt.block_on(serve_continuous_rank(
                    device.clone(),
                    comm.clone(),
                    model,
                    &a.batches,
                    max_len,
                    requests.clone(),
                )),
            }
        });
        match outcome {
            Ok(Some(report)) => runs.push((name.into(), Ok(report))),
            // Another rank: rank 0 reports.
            Ok(None) => {}
            Err(e) => runs.push((name.into(), Err(e))),
        }
    }
    let reports = match &servers {
        Servers::Local(_) => true,
        Servers::Rank { comm, .. } => comm.rank() == 0,
    };
    if !reports {
        // Not rank 0: nothing to print, but a failure still fails the run.
        return runs
            .into_iter()
            .find_map(|(_, r)| r.err())
            .map_or(Ok(()), Err);
    }
    hetero_examples::sole_failure(&mut runs)?;
    if args.json {
        let out = json!({
            "model": model.name,
            "requests": args.requests,
            "batch": args.batch,
            "max_len": max_len,
            "devices": profiles,
            "buckets": buckets,
            "runs": runs.iter().map(|(n, r)| match r {
                Ok(rep) => json!({"policy": n, "report": rep}),
                Err(e) => json!({"policy": n, "error": e.to_string()}),
            }).collect::<Vec<_>>(),
        });
        println!("{out:#}");
        return Ok(());
    }
    print_buckets(buckets);
    println!(
        "{}: {} requests (prompt 1..={}, generate 1..={}), {} slots in all, continuous batching",
        model.name, args.requests, args.prompt_len, args.gen_len, args.batch
    );
    println!(
        "{:<10} {:>14} {:>10} {:>14} {:>16} {:>10} {:>9}",
        "policy", "slots", "tokens/s", "ms per token", "ms to 1st token", "occupancy", "rejected"
    );
    for (name, r) in &runs {
        match r {
            Ok(rep) => println!(
                "{:<10} {:>14} {:>10.1} {:>14.3} {:>16.1} {:>9.0}% {:>9}",
                name,
                format!("{:?}", rep.slots),
                rep.tokens_per_s,
                rep.mean_per_token_s * 1e3,
                rep.mean_time_to_first_token_s * 1e3,
                rep.occupancy * 100.0,
                rep.rejected.len()
            ),
            Err(e) => println!("{name:<10} failed: {e}"),
        }
    }
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

/// `--buckets`: B* of each device at each maximum length.
fn print_buckets(buckets: &[MemoryProfile]) {
    if buckets.is_empty() {
        return;
    }
    println!();
    println!("{:<8} {:>10} {:>8}", "device", "max len", "B*");
    for m in buckets {
        println!(
            "{:<8} {:>10} {:>8}",
            m.device.to_string(),
            m.max_len,
            m.max_batch
        );
    }
}

/// `--model PATH`: a real checkpoint, loaded once per device, profiled,
/// and served as one fixed batch of real prompts per policy.
fn run_checkpoint(args: &Args, path: &std::path::Path) -> Result<()> {
    let policies = Policy::select(&args.policy)?;
    if args.requests > 0 || args.rank_from_env {
        return Err(Error::invalid(
            "--model",
            "a checkpoint is served as one fixed batch per policy; --requests and \
             --rank-from-env run the presets only",
        ));
    }
    let checkpoint = real_model::open(path)?;
    let info = ModelInfo::of(&checkpoint);
    eprintln!(
        "loaded {} ({}, {}): {:.1} M parameters, {:.1} MiB as f32, {} layers, hidden {}, \
         {} heads ({} kv) of {}, vocab {}, {} KiB of KV cache per position",
        info.path,
        info.architecture,
        info.format,
        info.parameters as f64 / 1e6,
        info.resident_bytes as f64 / (1u64 << 20) as f64,
        info.layers,
        info.hidden,
        info.heads,
        info.kv_heads,
        info.head_dim,
        info.vocab,
        info.kv_bytes_per_position as f64 / 1024.0
    );
    let lines = match &args.prompts {
        Some(file) => real_model::prompt_lines(
            &std::fs::read_to_string(file)
                .map_err(|e| Error::io(format!("reading --prompts {}", file.display()), e))?,
        ),
        None => real_model::DEFAULT_PROMPTS
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let prompts = real_model::tokenize_prompts(&checkpoint, &lines)?;
    let batch = real_model::fill_batch(&prompts, args.batch);
    let prompt_rows = batch.iter().map(Vec::len).max().unwrap_or(0);
    let max_len = prompt_rows + args.gen_len;
    eprintln!(
        "{} prompts ({}..={} tokens) cycled to a batch of {}; KV caches of {max_len} positions",
        prompts.len(),
        prompts.iter().map(Vec::len).min().unwrap_or(0),
        prompts.iter().map(Vec::len).max().unwrap_or(0),
        args.batch
    );
    let devices = chosen_devices(args)?;
    let shared: Vec<_> = devices.iter().map(|d| d.shared()).collect();
    let mut loaded = real_model::load_all(&checkpoint, &shared, &mut |g, e| {
        eprintln!("  {} skipped: {e}", shared[g].id());
    })?;
    for (_, model) in &mut loaded {
        model.set_kv_cache_dtype(args.kv_dtype)?;
    }
    let mut cache = load_cache(args.profile_cache.as_deref())?;
    // B* depends on the longest prompt too (the prefill's activations),
    // and on the KV cache's dtype.
    let key = format!(
        "{} (prompt rows {prompt_rows}, KV cache {})",
        info.name, args.kv_dtype
    );
    let context = prompt_rows + args.gen_len / 2;
    let mut models = Vec::new();
    let mut profiles: Vec<DeviceProfile> = Vec::new();
    // The block formats each profiled device keeps (its weights' bytes).
    let mut kept = Vec::new();
    let mut buckets: Vec<MemoryProfile> = Vec::new();
    for (g, model) in &loaded {
        let dev = shared[*g].as_ref();
        eprintln!("profiling {} ({})...", dev.id(), dev.info().name);
        let cached = cache.get(dev, &key, max_len).cloned();
        let from_cache = cached.is_some();
        let profiled = real_model::profile_device(
            model,
            &key,
            max_len,
            prompt_rows,
            1 << 14,
            &[1, 4, 16],
            context,
            cached,
        );
        let (p, memory, _) = match profiled {
            Ok(p) => p,
            Err(e @ Error::InvalidInput { .. }) if loaded.len() > 1 => {
                eprintln!("  skipped: {e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        cache.insert(dev, memory);
        eprintln!(
            "  B* = {}{}, step {:.3} ms + {:.3} ms per sequence at context {context}",
            p.max_batch,
            if from_cache {
                " (from the profile cache)"
            } else {
                ""
            },
            p.step.fixed_s * 1e3,
            p.step.per_sequence_s * 1e3
        );
        for &len in &args.buckets {
            let m = match cache.get(dev, &key, len).cloned() {
                Some(m) => m,
                None => {
                    real_model::profile_memory(model, &key, len, prompt_rows.min(len), 1 << 14)?
                }
            };
            eprintln!("  B* at length {} = {}", m.max_len, m.max_batch);
            cache.insert(dev, m.clone());
            buckets.push(m);
        }
        profiles.push(p);
        kept.push(real_model::kept_formats(dev));
        models.push(model);
    }
    if models.is_empty() {
        return Err(Error::invalid(
            "device",
            format!(
                "no device can hold one sequence of {max_len} positions of {} next to its weights",
                info.name
            ),
        ));
    }
    if let Some(path) = &args.profile_cache {
        cache.save(path)?;
    }
    let tokenizer = checkpoint.tokenizer().ok();
    let mut runs: Vec<(String, Result<RealServeReport>)> = Vec::new();
    let mut predicted: Vec<Option<f64>> = Vec::new();
    for &p in &policies {
        let name = p.name();
        let allocation = p.allocate(&profiles, args.batch);
        predicted.push(allocation.as_ref().ok().map(|a| a.throughput()));
        let outcome = allocation.and_then(|a| {
            let kv: Vec<_> = models.iter().map(|m| m.kv_cache_dtype()).collect();
            real_model::check_fits(&a, &profiles, &kept, &kv, &checkpoint, max_len, prompt_rows)?;
            eprintln!("decoding with {name}: batches {:?}...", a.batches);
            real_model::serve(&models, &a.batches, &batch, args.gen_len)
        });
        runs.push((name.into(), outcome));
    }
    hetero_examples::sole_failure(&mut runs)?;
    let text = |ids: &[u32]| tokenizer.as_ref().and_then(|t| t.decode(ids).ok());
    if args.json {
        let out = json!({
            "model": info,
            "batch": args.batch,
            "prompt_tokens": batch.iter().map(Vec::len).collect::<Vec<_>>(),
            "gen_len": args.gen_len,
            "max_len": max_len,
            "devices": profiles,
            "buckets": buckets,
            "runs": runs.iter().map(|(n, r)| match r {
                Ok(rep) => json!({
                    "policy": n,
                    "report": rep,
                    "texts": rep.outputs.iter().map(|o| text(o)).collect::<Vec<_>>(),
                }),
                Err(e) => json!({"policy": n, "error": e.to_string()}),
            }).collect::<Vec<_>>(),
        });
        println!("{out:#}");
        return Ok(());
    }
    let thr: Vec<f64> = profiles
        .iter()
        .map(|p| p.step.throughput(p.max_batch))
        .collect();
    let total: f64 = thr.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    println!(
        "{} ({}, {:.1} M parameters): batch {}, prompts of {}..={} tokens, generate {} tokens",
        info.name,
        info.architecture,
        info.parameters as f64 / 1e6,
        args.batch,
        batch.iter().map(Vec::len).min().unwrap_or(0),
        prompt_rows,
        args.gen_len
    );
    print!("{:<8} {:>7} {:>8}", "device", "B*", "share");
    for (name, _) in &runs {
        print!(" {:>9} {:>9}", format!("B {name}"), "tok/s");
    }
    println!("  name");
    for (g, p) in profiles.iter().enumerate() {
        print!(
            "{:<8} {:>7} {:>7.1}%",
            p.device.to_string(),
            p.max_batch,
            100.0 * thr[g] / total
        );
        for (_, r) in &runs {
            match r {
                Ok(rep) => print!(" {:>9} {:>9.1}", rep.batches[g], rep.device_tokens_per_s[g]),
                Err(_) => print!(" {:>9} {:>9}", "-", "-"),
            }
        }
        println!("  {}", p.name);
    }
    println!();
    let uniform = runs.iter().find_map(|(n, r)| match r {
        Ok(rep) if n == "uniform" => Some(rep.tokens_per_s),
        _ => None,
    });
    println!(
        "{:<10} {:>12} {:>14} {:>12} {:>11} {:>18}",
        "policy", "tokens/s", "ms per token", "prefill ms", "vs uniform", "predicted tokens/s"
    );
    for ((name, r), pred) in runs.iter().zip(&predicted) {
        let pred = pred
            .map(|p| format!("{p:.1}"))
            .unwrap_or_else(|| "-".into());
        match r {
            Ok(rep) => {
                let ratio = uniform
                    .map(|u| format!("{:.2}x", rep.tokens_per_s / u))
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<10} {:>12.1} {:>14.3} {:>12.1} {:>11} {:>18}",
                    name,
                    rep.tokens_per_s,
                    rep.per_token_latency_s * 1e3,
                    rep.prefill_s * 1e3,
                    ratio,
                    pred
                );
            }
            Err(e) => println!("{name:<10} failed: {e}"),
        }
    }
    if let Some((name, Ok(rep))) = runs.iter().find(|(_, r)| r.is_ok()) {
        println!();
        println!("first outputs ({name}):");
        for (prompt, out) in lines.iter().cycle().zip(&rep.outputs).take(3) {
            match text(out) {
                Some(t) => println!("  {prompt:?} -> {t:?}"),
                None => println!("  {prompt:?} -> {out:?}"),
            }
        }
    }
    print_buckets(&buckets);
    Ok(())
}

/// `--http`: load and measure the checkpoint on the devices, start the
/// live engine, serve until SIGINT / SIGTERM.
fn run_http(args: &Args, addr: &str) -> Result<()> {
    if !(args.shutdown_grace.is_finite() && args.shutdown_grace >= 0.0) {
        return Err(Error::invalid(
            "--shutdown-grace",
            format!("{} is not a number of seconds >= 0", args.shutdown_grace),
        ));
    }
    let path = match ModelSource::resolve(&args.model)? {
        ModelSource::Checkpoint(path) => path,
        ModelSource::Preset(_) => {
            return Err(Error::invalid(
                "--http",
                "serves a real checkpoint: give --model PATH (a .gguf file or a Hugging Face \
                 folder); the presets have no tokenizer",
            ));
        }
    };
    if args.requests > 0 {
        return Err(Error::invalid(
            "--requests",
            "is for the offline benchmark; with --http requests come from clients",
        ));
    }
    let policy = match args.policy.as_str() {
        Policy::EVERY => Policy::Balanced,
        name => Policy::from_name(name)?,
    };
    let split = match &args.split {
        Some(s) => s.parse::<SplitSpec>()?,
        None => SplitSpec::Replicate,
    };
    let checkpoint = real_model::open(&path)?;
    let context = checkpoint.config().max_positions;
    let max_len = args.max_len.unwrap_or(context.min(2048));
    let devices = chosen_devices(args)?;
    let shared: Vec<_> = devices.iter().map(|d| d.shared()).collect();
    let setup = live::LiveSetup {
        slots: args.slots,
        max_len,
        policy,
        config: live::LiveConfig {
            queue_limit: args.queue_limit,
            prefill_chunk: args.prefill_chunk,
            max_request_len: max_len,
        },
        kv_dtype: args.kv_dtype,
    };
    let plan_options = PlanOptions {
        batch: args.slots,
        max_len,
        activation_bytes: real_model::activation_bytes(
            checkpoint.config(),
            args.slots + args.prefill_chunk,
            args.slots,
        ),
    };
    let profile = ProfileOptions {
        batch: args.slots.min(16),
        kv_dtype: args.kv_dtype,
        ..ProfileOptions::default()
    };
    // `--split layers:...|auto` over ranks: a stage per rank; rank 0 runs
    // the engine on the whole line.
    let mut stage_link = None;
    let staged = match (&split, args.rank_from_env) {
        (SplitSpec::Layers(_) | SplitSpec::Auto, true) => {
            let counts = match &split {
                SplitSpec::Layers(counts) => Some(counts.as_slice()),
                _ => None,
            };
            let how = RankSplit {
                counts,
                plan: plan_options,
                profile,
            };
            match start_stage_rank(args, &checkpoint, &shared, how, &setup)? {
                Some((engine, plan, link)) => {
                    stage_link = Some(link);
                    Some((engine, plan))
                }
                None => return Ok(()),
            }
        }
        _ => None,
    };
    let ranks = if args.rank_from_env && staged.is_none() {
        let cfg = TcpConfig::from_env()?;
        if shared.len() != 1 {
            return Err(Error::invalid(
                "--device",
                format!(
                    "with --rank-from-env each rank serves exactly one device; {} were selected",
                    shared.len()
                ),
            ));
        }
        if cfg.rank > 0 {
            return run_http_rank(&checkpoint, &shared, &setup, &cfg);
        }
        let listener = std::net::TcpListener::bind(&cfg.master).map_err(|e| {
            Error::io(
                format!(
                    "listening for ranks on MASTER_ADDR:MASTER_PORT {}",
                    cfg.master
                ),
                e,
            )
        })?;
        eprintln!(
            "rank 0: waiting for {} rank(s) on {}...",
            cfg.world_size - 1,
            cfg.master
        );
        let expect = rank_hello(&checkpoint, 0, "", 0, 0);
        let ranks = live::accept_ranks(&listener, cfg.world_size - 1, cfg.timeout, &expect)?;
        for r in &ranks {
            eprintln!(
                "  rank {}: {} with {} slots, {} KV positions",
                r.hello.rank, r.hello.device, r.hello.slots, r.hello.kv_tokens
            );
        }
        ranks
    } else {
        Vec::new()
    };
    // (a split over ranks has loaded its part already)
    if staged.is_none() {
        eprintln!(
            "loading {} on {} device(s)...",
            path.display(),
            shared.len()
        );
    }
    let (engine, plan) = if let Some(started) = staged {
        started
    } else if split == SplitSpec::Replicate {
        live::start(&checkpoint, &shared, ranks, &setup, &mut |m| {
            eprintln!("{m}")
        })?
    } else {
        let (pipelines, report) = choose_pipelines(
            &checkpoint,
            &shared,
            &split,
            plan_options,
            profile,
            None,
            &mut |m| eprintln!("{m}"),
        )?;
        if let Some(report) = report {
            eprint!("{}", report.explain());
        }
        live::start_pipelines(&checkpoint, &pipelines, &setup, &mut |m| eprintln!("{m}"))?
    };
    for (d, why) in &plan.skipped {
        eprintln!("  {d} left out: {why}");
    }
    for d in &plan.devices {
        eprintln!(
            "  {} ({}): {} slots, {} KV positions ({} sequences of {}), {:.1} MiB of weights",
            d.device,
            d.name,
            d.slots,
            d.kv_tokens,
            d.max_batch,
            plan.max_len,
            d.resident_weight_bytes as f64 / (1u64 << 20) as f64
        );
    }
    if args.json {
        println!("{}", json!({"plan": plan}));
    }
    let tokenizer = checkpoint.tokenizer()?;
    let prompter = hetero_server::Prompter::new(&checkpoint, &tokenizer)?;
    let model_id = args.served_model_name.clone().unwrap_or_else(|| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string())
    });
    let engine = Arc::new(engine);
    let state = Arc::new(hetero_server::AppState::new(
        engine.clone(),
        prompter,
        model_id.clone(),
        args.default_max_tokens,
    ));
    let rt = runtime()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io(format!("binding --http {addr}"), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io("reading the bound address", e))?;
        eprintln!("serving {model_id} with the {policy} policy");
        eprintln!("listening on http://{local}");
        hetero_server::serve(
            listener,
            state,
            hetero_server::shutdown_signal(),
            std::time::Duration::from_secs_f64(args.shutdown_grace),
        )
        .await
        .map_err(|e| Error::io("serving HTTP", e))?;
        eprintln!("stopped");
        Ok::<(), Error>(())
    })?;
    if let Some(link) = stage_link {
        // The engine's model ends the line when it drops (the other ranks
        // stop); hand that message to the network before exiting.
        engine.close();
        engine.join();
        link.flush()?;
    }
    Ok(())
}

/// How the ranks of `--http --rank-from-env` split the layers.
struct RankSplit<'a> {
    /// `--split layers:N0,N1,...`; `None`: `auto` (every rank profiles its
    /// device, rank 0 places the layers in rank order).
    counts: Option<&'a [usize]>,
    plan: PlanOptions,
    profile: ProfileOptions,
}

/// `--http --rank-from-env --split layers:N0,N1,...|auto`: join the job,
/// load this rank's layers on its one device; rank 0 waits for the
/// others' stages and starts the engine on the whole line (returned),
/// every other rank serves its stage until rank 0 stops the line (`None`).
fn start_stage_rank(
    args: &Args,
    checkpoint: &hetero_models::Checkpoint,
    shared: &[hetero_core::SharedDevice],
    how: RankSplit<'_>,
    setup: &live::LiveSetup,
) -> Result<Option<(live::Engine, live::LivePlan, StageRank)>> {
    let kind = if args.shared_memory {
        TransportKind::SharedMemory
    } else {
        TransportKind::Tcp
    };
    let link = StageRank::join(kind, None)?;
    let rank = link.rank();
    let stages = link.plan_stages(
        checkpoint,
        shared,
        how.counts,
        how.profile,
        how.plan,
        None,
        &mut |m| eprintln!("{m}"),
    )?;
    let mut part = hetero_models::LlamaModel::load_split(
        checkpoint,
        &stages,
        hetero_models::WeightFormat::Native,
        &mut |_| {},
    )?;
    part.set_kv_cache_dtype(setup.kv_dtype)?;
    match link.run(part)? {
        RankRole::Head(model) => {
            let (engine, plan) =
                live::start_loaded(checkpoint, *model, setup, &mut |m| eprintln!("{m}"))?;
            Ok(Some((engine, plan, link)))
        }
        RankRole::Served(stats) => {
            eprintln!(
                "rank {rank}: stopped after {} steps ({} rows, {} failed)",
                stats.steps, stats.rows, stats.failed_steps
            );
            Ok(None)
        }
    }
}

/// What a rank says to rank 0 about its device and model.
fn rank_hello(
    checkpoint: &hetero_models::Checkpoint,
    rank: usize,
    device: &str,
    slots: usize,
    kv_tokens: usize,
) -> live::Hello {
    let info = ModelInfo::of(checkpoint);
    live::Hello {
        rank,
        device: device.into(),
        slots,
        kv_tokens,
        model: info.name,
        parameters: info.parameters,
        vocab: info.vocab,
        max_positions: info.max_positions,
    }
}

/// `--http --rank-from-env` on a rank other than 0: serve this process's
/// device for rank 0's engine until rank 0 closes the connection.
fn run_http_rank(
    checkpoint: &hetero_models::Checkpoint,
    devices: &[hetero_core::SharedDevice],
    setup: &live::LiveSetup,
    cfg: &TcpConfig,
) -> Result<()> {
    let (engine, plan) = live::start(checkpoint, devices, Vec::new(), setup, &mut |m| {
        eprintln!("rank {}: {m}", cfg.rank)
    })?;
    let [d] = &plan.devices[..] else {
        return Err(Error::invalid(
            "--device",
            "a rank serves exactly one device",
        ));
    };
    let hello = rank_hello(
        checkpoint,
        cfg.rank,
        &format!("rank{}/{}", cfg.rank, d.device),
        d.slots,
        d.kv_tokens,
    );
    eprintln!(
        "rank {}: {} with {} slots, {} KV positions; joining rank 0 at {}",
        cfg.rank, d.device, d.slots, d.kv_tokens, cfg.master
    );
    let engine = Arc::new(engine);
    let rt = runtime()?;
    rt.block_on(live::serve_rank(
        engine.clone(),
        &cfg.master,
        &hello,
        cfg.timeout,
    ))?;
    engine.close();
    engine.join();
    eprintln!("rank {}: rank 0 closed the connection; stopped", cfg.rank);
    Ok(())
}
