//! The decode step on host devices: deterministic, consistent with itself,
//! and errors for bad input.

#![allow(clippy::unwrap_used)] // test helpers may unwrap

use hetero_core::DynDeviceExt;
use hetero_host::HostDevice;
use hetero_scheduler::{DecodeModel, ModelShape};

fn host(threads: usize) -> HostDevice {
    HostDevice::builder()
        .threads(threads)
        .memory_budget(256 << 20)
        .build()
        .unwrap()
}

fn generate(device: &HostDevice, steps: usize) -> Vec<Vec<u32>> {
    let mut model = DecodeModel::new(device, &ModelShape::tiny(), 3, 32).unwrap();
    let mut tokens = vec![1u32, 100, 511];
    let mut out = Vec::new();
    for _ in 0..steps {
        tokens = model.step(&tokens).unwrap();
        out.push(tokens.clone());
    }
    assert_eq!(model.lens(), &[steps as u32; 3]);
    out
}

#[test]
fn greedy_decoding_is_deterministic_across_thread_counts() {
    let a = generate(&host(1), 6);
    let b = generate(&host(2), 6);
    assert_eq!(a, b);
    // The sequences do not all collapse to one token: the model is not degenerate.
    let distinct: std::collections::BTreeSet<u32> = a.iter().flatten().copied().collect();
    assert!(distinct.len() > 2, "{a:?}");
}

#[test]
fn logits_are_finite_and_the_argmax_is_their_maximum() {
    let d = host(2);
    let mut model = DecodeModel::new(&d, &ModelShape::tiny(), 2, 8).unwrap();
    let (logits, next) = model.step_with_logits(&[3, 4]).unwrap();
    let values: Vec<f32> = d.to_vec(logits.as_ref()).unwrap();
    assert!(values.iter().all(|v| v.is_finite()));
    for (row, &n) in values.chunks(512).zip(&next) {
        let max = row.iter().copied().fold(f32::MIN, f32::max);
        assert_eq!(row[n as usize], max);
    }
}

#[test]
fn bad_input_is_an_error() {
    let d = host(1);
    let mut model = DecodeModel::new(&d, &ModelShape::tiny(), 2, 2).unwrap();
    assert!(model.step(&[1]).is_err(), "wrong batch");
    assert!(model.step(&[1, 9999]).is_err(), "token past the vocabulary");
    model.step(&[1, 2]).unwrap();
    model.step(&[1, 2]).unwrap();
    let full = model.step(&[1, 2]).unwrap_err().to_string();
    assert!(full.contains("full"), "{full}");
    model.reset();
    model.step(&[1, 2]).unwrap();
    assert!(DecodeModel::new(&d, &ModelShape::tiny(), 0, 2).is_err());
}

#[test]
fn lock_step_serving_on_two_host_devices_is_deterministic() {
    let a = host(1);
    let b = host(2);
    let devices: Vec<&dyn hetero_core::DynDevice> = vec![&a, &b];
    let model = ModelShape::tiny();
    let first = hetero_scheduler::serve(&devices, &model, &[2, 3], 4, 5).unwrap();
    let again = hetero_scheduler::serve(&devices, &model, &[2, 3], 4, 5).unwrap();
    assert_eq!(first.first_sequence_tokens, again.first_sequence_tokens);
    assert_eq!(first.first_sequence_tokens[0].len(), 5);
    assert!(first.tokens_per_s > 0.0 && first.per_token_latency_s > 0.0);
    // An idle device takes no part; a batch/device mismatch is an error.
    let idle = hetero_scheduler::serve(&devices, &model, &[0, 3], 2, 2).unwrap();
    assert!(idle.first_sequence_tokens[0].is_empty());
    assert!(hetero_scheduler::serve(&devices, &model, &[1], 2, 2).is_err());
}
