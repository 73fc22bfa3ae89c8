//! A model split by layers over several devices computes what the same
//! model computes on one: the greedy continuations of the reference
//! prompts token for token and the logits of a batched call (the
//! micro-batch pipeline) for splits over 2 and 3 host devices, and
//! batches in flight together on a standing line; over the
//! host and a software GPU (lavapipe / llvmpipe) when one has the Llama
//! kernels, the greedy continuation up to a near tie. A stage that fails
//! mid-call fails the call, with nothing advanced. Skipped with the
//! reason without `HETERO_TEST_GGUF`.

use std::ops::Range;
use std::path::Path;

use hetero_backends::host::HostDevice;
use hetero_backends::{AnyDevice, discover};
use hetero_core::{DType, SharedDevice};
use hetero_models::llama::KvCacheDtype;
use hetero_models::{Checkpoint, KvCache, LlamaModel, Logits, StageSpec, WeightFormat};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::Value;

/// The reference prompts' ids.
fn prompts() -> Result<Vec<Vec<u32>>, Failed> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama/smollm2_reference.json");
    let r: Value = serde_json::from_slice(&std::fs::read(path)?)?;
    Ok(r["cases"]
        .as_array()
        .ok_or("no cases")?
        .iter()
        .map(|c| {
            c["prompt_ids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_u64)
                        .map(|x| x as u32)
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect())
}

fn host(index: u32) -> Result<SharedDevice, Failed> {
    Ok(AnyDevice::Host(HostDevice::builder().index(index).threads(1).build()?).shared())
}

/// `ranges` of layers on `devices`, in order.
fn split(
    ckpt: &Checkpoint,
    devices: &[SharedDevice],
    ranges: &[Range<usize>],
) -> Result<LlamaModel, Failed> {
    let stages: Vec<StageSpec> = devices
        .iter()
        .zip(ranges)
        .map(|(d, r)| StageSpec {
            device: d.clone(),
            layers: r.clone(),
        })
        .collect();
    Ok(LlamaModel::load_split(
        ckpt,
        &stages,
        WeightFormat::Native,
        &mut |_| {},
    )?)
}

/// Greedy ids after `prompt`, `n` of them.
fn greedy(model: &LlamaModel, prompt: &[u32], n: usize) -> Result<Vec<u32>, Failed> {
    let mut cache = model.new_cache(prompt.len() + n)?;
    let mut logits = model.forward(&mut cache, prompt, Logits::Last)?;
    let mut out = Vec::new();
    for _ in 0..n {
        let id = hetero_models::sampling::argmax(&logits);
        out.push(id);
        logits = model.forward(&mut cache, &[id], Logits::Last)?;
    }
    Ok(out)
}

/// Every prompt in one call (with `Logits::All`), then a decode step of
/// all of them together: the logits of each.
fn batched(model: &LlamaModel, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, Failed> {
    let mut caches: Vec<KvCache> = prompts
        .iter()
        .map(|p| model.new_cache(p.len() + 1))
        .collect::<Result<_, _>>()?;
    let mut seqs: Vec<(&mut KvCache, &[u32])> = caches
        .iter_mut()
        .zip(prompts)
        .map(|(c, p)| (c, p.as_slice()))
        .collect();
    let mut out = model.forward_batch(&mut seqs, Logits::All)?;
    let next: Vec<[u32; 1]> = out
        .iter()
        .zip(prompts)
        .map(|(l, p)| {
            let vocab = l.len() / p.len();
            [hetero_models::sampling::argmax(&l[l.len() - vocab..])]
        })
        .collect();
    let mut seqs: Vec<(&mut KvCache, &[u32])> = caches
        .iter_mut()
        .zip(&next)
        .map(|(c, t)| (c, t.as_slice()))
        .collect();
    out.extend(model.forward_batch(&mut seqs, Logits::Last)?);
    Ok(out)
}

fn host_split(path: &str, ranges: &[Range<usize>]) -> Result<(), Failed> {
    let ckpt = Checkpoint::open(path)?;
    let layers = ckpt.config().layers;
    // The ranges are for SmolLM2-135M's 30 layers; scale to others.
    let ranges: Vec<Range<usize>> = ranges
        .iter()
        .map(|r| r.start * layers / 30..r.end * layers / 30)
        .collect();
    let mut one = LlamaModel::load_as(&ckpt, host(0)?, WeightFormat::Native, &mut |_| {})?;
    let devices: Vec<SharedDevice> = (1..=ranges.len() as u32)
        .map(host)
        .collect::<Result<_, _>>()?;
    let mut model = split(&ckpt, &devices, &ranges)?;
    // f32 caches: with f16 ones, the last-bit differences of the
    // micro-batches' sums (below) can round a key or value to the next f16
    // (2^-11 relative), which moved these logits by up to 0.08; the split
    // is what this test checks, the f16 cache has tests of its own.
    one.set_kv_cache_dtype(KvCacheDtype::F32)?;
    model.set_kv_cache_dtype(KvCacheDtype::F32)?;

    // Every stage's bytes, the embedding's second copy on the last one.
    let stages = model.stages();
    let copy = if ckpt.config().tied_embeddings {
        ckpt.weight_bytes(
            hetero_models::llama::Weight::Embedding,
            &devices[0].capabilities().quant_types,
        )
    } else {
        0
    };
    assert_eq!(model.weight_bytes(), one.weight_bytes() + copy);
    assert_eq!(
        stages.iter().map(|s| s.weight_bytes).sum::<u64>(),
        model.weight_bytes()
    );
    for (s, d) in stages.iter().zip(&devices) {
        let used = d.memory()?.allocated_bytes;
        if used < s.weight_bytes {
            return Err(format!(
                "{} holds {used} bytes, its stage {}",
                d.id(),
                s.weight_bytes
            )
            .into());
        }
    }

    let prompts = prompts()?;
    for p in &prompts {
        let (want, got) = (greedy(&one, p, 24)?, greedy(&model, p, 24)?);
        if want != got {
            return Err(format!("greedy after {p:?}: split {got:?}, one device {want:?}").into());
        }
    }
    let (want, got) = (batched(&one, &prompts)?, batched(&model, &prompts)?);
    let mut worst = 0.0f32;
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w.len(), g.len());
        for (a, b) in w.iter().zip(g) {
            worst = worst.max((a - b).abs());
        }
    }
    // Micro-batches change the row blocking of the quantized products,
    // hence the order of some sums, and a one-row micro-batch takes
    // activations rounded to 16 bits on AVX2-only CPUs (matmul_quant's
    // contract; SmolLM2's logits within 0.006 of the f64 reference):
    // rounding, not a different result.
    if worst > 0.02 {
        return Err(format!("batched logits differ by up to {worst}").into());
    }

    // Groups circulating through the stages: each sequence's greedy ids
    // are its ids decoded alone on one device.
    let steps = 12;
    let mut caches: Vec<KvCache> = prompts
        .iter()
        .map(|p| model.new_cache(p.len() + steps))
        .collect::<Result<_, _>>()?;
    let mut next = Vec::new();
    for (c, p) in caches.iter_mut().zip(&prompts) {
        let l = model.forward(c, p, Logits::Last)?;
        next.push(hetero_models::sampling::argmax(&l));
    }
    let mut got: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
    let groups = [0..prompts.len() / 2, prompts.len() / 2..prompts.len()];
    let busy = model.decode_pipelined(&mut caches, &next, &groups, &mut |_, seqs, logits| {
        seqs.iter()
            .zip(logits)
            .map(|(&i, l)| {
                let id = hetero_models::sampling::argmax(&l);
                got[i].push(id);
                (got[i].len() < steps).then_some(id)
            })
            .collect()
    })?;
    // Every stage ran each group's every step (the first token came from
    // the prompt's call), and took time doing so.
    let want_calls = (groups.len() * (steps - 1)) as u64;
    if busy.len() != stages.len()
        || busy
            .iter()
            .any(|b| b.calls != want_calls || b.busy_s <= 0.0 || b.mean_call_s() <= 0.0)
    {
        return Err(format!(
            "stage work {busy:?}: want {} stages of {want_calls} calls each",
            stages.len()
        )
        .into());
    }
    for (p, g) in prompts.iter().zip(&got) {
        let want = greedy(&one, p, steps)?;
        if *g != want {
            return Err(format!("pipelined decode after {p:?}: {g:?}, one device {want:?}").into());
        }
    }
    for (c, p) in caches.iter().zip(&prompts) {
        assert_eq!(c.len(), p.len() + steps - 1);
    }
    Ok(())
}

/// A standing line over two host stages (`LlamaModel::with_line`): every
/// prompt its own batch, all in flight at once with a batch that cannot
/// run among them, then the sequences decoded in two batches that travel
/// down the line together: each sequence's greedy ids are its ids alone
/// on one device, the bad batch comes back with its error and its cache
/// untouched, and the others are not disturbed by it.
fn line(path: &str) -> Result<(), Failed> {
    let ckpt = Checkpoint::open(path)?;
    let (layers, vocab) = (ckpt.config().layers, ckpt.config().vocab);
    let mut one = LlamaModel::load_as(&ckpt, host(0)?, WeightFormat::Native, &mut |_| {})?;
    let mut model = split(
        &ckpt,
        &[host(1)?, host(2)?],
        &[0..layers / 2, layers / 2..layers],
    )?;
    // f32 caches, as in `host_split`: the split is what is checked here.
    one.set_kv_cache_dtype(KvCacheDtype::F32)?;
    model.set_kv_cache_dtype(KvCacheDtype::F32)?;
    let prompts = prompts()?;
    let steps = 8;
    let bad_tag = u64::MAX - 1;
    let got = model.with_line(|line| -> Result<Vec<Vec<u32>>, Failed> {
        assert_eq!(line.stages(), 2);
        for (i, p) in prompts.iter().enumerate() {
            let cache = model.new_cache(p.len() + steps)?;
            line.send(i as u64, vec![cache], &[p], Logits::Last);
            if i == 0 {
                let past = [vocab as u32];
                line.send(bad_tag, vec![model.new_cache(4)?], &[&past], Logits::Last);
            }
        }
        assert_eq!(line.in_flight(), prompts.len() + 1);
        let mut caches: Vec<Option<KvCache>> = prompts.iter().map(|_| None).collect();
        let mut ids: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
        while let Some(landed) = line.recv() {
            if landed.tag == bad_tag {
                let err = landed.logits.expect_err("a token past the vocabulary ran");
                assert!(err.to_string().contains("past the vocabulary"), "{err}");
                assert_eq!(landed.caches.len(), 1);
                assert!(
                    landed.caches[0].is_empty(),
                    "a refused batch advanced its cache"
                );
                continue;
            }
            let i = landed.tag as usize;
            let logits = landed.logits?;
            assert_eq!((logits.len(), landed.caches.len()), (1, 1));
            ids[i].push(hetero_models::sampling::argmax(&logits[0]));
            caches[i] = landed.caches.into_iter().next();
        }
        assert_eq!(line.in_flight(), 0);
        for _ in 1..steps {
            // Even and odd sequences: two batches in flight at once.
            for parity in 0..2 {
                let members: Vec<usize> = (0..prompts.len()).filter(|i| i % 2 == parity).collect();
                let batch: Vec<KvCache> = members
                    .iter()
                    .map(|&i| caches[i].take().ok_or("a cache is missing"))
                    .collect::<Result<_, _>>()?;
                let tokens: Vec<[u32; 1]> = members
                    .iter()
                    .map(|&i| [ids[i][ids[i].len() - 1]])
                    .collect();
                let tokens: Vec<&[u32]> = tokens.iter().map(|t| t.as_slice()).collect();
                line.send(parity as u64, batch, &tokens, Logits::Last);
            }
            while let Some(landed) = line.recv() {
                let members: Vec<usize> = (0..prompts.len())
                    .filter(|&i| i % 2 == landed.tag as usize)
                    .collect();
                let logits = landed.logits?;
                for ((&i, l), c) in members.iter().zip(logits).zip(landed.caches) {
                    ids[i].push(hetero_models::sampling::argmax(&l));
                    caches[i] = Some(c);
                }
            }
        }
        for (c, p) in caches.iter().zip(&prompts) {
            let len = c.as_ref().map(KvCache::len);
            assert_eq!(len, Some(p.len() + steps - 1));
        }
        Ok(ids)
    })??;
    for (p, g) in prompts.iter().zip(&got) {
        let want = greedy(&one, p, steps)?;
        if *g != want {
            return Err(format!("line after {p:?}: {g:?}, one device {want:?}").into());
        }
    }
    Ok(())
}

/// A part (layers 5..10 on one device) holds no embedding or head: it
/// cannot run tokens to logits, says so, and can be timed.
fn part(path: &str) -> Result<(), Failed> {
    let ckpt = Checkpoint::open(path)?;
    let model = split(&ckpt, &[host(1)?], std::slice::from_ref(&(5..10)))?;
    assert!(!model.is_whole());
    assert_eq!(model.layers_held(), 5..10);
    let keep = model.device().capabilities().quant_types;
    assert_eq!(
        model.weight_bytes(),
        ckpt.stage_weight_bytes(&keep, 5..10, false, false, false)
    );
    let mut cache = model.new_cache(8)?;
    let err = model
        .forward(&mut cache, &[1, 2], Logits::Last)
        .expect_err("a part runs no tokens");
    assert!(err.to_string().contains("holds layers 5..10"), "{err}");
    let t = model.time_call(2, 1, 16, 2)?;
    assert!(t > 0.0 && t.is_finite());
    Ok(())
}

/// Host and a GPU adapter: equal greedy ids until the one-device model's
/// top two logits are within 0.05 (kernels of two backends round
/// differently; a wider divergence is a bug).
fn host_and_gpu(path: &str, gpu: SharedDevice) -> Result<(), Failed> {
    let ckpt = Checkpoint::open(path)?;
    let layers = ckpt.config().layers;
    let one = LlamaModel::load_as(&ckpt, host(0)?, WeightFormat::Native, &mut |_| {})?;
    let model = split(
        &ckpt,
        &[host(1)?, gpu],
        &[0..layers / 2, layers / 2..layers],
    )?;
    for p in prompts()? {
        let mut c1 = one.new_cache(p.len() + 16)?;
        let mut c2 = model.new_cache(p.len() + 16)?;
        let mut l1 = one.forward(&mut c1, &p, Logits::Last)?;
        let mut l2 = model.forward(&mut c2, &p, Logits::Last)?;
        for step in 0..16 {
            let (a, b) = (
                hetero_models::sampling::argmax(&l1),
                hetero_models::sampling::argmax(&l2),
            );
            if a != b {
                let mut sorted = l1.clone();
                sorted.sort_by(|x, y| y.total_cmp(x));
                let margin = sorted[0] - sorted[1];
                if margin >= 0.05 {
                    return Err(format!(
                        "after {p:?}, step {step}: split {b}, one device {a} (margin {margin})"
                    )
                    .into());
                }
                break;
            }
            l1 = one.forward(&mut c1, &[a], Logits::Last)?;
            l2 = model.forward(&mut c2, &[a], Logits::Last)?;
        }
    }
    Ok(())
}

/// The second stage's device has room for its weights and small caches
/// but not for the activations of a long batched prompt: the call fails
/// with its out-of-memory error (no hang), the caches stay as they were,
/// and a small call still works.
fn failing_stage(path: &str) -> Result<(), Failed> {
    let ckpt = Checkpoint::open(path)?;
    let layers = ckpt.config().layers;
    let c = ckpt.config().clone();
    let first = host(1)?;
    let keep = first.capabilities().quant_types;
    let second_bytes = ckpt.stage_weight_bytes(&keep, layers / 2..layers, false, true, true);
    // The caches the model will make there (f16 on the host by default).
    let kv = KvCacheDtype::Auto.resolve([first.as_ref()])?.size_bytes();
    let caches = 8 * 2 * (layers - layers / 2) * 64 * c.kv_heads * c.head_dim * kv;
    let second = AnyDevice::Host(
        HostDevice::builder()
            .index(2)
            .threads(1)
            .memory_budget(second_bytes + caches as u64 + (1 << 20))
            .build()?,
    )
    .shared();
    let model = split(
        &ckpt,
        &[first, second],
        &[0..layers / 2, layers / 2..layers],
    )?;
    let mut caches: Vec<KvCache> = (0..8)
        .map(|_| model.new_cache(64))
        .collect::<Result<_, _>>()?;
    let long: Vec<u32> = (0..60).map(|i| 100 + i).collect();
    let mut seqs: Vec<(&mut KvCache, &[u32])> =
        caches.iter_mut().map(|c| (c, long.as_slice())).collect();
    match model.forward_batch(&mut seqs, Logits::Last) {
        Err(e) if e.is_out_of_memory() => {}
        Err(e) => return Err(format!("expected out of memory, got {e}").into()),
        Ok(_) => return Err("a prompt batch past the second device's memory ran".into()),
    }
    if caches.iter().any(|c| !c.is_empty()) {
        return Err("a failed call advanced a cache".into());
    }
    let mut seqs: Vec<(&mut KvCache, &[u32])> =
        caches.iter_mut().map(|c| (c, &long[..2])).collect();
    let out = model.forward_batch(&mut seqs, Logits::Last)?;
    assert_eq!(out.len(), 8);

    // The same on a standing line: the long batch comes back with the
    // error and its caches as they were, and the line runs the next one.
    let longs: Vec<&[u32]> = (0..8).map(|_| long.as_slice()).collect();
    let shorts: Vec<&[u32]> = (0..4).map(|_| &long[..2]).collect();
    model.with_line(|line| -> Result<(), Failed> {
        line.send(0, caches, &longs, Logits::Last);
        let back = line.recv().ok_or("the long batch did not come back")?;
        match back.logits {
            Err(e) if e.is_out_of_memory() => {}
            other => {
                return Err(
                    format!("expected out of memory, got {:?}", other.map(|o| o.len())).into(),
                );
            }
        }
        if back.caches.iter().any(|c| c.len() != 2) {
            return Err("a failed batch advanced a cache".into());
        }
        // Half of them: the device's spare megabyte holds the logits of
        // four rows (forward_batch above cut the eight into two).
        let mut caches = back.caches;
        let rest = caches.split_off(4);
        line.send(1, caches, &shorts[..4], Logits::Last);
        let back = line.recv().ok_or("the short batch did not come back")?;
        assert_eq!(back.logits?.len(), 4);
        assert!(back.caches.iter().all(|c| c.len() == 4));
        assert!(rest.iter().all(|c| c.len() == 2));
        Ok(())
    })??;
    Ok(())
}

/// A trial on the model file.
type TrialFn = fn(&str) -> Result<(), Failed>;

fn main() {
    let args = Arguments::from_args();
    let path = std::env::var("HETERO_TEST_GGUF")
        .ok()
        .filter(|p| Path::new(p).is_file());
    let skip = |name: &str, why: &str| {
        Trial::test(name, || Ok(()))
            .with_ignored_flag(true)
            .with_kind(format!("skipped: {why}"))
    };
    let no_file = "HETERO_TEST_GGUF does not name a file";
    let mut trials = Vec::new();
    let host_cases: [(&str, Vec<Range<usize>>); 2] = [
        (
            "split::two_host_stages_equal_one_device",
            vec![0..13, 13..30],
        ),
        (
            "split::three_host_stages_equal_one_device",
            vec![0..7, 7..19, 19..30],
        ),
    ];
    for (name, ranges) in host_cases {
        match &path {
            Some(p) => {
                let p = p.clone();
                trials.push(Trial::test(name, move || host_split(&p, &ranges)));
            }
            None => trials.push(skip(name, no_file)),
        }
    }
    let cases: [(&str, TrialFn); 3] = [
        ("split::line_keeps_batches_in_flight", line),
        ("split::failing_stage_fails_the_call", failing_stage),
        ("split::a_part_is_timed_not_run", part),
    ];
    for (name, f) in cases {
        match &path {
            Some(p) => {
                let p = p.clone();
                trials.push(Trial::test(name, move || f(&p)));
            }
            None => trials.push(skip(name, no_file)),
        }
    }
    let mut notes = Vec::new();
    let gpus: Vec<AnyDevice> = discover(1, &mut |n| notes.push(n.to_string()))
        .unwrap_or_default()
        .into_iter()
        .filter(|d| !matches!(d, AnyDevice::Host(_)))
        .collect();
    for gpu in gpus {
        let info = gpu.as_dyn().info();
        let name = format!("split::host_and_{}[{}]", info.id, info.name);
        let has = gpu
            .as_dyn()
            .capabilities()
            .llama_dtypes
            .contains(&DType::F32);
        match (&path, has) {
            (Some(p), true) => {
                let p = p.clone();
                trials.push(Trial::test(name, move || host_and_gpu(&p, gpu.shared())));
            }
            (None, _) => trials.push(skip(&name, no_file)),
            (_, false) => trials.push(skip(&name, "device has no Llama-family kernels")),
        }
    }
    for note in notes {
        let backend = note.split(':').next().unwrap_or("backend").to_string();
        trials.push(skip(&format!("split::host_and_{backend}"), &note));
    }
    // Mesa's exit-time teardown can abort after every result is printed.
    let failed = libtest_mimic::run(&args, trials).has_failed();
    hetero_backends::exit_after_tests(failed);
}
