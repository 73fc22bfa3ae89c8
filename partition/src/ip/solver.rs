//! Which MILP solver runs an integer program, and what it reports back.
//!
//! The models in [`super`] are written once against `good_lp`'s builder;
//! this file hands a finished model (variables, objective, constraints) to
//! the chosen solver and returns the values of every variable, the solver's
//! status and its best bound, the same way for each solver.
//!
//! - [`IpSolver::MicroLp`] (default): `microlp`, pure Rust, so the default
//!   build needs no system library. Branch and bound on its own dual
//!   simplex; exact, slower than Cbc on large models.
//! - [`IpSolver::Cbc`]: COIN-OR Cbc through the system's `libCbcSolver`,
//!   only with the `cbc` cargo feature; faster on large instances, and the
//!   only one that writes MPS. Asking for it in a build without the feature
//!   is a typed `Unsupported` error that says how to get it.

use std::collections::HashMap;
use std::path::Path;

use good_lp::solvers::SolutionStatus;
use good_lp::{
    Constraint, ProblemVariables, ResolutionError, Solution, SolverModel, Variable, WithTimeLimit,
};

use crate::{PartitionError, Result};

/// The MILP solver behind [`super::IntegerProgram`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IpSolver {
    /// microlp: pure Rust, always built.
    #[default]
    MicroLp,
    /// COIN-OR Cbc: needs the `cbc` feature (and the system's Cbc library).
    Cbc,
}

impl IpSolver {
    /// Every solver, built or not.
    pub const ALL: [IpSolver; 2] = [IpSolver::MicroLp, IpSolver::Cbc];

    /// The name used on command lines and in reports.
    pub fn name(self) -> &'static str {
        match self {
            IpSolver::MicroLp => "microlp",
            IpSolver::Cbc => "cbc",
        }
    }

    /// Whether this build can run it.
    pub fn is_built(self) -> bool {
        match self {
            IpSolver::MicroLp => true,
            IpSolver::Cbc => cfg!(feature = "cbc"),
        }
    }

    /// The solvers this build can run.
    pub fn built() -> Vec<IpSolver> {
        Self::ALL.into_iter().filter(|s| s.is_built()).collect()
    }
}

impl std::fmt::Display for IpSolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for IpSolver {
    type Err = PartitionError;
    fn from_str(s: &str) -> Result<Self> {
        IpSolver::ALL
            .into_iter()
            .find(|solver| solver.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| PartitionError::Malformed {
                what: "IP solver name".into(),
                reason: format!("unknown solver {s:?}; expected microlp or cbc"),
            })
    }
}

/// A model ready to solve: minimise `objective` subject to `constraints`.
pub(crate) struct Model {
    pub vars: ProblemVariables,
    pub objective: Variable,
    pub constraints: Vec<Constraint>,
    /// A feasible point to start from: every variable's value (Cbc takes it
    /// as its first incumbent after checking it; microlp ignores it).
    pub start: Option<Vec<(Variable, f64)>>,
    /// Only prove (Cbc): the caller already has the split it expects to be
    /// optimal, so Cbc's primal heuristics (the feasibility pump and the
    /// rest), which search for better splits, are turned off.
    pub prove_only: bool,
}

impl Model {
    pub fn new(vars: ProblemVariables, objective: Variable) -> Self {
        Model {
            vars,
            objective,
            constraints: Vec::new(),
            start: None,
            prove_only: false,
        }
    }

    pub fn add(&mut self, c: Constraint) {
        self.constraints.push(c);
    }
}

/// What a solver returned.
pub(crate) struct Solved {
    /// The value of every variable of the model.
    pub values: HashMap<Variable, f64>,
    /// True when the time limit stopped the search before a proof.
    pub stopped_by_time_limit: bool,
    /// The best lower bound on the objective the solver proved.
    pub bound: f64,
}

impl Solved {
    pub fn value(&self, v: Variable) -> f64 {
        self.values.get(&v).copied().unwrap_or(0.0)
    }
}

/// Solve `model` with `solver`; `write_mps` (Cbc only) also writes it.
pub(crate) fn solve(
    solver: IpSolver,
    model: Model,
    time_limit_s: Option<f64>,
    write_mps: Option<&Path>,
) -> Result<Solved> {
    let every: Vec<Variable> = model
        .vars
        .iter_variables_with_def()
        .map(|(v, _)| v)
        .collect();
    match solver {
        IpSolver::MicroLp => {
            if let Some(path) = write_mps {
                return Err(PartitionError::Unsupported(format!(
                    "writing MPS ({}) needs the Cbc solver: build with the `cbc` feature \
                     (hetero-partition/cbc, hetero-examples/cbc) and choose --solver cbc",
                    path.display()
                )));
            }
            let problem = loaded(
                model.vars.minimise(model.objective).using(good_lp::microlp),
                model.constraints,
                time_limit_s,
            );
            let solution = problem.solve().map_err(|e| match e {
                ResolutionError::Infeasible => solver_error(e),
                // Numerical trouble (a singular basis: seen on the contiguous
                // IP of bert_l-3's operator graph, whose big-M rows are badly
                // scaled) or no incumbent by the time limit.
                other => PartitionError::Unsupported(format!(
                    "microlp could not solve this integer program ({other}); the exact DP \
                     (--algo dp) gives the contiguous optimum, and Cbc (--solver cbc, in a \
                     build with the `cbc` feature) solves the IP itself"
                )),
            })?;
            let stopped = !matches!(solution.status(), SolutionStatus::Optimal);
            let values = every.iter().map(|&v| (v, solution.value(v))).collect();
            let stats = solution.into_inner().stats();
            let objective = values_objective(&values, model.objective);
            Ok(Solved {
                values,
                stopped_by_time_limit: stopped,
                bound: stats
                    .best_bound
                    .unwrap_or(if stopped { 0.0 } else { objective }),
            })
        }
        IpSolver::Cbc => cbc::solve(model, every, time_limit_s, write_mps),
    }
}

