//! The decode step on host devices: deterministic, consistent with itself,
//! and errors for bad input.

#![allow(clippy::unwrap_used)] // test helpers may unwrap

use hetero_core::DynDeviceExt;
use hetero_host::HostDevice;
use hetero_scheduler::{DecodeModel, ModelShape, PositionScheme};

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

/// Serialise the synthetic weights of `shape`, optionally as f16.
fn safetensors_bytes(
    shape: &ModelShape,
    f16: bool,
    skip: Option<&str>,
    reshape: Option<&str>,
) -> Vec<u8> {
    use safetensors::tensor::{Dtype, TensorView};
    let tensors = hetero_scheduler::decode::synthetic_tensors(shape);
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .filter(|(n, _, _)| Some(n.as_str()) != skip)
        .map(|(n, mut dims, v)| {
            if Some(n.as_str()) == reshape {
                dims.reverse();
                dims.push(1);
            }
            let bytes = if f16 {
                v.iter()
                    .flat_map(|x| hetero_core::half::f16::from_f32(*x).to_le_bytes())
                    .collect()
            } else {
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            };
            (n, dims, bytes)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = encoded
        .iter()
        .map(|(n, d, b)| {
            let dtype = if f16 { Dtype::F16 } else { Dtype::F32 };
            (n.clone(), TensorView::new(dtype, d.clone(), b).unwrap())
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn safetensors_weights_load_and_match_the_synthetic_model() {
    let d = host(2);
    let shape = ModelShape::tiny();
    let mut reference = DecodeModel::new(&d, &shape, 2, 8).unwrap();
    let (want, want_next) = reference.step_with_logits(&[5, 6]).unwrap();
    let want: Vec<f32> = d.to_vec(want.as_ref()).unwrap();
    // Written as f32: identical.
    let bytes = safetensors_bytes(&shape, false, None, None);
    let mut loaded = DecodeModel::from_safetensors(&d, &shape, &bytes, 2, 8).unwrap();
    let (got, next) = loaded.step_with_logits(&[5, 6]).unwrap();
    assert_eq!(d.to_vec::<f32>(got.as_ref()).unwrap(), want);
    assert_eq!(next, want_next);
    // Written as f16: the same model up to f16 rounding of the weights.
    let bytes = safetensors_bytes(&shape, true, None, None);
    let mut half = DecodeModel::from_safetensors(&d, &shape, &bytes, 2, 8).unwrap();
    let (got, _) = half.step_with_logits(&[5, 6]).unwrap();
    let got: Vec<f32> = d.to_vec(got.as_ref()).unwrap();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 0.05, "largest logit difference {worst}");
}

#[test]
fn bad_safetensors_files_name_the_problem() {
    let d = host(1);
    let shape = ModelShape::tiny();
    let missing = safetensors_bytes(&shape, false, Some("layers.1.mlp.up.bias"), None);
    let err = DecodeModel::from_safetensors(&d, &shape, &missing, 1, 4)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("layers.1.mlp.up.bias") && err.contains("missing"),
        "{err}"
    );
    let wrong = safetensors_bytes(&shape, false, None, Some("embed.weight"));
    let err = DecodeModel::from_safetensors(&d, &shape, &wrong, 1, 4)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("embed.weight") && err.contains("shape"),
        "{err}"
    );
    let err = DecodeModel::from_safetensors(&d, &shape, b"not a file", 1, 4)
        .unwrap_err()
        .to_string();
    assert!(err.contains("safetensors"), "{err}");
}

/// Row `row` of the synthetic tensor `name` of `shape`.
fn synthetic_row(shape: &ModelShape, name: &str, row: usize) -> Vec<f32> {
    let h = shape.hidden;
    let (_, _, values) = hetero_scheduler::decode::synthetic_tensors(shape)
        .into_iter()
        .find(|(n, _, _)| n == name)
        .unwrap();
    values[row * h..(row + 1) * h].to_vec()
}

#[test]
fn learned_positions_are_read_at_the_models_offset() {
    let d = host(1);
    let (token, p) = (7usize, 5usize);
    for offset in [0usize, 2] {
        let mut shape = ModelShape::tiny();
        shape.positions = PositionScheme::Learned { offset };
        let mut model = DecodeModel::new(&d, &shape, 1, 16).unwrap();
        model.set_context(p).unwrap();
        let x: Vec<f32> = d
            .to_vec(model.embed_tokens(&[token as u32]).unwrap().as_ref())
            .unwrap();
        let embed = synthetic_row(&shape, "embed.weight", token);
        let row = |r: usize| -> Vec<f32> {
            let pos = synthetic_row(&shape, "positions.weight", r);
            embed.iter().zip(&pos).map(|(e, q)| e + q).collect()
        };
        let close = |want: &[f32]| x.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6);
        assert!(
            close(&row(p + offset)),
            "offset {offset}: not row p + offset"
        );
        if offset > 0 {
            // The rows differ, so this tells the offset was used.
            assert!(!close(&row(p)), "offset {offset}: row p was read");
        }
    }
}

#[test]
fn the_offset_shortens_the_sequences_the_table_holds() {
    let d = host(1);
    // OPT-125m: 2050 rows from offset 2 are 2048 positions (checked before
    // any weight is allocated).
    let err = DecodeModel::new(&d, &ModelShape::opt_125m(), 1, 2049)
        .unwrap_err()
        .to_string();
    assert!(err.contains("2048 positions"), "{err}");
    let mut shape = ModelShape::tiny();
    shape.max_positions = 10;
    shape.positions = PositionScheme::Learned { offset: 2 };
    let err = DecodeModel::new(&d, &shape, 1, 9).unwrap_err().to_string();
    assert!(err.contains("8 positions"), "{err}");
    // All 8 positions decode (the last reads the table's last row); the
    // ninth token is refused as a full sequence, not a read past the table.
    let mut model = DecodeModel::new(&d, &shape, 1, 8).unwrap();
    for _ in 0..8 {
        model.step(&[3]).unwrap();
    }
    let err = model.step(&[3]).unwrap_err().to_string();
    assert!(err.contains("full"), "{err}");
}

fn alibi_tiny() -> ModelShape {
    ModelShape {
        name: "alibi-tiny".into(),
        max_positions: 0,
        positions: PositionScheme::Alibi,
        ..ModelShape::tiny()
    }
}

#[test]
fn alibi_models_are_unsupported_for_decoding() {
    let d = host(1);
    let shape = alibi_tiny();
    let err = DecodeModel::new(&d, &shape, 1, 4).unwrap_err();
    assert!(err.is_unsupported(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("alibi-tiny") && msg.contains("ALiBi"), "{msg}");
    assert!(
        DecodeModel::implements(&shape)
            .unwrap_err()
            .is_unsupported()
    );
    assert!(DecodeModel::implements(&ModelShape::opt_125m()).is_ok());
    // Real weights for an ALiBi model would be decoded wrongly: refused
    // even when the file is complete.
    let bytes = safetensors_bytes(&shape, false, None, None);
    let err = DecodeModel::from_safetensors(&d, &shape, &bytes, 1, 4).unwrap_err();
    assert!(err.is_unsupported(), "{err}");
    // bloom-3b itself, before any parsing or allocation.
    let bloom = ModelShape::bloom_3b();
    for err in [
        DecodeModel::from_safetensors(&d, &bloom, b"", 1, 4).unwrap_err(),
        DecodeModel::new(&d, &bloom, 1, 4).unwrap_err(),
    ] {
        assert!(err.is_unsupported(), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("bloom-3b") && msg.contains("ALiBi"), "{msg}");
    }
}

#[test]
fn an_alibi_shape_still_runs_as_an_explicit_synthetic_stand_in() {
    let d = host(1);
    let shape = alibi_tiny();
    let mut model = DecodeModel::synthetic_stand_in(&d, &shape, 2, 4).unwrap();
    let next = model.step(&[1, 2]).unwrap();
    assert_eq!(next.len(), 2);
    // Synthetic serving (timing and memory) keeps working for such a shape.
    let devices: Vec<&dyn hetero_core::DynDevice> = vec![&d];
    let report = hetero_scheduler::serve(&devices, &shape, &[2], 2, 2).unwrap();
    assert_eq!(report.first_sequence_tokens[0].len(), 2);
    // For learned positions the stand-in is the model itself.
    let tiny = ModelShape::tiny();
    let mut a = DecodeModel::new(&d, &tiny, 1, 4).unwrap();
    let mut b = DecodeModel::synthetic_stand_in(&d, &tiny, 1, 4).unwrap();
    assert_eq!(a.step(&[9]).unwrap(), b.step(&[9]).unwrap());
}
