//! One model split over processes: one stage per rank of a job started
//! like torchrun (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), the
//! hidden states moved by `hetero_collectives`' point-to-point transports
//! (TCP, or shared memory between the processes of one host).
//!
//! Rank 0 loads the embedding and the first layers and runs the model as
//! usual (generation, sampling, serving); every other rank loads its
//! consecutive layers (the last one also the head), tells rank 0 what it
//! holds ([`StageHello`]) and serves steps until rank 0 stops the line
//! ([`LlamaModel::serve_stage`]). Which layers a rank holds comes from
//! `--split layers:N0,N1,...`, one count per rank ([`rank_layers`]).
//!
//! The transports are async; the model's stage threads are plain threads,
//! so [`TransportPeer`] blocks on the runtime's handle for each message.
//!
//! A binary's whole start-up is [`StageRank::join`] (the rendezvous),
//! [`StageRank::plan_stages`] (which layers each of its devices loads),
//! then
//! [`StageRank::run`]: rank 0 gets the model with the other ranks attached
//! ([`RankRole::Head`]), every other rank serves until rank 0 stops the
//! line ([`RankRole::Served`]).

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hetero_collectives::TcpConfig;
use hetero_collectives::transport::{Ranks, Transport, TransportKind, connect};
use hetero_core::{Error, Result};
use hetero_models::{LlamaModel, RemoteStage, RemoteTail, StagePeer, StageSpec, StageStats};
use serde::{Deserialize, Serialize};
use tokio::runtime::{Handle, Runtime};

use super::plan::{PlanOptions, SplitReport, plan_split_in_order};
use super::profile::LayerProfile;

/// What a rank offers to rank 0 for `--split auto`, per device of the
/// rank in order: its profile (or why it has none) and the bytes free on
/// it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceOffer {
    pub profile: std::result::Result<LayerProfile, String>,
    pub free_bytes: u64,
}

/// This rank's offer for [`StageRank::agree_split`]: each of `devices`
/// profiled (from `cache` where it has the profile) with its free bytes.
pub fn device_offers(
    checkpoint: &hetero_models::Checkpoint,
    devices: &[hetero_core::SharedDevice],
    profile: super::profile::ProfileOptions,
    cache: Option<&std::path::Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<DeviceOffer>> {
    let profiles = super::choose::cached_profiles(checkpoint, devices, profile, cache, progress)?;
    devices
        .iter()
        .zip(profiles)
        .map(|(d, profile)| {
            Ok(DeviceOffer {
                profile,
                free_bytes: super::choose::free_bytes(d.as_ref())?,
            })
        })
        .collect()
}

/// Rank 0's answer: the layer count of every device of every rank, or why
/// there is none.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum SplitAnswer {
    Layers(Vec<Vec<usize>>),
    Failed(String),
}

/// The layers of each device of rank `rank` when device `j` of rank `i`
/// holds `counts[i][j]` consecutive layers (ranks in order, each rank's
/// devices in order) of a model of `layers`.
pub fn rank_device_layers(
    counts: &[Vec<usize>],
    rank: usize,
    layers: usize,
) -> Result<Vec<Range<usize>>> {
    let total: usize = counts.iter().flatten().sum();
    if total != layers || rank >= counts.len() || counts.iter().flatten().any(|&c| c == 0) {
        return Err(Error::invalid(
            "split",
            format!(
                "{counts:?} is not a split of {layers} layers over ranks with rank {rank} in it, \
                 every device holding one layer or more"
            ),
        ));
    }
    let mut start: usize = counts[..rank].iter().flatten().sum();
    Ok(counts[rank]
        .iter()
        .map(|&c| {
            start += c;
            start - c..start
        })
        .collect())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::invalid("message", e.to_string()))
}

/// This process's place in a split over processes: its transport to the
/// other ranks and the runtime that drives it.
#[derive(Debug)]
pub struct StageRank {
    pub transport: Arc<dyn Transport>,
    /// Drives `transport`; the model's threads block on its handle, so it
    /// must outlive every use of the model this rank serves or heads.
    pub runtime: Runtime,
    /// How long rank 0 waits for the other ranks' stages (their loading).
    pub timeout: Duration,
}

