//! Devices that share the host's processor slow each other.
//!
//! A profile times one device alone. Host devices and software adapters
//! (lavapipe) run on the host's own cores, so when the stages of a plan
//! work at once and together want more threads than the processor has,
//! each gets a share of it. Measured on the project's 2-core machine:
//! replicas on two one-thread host devices and lavapipe (two threads)
//! ran at 0.43 of the prediction that treated them as independent.
//!
//! The term, first order: a stage keeps its device's `host_threads` busy
//! for the fraction of the step it works (its seconds over its pipeline's
//! slowest stage; every pipeline of a plan runs at once). When that demand
//! exceeds the processor's threads, every stage on the processor is
//! slowed by `demand / cores`, and the plan's rate is taken again from the
//! slowed stages. Devices with a processor of their own (`host_threads`
//! `None`) are not slowed. The slowed stages would work a larger fraction
//! of the step; the term does not iterate on that (it would only raise a
//! factor that is already a share of the whole processor).
//!
//! Where it applies: plans of several pipelines or copies side by side
//! (`replicas`, `pipelines`), where every copy works all the time, the
//! case measured (replicas with lavapipe: 0.43 of the independent
//! prediction, 0.81 with the term in a run whose single device measured
//! 0.74). Not to a single pipeline (the DP's split and the baselines):
//! the DP minimises the slowest stage of independent devices, and the
//! term is not a per-stage cost it could minimise (it couples every
//! stage through the demand), so rescoring its plan could rank a baseline
//! above the DP's own optimum under a model the DP did not solve. On this
//! machine's measured pipelines the stages never want more threads than
//! the processor has. Local devices only: the stages of a split over
//! processes may be on other machines.

use super::plan::SplitChoice;

