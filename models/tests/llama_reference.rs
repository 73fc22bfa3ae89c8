//! The Llama-family forward pass against the numpy reference
//! (`tests/fixtures/make_llama_fixtures.py`, float64 over the stored
//! weights), on every device found that has the Llama kernels: the host
//! always, wgpu adapters (lavapipe / llvmpipe here) and CUDA GPUs when
//! present. A device without the kernels is listed as skipped with the reason.
//!
//! Four tiny models cover both formats and both architectures: a sharded
//! Hugging Face Llama (bf16 / f32 / f16 tensors, Llama 3 rope scaling,
//! separate output matrix), its GGUF conversion (adjacent rotary, Q8_0 /
//! Q4_1 / Q4_0 / F16 tensors), and a Qwen2 in both formats (Q/K/V biases,
//! tied output). Checked: the logits of every prompt position (one batched
//! prefill), then eight greedy steps token for token with their logits.

use std::path::{Path, PathBuf};

use hetero_backends::{AnyDevice, discover};
use hetero_core::DType;
use hetero_models::llama::KvCacheDtype;
use hetero_models::sampling::argmax;
use hetero_models::{Checkpoint, LlamaModel, Logits, WeightFormat};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::Value;

const MODELS: [&str; 4] = ["tiny_llama_hf", "tiny_llama", "tiny_qwen2_hf", "tiny_qwen2"];

/// f32 against float64: the tolerance is far below the effect of the
/// Llama 3 scaling on these prompts (6.6e-3) and of any layout mistake.
const TOL: f64 = 1e-3;

/// The same path with an f16 KV cache: keys and values rounded to 11
/// significant bits moved logits of all four models past `TOL` (the first
/// seen: 1.2e-3 on a logit of 0.37); the greedy ids must stay the
/// reference's.
const F16_CACHE_TOL: f64 = 3e-3;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama")
}

fn close(what: &str, got: &[f32], want: &Value, tol: f64) -> Result<(), Failed> {
    let want: Vec<f64> = want
        .as_array()
        .ok_or("fixture logits are not a list")?
        .iter()
        .map(|v| v.as_f64().unwrap_or(f64::NAN))
        .collect();
    if got.len() != want.len() {
        return Err(format!("{what}: {} logits, want {}", got.len(), want.len()).into());
    }
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        if (g as f64 - w).abs() > tol * w.abs().max(1.0) {
            return Err(format!("{what}: logit {i} is {g}, reference {w}").into());
        }
    }
    Ok(())
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect()
        })
        .unwrap_or_default()
}

fn check(device: &AnyDevice, name: &str, kv: KvCacheDtype) -> Result<(), Failed> {
    let dir = fixtures();
    let reference: Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.reference.json")))?)?;
    let path = if name.ends_with("_hf") {
        dir.join(name)
    } else {
        dir.join(format!("{name}.gguf"))
    };
    let checkpoint = Checkpoint::open(&path)?;
    // The f32 path is the one held to the float64 reference's tolerance;
    // quantized kernels are checked against it in smollm2_generate.
    let mut model =
        LlamaModel::load_as(&checkpoint, device.shared(), WeightFormat::F32, &mut |_| {})?;
    model.set_kv_cache_dtype(kv)?;
    let tol = if kv == KvCacheDtype::F16 {
        F16_CACHE_TOL
    } else {
        TOL
    };
    let vocab = model.config().vocab;
    for (c, case) in reference["cases"]
        .as_array()
        .ok_or("no cases")?
        .iter()
        .enumerate()
    {
        let prompt = ids(&case["prompt_ids"]);
        let mut cache = model.new_cache(prompt.len() + 8)?;
        let all = model.forward(&mut cache, &prompt, Logits::All)?;
        for (p, want) in case["prefill_logits"]
            .as_array()
            .ok_or("no prefill logits")?
            .iter()
            .enumerate()
        {
            close(
                &format!("case {c} prefill position {p}"),
                &all[p * vocab..(p + 1) * vocab],
                want,
                tol,
            )?;
        }
        let greedy = ids(&case["greedy_ids"]);
        let steps = case["step_logits"].as_array().ok_or("no step logits")?;
        let mut logits = all[(prompt.len() - 1) * vocab..].to_vec();
        for (s, &want_id) in greedy.iter().enumerate() {
            close(
                &format!("case {c} greedy step {s}"),
                &logits,
                &steps[s],
                tol,
            )?;
            let id = argmax(&logits);
            if id != want_id {
                return Err(
                    format!("case {c} step {s}: greedy id {id}, reference {want_id}").into(),
                );
            }
            logits = model.forward(&mut cache, &[id], Logits::Last)?;
        }
    }
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let mut notes = Vec::new();
    let devices = discover(1, &mut |n| notes.push(n.to_string())).unwrap_or_default();
    let mut trials = Vec::new();
    for device in devices {
        let info = device.as_dyn().info();
        let label = format!("{}[{}]", info.id, info.name);
        let caps = device.as_dyn().capabilities();
        let have = caps.llama_dtypes.contains(&DType::F32);
        let f16 = caps.kv_cache_takes(DType::F16);
        for name in MODELS {
            for (suffix, kv, ok, why) in [
                (
                    "",
                    KvCacheDtype::F32,
                    have,
                    "skipped: device has no Llama-family kernels",
                ),
                (
                    "_f16_cache",
                    KvCacheDtype::F16,
                    have && f16,
                    "skipped: device reads no f16 KV caches",
                ),
            ] {
                let test_name = format!("{label}::{name}{suffix}");
                if ok {
                    let device = device.clone();
                    trials.push(Trial::test(test_name, move || check(&device, name, kv)));
                } else {
                    trials.push(
                        Trial::test(test_name, || Ok(()))
                            .with_ignored_flag(true)
                            .with_kind(why),
                    );
                }
            }
        }
    }
    // A backend that found no device lists the models as skipped, with its reason.
    for note in notes {
        let backend = note.split(':').next().unwrap_or("backend").to_string();
        for name in MODELS {
            let reason = format!("skipped: {note}");
            trials.push(
                Trial::test(format!("{backend}::{name}"), || Ok(()))
                    .with_ignored_flag(true)
                    .with_kind(reason),
            );
        }
    }
    // Mesa's exit-time teardown can abort after every result is printed.
    let failed = libtest_mimic::run(&args, trials).has_failed();
    hetero_backends::exit_after_tests(failed);
}