/// What [`StageRank::run`] did.
#[derive(Debug)]
pub enum RankRole {
    /// Rank 0: the model, the other ranks' layers attached.
    Head(Box<LlamaModel>),
    /// Ranks 1 and up: served steps until rank 0 stopped the line.
    Served(StageStats),
}

impl StageRank {
    /// Join the job torchrun's variables describe (`RANK`, `WORLD_SIZE`,
    /// `MASTER_ADDR`, `MASTER_PORT`; or an MPI launcher's rank variables
    /// with `MASTER_ADDR` and `MASTER_PORT`, see
    /// [`Launcher`](hetero_collectives::transport::Launcher)) over `kind`
    /// (TCP or shared memory).
    /// `timeout` bounds the rendezvous and every receive (default: the
    /// transport's, from the environment).
    pub fn join(kind: TransportKind, timeout: Option<Duration>) -> Result<Self> {
        let cfg = TcpConfig::from_env()?;
        let timeout = timeout.unwrap_or(cfg.timeout);
        // One worker: it only moves messages; the stages compute on
        // their own threads.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the tokio runtime", e))?;
        eprintln!(
            "rank {} of {}: joining the job at {}...",
            cfg.rank, cfg.world_size, cfg.master
        );
        let transport = runtime
            .block_on(connect(kind, Ranks::Job(cfg), Some(timeout)))?
            .into_single()?;
        Ok(StageRank {
            transport,
            runtime,
            timeout,
        })
    }

    pub fn rank(&self) -> usize {
        self.transport.rank()
    }

    pub fn world(&self) -> usize {
        self.transport.size()
    }

    /// This rank's layers when rank `i` holds `counts[i]` consecutive
    /// layers of a model of `layers` ([`rank_layers`]).
    pub fn layers(&self, counts: &[usize], layers: usize) -> Result<Range<usize>> {
        rank_layers(counts, self.rank(), self.world(), layers)
    }

    /// `--split auto` over processes: every rank offers its devices'
    /// profiles (`Err`: why a device has none) and free bytes; rank 0
    /// plans the split with every device of every rank holding consecutive
    /// layers in rank order, each rank's devices in their order (the
    /// line's order; [`plan_split_in_order`]) and sends every rank the
    /// layer counts (per rank, per device), which every rank returns; rank
    /// 0 also the report. A device without a profile, or no split that
    /// fits, fails every rank with the reason (rank 0 names the rank and
    /// device to leave out).
    pub fn agree_split(
        &self,
        mine: Vec<DeviceOffer>,
        options: PlanOptions,
    ) -> Result<(Vec<Vec<usize>>, Option<SplitReport>)> {
        let (rank, world) = (self.rank(), self.world());
        let handle = self.runtime.handle();
        if mine.is_empty() {
            return Err(Error::invalid("devices", "a rank offers at least one"));
        }
        // Every rank profiles its own devices meanwhile: wait up to the
        // timeout past the slowest of them, not past the first message.
        let recv = |from: usize| -> Result<Vec<u8>> {
            let deadline = Instant::now() + self.timeout;
            loop {
                match handle.block_on(self.transport.recv(from)) {
                    Err(Error::Timeout { .. }) if Instant::now() < deadline => continue,
                    other => return other,
                }
            }
        };
        if rank > 0 {
            handle.block_on(self.transport.send(0, encode(&mine)?))?;
            let answer: SplitAnswer = serde_json::from_slice(&recv(0)?).map_err(|e| {
                Error::invalid("rank 0", format!("its split answer is not one: {e}"))
            })?;
            return match answer {
                SplitAnswer::Layers(counts) => Ok((counts, None)),
                SplitAnswer::Failed(why) => Err(Error::invalid("--split auto", why)),
            };
        }
        let mut offers = vec![mine];
        for r in 1..world {
            let offer: Vec<DeviceOffer> = serde_json::from_slice(&recv(r)?).map_err(|e| {
                Error::invalid(format!("rank {r}"), format!("its offer is not one: {e}"))
            })?;
            if offer.is_empty() {
                return Err(Error::invalid(format!("rank {r}"), "offers no device"));
            }
            offers.push(offer);
        }
        let planned = (|| -> std::result::Result<(Vec<Vec<usize>>, SplitReport), String> {
            let mut profiles = Vec::new();
            let mut memory = Vec::new();
            for (r, devices) in offers.iter().enumerate() {
                for o in devices {
                    match &o.profile {
                        // Device ids are each process's own (every rank
                        // may have a host:0): the report names ranks.
                        Ok(p) => profiles.push(LayerProfile {
                            device: format!("rank {r} {}", p.device),
                            ..p.clone()
                        }),
                        Err(why) => {
                            return Err(format!(
                                "rank {r} has a device without a profile ({why}); start the \
                                 job without it"
                            ));
                        }
                    }
                    memory.push(o.free_bytes);
                }
            }
            let report =
                plan_split_in_order(&profiles, &memory, options).map_err(|e| e.to_string())?;
            let Some(dp) = &report.dp else {
                return Err(format!(
                    "no split with every device of every rank holding layers, in rank order, \
                     fits their memory:\n{}",
                    report.explain()
                ));
            };
            let mut flat = dp.stages.iter().map(|s| s.layers[1] + 1 - s.layers[0]);
            let counts = offers
                .iter()
                .map(|devices| flat.by_ref().take(devices.len()).collect())
                .collect();
            Ok((counts, report))
        })();
        let answer = match &planned {
            Ok((counts, _)) => SplitAnswer::Layers(counts.clone()),
            Err(why) => SplitAnswer::Failed(why.clone()),
        };
        let bytes = encode(&answer)?;
        for r in 1..world {
            handle.block_on(self.transport.send(r, bytes.clone()))?;
        }
        handle.block_on(self.transport.flush())?;
        match planned {
            Ok((counts, report)) => Ok((counts, Some(report))),
            Err(why) => Err(Error::invalid("--split auto", why)),
        }
    }

