//! What the operating system says about this machine.

#[cfg(not(target_os = "linux"))]
use hetero_core::Backend;
use hetero_core::{Error, Result};

/// Hardware threads available to this process.
pub fn hardware_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Memory the OS reports available for new allocations, bytes
/// (`MemAvailable` of `/proc/meminfo` on Linux).
pub fn available_memory_bytes() -> Result<u64> {
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
        Err(Error::unsupported(
            Backend::Host,
            "reading available memory on this OS; set HostDevice::builder().memory_budget(..)",
        ))
    }
}

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

/// `(model name, vendor)` of the CPU, as far as the OS tells.
pub fn cpu_description() -> (String, String) {
    let fallback = || {
        (
            format!("{} CPU", std::env::consts::ARCH),
            "unknown".to_string(),
        )
    };
    #[cfg(target_os = "linux")]
    {
        let Ok(text) = std::fs::read_to_string("/proc/cpuinfo") else {
            return fallback();
        };
        let field = |key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let (name, vendor) = fallback();
        (
            field("model name").unwrap_or(name),
            field("vendor_id").unwrap_or(vendor),
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        fallback()
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

    #[test]
    fn this_machine_reports_memory_and_threads() {
        assert!(hardware_threads() >= 1);
        #[cfg(target_os = "linux")]
        assert!(available_memory_bytes().unwrap() > 0);
    }
}