/// A solver's model with the constraints added and the time limit set.
fn loaded<M: SolverModel + WithTimeLimit>(
    mut problem: M,
    constraints: Vec<Constraint>,
    time_limit_s: Option<f64>,
) -> M {
    if let Some(t) = time_limit_s {
        problem = problem.with_time_limit(t);
    }
    for c in constraints {
        problem.add_constraint(c);
    }
    problem
}

fn values_objective(values: &HashMap<Variable, f64>, objective: Variable) -> f64 {
    values.get(&objective).copied().unwrap_or(0.0)
}

#[cfg(feature = "cbc")]
mod cbc {
    use super::*;

    pub(super) fn solve(
        model: Model,
        every: Vec<Variable>,
        time_limit_s: Option<f64>,
        write_mps: Option<&Path>,
    ) -> Result<Solved> {
        let mut problem = loaded(
            model
                .vars
                .minimise(model.objective)
                .using(good_lp::coin_cbc),
            model.constraints,
            time_limit_s,
        );
        let start = model.start.clone();
        if let Some(start) = model.start {
            // Cbc_setInitialSolution: checked against the rows, and kept
            // as the incumbent only if feasible.
            problem = good_lp::WithInitialSolution::with_initial_solution(problem, start);
        }
        if model.prove_only {
            // Cbc's own parameter ("heuristicsOnOff"): measured on InceptionV3
            // with 8 CPUs, the feasibility pump alone took 10 minutes
            // before branch and bound, finding nothing below the start.
            problem.set_parameter("heur", "off");
        }
        // HETERO_CBC_LOG=N: Cbc's own log at level N on stdout (its root
        // bound, cuts and search), for measuring a model; off by default.
        if let Some(level) = std::env::var("HETERO_CBC_LOG")
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
        {
            problem.set_log_level(level);
        } else {
            // Cbc's LP solver prints presolve notes ("Coin0505I Presolved
            // problem not optimal, resolve after postsolve") on stdout at
            // its default level, which would corrupt a tool's JSON there.
            problem.set_parameter("slogLevel", "0");
        }
        if let Some(path) = write_mps {
            export(&problem, path)?;
        }
        let solution = match problem.solve() {
            Ok(solution) => solution,
            // With a start, "infeasible" is Cbc's cutoff at the start's
            // value: nothing is better than the start (the caller checks
            // that the start fits before it takes it).
            Err(ResolutionError::Infeasible) if start.is_some() => {
                let values: HashMap<Variable, f64> = start.into_iter().flatten().collect();
                let objective = values_objective(&values, model.objective);
                return Ok(Solved {
                    values,
                    stopped_by_time_limit: false,
                    bound: objective,
                });
            }
            Err(e) => return Err(solver_error(e)),
        };
        let stopped = matches!(solution.status(), SolutionStatus::TimeLimit);
        let bound = solution.model().best_possible_value();
        let values: HashMap<Variable, f64> =
            every.iter().map(|&v| (v, solution.value(v))).collect();
        let objective = values_objective(&values, model.objective);
        Ok(Solved {
            values,
            stopped_by_time_limit: stopped,
            bound: if stopped { bound } else { objective },
        })
    }

    /// Cbc appends ".mps" and compresses: FILE.mps.gz.
    fn export(problem: &good_lp::solvers::coin_cbc::CoinCbcProblem, path: &Path) -> Result<()> {
        let text = path.to_string_lossy();
        let stem = text
            .strip_suffix(".mps.gz")
            .or_else(|| text.strip_suffix(".mps"))
            .unwrap_or(&text);
        let name = std::ffi::CString::new(stem.as_bytes()).map_err(|_| {
            PartitionError::BadSplit(format!("MPS path {} contains a NUL byte", path.display()))
        })?;
        problem.as_inner().to_raw().write_mps(&name);
        Ok(())
    }
}

#[cfg(not(feature = "cbc"))]
mod cbc {
    use super::*;

    pub(super) fn solve(
        _model: Model,
        _every: Vec<Variable>,
        _time_limit_s: Option<f64>,
        _write_mps: Option<&Path>,
    ) -> Result<Solved> {
        Err(PartitionError::Unsupported(
            "this build has no Cbc solver: rebuild with the `cbc` feature \
             (hetero-partition/cbc, or hetero-examples/cbc for hetero-place), which links \
             COIN-OR Cbc (Debian: coinor-libcbc-dev; `cargo xtask setup` installs it), \
             or use the default solver, microlp"
                .into(),
        ))
    }
}

fn solver_error(e: ResolutionError) -> PartitionError {
    match e {
        ResolutionError::Infeasible => {
            PartitionError::Infeasible("the integer program has no feasible split".into())
        }
        other => PartitionError::Unsupported(format!("the IP solver failed: {other}")),
    }
}
