//! NCCL as the intra-domain level of `Hierarchical`, with TCP between the
//! domain leaders (Horovod's scheme): two domains of GPUs in one process,
//! each rank on its own thread (NCCL needs every rank of a communicator in
//! flight at once), checked against the naive reduction for the leader and
//! sharded schemes, on host data and on GPU buffers.
//!
//! Domains: with G >= 2 GPUs, two halves of them; with one GPU, both domains
//! hold that GPU (two separate one-rank NCCL communicators), which still
//! runs NCCL's reduce / broadcast / reduce-scatter / all-gather inside the
//! hierarchy. Without a CUDA driver, a GPU, or NCCL, the test is listed as
//! ignored with the reason.

use std::sync::Arc;
use std::sync::mpsc;

use hetero_collectives::{
    Algorithm, FlatCollective, HierPlan, Hierarchical, InProcessTransport, Scheme, TcpConfig,
    TcpTransport, Transport,
};
use hetero_core::host_kernels::{Arith, combine, finish};
use hetero_core::testsuite::{compare, tolerance};
use hetero_core::{
    Backend, Collective, DType, Device, DeviceId, DeviceKind, HostSlice, HostSliceMut, LinkKind,
    LinkModel, ReduceOp, TensorMut, Topology, TopologyDevice, with_dtype,
};
use hetero_cuda::{CudaDevice, NcclCollective};
use libtest_mimic::{Arguments, Failed, Trial};

const LEN: usize = 4099; // not a multiple of any rank count used here

fn values<T: Arith>(rank: usize) -> Vec<T> {
    (0..LEN)
        .map(|i| T::from_f64(((rank * 5 + i * 3) % 7) as f64 - 2.0))
        .collect()
}

fn naive<T: Arith>(ranks: usize, op: ReduceOp) -> Vec<T> {
    let mut acc = values::<T>(0);
    for r in 1..ranks {
        combine(op, &mut acc, &values::<T>(r)).expect("same length");
    }
    finish(op, &mut acc, ranks).expect("ranks > 0");
    acc
}

/// Fast links inside a domain, 1 Gbit/s between, so the plan keeps two domains.
fn topology(domain_of: &[usize]) -> Topology {
    let devices = (0..domain_of.len())
        .map(|i| {
            let mut d = TopologyDevice::bare(
                DeviceId::new(Backend::Cuda, i as u32),
                format!("rank {i}"),
                DeviceKind::DiscreteGpu,
            );
            d.info.vendor = "NVIDIA".into();
            d
        })
        .collect();
    Topology::from_fn(devices, |i, j| {
        (i != j).then(|| {
            if domain_of[i] == domain_of[j] {
                LinkModel::new(LinkKind::NvLink, 2e-6, 100e9)
            } else {
                LinkModel::new(LinkKind::Ethernet, 50e-6, 125e6)
            }
        })
    })
    .expect("valid topology")
}

/// Which GPU each rank uses and the domain of each rank.
fn layout(gpus: usize) -> (Vec<usize>, Vec<usize>) {
    if gpus < 2 {
        return (vec![0, 0], vec![0, 1]);
    }
    let per = gpus / 2;
    let ordinals = (0..2 * per).collect();
    let domains = (0..2 * per).map(|r| r / per).collect();
    (ordinals, domains)
}

