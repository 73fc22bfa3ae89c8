//! `--device` specs and sizes, as the binaries take them on the command line.
//!
//! A spec is `host`, `host:threads=N,memory=SIZE` (a new host device with
//! that many threads and that memory budget; `,batch_invariant` makes its
//! quantized products compute every row as alone, for reproducible
//! sampling under batching; `,no_amx` keeps them off Intel AMX's tile
//! unit), or `BACKEND:INDEX` for a
//! discovered device (`cuda:0`, `wgpu:1`, `rocm:0`), optionally
//! `BACKEND:INDEX,memory=SIZE` to set the device's memory budget (wgpu:
//! the adapter opened again with that budget instead of the one its own
//! figures give; CUDA and ROCm report the driver's memory and take no
//! budget, so there it is an `Unsupported` error, never ignored). A size
//! is a number of bytes with an optional binary unit (`512MiB`, `2GiB`,
//! `1.5g`, `1024`).

use std::str::FromStr;

use hetero_core::{Error, Result};

use crate::AnyDevice;

/// One parsed `--device` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A new host device; `None` fields keep the host backend's defaults.
    Host {
        threads: Option<usize>,
        memory: Option<u64>,
        /// `batch_invariant`: every row of a quantized product computed as
        /// alone (`HostDeviceBuilder::batch_invariant`).
        batch_invariant: bool,
        /// `no_amx` sets this false: quantized products stay off the AMX
        /// tile unit (`HostDeviceBuilder::amx`).
        amx: bool,
    },
    /// A device the accelerator backend `backend` (its name, e.g. `cuda`)
    /// found, by index; `memory` (`wgpu:0,memory=2GiB`) sets its budget.
    Found {
        backend: String,
        index: u32,
        memory: Option<u64>,
    },
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
        if kind == "host" {
            let (mut threads, mut memory, mut batch_invariant, mut amx) = (None, None, false, true);
            for kv in rest.split(',').filter(|s| !s.is_empty()) {
                if kv == "batch_invariant" {
                    batch_invariant = true;
                    continue;
                }
                if kv == "no_amx" {
                    amx = false;
                    continue;
                }
                match kv.split_once('=') {
                    Some(("threads", v)) => {
                        let n: usize = v.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                            Error::invalid(
                                "device",
                                format!("threads={v} in {spec:?} is not a whole number >= 1"),
                            )
                        })?;
                        threads = Some(n);
                    }
                    Some(("memory", v)) => memory = Some(parse_bytes(v)?),
                    _ => {
                        return Err(Error::invalid(
                            "device",
                            format!(
                                "{kv:?} in {spec:?}: host takes threads=N, memory=SIZE, \
                                 batch_invariant and no_amx"
                            ),
                        ));
                    }
                }
            }
            return Ok(DeviceSpec::Host {
                threads,
                memory,
                batch_invariant,
                amx,
            });
        }
        let mut parts = rest.split(',');
        let index: u32 = parts
            .next()
            .and_then(|i| i.parse().ok())
            .filter(|_| !kind.is_empty())
            .ok_or_else(|| {
                Error::invalid(
                    "device",
                    format!(
                        "{spec:?}: expected host[:threads=N,memory=SIZE] or \
                         BACKEND:INDEX[,memory=SIZE], e.g. cuda:0 or wgpu:0,memory=2GiB"
                    ),
                )
            })?;
        let mut memory = None;
        for kv in parts {
            match kv.split_once('=') {
                Some(("memory", v)) if memory.is_none() => memory = Some(parse_bytes(v)?),
                Some(("memory", _)) => {
                    return Err(Error::invalid(
                        "device",
                        format!("{spec:?} sets memory= twice"),
                    ));
                }
                _ => {
                    return Err(Error::invalid(
                        "device",
                        format!("{kv:?} in {spec:?}: {kind}:INDEX takes only memory=SIZE"),
                    ));
                }
            }
        }
        Ok(DeviceSpec::Found {
            backend: kind.to_string(),
            index,
            memory,
        })
    }
}

