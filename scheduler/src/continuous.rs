//! Continuous batching across devices, step-synchronous.
//!
//! Each device holds a KV cache of `slots[g]` sequences of `max_len` tokens
//! (allocated once, as profiled: the memory-aware part). Requests wait in
//! one queue in arrival order; whenever a slot is free at the start of a
//! round, the next request that fits a slot (`prompt + gen - 1 <= max_len`
//! cache positions) takes it, on the device with the most free slots.
//! Finished requests free their slot for the next round (continuous
//! batching, as in Orca). A request that fits no slot is rejected with the
//! reason; it never reaches a device.
//!
//! Every round, each device runs one decode step for its slots (prompt
//! tokens are fed one per round: there is no prefill kernel), and the next
//! tokens of every device are gathered with an all-gather over a
//! `hetero-collectives` communicator, one rank per device: the gather is
//! the round's barrier, and rank 0 assembles each request's output.
//! Devices run as blocking tasks of the tokio runtime.
//!
//! Admission depends only on the requests' lengths, so every rank computes
//! the same plan ([`plan_admissions`]) and no admission message is needed.

use std::sync::Arc;
use std::time::Instant;

use hetero_collectives::{FlatCollective, InProcessTransport, Transport};
use hetero_core::{
    Collective, Error, HostSlice, HostSliceMut, Result, SharedDevice, Tensor, TensorMut,
};
use serde::{Deserialize, Serialize};

use crate::decode::DecodeModel;
use crate::workload::ModelShape;

/// One generation request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: usize,
    pub prompt: Vec<u32>,
    pub gen_len: usize,
}

impl Request {
    /// Cache positions the request occupies: every prompt token and every
    /// generated token but the last is fed through a step.
    pub fn positions(&self) -> usize {
        self.prompt.len() + self.gen_len.saturating_sub(1)
    }
    /// Steps the request occupies a slot for.
    pub fn steps(&self) -> usize {
        self.positions()
    }
}

/// `count` synthetic requests (ids `0..count`) for serving benchmarks:
/// request `i` has a prompt of `1..=max_prompt` tokens and generates
/// `1..=max_gen`, both varied with `i` so that slots free at different
/// rounds (otherwise continuous batching would degenerate to fixed
/// batches). Deterministic, so every run and every rank of a job builds
/// the same requests without exchanging them; tokens are below `vocab`.
/// A maximum of 0 is taken as 1 (every request needs a token of each).
pub fn synthetic_requests(
    count: usize,
    max_prompt: usize,
    max_gen: usize,
    vocab: usize,
) -> Result<Vec<Request>> {
    if vocab == 0 {
        return Err(Error::invalid(
            "vocab",
            "the model has no tokens to draw prompts from",
        ));
    }
    // Strides coprime to typical lengths spread the lengths over their range.
    Ok((0..count)
        .map(|i| {
            let prompt_len = 1 + (i * 7) % max_prompt.max(1);
            Request {
                id: i,
                prompt: (0..prompt_len)
                    .map(|k| ((i * 131 + k * 7) % vocab) as u32)
                    .collect(),
                gen_len: 1 + (i * 5) % max_gen.max(1),
            }
        })
        .collect())
}

/// Where and when a request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub request: usize,
    pub device: usize,
    pub slot: usize,
    /// Round of its first step; it leaves the slot after `steps()` rounds.
    pub start_round: usize,
}

/// The admission plan: assignments (by request index) and rejections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdmissionPlan {
    pub assignments: Vec<Option<Assignment>>,
    pub rejected: Vec<(usize, String)>,
    pub rounds: usize,
}

