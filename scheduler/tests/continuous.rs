//! Continuous batching: admission plans against a round-by-round reference,
//! and real serving on host devices whose every output equals decoding the
//! request alone.

use std::sync::Arc;

use hetero_core::SharedDevice;
use hetero_host::HostDevice;
use hetero_scheduler::continuous::{
    Request, plan_admissions, serve_continuous, serve_continuous_rank,
};
use hetero_scheduler::{DecodeModel, ModelShape};
use proptest::prelude::*;

fn host(threads: usize) -> SharedDevice {
    Arc::new(
        HostDevice::builder()
            .threads(threads)
            .memory_budget(256 << 20)
            .build()
            .expect("host device"),
    )
}

fn request(id: usize, prompt_len: usize, gen_len: usize) -> Request {
    Request {
        id,
        prompt: (0..prompt_len)
            .map(|k| ((id * 37 + k * 11) % 500) as u32)
            .collect(),
        gen_len,
    }
}

/// The request decoded alone (batch of one) on a host device.
fn alone(r: &Request, max_len: usize) -> Vec<u32> {
    let d = host(1);
    let mut m = DecodeModel::new(&*d, &ModelShape::tiny(), 1, max_len).expect("model");
    let mut out = Vec::new();
    let mut next = 0;
    for &t in &r.prompt {
        next = m.step(&[t]).expect("step")[0];
    }
    out.push(next);
    while out.len() < r.gen_len {
        next = m.step(&[next]).expect("step")[0];
        out.push(next);
    }
    out
}

/// Round-by-round reference: at each round, free slots take queued
/// requests in order (device with most free slots first).
fn reference(requests: &[Request], slots: &[usize], max_len: usize) -> Vec<Option<(usize, usize)>> {
    let mut busy_until: Vec<Vec<usize>> = slots.iter().map(|&n| vec![0; n]).collect();
    let mut out = vec![None; requests.len()];
    let queue: Vec<usize> = (0..requests.len())
        .filter(|&i| {
            let r = &requests[i];
            !r.prompt.is_empty()
                && r.gen_len > 0
                && r.positions() <= max_len
                && slots.iter().sum::<usize>() > 0
        })
        .collect();
    let mut head = 0;
    let mut round = 0;
    while head < queue.len() {
        loop {
            let free: Vec<usize> = busy_until
                .iter()
                .map(|b| b.iter().filter(|&&t| t <= round).count())
                .collect();
            let Some(g) =
                (0..slots.len())
                    .filter(|&g| free[g] > 0)
                    .fold(None, |best: Option<usize>, g| match best {
                        Some(b) if free[b] >= free[g] => Some(b),
                        _ => Some(g),
                    })
            else {
                break;
            };
            if head >= queue.len() {
                break;
            }
            let i = queue[head];
            let s = busy_until[g]
                .iter()
                .position(|&t| t <= round)
                .expect("a free slot");
            busy_until[g][s] = round + requests[i].steps();
            out[i] = Some((g, round));
            head += 1;
        }
        round += 1;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn admission_plan_matches_the_round_by_round_reference(
        lens in proptest::collection::vec((0usize..6, 0usize..6), 0..14),
        slots in proptest::collection::vec(0usize..3, 1..4),
        max_len in 1usize..9,
    ) {
        let requests: Vec<Request> = lens.iter().enumerate().map(|(i, &(p, g))| request(i, p, g)).collect();
        let plan = plan_admissions(&requests, &slots, max_len);
        let want = reference(&requests, &slots, max_len);
        for (i, a) in plan.assignments.iter().enumerate() {
            prop_assert_eq!(a.map(|a| (a.device, a.start_round)), want[i], "request {}", i);
        }
        // Every request is admitted or rejected, never both.
        let admitted = plan.assignments.iter().flatten().count();
        prop_assert_eq!(admitted + plan.rejected.len(), requests.len());
        // No slot holds two requests at once; every admitted request fits.
        let mut used: Vec<(usize, usize, usize, usize)> = Vec::new();
        for a in plan.assignments.iter().flatten() {
            let r = &requests[a.request];
            prop_assert!(r.positions() <= max_len);
            let end = a.start_round + r.steps();
            for &(g, s, b, e) in &used {
                prop_assert!(g != a.device || s != a.slot || end <= b || a.start_round >= e);
            }
            used.push((a.device, a.slot, a.start_round, end));
        }
    }
}

#[test]
fn continuous_batching_serves_every_request_as_if_it_ran_alone() {
    let max_len = 12;
    // More requests than slots, of different lengths, so slots are reused
    // mid-flight; one request too long for any slot.
    let mut requests: Vec<Request> = (0..7)
        .map(|i| request(i, 1 + i % 3, 2 + (i * 5) % 6))
        .collect();
    requests.push(request(7, 10, 4));
    let devices = vec![host(1), host(1)];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let report = rt
        .block_on(serve_continuous(
            &devices,
            &ModelShape::tiny(),
            &[2, 1],
            max_len,
            requests.clone(),
        ))
        .expect("serve");
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].0, 7);
    assert!(
        report.rejected[0].1.contains("cache positions"),
        "{:?}",
        report.rejected
    );
    assert_eq!(report.outputs.len(), 7);
    let mut queued = 0;
    for o in &report.outputs {
        let r = &requests[o.id];
        assert_eq!(o.tokens.len(), r.gen_len, "request {}", o.id);
        assert_eq!(
            o.tokens,
            alone(r, max_len),
            "request {} differs from decoding it alone",
            o.id
        );
        assert!(o.time_to_first_token_s > 0.0);
        queued += o.queued_rounds;
    }
    assert!(queued > 0, "with 3 slots for 7 requests some must wait");
    assert!(
        report.occupancy > 0.5 && report.occupancy <= 1.0,
        "{}",
        report.occupancy
    );
    assert!(report.tokens_per_s > 0.0);
}

