//! A placement cluster from a measured `hetero_core::Topology`: the devices
//! that are not CPUs become accelerator classes (devices of the same kind,
//! memory and throughput form one class, named after its first device), the
//! CPU devices become the CPUs. When the topology splits its accelerators
//! into domains (its bandwidth-ratio test), they become the nodes of a
//! two-level interconnect.

use hetero_core::device::DeviceKind;
use hetero_core::placement::{AcceleratorClass, Cluster, TwoLevelInterconnect};
use hetero_core::topology::Topology;

use crate::{PartitionError, Result};

/// Two throughputs within this relative distance count as one speed, so that
/// measurement noise does not split identical cards into classes.
const SAME_SPEED: f64 = 0.05;

/// Build the cluster that [`crate::ExactDp`] and the other solvers place on.
///
/// The graph's `accelerator_time` is taken to be the time on the fastest
/// accelerator of the topology (speed factor 1.0); a slower one gets
/// `its GEMM throughput / the fastest's`. Every accelerator needs a measured
/// throughput unless all of them share one name (then all are 1.0).
///
/// When [`Topology::domains`] puts the accelerators in two or more domains,
/// the cluster gets a two-level interconnect: a domain is a node, and the
/// inter-node cost factor is the median accelerator-to-accelerator bandwidth
/// inside the domains over the median between them (the graph's transfer
/// times are taken to be times on the links inside a node; with one
/// accelerator per domain there are none, and no interconnect is set). The model numbers accelerators class by class
/// and puts the same number in every node, so the domains must hold equally
/// many accelerators (the last may hold fewer) that are consecutive in that
/// numbering; otherwise `Unsupported` says so (write the cluster by hand).
pub fn cluster_from_topology(topology: &Topology) -> Result<Cluster> {
    let accelerators: Vec<_> = topology
        .devices()
        .iter()
        .enumerate()
        .filter(|(_, d)| d.info.kind != DeviceKind::Cpu)
        .collect();
    let cpus = topology
        .devices()
        .iter()
        .filter(|d| d.info.kind == DeviceKind::Cpu)
        .count();
    let all_probed = accelerators
        .iter()
        .all(|(_, d)| d.gemm_flops_per_s.is_some());
    let one_name = accelerators
        .windows(2)
        .all(|w| w[0].1.info.name == w[1].1.info.name);
    if !all_probed && !one_name {
        return Err(PartitionError::Unsupported(
            "the topology's accelerators differ by name but not all have a measured GEMM \
             throughput, so their relative speeds are unknown; probe the topology's throughput \
             (gemm_flops_per_s) first"
                .into(),
        ));
    }
    let fastest = accelerators
        .iter()
        .filter_map(|(_, d)| d.gemm_flops_per_s)
        .fold(0.0_f64, f64::max);
    let mut classes: Vec<AcceleratorClass> = Vec::new();
    // the device kind of each class, to keep integrated and discrete apart
    let mut class_kinds: Vec<DeviceKind> = Vec::new();
    // (class, topology index) of each accelerator, for the interconnect
    let mut placed: Vec<(usize, usize)> = Vec::new();
    for (index, device) in accelerators {
        let speed_factor = match device.gemm_flops_per_s {
            Some(flops) if all_probed => {
                if !(flops.is_finite() && flops > 0.0) {
                    return Err(PartitionError::BadNumber {
                        field: format!("gemm_flops_per_s of device {}", device.info.name),
                        value: flops,
                    });
                }
                flops / fastest
            }
            _ => 1.0,
        };
        let memory_bytes = device.info.memory_total_bytes;
        let same = classes.iter().zip(&class_kinds).position(|(c, &kind)| {
            kind == device.info.kind
                && c.memory_bytes == memory_bytes
                && (c.speed_factor - speed_factor).abs() <= SAME_SPEED * c.speed_factor
        });
        placed.push((same.unwrap_or(classes.len()), index));
        match same {
            Some(i) => classes[i].count += 1,
            None => {
                classes.push(AcceleratorClass {
                    name: device.info.name.clone(),
                    count: 1,
                    memory_bytes,
                    speed_factor,
                });
                class_kinds.push(device.info.kind);
            }
        }
    }
    if classes.is_empty() && cpus == 0 {
        return Err(PartitionError::Infeasible(
            "the topology has no devices to place on".into(),
        ));
    }
    let interconnect = interconnect_from_domains(topology, &placed)?;
    Ok(Cluster {
        accelerators: classes,
        cpus,
        interconnect,
    })
}

fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

/// The two-level interconnect of the topology's domains (see
/// [`cluster_from_topology`]); `placed` is (class, topology index) per
/// accelerator, in topology order.
fn interconnect_from_domains(
    topology: &Topology,
    placed: &[(usize, usize)],
) -> Result<Option<TwoLevelInterconnect>> {
    let domains = topology.domains();
    let domain_of = |index: usize| domains.iter().position(|d| d.members.contains(&index));
    // accelerators in the cluster's numbering: class by class, topology order within
    let mut numbered: Vec<(usize, usize)> = placed.to_vec();
    numbered.sort_by_key(|&(class, index)| (class, index));
    let in_domain: Vec<Option<usize>> = numbered.iter().map(|&(_, i)| domain_of(i)).collect();
    let mut runs: Vec<(Option<usize>, usize)> = Vec::new();
    for &d in &in_domain {
        match runs.last_mut() {
            Some((last, len)) if *last == d => *len += 1,
            _ => runs.push((d, 1)),
        }
    }
    if runs.len() < 2 {
        return Ok(None);
    }
    let per_node = runs[0].1;
    let mut seen: Vec<Option<usize>> = Vec::new();
    for (i, &(d, len)) in runs.iter().enumerate() {
        let last = i + 1 == runs.len();
        if seen.contains(&d) || (!last && len != per_node) || len > per_node {
            let layout: Vec<String> = in_domain
                .iter()
                .map(|d| d.map_or("?".into(), |d| d.to_string()))
                .collect();
            return Err(PartitionError::Unsupported(format!(
                "the topology's domains hold the accelerators as [{}] (domain of each \
                 accelerator, numbered class by class); the two-level interconnect needs \
                 equally many consecutive accelerators per domain; write the cluster by hand \
                 (hetero-place --cluster) with the nodes you want",
                layout.join(", ")
            )));
        }
        seen.push(d);
    }
    // typical (median) accelerator-to-accelerator bandwidth inside a domain
    // and between domains: a few noisy pairs must not set the factor
    let bandwidth = |i: usize, j: usize| topology.link(i, j).map(|l| l.bandwidth_bytes_per_s);
    let (mut inside, mut between) = (Vec::new(), Vec::new());
    for (a, &(_, i)) in numbered.iter().enumerate() {
        for (b_index, &(_, j)) in numbered.iter().enumerate().skip(a + 1) {
            let same_domain = in_domain[a] == in_domain[b_index];
            for b in [bandwidth(i, j), bandwidth(j, i)].into_iter().flatten() {
                if same_domain {
                    inside.push(b);
                } else {
                    between.push(b);
                }
            }
        }
    }
    // one accelerator per domain: no link inside a node to price transfers
    // against, so the graph's transfer times stand for the links between
    let (Some(inside), Some(between)) = (median(&mut inside), median(&mut between)) else {
        return Ok(None);
    };
    let factor = (inside / between).max(1.0);
    Ok(Some(TwoLevelInterconnect {
        accelerators_per_node: per_node,
        inter_node_cost_factor: factor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hetero_core::device::{Backend, DeviceId, DeviceInfo};
    use hetero_core::link::{LinkKind, LinkModel};
    use hetero_core::topology::TopologyDevice;

    fn device(
        i: u32,
        name: &str,
        kind: DeviceKind,
        gib: u64,
        flops: Option<f64>,
    ) -> TopologyDevice {
        TopologyDevice {
            info: DeviceInfo {
                id: DeviceId::new(Backend::Host, i),
                name: name.into(),
                kind,
                vendor: "test".into(),
                memory_total_bytes: gib << 30,
                memory_free_bytes: None,
                driver: None,
                compute_units: None,
                host_threads: None,
            },
            gemm_flops_per_s: flops,
        }
    }

    fn topology(devices: Vec<TopologyDevice>) -> Topology {
        Topology::from_fn(devices, |i, j| {
            (i != j).then(|| LinkModel::new(LinkKind::Pcie, 1e-5, 1e10))
        })
        .expect("a valid synthetic topology")
    }

    #[test]
    fn groups_accelerators_by_kind_memory_and_speed() {
        let t = topology(vec![
            device(0, "fast", DeviceKind::DiscreteGpu, 40, Some(100e12)),
            device(1, "fast1", DeviceKind::DiscreteGpu, 40, Some(98e12)),
            device(4, "igpu", DeviceKind::IntegratedGpu, 40, Some(99e12)),
            device(2, "slow", DeviceKind::DiscreteGpu, 16, Some(25e12)),
            device(3, "host", DeviceKind::Cpu, 64, Some(1e12)),
        ]);
        let c = cluster_from_topology(&t).expect("probed topology");
        assert_eq!(c.cpus, 1);
        assert_eq!(c.accelerators.len(), 3);
        assert_eq!(c.accelerators[0].name, "fast");
        assert_eq!(c.accelerators[0].count, 2);
        assert_eq!(c.accelerators[0].memory_bytes, 40 << 30);
        assert!((c.accelerators[0].speed_factor - 1.0).abs() < 1e-12);
        assert_eq!(c.accelerators[1].name, "igpu");
        assert_eq!(c.accelerators[2].count, 1);
        assert_eq!(c.accelerators[2].memory_bytes, 16 << 30);
        assert!((c.accelerators[2].speed_factor - 0.25).abs() < 1e-12);
        assert!(c.interconnect.is_none());
    }

    #[test]
    fn unknown_relative_speed_is_unsupported() {
        let t = topology(vec![
            device(0, "a", DeviceKind::DiscreteGpu, 8, None),
            device(1, "b", DeviceKind::DiscreteGpu, 8, Some(1e12)),
        ]);
        assert!(matches!(
            cluster_from_topology(&t),
            Err(PartitionError::Unsupported(_))
        ));
        // one name: identical cards, speed 1.0 each, without a probe
        let t = topology(vec![
            device(0, "a", DeviceKind::DiscreteGpu, 8, None),
            device(1, "a", DeviceKind::DiscreteGpu, 8, None),
        ]);
        let c = cluster_from_topology(&t).expect("identical cards");
        assert_eq!(c.accelerators.len(), 1);
        assert_eq!(c.accelerators[0].count, 2);
        assert_eq!(c.cpus, 0);
    }

    /// Two nodes of two GPUs: fast links inside (100 GB/s), slow between (1 GB/s).
    fn two_nodes(devices: Vec<TopologyDevice>, node: fn(usize) -> usize) -> Topology {
        Topology::from_fn(devices, |i, j| {
            let bw = if i == 4 || j == 4 {
                1e10 // the host
            } else if node(i) == node(j) {
                1e11
            } else {
                1e9
            };
            (i != j).then(|| LinkModel::new(LinkKind::Pcie, 1e-5, bw))
        })
        .expect("a valid synthetic topology")
    }

    #[test]
    fn domains_become_the_nodes_of_a_two_level_interconnect() {
        let gpu = |i| device(i, "gpu", DeviceKind::DiscreteGpu, 16, None);
        let mut devices: Vec<_> = (0..4).map(gpu).collect();
        devices.push(device(4, "host", DeviceKind::Cpu, 64, None));
        let c = cluster_from_topology(&two_nodes(devices, |i| i / 2)).expect("two nodes");
        assert_eq!(c.cpus, 1);
        let ic = c.interconnect.expect("two domains of accelerators");
        assert_eq!(ic.accelerators_per_node, 2);
        assert!((ic.inter_node_cost_factor - 100.0).abs() < 1e-9);
    }

    #[test]
    fn domains_the_model_cannot_number_are_unsupported() {
        // class "fast" holds GPUs 0 and 2, class "slow" 1 and 3: numbered
        // class by class the nodes alternate
        let devices = vec![
            device(0, "fast", DeviceKind::DiscreteGpu, 16, Some(2e12)),
            device(1, "slow", DeviceKind::DiscreteGpu, 16, Some(1e12)),
            device(2, "fast", DeviceKind::DiscreteGpu, 16, Some(2e12)),
            device(3, "slow", DeviceKind::DiscreteGpu, 16, Some(1e12)),
        ];
        let err =
            cluster_from_topology(&two_nodes(devices, |i| i / 2)).expect_err("alternating nodes");
        assert!(matches!(err, PartitionError::Unsupported(ref m) if m.contains("[0, 1, 0, 1]")));
        // one GPU per node: no link inside a node to scale against
        let devices = (0..2)
            .map(|i| device(i, "gpu", DeviceKind::DiscreteGpu, 16, None))
            .collect();
        let t = Topology::from_fn(devices, |i, j| {
            (i != j).then(|| LinkModel::new(LinkKind::Ethernet, 1e-4, 1e8))
        })
        .expect("a valid synthetic topology");
        assert!(
            cluster_from_topology(&t)
                .expect("flat")
                .interconnect
                .is_none()
        );
    }
}
