//! Which consecutive layers each device holds: the exact chain DP on the
//! measured profiles, with the baselines beside it.

use serde::{Deserialize, Serialize};

use hetero_core::{Error, Result};
use hetero_partition::{
    ChainPlan, ChainProblem, PartitionError, best_chain_pipelines_sized, best_chain_split_in_order,
    best_chain_split_stages, equal_split, evaluate_chain, memory_proportional_split,
};

use super::contention::share_host_processor;
use super::profile::LayerProfile;

/// The shapes a plan must hold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlanOptions {
    /// Sequences of a group: a device (or replica) runs one group, a
    /// pipeline of `S` stages keeps `S` groups in flight (one per stage),
    /// so each stage holds the KV cache of `S x batch` sequences for its
    /// layers.
    pub batch: usize,
    /// Positions each may reach.
    pub max_len: usize,
    /// Bytes every stage keeps free for a call's activations.
    pub activation_bytes: u64,
}

/// One candidate split, scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitChoice {
    /// "dp", "memory-proportional", "equal" or "single:DEVICE".
    pub name: String,
    /// Per stage: device (its index in the plan's devices and its id),
    /// layers `[first, last]`, resident bytes (weights + KV), predicted
    /// seconds per decode step of the batch.
    pub stages: Vec<StageChoice>,
    /// The slowest stage's seconds per step.
    pub bottleneck_s: f64,
    /// `batch / bottleneck`: decode tokens/s when every stage is busy,
    /// i.e. with one group of `batch` sequences per stage in flight
    /// (`batch x stages` sequences; see [`super::run::measure_decode`]).
    pub predicted_tokens_per_s: f64,
    /// Every stage fits its device.
    pub fits: bool,
    /// Several pipelines side by side ("replicas", "pipelines"): how many
    /// consecutive entries of `stages` each has. Empty: one pipeline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<usize>,
    /// How much the stages on the host's processor were slowed because
    /// the plan wants more of its threads than it has (see
    /// `contention.rs`); `None`: not oversubscribed. `seconds`,
    /// `bottleneck_s` and the prediction include it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_contention: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageChoice {
    pub device_index: usize,
    pub device: String,
    pub layers: [usize; 2],
    pub resident_bytes: u64,
    pub seconds: f64,
}

/// The DP's plan and the baselines, with the devices left out and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitReport {
    pub options: PlanOptions,
    pub devices: Vec<String>,
    pub memory_bytes: Vec<u64>,
    /// `None` when nothing fits.
    pub dp: Option<SplitChoice>,
    pub memory_proportional: SplitChoice,
    pub equal: SplitChoice,
    /// The fastest device that holds the whole model alone, if any.
    pub best_single: Option<SplitChoice>,
    /// Data-parallel replicas instead of a pipeline: every device that
    /// holds the whole model runs its own copy on its own group of `batch`
    /// sequences (one "stage" per replica, every layer); predicted
    /// tokens/s is the sum of theirs. `None` when no device holds it.
    pub replicas: Option<SplitChoice>,
    /// Replicas of pipelines: disjoint groups of devices, each running its
    /// own pipeline (or whole copy) on its own group of `batch` sequences,
    /// chosen to maximise the summed tokens/s (exact: the set-partition DP
    /// of `hetero_partition::best_chain_pipelines`). Only when it differs
    /// from both `dp` and `replicas` (two groups or more, one of them a
    /// pipeline); `None` with the devices in a fixed order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipelines: Option<SplitChoice>,
    /// The plan with the highest predicted tokens/s: "dp" (one pipeline),
    /// "replicas" or "pipelines"; "none" when no plan fits the devices'
    /// memory. See [`SplitReport::explain`].
    pub recommended: String,
    /// Devices that cannot hold even one layer, with the reason.
    pub left_out: Vec<(String, String)>,
    /// With the devices in a fixed order ([`plan_split_in_order`]): the
    /// DP's split in any order, for comparison (`dp` is the in-order one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any_order: Option<SplitChoice>,
}