#[test]
fn bad_requests_are_errors_or_rejections_not_crashes() {
    let devices = vec![host(1)];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bad_token = Request {
        id: 0,
        prompt: vec![1_000_000],
        gen_len: 1,
    };
    let e = rt
        .block_on(serve_continuous(
            &devices,
            &ModelShape::tiny(),
            &[1],
            8,
            vec![bad_token],
        ))
        .expect_err("token outside the vocabulary");
    assert!(e.to_string().contains("vocabulary"), "{e}");
    let r = rt
        .block_on(serve_continuous(
            &devices,
            &ModelShape::tiny(),
            &[1],
            8,
            vec![request(0, 0, 3), request(1, 2, 0)],
        ))
        .expect("serve");
    assert_eq!(r.rejected.len(), 2);
    assert!(r.outputs.is_empty());
    let e = rt
        .block_on(serve_continuous(
            &devices,
            &ModelShape::tiny(),
            &[1, 2],
            8,
            vec![],
        ))
        .expect_err("slots for devices that do not exist");
    assert!(e.to_string().contains("slot counts"), "{e}");
}

/// Two devices driven as if by two processes: each rank on its own thread
/// with its own tokio runtime, the round barrier an all-gather over TCP on
/// loopback. Rank 0's report must hold every request, each equal to
/// decoding it alone.
#[test]
fn ranks_of_separate_runtimes_over_tcp_serve_every_request() {
    use hetero_collectives::{Algorithm, FlatCollective, TcpConfig, TcpTransport, Transport};
    use hetero_core::Collective;

    let max_len = 12;
    let requests: Vec<Request> = (0..6)
        .map(|i| request(i, 1 + i % 3, 2 + (i * 5) % 6))
        .collect();
    let slots = [2usize, 1];
    let (port_tx, port_rx) = std::sync::mpsc::channel::<u16>();
    let mut port_tx = Some(port_tx);
    let mut port_rx = Some(port_rx);
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            let requests = requests.clone();
            let tx = if rank == 0 { port_tx.take() } else { None };
            let rx = if rank == 1 { port_rx.take() } else { None };
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = match tx {
                        Some(tx) => {
                            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                                .await
                                .expect("bind");
                            tx.send(l.local_addr().expect("addr").port()).expect("port");
                            Some(l)
                        }
                        None => None,
                    };
                    let port = match (&listener, rx) {
                        (Some(l), _) => l.local_addr().expect("addr").port(),
                        (None, Some(rx)) => rx.recv().expect("port"),
                        (None, None) => unreachable!("one of the two is set"),
                    };
                    let cfg = TcpConfig::new(rank, 2, format!("127.0.0.1:{port}"));
                    let t = TcpTransport::connect_with(&cfg, listener)
                        .await
                        .expect("rendezvous");
                    let t: Arc<dyn Transport> = Arc::new(t);
                    let comm: Arc<dyn Collective> =
                        Arc::new(FlatCollective::unmeasured(t.clone(), Algorithm::Ring));
                    let report = serve_continuous_rank(
                        host(1),
                        comm,
                        &ModelShape::tiny(),
                        &slots,
                        max_len,
                        requests,
                    )
                    .await;
                    // As a process would before exiting: hand the last
                    // messages to the network.
                    t.flush().await.expect("flush");
                    report
                })
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("rank thread"))
        .collect();
    let report = results[0]
        .as_ref()
        .expect("rank 0 serves")
        .as_ref()
        .expect("rank 0 reports");
    assert!(results[1].as_ref().expect("rank 1 serves").is_none());
    assert_eq!(report.outputs.len(), requests.len());
    for o in &report.outputs {
        assert_eq!(
            o.tokens,
            alone(&requests[o.id], max_len),
            "request {} differs from decoding it alone",
            o.id
        );
    }
    assert!(report.outputs.iter().any(|o| o.device == 1));
    assert_eq!(report.device_step_s.len(), 2);
    assert!(report.device_step_s.iter().all(|&t| t > 0.0));
}
