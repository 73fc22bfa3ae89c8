//! SmolLM2-135M-Instruct (Q4_1 GGUF, `HETERO_TEST_GGUF`) against the numpy
//! reference of `tests/fixtures/make_llama_fixtures.py`
//! (`fixtures/llama/smollm2_reference.json`): the chat template rendered
//! as transformers renders it, the prompt ids, the top logits of the first
//! steps, and the greedy continuation of four prompts token for token, on
//! every device with the Llama kernels (the host, lavapipe, llvmpipe GL,
//! CUDA when present). Without the file every test is listed as skipped
//! with the reason.

use std::path::Path;

use hetero_backends::{AnyDevice, discover};
use hetero_core::{DType, QuantType};
use hetero_models::llama::KvCacheDtype;
use hetero_models::{
    ChatTemplate, Checkpoint, FinishReason, GenerateOptions, LlamaModel, Logits, Message,
    WeightFormat, generate,
};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::Value;

fn reference() -> Result<Value, Failed> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama/smollm2_reference.json");
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
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

fn chat_and_tokens(path: &str) -> Result<(), Failed> {
    let r = reference()?;
    let ckpt = Checkpoint::open(path)?;
    let tok = ckpt.tokenizer()?;
    let template =
        ChatTemplate::for_checkpoint(&ckpt, &tok)?.ok_or("the file has no chat template")?;
    for conv in r["chat"].as_array().ok_or("no chat cases")? {
        let messages: Vec<Message> = conv["messages"]
            .as_array()
            .ok_or("no messages")?
            .iter()
            .map(|m| {
                Message::new(
                    m["role"].as_str().unwrap_or(""),
                    m["content"].as_str().unwrap_or(""),
                )
            })
            .collect();
        let text = template.render(
            &messages,
            conv["add_generation_prompt"].as_bool().unwrap_or(false),
        )?;
        assert_eq!(text, conv["text"].as_str().ok_or("no text")?);
    }
    for case in r["cases"].as_array().ok_or("no cases")? {
        let text = case["text"].as_str().ok_or("no text")?;
        assert_eq!(
            tok.encode(text, false)?,
            ids(&case["prompt_ids"]),
            "{text:?}"
        );
    }
    Ok(())
}

/// The f32 path (f32 weights, KV cache in `kv`) against the float64
/// reference: the top logits of the first steps within `tol`, and the
/// greedy continuation token for token.
fn greedy(device: &AnyDevice, path: &str, kv: KvCacheDtype) -> Result<(), Failed> {
    let r = reference()?;
    let ckpt = Checkpoint::open(path)?;
    let tok = ckpt.tokenizer()?;
    let mut model = LlamaModel::load_as(&ckpt, device.shared(), WeightFormat::F32, &mut |_| {})?;
    model.set_kv_cache_dtype(kv)?;
    // f32 sums against float64; an f16 cache adds its rounding of the keys
    // and values (measured on these prompts: see F16_CACHE_TOL).
    let tol = if kv == KvCacheDtype::F16 {
        F16_CACHE_TOL
    } else {
        2e-3
    };
    let mut worst = 0.0f64;
    let stop_ids = ids(&r["stop_ids"]);
    for case in r["cases"].as_array().ok_or("no cases")? {
        let prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["greedy_ids"]);
        // The top logits of the first steps, within f32's reach of float64.
        let mut cache = model.new_cache(prompt.len() + 4)?;
        let mut logits = model.forward(&mut cache, &prompt, Logits::Last)?;
        for (s, step) in case["top_logits"]
            .as_array()
            .ok_or("no top logits")?
            .iter()
            .enumerate()
        {
            for pair in step.as_array().ok_or("bad top logits")? {
                let (id, w) = (
                    pair[0].as_u64().ok_or("bad id")? as usize,
                    pair[1].as_f64().ok_or("bad logit")?,
                );
                let g = logits[id] as f64;
                worst = worst.max((g - w).abs() / w.abs().max(1.0));
                if (g - w).abs() > tol * w.abs().max(1.0) {
                    return Err(format!(
                        "{:?} step {s}: logit of {id} is {g}, reference {w}",
                        case["text"]
                    )
                    .into());
                }
            }
            logits = model.forward(&mut cache, &[want[s]], Logits::Last)?;
        }
        let options = GenerateOptions {
            max_tokens: want.len(),
            stop_ids: stop_ids.clone(),
            ..GenerateOptions::default()
        };
        let mut streamed = String::new();
        let g = generate(&model, &tok, &prompt, &options, &mut |t| {
            streamed.push_str(t)
        })?;
        let mut got = g.ids.clone();
        if let FinishReason::EndOfSequence(id) = g.finish_reason {
            got.push(id);
        }
        if got != want {
            return Err(format!(
                "{:?}: greedy ids {got:?}\nreference {want:?}\n(text {:?})",
                case["text"], g.text
            )
            .into());
        }
        assert_eq!(streamed, g.text);
    }
    eprintln!("{kv} cache: top logits within {worst:.2e} (relative) of the float64 reference");
    Ok(())
}

