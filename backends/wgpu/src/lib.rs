//! hetero-wgpu: any adapter wgpu can open (Vulkan, Metal, DX12, GL) as a
//! hetero device, including software adapters (lavapipe, llvmpipe) in CI.
//!
//! - Every adapter wgpu enumerates becomes a [`WgpuDevice`] with its own
//!   `DeviceId` (enumeration order); `WGPU_BACKEND` (e.g. `gl`, `vulkan`)
//!   restricts which backends are searched, as in wgpu's own tools.
//! - Memory: wgpu cannot report free memory, so this crate tracks what it
//!   allocated against a **budget**: half the host's available memory for a
//!   software (CPU) adapter, otherwise [`FALLBACK_GPU_BUDGET_BYTES`] (4 GiB, a
//!   fallback, since wgpu does not expose the size of a GPU's memory);
//!   settable per device. Past the budget, past `max_buffer_size`, or when an
//!   out-of-memory error scope fires, `alloc` returns `Error::OutOfMemory`
//!   and the device keeps working. wgpu's panicking default error handler is
//!   replaced so nothing a user does can abort the process.
//! - Kernels in WGSL (`kernels.rs`, `llama_kernels.rs`), compiled once per
//!   device and cached: reduce / average for f32, i32, u8, f16, bf16 (16- and
//!   8-bit types packed in 32-bit words, so no `SHADER_F16` is needed), scale
//!   for the float types, an f32 GEMM (shared-memory tiles on GPUs, register
//!   blocks on software adapters, whose barriers are slow; see
//!   [`GemmKernel`]), the f32 decode-step kernels and the f32 Llama-family
//!   ones (RMS norm, rotary embedding, causal attention with an online
//!   softmax, SiLU-gated product, embedding gather). f64 / i64 (no 64-bit
//!   types in core WGSL) and integer scaling are `Error::Unsupported`.
//! - Data path: `upload` is a queue write, `download` copies to a mapped
//!   staging buffer; 8/16-bit ranges that do not start and end on a 4-byte
//!   boundary are merged through the host. Between adapters, use
//!   `hetero_core::probe::StagedLink` (through host memory).
//!
//! - [`exit_without_teardown`]: how test mains end a process that used
//!   Mesa's software adapters (their exit-time teardown can abort).
//!
//! What this crate must not do: depend on another backend.

mod buffer;
mod decode;
mod device;
mod dispatch;
mod error;
mod error_scope;
mod exit;
mod gemm;
mod io;
mod kernels;
mod link;
mod llama;
mod llama_kernels;

pub use buffer::WgpuBuffer;
pub use device::{FALLBACK_GPU_BUDGET_BYTES, WgpuDevice};
pub use error::WgpuError;
pub use exit::exit_without_teardown;
pub use gemm::GemmKernel;
pub use link::{WgpuDirection, WgpuLink};

use hetero_core::Result;

/// The adapters wgpu finds, honouring `WGPU_BACKEND`.
pub fn adapters() -> Vec<wgpu::Adapter> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    pollster::block_on(instance.enumerate_adapters(backends))
}

/// Every adapter as a device, indices in enumeration order; an
/// `Unsupported` error saying why when there is none.
pub fn devices() -> Result<Vec<WgpuDevice>> {
    let adapters = adapters();
    if adapters.is_empty() {
        let filter = std::env::var("WGPU_BACKEND")
            .map(|b| format!(" (WGPU_BACKEND={b})"))
            .unwrap_or_default();
        return Err(WgpuError::NoAdapter(filter).into());
    }
    adapters
        .iter()
        .enumerate()
        .map(|(i, a)| WgpuDevice::new(a, i as u32, None))
        .collect()
}
