//! hetero-host: CPU devices, always built, and the reference backend for tests.
//!
//! A [`HostDevice`] is a slice of this machine: a memory **budget** (default:
//! what the OS reports available) and a **thread count** (default: all
//! hardware threads). Both are settable, so tests can emulate a small device
//! and several host devices can emulate devices of unequal speed. Allocation
//! past the budget is [`Error::OutOfMemory`](hetero_core::Error::OutOfMemory); the device keeps working.
//!
//! Kernels: elementwise reduce and scale for every dtype (the loops of
//! [`hetero_core::host_kernels`], split over the device's threads), GEMM
//! through `matrixmultiply` for f32/f64 (and f16/bf16 computed in f32),
//! matrix products with GGUF-quantized weights read in their blocks
//! (`quant/`), and the Llama-family kernels (`llama.rs`; AVX2 attention
//! and `exp` in `attention_x86.rs` and `vexp.rs`). SIMD paths are chosen
//! at run time, and each is tested against an f64 reference; so is Intel
//! AMX's tile unit, which takes quantized products of 12 rows and more
//! where the CPU and OS allow it (`quant/amx.rs`; off with
//! [`HostDeviceBuilder::amx`]). The quantized
//! product's kernel depends on the row count unless the device is built
//! `batch_invariant`, which computes every row as alone (reproducible
//! sampling under batching; slower).
//! Links between host devices are real memory copies, measured.
//!
//! What this crate must not do: depend on any other backend, or assume a link
//! or throughput figure instead of measuring it.

#[cfg(target_arch = "x86_64")]
mod attention_step;
mod attention_x86;
mod buffer;
mod device;
mod gemv;
mod link;
mod llama;
mod quant;
mod system;
#[cfg(target_arch = "x86_64")]
mod vexp;
mod workers;

pub use buffer::HostBuffer;
pub use device::{HostDevice, HostDeviceBuilder};
pub use link::HostLink;
pub use system::{available_memory_bytes, cpu_description, hardware_threads};

use hetero_core::probe::{GemmProbe, MeasuredLink, Progress};
use hetero_core::{DynDevice, Link, LinkProbe, Result, Topology};

/// The host devices of a default run: `count` devices that split this
/// machine's threads and available memory evenly (one device by default).
pub fn host_devices(count: usize) -> Result<Vec<HostDevice>> {
    if count == 0 {
        return Err(hetero_core::Error::invalid(
            "host device count",
            "must be at least 1",
        ));
    }
    let threads = hardware_threads();
    let memory = available_memory_bytes()?;
    (0..count)
        .map(|i| {
            HostDevice::builder()
                .index(i as u32)
                .threads((threads / count).max(1))
                .memory_budget(memory / count as u64)
                .build()
        })
        .collect()
}

/// Measure `devices` (GEMM throughput, if `gemm` is given) and every link
/// between them, including each device to itself, into a [`Topology`].
pub fn measure_topology(
    devices: &[HostDevice],
    gemm: Option<&GemmProbe>,
    link_probe: &LinkProbe,
    progress: Progress<'_>,
) -> Result<(Topology, Vec<MeasuredLink>)> {
    let dyns: Vec<&dyn DynDevice> = devices.iter().map(|d| d as &dyn DynDevice).collect();
    hetero_core::probe::measure_topology(
        &dyns,
        gemm,
        link_probe,
        |i, j| {
            Ok(Some(
                Box::new(HostLink::new(devices[i].clone(), devices[j].clone())) as Box<dyn Link>,
            ))
        },
        progress,
    )
}
