//! What the operating system says about this machine, for host devices
//! (memory itself is read by `hetero_core::system`, shared with the other
//! backends).

use hetero_core::Result;
#[cfg(not(target_os = "linux"))]
use hetero_core::{Backend, Error};

/// Hardware threads available to this process.
pub fn hardware_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Memory the OS reports available for new allocations, bytes
/// (`MemAvailable` of `/proc/meminfo` on Linux, see
/// [`hetero_core::system::mem_available`]).
pub fn available_memory_bytes() -> Result<u64> {
    #[cfg(target_os = "linux")]
    {
        hetero_core::system::mem_available()
    }
    // Core cannot read it here; say how to do without it for a host device.
    #[cfg(not(target_os = "linux"))]
    {
        Err(Error::unsupported(
            Backend::Host,
            "reading available memory on this OS; set HostDevice::builder().memory_budget(..)",
        ))
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
    fn this_machine_reports_memory_and_threads() {
        assert!(hardware_threads() >= 1);
        #[cfg(target_os = "linux")]
        assert!(available_memory_bytes().unwrap() > 0);
    }
}
