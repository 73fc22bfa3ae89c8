//! NVML, loaded at run time, for what the CUDA driver cannot tell: whether
//! two GPUs are joined by NVLink (and by how many links), and the PCIe
//! generation and width of a GPU's host link.
//!
//! Loaded with `libloading` (already in the tree through cudarc) rather than
//! linked, for the same reason as the rest of the crate: the build must not
//! need the driver. NVML is initialised once per process and never shut
//! down; each call names the NVML function that failed.

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::sync::OnceLock;

use hetero_core::{Backend, Error, Result};
use libloading::Library;

type NvmlReturn = c_uint;
type NvmlDevice = *mut c_void;

const NVML_SUCCESS: NvmlReturn = 0;
const NVML_ERROR_INVALID_ARGUMENT: NvmlReturn = 2;
const NVML_ERROR_NOT_SUPPORTED: NvmlReturn = 3;
const NVML_ERROR_NOT_FOUND: NvmlReturn = 6;
/// NVML_NVLINK_MAX_LINKS as of Hopper and Blackwell; asking beyond the
/// device's links answers INVALID_ARGUMENT, which ends the scan.
const NVLINK_MAX_LINKS: c_uint = 18;

/// `nvmlPciInfo_t` (the layout since NVML 9).
#[repr(C)]
struct NvmlPciInfo {
    bus_id_legacy: [c_char; 16],
    domain: c_uint,
    bus: c_uint,
    device: c_uint,
    pci_device_id: c_uint,
    pci_sub_system_id: c_uint,
    bus_id: [c_char; 32],
}

/// A PCI address (domain, bus, device), how the driver and NVML name a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PciAddress {
    pub domain: u32,
    pub bus: u32,
    pub device: u32,
}

impl PciAddress {
    /// The bus id string NVML and `nvidia-smi` use, e.g. `00000000:1B:00.0`.
    pub fn bus_id(&self) -> String {
        format!("{:08X}:{:02X}:{:02X}.0", self.domain, self.bus, self.device)
    }
}

/// A GPU's PCIe link to the host as NVML reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcieLink {
    /// Generation the link runs at now (GPUs drop to gen 1 when idle).
    pub current_generation: u32,
    pub current_width: u32,
    /// Best generation and width the GPU and slot support.
    pub max_generation: u32,
    pub max_width: u32,
}

impl PcieLink {
    /// Theoretical one-way bandwidth at the maximum generation and width,
    /// bytes per second, after line encoding (8b/10b up to gen 2,
    /// 128b/130b from gen 3); `None` for a generation this code does not know.
    pub fn max_bandwidth_bytes_per_s(&self) -> Option<f64> {
        let per_lane_gts = match self.max_generation {
            1 => 2.5,
            2 => 5.0,
            3 => 8.0,
            4 => 16.0,
            5 => 32.0,
            6 => 64.0,
            _ => return None,
        };
        let encoding = if self.max_generation <= 2 {
            8.0 / 10.0
        } else {
            128.0 / 130.0
        };
        Some(per_lane_gts * 1e9 / 8.0 * encoding * f64::from(self.max_width))
    }
}

/// The loaded NVML library.
pub struct Nvml {
    lib: Library,
}

impl std::fmt::Debug for Nvml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nvml")
    }
}

fn unsupported(what: String) -> Error {
    Error::Unsupported {
        what,
        component: Backend::Cuda.into(),
    }
}

