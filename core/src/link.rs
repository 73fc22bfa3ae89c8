//! Links between devices or ranks, their alpha-beta model, and how it is measured.
//!
//! A link's cost for `n` bytes is modelled as `t(n) = alpha + n / beta`
//! (latency `alpha` seconds, bandwidth `beta` bytes/s). The parameters are
//! fitted by least squares from real transfers of several sizes, never assumed.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::DeviceId;

/// Physical or logical kind of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    /// Both ends are the same device (a device-local copy).
    SameDevice,
    Pcie,
    NvLink,
    /// Both ends share host memory (CPU devices, ranks of one host).
    SharedMemory,
    /// Network loopback on one host.
    Loopback,
    Ethernet,
    InfiniBand,
    Unknown,
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkKind::SameDevice => "same-device",
            LinkKind::Pcie => "pcie",
            LinkKind::NvLink => "nvlink",
            LinkKind::SharedMemory => "shared-memory",
            LinkKind::Loopback => "loopback",
            LinkKind::Ethernet => "ethernet",
            LinkKind::InfiniBand => "infiniband",
            LinkKind::Unknown => "unknown",
        })
    }
}

/// Alpha-beta model of a link.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinkModel {
    pub kind: LinkKind,
    /// Fixed cost per transfer, seconds (alpha).
    pub latency_s: f64,
    /// Asymptotic bandwidth, bytes per second (beta).
    pub bandwidth_bytes_per_s: f64,
}

impl LinkModel {
    pub fn new(kind: LinkKind, latency_s: f64, bandwidth_bytes_per_s: f64) -> Self {
        LinkModel {
            kind,
            latency_s,
            bandwidth_bytes_per_s,
        }
    }

    /// Predicted time to move `bytes` bytes, seconds.
    pub fn time_s(&self, bytes: f64) -> f64 {
        self.latency_s + bytes / self.bandwidth_bytes_per_s
    }

    /// Check the parameters are usable; `field` prefixes the error's field name.
    pub fn validate(&self, field: &str) -> Result<()> {
        if !(self.latency_s.is_finite() && self.latency_s >= 0.0) {
            return Err(Error::invalid(
                format!("{field}.latency_s"),
                format!("must be a finite number >= 0, got {}", self.latency_s),
            ));
        }
        if !(self.bandwidth_bytes_per_s.is_finite() && self.bandwidth_bytes_per_s > 0.0) {
            return Err(Error::invalid(
                format!("{field}.bandwidth_bytes_per_s"),
                format!(
                    "must be a finite number > 0, got {}",
                    self.bandwidth_bytes_per_s
                ),
            ));
        }
        Ok(())
    }

    /// Least-squares fit of `t = alpha + n / beta` to `(bytes, seconds)` samples,
    /// weighted by `1/t^2` so that each sample counts by its relative error.
    ///
    /// Needs at least two distinct sizes. A fitted negative intercept (noise
    /// on a link whose latency is below timer resolution) is clamped to zero
    /// and the slope refitted through the origin, so the model stays physical.
    pub fn fit(kind: LinkKind, samples: &[(f64, f64)]) -> Result<LinkFit> {
        if samples.len() < 2 {
            return Err(Error::invalid(
                "link samples",
                format!(
                    "need at least 2 (bytes, seconds) samples, got {}",
                    samples.len()
                ),
            ));
        }
        if let Some((n, t)) = samples
            .iter()
            .find(|(n, t)| !(n.is_finite() && t.is_finite() && *n >= 0.0 && *t >= 0.0))
        {
            return Err(Error::invalid(
                "link samples",
                format!("sample ({n} bytes, {t} s) is not a finite non-negative pair"),
            ));
        }
        // Weighted least squares with weights 1/t^2: timing noise is
        // multiplicative, so every size should count by its relative error.
        // Unweighted, the largest transfers swamp the latency estimate.
        let floor = samples
            .iter()
            .map(|s| s.1)
            .filter(|t| *t > 0.0)
            .fold(f64::INFINITY, f64::min)
            .min(1.0);
        let weight = |t: f64| 1.0 / t.max(floor * 1e-3).powi(2);
        let w_sum: f64 = samples.iter().map(|s| weight(s.1)).sum();
        let mean_n = samples.iter().map(|s| weight(s.1) * s.0).sum::<f64>() / w_sum;
        let mean_t = samples.iter().map(|s| weight(s.1) * s.1).sum::<f64>() / w_sum;
        let sxx: f64 = samples
            .iter()
            .map(|s| weight(s.1) * (s.0 - mean_n).powi(2))
            .sum();
        if sxx <= 0.0 || samples.iter().all(|s| s.0 == samples[0].0) {
            return Err(Error::invalid(
                "link samples",
                "all samples have the same size; measure at least two sizes",
            ));
        }
        let sxy: f64 = samples
            .iter()
            .map(|s| weight(s.1) * (s.0 - mean_n) * (s.1 - mean_t))
            .sum();
        let mut slope = sxy / sxx;
        let mut intercept = mean_t - slope * mean_n;
        if intercept < 0.0 {
            intercept = 0.0;
            let snn: f64 = samples.iter().map(|s| weight(s.1) * s.0 * s.0).sum();
            let snt: f64 = samples.iter().map(|s| weight(s.1) * s.0 * s.1).sum();
            slope = snt / snn;
        }
        if !(slope > 0.0 && slope.is_finite()) {
            return Err(Error::invalid(
                "link samples",
                "transfer time does not grow with size; the timings are noise, measure larger sizes",
            ));
        }
        let model = LinkModel::new(kind, intercept, 1.0 / slope);
        let ss_tot: f64 = samples
            .iter()
            .map(|s| weight(s.1) * (s.1 - mean_t).powi(2))
            .sum();
        let ss_res: f64 = samples
            .iter()
            .map(|s| weight(s.1) * (s.1 - model.time_s(s.0)).powi(2))
            .sum();
        let r_squared = if ss_tot > 0.0 {
            1.0 - ss_res / ss_tot
        } else {
            1.0
        };
        Ok(LinkFit {
            model,
            r_squared,
            samples: samples.len(),
        })
    }
}

