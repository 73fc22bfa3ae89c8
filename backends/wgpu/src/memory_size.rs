//! How big a wgpu device's memory budget is, and where that figure came from.
//!
//! wgpu has no call for the size or the free amount of an adapter's memory
//! (its `Limits` bound one buffer or one binding, which `alloc` already
//! enforces, not the total). So the budget is, in this order:
//!
//! 1. an explicit override (`WgpuDevice::new(.., Some(bytes))`, or
//!    `--device wgpu:N,memory=SIZE` through hetero-backends);
//! 2. for a software adapter (lavapipe, llvmpipe: `DeviceType::Cpu`), half
//!    of the host's available memory (see [`MemorySource::SoftwareHostShare`]
//!    for why this is a share of the host's memory and not more of it);
//! 3. on Linux, the VRAM size the kernel's DRM driver reports for the
//!    adapter's PCI device: `/sys/class/drm/cardN/device/mem_info_vram_total`
//!    (amdgpu), the card matched to the adapter by wgpu's PCI vendor and
//!    device ids against the card's `vendor` / `device` files (and by the PCI
//!    slot when wgpu reports the adapter's bus id). Several cards with the
//!    same ids and no bus id to tell them apart: no guess, the fallback;
//! 4. [`FALLBACK_GPU_BUDGET_BYTES`], and [`MemorySource::Fallback`] says why.
//!
//! Where the card also reports used VRAM (`mem_info_vram_used`), the free
//! memory a device reports is the smaller of what its budget has left and
//! what the driver says is free (other processes use the card too).
//!
//! Every file read here is small and read through a cap: a missing,
//! unreadable, oversized or malformed file means "not known", never a panic
//! and never an allocation the size of the file.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Fallback budget for a hardware adapter whose memory size nothing
/// reported (wgpu does not expose it; see the module docs for what is read).
pub const FALLBACK_GPU_BUDGET_BYTES: u64 = 4 << 30;

/// Where Linux lists DRM devices.
pub(crate) const DRM_ROOT: &str = "/sys/class/drm";

/// The most bytes read from one sysfs file (they hold a number or a few
/// `KEY=value` lines).
const MAX_FILE_BYTES: u64 = 4096;

/// The most directory entries looked at under the DRM root.
const MAX_DRM_ENTRIES: usize = 1024;

/// A VRAM size above this (1 PiB) is a misread, not a card.
const MAX_PLAUSIBLE_VRAM_BYTES: u64 = 1 << 50;

/// Where a wgpu device's memory budget came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemorySource {
    /// The caller set it (`WgpuDevice::new(.., Some(bytes))`,
    /// `--device wgpu:N,memory=SIZE`).
    Override,
    /// The VRAM total of the adapter's PCI device, read from this file
    /// (amdgpu's `mem_info_vram_total` under `/sys/class/drm/cardN/device`).
    Sysfs { path: PathBuf },
    /// A software adapter (lavapipe, llvmpipe): it allocates ordinary host
    /// memory, the same physical memory a host device budgets. Its budget is
    /// half of the host's available memory at the time it was opened
    /// (`host_available_bytes`): a cap on how much of that one pool this
    /// adapter may take, not memory in addition to the host's. A host device
    /// and a software adapter on one machine share it, so their two budgets
    /// overlap and must not be added up as the machine's memory (their link
    /// to the host reports `LinkKind::SharedMemory`).
    SoftwareHostShare { host_available_bytes: u64 },
    /// Nothing reported the size: [`FALLBACK_GPU_BUDGET_BYTES`]; `reason`
    /// says what was looked for.
    Fallback { reason: String },
}

impl fmt::Display for MemorySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemorySource::Override => f.write_str("set explicitly"),
            MemorySource::Sysfs { path } => write!(f, "VRAM total from {}", path.display()),
            MemorySource::SoftwareHostShare {
                host_available_bytes,
            } => write!(
                f,
                "software adapter: half of the host's {host_available_bytes} available bytes \
                 (the same memory as the host device's, not in addition to it)"
            ),
            MemorySource::Fallback { reason } => write!(
                f,
                "fallback of {FALLBACK_GPU_BUDGET_BYTES} bytes ({reason}); \
                 set one with --device wgpu:N,memory=SIZE"
            ),
        }
    }
}