/// `choice` with its stages on the host's processor slowed when the
/// plan's demand exceeds `cores` (see the module docs); `threads[d]` is
/// device `d`'s `host_threads`. Returns the factor applied (1.0: none).
pub fn share_host_processor(
    choice: &mut SplitChoice,
    threads: &[Option<u32>],
    cores: u32,
    batch: usize,
) -> f64 {
    let Ok(groups) = choice.pipelines() else {
        return 1.0;
    };
    let sizes: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let on_host = |device_index: usize| threads.get(device_index).copied().flatten();
    let mut demand = 0.0;
    let mut next = 0;
    for &n in &sizes {
        let group = &choice.stages[next..next + n];
        let slowest = group.iter().map(|s| s.seconds).fold(0.0, f64::max);
        if slowest > 0.0 {
            for s in group {
                if let Some(t) = on_host(s.device_index) {
                    demand += f64::from(t) * s.seconds / slowest;
                }
            }
        }
        next += n;
    }
    let factor = demand / f64::from(cores.max(1));
    if factor <= 1.0 {
        return 1.0;
    }
    let seconds: Vec<f64> = choice
        .stages
        .iter()
        .map(|s| match on_host(s.device_index) {
            Some(_) => s.seconds * factor,
            None => s.seconds,
        })
        .collect();
    let Ok(rate) = choice.rate_with(&seconds, batch) else {
        return 1.0;
    };
    for (s, &t) in choice.stages.iter_mut().zip(&seconds) {
        s.seconds = t;
    }
    choice.bottleneck_s = seconds.iter().copied().fold(0.0, f64::max);
    choice.predicted_tokens_per_s = rate;
    choice.host_contention = Some(factor);
    factor
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::plan::StageChoice;

    fn stage(device_index: usize, seconds: f64) -> StageChoice {
        StageChoice {
            device_index,
            device: format!("d{device_index}"),
            layers: [0, 0],
            resident_bytes: 0,
            seconds,
        }
    }

    fn plan(stages: Vec<StageChoice>, groups: Vec<usize>, batch: usize) -> SplitChoice {
        // the independent prediction, as plan.rs computes it
        let mut rate = 0.0;
        let mut next = 0;
        let sizes = if groups.is_empty() {
            vec![stages.len()]
        } else {
            groups.clone()
        };
        for n in sizes {
            let slowest = stages[next..next + n]
                .iter()
                .map(|s| s.seconds)
                .fold(0.0, f64::max);
            rate += batch as f64 / slowest;
            next += n;
        }
        SplitChoice {
            name: "t".into(),
            bottleneck_s: stages.iter().map(|s| s.seconds).fold(0.0, f64::max),
            stages,
            predicted_tokens_per_s: rate,
            fits: true,
            groups,
            host_contention: None,
        }
    }

    /// The machine of the module docs: two one-thread hosts and a
    /// two-thread software adapter as replicas want four threads of two.
    #[test]
    fn replicas_sharing_two_cores_get_half_each() {
        let threads = [Some(1), Some(1), Some(2)];
        let mut c = plan(
            vec![stage(0, 0.045), stage(1, 0.046), stage(2, 6.1)],
            vec![1, 1, 1],
            8,
        );
        let f = share_host_processor(&mut c, &threads, 2, 8);
        assert!((f - 2.0).abs() < 1e-12);
        let want = 8.0 / 0.09 + 8.0 / 0.092 + 8.0 / 12.2;
        assert!((c.predicted_tokens_per_s - want).abs() < 1e-9);
        assert_eq!(c.host_contention, Some(2.0));
    }

    /// A pipeline of two one-thread hosts on two cores: both busy, two
    /// threads on two cores, nothing changes.
    #[test]
    fn a_pipeline_within_the_processor_is_unchanged() {
        let threads = [Some(1), Some(1)];
        let mut c = plan(vec![stage(0, 0.022), stage(1, 0.023)], Vec::new(), 8);
        let before = c.clone();
        assert_eq!(share_host_processor(&mut c, &threads, 2, 8), 1.0);
        assert_eq!(c, before);
    }

    /// A software adapter (two threads) as the slow stage while the two
    /// host stages mostly wait: a hair over two threads of two, so the
    /// stages slow by that hair and the rate barely moves (measured: such
    /// plans ran at 1.08-1.14 of the independent prediction).
    #[test]
    fn a_waiting_host_stage_barely_counts() {
        let threads = [Some(1), Some(1), Some(2)];
        let mut c = plan(
            vec![stage(0, 0.004), stage(1, 0.002), stage(2, 5.1)],
            Vec::new(),
            8,
        );
        let rate = c.predicted_tokens_per_s;
        let f = share_host_processor(&mut c, &threads, 2, 8);
        assert!(f > 1.0 && f < 1.001, "{f}");
        assert!(c.predicted_tokens_per_s < rate && c.predicted_tokens_per_s > rate * 0.999);
    }

    /// Devices with a processor of their own are never slowed, and count
    /// nothing; the host stages are, by demand over cores.
    #[test]
    fn only_stages_on_the_host_processor_are_slowed() {
        let threads = [Some(4), None, Some(4)];
        // replicas: 4 + 4 threads busy all the time on 4 cores
        let mut c = plan(
            vec![stage(0, 0.010), stage(1, 0.001), stage(2, 0.010)],
            vec![1, 1, 1],
            2,
        );
        let f = share_host_processor(&mut c, &threads, 4, 2);
        assert!((f - 2.0).abs() < 1e-12);
        assert_eq!(c.stages[1].seconds, 0.001);
        assert!((c.stages[0].seconds - 0.020).abs() < 1e-12);
        assert!((c.predicted_tokens_per_s - (100.0 + 2000.0 + 100.0)).abs() < 1e-6);
    }

    /// Against a direct count on random plans: the factor is the busy
    /// threads over the cores (at least 1), and the rate never rises.
    #[test]
    fn factor_is_busy_threads_over_cores_on_random_plans() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..500 {
            let devices = 1 + (next() % 5) as usize;
            let threads: Vec<Option<u32>> = (0..devices)
                .map(|_| (next() % 3 != 0).then(|| 1 + (next() % 4) as u32))
                .collect();
            let stages: Vec<StageChoice> = (0..devices)
                .map(|d| stage(d, 0.001 + (next() % 1000) as f64 * 1e-4))
                .collect();
            let groups = if next() % 2 == 0 {
                Vec::new()
            } else {
                vec![1; devices]
            };
            let cores = 1 + (next() % 8) as u32;
            let mut c = plan(stages.clone(), groups.clone(), 4);
            let before = c.predicted_tokens_per_s;
            let f = share_host_processor(&mut c, &threads, cores, 4);
            let busy: f64 = if groups.is_empty() {
                let slowest = stages.iter().map(|s| s.seconds).fold(0.0, f64::max);
                stages
                    .iter()
                    .map(|s| f64::from(threads[s.device_index].unwrap_or(0)) * s.seconds / slowest)
                    .sum()
            } else {
                threads.iter().map(|t| f64::from(t.unwrap_or(0))).sum()
            };
            let want = (busy / f64::from(cores)).max(1.0);
            assert!((f - want).abs() < 1e-9, "{f} vs {want}");
            assert!(c.predicted_tokens_per_s <= before * (1.0 + 1e-12));
        }
    }
}
