//! hetero-backends: every compiled backend behind one device type.
//!
//! What a runtime built on hetero needs first: the devices this machine
//! has, whichever backends were compiled in ([`discover`]), the devices a
//! user named on a command line ([`DeviceSpec`], [`select_devices`]), and the
//! measured path between any two of them ([`link_between`]). Each
//! accelerator backend is behind a cargo feature of the same name (`cuda`
//! and `wgpu` on by default: they build anywhere; `rocm` off: it links the
//! HIP runtime), and re-exported as a module ([`host`], `cuda`, `wgpu`,
//! `rocm`), as cubecl's umbrella crate does.
//!
//! This crate holds no kernel and no backend code of its own: it only
//! dispatches to the backends. A backend never depends on it (backends
//! never know each other); core knows none of them.
//!
//! - `any_device.rs`: [`AnyDevice`], the enum over the compiled backends;
//! - `discover.rs`: [`discover`], the devices of every compiled backend;
//! - `link.rs`: [`link_between`], the backend's own link or host staging;
//! - `spec.rs`: `--device` specs and sizes ([`DeviceSpec`], [`parse_bytes`],
//!   [`select_devices`]).

mod any_device;
mod discover;
mod link;
mod spec;

pub use any_device::AnyDevice;
pub use discover::discover;
pub use link::link_between;
pub use spec::{DeviceSpec, default_host_threads, parse_bytes, select_devices};

pub use hetero_host as host;

#[cfg(feature = "cuda")]
pub use hetero_cuda as cuda;

#[cfg(feature = "wgpu")]
pub use hetero_wgpu as wgpu;

#[cfg(feature = "rocm")]
pub use hetero_rocm as rocm;

/// End a test harness's process with its status once its results are
/// printed: without the exit-time teardown of Mesa's software adapters
/// when wgpu is compiled in (see `hetero_wgpu::exit_without_teardown`:
/// that teardown can abort after every trial passed), a plain exit
/// otherwise.
pub fn exit_after_tests(failed: bool) -> ! {
    let code = if failed { 101 } else { 0 };
    #[cfg(feature = "wgpu")]
    hetero_wgpu::exit_without_teardown(code);
    #[cfg(not(feature = "wgpu"))]
    std::process::exit(code)
}
