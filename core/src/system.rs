//! What the operating system says about this machine's memory, read in one
//! place: the host backend's default budget, the wgpu backend's budget for
//! software adapters and the examples' model scaling all ask here.

use crate::error::{Error, Result};

/// Memory the OS reports available for new allocations, in bytes:
/// `MemAvailable` of `/proc/meminfo`, or `MemFree` on kernels that predate
/// `MemAvailable` (3.14). Other systems are [`Error::Unsupported`].
pub fn mem_available() -> Result<u64> {
    #[cfg(target_os = "linux")]
    {
        let text = std::fs::read_to_string("/proc/meminfo")
            .map_err(|e| Error::io("reading /proc/meminfo", e))?;
        parse_meminfo(&text, "MemAvailable:")
            .or_else(|| parse_meminfo(&text, "MemFree:"))
            .ok_or_else(|| {
                Error::invalid(
                    "/proc/meminfo",
                    "has neither MemAvailable nor MemFree; set a memory budget explicitly",
                )
            })
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(Error::unsupported_in(
            "system memory probe",
            "reading available memory on this OS (only Linux's /proc/meminfo is read); \
             set a memory budget explicitly",
        ))
    }
}

/// The value of `key` (e.g. `"MemAvailable:"`) in `/proc/meminfo` text, in
/// bytes; `None` when the line is missing or malformed.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_meminfo(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let mut parts = line[key.len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo_lines() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(
            parse_meminfo(text, "MemAvailable:"),
            Some(20_000_000 * 1024)
        );
        assert_eq!(parse_meminfo(text, "MemFree:"), Some(100 * 1024));
        assert_eq!(parse_meminfo(text, "Missing:"), None);
        assert_eq!(parse_meminfo("MemFree: x kB", "MemFree:"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_machine_reports_available_memory() {
        assert!(mem_available().unwrap() > 0);
    }
}