/// A size like `512MiB`, `2GiB`, `1.5g`, `1024` (bytes). Negative, NaN,
/// infinite and out-of-range sizes are errors, never a zero budget.
pub fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let (num, unit) = t
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((t, ""), |i| t.split_at(i));
    let bad = |why: &str| Error::invalid("memory", format!("{text:?} {why}"));
    // "nan" and "inf" start with letters, so they land in `unit` and fail
    // as units; the checks below catch what the float parser still accepts.
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| bad("is not a size like 512MiB or 2GiB"))?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kib" | "k" => 1024.0,
        "mib" | "m" => 1024.0 * 1024.0,
        "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(Error::invalid(
                "memory",
                format!("{text:?}: unknown unit {other:?}; use B, KiB, MiB or GiB"),
            ));
        }
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 0.0 {
        return Err(bad("is not a size >= 0"));
    }
    // u64::MAX as f64 rounds up to 2^64, so `<` keeps the cast in range.
    if bytes >= u64::MAX as f64 {
        return Err(bad("is larger than 2^64 bytes"));
    }
    Ok(bytes as u64)
}

/// Threads of a `host` spec that names none, when the same list holds
/// `others` devices of other backends: one core is left to each of them.
///
/// Why: each such device is driven by a host thread (its stage's or
/// replica's launches, copies and waits; the CUDA driver spins while it
/// waits), and that thread runs while the host device's pool computes. A
/// pool with a thread on every core then has one thread descheduled at a
/// time, and a split kernel waits for its slowest part. Measured on a
/// 16-core Xeon with an H200 (SmolLM2-135M split by the DP, `hetero-place
/// --measure`): 16 host threads measured 0.73 of the predicted tokens/s,
/// 15 threads 0.97, 14 threads 0.94. At least one thread is kept.
pub fn default_host_threads(cores: usize, others: usize) -> usize {
    cores.saturating_sub(others).max(1)
}

