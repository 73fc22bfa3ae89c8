//! A placement cluster from a measured `hetero_core::Topology`: the devices
//! that are not CPUs become accelerator classes (devices of the same kind,
//! memory and throughput form one class, named after its first device), the
//! CPU devices become the CPUs.

use hetero_core::device::DeviceKind;
use hetero_core::placement::{AcceleratorClass, Cluster};
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
/// throughput unless all of them share one name (then all are 1.0). The
/// topology's links are not used: the two-level interconnect is not modelled,
/// so `interconnect` stays unset.
pub fn cluster_from_topology(topology: &Topology) -> Result<Cluster> {
    let accelerators: Vec<_> = topology
        .devices()
        .iter()
        .filter(|d| d.info.kind != DeviceKind::Cpu)
        .collect();
    let cpus = topology
        .devices()
        .iter()
        .filter(|d| d.info.kind == DeviceKind::Cpu)
        .count();
    let all_probed = accelerators.iter().all(|d| d.gemm_flops_per_s.is_some());
    let one_name = accelerators
        .windows(2)
        .all(|w| w[0].info.name == w[1].info.name);
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
        .filter_map(|d| d.gemm_flops_per_s)
        .fold(0.0_f64, f64::max);
    let mut classes: Vec<AcceleratorClass> = Vec::new();
    // the device kind of each class, to keep integrated and discrete apart
    let mut class_kinds: Vec<DeviceKind> = Vec::new();
    for device in accelerators {
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
    Ok(Cluster {
        accelerators: classes,
        cpus,
        interconnect: None,
    })
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
}
