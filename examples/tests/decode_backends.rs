//! One decode step on every accelerator found matches the host reference:
//! logits within a relative 1e-3 (different summation orders and
//! transcendental functions), and the same next token wherever the top two
//! logits are more than 1e-2 apart. Without accelerators the check is
//! listed as ignored with the reason.

use hetero_backends::{AnyDevice, discover};
use hetero_core::{DynDevice, DynDeviceExt};
use hetero_scheduler::{DecodeModel, ModelShape};
use libtest_mimic::{Arguments, Failed, Trial};

const STEPS: usize = 4;
const BATCH: usize = 3;

/// Each step's logits and next tokens.
type Trace = Vec<(Vec<f32>, Vec<u32>)>;

fn run(device: &dyn DynDevice) -> Result<Trace, Failed> {
    let shape = ModelShape::tiny();
    let mut model = DecodeModel::new(device, &shape, BATCH, 16)?;
    let mut tokens = vec![7u32, 42, 300];
    let mut out = Vec::new();
    for _ in 0..STEPS {
        let (logits, next) = model.step_with_logits(&tokens)?;
        out.push((device.to_vec::<f32>(logits.as_ref())?, next.clone()));
        // Both sides feed the host's tokens, so one near-tie cannot send
        // the two runs down different paths.
        tokens = next;
    }
    Ok(out)
}

fn compare(device: &dyn DynDevice, host: &[(Vec<f32>, Vec<u32>)]) -> Result<(), Failed> {
    let shape = ModelShape::tiny();
    let mut model = DecodeModel::new(device, &shape, BATCH, 16)?;
    let mut tokens = vec![7u32, 42, 300];
    for (step, (want_logits, want_next)) in host.iter().enumerate() {
        let (logits, next) = model.step_with_logits(&tokens)?;
        let got: Vec<f32> = device.to_vec(logits.as_ref())?;
        for (i, (g, w)) in got.iter().zip(want_logits).enumerate() {
            if (g - w).abs() > 1e-3 * w.abs().max(1.0) {
                return Err(format!("step {step}: logit {i} is {g}, host {w}").into());
            }
        }
        for (s, row) in want_logits.chunks(shape.vocab).enumerate() {
            let mut sorted = row.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            if sorted[0] - sorted[1] > 1e-2 && next[s] != want_next[s] {
                return Err(format!(
                    "step {step}: sequence {s} picked {}, host {}",
                    next[s], want_next[s]
                )
                .into());
            }
        }
        tokens = want_next.clone();
    }
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    let devices = discover(1, &mut |note| eprintln!("{note}")).unwrap_or_default();
    let host = devices
        .iter()
        .find(|d| matches!(d, AnyDevice::Host(_)))
        .cloned();
    let others: Vec<AnyDevice> = devices
        .into_iter()
        .filter(|d| !matches!(d, AnyDevice::Host(_)))
        .collect();
    match host {
        Some(host) if !others.is_empty() => {
            for device in others {
                let host = host.clone();
                let name = format!("decode[{}]::tiny_model_matches_host", device.as_dyn().id());
                trials.push(Trial::test(name, move || {
                    let reference = run(host.as_dyn())?;
                    compare(device.as_dyn(), &reference)
                }));
            }
        }
        _ => trials.push(
            Trial::test("decode[none]::tiny_model_matches_host", || Ok(()))
                .with_ignored_flag(true)
                .with_kind("skipped: no accelerator found"),
        ),
    }
    // Mesa's exit-time teardown can abort after every result is printed.
    let failed = libtest_mimic::run(&args, trials).has_failed();
    hetero_backends::exit_after_tests(failed);
}