/// The counters of the DRM card that matched an adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SysfsVram {
    /// `.../cardN/device/mem_info_vram_total`.
    pub(crate) total_path: PathBuf,
    pub(crate) total_bytes: u64,
    /// `.../cardN/device/mem_info_vram_used`, when the card has it.
    pub(crate) used_path: Option<PathBuf>,
}

impl SysfsVram {
    /// Free VRAM as the driver reports it now (total - used); `None` when
    /// the card has no used counter or it cannot be read.
    pub(crate) fn reported_free(&self) -> Option<u64> {
        let used = read_u64(self.used_path.as_deref()?).ok()?;
        Some(self.total_bytes.saturating_sub(used))
    }
}

/// The adapter facts the budget depends on (from `wgpu::AdapterInfo`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdapterIds<'a> {
    pub(crate) software: bool,
    pub(crate) vendor: u32,
    pub(crate) device: u32,
    /// `bus:device.function` (e.g. `0000:01:00.0`) when wgpu knows it, else "".
    pub(crate) pci_bus_id: &'a str,
}

impl<'a> AdapterIds<'a> {
    pub(crate) fn of(info: &'a wgpu::AdapterInfo) -> Self {
        AdapterIds {
            software: info.device_type == wgpu::DeviceType::Cpu,
            vendor: info.vendor,
            device: info.device,
            pci_bus_id: &info.device_pci_bus_id,
        }
    }
}

/// A decided budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemorySize {
    pub(crate) budget_bytes: u64,
    pub(crate) source: MemorySource,
    /// The matched card's counters (also kept under an override, for the
    /// reported free memory).
    pub(crate) vram: Option<SysfsVram>,
}

/// Decide the budget of an adapter: `budget` (an override) first, then a
/// software adapter's share of `host_available` (called only for those),
/// then the VRAM total of the card under `drm_root` (Linux's
/// [`DRM_ROOT`]; a test's fake tree), then the fallback.
pub(crate) fn decide(
    ids: AdapterIds<'_>,
    budget: Option<u64>,
    drm_root: &Path,
    host_available: impl FnOnce() -> hetero_core::Result<u64>,
) -> MemorySize {
    if ids.software {
        // No card to read: a software adapter's memory is the host's.
        let (budget_bytes, source) = match budget {
            Some(b) => (b, MemorySource::Override),
            None => match host_available() {
                Ok(avail) => (
                    avail / 2,
                    MemorySource::SoftwareHostShare {
                        host_available_bytes: avail,
                    },
                ),
                Err(e) => (
                    FALLBACK_GPU_BUDGET_BYTES,
                    MemorySource::Fallback {
                        reason: format!(
                            "software adapter, and the host's available memory is unknown: {e}"
                        ),
                    },
                ),
            },
        };
        return MemorySize {
            budget_bytes,
            source,
            vram: None,
        };
    }
    let found = sysfs_vram(drm_root, ids.vendor, ids.device, ids.pci_bus_id);
    let (budget_bytes, source) = match (budget, &found) {
        (Some(b), _) => (b, MemorySource::Override),
        (None, Ok(v)) => (
            v.total_bytes,
            MemorySource::Sysfs {
                path: v.total_path.clone(),
            },
        ),
        (None, Err(reason)) => (
            FALLBACK_GPU_BUDGET_BYTES,
            MemorySource::Fallback {
                reason: reason.clone(),
            },
        ),
    };
    MemorySize {
        budget_bytes,
        source,
        vram: found.ok(),
    }
}