    /// This rank's stages, one per device of `devices`, in order. With
    /// `counts` (`--split layers:N0,N1,...`, one count per rank) the rank
    /// has one device, which holds its count; without (`--split auto`)
    /// the ranks agree on the split ([`device_offers`] with `profile` and
    /// `cache`, then [`StageRank::agree_split`] with `plan`; rank 0 logs
    /// the report). `log` hears progress and what each device loads.
    #[allow(clippy::too_many_arguments)]
    pub fn plan_stages(
        &self,
        checkpoint: &hetero_models::Checkpoint,
        devices: &[hetero_core::SharedDevice],
        counts: Option<&[usize]>,
        profile: super::profile::ProfileOptions,
        plan: PlanOptions,
        cache: Option<&std::path::Path>,
        log: &mut dyn FnMut(&str),
    ) -> Result<Vec<StageSpec>> {
        let rank = self.rank();
        let layers = checkpoint.config().layers;
        let counts: Vec<Vec<usize>> = match counts {
            Some(counts) => {
                if devices.len() != 1 {
                    return Err(Error::invalid(
                        "--device",
                        format!(
                            "{} devices on rank {rank}: layers:N0,N1,... gives one count per \
                             rank, for one device each; with several devices per rank use \
                             --split auto",
                            devices.len()
                        ),
                    ));
                }
                self.layers(counts, layers)?;
                counts.iter().map(|&c| vec![c]).collect()
            }
            None => {
                let offers = device_offers(checkpoint, devices, profile, cache, &mut |m| {
                    log(&format!("rank {rank}: {m}"))
                })?;
                let (counts, report) = self.agree_split(offers, plan)?;
                if let Some(report) = report {
                    log(report.explain().trim_end());
                }
                counts
            }
        };
        let ranges = rank_device_layers(&counts, rank, layers)?;
        Ok(devices
            .iter()
            .zip(ranges)
            .map(|(device, layers)| {
                log(&format!(
                    "rank {rank}: loading layers {}-{} on {}",
                    layers.start,
                    layers.end - 1,
                    device.id()
                ));
                StageSpec {
                    device: device.clone(),
                    layers,
                }
            })
            .collect())
    }