/// A fitted model and how well it fits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinkFit {
    pub model: LinkModel,
    /// Coefficient of determination of the fit (1 is perfect).
    pub r_squared: f64,
    /// Number of samples fitted.
    pub samples: usize,
}

/// A path between two devices that can move bytes, so it can be measured.
pub trait Link: Send + Sync + fmt::Debug {
    fn src(&self) -> DeviceId;
    fn dst(&self) -> DeviceId;
    fn kind(&self) -> LinkKind;
    /// Move `bytes` bytes from `src` to `dst` once, for real, and return how
    /// long it took (including waiting for completion). Implementations keep
    /// their staging buffers between calls so that allocation is not timed.
    fn transfer(&self, bytes: usize) -> Result<Duration>;
}

/// How to measure a link: which sizes, how many repetitions of each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkProbe {
    pub sizes_bytes: Vec<usize>,
    /// Timed repetitions per size; the median is fitted.
    pub repetitions: usize,
}

impl Default for LinkProbe {
    /// 4 KiB to 16 MiB in steps of 4x, 5 repetitions: under a second on a PCIe link.
    fn default() -> Self {
        LinkProbe {
            sizes_bytes: (0..7).map(|i| 4096usize << (2 * i)).collect(),
            repetitions: 5,
        }
    }
}

impl LinkProbe {
    /// A cheaper probe (64 KiB to 4 MiB, 3 repetitions), for quick listings.
    pub fn quick() -> Self {
        LinkProbe {
            sizes_bytes: (0..4).map(|i| 65536usize << (2 * i)).collect(),
            repetitions: 3,
        }
    }

    /// Measure `link`: one untimed warm-up at the largest size, then the
    /// median of `repetitions` transfers per size, fitted by [`LinkModel::fit`].
    ///
    /// On a link so fast that every size is latency-bound (an on-GPU copy),
    /// the timings may not grow with size; the probe then retries with sizes
    /// 16x larger, twice at most, before reporting the error.
    pub fn measure(&self, link: &dyn Link) -> Result<LinkFit> {
        if self.sizes_bytes.is_empty() {
            return Err(Error::invalid(
                "link probe sizes",
                "no sizes given; list at least two",
            ));
        }
        if self.repetitions == 0 {
            return Err(Error::invalid(
                "link probe repetitions",
                "must be at least 1",
            ));
        }
        let mut sizes = self.sizes_bytes.clone();
        let mut retries = 2;
        loop {
            match self.measure_sizes(link, &sizes) {
                Err(Error::InvalidInput { reason, .. })
                    if retries > 0 && reason.contains("does not grow") =>
                {
                    retries -= 1;
                    sizes.iter_mut().for_each(|s| *s = s.saturating_mul(16));
                }
                other => return other,
            }
        }
    }

    fn measure_sizes(&self, link: &dyn Link, sizes: &[usize]) -> Result<LinkFit> {
        let largest = sizes.iter().copied().max().unwrap_or(0);
        link.transfer(largest)?;
        let mut samples = Vec::with_capacity(sizes.len());
        for &size in sizes {
            let mut times: Vec<f64> = (0..self.repetitions)
                .map(|_| link.transfer(size).map(|d| d.as_secs_f64()))
                .collect::<Result<_>>()?;
            times.sort_by(f64::total_cmp);
            samples.push((size as f64, times[times.len() / 2]));
        }
        LinkModel::fit(link.kind(), &samples)
    }
}

