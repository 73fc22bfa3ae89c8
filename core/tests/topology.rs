//! Domain detection on synthetic topologies, JSON round trips and errors.

#![allow(clippy::unwrap_used)] // test helpers may unwrap

use hetero_core::{
    Backend, DeviceId, DeviceInfo, DeviceKind, LeaderPolicy, LinkKind, LinkModel, Topology,
    TopologyDevice,
};

const GB: f64 = 1e9;

fn devices(n: usize) -> Vec<TopologyDevice> {
    (0..n)
        .map(|i| TopologyDevice {
            info: DeviceInfo {
                id: DeviceId::new(Backend::Cuda, i as u32),
                name: format!("gpu{i}"),
                kind: DeviceKind::DiscreteGpu,
                vendor: "synthetic".into(),
                memory_total_bytes: 16 << 30,
                memory_free_bytes: None,
                driver: None,
                compute_units: None,
                host_threads: None,
            },
            gemm_flops_per_s: Some(1e13),
        })
        .collect()
}

fn link(kind: LinkKind, gbps: f64) -> Option<LinkModel> {
    Some(LinkModel::new(kind, 5e-6, gbps * GB))
}

/// `nodes` nodes of `per_node` devices; `fast` inside a node, `slow` between.
fn two_level(nodes: usize, per_node: usize, fast: f64, slow: f64) -> Topology {
    Topology::from_fn(devices(nodes * per_node), |i, j| {
        if i == j {
            None
        } else if i / per_node == j / per_node {
            link(LinkKind::Pcie, fast)
        } else {
            link(LinkKind::Ethernet, slow)
        }
    })
    .unwrap()
}

fn members(t: &Topology) -> Vec<Vec<usize>> {
    t.domains().into_iter().map(|d| d.members).collect()
}

#[test]
fn two_nodes_of_four_with_10x_links_give_two_domains() {
    let t = two_level(2, 4, 100.0, 10.0);
    assert_eq!(members(&t), vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
    let d = &t.domains()[1];
    assert_eq!(
        d.leader, 4,
        "leader is the domain's lowest index by default"
    );
    assert_eq!(d.internal_bandwidth_bytes_per_s, Some(100.0 * GB));
    assert_eq!(d.external_bandwidth_bytes_per_s, Some(10.0 * GB));
    assert!(t.is_hierarchical());
}

#[test]
fn uniform_links_give_one_flat_domain() {
    let t = two_level(2, 4, 25.0, 25.0);
    assert_eq!(members(&t), vec![(0..8).collect::<Vec<_>>()]);
    assert!(t.domain_levels().is_empty());
    assert!(!t.is_hierarchical());
}

#[test]
fn a_gap_below_the_ratio_collapses_to_flat() {
    // 3x faster inside a node: below the default 4x, so flat...
    let t = two_level(2, 4, 30.0, 10.0);
    assert_eq!(t.domains().len(), 1);
    // ...unless the user lowers the ratio.
    let t = t.with_domain_ratio(2.5).unwrap();
    assert_eq!(t.domains().len(), 2);
    assert!(two_level(1, 2, 1.0, 1.0).with_domain_ratio(1.0).is_err());
}

#[test]
fn three_levels_nest_and_domains_are_the_coarsest() {
    // 2 Ethernet nodes x 2 PCIe groups x NVLink pairs: 8 devices.
    let t = Topology::from_fn(devices(8), |i, j| {
        if i == j {
            None
        } else if i / 2 == j / 2 {
            link(LinkKind::NvLink, 300.0)
        } else if i / 4 == j / 4 {
            link(LinkKind::Pcie, 25.0)
        } else {
            link(LinkKind::Ethernet, 1.25)
        }
    })
    .unwrap();
    let levels: Vec<Vec<Vec<usize>>> = t
        .domain_levels()
        .into_iter()
        .map(|l| l.into_iter().map(|d| d.members).collect())
        .collect();
    assert_eq!(
        levels,
        vec![
            vec![vec![0, 1], vec![2, 3], vec![4, 5], vec![6, 7]],
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]],
        ]
    );
    assert_eq!(members(&t), vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
}

#[test]
fn a_lone_slow_device_is_its_own_domain() {
    // 4 GPUs on NVLink plus a CPU reached over PCIe.
    let t = Topology::from_fn(devices(5), |i, j| {
        if i == j {
            None
        } else if i < 4 && j < 4 {
            link(LinkKind::NvLink, 200.0)
        } else {
            link(LinkKind::Pcie, 16.0)
        }
    })
    .unwrap();
    assert_eq!(members(&t), vec![vec![0, 1, 2, 3], vec![4]]);
}

#[test]
fn asymmetric_links_use_the_slower_direction_inside() {
    // Inside node 0 one direction is slow: the pair is no longer 4x faster.
    let t = Topology::from_fn(devices(4), |i, j| match (i, j) {
        _ if i == j => None,
        (0, 1) => link(LinkKind::Pcie, 15.0),
        _ if i / 2 == j / 2 => link(LinkKind::Pcie, 100.0),
        _ => link(LinkKind::Ethernet, 10.0),
    })
    .unwrap();
    // {2,3} alone would qualify, but then {0},{1} must be singletons; the
    // split {0},{1},{2,3} is valid, and it is the only one.
    assert_eq!(members(&t), vec![vec![0], vec![1], vec![2, 3]]);
}

