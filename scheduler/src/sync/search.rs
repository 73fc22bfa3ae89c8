//! Simulator-guided search (AutoSync's loop): sample many candidate
//! strategies, rank them with the simulator, run the most promising for
//! real, retrain the learned simulator on every measurement, repeat until
//! the trial budget is spent.

use std::collections::HashSet;

use hetero_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::cluster::ClusterModel;
use super::exec::Driver;
use super::model::ModelSpec;
use super::sim::{Learned, analytic, features, pairwise_accuracy};
use super::strategy::{Rng, Sampler, Strategy, SyncPlan, baselines};

/// A candidate: simulator score, analytic seconds, features, strategy, and
/// the strategy compiled (kept so that measuring it compiles nothing again).
type Candidate = (f64, f64, Vec<f64>, Strategy, SyncPlan);

/// Knobs of the search.
#[derive(Debug, Clone)]
pub struct SearchConfig {
    /// Strategies run for real (baselines not counted).
    pub trials: usize,
    /// Strategies run per round (between retrainings).
    pub per_round: usize,
    /// Candidates ranked by the simulator per round.
    pub candidates: usize,
    /// Of each round's strategies, how many are drawn at random from the
    /// candidates instead of taken from the top of the ranking, so the
    /// learned simulator also sees strategies it would not pick.
    pub explore: usize,
    pub warmup: usize,
    pub steps: usize,
    pub seed: u64,
    /// Allow fp16 compression in the candidates.
    pub fp16: bool,
    /// Relative difference below which two measured times count as a tie
    /// (left out of training pairs and accuracy).
    pub tie: f64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            trials: 50,
            per_round: 5,
            candidates: 400,
            explore: 2,
            warmup: 1,
            steps: 3,
            seed: 1,
            fp16: true,
            tie: 0.02,
        }
    }
}

/// One measured strategy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trial {
    pub label: String,
    pub strategy: Strategy,
    pub measured_s: f64,
    pub analytic_s: f64,
    pub features: Vec<f64>,
}

/// Everything the search found and measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchReport {
    pub model: String,
    pub variables: usize,
    pub model_bytes: usize,
    pub cluster: String,
    pub baselines: Vec<Trial>,
    pub trials: Vec<Trial>,
    /// The fastest strategy measured (search trials and baselines).
    pub best: Trial,
    /// 1-based trial at which the search first reached its best time.
    pub best_found_at_trial: Option<usize>,
    pub best_baseline: String,
    pub best_baseline_s: f64,
    pub best_search_s: Option<f64>,
    /// Best baseline time / best time.
    pub speedup_over_best_baseline: f64,
    /// Share of search trials faster than the best baseline.
    pub hit_rate: f64,
    /// Pairwise ranking accuracy on held-out measurements (`folds`-fold
    /// cross-validation: pairs inside each fold, the learned simulator
    /// trained on the other folds), for the analytic and learned simulators.
    pub ranking_accuracy_analytic: Option<f64>,
    pub ranking_accuracy_learned: Option<f64>,
    /// Pairs counted (not ties).
    pub held_out_pairs: usize,
    pub folds: usize,
    pub tie: f64,
    /// The best strategy was re-run and every rank matched the reference.
    pub best_verified: bool,
}

impl SearchReport {
    /// All measurements, baselines first.
    pub fn data(&self) -> Vec<(Vec<f64>, f64)> {
        self.baselines
            .iter()
            .chain(&self.trials)
            .map(|t| (t.features.clone(), t.measured_s))
            .collect()
    }
}

/// Folds of the cross-validated ranking accuracy.
pub const CV_FOLDS: usize = 5;

/// Cross-validated pairwise ranking accuracy of both simulators.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrossValidation {
    pub analytic: Option<f64>,
    pub learned: Option<f64>,
    pub pairs: usize,
}

/// Split `(features, measured, analytic)` rows into `folds` random folds;
/// for each, train the learned simulator on the others and count the
/// pairs inside the fold that each simulator orders right.
pub fn cross_validate(
    rows: &[(Vec<f64>, f64, f64)],
    folds: usize,
    tie: f64,
    seed: u64,
) -> CrossValidation {
    let folds = folds.max(2);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let mut rng = Rng::new(seed ^ 0x5eed);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let (mut learned_right, mut analytic_right, mut pairs) = (0.0, 0.0, 0usize);
    for f in 0..folds {
        let test: Vec<usize> = order
            .iter()
            .enumerate()
            .filter(|(k, _)| k % folds == f)
            .map(|(_, &i)| i)
            .collect();
        let train: Vec<(Vec<f64>, f64)> = order
            .iter()
            .enumerate()
            .filter(|(k, _)| k % folds != f)
            .map(|(_, &i)| (rows[i].0.clone(), rows[i].1))
            .collect();
        let real: Vec<f64> = test.iter().map(|&i| rows[i].1).collect();
        let analytic: Vec<f64> = test.iter().map(|&i| rows[i].2).collect();
        let sim = Learned::fit(&train, tie);
        let learned: Vec<f64> = test.iter().map(|&i| sim.score(&rows[i].0)).collect();
        let n = count_pairs(&real, tie);
        if n == 0 {
            continue;
        }
        pairs += n;
        analytic_right += pairwise_accuracy(&analytic, &real, tie).unwrap_or(0.0) * n as f64;
        learned_right += pairwise_accuracy(&learned, &real, tie).unwrap_or(0.0) * n as f64;
    }
    CrossValidation {
        analytic: (pairs > 0).then(|| analytic_right / pairs as f64),
        learned: (pairs > 0).then(|| learned_right / pairs as f64),
        pairs,
    }
}

