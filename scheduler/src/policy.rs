//! Batch allocation across devices that decode in lock-step.
//!
//! A decoding step lasts as long as the slowest device, so an allocation is
//! judged by its predicted step time `max_g t_g(B_g)`, where `t_g` is device
//! `g`'s fitted step-time curve and `B_g <= B*_g` its memory limit.

use serde::{Deserialize, Serialize};

use hetero_core::{DeviceId, Error, Result};

use crate::workload::ModelShape;

/// Step time of one device as a function of its batch: `t(B) = a + b * B`
/// for `B >= 1`, and 0 for an idle device.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepModel {
    /// Fixed cost of a step, seconds (`a`).
    pub fixed_s: f64,
    /// Added cost per sequence, seconds (`b`).
    pub per_sequence_s: f64,
}

impl StepModel {
    pub fn time_s(&self, batch: usize) -> f64 {
        if batch == 0 {
            0.0
        } else {
            self.fixed_s + self.per_sequence_s * batch as f64
        }
    }

    /// Sequences per second at `batch`.
    pub fn throughput(&self, batch: usize) -> f64 {
        if batch == 0 {
            0.0
        } else {
            batch as f64 / self.time_s(batch)
        }
    }

    /// Least-squares fit of `a + b * B` to measured `(batch, seconds)`;
    /// reports the largest and root-mean-square relative error of the fit.
    pub fn fit(samples: &[(usize, f64)]) -> Result<StepFit> {
        let distinct = {
            let mut b: Vec<usize> = samples.iter().map(|s| s.0).collect();
            b.sort_unstable();
            b.dedup();
            b.len()
        };
        if distinct < 2 {
            return Err(Error::invalid(
                "step samples",
                "need step times at two or more batch sizes",
            ));
        }
        if let Some(s) = samples
            .iter()
            .find(|s| !(s.1.is_finite() && s.1 > 0.0) || s.0 == 0)
        {
            return Err(Error::invalid(
                "step samples",
                format!(
                    "sample (batch {}, {} s) is not a positive time at a batch >= 1",
                    s.0, s.1
                ),
            ));
        }
        let n = samples.len() as f64;
        let mx = samples.iter().map(|s| s.0 as f64).sum::<f64>() / n;
        let my = samples.iter().map(|s| s.1).sum::<f64>() / n;
        let sxx: f64 = samples.iter().map(|s| (s.0 as f64 - mx).powi(2)).sum();
        let sxy: f64 = samples.iter().map(|s| (s.0 as f64 - mx) * (s.1 - my)).sum();
        // Noise can make either coefficient slightly negative on a device
        // whose cost is flat or purely proportional; clamp to physical values.
        let b = (sxy / sxx).max(0.0);
        let a = (my - b * mx).max(0.0);
        let model = StepModel {
            fixed_s: a,
            per_sequence_s: b,
        };
        let rel: Vec<f64> = samples
            .iter()
            .map(|s| (model.time_s(s.0) - s.1).abs() / s.1)
            .collect();
        Ok(StepFit {
            model,
            max_relative_error: rel.iter().copied().fold(0.0, f64::max),
            rms_relative_error: (rel.iter().map(|r| r * r).sum::<f64>() / n).sqrt(),
        })
    }
}

/// A fitted [`StepModel`] and how well it fits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepFit {
    pub model: StepModel,
    pub max_relative_error: f64,
    pub rms_relative_error: f64,
}

/// What the policies know about one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceProfile {
    pub device: DeviceId,
    pub name: String,
    /// Largest batch that fits in memory at the profiled length (`B*`).
    pub max_batch: usize,
    pub step: StepModel,
}

/// Sequences per device, and what the policy predicts for them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    pub policy: String,
    /// `batches[g]`: sequences on device `g`.
    pub batches: Vec<usize>,
    /// Predicted step time, the slowest device's, seconds.
    pub step_time_s: f64,
    /// Indices of devices given more than their `max_batch` (only the
    /// memory-blind `Uniform` policy does this; running it would run out of
    /// memory there).
    pub overflows: Vec<usize>,
}

impl Allocation {
    fn new(policy: &str, devices: &[DeviceProfile], batches: Vec<usize>) -> Self {
        let step_time_s = devices
            .iter()
            .zip(&batches)
            .map(|(d, &b)| d.step.time_s(b))
            .fold(0.0, f64::max);
        let overflows = devices
            .iter()
            .zip(&batches)
            .enumerate()
            .filter(|(_, (d, b))| **b > d.max_batch)
            .map(|(g, _)| g)
            .collect();
        Allocation {
            policy: policy.into(),
            batches,
            step_time_s,
            overflows,
        }
    }