impl SplitChoice {
    /// The stages of each pipeline side by side (`groups`; one pipeline
    /// when it is empty). An error when the groups count more stages than
    /// there are.
    pub fn pipelines(&self) -> Result<Vec<&[StageChoice]>> {
        if self.groups.is_empty() {
            return Ok(vec![&self.stages]);
        }
        let mut next = 0;
        self.groups
            .iter()
            .map(|&g| {
                let group = self.stages.get(next..next + g).ok_or_else(|| {
                    Error::invalid(
                        "plan",
                        format!("{:?} has fewer stages than its groups", self.name),
                    )
                })?;
                next += g;
                Ok(group)
            })
            .collect()
    }

    /// Decode tokens/s of this plan if its stages took `seconds` a step
    /// (one figure per stage, in order): each pipeline `batch` over its
    /// slowest stage, summed over the pipelines side by side, as
    /// `predicted_tokens_per_s` is from the stages' `seconds`.
    pub fn rate_with(&self, seconds: &[f64], batch: usize) -> Result<f64> {
        if seconds.len() != self.stages.len() {
            return Err(Error::invalid(
                "plan",
                format!(
                    "{:?} has {} stages, not {}",
                    self.name,
                    self.stages.len(),
                    seconds.len()
                ),
            ));
        }
        let mut rate = 0.0;
        let mut next = 0;
        for group in self.pipelines()? {
            let slowest = seconds[next..next + group.len()]
                .iter()
                .copied()
                .fold(0.0, f64::max);
            if slowest > 0.0 {
                rate += batch as f64 / slowest;
            }
            next += group.len();
        }
        Ok(rate)
    }
}

impl SplitReport {
    /// Why the DP chose what it chose, in numbers.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        let line = |c: &SplitChoice| {
            let stage = |s: &StageChoice| {
                format!(
                    "{} layers {}-{} ({:.1} MiB, {:.2} ms)",
                    s.device,
                    s.layers[0],
                    s.layers[1],
                    s.resident_bytes as f64 / 1048576.0,
                    s.seconds * 1e3
                )
            };
            // pipelines side by side: " || " between them (a malformed
            // grouping is shown as one pipeline)
            let groups = c
                .pipelines()
                .unwrap_or_else(|_| vec![c.stages.as_slice()])
                .into_iter()
                .map(|g| g.iter().map(stage).collect::<Vec<_>>().join(" | "))
                .collect::<Vec<_>>();
            // (a factor that would print as x1.00 is left unsaid)
            let shared = match c.host_contention {
                Some(f) if f >= 1.005 => {
                    format!(" (host processor oversubscribed: its stages x{f:.2})")
                }
                _ => String::new(),
            };
            format!(
                "{:<20} {:>9.1} tok/s predicted, slowest stage {:.2} ms{}{shared}: {}\n",
                c.name,
                c.predicted_tokens_per_s,
                c.bottleneck_s * 1e3,
                if c.fits { "" } else { " (DOES NOT FIT)" },
                groups.join(" || ")
            )
        };
        match (&self.dp, &self.any_order) {
            (Some(dp), _) => out.push_str(&line(dp)),
            (None, Some(_)) => out.push_str(
                "dp: no split with every device in its order, one range each, fits their memory\n",
            ),
            (None, None) => out.push_str("dp: no split fits the devices' memory\n"),
        }
        if let Some(free) = &self.any_order {
            let mut free = free.clone();
            free.name = "dp in any order".into();
            out.push_str(&line(&free));
        }
        out.push_str(&line(&self.memory_proportional));
        out.push_str(&line(&self.equal));
        match &self.best_single {
            Some(s) => out.push_str(&line(s)),
            None => out.push_str("single device: none holds the whole model\n"),
        }
        if let Some(r) = &self.replicas {
            out.push_str(&line(r));
        }
        if let Some(p) = &self.pipelines {
            out.push_str(&line(p));
        }
        let rate = |c: &Option<SplitChoice>| c.as_ref().map_or(0.0, |c| c.predicted_tokens_per_s);
        let pipelines = match &self.pipelines {
            Some(p) => format!(
                ", {} pipelines side by side {:.1} tok/s",
                p.groups.len(),
                p.predicted_tokens_per_s
            ),
            None => String::new(),
        };
        if self.recommended == "none" {
            out.push_str(
                "recommended: none: no plan fits the devices' memory (lower --batch or \
                 --max-len, or add a device)\n",
            );
        } else {
            out.push_str(&format!(
                "recommended: {} (pipeline {:.1} tok/s, replicas {:.1} tok/s{pipelines} \
                 predicted)\n",
                self.recommended,
                rate(&self.dp),
                rate(&self.replicas)
            ));
        }
        for (d, why) in &self.left_out {
            out.push_str(&format!("left out {d}: {why}\n"));
        }
        if let (Some(dp), Some(single)) = (&self.dp, &self.best_single) {
            out.push_str(&format!(
                "the DP's split is predicted {:.2}x the best single device\n",
                dp.predicted_tokens_per_s / single.predicted_tokens_per_s
            ));
        }
        out
    }
}