impl Nvml {
    /// The process-wide NVML, loaded and initialised on first use; an
    /// `Unsupported` error saying why when the library is missing or does
    /// not initialise (no driver, a container without NVML).
    pub fn get() -> Result<&'static Nvml> {
        static NVML: OnceLock<std::result::Result<Nvml, String>> = OnceLock::new();
        NVML.get_or_init(Nvml::load)
            .as_ref()
            .map_err(|reason| unsupported(reason.clone()))
    }

    fn load() -> std::result::Result<Nvml, String> {
        let mut last = String::new();
        for name in ["libnvidia-ml.so.1", "libnvidia-ml.so"] {
            // SAFETY: loading NVML runs its (trivial) initialisers only.
            match unsafe { Library::new(name) } {
                Ok(lib) => {
                    let nvml = Nvml { lib };
                    // SAFETY: nvmlInit_v2 takes no arguments.
                    let status = unsafe {
                        nvml.symbol::<unsafe extern "C" fn() -> NvmlReturn>("nvmlInit_v2")
                            .map_err(|e| e.to_string())?()
                    };
                    if status != NVML_SUCCESS {
                        return Err(format!(
                            "NVML did not initialise (nvmlInit_v2 returned {status}); \
                             is the NVIDIA driver loaded?"
                        ));
                    }
                    return Ok(nvml);
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!(
            "NVML (libnvidia-ml.so.1) could not be loaded ({last}); it ships with the NVIDIA \
             driver and is needed to tell NVLink from PCIe"
        ))
    }

    /// # Safety
    /// `T` must be the C signature of `name`.
    unsafe fn symbol<T: Copy>(&self, name: &str) -> Result<T> {
        // SAFETY: the caller guarantees the signature.
        unsafe { self.lib.get::<T>(name.as_bytes()) }
            .map(|s| *s)
            .map_err(|e| unsupported(format!("NVML has no {name} ({e}); update the driver")))
    }

    fn check(call: &str, status: NvmlReturn) -> Result<()> {
        if status == NVML_SUCCESS {
            return Ok(());
        }
        Err(match status {
            NVML_ERROR_NOT_SUPPORTED => unsupported(format!("NVML {call}: not supported here")),
            NVML_ERROR_NOT_FOUND => Error::invalid(call, "NVML knows no GPU at that PCI address"),
            _ => Error::invalid(call, format!("NVML returned error {status}")),
        })
    }

    fn handle(&self, gpu: PciAddress) -> Result<NvmlDevice> {
        let bus_id = CString::new(gpu.bus_id())
            .map_err(|_| Error::invalid("PCI bus id", "contains a NUL byte"))?;
        // SAFETY: signature of nvmlDeviceGetHandleByPciBusId_v2.
        let get = unsafe {
            self.symbol::<unsafe extern "C" fn(*const c_char, *mut NvmlDevice) -> NvmlReturn>(
                "nvmlDeviceGetHandleByPciBusId_v2",
            )?
        };
        let mut device: NvmlDevice = std::ptr::null_mut();
        // SAFETY: bus_id is NUL-terminated; device is a valid out pointer.
        Self::check("nvmlDeviceGetHandleByPciBusId_v2", unsafe {
            get(bus_id.as_ptr(), &mut device)
        })?;
        Ok(device)
    }

    fn uint_query(&self, name: &str, device: NvmlDevice) -> Result<u32> {
        // SAFETY: every query used here has the signature
        // (nvmlDevice_t, unsigned int *) -> nvmlReturn_t.
        let f = unsafe {
            self.symbol::<unsafe extern "C" fn(NvmlDevice, *mut c_uint) -> NvmlReturn>(name)?
        };
        let mut value: c_uint = 0;
        // SAFETY: device came from NVML; value is a valid out pointer.
        Self::check(name, unsafe { f(device, &mut value) })?;
        Ok(value)
    }

    /// The PCIe link between `gpu` and the host.
    pub fn pcie_link(&self, gpu: PciAddress) -> Result<PcieLink> {
        let device = self.handle(gpu)?;
        Ok(PcieLink {
            current_generation: self.uint_query("nvmlDeviceGetCurrPcieLinkGeneration", device)?,
            current_width: self.uint_query("nvmlDeviceGetCurrPcieLinkWidth", device)?,
            max_generation: self.uint_query("nvmlDeviceGetMaxPcieLinkGeneration", device)?,
            max_width: self.uint_query("nvmlDeviceGetMaxPcieLinkWidth", device)?,
        })
    }

    /// Remote PCI address of every active NVLink of `gpu` (one entry per
    /// link, so a pair joined by four links appears four times). Empty when
    /// the GPU has no NVLink or none is active.
    pub fn nvlink_peers(&self, gpu: PciAddress) -> Result<Vec<PciAddress>> {
        let device = self.handle(gpu)?;
        // SAFETY: signatures from nvml.h.
        let state = unsafe {
            self.symbol::<unsafe extern "C" fn(NvmlDevice, c_uint, *mut c_int) -> NvmlReturn>(
                "nvmlDeviceGetNvLinkState",
            )?
        };
        // SAFETY: as above.
        let remote = unsafe {
            self.symbol::<unsafe extern "C" fn(NvmlDevice, c_uint, *mut NvmlPciInfo) -> NvmlReturn>(
                "nvmlDeviceGetNvLinkRemotePciInfo_v2",
            )?
        };
        let mut peers = Vec::new();
        for link in 0..NVLINK_MAX_LINKS {
            let mut active: c_int = 0;
            // SAFETY: device came from NVML; active is a valid out pointer.
            match unsafe { state(device, link, &mut active) } {
                NVML_SUCCESS => {}
                // No NVLink at all, or past this GPU's last link.
                NVML_ERROR_NOT_SUPPORTED | NVML_ERROR_INVALID_ARGUMENT => break,
                status => Self::check("nvmlDeviceGetNvLinkState", status)?,
            }
            if active == 0 {
                continue;
            }
            // SAFETY: NvmlPciInfo is plain old data; zeroed is a valid value.
            let mut info: NvmlPciInfo = unsafe { std::mem::zeroed() };
            // SAFETY: info is a valid out pointer of the right layout.
            Self::check("nvmlDeviceGetNvLinkRemotePciInfo_v2", unsafe {
                remote(device, link, &mut info)
            })?;
            peers.push(PciAddress {
                domain: info.domain,
                bus: info.bus,
                device: info.device,
            });
        }
        Ok(peers)
    }

    /// The driver version NVML reports, e.g. "580.159.04".
    pub fn driver_version(&self) -> Result<String> {
        // SAFETY: signature of nvmlSystemGetDriverVersion.
        let f = unsafe {
            self.symbol::<unsafe extern "C" fn(*mut c_char, c_uint) -> NvmlReturn>(
                "nvmlSystemGetDriverVersion",
            )?
        };
        let mut buf = [0 as c_char; 96];
        // SAFETY: buf holds 96 bytes, as passed.
        Self::check("nvmlSystemGetDriverVersion", unsafe {
            f(buf.as_mut_ptr(), buf.len() as c_uint)
        })?;
        // SAFETY: NVML NUL-terminates within the buffer on success.
        Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_id_matches_nvidia_smi_format() {
        let a = PciAddress {
            domain: 0,
            bus: 0x1b,
            device: 0,
        };
        assert_eq!(a.bus_id(), "00000000:1B:00.0");
    }

    #[test]
    fn pcie_bandwidth_follows_generation_and_width() {
        let link = |generation, width| PcieLink {
            current_generation: 1,
            current_width: width,
            max_generation: generation,
            max_width: width,
        };
        // Gen 3 x16 is the familiar 15.75 GB/s, gen 5 x16 four times that.
        let g3 = link(3, 16).max_bandwidth_bytes_per_s().unwrap();
        assert!((g3 / 1e9 - 15.754).abs() < 0.01, "{g3}");
        let g5 = link(5, 16).max_bandwidth_bytes_per_s().unwrap();
        assert!((g5 / g3 - 4.0).abs() < 1e-9);
        // 8b/10b encoding below gen 3: gen 2 x1 is 500 MB/s.
        let g2 = link(2, 1).max_bandwidth_bytes_per_s().unwrap();
        assert!((g2 - 500e6).abs() < 1.0, "{g2}");
        assert_eq!(link(9, 16).max_bandwidth_bytes_per_s(), None);
    }
}
