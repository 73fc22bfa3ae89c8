//! `--device` specs and sizes, as the binaries take them on the command line.
//!
//! A spec is `host`, `host:threads=N,memory=SIZE` (a new host device with
//! that many threads and that memory budget), or `BACKEND:INDEX` for a
//! discovered device (`cuda:0`, `wgpu:1`, `rocm:0`). A size is a number of
//! bytes with an optional binary unit (`512MiB`, `2GiB`, `1.5g`, `1024`).

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
    },
    /// A device the accelerator backend `backend` (its name, e.g. `cuda`)
    /// found, by index.
    Found { backend: String, index: u32 },
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
        if kind == "host" {
            let (mut threads, mut memory) = (None, None);
            for kv in rest.split(',').filter(|s| !s.is_empty()) {
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
                            format!("{kv:?} in {spec:?}: host takes threads=N and memory=SIZE"),
                        ));
                    }
                }
            }
            return Ok(DeviceSpec::Host { threads, memory });
        }
        let index: u32 = rest.parse().map_err(|_| {
            Error::invalid(
                "device",
                format!(
                    "{spec:?}: expected host[:threads=N,memory=SIZE] or BACKEND:INDEX, e.g. cuda:0"
                ),
            )
        })?;
        Ok(DeviceSpec::Found {
            backend: kind.to_string(),
            index,
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

/// Resolve `--device` specs against the devices found; each `host` spec
/// makes a new host device (numbered from 0 in the order given).
pub fn select_devices(specs: &[String], found: &[AnyDevice]) -> Result<Vec<AnyDevice>> {
    let mut host_index = 0u32;
    let mut out = Vec::new();
    for text in specs {
        match text.parse::<DeviceSpec>()? {
            DeviceSpec::Host { threads, memory } => {
                let mut b = hetero_host::HostDevice::builder().index(host_index);
                host_index += 1;
                if let Some(n) = threads {
                    b = b.threads(n);
                }
                if let Some(bytes) = memory {
                    b = b.memory_budget(bytes);
                }
                out.push(AnyDevice::Host(b.build()?));
            }
            DeviceSpec::Found { backend, index } => {
                let hit = found.iter().find(|d| {
                    let id = d.as_dyn().id();
                    id.backend.name() == backend && id.index == index
                });
                match hit {
                    Some(d) => out.push(d.clone()),
                    None => {
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
                memory: None
            }
        );
        assert_eq!(
            "host:threads=4,memory=1GiB".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Host {
                threads: Some(4),
                memory: Some(1 << 30)
            }
        );
        assert_eq!(
            "cuda:1".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Found {
                backend: "cuda".into(),
                index: 1
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
        ] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad:?} parsed");
        }
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
}