    /// Predicted sequences per second (tokens per second in decoding).
    pub fn throughput(&self) -> f64 {
        let total: usize = self.batches.iter().sum();
        if self.step_time_s > 0.0 {
            total as f64 / self.step_time_s
        } else {
            0.0
        }
    }

    /// Whether every device can hold its batch: `Ok` when none overflows,
    /// else the out-of-memory error that decoding `model` at `max_len`
    /// tokens would end in on the first device that overflows (a caller
    /// checks this instead of running the allocation only to reproduce the
    /// error). `devices` are the profiles the allocation was made for.
    pub fn check_fits(
        &self,
        devices: &[DeviceProfile],
        model: &ModelShape,
        max_len: usize,
    ) -> Result<()> {
        if devices.len() != self.batches.len() {
            return Err(Error::invalid(
                "devices",
                format!(
                    "{} profiles for an allocation over {} devices",
                    devices.len(),
                    self.batches.len()
                ),
            ));
        }
        let Some(&g) = self.overflows.first() else {
            return Ok(());
        };
        // The fields are public, so an index may be out of range.
        let (Some(d), Some(&batch)) = (devices.get(g), self.batches.get(g)) else {
            return Err(Error::invalid(
                "allocation",
                format!("overflows names device {g} of {}", devices.len()),
            ));
        };
        Err(Error::OutOfMemory {
            device: d.device,
            requested_bytes: model.step_bytes(batch, max_len),
            available_bytes: None,
        })
    }
}

/// A way of splitting `total` sequences over devices.
pub trait AllocationPolicy {
    fn name(&self) -> &'static str;
    fn allocate(&self, devices: &[DeviceProfile], total: usize) -> Result<Allocation>;
}

fn check_inputs(devices: &[DeviceProfile], total: usize, memory_aware: bool) -> Result<()> {
    if devices.is_empty() {
        return Err(Error::invalid("devices", "no devices to allocate to"));
    }
    for (g, d) in devices.iter().enumerate() {
        let StepModel {
            fixed_s,
            per_sequence_s,
        } = d.step;
        if !(fixed_s.is_finite()
            && fixed_s >= 0.0
            && per_sequence_s.is_finite()
            && per_sequence_s >= 0.0)
        {
            return Err(Error::invalid(
                format!("devices[{g}].step"),
                "step-time coefficients must be finite and >= 0",
            ));
        }
    }
    let capacity: usize = devices.iter().map(|d| d.max_batch).sum();
    if memory_aware && total > capacity {
        return Err(Error::invalid(
            "batch",
            format!(
                "{total} sequences do not fit: the devices hold {capacity} at most \
                 (sum of their B*); lower the batch or the maximum length, or add devices"
            ),
        ));
    }
    Ok(())
}

/// The memory- and speed-blind baseline: the same batch everywhere (the
/// first `total % n` devices get one more). May overflow a small device.
#[derive(Debug, Clone, Copy, Default)]
pub struct Uniform;

impl AllocationPolicy for Uniform {
    fn name(&self) -> &'static str {
        "uniform"
    }

    fn allocate(&self, devices: &[DeviceProfile], total: usize) -> Result<Allocation> {
        check_inputs(devices, total, false)?;
        let n = devices.len();
        let batches = (0..n)
            .map(|g| total / n + usize::from(g < total % n))
            .collect();
        Ok(Allocation::new(self.name(), devices, batches))
    }
}

/// HASC's rule: `B_g = min(floor(w_g * B_total), B*_g)` with `w_g` the
/// device's share of the measured throughput (each device at its own `B*`).
/// The paper's floor can leave sequences unplaced; we add them one at a time
/// to the device with the largest unrounded remainder that still has room,
/// so no sequence is lost.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hasc;

