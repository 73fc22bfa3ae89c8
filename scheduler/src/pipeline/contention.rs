//! How much slower each device runs while the others of a plan run too.
//!
//! Profiles time one device at a time. The stages of a pipeline (and the
//! replicas of a data-parallel plan) run at once, and devices that share a
//! processor slow each other down: host devices share the cores' memory
//! bus and last-level cache, a software adapter's rasterizer threads run
//! on the same cores as the host devices' threads. Measured on this
//! project's 2-core machine, that made the prediction 15-28% optimistic
//! for two host stages and 2.3x optimistic for replicas that included
//! lavapipe (scheduler/README.md).
//!
//! So a plan's devices are timed side by side: each runs the same
//! few-layer part of the model, first alone and then all at once (every
//! device looping its calls until each has its samples, so every sample is
//! taken while the others work). A device's slowdown is the median time
//! together over the median time alone (at least 1: noise never makes a
//! device faster), and the plan's stage times are scaled by it.

use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};

use hetero_core::{Error, Result, SharedDevice};
use hetero_models::{Checkpoint, LlamaModel, StageSpec, WeightFormat};

use super::profile::ProfileOptions;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Each device's slowdown while all of `devices` run at once (see the
/// module docs), in their order; all 1 for fewer than two devices.
pub fn slowdown_together(
    checkpoint: &Checkpoint,
    devices: &[SharedDevice],
    options: ProfileOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<f64>> {
    if devices.len() < 2 {
        return Ok(vec![1.0; devices.len()]);
    }
    let n = checkpoint.config().layers;
    let start = n / 2;
    let layers = start..(start + 4).min(n);
    let names: Vec<String> = devices.iter().map(|d| d.id().to_string()).collect();
    progress(&format!(
        "timing {} side by side (layers {}-{} on each)",
        names.join(", "),
        layers.start,
        layers.end - 1
    ));
    let parts = devices
        .iter()
        .map(|d| {
            LlamaModel::load_split(
                checkpoint,
                &[StageSpec {
                    device: d.clone(),
                    layers: layers.clone(),
                }],
                WeightFormat::Native,
                &mut |_| {},
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let samples = (2 * options.repetitions).max(9);
    let call = |part: &LlamaModel| part.time_calls(options.batch, 1, options.context, samples);
    let alone = parts
        .iter()
        .map(|p| call(p).map(median))
        .collect::<Result<Vec<_>>>()?;
    let done = AtomicUsize::new(0);
    let barrier = Barrier::new(parts.len());
    let (count, call) = (parts.len(), &call);
    let together = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .iter()
            .map(|part| {
                let (done, barrier) = (&done, &barrier);
                let part: &LlamaModel = part;
                scope.spawn(move || -> Result<f64> {
                    barrier.wait();
                    let mut mine = Vec::new();
                    let mut counted = false;
                    // Until every device has its samples; each keeps
                    // working (and counting only while all still work).
                    loop {
                        let times = match call(part) {
                            Ok(t) => t,
                            Err(e) => {
                                if !counted {
                                    done.fetch_add(1, Ordering::AcqRel);
                                }
                                return Err(e);
                            }
                        };
                        if done.load(Ordering::Acquire) < count {
                            mine.extend(times);
                        }
                        if !counted && mine.len() >= samples {
                            counted = true;
                            done.fetch_add(1, Ordering::AcqRel);
                        }
                        if done.load(Ordering::Acquire) >= count {
                            return Ok(median(mine));
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::invalid("side-by-side timing", "a thread panicked"))
                })
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let slowdown: Vec<f64> = alone
        .iter()
        .zip(&together)
        .map(|(a, t)| if *a > 0.0 { (t / a).max(1.0) } else { 1.0 })
        .collect();
    progress(&format!(
        "side by side: {}",
        names
            .iter()
            .zip(&slowdown)
            .map(|(d, s)| format!("{d} x{s:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(slowdown)
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
