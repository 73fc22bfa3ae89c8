//! The chain DP against the graph solvers: on chains whose per-device
//! times are proportional (one time per layer scaled by a speed factor per
//! device, the graph solvers' model), its optimum equals the exact DP's
//! over ideals and the contiguous integer program's (gap 0).

use hetero_core::placement::{AcceleratorClass, Cluster, Edge, Graph, Node};
use hetero_partition::{ChainProblem, ExactDp, IntegerProgram, best_chain_split};

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as f64 / (1u64 << 31) as f64
    }
}

#[test]
fn chain_dp_equals_the_exact_dp_and_the_contiguous_ip_on_proportional_chains() {
    let mut feasible = 0;
    for seed in 0..150u64 {
        let mut r = Lcg(seed * 7919 + 1);
        let dn = 1 + seed as usize % 3;
        let n = 2 + (seed as usize / 3) % 5;
        let t: Vec<f64> = (0..n).map(|_| 0.5 + r.next() * 10.0).collect();
        let bytes: Vec<u64> = (0..n).map(|_| 10 + (r.next() * 90.0) as u64).collect();
        let transfer: Vec<f64> = (0..n - 1).map(|_| r.next() * 3.0).collect();
        let speed: Vec<f64> = (0..dn).map(|_| 0.5 + r.next() * 3.0).collect();
        let memory: Vec<u64> = (0..dn).map(|_| 100 + (r.next() * 300.0) as u64).collect();
        let graph = Graph {
            nodes: (0..n)
                .map(|i| Node {
                    id: i as u64,
                    name: None,
                    cpu_time: 1e9,
                    accelerator_time: t[i],
                    memory_bytes: bytes[i],
                    accelerator_ok: true,
                    color_class: None,
                    backward: false,
                })
                .collect(),
            edges: (0..n - 1)
                .map(|i| Edge {
                    src: i,
                    dst: i + 1,
                    transfer_time: transfer[i],
                    bytes: None,
                })
                .collect(),
        };
        let cluster = Cluster {
            accelerators: (0..dn)
                .map(|d| AcceleratorClass {
                    name: format!("device{d}"),
                    count: 1,
                    memory_bytes: memory[d],
                    speed_factor: speed[d],
                })
                .collect(),
            cpus: 0,
            interconnect: None,
        };
        let chain = ChainProblem {
            time: speed
                .iter()
                .map(|s| t.iter().map(|x| x / s).collect())
                .collect(),
            bytes: vec![bytes.clone(); dn],
            memory: memory.clone(),
            boundary: vec![transfer.clone(); dn],
            split_last_bytes: vec![0; dn],
        };
        let ours = best_chain_split(&chain);
        let exact = ExactDp::default().solve(&graph, &cluster);
        match (ours, exact) {
            (Ok(plan), Ok((dp, _))) => {
                let tol = 1e-6 * dp.objective.max(1.0);
                assert!(
                    (plan.objective - dp.objective).abs() <= tol,
                    "seed {seed}: chain DP {} vs exact DP {}",
                    plan.objective,
                    dp.objective
                );
                let (ip, stats) = IntegerProgram::contiguous()
                    .solve(&graph, &cluster)
                    .expect("the IP finds the split the DP found");
                assert!(
                    (ip.objective - plan.objective).abs() <= tol && stats.gap == 0.0,
                    "seed {seed}: chain DP {} vs contiguous IP {} (gap {})",
                    plan.objective,
                    ip.objective,
                    stats.gap
                );
                feasible += 1;
            }
            (Err(_), Err(_)) => {}
            (a, b) => panic!("seed {seed}: chain DP {a:?}, exact DP {b:?}"),
        }
    }
    assert!(feasible > 75, "only {feasible} feasible cases");
}