fn count_pairs(real: &[f64], tie: f64) -> usize {
    let mut n = 0;
    for i in 0..real.len() {
        for j in i + 1..real.len() {
            if (real[i] - real[j]).abs() > tie * real[i].min(real[j]) {
                n += 1;
            }
        }
    }
    n
}

/// Pairwise accuracy on `test` of a learned simulator trained on `train`
/// (another model or cluster: transfer).
pub fn transfer_accuracy(
    train: &[(Vec<f64>, f64)],
    test: &[(Vec<f64>, f64)],
    tie: f64,
) -> Option<f64> {
    let sim = Learned::fit(train, tie);
    let pred: Vec<f64> = test.iter().map(|(x, _)| sim.score(x)).collect();
    let real: Vec<f64> = test.iter().map(|(_, t)| *t).collect();
    pairwise_accuracy(&pred, &real, tie)
}

fn describe(s: &Strategy) -> String {
    use super::strategy::{Compression, Synchronizer};
    let (mut ps, mut ar, mut ag, mut fp16) = (0, 0, 0, 0);
    let mut groups = HashSet::new();
    for v in &s.variables {
        match &v.sync {
            Synchronizer::Ps { .. } => ps += 1,
            Synchronizer::AllReduce {
                group, compression, ..
            } => {
                ar += 1;
                groups.insert(*group);
                if *compression == Compression::Fp16 {
                    fp16 += 1;
                }
            }
            Synchronizer::AllGather => ag += 1,
        }
    }
    format!(
        "ps {ps}, all-reduce {ar} in {} groups ({fp16} fp16), all-gather {ag}",
        groups.len()
    )
}