/// Admit `requests` (in order) into `slots[g]` slots per device of
/// `max_len` positions each (see the module docs).
pub fn plan_admissions(requests: &[Request], slots: &[usize], max_len: usize) -> AdmissionPlan {
    let mut free_at: Vec<Vec<usize>> = slots.iter().map(|&n| vec![0; n]).collect();
    let mut assignments = vec![None; requests.len()];
    let mut rejected = Vec::new();
    let mut round = 0usize;
    let mut rounds = 0usize;
    let total_slots: usize = slots.iter().sum();
    for (i, r) in requests.iter().enumerate() {
        if r.prompt.is_empty() || r.gen_len == 0 {
            rejected.push((
                r.id,
                "needs a prompt of at least one token and at least one token to generate".into(),
            ));
            continue;
        }
        if total_slots == 0 || r.positions() > max_len {
            rejected.push((
                r.id,
                format!(
                    "needs {} cache positions (prompt {} + {} generated - 1); the devices hold {} per sequence in {} slots",
                    r.positions(),
                    r.prompt.len(),
                    r.gen_len,
                    max_len,
                    total_slots
                ),
            ));
            continue;
        }
        // First round (not before the previous admission: FIFO) at which a
        // slot is free; among devices free then, the one with most free slots.
        loop {
            let mut best: Option<(usize, usize, usize)> = None; // (free count, device, slot)
            for (g, fs) in free_at.iter().enumerate() {
                let free: Vec<usize> = (0..fs.len()).filter(|&s| fs[s] <= round).collect();
                if let Some(&s) = free.first()
                    && best.is_none_or(|b| free.len() > b.0)
                {
                    best = Some((free.len(), g, s));
                }
            }
            if let Some((_, g, s)) = best {
                free_at[g][s] = round + r.steps();
                rounds = rounds.max(round + r.steps());
                assignments[i] = Some(Assignment {
                    request: i,
                    device: g,
                    slot: s,
                    start_round: round,
                });
                break;
            }
            round = free_at
                .iter()
                .flatten()
                .copied()
                .filter(|&t| t > round)
                .min()
                .unwrap_or(round + 1);
        }
    }
    AdmissionPlan {
        assignments,
        rejected,
        rounds,
    }
}

/// What one request got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestOutput {
    pub id: usize,
    pub device: usize,
    pub tokens: Vec<u32>,
    /// Rounds it waited for a slot.
    pub queued_rounds: usize,
    /// Seconds from the start of serving to its first generated token.
    pub time_to_first_token_s: f64,
    /// Mean seconds per generated token after the first.
    pub per_token_s: f64,
}

/// A continuous-batching run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContinuousReport {
    pub slots: Vec<usize>,
    pub rounds: usize,
    pub wall_s: f64,
    /// Generated tokens per second over the whole run.
    pub tokens_per_s: f64,
    /// Mean over requests of their per-token latency.
    pub mean_per_token_s: f64,
    pub mean_time_to_first_token_s: f64,
    /// Mean share of slots busy per round.
    pub occupancy: f64,
    /// Mean seconds of each device's own steps.
    pub device_step_s: Vec<f64>,
    pub outputs: Vec<RequestOutput>,
    pub rejected: Vec<(usize, String)>,
}

/// Slot state on one device.
#[derive(Debug, Clone)]
struct Active {
    request: usize,
    fed: usize,
    last: u32,
}

/// Per-rank result: step times and (rank 0) the round end times and the
/// gathered (request, token) records per round.
struct RankOutcome {
    step_s: Vec<f64>,
    round_end_s: Vec<f64>,
    produced: Vec<Vec<(usize, u32)>>,
}

