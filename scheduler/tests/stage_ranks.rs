//! A model split over ranks that talk TCP (loopback, one thread per rank
//! here; the CLI test runs them as processes): greedy generation, batched
//! calls (micro-batches in flight on every rank), pipelined decode and the
//! live engine with its prefix cache give token for token what the whole
//! model gives on one host device, for 2 and 3 ranks. The real SmolLM2
//! model (`HETERO_TEST_GGUF`); skipped without it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may unwrap

use std::sync::Arc;
use std::time::Duration;

use hetero_collectives::transport::{Endpoints, Ranks, TransportKind, connect};
use hetero_core::SharedDevice;
use hetero_host::HostDevice;
use hetero_models::{
    Checkpoint, GenerateOptions, LlamaModel, Logits, StageSpec, WeightFormat, generate,
};
use hetero_scheduler::live::{Engine, Event, LiveConfig, LiveDevice, LiveRequest};
use hetero_scheduler::pipeline::{join_stage_ranks, rank_layers, serve_stage_rank};
use hetero_scheduler::real_model::DEFAULT_PROMPTS;
use libtest_mimic::{Arguments, Failed, Trial};

fn device(index: u32) -> SharedDevice {
    Arc::new(
        HostDevice::builder()
            .index(index)
            .threads(1)
            .memory_budget(1 << 30)
            .build()
            .unwrap(),
    )
}

fn part(checkpoint: &Checkpoint, index: u32, layers: std::ops::Range<usize>) -> LlamaModel {
    let stage = StageSpec {
        device: device(index),
        layers,
    };
    LlamaModel::load_split(checkpoint, &[stage], WeightFormat::Native, &mut |_| {}).unwrap()
}

/// Run `check` on rank 0's model of a job whose rank `i` holds
/// `counts[i]` layers, the other ranks serving in threads; every rank
/// must end cleanly once rank 0 stops the line.
fn with_ranks(
    checkpoint: &Checkpoint,
    counts: &[usize],
    check: impl FnOnce(LlamaModel) -> Result<(), Failed>,
) -> Result<(), Failed> {
    let world = counts.len();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let Endpoints::Transports(transports) = runtime.block_on(connect(
        TransportKind::Tcp,
        Ranks::Local(world),
        Some(Duration::from_secs(20)),
    ))?
    else {
        return Err("TCP gave no transports".into());
    };
    let layers = checkpoint.config().layers;
    let handle = runtime.handle().clone();
    std::thread::scope(|scope| -> Result<(), Failed> {
        let mut servers = Vec::new();
        for (r, t) in transports.iter().enumerate().skip(1) {
            let (t, handle) = (t.clone(), handle.clone());
            let range = rank_layers(counts, r, world, layers).unwrap();
            servers.push(scope.spawn(move || {
                let model = part(checkpoint, r as u32, range);
                serve_stage_rank(&model, t, &handle)
            }));
        }
        let first = part(
            checkpoint,
            0,
            rank_layers(counts, 0, world, layers).unwrap(),
        );
        let model = join_stage_ranks(
            first,
            transports[0].clone(),
            &handle,
            Duration::from_secs(60),
        )?;
        if model.stages().len() != world || !model.is_whole() {
            return Err(format!("stages {:?}", model.stages()).into());
        }
        check(model)?;
        for s in servers {
            let stats = s.join().map_err(|_| "a stage thread panicked")??;
            if stats.failed_steps != 0 || stats.steps == 0 {
                return Err(format!("stage stats {stats:?}").into());
            }
        }
        Ok(())
    })
}

fn same_as_one_device(path: &str, counts: &[usize]) -> Result<(), Failed> {
    let checkpoint = Checkpoint::open(path)?;
    let tokenizer = checkpoint.tokenizer()?;
    let stop_ids = checkpoint.stop_ids(&tokenizer)?;
    let whole = LlamaModel::load(&checkpoint, device(9), &mut |_| {})?;
    let options = GenerateOptions {
        max_tokens: 16,
        stop_ids,
        ..GenerateOptions::default()
    };
    let prompts: Vec<Vec<u32>> = DEFAULT_PROMPTS
        .iter()
        .take(5)
        .map(|p| tokenizer.encode(p, false).unwrap())
        .collect();
    with_ranks(&checkpoint, counts, |model| {
        // Greedy generation, one sequence.
        for ids in prompts.iter().take(2) {
            let a = generate(&whole, &tokenizer, ids, &options, &mut |_| {})?;
            let b = generate(&model, &tokenizer, ids, &options, &mut |_| {})?;
            if a.ids != b.ids {
                return Err(
                    format!("ranks {counts:?}: {:?} vs one device {:?}", b.ids, a.ids).into(),
                );
            }
        }
        // One call of every prompt (micro-batches in flight on each rank),
        // all rows' logits.
        let batch = |m: &LlamaModel| -> Result<Vec<Vec<f32>>, Failed> {
            let mut caches: Vec<_> = prompts.iter().map(|_| m.new_cache(64).unwrap()).collect();
            let mut seqs: Vec<_> = caches
                .iter_mut()
                .zip(&prompts)
                .map(|(c, p)| (c, p.as_slice()))
                .collect();
            Ok(m.forward_batch(&mut seqs, Logits::All)?)
        };
        let (a, b) = (batch(&whole)?, batch(&model)?);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let diff = x
                .iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            // Other micro-batch row counts sum in another order, and one
            // row takes 16-bit activations on AVX2-only CPUs (within
            // matmul_quant's contract): rounding, not another result.
            if x.len() != y.len() || diff > 0.02 {
                return Err(format!("prompt {i}: logits differ by {diff}").into());
            }
        }
        // Pipelined decode: groups circulating through all the ranks.
        let decode = |m: &LlamaModel| -> Result<Vec<Vec<u32>>, Failed> {
            let mut caches: Vec<_> = prompts.iter().map(|_| m.new_cache(64).unwrap()).collect();
            let mut next = Vec::new();
            for (c, p) in caches.iter_mut().zip(&prompts) {
                m.forward(c, &p[..p.len() - 1], Logits::Last)?;
                next.push(p[p.len() - 1]);
            }
            let mut out = vec![Vec::new(); prompts.len()];
            let groups = [0..2, 2..4, 4..5];
            m.decode_pipelined(&mut caches, &next, &groups, &mut |_, seqs, logits| {
                seqs.iter()
                    .zip(logits)
                    .map(|(&i, row)| {
                        let best = row
                            .iter()
                            .enumerate()
                            .max_by(|a, b| a.1.total_cmp(b.1))
                            .map(|(t, _)| t as u32)
                            .unwrap();
                        out[i].push(best);
                        (out[i].len() < 8).then_some(best)
                    })
                    .collect()
            })?;
            Ok(out)
        };
        let (a, b) = (decode(&whole)?, decode(&model)?);
        if a != b {
            return Err(format!("pipelined decode: {b:?} vs one device {a:?}").into());
        }
        model.stop_remote()?;
        Ok(())
    })
}

