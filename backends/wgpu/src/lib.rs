//! hetero-wgpu: any adapter wgpu can open (Vulkan, Metal, DX12, GL) as a
//! hetero device, including software adapters (lavapipe, llvmpipe) in CI.
//!
//! - Every adapter wgpu enumerates becomes a [`WgpuDevice`] with its own
//!   `DeviceId` (enumeration order); `WGPU_BACKEND` (e.g. `gl`, `vulkan`)
//!   restricts which backends are searched, as in wgpu's own tools.
//! - Memory: wgpu reports neither the size nor the free amount of an
//!   adapter's memory (its limits bound one buffer, not the total), so this
//!   crate tracks what it allocated against a **budget**, and
//!   [`WgpuDevice::memory_source`] says where the figure came from
//!   ([`MemorySource`]): an override (`WgpuDevice::new(.., Some(bytes))`,
//!   [`WgpuDevice::with_budget`], `--device wgpu:N,memory=SIZE` through
//!   hetero-backends); for a software adapter (lavapipe, llvmpipe) half of
//!   the host's available memory, which is the host device's memory too, so
//!   the two budgets overlap rather than add up (its link to the host is
//!   `SharedMemory`); on Linux, the VRAM total the DRM driver reports for the
//!   adapter's PCI device (`/sys/class/drm/cardN/device/mem_info_vram_total`,
//!   amdgpu; the card matched by PCI vendor / device id and bus id, never
//!   guessed among identical cards); otherwise [`FALLBACK_GPU_BUDGET_BYTES`]
//!   (4 GiB, a fallback, and the source says why). Where the card reports
//!   used VRAM, free memory is no more than the driver says is free. Past
//!   the budget, past `max_buffer_size`, or when an out-of-memory error
//!   scope fires, `alloc` returns `Error::OutOfMemory` and the device keeps
//!   working. wgpu's panicking default error handler is replaced so nothing
//!   a user does can abort the process.
//! - Kernels in WGSL (`kernels.rs`, `llama_kernels.rs`), compiled once per
//!   device and cached: reduce / average for f32, i32, u8, f16, bf16 (16- and
//!   8-bit types packed in 32-bit words, so no `SHADER_F16` is needed), scale
//!   for the float types, an f32 GEMM (shared-memory tiles on GPUs, register
//!   blocks on software adapters, whose barriers are slow; see
//!   [`GemmKernel`]), the f32 decode-step kernels and the f32 Llama-family
//!   ones (RMS norm, rotary embedding, causal attention with an online
//!   softmax, SiLU-gated product, embedding gather), and products and
//!   gathers with weights in GGUF's block formats (`quant_kernels.rs`: Q8_0,
//!   Q4_0, Q4_1, Q4_K, Q5_K, Q6_K, dequantized inside the kernel; on
//!   adapters with `SHADER_F16_IN_F32`, so a model keeps its file's size on
//!   the adapter instead of 4-6x that in f32). f64 / i64 (no 64-bit
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
mod kv_cache;
mod kv_kernels;
mod link;
mod llama;
mod llama_kernels;
mod memory_size;
mod quant;
mod quant_kernels;
mod recording;

pub use buffer::WgpuBuffer;
pub use device::WgpuDevice;
pub use error::WgpuError;
pub use exit::exit_without_teardown;
pub use gemm::GemmKernel;
pub use link::{WgpuDirection, WgpuLink};
pub use memory_size::{FALLBACK_GPU_BUDGET_BYTES, MemorySource};

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