/// The chain problem of `profiles` (one per device, same model) under
/// `memory` bytes per device and `options`, for one group of sequences
/// (a single device, or a replica).
pub fn chain_problem(
    profiles: &[LayerProfile],
    memory: &[u64],
    options: &PlanOptions,
) -> Result<ChainProblem> {
    chain_problem_for_stages(profiles, memory, options, 1)
}

/// [`chain_problem`] for a pipeline of `stages` stages: it keeps one group
/// of `options.batch` sequences per stage in flight (what its predicted
/// tokens/s assumes), so every stage holds the KV cache of `stages` groups
/// for its layers.
pub fn chain_problem_for_stages(
    profiles: &[LayerProfile],
    memory: &[u64],
    options: &PlanOptions,
    stages: usize,
) -> Result<ChainProblem> {
    let Some(first) = profiles.first() else {
        return Err(Error::invalid("devices", "none to place the model on"));
    };
    let n = first.layer_s.len();
    if let Some(p) = profiles
        .iter()
        .find(|p| p.layer_s.len() != n || p.model != first.model)
    {
        return Err(Error::invalid(
            "profiles",
            format!(
                "{} profiles {} ({} layers), {} profiles {} ({} layers): not one model",
                first.device,
                first.model,
                n,
                p.device,
                p.model,
                p.layer_s.len()
            ),
        ));
    }
    if memory.len() != profiles.len() {
        return Err(Error::invalid("memory", "one size per device"));
    }
    let kv = |p: &LayerProfile| {
        p.kv_bytes_per_position_layer
            * (options.batch * stages.max(1)) as u64
            * options.max_len as u64
    };
    Ok(ChainProblem {
        time: profiles
            .iter()
            .map(|p| {
                (0..n)
                    .map(|l| {
                        p.layer_s[l]
                            + if l == 0 { p.embed_s } else { 0.0 }
                            + if l + 1 == n { p.head_s } else { 0.0 }
                    })
                    .collect()
            })
            .collect(),
        bytes: profiles
            .iter()
            .map(|p| {
                (0..n)
                    .map(|l| {
                        p.layer_bytes[l]
                            + kv(p)
                            + if l == 0 { p.embed_bytes } else { 0 }
                            + if l + 1 == n { p.head_bytes } else { 0 }
                    })
                    .collect()
            })
            .collect(),
        memory: memory
            .iter()
            .map(|m| m.saturating_sub(options.activation_bytes))
            .collect(),
        boundary: profiles
            .iter()
            .map(|p| vec![p.boundary_s / 2.0; n.saturating_sub(1)])
            .collect(),
        split_last_bytes: profiles.iter().map(|p| p.tied_copy_bytes).collect(),
    })
}

fn choice(name: &str, plan: &ChainPlan, devices: &[String], batch: usize) -> SplitChoice {
    SplitChoice {
        name: name.into(),
        stages: plan
            .stages
            .iter()
            .map(|s| StageChoice {
                device_index: s.device,
                device: devices[s.device].clone(),
                layers: [s.units.start, s.units.end - 1],
                resident_bytes: s.bytes,
                seconds: s.load,
            })
            .collect(),
        bottleneck_s: plan.objective,
        predicted_tokens_per_s: if plan.objective > 0.0 {
            batch as f64 / plan.objective
        } else {
            0.0
        },
        fits: plan.fits,
        groups: Vec::new(),
        host_contention: None,
    }
}