/// The VRAM counters of the one DRM card under `root` (`/sys/class/drm`)
/// whose PCI `vendor` and `device` ids are these (and whose PCI slot is
/// `pci_bus_id`, when that is not empty and the card's `uevent` names its
/// slot). `Err` says why there is none: no card matched, several did, or
/// the match has no readable, plausible `mem_info_vram_total`.
pub(crate) fn sysfs_vram(
    root: &Path,
    vendor: u32,
    device: u32,
    pci_bus_id: &str,
) -> Result<SysfsVram, String> {
    let what = format!("vendor {vendor:#06x} device {device:#06x}");
    let entries = std::fs::read_dir(root)
        .map_err(|e| format!("no DRM device list at {}: {e}", root.display()))?;
    let mut matches = Vec::new();
    for entry in entries.take(MAX_DRM_ENTRIES).flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // `card0`, not `card0-DP-1` (a connector) or `renderD128`.
        let is_card = name
            .strip_prefix("card")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_card {
            continue;
        }
        let dev = entry.path().join("device");
        let id_is = |file: &str, want: u32| read_hex(&dev.join(file)).is_ok_and(|v| v == want);
        if !(id_is("vendor", vendor) && id_is("device", device)) {
            continue;
        }
        if !pci_bus_id.is_empty()
            && let Some(slot) = pci_slot(&dev)
            && !slot.eq_ignore_ascii_case(pci_bus_id.trim())
        {
            continue;
        }
        matches.push(dev);
    }
    let dev = match matches.len() {
        0 => return Err(format!("no DRM card under {} has {what}", root.display())),
        1 => matches.remove(0),
        n => {
            matches.sort();
            let cards: Vec<String> = matches.iter().map(|p| p.display().to_string()).collect();
            return Err(format!(
                "{n} DRM cards have {what} and nothing tells which one the adapter is: {}",
                cards.join(", ")
            ));
        }
    };
    let total_path = dev.join("mem_info_vram_total");
    let total_bytes = read_u64(&total_path).map_err(|why| {
        format!(
            "the DRM card with {what} has no usable VRAM total: {} {why}",
            total_path.display()
        )
    })?;
    if total_bytes == 0 || total_bytes > MAX_PLAUSIBLE_VRAM_BYTES {
        return Err(format!(
            "{} says {total_bytes} bytes, which is not a plausible VRAM size",
            total_path.display()
        ));
    }
    let used_path = dev.join("mem_info_vram_used");
    let used_path = read_u64(&used_path).is_ok().then_some(used_path);
    Ok(SysfsVram {
        total_path,
        total_bytes,
        used_path,
    })
}

/// The `PCI_SLOT_NAME` line of the device's `uevent`, when it has one.
fn pci_slot(dev: &Path) -> Option<String> {
    let text = read_small(&dev.join("uevent")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("PCI_SLOT_NAME="))
        .map(|s| s.trim().to_string())
}

