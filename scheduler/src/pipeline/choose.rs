//! `--split auto|replicate|layers:N1,N2,...`: how the binaries turn a
//! split request and the chosen devices into stages.

use std::path::Path;
use std::str::FromStr;

use hetero_core::{DynDevice, Error, Result, SharedDevice};
use hetero_models::{Checkpoint, StageSpec};

use super::plan::{PlanOptions, SplitChoice, SplitReport, plan_split};
use super::profile::{LayerProfile, ProfileOptions, profile_layers};
use super::run::stage_specs;

/// How a model is spread over the devices given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitSpec {
    /// Layers placed by the chain DP on measured profiles.
    Auto,
    /// The whole model on the first device (data-parallel replicas where
    /// the tool runs several).
    Replicate,
    /// This many consecutive layers on each device, in order.
    Layers(Vec<usize>),
}

impl FromStr for SplitSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(SplitSpec::Auto),
            "replicate" => Ok(SplitSpec::Replicate),
            _ => {
                let counts = s.strip_prefix("layers:").ok_or_else(|| {
                    Error::invalid(
                        "--split",
                        format!("{s:?}: expected auto, replicate or layers:N1,N2,... (layers per device)"),
                    )
                })?;
                let counts = counts
                    .split(',')
                    .map(|c| {
                        c.trim()
                            .parse::<usize>()
                            .ok()
                            .filter(|&n| n > 0)
                            .ok_or_else(|| {
                                Error::invalid(
                                    "--split",
                                    format!("{c:?} in {s:?} is not a layer count >= 1"),
                                )
                            })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(SplitSpec::Layers(counts))
            }
        }
    }
}

/// Bytes a device can take now: what it reports free, else its total
/// less what hetero allocated on it.
pub fn free_bytes(device: &dyn DynDevice) -> Result<u64> {
    let m = device.memory()?;
    Ok(m.free_bytes
        .unwrap_or(m.total_bytes.saturating_sub(m.allocated_bytes)))
}