#[allow(clippy::too_many_arguments)]
fn run_rank(
    rt: tokio::runtime::Handle,
    rank: usize,
    device: SharedDevice,
    shape: ModelShape,
    max_len: usize,
    slots: Vec<usize>,
    requests: Arc<Vec<Request>>,
    plan: Arc<AdmissionPlan>,
    comm: Arc<dyn Collective>,
    start: Instant,
) -> Result<RankOutcome> {
    let mine = slots[rank];
    let width = slots.iter().copied().max().unwrap_or(0);
    let mut model = if mine > 0 {
        Some(DecodeModel::synthetic_stand_in(
            &*device, &shape, mine, max_len,
        )?)
    } else {
        None
    };
    // Start rounds of this device's assignments, by round.
    let mut starts: Vec<Assignment> = plan
        .assignments
        .iter()
        .flatten()
        .filter(|a| a.device == rank)
        .copied()
        .collect();
    starts.sort_by_key(|a| a.start_round);
    let mut next_start = 0;
    let mut state: Vec<Option<Active>> = vec![None; mine];
    let mut out = RankOutcome {
        step_s: Vec::new(),
        round_end_s: Vec::new(),
        produced: Vec::new(),
    };
    for round in 0..plan.rounds {
        while next_start < starts.len() && starts[next_start].start_round == round {
            let a = starts[next_start];
            state[a.slot] = Some(Active {
                request: a.request,
                fed: 0,
                last: 0,
            });
            next_start += 1;
        }
        // Idle slots decode a dummy token from an empty cache: their work
        // is wasted, as in any fixed-shape batch.
        let mut tokens = vec![0u32; mine];
        for (s, st) in state.iter().enumerate() {
            if let Some(a) = st {
                let r = &requests[a.request];
                tokens[s] = r.prompt.get(a.fed).copied().unwrap_or(a.last);
            }
        }
        let mut record = vec![0i32; 2 * width];
        if let Some(m) = model.as_mut() {
            for (s, st) in state.iter().enumerate() {
                if st.as_ref().is_none_or(|a| a.fed == 0) {
                    m.reset_slot(s)?;
                }
            }
            let t = Instant::now();
            let next = m.step(&tokens)?;
            out.step_s.push(t.elapsed().as_secs_f64());
            for (s, st) in state.iter_mut().enumerate() {
                let Some(a) = st else { continue };
                let r = &requests[a.request];
                a.fed += 1;
                if a.fed >= r.prompt.len() {
                    // The output of the last prompt token on is generated text.
                    a.last = next[s];
                    record[2 * s] = a.request as i32 + 1;
                    record[2 * s + 1] = next[s] as i32;
                }
                if a.fed >= r.steps() {
                    *st = None;
                }
            }
        }
        let mut all = vec![0i32; 2 * width * slots.len()];
        rt.block_on(comm.all_gather(
            Tensor::Host(HostSlice::new(&record)),
            TensorMut::Host(HostSliceMut::new(&mut all)),
        ))?;
        if rank == 0 {
            out.round_end_s.push(start.elapsed().as_secs_f64());
            out.produced.push(
                all.chunks_exact(2)
                    .filter(|c| c[0] > 0)
                    .map(|c| (c[0] as usize - 1, c[1] as u32))
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// Serve `requests` on `devices` with `slots[g]` sequences of `max_len`
/// positions each (see the module docs). Computes in f32 with synthetic
/// weights, each rank's model a [`DecodeModel::synthetic_stand_in`] (for
/// an ALiBi shape like `bloom-3b` the tokens are not that model's). The
/// devices are ranks of an in-process communicator; for devices of several
/// processes, see [`serve_continuous_rank`].
pub async fn serve_continuous(
    devices: &[SharedDevice],
    model: &ModelShape,
    slots: &[usize],
    max_len: usize,
    requests: Vec<Request>,
) -> Result<ContinuousReport> {
    if devices.len() != slots.len() || devices.is_empty() {
        return Err(Error::invalid(
            "slots",
            format!("{} slot counts for {} devices", slots.len(), devices.len()),
        ));
    }
    // One task per rank: the ranks' rounds wait on each other.
    let tasks: Vec<_> = InProcessTransport::group(devices.len())
        .into_iter()
        .zip(devices)
        .map(|(t, device)| {
            let comm = FlatCollective::unmeasured(
                Arc::new(t) as Arc<dyn Transport>,
                hetero_collectives::Algorithm::Ring,
            );
            let (device, model, slots, requests) = (
                device.clone(),
                model.clone(),
                slots.to_vec(),
                requests.clone(),
            );
            tokio::spawn(async move {
                serve_continuous_rank(device, Arc::new(comm), &model, &slots, max_len, requests)
                    .await
            })
        })
        .collect();
    let mut report = None;
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(Some(r))) => report = Some(r),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(Error::invalid("device task", e.to_string()));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    report.ok_or_else(|| Error::invalid("serve", "rank 0 returned no report"))
}

/// One device's part of [`serve_continuous`], for devices driven by
/// several processes: `device` is rank `comm.rank()` of `comm` (any
/// communicator: TCP between processes, in-process, MPI), whose ranks are
/// the devices in the order of `slots`. Every rank passes the same
/// `model`, `slots`, `max_len` and `requests` (admission is computed alike
/// on every rank, so no admission message is needed). Rank 0 returns the
/// report; the others return `None` after the last round. A process that
/// exits afterwards must first flush its transport (`Transport::flush`), or
/// its last gather messages may never reach rank 0.
pub async fn serve_continuous_rank(
    device: SharedDevice,
    comm: Arc<dyn Collective>,
    model: &ModelShape,
    slots: &[usize],
    max_len: usize,
    requests: Vec<Request>,
) -> Result<Option<ContinuousReport>> {
    let (rank, size) = (comm.rank(), comm.size());
    if size != slots.len() || rank >= size {
        return Err(Error::invalid(
            "slots",
            format!(
                "{} slot counts for a communicator of {size} ranks (this is rank {rank})",
                slots.len()
            ),
        ));
    }
    let vocab = model.vocab as u32;
    if let Some(r) = requests
        .iter()
        .find(|r| r.prompt.iter().any(|&t| t >= vocab))
    {
        return Err(Error::invalid(
            "request",
            format!(
                "request {} has a prompt token not below the vocabulary size {vocab}",
                r.id
            ),
        ));
    }
    let shape = model.executed();
    let plan = Arc::new(plan_admissions(&requests, slots, max_len));
    let requests = Arc::new(requests);
    // Every rank starts its clock after a barrier, so rank 0's round times
    // do not count the other ranks' start-up.
    comm.barrier().await?;
    let start = Instant::now();
    let rt = tokio::runtime::Handle::current();
    let task = {
        let (slots, requests, plan, comm) =
            (slots.to_vec(), requests.clone(), plan.clone(), comm.clone());
        tokio::task::spawn_blocking(move || {
            run_rank(
                rt, rank, device, shape, max_len, slots, requests, plan, comm, start,
            )
        })
    };
    let outcome = task
        .await
        .map_err(|e| Error::invalid("device task", e.to_string()))??;
    let wall_s = start.elapsed().as_secs_f64();
    // Each rank's mean step time, for rank 0's report.
    let mean_step = if outcome.step_s.is_empty() {
        0.0
    } else {
        outcome.step_s.iter().sum::<f64>() / outcome.step_s.len() as f64
    };
    let mut device_step_s = vec![0f64; size];
    comm.all_gather(
        Tensor::Host(HostSlice::new(&[mean_step])),
        TensorMut::Host(HostSliceMut::new(&mut device_step_s)),
    )
    .await?;
    if rank != 0 {
        return Ok(None);
    }
    report(&outcome, &plan, &requests, slots, wall_s, device_step_s).map(Some)
}

/// Rank 0's report from its gathered records.
fn report(
    rank0: &RankOutcome,
    plan: &AdmissionPlan,
    requests: &[Request],
    slots: &[usize],
    wall_s: f64,
    device_step_s: Vec<f64>,
) -> Result<ContinuousReport> {
    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); requests.len()];
    let mut first_at = vec![f64::NAN; requests.len()];
    let mut last_at = vec![f64::NAN; requests.len()];
    for (round, produced) in rank0.produced.iter().enumerate() {
        for &(req, tok) in produced {
            if tokens[req].is_empty() {
                first_at[req] = rank0.round_end_s[round];
            }
            last_at[req] = rank0.round_end_s[round];
            tokens[req].push(tok);
        }
    }
    let mut outputs = Vec::new();
    for (i, a) in plan.assignments.iter().enumerate() {
        let Some(a) = a else { continue };
        let r = &requests[i];
        if tokens[i].len() != r.gen_len {
            return Err(Error::invalid(
                "serve",
                format!(
                    "request {} got {} tokens, expected {}",
                    r.id,
                    tokens[i].len(),
                    r.gen_len
                ),
            ));
        }
        outputs.push(RequestOutput {
            id: r.id,
            device: a.device,
            tokens: std::mem::take(&mut tokens[i]),
            queued_rounds: a.start_round,
            time_to_first_token_s: first_at[i],
            per_token_s: if r.gen_len > 1 {
                (last_at[i] - first_at[i]) / (r.gen_len - 1) as f64
            } else {
                0.0
            },
        });
    }
    let generated: usize = outputs.iter().map(|o| o.tokens.len()).sum();
    let n = outputs.len().max(1) as f64;
    let busy: usize = plan
        .assignments
        .iter()
        .flatten()
        .map(|a| requests[a.request].steps())
        .sum();
    let total_slots: usize = slots.iter().sum();
    Ok(ContinuousReport {
        slots: slots.to_vec(),
        rounds: plan.rounds,
        wall_s,
        tokens_per_s: generated as f64 / wall_s.max(f64::MIN_POSITIVE),
        mean_per_token_s: outputs.iter().map(|o| o.per_token_s).sum::<f64>() / n,
        mean_time_to_first_token_s: outputs.iter().map(|o| o.time_to_first_token_s).sum::<f64>()
            / n,
        occupancy: if plan.rounds == 0 || total_slots == 0 {
            0.0
        } else {
            busy as f64 / (plan.rounds * total_slots) as f64
        },
        device_step_s,
        outputs,
        rejected: plan.rejected.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_requests_are_deterministic_varied_and_in_range() {
        let a = synthetic_requests(40, 8, 16, 512).unwrap();
        assert_eq!(a, synthetic_requests(40, 8, 16, 512).unwrap());
        assert_eq!(a.len(), 40);
        for (i, r) in a.iter().enumerate() {
            assert_eq!(r.id, i);
            assert!((1..=8).contains(&r.prompt.len()), "{r:?}");
            assert!((1..=16).contains(&r.gen_len), "{r:?}");
            assert!(r.prompt.iter().all(|&t| t < 512), "{r:?}");
        }
        // The lengths hetero-serve has always generated (changing them
        // changes every reported benchmark).
        assert_eq!(a[0].prompt, vec![0]);
        assert_eq!(a[0].gen_len, 1);
        assert_eq!(a[1].prompt, vec![131, 138, 145, 152, 159, 166, 173, 180]);
        assert_eq!(a[1].gen_len, 6);
        assert_eq!((a[2].prompt.len(), a[2].gen_len), (7, 11));
        // Lengths vary, so slots free at different rounds.
        let mut lens: Vec<usize> = a.iter().map(Request::positions).collect();
        lens.sort_unstable();
        lens.dedup();
        assert!(lens.len() > 5, "{lens:?}");
        // A prefix of a longer list is the shorter list.
        assert_eq!(synthetic_requests(3, 8, 16, 512).unwrap(), a[..3]);
    }

    #[test]
    fn synthetic_requests_edge_cases() {
        assert!(synthetic_requests(5, 8, 8, 0).is_err());
        assert!(synthetic_requests(0, 8, 8, 512).unwrap().is_empty());
        // Maxima of 0 mean one token each; a vocabulary of one, token 0.
        for r in synthetic_requests(10, 0, 0, 1).unwrap() {
            assert_eq!(r.prompt, vec![0]);
            assert_eq!(r.gen_len, 1);
        }
    }
}
