//! The driver protocol: rank 0 sends every rank a [`Command`] (the model,
//! the strategy, how many steps) over the transport, runs the steps itself
//! timing them between barriers, and collects every rank's
//! verification; the other ranks run [`serve_worker`] until `Stop`.
//! Commands and reports travel as JSON.

use std::sync::Arc;
use std::time::Instant;

use hetero_collectives::{Hierarchical, Transport};
use hetero_core::{Collective, Error, Result};
use serde::{Deserialize, Serialize};

use super::super::model::ModelSpec;
use super::super::strategy::{Layout, Strategy, SyncPlan};
use super::replica::Replica;

/// What rank 0 asks every rank to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    Run {
        model: ModelSpec,
        strategy: Strategy,
        warmup: usize,
        steps: usize,
        verify: bool,
    },
    Stop,
}

/// A rank's answer to a `Run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RankReport {
    rank: usize,
    error: Option<String>,
    mismatch: Option<String>,
}

/// Timings of one strategy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    /// Seconds of each timed step (rank 0, barrier to barrier).
    pub steps_s: Vec<f64>,
    pub median_s: f64,
    /// `Some(true)` when every rank matched the reference.
    pub verified: Option<bool>,
}

/// One `Run` command's contents, its strategy compiled: each rank
/// compiles the strategy once per command and hands the plan down.
struct Job {
    model: ModelSpec,
    plan: SyncPlan,
    warmup: usize,
    steps: usize,
    verify: bool,
}

/// Run `warmup + steps` steps (and verification) on this rank; rank 0
/// returns the step times.
async fn run_on_rank(
    t: &dyn Transport,
    hier: &Hierarchical,
    layout: Layout,
    job: Job,
) -> Result<(Vec<f64>, Option<String>)> {
    let Job {
        model,
        plan,
        warmup,
        steps,
        verify,
    } = job;
    let mut rep = Replica::new(t.rank(), layout, model, plan);
    let mut times = Vec::with_capacity(steps);
    for s in 0..warmup + steps {
        hier.barrier().await?;
        let start = Instant::now();
        rep.step(hier, t, s).await?;
        hier.barrier().await?;
        if s >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let mut mismatch = None;
    if verify {
        rep.reset_weights();
        hier.barrier().await?;
        rep.step(hier, t, 0).await?;
        mismatch = rep.check_against_reference();
    }
    Ok((times, mismatch))
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A rank other than 0: run commands from rank 0 until `Stop`.
pub async fn serve_worker(t: Arc<dyn Transport>, hier: Hierarchical, layout: Layout) -> Result<()> {
    loop {
        let msg = t.recv(0).await?;
        let cmd: Command = serde_json::from_slice(&msg)
            .map_err(|e| Error::invalid("command", format!("from rank 0: {e}")))?;
        match cmd {
            Command::Stop => return Ok(()),
            Command::Run {
                model,
                strategy,
                warmup,
                steps,
                verify,
            } => {
                // A strategy this rank cannot compile is reported to rank 0
                // like any other failure of the run.
                let out = match strategy.compile(&model, &layout) {
                    Ok(plan) => {
                        let job = Job {
                            model,
                            plan,
                            warmup,
                            steps,
                            verify,
                        };
                        run_on_rank(&*t, &hier, layout, job).await
                    }
                    Err(e) => Err(e),
                };
                let report = match out {
                    Ok((_, mismatch)) => RankReport {
                        rank: t.rank(),
                        error: None,
                        mismatch,
                    },
                    Err(e) => RankReport {
                        rank: t.rank(),
                        error: Some(e.to_string()),
                        mismatch: None,
                    },
                };
                let bytes = serde_json::to_vec(&report)
                    .map_err(|e| Error::invalid("report", e.to_string()))?;
                t.send(0, bytes).await?;
            }
        }
    }
}

/// Rank 0: sends commands, measures, collects verification.
#[derive(Debug)]
pub struct Driver {
    t: Arc<dyn Transport>,
    hier: Hierarchical,
    layout: Layout,
}

impl Driver {
    pub fn new(t: Arc<dyn Transport>, hier: Hierarchical, layout: Layout) -> Result<Self> {
        if t.rank() != 0 {
            return Err(Error::invalid("driver", "the driver runs on rank 0"));
        }
        Ok(Driver { t, hier, layout })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn hierarchical(&self) -> &Hierarchical {
        &self.hier
    }

    async fn broadcast(&self, cmd: &Command) -> Result<()> {
        let bytes =
            serde_json::to_vec(cmd).map_err(|e| Error::invalid("command", e.to_string()))?;
        for r in 1..self.t.size() {
            self.t.send(r, bytes.clone()).await?;
        }
        Ok(())
    }

    /// Run `strategy` for `warmup + steps` steps on every rank; the median
    /// of the timed steps; with `verify`, every rank's values checked.
    pub async fn measure(
        &self,
        model: &ModelSpec,
        strategy: &Strategy,
        warmup: usize,
        steps: usize,
        verify: bool,
    ) -> Result<Measurement> {
        let plan = strategy.compile(model, &self.layout)?;
        self.measure_compiled(model, strategy, plan, warmup, steps, verify)
            .await
    }

    /// [`Driver::measure`] of a strategy the caller has compiled already
    /// (the search compiles every candidate to predict it): `plan` must be
    /// `strategy.compile(model, &self.layout())`. The workers compile the
    /// strategy from the command themselves.
    pub(crate) async fn measure_compiled(
        &self,
        model: &ModelSpec,
        strategy: &Strategy,
        plan: SyncPlan,
        warmup: usize,
        steps: usize,
        verify: bool,
    ) -> Result<Measurement> {
        if steps == 0 {
            return Err(Error::invalid("steps", "need at least one timed step"));
        }
        self.broadcast(&Command::Run {
            model: model.clone(),
            strategy: strategy.clone(),
            warmup,
            steps,
            verify,
        })
        .await?;
        let job = Job {
            model: model.clone(),
            plan,
            warmup,
            steps,
            verify,
        };
        let (times, mine) = run_on_rank(&*self.t, &self.hier, self.layout, job).await?;
        let mut problems = Vec::new();
        if let Some(m) = mine {
            problems.push(m);
        }
        for r in 1..self.t.size() {
            let msg = self.t.recv(r).await?;
            let rep: RankReport = serde_json::from_slice(&msg)
                .map_err(|e| Error::invalid("report", format!("from rank {r}: {e}")))?;
            if let Some(e) = rep.error {
                return Err(Error::invalid(
                    "strategy",
                    format!("rank {} failed: {e}", rep.rank),
                ));
            }
            if let Some(m) = rep.mismatch {
                problems.push(m);
            }
        }
        if let Some(first) = problems.first() {
            return Err(Error::invalid(
                "synchronization",
                format!(
                    "{} rank(s) disagree with the naive reference; first: {first}",
                    problems.len()
                ),
            ));
        }
        Ok(Measurement {
            median_s: median(&times),
            steps_s: times,
            verified: verify.then_some(true),
        })
    }

    /// Tell every worker to stop.
    pub async fn stop(&self) -> Result<()> {
        self.broadcast(&Command::Stop).await?;
        self.t.flush().await
    }
}