    /// With this rank's part of the model loaded: rank 0 waits for the
    /// other ranks' stages and attaches them ([`join_stage_ranks`]); every
    /// other rank serves its stage ([`serve_stage_rank`]) and hands its
    /// last messages to the medium before it returns.
    pub fn run(&self, part: LlamaModel) -> Result<RankRole> {
        let rank = self.rank();
        if rank == 0 {
            eprintln!("rank 0: waiting for the other ranks' stages...");
            let handle = self.runtime.handle();
            return join_stage_ranks(part, self.transport.clone(), handle, self.timeout)
                .map(|model| RankRole::Head(Box::new(model)));
        }
        eprintln!("rank {rank}: serving until rank 0 stops the line");
        let served = serve_stage_rank(&part, self.transport.clone(), self.runtime.handle());
        let flushed = self.flush();
        let stats = served?;
        flushed?;
        Ok(RankRole::Served(stats))
    }

    /// Hand the last messages to the medium (before the process exits).
    pub fn flush(&self) -> Result<()> {
        self.runtime.block_on(self.transport.flush())
    }
}

/// One peer of a rank's transport as a [`StagePeer`].
#[derive(Debug, Clone)]
pub struct TransportPeer {
    transport: Arc<dyn Transport>,
    peer: usize,
    runtime: Handle,
}

impl TransportPeer {
    /// `runtime` drives `transport`; the calls block on it, so they must
    /// not come from one of its own tasks.
    pub fn new(transport: Arc<dyn Transport>, peer: usize, runtime: Handle) -> Self {
        TransportPeer {
            transport,
            peer,
            runtime,
        }
    }
}

impl StagePeer for TransportPeer {
    fn send(&self, message: Vec<u8>) -> Result<()> {
        self.runtime
            .block_on(self.transport.send(self.peer, message))
    }

    fn recv(&self) -> Result<Vec<u8>> {
        self.runtime.block_on(self.transport.recv(self.peer))
    }

    fn flush(&self) -> Result<()> {
        self.runtime.block_on(self.transport.flush())
    }

    fn describe(&self) -> String {
        format!("rank {}", self.peer)
    }
}

/// What a stage rank tells rank 0 once its layers are loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageHello {
    pub stage: RemoteStage,
    /// The model it loaded (layers, hidden size, vocabulary, parameters),
    /// checked against rank 0's.
    pub model: String,
}

/// What rank 0 compares to be sure every rank loaded the same model.
pub fn model_identity(model: &LlamaModel) -> String {
    let c = model.config();
    format!(
        "{} layers, hidden {}, vocabulary {}, {} parameters",
        c.layers,
        c.hidden,
        c.vocab,
        c.parameters()
    )
}

/// The layers of rank `rank` of `world` when rank `i` holds `counts[i]`
/// consecutive layers of a model of `layers`.
pub fn rank_layers(
    counts: &[usize],
    rank: usize,
    world: usize,
    layers: usize,
) -> Result<Range<usize>> {
    if counts.len() != world {
        return Err(Error::invalid(
            "--split",
            format!(
                "gives {} layer counts for a job of {world} ranks: give one count per rank \
                 (layers:N0,N1,...; rank 0 holds the first N0 layers)",
                counts.len()
            ),
        ));
    }
    let total: usize = counts.iter().sum();
    if total != layers {
        return Err(Error::invalid(
            "--split",
            format!("layer counts add up to {total}; the model has {layers} layers"),
        ));
    }
    let start: usize = counts[..rank].iter().sum();
    Ok(start..start + counts[rank])
}

/// Rank `r > 0`: say what this rank holds to rank 0, then serve steps
/// from rank `r - 1` to rank `r + 1` (rank 0 after the last) until rank 0
/// stops the line.
pub fn serve_stage_rank(
    model: &LlamaModel,
    transport: Arc<dyn Transport>,
    runtime: &Handle,
) -> Result<StageStats> {
    let (rank, world) = (transport.rank(), transport.size());
    if rank == 0 || world < 2 {
        return Err(Error::invalid(
            "rank",
            format!(
                "rank {rank} of {world}: stages are served by ranks 1 and up of a job of two or more"
            ),
        ));
    }
    // A rank may run several devices, one local stage each.
    let stages = model.stages();
    let join = |f: &dyn Fn(&hetero_models::llama::StageInfo) -> String| {
        stages.iter().map(f).collect::<Vec<_>>().join("+")
    };
    let hello = StageHello {
        stage: RemoteStage {
            rank,
            device: join(&|s| s.device_id.clone()),
            device_name: join(&|s| s.device_name.clone()),
            layers: model.layers_held(),
            weight_bytes: model.weight_bytes(),
        },
        model: model_identity(model),
    };
    let bytes = serde_json::to_vec(&hello).map_err(|e| Error::invalid("hello", e.to_string()))?;
    let peer = |p: usize| TransportPeer::new(transport.clone(), p, runtime.clone());
    peer(0).send(bytes)?;
    model.serve_stage(rank, &peer(rank - 1), &peer((rank + 1) % world))
}