/// Resolve `--device` specs against the devices found; each `host` spec
/// makes a new host device (numbered from 0 in the order given); one that
/// names no `threads=` leaves a core to each other-backend device in the
/// list ([`default_host_threads`]). A found
/// device's spec with `memory=SIZE` gives that device with that budget (a
/// wgpu adapter opened again with it); a backend that takes no budget is
/// an `Unsupported` error naming it.
pub fn select_devices(specs: &[String], found: &[AnyDevice]) -> Result<Vec<AnyDevice>> {
    let parsed = specs
        .iter()
        .map(|t| t.parse::<DeviceSpec>())
        .collect::<Result<Vec<_>>>()?;
    let others = parsed
        .iter()
        .filter(|s| matches!(s, DeviceSpec::Found { .. }))
        .count();
    let mut host_index = 0u32;
    let mut out = Vec::new();
    for (text, spec) in specs.iter().zip(parsed) {
        match spec {
            DeviceSpec::Host {
                threads,
                memory,
                batch_invariant,
                amx,
            } => {
                let mut b = hetero_host::HostDevice::builder()
                    .index(host_index)
                    .batch_invariant(batch_invariant)
                    .amx(amx);
                host_index += 1;
                if let Some(n) = threads {
                    b = b.threads(n);
                } else if others > 0 {
                    b = b.threads(default_host_threads(
                        hetero_host::hardware_threads(),
                        others,
                    ));
                }
                if let Some(bytes) = memory {
                    b = b.memory_budget(bytes);
                }
                out.push(AnyDevice::Host(b.build()?));
            }
            DeviceSpec::Found {
                backend,
                index,
                memory,
            } => {
                let hit = found.iter().find(|d| {
                    let id = d.as_dyn().id();
                    id.backend.name() == backend && id.index == index
                });
                match (hit, memory) {
                    (Some(d), None) => out.push(d.clone()),
                    (Some(d), Some(bytes)) => out.push(with_budget(d, bytes, text)?),
                    (None, _) => {
                        let names: Vec<String> =
                            found.iter().map(|d| d.as_dyn().id().to_string()).collect();
                        return Err(Error::invalid(
                            "device",
                            format!("{text:?} was not found; available: {}", names.join(", ")),
                        ));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// `device` with a budget of `bytes` (`--device` spec `spec`).
#[cfg_attr(not(feature = "wgpu"), allow(unused_variables))]
fn with_budget(device: &AnyDevice, bytes: u64, spec: &str) -> Result<AnyDevice> {
    match device {
        #[cfg(feature = "wgpu")]
        AnyDevice::Wgpu(d) => Ok(AnyDevice::Wgpu(d.with_budget(bytes)?)),
        other => {
            let backend = other.as_dyn().id().backend;
            Err(Error::unsupported(
                backend,
                format!(
                    "a memory budget ({spec:?}): the {} backend reports the driver's own \
                     memory and has no budget to set; drop memory= from the spec",
                    backend.name()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("1b").unwrap(), 1);
        assert_eq!(parse_bytes("4KiB").unwrap(), 4096);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes(" 1.5g ").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("0").unwrap(), 0);
    }

    #[test]
    fn bad_sizes_are_errors_not_zero() {
        for bad in [
            "-1", "-5MiB", "NaN", "nan", "inf", "-inf", "1e30GiB", "", "MiB", "12XB", "1..2",
        ] {
            let e = parse_bytes(bad).err();
            assert!(e.is_some(), "{bad:?} parsed");
            assert!(e.unwrap().to_string().contains("memory"), "{bad:?}");
        }
    }

    #[test]
    fn specs_parse() {
        assert_eq!(
            "host".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Host {
                threads: None,
                memory: None,
                batch_invariant: false,
                amx: true
            }
        );
        assert_eq!(
            "host:threads=4,memory=1GiB".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Host {
                threads: Some(4),
                memory: Some(1 << 30),
                batch_invariant: false,
                amx: true
            }
        );
        assert_eq!(
            "host:threads=2,batch_invariant"
                .parse::<DeviceSpec>()
                .unwrap(),
            DeviceSpec::Host {
                threads: Some(2),
                memory: None,
                batch_invariant: true,
                amx: true
            }
        );
        assert_eq!(
            "host:no_amx".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Host {
                threads: None,
                memory: None,
                batch_invariant: false,
                amx: false
            }
        );
        assert_eq!(
            "cuda:1".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Found {
                backend: "cuda".into(),
                index: 1,
                memory: None
            }
        );
        assert_eq!(
            "wgpu:0,memory=2GiB".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Found {
                backend: "wgpu".into(),
                index: 0,
                memory: Some(2 << 30)
            }
        );
        assert_eq!(
            "rocm:3,memory=512MiB".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Found {
                backend: "rocm".into(),
                index: 3,
                memory: Some(512 << 20)
            }
        );
        assert_eq!(
            "wgpu:1,memory=0".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Found {
                backend: "wgpu".into(),
                index: 1,
                memory: Some(0)
            }
        );
        for bad in [
            "host:threads=0",
            "host:threads=-2",
            "host:threads=x",
            "host:memory=-1",
            "host:memory=NaN",
            "host:cores=2",
            "cuda",
            "cuda:x",
            "wgpu:-1",
            ":0",
            "wgpu:",
            "wgpu:,memory=1GiB",
            "wgpu:0,",
            "wgpu:0,memory",
            "wgpu:0,memory=",
            "wgpu:0,memory=-1",
            "wgpu:0,memory=NaN",
            "wgpu:0,memory=1TiB",
            "wgpu:0,memory=1GiB,memory=2GiB",
            "wgpu:0,threads=2",
            "wgpu:memory=1GiB",
            "wgpu:0:memory=1GiB",
        ] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_default_host_leaves_a_core_to_each_other_device() {
        assert_eq!(default_host_threads(16, 0), 16);
        assert_eq!(default_host_threads(16, 1), 15);
        assert_eq!(default_host_threads(16, 3), 13);
        assert_eq!(default_host_threads(2, 1), 1);
        assert_eq!(default_host_threads(2, 5), 1);
        assert_eq!(default_host_threads(0, 0), 1);
    }

    #[test]
    fn host_specs_make_numbered_devices_and_unknown_ones_list_what_exists() {
        let specs = vec![
            "host:threads=1,memory=64MiB".to_string(),
            "host".to_string(),
        ];
        let devices = select_devices(&specs, &[]).unwrap();
        assert_eq!(devices.len(), 2);
        let first = devices[0].as_dyn();
        assert_eq!(first.id().index, 0);
        assert_eq!(devices[1].as_dyn().id().index, 1);
        assert_eq!(first.info().memory_total_bytes, 64 << 20);
        let found = select_devices(&["host".to_string()], &[]).unwrap();
        let e = select_devices(&["cuda:7".to_string()], &found)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not found") && e.contains("host:0"), "{e}");
    }

    #[test]
    fn a_budget_on_a_backend_without_one_is_an_error_naming_it() {
        let found = select_devices(&["host".to_string()], &[]).unwrap();
        // A spec naming a device that is not there still says so first.
        let e = select_devices(&["cuda:0,memory=1GiB".to_string()], &found)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not found"), "{e}");
        // A found device of a backend with no budget: Unsupported, named.
        let e = with_budget(&found[0], 1 << 30, "host:0,memory=1GiB")
            .err()
            .unwrap();
        assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("host") && e.contains("memory="), "{e}");
    }
}