fn check_case(devices: &[CudaDevice], dtype: DType, op: ReduceOp) -> Result<(), Failed> {
    let (ordinals, domain_of) = layout(devices.len());
    let n = ordinals.len();
    // The domains are the two "machines", as Horovod groups ranks by host:
    // given, not measured (with one rank per domain nothing could be).
    let domains = (0..2)
        .map(|k| (0..n).filter(|&r| domain_of[r] == k).collect())
        .collect();
    let plan = HierPlan::with_domains(&topology(&domain_of), domains)
        .map_err(|e| Failed::from(e.to_string()))?;
    // NCCL communicators, one per domain, rank i of a domain on its i-th GPU.
    let mut intra: Vec<Option<NcclCollective>> = Vec::new();
    for dom in plan.domains() {
        let gpus: Vec<CudaDevice> = dom.iter().map(|&r| devices[ordinals[r]].clone()).collect();
        let comms = if gpus.len() == 1 {
            let id = NcclCollective::unique_id().map_err(|e| Failed::from(e.to_string()))?;
            vec![
                NcclCollective::from_unique_id(gpus[0].clone(), &id, 0, 1)
                    .map_err(|e| Failed::from(e.to_string()))?,
            ]
        } else {
            NcclCollective::all_local(&gpus).map_err(|e| Failed::from(e.to_string()))?
        };
        intra.extend(comms.into_iter().map(Some));
    }
    // In-process endpoints for the flat fallback and the shard rings; TCP
    // between the leaders, as between two machines.
    let mut flat: Vec<Option<InProcessTransport>> =
        InProcessTransport::group(n).into_iter().map(Some).collect();
    let per = n / 2;
    let mut shard: Vec<Vec<Option<InProcessTransport>>> = (0..per)
        .map(|_| InProcessTransport::group(2).into_iter().map(Some).collect())
        .collect();
    let (port_tx, port_rx) = mpsc::channel::<u16>();
    let port_rx = std::sync::Mutex::new(Some(port_rx));
    let port_tx = std::sync::Mutex::new(Some(port_tx));

    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|rank| {
                let dom = domain_of[rank];
                let local = plan.domains()[dom]
                    .iter()
                    .position(|&m| m == rank)
                    .unwrap_or(0);
                let nccl = intra[rank].take();
                let flat_t = flat[rank].take();
                let shard_t = shard[local][dom].take();
                let leader_index = plan.leaders().iter().position(|&l| l == rank);
                let tx = if leader_index == Some(0) {
                    port_tx.lock().ok().and_then(|mut g| g.take())
                } else {
                    None
                };
                let rx = if leader_index == Some(1) {
                    port_rx.lock().ok().and_then(|mut g| g.take())
                } else {
                    None
                };
                let plan = plan.clone();
                let device = devices[ordinals[rank]].clone();
                s.spawn(move || -> Result<(), String> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    rt.block_on(async move {
                        let e = |e: hetero_core::Error| e.to_string();
                        let nccl = nccl.ok_or("no NCCL communicator for this rank")?;
                        let leader_local = plan.domains()[dom]
                            .iter()
                            .position(|&m| m == plan.leaders()[dom])
                            .unwrap_or(0);
                        let leaders: Option<Box<dyn Collective>> = match leader_index {
                            Some(i) => {
                                let listener = if i == 0 {
                                    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                                        .await
                                        .map_err(|e| e.to_string())?;
                                    let port = l.local_addr().map_err(|e| e.to_string())?.port();
                                    tx.ok_or("no port channel")?
                                        .send(port)
                                        .map_err(|e| e.to_string())?;
                                    Some(l)
                                } else {
                                    None
                                };
                                let port = match &listener {
                                    Some(l) => l.local_addr().map_err(|e| e.to_string())?.port(),
                                    None => rx
                                        .ok_or("no port channel")?
                                        .recv()
                                        .map_err(|e| e.to_string())?,
                                };
                                let cfg = TcpConfig::new(i, 2, format!("127.0.0.1:{port}"));
                                let t = TcpTransport::connect_with(&cfg, listener)
                                    .await
                                    .map_err(e)?;
                                Some(Box::new(FlatCollective::unmeasured(
                                    Arc::new(t),
                                    Algorithm::Auto,
                                )))
                            }
                            None => None,
                        };
                        let flat_c = FlatCollective::unmeasured(
                            Arc::new(flat_t.ok_or("no flat endpoint")?) as Arc<dyn Transport>,
                            Algorithm::Auto,
                        );
                        let shard_c = FlatCollective::unmeasured(
                            Arc::new(shard_t.ok_or("no shard endpoint")?) as Arc<dyn Transport>,
                            Algorithm::Auto,
                        );
                        let hier = Hierarchical::compose(
                            plan,
                            rank,
                            Box::new(flat_c),
                            Some((Box::new(nccl), leader_local)),
                            leaders,
                            Some(Box::new(shard_c)),
                        );
                        with_dtype!(dtype, T => rank_work::<T>(&hier, &device, rank, n, dtype, op).await)
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("rank thread panicked".into()))
            })
            .collect()
    });
    let errors: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; ").into())
    }
}

async fn rank_work<T: Arith + Default>(
    hier: &Hierarchical,
    device: &CudaDevice,
    rank: usize,
    ranks: usize,
    dtype: DType,
    op: ReduceOp,
) -> Result<(), String> {
    let e = |e: hetero_core::Error| e.to_string();
    let want = naive::<T>(ranks, op);
    for scheme in [Scheme::Leader, Scheme::Sharded] {
        let mut host = values::<T>(rank);
        hier.all_reduce_with(scheme, TensorMut::Host(HostSliceMut::new(&mut host)), op)
            .await
            .map_err(e)?;
        compare(
            &format!("{scheme:?} {op} {dtype} host rank {rank}"),
            &host,
            &want,
            tolerance(dtype),
        )?;
        let mut buf = Device::alloc(device, dtype, LEN).map_err(e)?;
        Device::upload(device, &mut buf, 0, HostSlice::new(&values::<T>(rank))).map_err(e)?;
        hier.all_reduce_with(
            scheme,
            TensorMut::Device {
                device,
                buffer: &mut buf,
            },
            op,
        )
        .await
        .map_err(e)?;
        let mut got = vec![T::default(); LEN];
        Device::download(device, &buf, 0, HostSliceMut::new(&mut got)).map_err(e)?;
        compare(
            &format!("{scheme:?} {op} {dtype} GPU buffer rank {rank}"),
            &got,
            &want,
            tolerance(dtype),
        )?;
    }
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let cases = [
        (DType::F32, ReduceOp::Sum),
        (DType::F32, ReduceOp::Avg),
        (DType::I32, ReduceOp::Max),
        (DType::BF16, ReduceOp::Sum),
    ];
    let name = |dtype: DType, op: ReduceOp| format!("nccl_hierarchical::{op}_{dtype}");
    let devices = hetero_cuda::devices();
    let nccl = hetero_cuda::nccl_present();
    let trials = cases
        .into_iter()
        .map(|(dtype, op)| match (&devices, nccl) {
            (Ok(devices), true) => {
                let devices = devices.clone();
                Trial::test(name(dtype, op), move || check_case(&devices, dtype, op))
            }
            (Err(reason), _) => {
                eprintln!("NCCL hierarchical test skipped: {reason}");
                Trial::test(name(dtype, op), || Ok(()))
                    .with_ignored_flag(true)
                    .with_kind(if hetero_cuda::driver_present() {
                        "skipped: no CUDA device"
                    } else {
                        "skipped: no CUDA driver (libcuda.so not loadable)"
                    })
            }
            (Ok(_), false) => Trial::test(name(dtype, op), || Ok(()))
                .with_ignored_flag(true)
                .with_kind("skipped: NCCL (libnccl.so.2) not loadable"),
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