impl AllocationPolicy for Hasc {
    fn name(&self) -> &'static str {
        "hasc"
    }

    fn allocate(&self, devices: &[DeviceProfile], total: usize) -> Result<Allocation> {
        check_inputs(devices, total, true)?;
        let thr: Vec<f64> = devices
            .iter()
            .map(|d| d.step.throughput(d.max_batch))
            .collect();
        let sum: f64 = thr.iter().sum();
        let n = devices.len();
        let ideal: Vec<f64> = if sum > 0.0 && sum.is_finite() {
            thr.iter().map(|t| t / sum * total as f64).collect()
        } else {
            vec![total as f64 / n as f64; n]
        };
        let mut batches: Vec<usize> = ideal
            .iter()
            .zip(devices)
            .map(|(x, d)| (x.floor() as usize).min(d.max_batch))
            .collect();
        let mut left = total - batches.iter().sum::<usize>();
        while left > 0 {
            let pick = (0..n)
                .filter(|&g| batches[g] < devices[g].max_batch)
                .max_by(|&x, &y| {
                    (ideal[x] - batches[x] as f64).total_cmp(&(ideal[y] - batches[y] as f64))
                });
            let Some(g) = pick else {
                return Err(Error::invalid("batch", "no device has room left"));
            };
            batches[g] += 1;
            left -= 1;
        }
        Ok(Allocation::new(self.name(), devices, batches))
    }
}

/// Ours: the allocation with the smallest predicted step time
/// `max_g t_g(B_g)` subject to `sum B_g = B_total`, `B_g <= B*_g`.
///
/// Water-filling: the capacity of device `g` within time `T` is
/// `min(B*_g, floor((T - a_g) / b_g))`; bisect for the least `T` whose
/// capacities hold `B_total`, then hand back the surplus from the devices
/// whose steps are slowest, which cannot raise the maximum. Exact up to
/// floating-point resolution (checked against brute force in the tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct Balanced;

impl Balanced {
    fn capacity(d: &DeviceProfile, t: f64) -> usize {
        let StepModel {
            fixed_s: a,
            per_sequence_s: b,
        } = d.step;
        if d.max_batch == 0 || t < a + b - 1e-12 * t.abs() {
            return 0;
        }
        if b <= 0.0 {
            return d.max_batch;
        }
        // A hair of slack so that t = a + b * k exactly counts k.
        let k = ((t - a) / b * (1.0 + 1e-12)).floor();
        (k.max(0.0) as usize).min(d.max_batch)
    }
}

impl AllocationPolicy for Balanced {
    fn name(&self) -> &'static str {
        "balanced"
    }

    fn allocate(&self, devices: &[DeviceProfile], total: usize) -> Result<Allocation> {
        check_inputs(devices, total, true)?;
        if total == 0 {
            return Ok(Allocation::new(
                self.name(),
                devices,
                vec![0; devices.len()],
            ));
        }
        let fits = |t: f64| devices.iter().map(|d| Self::capacity(d, t)).sum::<usize>() >= total;
        let mut hi = devices
            .iter()
            .map(|d| d.step.time_s(d.max_batch))
            .fold(0.0, f64::max);
        let mut lo = 0.0;
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if mid <= lo || mid >= hi {
                break;
            }
            if fits(mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        let mut batches: Vec<usize> = devices.iter().map(|d| Self::capacity(d, hi)).collect();
        let mut surplus = batches.iter().sum::<usize>() - total;
        while surplus > 0 {
            let Some(g) = (0..devices.len())
                .filter(|&g| batches[g] > 0)
                .max_by(|&x, &y| {
                    devices[x]
                        .step
                        .time_s(batches[x])
                        .total_cmp(&devices[y].step.time_s(batches[y]))
                })
            else {
                break;
            };
            batches[g] -= 1;
            surplus -= 1;
        }
        Ok(Allocation::new(self.name(), devices, batches))
    }
}

/// The policies by name: the one list every front end parses against, so a
/// name is checked before any device is profiled and a new policy needs
/// adding only here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    Uniform,
    Hasc,
    Balanced,
}

impl Policy {
    /// Every policy, in the order the ablation runs them (`uniform` first:
    /// the others are reported relative to it).
    pub const ALL: [Policy; 3] = [Policy::Uniform, Policy::Hasc, Policy::Balanced];

    /// Their names, in the order of [`Policy::ALL`].
    pub const NAMES: [&'static str; 3] = ["uniform", "hasc", "balanced"];

    /// The name that selects every policy in [`Policy::select`].
    pub const EVERY: &'static str = "all";

    pub fn name(self) -> &'static str {
        match self {
            Policy::Uniform => "uniform",
            Policy::Hasc => "hasc",
            Policy::Balanced => "balanced",
        }
    }