/// Run the search on the driver's ranks; `progress` gets one line per
/// measured strategy.
pub async fn search(
    driver: &Driver,
    cluster: &ClusterModel,
    model: &ModelSpec,
    cfg: &SearchConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<SearchReport> {
    if cfg.trials == 0 || cfg.per_round == 0 || cfg.candidates == 0 {
        return Err(Error::invalid(
            "search",
            "trials, per_round and candidates must be at least 1",
        ));
    }
    let layout = driver.layout();
    // The plan comes back too: the measurement runs it as compiled here.
    let predict = |s: &Strategy| -> Result<(f64, Vec<f64>, SyncPlan)> {
        let plan = s.compile(model, &layout)?;
        let b = analytic(model, &plan, cluster);
        Ok((b.total_s, features(&b), plan))
    };
    let mut seen: HashSet<Strategy> = HashSet::new();
    let mut base = Vec::new();
    for (name, s) in baselines::all(model, &layout) {
        let (analytic_s, feats, plan) = predict(&s)?;
        let m = driver
            .measure_compiled(model, &s, plan, cfg.warmup, cfg.steps, true)
            .await?;
        progress(&format!(
            "baseline {name}: {:.4} s (analytic {:.4} s; {})",
            m.median_s,
            analytic_s,
            describe(&s)
        ));
        seen.insert(s.clone());
        base.push(Trial {
            label: format!("baseline {name}"),
            strategy: s,
            measured_s: m.median_s,
            analytic_s,
            features: feats,
        });
    }
    let (best_base_name, best_base_s) = base.iter().map(|t| (t.label.clone(), t.measured_s)).fold(
        (String::new(), f64::INFINITY),
        |a, b| {
            if b.1 < a.1 { b } else { a }
        },
    );

    let sampler = Sampler::new(model, layout).with_fp16(cfg.fp16);
    let mut rng = Rng::new(cfg.seed);
    let mut trials: Vec<Trial> = Vec::new();
    while trials.len() < cfg.trials {
        let data: Vec<(Vec<f64>, f64)> = base
            .iter()
            .chain(&trials)
            .map(|t| (t.features.clone(), t.measured_s))
            .collect();
        let learned = (data.len() >= 6).then(|| Learned::fit(&data, cfg.tie));
        // Parents for mutation: the fastest measured so far.
        let mut measured: Vec<&Trial> = base.iter().chain(&trials).collect();
        measured.sort_by(|a, b| a.measured_s.total_cmp(&b.measured_s));
        let parents: Vec<Strategy> = measured
            .iter()
            .take(5)
            .map(|t| t.strategy.clone())
            .collect();
        let mut pool: Vec<Candidate> = Vec::new();
        let mut fresh: HashSet<Strategy> = HashSet::new();
        for k in 0..cfg.candidates {
            let s = if k % 2 == 0 || parents.is_empty() {
                sampler.sample(&mut rng)
            } else {
                let p = &parents[rng.below(parents.len())];
                sampler.mutate(p, &mut rng)
            };
            if seen.contains(&s) || !fresh.insert(s.clone()) {
                continue;
            }
            let (a, f, plan) = predict(&s)?;
            let score = learned.as_ref().map_or(a, |l| l.score(&f));
            pool.push((score, a, f, s, plan));
        }
        pool.sort_by(|a, b| a.0.total_cmp(&b.0));
        let take = cfg.per_round.min(cfg.trials - trials.len());
        if pool.is_empty() {
            progress("no new candidates: the sampler's space is exhausted");
            break;
        }
        // The top of the ranking, then random picks from the rest.
        let exploit = take.saturating_sub(cfg.explore).max(1).min(pool.len());
        let mut rest = pool.split_off(exploit);
        let mut chosen: Vec<(bool, Candidate)> = pool.into_iter().map(|c| (false, c)).collect();
        while chosen.len() < take && !rest.is_empty() {
            let k = rng.below(rest.len());
            chosen.push((true, rest.swap_remove(k)));
        }
        for (explored, (_, analytic_s, feats, s, plan)) in chosen {
            let m = driver
                .measure_compiled(model, &s, plan, cfg.warmup, cfg.steps, false)
                .await?;
            seen.insert(s.clone());
            trials.push(Trial {
                label: format!(
                    "trial {}{}",
                    trials.len() + 1,
                    if explored { " (explore)" } else { "" }
                ),
                strategy: s.clone(),
                measured_s: m.median_s,
                analytic_s,
                features: feats,
            });
            let best = trials
                .iter()
                .map(|t| t.measured_s)
                .fold(f64::INFINITY, f64::min);
            progress(&format!(
                "trial {}/{}{}: {:.4} s (analytic {:.4} s; {}); best {:.4} s, best baseline {:.4} s",
                trials.len(),
                cfg.trials,
                if explored { " (explore)" } else { "" },
                m.median_s,
                analytic_s,
                describe(&s),
                best,
                best_base_s
            ));
        }
    }

    let best_search = trials
        .iter()
        .min_by(|a, b| a.measured_s.total_cmp(&b.measured_s))
        .cloned();
    let best_found_at_trial = best_search
        .as_ref()
        .and_then(|b| trials.iter().position(|t| t.measured_s <= b.measured_s))
        .map(|i| i + 1);
    let best = match &best_search {
        Some(t) if t.measured_s < best_base_s => t.clone(),
        _ => base
            .iter()
            .min_by(|a, b| a.measured_s.total_cmp(&b.measured_s))
            .cloned()
            .ok_or_else(|| Error::invalid("search", "nothing was measured"))?,
    };
    // Re-run the winner with verification on every rank.
    driver.measure(model, &best.strategy, 0, 1, true).await?;
    let hits = trials.iter().filter(|t| t.measured_s < best_base_s).count();

    // Held-out ranking accuracy by k-fold cross-validation over every
    // measurement: each strategy is scored by a simulator that never saw it.
    let all: Vec<(Vec<f64>, f64, f64)> = base
        .iter()
        .chain(&trials)
        .map(|t| (t.features.clone(), t.measured_s, t.analytic_s))
        .collect();
    let cv = cross_validate(&all, CV_FOLDS, cfg.tie, cfg.seed);

    Ok(SearchReport {
        model: model.name.clone(),
        variables: model.variables.len(),
        model_bytes: model.bytes(),
        cluster: format!(
            "{} nodes x {} ranks; intra {:.1} us, {:.3} GB/s; inter {:.1} us, {:.3} GB/s ({})",
            layout.nodes,
            layout.ranks_per_node,
            cluster.intra.latency_s * 1e6,
            cluster.intra.bandwidth_bytes_per_s / 1e9,
            cluster.inter.latency_s * 1e6,
            cluster.inter.bandwidth_bytes_per_s / 1e9,
            cluster.source
        ),
        speedup_over_best_baseline: best_base_s / best.measured_s,
        hit_rate: if trials.is_empty() {
            0.0
        } else {
            hits as f64 / trials.len() as f64
        },
        best_search_s: best_search.as_ref().map(|t| t.measured_s),
        best,
        best_found_at_trial,
        best_baseline: best_base_name,
        best_baseline_s: best_base_s,
        baselines: base,
        trials,
        ranking_accuracy_analytic: cv.analytic,
        ranking_accuracy_learned: cv.learned,
        held_out_pairs: cv.pairs,
        folds: CV_FOLDS,
        tie: cfg.tie,
        best_verified: true,
    })
}