#[test]
fn bandwidth_aware_leader() {
    // Device 2 of node 0 has the fastest way out.
    let t = Topology::from_fn(devices(6), |i, j| {
        if i == j {
            None
        } else if i / 3 == j / 3 {
            link(LinkKind::NvLink, 200.0)
        } else if i == 2 || j == 2 {
            link(LinkKind::InfiniBand, 25.0)
        } else {
            link(LinkKind::Ethernet, 10.0)
        }
    })
    .unwrap()
    .with_leader_policy(LeaderPolicy::BestExternalBandwidth);
    let leaders: Vec<usize> = t.domains().iter().map(|d| d.leader).collect();
    assert_eq!(leaders, vec![2, 3]);
}

#[test]
fn json_round_trips() {
    let t = two_level(2, 2, 100.0, 10.0);
    let json = t.to_json().unwrap();
    let back = Topology::from_json(&json).unwrap();
    assert_eq!(back, t);
    assert_eq!(back.domains(), t.domains());
    // The file shows the domains for readers.
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["domains"].as_array().unwrap().len(), 2);
}

#[test]
fn json_snapshot() {
    let t = two_level(2, 1, 50.0, 5.0);
    insta::assert_snapshot!(t.to_json().unwrap());
}

#[test]
fn save_and_load() {
    let dir = std::env::temp_dir().join(format!("hetero-topology-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("topology.json");
    let t = two_level(2, 2, 100.0, 10.0);
    t.save(&path).unwrap();
    assert_eq!(Topology::load(&path).unwrap(), t);
    let missing = Topology::load(&dir.join("nope.json"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nope.json"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn load_err(mutate: impl FnOnce(&mut serde_json::Value)) -> String {
    let t = two_level(2, 1, 50.0, 5.0);
    let mut value: serde_json::Value = serde_json::from_str(&t.to_json().unwrap()).unwrap();
    mutate(&mut value);
    Topology::from_json(&value.to_string())
        .unwrap_err()
        .to_string()
}

#[test]
fn malformed_files_name_the_field() {
    let e = load_err(|v| {
        v["links"][0][1]
            .as_object_mut()
            .unwrap()
            .remove("bandwidth_bytes_per_s");
    });
    assert!(e.contains("bandwidth_bytes_per_s"), "{e}");

    let e = load_err(|v| v["links"][1][0]["bandwidth_bytes_per_s"] = (-3.0).into());
    assert!(e.contains("links[1][0].bandwidth_bytes_per_s"), "{e}");

    let e = load_err(|v| v["links"][0][1] = serde_json::Value::Null);
    assert!(e.contains("links[0][1]") && e.contains("missing"), "{e}");

    let e = load_err(|v| {
        v["links"][1].as_array_mut().unwrap().pop();
    });
    assert!(e.contains("links[1]"), "{e}");

    let e = load_err(|v| v["version"] = 99.into());
    assert!(e.contains("version"), "{e}");

    let e = load_err(|v| v["domain_ratio"] = 0.5.into());
    assert!(e.contains("domain_ratio"), "{e}");

    let e = load_err(|v| v["devices"][1]["info"]["id"]["index"] = 0.into());
    assert!(e.contains("devices[1].info.id"), "{e}");

    let e = load_err(|v| v["devices"][0]["info"]["kind"] = "toaster".into());
    assert!(e.contains("toaster"), "{e}");

    let e = Topology::from_json("{ not json").unwrap_err().to_string();
    assert!(e.contains("topology JSON"), "{e}");
}

/// A matrix measured on the emulated 2 x 4 cluster (tbf 1 Gbit/s between
/// nodes, 8 processes on 2 cores), GB/s. Two inter-node pairs passed a
/// burst (0.85, 0.86 on a 0.125 link) and one intra pair was slow (1.66):
/// the min / max test saw 1.66 < 4 x 0.86 and collapsed to one domain; the
/// quartile test finds the nodes.
#[test]
fn a_few_noisy_pairs_do_not_collapse_a_two_node_cluster() {
    let m = [
        [0.0, 2.323, 2.782, 1.657, 0.122, 0.849, 0.136, 0.062],
        [2.323, 0.0, 2.744, 1.811, 0.122, 0.048, 0.085, 0.109],
        [2.782, 2.744, 0.0, 2.205, 0.131, 0.076, 0.859, 0.274],
        [1.657, 1.811, 2.205, 0.0, 0.198, 0.067, 0.206, 0.824],
        [0.122, 0.122, 0.131, 0.198, 0.0, 2.180, 1.898, 2.669],
        [0.849, 0.048, 0.076, 0.067, 2.180, 0.0, 2.344, 3.101],
        [0.136, 0.085, 0.859, 0.206, 1.898, 2.344, 0.0, 4.104],
        [0.062, 0.109, 0.274, 0.824, 2.669, 3.101, 4.104, 0.0],
    ];
    let t = Topology::from_fn(devices(8), |i, j| {
        (i != j).then(|| LinkModel::new(LinkKind::Unknown, 5e-6, m[i][j] * GB))
    })
    .unwrap();
    assert_eq!(members(&t), vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
    // Noise that is not a few pairs still collapses: every inter link
    // measured at half the intra bandwidth is no 4x gap.
    let flat = Topology::from_fn(devices(8), |i, j| {
        (i != j).then(|| {
            let bw = if i / 4 == j / 4 { m[i][j] } else { 0.9 };
            LinkModel::new(LinkKind::Unknown, 5e-6, bw * GB)
        })
    })
    .unwrap();
    assert_eq!(flat.domains().len(), 1);
}
