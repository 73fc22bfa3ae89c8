//! A batch-invariant host device (`HostDeviceBuilder::batch_invariant`)
//! runs the real SmolLM2 model so that a sequence's logits do not depend
//! on its company: prompts prefilled together, then decoded together, give
//! bit for bit the logits of each sequence run alone, and a prompt fed in
//! two chunks (as chunked prefill and the prefix cache do) those of the
//! prompt fed whole. Skipped with the reason without `HETERO_TEST_GGUF`.

use std::path::Path;
use std::sync::Arc;

use hetero_backends::host::HostDevice;
use hetero_core::SharedDevice;
use hetero_models::{Checkpoint, KvCache, LlamaModel, Logits, WeightFormat};
use libtest_mimic::{Arguments, Failed, Trial};

const PROMPTS: [&[u32]; 3] = [
    &[1, 9690, 198, 2683, 359, 253, 5356, 5646],
    &[504, 3575, 282, 4649, 314],
    &[1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198],
];

fn main() {
    let args = Arguments::from_args();
    let path = std::env::var("HETERO_TEST_GGUF")
        .ok()
        .filter(|p| Path::new(p).is_file());
    let name = "batch_invariant::logits_do_not_depend_on_the_batch";
    let trial = match path {
        Some(p) => Trial::test(name, move || run(&p)),
        None => Trial::test(name, || Ok(()))
            .with_ignored_flag(true)
            .with_kind("skipped: HETERO_TEST_GGUF does not name a file"),
    };
    libtest_mimic::run(&args, vec![trial]).exit();
}

fn argmax(l: &[f32]) -> u32 {
    hetero_models::sampling::argmax(l)
}

fn same(what: &str, a: &[f32], b: &[f32]) -> Result<(), Failed> {
    if a.len() != b.len() {
        return Err(format!("{what}: {} logits vs {}", a.len(), b.len()).into());
    }
    match a
        .iter()
        .zip(b)
        .position(|(x, y)| x.to_bits() != y.to_bits())
    {
        None => Ok(()),
        Some(i) => Err(format!("{what}: logit {i} is {} vs {} alone", a[i], b[i]).into()),
    }
}

fn run(path: &str) -> Result<(), Failed> {
    let ckpt = Checkpoint::open(path)?;
    let device: SharedDevice = Arc::new(
        HostDevice::builder()
            .threads(2)
            .memory_budget(1 << 30)
            .batch_invariant(true)
            .build()?,
    );
    let model = LlamaModel::load_as(&ckpt, device, WeightFormat::Native, &mut |_| {})?;
    let steps = 3;
    // Alone: each prompt whole, then its greedy tokens one at a time.
    let mut alone: Vec<Vec<Vec<f32>>> = Vec::new();
    for p in PROMPTS {
        let mut cache = model.new_cache(p.len() + steps)?;
        let mut logits = vec![model.forward(&mut cache, p, Logits::Last)?];
        for s in 0..steps {
            let next = argmax(&logits[s]);
            logits.push(model.forward(&mut cache, &[next], Logits::Last)?);
        }
        alone.push(logits);
    }
    // Together: the prompts in one batch, then every decode step batched.
    let mut caches: Vec<KvCache> = PROMPTS
        .iter()
        .map(|p| model.new_cache(p.len() + steps))
        .collect::<Result<_, _>>()?;
    let mut feed: Vec<Vec<u32>> = PROMPTS.iter().map(|p| p.to_vec()).collect();
    #[allow(clippy::needless_range_loop)] // s is the step of every sequence's logits
    for s in 0..=steps {
        let mut seqs: Vec<(&mut KvCache, &[u32])> = caches
            .iter_mut()
            .zip(&feed)
            .map(|(c, f)| (c, f.as_slice()))
            .collect();
        let out = model.forward_batch(&mut seqs, Logits::Last)?;
        for (i, l) in out.iter().enumerate() {
            same(&format!("prompt {i}, step {s}, batched"), l, &alone[i][s])?;
        }
        feed = out.iter().map(|l| vec![argmax(l)]).collect();
    }
    // Chunked: the longest prompt in two parts.
    let p = PROMPTS[2];
    let mut cache = model.new_cache(p.len())?;
    model.forward(&mut cache, &p[..5], Logits::Last)?;
    let l = model.forward(&mut cache, &p[5..], Logits::Last)?;
    same("prompt 2 fed in two chunks", &l, &alone[2][0])?;
    Ok(())
}
