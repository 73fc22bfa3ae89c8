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
use hetero_core::DType;
use hetero_models::{
    ChatTemplate, Checkpoint, FinishReason, GenerateOptions, LlamaModel, Logits, Message, generate,
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

fn greedy(device: &AnyDevice, path: &str) -> Result<(), Failed> {
    let r = reference()?;
    let ckpt = Checkpoint::open(path)?;
    let tok = ckpt.tokenizer()?;
    let model = LlamaModel::load(&ckpt, device.shared(), &mut |_| {})?;
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
                if (g - w).abs() > 2e-3 * w.abs().max(1.0) {
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
        match (&path, have) {
            (Some(p), true) => {
                let p = p.clone();
                trials.push(Trial::test(name, move || greedy(&device, &p)));
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
    libtest_mimic::run(&args, trials).exit();
}