/// The live engine on rank 0's model: requests sharing prefixes (the
/// prefix cache copies keys and values on every rank) and dropped caches.
fn engine_over_ranks(path: &str) -> Result<(), Failed> {
    let checkpoint = Checkpoint::open(path)?;
    let tokenizer = Arc::new(checkpoint.tokenizer()?);
    let stop_ids = checkpoint.stop_ids(&tokenizer)?;
    let whole = LlamaModel::load(&checkpoint, device(9), &mut |_| {})?;
    let layers = checkpoint.config().layers;
    let counts = [layers / 3, layers / 3, layers - 2 * (layers / 3)];
    with_ranks(&checkpoint, &counts, |model| {
        let engine = Engine::start(
            vec![LiveDevice {
                model,
                slots: 3,
                kv_tokens: 600,
            }],
            tokenizer.clone(),
            LiveConfig {
                queue_limit: 64,
                prefill_chunk: 16,
                max_request_len: 200,
            },
        )?;
        let requests: Vec<LiveRequest> = DEFAULT_PROMPTS
            .iter()
            .take(3)
            .chain(DEFAULT_PROMPTS.iter().take(3))
            .enumerate()
            .map(|(i, p)| LiveRequest {
                prompt_ids: tokenizer.encode(p, false).unwrap(),
                options: GenerateOptions {
                    max_tokens: 4 + i % 4,
                    stop_ids: stop_ids.clone(),
                    ..GenerateOptions::default()
                },
            })
            .collect();
        // The second three after the first: their prompts are cached.
        for wave in requests.chunks(3) {
            let mut receivers = Vec::new();
            for r in wave {
                receivers.push(engine.submit(r.clone()).map_err(|e| e.to_string())?);
            }
            for (r, mut rx) in wave.iter().zip(receivers) {
                let mut text = String::new();
                loop {
                    match rx.blocking_recv().ok_or("no event")? {
                        Event::Text(t) => text.push_str(&t),
                        Event::Done { .. } => break,
                        Event::Failed(e) => return Err(format!("failed: {e}").into()),
                    }
                }
                let alone = generate(&whole, &tokenizer, &r.prompt_ids, &r.options, &mut |_| {})?;
                if text != alone.text {
                    return Err(format!("engine {text:?}, alone {:?}", alone.text).into());
                }
            }
        }
        // Closing the engine drops the model, whose line tells the ranks
        // to stop.
        engine.close();
        drop(engine);
        Ok(())
    })
}

fn main() {
    let args = Arguments::from_args();
    let model = std::env::var("HETERO_TEST_GGUF")
        .ok()
        .filter(|p| std::path::Path::new(p).is_file());
    type TrialFn = fn(&str) -> Result<(), Failed>;
    let tests: [(&str, TrialFn); 3] = [
        ("stage_ranks::two_ranks_same_as_one_device", |p| {
            let layers = Checkpoint::open(p)?.config().layers;
            same_as_one_device(p, &[layers / 3, layers - layers / 3])
        }),
        ("stage_ranks::three_ranks_same_as_one_device", |p| {
            let layers = Checkpoint::open(p)?.config().layers;
            same_as_one_device(p, &[5, layers - 12, 7])
        }),
        ("stage_ranks::engine_over_three_ranks", engine_over_ranks),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f)| match &model {
            Some(m) => {
                let m = m.clone();
                Trial::test(name, move || f(&m))
            }
            None => Trial::test(name, || Ok(()))
                .with_ignored_flag(true)
                .with_kind("skipped: HETERO_TEST_GGUF does not name a file"),
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