    /// The policy called `name` (`uniform`, `hasc`, `balanced`).
    pub fn from_name(name: &str) -> Result<Policy> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                Error::invalid(
                    "policy",
                    format!(
                        "unknown policy {name:?}; choose {}",
                        choices(&Policy::NAMES)
                    ),
                )
            })
    }

    /// What a command line's policy argument selects: one policy by name,
    /// or every policy for [`Policy::EVERY`] (`all`).
    pub fn select(name: &str) -> Result<Vec<Policy>> {
        if name == Policy::EVERY {
            return Ok(Policy::ALL.to_vec());
        }
        Policy::from_name(name).map(|p| vec![p]).map_err(|_| {
            let mut names = Policy::NAMES.to_vec();
            names.push(Policy::EVERY);
            Error::invalid(
                "policy",
                format!(
                    "unknown policy {name:?}; choose {} (every policy)",
                    choices(&names)
                ),
            )
        })
    }

    fn allocator(self) -> &'static dyn AllocationPolicy {
        match self {
            Policy::Uniform => &Uniform,
            Policy::Hasc => &Hasc,
            Policy::Balanced => &Balanced,
        }
    }
}

/// `a, b or c`.
fn choices(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Policy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Policy::from_name(s)
    }
}

impl AllocationPolicy for Policy {
    fn name(&self) -> &'static str {
        Policy::name(*self)
    }

    fn allocate(&self, devices: &[DeviceProfile], total: usize) -> Result<Allocation> {
        self.allocator().allocate(devices, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hetero_core::Backend;
    use proptest::prelude::*;

    fn profile(i: u32, max_batch: usize, a: f64, b: f64) -> DeviceProfile {
        DeviceProfile {
            device: DeviceId::new(Backend::Host, i),
            name: format!("dev{i}"),
            max_batch,
            step: StepModel {
                fixed_s: a,
                per_sequence_s: b,
            },
        }
    }

    /// Smallest achievable step time over every allocation (brute force).
    fn brute_force(devices: &[DeviceProfile], total: usize) -> f64 {
        fn go(devices: &[DeviceProfile], left: usize, worst: f64) -> f64 {
            match devices.split_first() {
                None if left == 0 => worst,
                None => f64::INFINITY,
                Some((d, rest)) => (0..=d.max_batch.min(left))
                    .map(|b| go(rest, left - b, worst.max(d.step.time_s(b))))
                    .fold(f64::INFINITY, f64::min),
            }
        }
        go(devices, total, 0.0)
    }

    fn arb_devices() -> impl Strategy<Value = Vec<DeviceProfile>> {
        proptest::collection::vec((0usize..7, 0.0f64..2.0, 0.01f64..1.0), 1..4).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (m, a, b))| profile(i as u32, m, a, b))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn balanced_is_optimal_and_never_worse(devices in arb_devices(), frac in 0.0f64..=1.0) {
            let capacity: usize = devices.iter().map(|d| d.max_batch).sum();
            let total = (capacity as f64 * frac).round() as usize;
            let best = brute_force(&devices, total);
            let bal = Balanced.allocate(&devices, total).unwrap();
            prop_assert_eq!(bal.batches.iter().sum::<usize>(), total);
            prop_assert!(bal.overflows.is_empty());
            prop_assert!((bal.step_time_s - best).abs() <= 1e-9 * best.max(1.0),
                "balanced {} vs optimum {}", bal.step_time_s, best);
            let hasc = Hasc.allocate(&devices, total).unwrap();
            prop_assert_eq!(hasc.batches.iter().sum::<usize>(), total);
            prop_assert!(hasc.overflows.is_empty());
            prop_assert!(bal.step_time_s <= hasc.step_time_s + 1e-12);
            let uni = Uniform.allocate(&devices, total).unwrap();
            prop_assert_eq!(uni.batches.iter().sum::<usize>(), total);
            if uni.overflows.is_empty() {
                prop_assert!(bal.step_time_s <= uni.step_time_s + 1e-12);
            }
        }

        #[test]
        fn fit_recovers_linear_step_times(a in 0.0f64..0.1, b in 1e-4f64..1e-2) {
            let samples: Vec<(usize, f64)> = [1, 2, 4, 8, 16].iter().map(|&n| (n, a + b * n as f64)).collect();
            let fit = StepModel::fit(&samples).unwrap();
            prop_assert!((fit.model.fixed_s - a).abs() < 1e-9);
            prop_assert!((fit.model.per_sequence_s - b).abs() < 1e-9);
            prop_assert!(fit.max_relative_error < 1e-9);
        }
    }

    #[test]
    fn too_many_sequences_is_a_clear_error() {
        let devices = [profile(0, 4, 0.1, 0.01), profile(1, 2, 0.1, 0.02)];
        let err = Balanced.allocate(&devices, 7).unwrap_err().to_string();
        assert!(err.contains("hold 6 at most"), "{err}");
        assert!(Hasc.allocate(&devices, 7).is_err());
        // Uniform is memory-blind: it allocates, and says where it overflows.
        let u = Uniform.allocate(&devices, 7).unwrap();
        assert_eq!(u.batches, vec![4, 3]);
        assert_eq!(u.overflows, vec![1]);
        assert!(Balanced.allocate(&[], 1).is_err());
        assert!(Policy::from_name("fastest").is_err());
    }

    #[test]
    fn policy_names_parse_and_a_bad_name_is_a_clear_error() {
        for (p, name) in Policy::ALL.into_iter().zip(Policy::NAMES) {
            assert_eq!(p.name(), name);
            assert_eq!(Policy::from_name(name).unwrap(), p);
            assert_eq!(name.parse::<Policy>().unwrap(), p);
            assert_eq!(p.to_string(), name);
            assert_eq!(
                AllocationPolicy::name(&Policy::from_name(name).unwrap()),
                name
            );
            assert_eq!(Policy::select(name).unwrap(), vec![p]);
        }
        assert_eq!(Policy::select("all").unwrap(), Policy::ALL.to_vec());
        let err = Policy::from_name("fastest").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid policy: unknown policy \"fastest\"; choose uniform, hasc or balanced"
        );
        let err = Policy::select("fastest").unwrap_err().to_string();
        assert!(err.contains("\"fastest\""), "{err}");
        assert!(err.contains("uniform, hasc, balanced or all"), "{err}");
        // "all" is a selection, not a policy.
        assert!(Policy::from_name("all").is_err());
        assert!(Policy::select("").is_err());
        assert!(Policy::select("Uniform").is_err());
    }

    #[test]
    fn a_policy_allocates_like_its_struct() {
        let devices = [profile(0, 4, 0.1, 0.01), profile(1, 9, 0.05, 0.02)];
        for total in [0, 5, 13] {
            assert_eq!(
                Policy::Uniform.allocate(&devices, total).unwrap(),
                Uniform.allocate(&devices, total).unwrap()
            );
            assert_eq!(
                Policy::Hasc.allocate(&devices, total).unwrap(),
                Hasc.allocate(&devices, total).unwrap()
            );
            assert_eq!(
                Policy::Balanced.allocate(&devices, total).unwrap(),
                Balanced.allocate(&devices, total).unwrap()
            );
        }
    }

    #[test]
    fn the_fit_check_names_the_first_device_that_overflows() {
        let model = ModelShape::tiny();
        let devices = [profile(0, 1, 0.1, 0.01), profile(1, 2, 0.1, 0.02)];
        let fits = Balanced.allocate(&devices, 3).unwrap();
        assert!(fits.check_fits(&devices, &model, 12).is_ok());
        // Uniform puts 3 on a device that holds 1, and 2 on one that holds 2.
        let over = Uniform.allocate(&devices, 5).unwrap();
        assert_eq!(over.overflows, vec![0]);
        match over.check_fits(&devices, &model, 12) {
            Err(Error::OutOfMemory {
                device,
                requested_bytes,
                available_bytes: None,
            }) => {
                assert_eq!(device, devices[0].device);
                assert_eq!(requested_bytes, model.step_bytes(3, 12));
            }
            other => panic!("expected out of memory, got {other:?}"),
        }
        // Profiles that are not the allocation's are an error, not a panic.
        assert!(over.check_fits(&devices[..1], &model, 12).is_err());
        let mut forged = fits.clone();
        forged.overflows = vec![7];
        assert!(forged.check_fits(&devices, &model, 12).is_err());
    }

    #[test]
    fn a_twice_as_fast_device_gets_about_twice_the_batch() {
        let devices = [profile(0, 100, 0.0, 0.01), profile(1, 100, 0.0, 0.02)];
        let bal = Balanced.allocate(&devices, 30).unwrap();
        assert_eq!(bal.batches, vec![20, 10]);
        let uni = Uniform.allocate(&devices, 30).unwrap();
        assert!((uni.step_time_s / bal.step_time_s - 1.5).abs() < 1e-9);
    }
}