/// Time `f` once, for [`Link::transfer`] implementations.
pub fn time_once(f: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fit_recovers_exact_parameters() {
        let alpha = 5e-6;
        let beta = 12e9;
        let samples: Vec<(f64, f64)> = [1e3, 1e4, 1e5, 1e6, 1e7]
            .iter()
            .map(|&n| (n, alpha + n / beta))
            .collect();
        let fit = LinkModel::fit(LinkKind::Pcie, &samples).unwrap();
        assert!((fit.model.latency_s - alpha).abs() < 1e-12);
        assert!((fit.model.bandwidth_bytes_per_s - beta).abs() / beta < 1e-9);
        assert!(fit.r_squared > 0.999_999);
    }

    #[test]
    fn fit_rejects_degenerate_samples() {
        assert!(LinkModel::fit(LinkKind::Unknown, &[(1.0, 1.0)]).is_err());
        let same = LinkModel::fit(LinkKind::Unknown, &[(8.0, 1.0), (8.0, 2.0)]).unwrap_err();
        assert!(same.to_string().contains("same size"), "{same}");
        let flat = LinkModel::fit(LinkKind::Unknown, &[(8.0, 1.0), (16.0, 0.5)]).unwrap_err();
        assert!(flat.to_string().contains("does not grow"), "{flat}");
    }

    proptest! {
        /// With +-2% multiplicative noise the fit stays within 10% on both parameters
        /// when the sizes span the latency- and bandwidth-bound regimes.
        #[test]
        fn fit_recovers_noisy_parameters(
            alpha in 1e-6f64..1e-3,
            beta in 1e8f64..1e11,
            noise in proptest::collection::vec(-0.02f64..0.02, 12),
        ) {
            // Sizes from well below to well above the crossover alpha * beta.
            let cross = alpha * beta;
            let samples: Vec<(f64, f64)> = (0..12)
                .map(|i| {
                    let n = cross * 10f64.powf(-2.0 + 4.0 * i as f64 / 11.0);
                    (n, (alpha + n / beta) * (1.0 + noise[i]))
                })
                .collect();
            let fit = LinkModel::fit(LinkKind::Ethernet, &samples).unwrap();
            prop_assert!((fit.model.bandwidth_bytes_per_s - beta).abs() / beta < 0.1);
            prop_assert!((fit.model.latency_s - alpha).abs() / alpha < 0.1);
        }
    }

    /// A synthetic link: below 1 MiB the time is a latency floor with noise
    /// that happens to shrink with size; above, 10 GB/s.
    #[derive(Debug)]
    struct FloorLink;

    impl Link for FloorLink {
        fn src(&self) -> DeviceId {
            DeviceId::new(crate::Backend::Host, 0)
        }
        fn dst(&self) -> DeviceId {
            DeviceId::new(crate::Backend::Host, 1)
        }
        fn kind(&self) -> LinkKind {
            LinkKind::Unknown
        }
        fn transfer(&self, bytes: usize) -> Result<Duration> {
            let secs = if bytes < 1 << 20 {
                20e-6 - bytes as f64 * 1e-12
            } else {
                10e-6 + bytes as f64 / 10e9
            };
            Ok(Duration::from_secs_f64(secs))
        }
    }

    #[test]
    fn probe_retries_larger_sizes_on_a_latency_floor() {
        let probe = LinkProbe {
            sizes_bytes: vec![4096, 16384, 65536],
            repetitions: 1,
        };
        // The configured sizes alone cannot be fitted...
        assert!(probe.measure_sizes(&FloorLink, &probe.sizes_bytes).is_err());
        // ...16x larger ones reach the bandwidth-bound regime (partly: the
        // fit mixes both regimes, so only the order of magnitude is checked).
        let fit = probe.measure(&FloorLink).unwrap();
        let gbps = fit.model.bandwidth_bytes_per_s / 1e9;
        assert!((5.0..30.0).contains(&gbps), "{gbps} GB/s");
        let never = LinkProbe {
            sizes_bytes: vec![16, 32],
            repetitions: 1,
        };
        assert!(
            never.measure(&FloorLink).is_err(),
            "two retries reach only 8 KiB"
        );
    }

    #[test]
    fn validate_names_the_field() {
        let bad = LinkModel::new(LinkKind::Pcie, 1e-6, 0.0);
        let err = bad.validate("links[0][1]").unwrap_err().to_string();
        assert!(err.contains("links[0][1].bandwidth_bytes_per_s"), "{err}");
    }
}