/// A small text file, read through [`MAX_FILE_BYTES`]; a longer one is
/// an error (sysfs attributes are short).
fn read_small(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot be opened: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot be read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("is longer than {MAX_FILE_BYTES} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| "is not text".to_string())
}

/// A decimal number of bytes (`17163091968\n`).
fn read_u64(path: &Path) -> Result<u64, String> {
    let text = read_small(path)?;
    text.trim()
        .parse::<u64>()
        .map_err(|_| format!("holds {:?}, not a number of bytes", text.trim()))
}

/// A hexadecimal id (`0x1002\n`).
fn read_hex(path: &Path) -> Result<u32, String> {
    let text = read_small(path)?;
    let t = text.trim();
    let digits = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    u32::from_str_radix(digits, 16).map_err(|_| format!("holds {t:?}, not a hexadecimal id"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A fake `/sys/class/drm` in a fresh temporary directory, removed on drop.
    struct FakeDrm(PathBuf);

    impl FakeDrm {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "hetero-wgpu-drm-{}-{test}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            FakeDrm(dir)
        }

        /// `cardN/device/` with these files (name, content).
        fn card(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
            let dev = self.0.join(name).join("device");
            std::fs::create_dir_all(&dev).unwrap();
            for (file, content) in files {
                std::fs::write(dev.join(file), content).unwrap();
            }
            dev
        }

        fn amd(&self, name: &str, slot: &str, total: &str) -> PathBuf {
            self.card(
                name,
                &[
                    ("vendor", "0x1002\n"),
                    ("device", "0x73bf\n"),
                    ("uevent", &format!("DRIVER=amdgpu\nPCI_SLOT_NAME={slot}\n")),
                    ("mem_info_vram_total", total),
                    ("mem_info_vram_used", "1073741824\n"),
                ],
            )
        }
    }

    impl Drop for FakeDrm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn hw(bus: &str) -> AdapterIds<'_> {
        AdapterIds {
            software: false,
            vendor: 0x1002,
            device: 0x73bf,
            pci_bus_id: bus,
        }
    }

    fn no_host() -> hetero_core::Result<u64> {
        Err(hetero_core::Error::invalid("host", "not asked"))
    }

    #[test]
    fn the_matching_card_gives_the_budget_and_free_memory() {
        let drm = FakeDrm::new("match");
        // Another vendor's card, a connector and a render node around it.
        drm.card("card0", &[("vendor", "0x10de\n"), ("device", "0x2684\n")]);
        std::fs::create_dir_all(drm.0.join("card1-DP-1")).unwrap();
        std::fs::create_dir_all(drm.0.join("renderD128")).unwrap();
        let dev = drm.amd("card1", "0000:03:00.0", "17163091968\n");
        let got = decide(hw(""), None, &drm.0, no_host);
        assert_eq!(got.budget_bytes, 17_163_091_968);
        assert_eq!(
            got.source,
            MemorySource::Sysfs {
                path: dev.join("mem_info_vram_total")
            }
        );
        let vram = got.vram.unwrap();
        assert_eq!(vram.reported_free(), Some(17_163_091_968 - (1 << 30)));
        // The used counter is read again each time.
        std::fs::write(dev.join("mem_info_vram_used"), "17163091968\n").unwrap();
        assert_eq!(vram.reported_free(), Some(0));
        std::fs::write(dev.join("mem_info_vram_used"), "garbage").unwrap();
        assert_eq!(vram.reported_free(), None);
    }

    #[test]
    fn an_override_wins_and_keeps_the_cards_counters() {
        let drm = FakeDrm::new("override");
        drm.amd("card0", "0000:03:00.0", "8589934592\n");
        let got = decide(hw(""), Some(1 << 20), &drm.0, no_host);
        assert_eq!(got.budget_bytes, 1 << 20);
        assert_eq!(got.source, MemorySource::Override);
        assert!(got.vram.is_some());
    }

    #[test]
    fn no_match_falls_back_with_the_reason() {
        let drm = FakeDrm::new("nomatch");
        drm.card(
            "card0",
            &[
                ("vendor", "0x8086\n"),
                ("device", "0x56a0\n"),
                ("mem_info_vram_total", "8589934592\n"),
            ],
        );
        let got = decide(hw(""), None, &drm.0, no_host);
        assert_eq!(got.budget_bytes, FALLBACK_GPU_BUDGET_BYTES);
        let MemorySource::Fallback { reason } = &got.source else {
            panic!("{:?}", got.source)
        };
        assert!(
            reason.contains("no DRM card") && reason.contains("0x1002"),
            "{reason}"
        );
        // No DRM directory at all.
        let got = decide(hw(""), None, &drm.0.join("absent"), no_host);
        assert_eq!(got.budget_bytes, FALLBACK_GPU_BUDGET_BYTES);
        assert!(got.vram.is_none());
    }

    #[test]
    fn two_matching_cards_are_not_guessed_unless_the_bus_id_tells() {
        let drm = FakeDrm::new("two");
        drm.amd("card0", "0000:03:00.0", "8589934592\n");
        let second = drm.amd("card1", "0000:04:00.0", "17163091968\n");
        let got = decide(hw(""), None, &drm.0, no_host);
        assert_eq!(got.budget_bytes, FALLBACK_GPU_BUDGET_BYTES);
        assert!(got.vram.is_none());
        let MemorySource::Fallback { reason } = &got.source else {
            panic!("{:?}", got.source)
        };
        assert!(reason.contains("2 DRM cards"), "{reason}");
        // wgpu's bus id picks one (case aside).
        let got = decide(hw("0000:04:00.0"), None, &drm.0, no_host);
        assert_eq!(got.budget_bytes, 17_163_091_968);
        assert_eq!(
            got.source,
            MemorySource::Sysfs {
                path: second.join("mem_info_vram_total")
            }
        );
        // A bus id that is neither: no card.
        let got = decide(hw("0000:0A:00.0"), None, &drm.0, no_host);
        assert_eq!(got.budget_bytes, FALLBACK_GPU_BUDGET_BYTES);
    }

    #[test]
    fn garbage_huge_and_absent_counters_fall_back() {
        for (i, total) in [
            "",
            "lots\n",
            "-5\n",
            "0x10\n",
            "0\n",
            "99999999999999999999999999\n", // over u64
            "18446744073709551615\n",       // u64::MAX: parses, not plausible
        ]
        .into_iter()
        .enumerate()
        {
            let drm = FakeDrm::new(&format!("garbage{i}"));
            drm.amd("card0", "0000:03:00.0", total);
            let got = decide(hw(""), None, &drm.0, no_host);
            assert_eq!(got.budget_bytes, FALLBACK_GPU_BUDGET_BYTES, "{total:?}");
            assert!(
                matches!(got.source, MemorySource::Fallback { .. }),
                "{total:?}"
            );
        }
        // A file far longer than any sysfs attribute is not read whole.
        let drm = FakeDrm::new("long");
        let dev = drm.amd("card0", "0000:03:00.0", "1\n");
        std::fs::write(dev.join("mem_info_vram_total"), "1".repeat(1 << 20)).unwrap();
        assert!(matches!(
            decide(hw(""), None, &drm.0, no_host).source,
            MemorySource::Fallback { .. }
        ));
        // Bytes that are not text.
        std::fs::write(dev.join("mem_info_vram_total"), [0xff, 0xfe, b'1']).unwrap();
        assert!(matches!(
            decide(hw(""), None, &drm.0, no_host).source,
            MemorySource::Fallback { .. }
        ));
        // Garbage ids, and no total file at all.
        let drm = FakeDrm::new("ids");
        drm.card("card0", &[("vendor", "amd"), ("device", "0x73bf")]);
        drm.card("card1", &[("vendor", "0x1002"), ("device", "0x73bf")]);
        let got = decide(hw(""), None, &drm.0, no_host);
        let MemorySource::Fallback { reason } = &got.source else {
            panic!("{:?}", got.source)
        };
        assert!(reason.contains("no usable VRAM total"), "{reason}");
    }

    #[test]
    fn a_software_adapter_takes_half_the_hosts_available_memory() {
        let drm = FakeDrm::new("software");
        // A card with the same ids is not read for a software adapter.
        drm.amd("card0", "0000:03:00.0", "8589934592\n");
        let ids = AdapterIds {
            software: true,
            ..hw("")
        };
        let got = decide(ids, None, &drm.0, || Ok(10 << 30));
        assert_eq!(got.budget_bytes, 5 << 30);
        assert_eq!(
            got.source,
            MemorySource::SoftwareHostShare {
                host_available_bytes: 10 << 30
            }
        );
        assert!(got.vram.is_none());
        let got = decide(ids, None, &drm.0, no_host);
        assert_eq!(got.budget_bytes, FALLBACK_GPU_BUDGET_BYTES);
        assert!(got.source.to_string().contains("software adapter"));
        let got = decide(ids, Some(123), &drm.0, no_host);
        assert_eq!(
            (got.budget_bytes, got.source),
            (123, MemorySource::Override)
        );
    }
}