/// Profiles of `checkpoint` on `devices`, from `cache` (a JSON list of
/// profiles) where one matches device, adapter name, model and options,
/// measured (and added to the cache) otherwise. A device that runs out of
/// memory while a part of the model is timed on it has no profile: its
/// entry is the reason.
pub fn cached_profiles(
    checkpoint: &Checkpoint,
    devices: &[SharedDevice],
    options: ProfileOptions,
    cache: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<std::result::Result<LayerProfile, String>>> {
    let model = checkpoint
        .path()
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut known: Vec<LayerProfile> = match cache {
        Some(path) if path.exists() => {
            let text = std::fs::read(path).map_err(|e| Error::io(path.display().to_string(), e))?;
            serde_json::from_slice(&text).map_err(|e| {
                Error::invalid(
                    format!("profile cache {}", path.display()),
                    format!("{e}; delete it to measure again"),
                )
            })?
        }
        _ => Vec::new(),
    };
    let mut out = Vec::with_capacity(devices.len());
    let mut measured = false;
    for d in devices {
        let (id, name) = (d.id().to_string(), d.info().name);
        let hit = known.iter().find(|p| {
            p.device == id && p.device_name == name && p.model == model && p.options == options
        });
        match hit {
            Some(p) => {
                progress(&format!("{id}: profile from the cache"));
                let mut p = p.clone();
                // what the device draws on now, not when it was timed
                p.host_threads = d.info().host_threads;
                p.host_cores = super::profile::host_cores();
                out.push(Ok(p));
            }
            None => match profile_layers(checkpoint, d, options, progress) {
                Ok(p) => {
                    known.push(p.clone());
                    out.push(Ok(p));
                    measured = true;
                }
                Err(e) if e.is_out_of_memory() => out.push(Err(format!(
                    "cannot hold one layer of the model to be profiled ({e})"
                ))),
                Err(e) => return Err(e),
            },
        }
    }
    if let (Some(path), true) = (cache, measured) {
        let text = serde_json::to_vec_pretty(&known)
            .map_err(|e| Error::invalid("profile cache", e.to_string()))?;
        std::fs::write(path, text).map_err(|e| Error::io(path.display().to_string(), e))?;
    }
    Ok(out)
}

/// Profile `devices` (see [`cached_profiles`]) and plan the split over
/// those profiled, under their free memory: the profiles (of the devices
/// profiled) and the report, whose device indices are into `devices` and
/// whose devices left out include those that could not be profiled.
pub fn plan_devices(
    checkpoint: &Checkpoint,
    devices: &[SharedDevice],
    plan: PlanOptions,
    profile: ProfileOptions,
    cache: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<LayerProfile>, SplitReport)> {
    let results = cached_profiles(checkpoint, devices, profile, cache, progress)?;
    let mut kept = Vec::new();
    let mut profiles = Vec::new();
    let mut unprofiled = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(p) => {
                kept.push(i);
                profiles.push(p);
            }
            Err(why) => unprofiled.push((devices[i].id().to_string(), why)),
        }
    }
    if profiles.is_empty() {
        return Err(Error::invalid(
            "devices",
            format!(
                "none could be profiled: {}",
                unprofiled
                    .iter()
                    .map(|(d, why)| format!("{d}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ));
    }
    let memory = kept
        .iter()
        .map(|&i| free_bytes(devices[i].as_ref()))
        .collect::<Result<Vec<_>>>()?;
    let mut report = plan_split(&profiles, &memory, plan)?;
    let remap = |c: &mut SplitChoice| {
        for s in &mut c.stages {
            s.device_index = kept[s.device_index];
        }
    };
    report.dp.iter_mut().for_each(remap);
    remap(&mut report.memory_proportional);
    remap(&mut report.equal);
    report.best_single.iter_mut().for_each(remap);
    report.left_out.extend(unprofiled);
    Ok((profiles, report))
}

/// The stages `spec` asks for over `devices` (with `auto`, the DP's plan
/// on the devices' profiles and free memory, and its report).
pub fn choose_stages(
    checkpoint: &Checkpoint,
    devices: &[SharedDevice],
    spec: &SplitSpec,
    plan: PlanOptions,
    profile: ProfileOptions,
    cache: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<StageSpec>, Option<SplitReport>)> {
    let layers = checkpoint.config().layers;
    let Some(first) = devices.first() else {
        return Err(Error::invalid("devices", "none given"));
    };
    match spec {
        SplitSpec::Replicate => Ok((
            vec![StageSpec {
                device: first.clone(),
                layers: 0..layers,
            }],
            None,
        )),
        SplitSpec::Layers(counts) => {
            if counts.len() != devices.len() || counts.iter().sum::<usize>() != layers {
                return Err(Error::invalid(
                    "--split",
                    format!(
                        "layers:{} gives {} counts summing to {} for {} devices and a model of \
                         {layers} layers; give one count per device, summing to {layers}",
                        counts
                            .iter()
                            .map(usize::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                        counts.len(),
                        counts.iter().sum::<usize>(),
                        devices.len()
                    ),
                ));
            }
            let mut start = 0;
            let stages = devices
                .iter()
                .zip(counts)
                .map(|(d, &c)| {
                    start += c;
                    StageSpec {
                        device: d.clone(),
                        layers: start - c..start,
                    }
                })
                .collect();
            Ok((stages, None))
        }
        SplitSpec::Auto => {
            let (_, report) = plan_devices(checkpoint, devices, plan, profile, cache, progress)?;
            let Some(dp) = &report.dp else {
                return Err(Error::invalid(
                    "model split",
                    format!("no split fits the devices' memory:\n{}", report.explain()),
                ));
            };
            let stages = stage_specs(&dp.stages, devices)?;
            Ok((stages, Some(report)))
        }
    }
}

/// What `spec` asks for over `devices` as pipelines side by side: with
/// `auto`, the report's recommendation (one pipeline, whole-model
/// replicas, or replicas of pipelines, whichever is predicted fastest);
/// otherwise [`choose_stages`]'s one pipeline.
pub fn choose_pipelines(
    checkpoint: &Checkpoint,
    devices: &[SharedDevice],
    spec: &SplitSpec,
    plan: PlanOptions,
    profile: ProfileOptions,
    cache: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<Vec<StageSpec>>, Option<SplitReport>)> {
    if *spec != SplitSpec::Auto {
        let (stages, report) =
            choose_stages(checkpoint, devices, spec, plan, profile, cache, progress)?;
        return Ok((vec![stages], report));
    }
    let (_, report) = plan_devices(checkpoint, devices, plan, profile, cache, progress)?;
    let chosen = match report.recommended.as_str() {
        "pipelines" => report.pipelines.as_ref(),
        "replicas" => report.replicas.as_ref(),
        _ => report.dp.as_ref(),
    };
    let Some(chosen) = chosen else {
        return Err(Error::invalid(
            "model split",
            format!("no split fits the devices' memory:\n{}", report.explain()),
        ));
    };
    let pipelines = chosen
        .pipelines()?
        .into_iter()
        .map(|group| stage_specs(group, devices))
        .collect::<Result<Vec<_>>>()?;
    Ok((pipelines, Some(report)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_specs_parse_or_name_the_fault() {
        assert_eq!("auto".parse::<SplitSpec>().unwrap(), SplitSpec::Auto);
        assert_eq!(
            "replicate".parse::<SplitSpec>().unwrap(),
            SplitSpec::Replicate
        );
        assert_eq!(
            "layers:10, 20".parse::<SplitSpec>().unwrap(),
            SplitSpec::Layers(vec![10, 20])
        );
        for bad in ["layer:3", "layers:", "layers:3,0", "layers:a", "pipeline"] {
            let e = bad.parse::<SplitSpec>().unwrap_err().to_string();
            assert!(e.contains("--split"), "{bad}: {e}");
        }
    }
}