/// Relative error of the top logits with an f16 KV cache (f32 weights)
/// against the float64 reference that the test allows (measured on the
/// host: 6.6e-4; with f32 caches 3.4e-6).
const F16_CACHE_TOL: f64 = 2e-3;

/// The weights kept in their blocks (Q4_1, and the Q8_0 embedding / tied
/// output) on a device with kernels for them: resident bytes equal the
/// file's tensor bytes, the top logits of the first steps stay near the
/// float64 reference, and the greedy continuation equals the reference's
/// token for token wherever the reference's top two logits are more than
/// 1e-3 apart (the rule: a divergence at a wider margin is a bug).
fn quantized_greedy(device: &AnyDevice, path: &str) -> Result<(), Failed> {
    let r = reference()?;
    let ckpt = Checkpoint::open(path)?;
    let model = LlamaModel::load_as(&ckpt, device.shared(), WeightFormat::Native, &mut |_| {})?;
    let gguf = ckpt.gguf().ok_or("not a GGUF file")?;
    let file_bytes: u64 = gguf
        .tensors()
        .iter()
        .map(|t| gguf.tensor_bytes(&t.name).map(|b| b.len() as u64))
        .sum::<Result<u64, _>>()?;
    if model.weight_bytes() != file_bytes {
        return Err(format!(
            "resident weights {} bytes, the file's tensors {file_bytes}",
            model.weight_bytes()
        )
        .into());
    }
    let mut worst = 0.0f64;
    for case in r["cases"].as_array().ok_or("no cases")? {
        let prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["greedy_ids"]);
        let margins: Vec<f64> = case["margins"]
            .as_array()
            .ok_or("no margins")?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        let mut cache = model.new_cache(prompt.len() + want.len())?;
        let mut logits = model.forward(&mut cache, &prompt, Logits::Last)?;
        let tops = case["top_logits"].as_array().ok_or("no top logits")?;
        for (s, &want_id) in want.iter().enumerate() {
            if let Some(step) = tops.get(s).and_then(Value::as_array) {
                for pair in step {
                    let (id, w) = (
                        pair[0].as_u64().ok_or("bad id")? as usize,
                        pair[1].as_f64().ok_or("bad logit")?,
                    );
                    worst = worst.max((logits[id] as f64 - w).abs());
                }
            }
            let got = hetero_models::sampling::argmax(&logits);
            if got != want_id {
                let margin = margins.get(s).copied().unwrap_or(0.0);
                if margin >= 1e-3 {
                    return Err(format!(
                        "{:?} step {s}: greedy id {got}, reference {want_id} \
                         (reference margin {margin:.4})",
                        case["text"]
                    )
                    .into());
                }
                // A near tie: the continuations may part here.
                break;
            }
            logits = model.forward(&mut cache, &[got], Logits::Last)?;
        }
    }
    // Rounding activations to 8 bits moves logits by a few hundredths.
    if worst > 0.25 {
        return Err(format!("top logits differ from the reference by up to {worst:.4}").into());
    }
    eprintln!("quantized: top logits within {worst:.4} of the float64 reference");
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let path = std::env::var("HETERO_TEST_GGUF")
        .ok()
        .filter(|p| Path::new(p).is_file());
    let mut trials = Vec::new();
    let mut notes = Vec::new();
    let devices = discover(1, &mut |n| notes.push(n.to_string())).unwrap_or_default();
    let skip = |name: String, why: String| {
        Trial::test(name, || Ok(()))
            .with_ignored_flag(true)
            .with_kind(format!("skipped: {why}"))
    };
    match &path {
        Some(p) => {
            let p = p.clone();
            trials.push(Trial::test(
                "smollm2::chat_template_and_prompt_ids",
                move || chat_and_tokens(&p),
            ));
        }
        None => trials.push(skip(
            "smollm2::chat_template_and_prompt_ids".into(),
            "HETERO_TEST_GGUF does not name a file".into(),
        )),
    }
    for device in devices {
        let info = device.as_dyn().info();
        let name = format!(
            "smollm2::greedy_matches_reference::{}[{}]",
            info.id, info.name
        );
        let have = device
            .as_dyn()
            .capabilities()
            .llama_dtypes
            .contains(&DType::F32);
        let quant_name = format!(
            "smollm2::quantized_greedy_matches_reference::{}[{}]",
            info.id, info.name
        );
        let has_quant = {
            let q = device.as_dyn().capabilities().quant_types;
            q.contains(&QuantType::Q4_1) && q.contains(&QuantType::Q8_0)
        };
        match (&path, have && has_quant) {
            (Some(p), true) => {
                let (p, device) = (p.clone(), device.clone());
                trials.push(Trial::test(quant_name, move || {
                    quantized_greedy(&device, &p)
                }));
            }
            (None, _) => trials.push(skip(
                quant_name,
                "HETERO_TEST_GGUF does not name a file".into(),
            )),
            (_, false) => trials.push(skip(quant_name, "device has no Q4_1 / Q8_0 kernels".into())),
        }
        // The f16 cache's error against float64, with f32 weights, where
        // the run is short: on the host. Elsewhere the quantized trial
        // above runs on f16 caches (the default where a device reads them)
        // and the device suite checks the f16 attention itself; f32
        // weights on a software adapter take minutes per trial.
        let f16_name = format!("{name}::f16_cache");
        let f16 = device.as_dyn().capabilities().kv_cache_takes(DType::F16)
            && info.id.backend == hetero_core::Backend::Host;
        match (&path, have && f16) {
            (Some(p), true) => {
                let (p, device) = (p.clone(), device.clone());
                trials.push(Trial::test(f16_name, move || {
                    greedy(&device, &p, KvCacheDtype::F16)
                }));
            }
            (None, _) => trials.push(skip(
                f16_name,
                "HETERO_TEST_GGUF does not name a file".into(),
            )),
            (_, false) => trials.push(skip(
                f16_name,
                "run on the host only (f32 weights on this device: minutes per trial)".into(),
            )),
        }
        match (&path, have) {
            (Some(p), true) => {
                let p = p.clone();
                trials.push(Trial::test(name, move || {
                    greedy(&device, &p, KvCacheDtype::F32)
                }));
            }
            (None, _) => trials.push(skip(name, "HETERO_TEST_GGUF does not name a file".into())),
            (_, false) => trials.push(skip(name, "device has no Llama-family kernels".into())),
        }
    }
    for note in notes {
        let backend = note.split(':').next().unwrap_or("backend").to_string();
        trials.push(skip(
            format!("smollm2::greedy_matches_reference::{backend}"),
            note,
        ));
    }
    // Mesa's exit-time teardown can abort after every result is printed.
    let failed = libtest_mimic::run(&args, trials).has_failed();
    hetero_backends::exit_after_tests(failed);
}
