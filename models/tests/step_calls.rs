//! A step's device calls do not grow with the batch: the model makes the
//! same calls, operation by operation, for a decode step of 2, 3 or 8
//! sequences (one sequence skips a gather) and for a prefill of 1 or 4 prompts of different lengths (the
//! tiny GGUF Llama with its quantized weights, on the host behind a
//! `CountingDevice`). On a GPU each call is a fixed number of launches
//! (CUDA's `append_and_attend`: one table copy and two kernels), so a step
//! is a fixed number of launches per layer whatever the batch. The logits
//! of the batched step are also checked against each sequence run alone.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use hetero_backends::host::HostDevice;
use hetero_core::{CountingDevice, SharedDevice};
use hetero_models::{Checkpoint, KvCache, LlamaModel, Logits, WeightFormat};

const PROMPTS: [&[u32]; 8] = [
    &[1, 5, 9, 2],
    &[3, 4],
    &[7, 1, 1, 8, 2, 6],
    &[2],
    &[9, 9, 3],
    &[4, 6, 1, 2, 5],
    &[8, 7],
    &[5, 3, 2, 1, 7, 6, 4],
];

fn model() -> (LlamaModel, Arc<CountingDevice>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama/tiny_llama.gguf");
    let checkpoint = Checkpoint::open(&path).expect("the tiny GGUF fixture opens");
    let host: SharedDevice = Arc::new(HostDevice::builder().build().expect("a host device"));
    let counting = Arc::new(CountingDevice::new(host));
    let shared: SharedDevice = counting.clone();
    let model = LlamaModel::load_as(&checkpoint, shared, WeightFormat::Native, &mut |_| {})
        .expect("the tiny model loads");
    (model, counting)
}

/// The calls of one batched step of `prompts[..n]` (prefilled first, one
/// at a time, when `decode`), and its logits.
fn step_calls(
    model: &LlamaModel,
    counting: &CountingDevice,
    n: usize,
    decode: bool,
) -> (BTreeMap<&'static str, u64>, Vec<Vec<f32>>) {
    let mut caches: Vec<KvCache> = (0..n)
        .map(|_| model.new_cache(16).expect("a cache"))
        .collect();
    if decode {
        for (cache, prompt) in caches.iter_mut().zip(PROMPTS) {
            model.forward(cache, prompt, Logits::Last).expect("prefill");
        }
    }
    let next: Vec<[u32; 1]> = (0..n).map(|i| [(i as u32 * 3 + 1) % 10]).collect();
    let mut seqs: Vec<(&mut KvCache, &[u32])> = caches
        .iter_mut()
        .zip(0..n)
        .map(|(c, i)| (c, if decode { &next[i][..] } else { PROMPTS[i] }))
        .collect();
    counting.reset();
    let logits = model
        .forward_batch(&mut seqs, Logits::Last)
        .expect("the batched step");
    (counting.calls(), logits)
}

#[test]
fn decode_step_calls_do_not_grow_with_the_batch() {
    let (model, counting) = model();
    // One sequence of one row skips the gather of last rows: one call fewer.
    let (one, _) = step_calls(&model, &counting, 1, true);
    let (two, _) = step_calls(&model, &counting, 2, true);
    assert!(
        two.get("append_and_attend").copied().unwrap_or(0) > 0,
        "{two:?}"
    );
    assert!(
        one.values().sum::<u64>() <= two.values().sum::<u64>(),
        "{one:?} {two:?}"
    );
    for n in [3, 8] {
        let (calls, logits) = step_calls(&model, &counting, n, true);
        assert_eq!(calls, two, "a decode step of {n} sequences against two");
        // Each sequence's logits as if it ran alone.
        for (i, got) in logits.iter().enumerate() {
            let mut cache = model.new_cache(16).expect("a cache");
            model
                .forward(&mut cache, PROMPTS[i], Logits::Last)
                .expect("prefill");
            let alone = model
                .forward(&mut cache, &[(i as u32 * 3 + 1) % 10], Logits::Last)
                .expect("the step alone");
            let worst = got
                .iter()
                .zip(&alone)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst < 1e-3,
                "sequence {i} of {n}: logits differ by {worst}"
            );
        }
    }
}

#[test]
fn prefill_calls_do_not_grow_with_the_batch() {
    let (model, counting) = model();
    let (one, _) = step_calls(&model, &counting, 1, false);
    let (four, _) = step_calls(&model, &counting, 4, false);
    assert_eq!(four, one, "a prefill of four prompts against one");
}