fn partition_error(e: PartitionError) -> Error {
    Error::invalid("model split", e.to_string())
}

/// The DP's split of the model over the profiled devices (each with
/// `memory[i]` bytes), the baselines, and the devices left out.
pub fn plan_split(
    profiles: &[LayerProfile],
    memory: &[u64],
    options: PlanOptions,
) -> Result<SplitReport> {
    plan(profiles, memory, options, false)
}

/// [`plan_split`] with every device holding a range, in the order given:
/// the stages of a split over processes, whose line runs in rank order
/// (rank 0 holds the embedding and samples). `dp` is the best such split
/// (`None` when none fits), `any_order` the DP's without the constraint.
pub fn plan_split_in_order(
    profiles: &[LayerProfile],
    memory: &[u64],
    options: PlanOptions,
) -> Result<SplitReport> {
    plan(profiles, memory, options, true)
}

fn plan(
    profiles: &[LayerProfile],
    memory: &[u64],
    options: PlanOptions,
    in_order: bool,
) -> Result<SplitReport> {
    // problems[k - 1]: a pipeline of k stages (the KV of k groups each)
    let problems = (1..=profiles.len().max(1))
        .map(|k| chain_problem_for_stages(profiles, memory, &options, k))
        .collect::<Result<Vec<_>>>()?;
    let problem = &problems[0];
    let devices: Vec<String> = profiles.iter().map(|p| p.device.clone()).collect();
    let n = problem.units();
    let dn = devices.len();
    let mut left_out = Vec::new();
    for (d, p) in profiles.iter().enumerate() {
        let smallest = problem.bytes[d].iter().min().copied().unwrap_or(0);
        if smallest > problem.memory[d] {
            left_out.push((
                p.device.clone(),
                format!(
                    "{} bytes free for weights and KV (of {}, {} kept for activations) hold no \
                     layer: the smallest needs {smallest} ({} of KV for {} sequences of {})",
                    problem.memory[d],
                    memory[d],
                    options.activation_bytes,
                    p.kv_bytes_per_position_layer * options.batch as u64 * options.max_len as u64,
                    options.batch,
                    options.max_len
                ),
            ));
        }
    }
    let fitting_or_none = |plan: std::result::Result<ChainPlan, PartitionError>| match plan {
        Ok(plan) => Ok(Some(plan)),
        Err(PartitionError::Infeasible(_)) => Ok(None),
        Err(e) => Err(partition_error(e)),
    };
    let solve = |in_order: bool| -> Result<Option<SplitChoice>> {
        let plan = if in_order {
            fitting_or_none(best_chain_split_in_order(&problems[dn - 1]))?
        } else {
            // the best over every stage count, each with its KV; ties to
            // the fewest stages
            let mut best: Option<ChainPlan> = None;
            for k in 1..=dn.min(n) {
                if let Some(p) = fitting_or_none(best_chain_split_stages(&problems[k - 1], k))?
                    && best.as_ref().is_none_or(|b| p.objective < b.objective)
                {
                    best = Some(p);
                }
            }
            best
        };
        Ok(plan.map(|p| choice("dp", &p, &devices, options.batch)))
    };
    let dp = solve(in_order)?;
    let any_order = if in_order { solve(false)? } else { None };
    // the baselines use every device (those beyond the units get none)
    let all = &problems[dn.min(n).max(1) - 1];
    let proportional = memory_proportional_split(all).map_err(partition_error)?;
    let equal = equal_split(all).map_err(partition_error)?;
    let mut best_single: Option<SplitChoice> = None;
    for d in 0..devices.len() {
        let plan = evaluate_chain(problem, &[(d, 0..n)]).map_err(partition_error)?;
        if plan.fits
            && best_single
                .as_ref()
                .is_none_or(|b| plan.objective < b.bottleneck_s)
        {
            best_single = Some(choice(
                &format!("single:{}", devices[d]),
                &plan,
                &devices,
                options.batch,
            ));
        }
    }
    let singles: Vec<ChainPlan> = (0..devices.len())
        .map(|d| evaluate_chain(problem, &[(d, 0..n)]).map_err(partition_error))
        .collect::<Result<_>>()?;
    let fitting: Vec<&ChainPlan> = singles
        .iter()
        .filter(|p| p.fits && p.objective > 0.0)
        .collect();
    let mut replicas = (!fitting.is_empty()).then(|| SplitChoice {
        name: "replicas".into(),
        stages: fitting
            .iter()
            .flat_map(|p| choice("", p, &devices, options.batch).stages)
            .collect(),
        bottleneck_s: fitting.iter().map(|p| p.objective).fold(0.0, f64::max),
        predicted_tokens_per_s: fitting
            .iter()
            .map(|p| options.batch as f64 / p.objective)
            .sum(),
        fits: true,
        groups: vec![1; fitting.len()],
        host_contention: None,
    });
    let mut pipelines = if in_order {
        None
    } else {
        match best_chain_pipelines_sized(&problems) {
            Ok(plans) if plans.len() > 1 && plans.iter().any(|p| p.stages.len() > 1) => {
                Some(SplitChoice {
                    name: "pipelines".into(),
                    stages: plans
                        .iter()
                        .flat_map(|p| choice("", p, &devices, options.batch).stages)
                        .collect(),
                    bottleneck_s: plans.iter().map(|p| p.objective).fold(0.0, f64::max),
                    predicted_tokens_per_s: plans
                        .iter()
                        .map(|p| options.batch as f64 / p.objective)
                        .sum(),
                    fits: true,
                    groups: plans.iter().map(|p| p.stages.len()).collect(),
                    host_contention: None,
                })
            }
            Ok(_) | Err(PartitionError::Infeasible(_)) => None,
            Err(e) => return Err(partition_error(e)),
        }
    };
    // Side-by-side plans on this machine's processor share it (see
    // contention.rs for why single pipelines are not rescored; not across
    // processes either: their stages may be on other machines).
    let cores = profiles
        .iter()
        .filter(|p| p.host_threads.is_some())
        .filter_map(|p| p.host_cores)
        .min();
    if let (false, Some(cores)) = (in_order, cores) {
        let threads: Vec<Option<u32>> = profiles.iter().map(|p| p.host_threads).collect();
        for c in replicas.iter_mut().chain(pipelines.iter_mut()) {
            share_host_processor(c, &threads, cores, options.batch);
        }
    }
    let rate = |c: &Option<SplitChoice>| c.as_ref().map_or(0.0, |c| c.predicted_tokens_per_s);
    let (r_dp, r_rep, r_pipes) = (rate(&dp), rate(&replicas), rate(&pipelines));
    // The simpler plan on a tie (within rounding).
    let recommended = if r_pipes > r_dp.max(r_rep) * (1.0 + 1e-9) {
        "pipelines"
    } else if r_rep > r_dp || (dp.is_none() && replicas.is_some()) {
        "replicas"
    } else if dp.is_none() {
        // No split fits: nothing to run, and the report says so rather
        // than naming a plan that does not exist.
        "none"
    } else {
        "dp"
    }
    .to_string();
    Ok(SplitReport {
        replicas,
        pipelines,
        recommended,
        options,
        memory_bytes: memory.to_vec(),
        dp,
        memory_proportional: choice(
            "memory-proportional",
            &proportional,
            &devices,
            options.batch,
        ),
        equal: choice("equal", &equal, &devices, options.batch),
        devices,
        best_single,
        left_out,
        any_order,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::ProfileOptions;

    fn profile(device: &str, layer_s: f64) -> LayerProfile {
        LayerProfile {
            device: device.into(),
            device_name: device.into(),
            model: "m.gguf".into(),
            options: ProfileOptions::default(),
            layer_s: vec![layer_s; 10],
            embed_s: 0.0,
            head_s: layer_s * 4.0,
            boundary_s: layer_s / 10.0,
            layer_bytes: vec![100; 10],
            embed_bytes: 300,
            head_bytes: 10,
            tied_copy_bytes: 300,
            kv_bytes_per_position_layer: 1,
            host_threads: None,
            host_cores: None,
        }
    }

    #[test]
    fn a_model_no_device_holds_alone_is_split_and_a_tiny_device_left_out() {
        let profiles = [profile("a", 1.0), profile("b", 2.0), profile("c", 0.1)];
        let options = PlanOptions {
            batch: 2,
            max_len: 5,
            activation_bytes: 50,
        };
        // Whole model: 10 x (100 + 10 KV) + 300 + 10 = 1410 bytes.
        let r = plan_split(&profiles, &[1000, 1000, 100], options).unwrap();
        assert!(r.best_single.is_none());
        assert!(r.replicas.is_none());
        assert_eq!(r.recommended, "dp");
        let dp = r.dp.as_ref().expect("two devices hold it");
        assert!(dp.fits && dp.stages.len() == 2);
        assert_eq!(r.left_out.len(), 1);
        assert_eq!(r.left_out[0].0, "c");
        let covered: usize = dp
            .stages
            .iter()
            .map(|s| s.layers[1] - s.layers[0] + 1)
            .sum();
        assert_eq!(covered, 10);
        for s in &dp.stages {
            assert!(s.resident_bytes <= 950, "{s:?}");
        }
        // The faster device takes more of the work, and the DP is no
        // worse than a baseline that fits.
        for b in [&r.equal, &r.memory_proportional] {
            if b.fits {
                assert!(dp.bottleneck_s <= b.bottleneck_s + 1e-12);
            }
        }
        assert!(r.explain().contains("left out c"));
    }

    #[test]
    fn nothing_is_recommended_when_no_plan_fits() {
        let profiles = [profile("a", 1.0), profile("b", 2.0)];
        let options = PlanOptions {
            batch: 2,
            max_len: 5,
            activation_bytes: 50,
        };
        // Two devices of 600 bytes cannot hold the 1410-byte model.
        let r = plan_split(&profiles, &[600, 600], options).unwrap();
        assert!(r.dp.is_none() && r.replicas.is_none() && r.pipelines.is_none());
        assert_eq!(r.recommended, "none");
        let text = r.explain();
        assert!(text.contains("recommended: none: no plan fits"), "{text}");
        assert!(!text.contains("recommended: dp"), "{text}");
    }

    /// The replicas of `replicas_are_recommended_...` plus a software
    /// adapter on the same two cores: four busy threads of two halve
    /// every copy, and the pipeline of the two hosts (two threads) wins.
    #[test]
    fn replicas_that_oversubscribe_the_host_processor_lose_to_the_pipeline() {
        let on_host = |device: &str, layer_s: f64, threads: u32| LayerProfile {
            host_threads: Some(threads),
            host_cores: Some(2),
            ..profile(device, layer_s)
        };
        let profiles = [
            on_host("a", 1.0, 1),
            on_host("b", 1.0, 1),
            on_host("lavapipe", 100.0, 2),
        ];
        let options = PlanOptions {
            batch: 4,
            max_len: 5,
            activation_bytes: 0,
        };
        let r = plan_split(&profiles, &[1 << 20; 3], options).unwrap();
        let reps = r.replicas.as_ref().expect("every device holds it");
        assert_eq!(reps.host_contention, Some(2.0));
        let independent = 8.0 / 14.0 + 4.0 / 1400.0;
        assert!((reps.predicted_tokens_per_s - independent / 2.0).abs() < 1e-9);
        let dp = r.dp.as_ref().expect("a split fits");
        assert_eq!(dp.host_contention, None, "{dp:?}");
        assert!(dp.predicted_tokens_per_s > reps.predicted_tokens_per_s);
        assert_eq!(r.recommended, "dp");
        assert!(
            r.explain()
                .contains("host processor oversubscribed: its stages x2.00")
        );
        // Without the processor's figures (a profile cached before them),
        // the devices count as independent, as before.
        let bare: Vec<LayerProfile> = profiles
            .iter()
            .map(|p| LayerProfile {
                host_threads: None,
                ..p.clone()
            })
            .collect();
        let r = plan_split(&bare, &[1 << 20; 3], options).unwrap();
        assert!((r.replicas.unwrap().predicted_tokens_per_s - independent).abs() < 1e-9);
    }

    #[test]
    fn replicas_are_recommended_when_every_device_holds_the_model() {
        let profiles = [profile("a", 1.0), profile("b", 1.0)];
        let options = PlanOptions {
            batch: 4,
            max_len: 5,
            activation_bytes: 0,
        };
        let r = plan_split(&profiles, &[1 << 20, 1 << 20], options).unwrap();
        let reps = r.replicas.as_ref().expect("both hold it");
        assert_eq!(reps.stages.len(), 2);
        // Two copies of a 14 s model at batch 4 each; the pipeline pays
        // its boundaries and cannot halve the head.
        assert!((reps.predicted_tokens_per_s - 8.0 / 14.0).abs() < 1e-9);
        assert_eq!(r.recommended, "replicas");
        assert!(r.explain().contains("recommended: replicas"));
    }

    #[test]
    fn in_rank_order_every_device_holds_layers_in_order() {
        // A slow device first: in any order the fast one would take the
        // head and most layers; in rank order the slow one still holds
        // the first range.
        let profiles = [profile("slow", 2.0), profile("fast", 0.5)];
        let options = PlanOptions {
            batch: 1,
            max_len: 5,
            activation_bytes: 0,
        };
        let r = plan_split_in_order(&profiles, &[1 << 20, 1 << 20], options).unwrap();
        let dp = r.dp.as_ref().expect("fits");
        let order: Vec<usize> = dp.stages.iter().map(|s| s.device_index).collect();
        assert_eq!(order, vec![0, 1]);
        assert_eq!(dp.stages[0].layers[0], 0);
        assert_eq!(dp.stages[1].layers[1], 9);
        let free = r.any_order.as_ref().expect("the free DP is reported");
        assert!(free.bottleneck_s <= dp.bottleneck_s + 1e-12);
        assert!(r.explain().contains("dp in any order"));
        // The free DP alone has no such entry.
        let plain = plan_split(&profiles, &[1 << 20, 1 << 20], options).unwrap();
        assert!(plain.any_order.is_none());
        // A device that holds no layer: no in-order split.
        let r = plan_split_in_order(&profiles, &[1 << 20, 50], options).unwrap();
        assert!(r.dp.is_none());
        assert!(r.explain().contains("in its order"));
    }

    #[test]
    fn pipelines_side_by_side_when_the_head_binds_one_long_pipeline() {
        // Four equal devices, none holds the model alone (1410 bytes), two
        // do. One pipeline over four is bound by the stage with the head
        // (4 s of a 14 s model); two pipelines of two run 7 s stages
        // each, side by side: more tokens/s.
        let profiles = ["a", "b", "c", "d"].map(|d| profile(d, 1.0));
        let options = PlanOptions {
            batch: 2,
            max_len: 5,
            activation_bytes: 50,
        };
        let r = plan_split(&profiles, &[1000; 4], options).unwrap();
        assert!(r.replicas.is_none());
        let dp = r.dp.as_ref().expect("fits");
        let pipes = r.pipelines.as_ref().expect("two pipelines fit");
        assert_eq!(pipes.groups, vec![2, 2]);
        assert_eq!(pipes.stages.len(), 4);
        let mut devices: Vec<usize> = pipes.stages.iter().map(|s| s.device_index).collect();
        devices.sort();
        assert_eq!(devices, vec![0, 1, 2, 3]);
        assert!(pipes.predicted_tokens_per_s > dp.predicted_tokens_per_s);
        assert_eq!(r.recommended, "pipelines");
        assert!(r.explain().contains("2 pipelines side by side"));
        // Every device holds the model: plain replicas, no pipelines entry.
        let r = plan_split(&profiles, &[1 << 20; 4], options).unwrap();
        assert!(r.pipelines.is_none());
        assert_eq!(r.recommended, "replicas");
    }

    /// `rate_with` the stages' own seconds is every plan's prediction,
    /// however the planner computed it (the DP's objective, replicas'
    /// sum, pipelines' set partition); other seconds give the same rule
    /// by hand; a count of seconds that is not the stages' is an error.
    #[test]
    fn rate_with_the_stages_own_seconds_is_the_prediction() {
        let profiles = [
            profile("a", 1.0),
            profile("b", 2.0),
            profile("c", 1.5),
            profile("d", 1.0),
        ];
        let options = PlanOptions {
            batch: 2,
            max_len: 5,
            activation_bytes: 50,
        };
        for memory in [[1000; 4], [1 << 20; 4], [1 << 20, 1000, 1000, 1000]] {
            let r = plan_split(&profiles, &memory, options).unwrap();
            let plans = [
                r.dp.clone(),
                Some(r.memory_proportional.clone()),
                Some(r.equal.clone()),
                r.best_single.clone(),
                r.replicas.clone(),
                r.pipelines.clone(),
            ];
            for c in plans.into_iter().flatten().filter(|c| c.fits) {
                let own: Vec<f64> = c.stages.iter().map(|s| s.seconds).collect();
                let rate = c.rate_with(&own, 2).unwrap();
                assert!(
                    (rate - c.predicted_tokens_per_s).abs() <= 1e-9 * rate,
                    "{c:?}: {rate}"
                );
                // Stage i takes i + 1 seconds: each pipeline is bound by
                // its last stage.
                let ramp: Vec<f64> = (1..=own.len()).map(|i| i as f64).collect();
                let mut want = 0.0;
                let mut last = 0;
                for g in c.pipelines().unwrap() {
                    last += g.len();
                    want += 2.0 / last as f64;
                }
                assert!((c.rate_with(&ramp, 2).unwrap() - want).abs() < 1e-12);
                assert!(c.rate_with(&own[1..], 2).is_err());
            }
        }
    }

    #[test]
    fn pipeline_stages_hold_the_kv_of_every_group_in_flight() {
        let profiles = [profile("a", 1.0), profile("b", 1.0)];
        let options = PlanOptions {
            batch: 2,
            max_len: 5,
            activation_bytes: 0,
        };
        let r = plan_split(&profiles, &[1 << 20, 1 << 20], options).unwrap();
        let dp = r.dp.as_ref().expect("fits");
        let stages = dp.stages.len() as u64;
        assert_eq!(stages, 2, "two equal devices halve the work");
        // 1 byte per position and layer: 2 x 5 per group, `stages` groups.
        let kv = 2 * 5 * stages;
        for (i, s) in dp.stages.iter().enumerate() {
            let layers = (s.layers[1] - s.layers[0] + 1) as u64;
            let mut want = layers * (100 + kv);
            if i == 0 {
                want += 300; // the embedding
            }
            if i + 1 == dp.stages.len() {
                want += 10 + 300; // the head and the tied embedding's copy
            }
            assert_eq!(s.resident_bytes, want, "stage {i}: {s:?}");
        }
        // With memory for one group's KV only, the pipeline no longer
        // fits where it did: 10 layers x (100 + 20) + 620 = 1820 bytes in
        // all, 1720 with one group's KV.
        let tight = plan_split(&profiles, &[900, 900], options).unwrap();
        if let Some(dp) = &tight.dp {
            for s in &dp.stages {
                assert!(s.resident_bytes <= 900, "{s:?}");
            }
        }
    }

    #[test]
    fn profiles_of_two_models_are_refused() {
        let mut b = profile("b", 1.0);
        b.model = "other.gguf".into();
        let options = PlanOptions {
            batch: 1,
            max_len: 1,
            activation_bytes: 0,
        };
        let e = plan_split(&[profile("a", 1.0), b], &[1 << 20, 1 << 20], options).unwrap_err();
        assert!(e.to_string().contains("not one model"), "{e}");
    }
}