/// Rank 0: wait for every other rank's [`StageHello`] (loading may take a
/// while: up to `wait`), check they continue `first` (the embedding and
/// the first layers) in rank order with the same model, and attach them.
pub fn join_stage_ranks(
    first: LlamaModel,
    transport: Arc<dyn Transport>,
    runtime: &Handle,
    wait: Duration,
) -> Result<LlamaModel> {
    let world = transport.size();
    if transport.rank() != 0 || world < 2 {
        return Err(Error::invalid(
            "rank",
            "the first stage is rank 0 of a job of two or more",
        ));
    }
    let identity = model_identity(&first);
    let deadline = Instant::now() + wait;
    let mut stages = Vec::with_capacity(world - 1);
    for r in 1..world {
        let bytes = loop {
            match runtime.block_on(transport.recv(r)) {
                Err(Error::Timeout { .. }) if Instant::now() < deadline => continue,
                other => break other?,
            }
        };
        let hello: StageHello = serde_json::from_slice(&bytes).map_err(|e| {
            Error::invalid(
                format!("rank {r}"),
                format!("its hello is not a stage's: {e}"),
            )
        })?;
        if hello.model != identity {
            return Err(Error::invalid(
                format!("rank {r}"),
                format!("loaded a model of {}; rank 0's has {identity}", hello.model),
            ));
        }
        if hello.stage.rank != r {
            return Err(Error::invalid(
                format!("rank {r}"),
                format!("says it is rank {}", hello.stage.rank),
            ));
        }
        stages.push(hello.stage);
    }
    let peer = |p: usize| -> Arc<dyn StagePeer> {
        Arc::new(TransportPeer::new(transport.clone(), p, runtime.clone()))
    };
    first.attach_remote(RemoteTail::new(peer(1), peer(world - 1), stages)?)
}

#[cfg(test)]
mod tests {
    use super::{rank_device_layers, rank_layers};

    #[test]
    fn devices_of_ranks_take_consecutive_counts() {
        let counts = vec![vec![3, 2], vec![4], vec![1, 1, 1]];
        assert_eq!(
            rank_device_layers(&counts, 0, 12).unwrap(),
            vec![0..3, 3..5]
        );
        assert_eq!(rank_device_layers(&counts, 1, 12).unwrap(), vec![5..9]);
        assert_eq!(
            rank_device_layers(&counts, 2, 12).unwrap(),
            vec![9..10, 10..11, 11..12]
        );
        for (bad, layers, rank) in [
            (counts.clone(), 13, 0),
            (counts.clone(), 12, 3),
            (vec![vec![12, 0]], 12, 0),
        ] {
            assert!(rank_device_layers(&bad, rank, layers).is_err());
        }
    }

    #[test]
    fn ranks_take_consecutive_counts() {
        assert_eq!(rank_layers(&[3, 5, 2], 0, 3, 10).unwrap(), 0..3);
        assert_eq!(rank_layers(&[3, 5, 2], 1, 3, 10).unwrap(), 3..8);
        assert_eq!(rank_layers(&[3, 5, 2], 2, 3, 10).unwrap(), 8..10);
        let e = rank_layers(&[3, 5], 0, 3, 8).unwrap_err().to_string();
        assert!(e.contains("one count per rank"), "{e}");
        let e = rank_layers(&[3, 5, 1], 0, 3, 10).unwrap_err().to_string();
        assert!(e.contains("add up to 9"), "{e}");
    }
}
