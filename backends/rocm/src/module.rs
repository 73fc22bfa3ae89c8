//! A loaded code object of the shared kernels on one GPU (`hipModuleLoadData`)
//! and kernel launches (`hipModuleLaunchKernel`) with packed arguments.
//!
//! Kernels launch on the null stream, where the crate's `hipMemcpy` calls
//! also run, so a download after a kernel sees its results and the HIP
//! runtime orders everything as CUDA's one stream per device does.

use std::collections::HashMap;
use std::ffi::{CString, c_char, c_int, c_uint, c_void};

use crate::error::RocmError;
use hetero_core::DeviceId;

#[link(name = "amdhip64")]
unsafe extern "C" {
    fn hipModuleLoadData(module: *mut *mut c_void, image: *const c_void) -> i32;
    fn hipModuleUnload(module: *mut c_void) -> i32;
    fn hipModuleGetFunction(
        function: *mut *mut c_void,
        module: *mut c_void,
        name: *const c_char,
    ) -> i32;
    fn hipModuleLaunchKernel(
        function: *mut c_void,
        grid_x: c_uint,
        grid_y: c_uint,
        grid_z: c_uint,
        block_x: c_uint,
        block_y: c_uint,
        block_z: c_uint,
        shared_bytes: c_uint,
        stream: *mut c_void,
        params: *mut *mut c_void,
        extra: *mut *mut c_void,
    ) -> i32;
    fn hipSetDevice(device: c_int) -> i32;
}

/// The shared kernels loaded on one GPU, every function looked up once.
#[derive(Debug)]
pub(crate) struct Module {
    handle: Handle,
    functions: HashMap<String, Handle>,
    ordinal: c_int,
}

/// A module or function handle of the HIP runtime.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Handle(*mut c_void);

// SAFETY: HIP module and function handles are plain identifiers; the
// runtime is thread-safe and every use selects the owning device first.
unsafe impl Send for Handle {}
// SAFETY: as above; nothing is mutated through a shared handle.
unsafe impl Sync for Handle {}

impl Module {
    /// Load `code` on device `ordinal` (selected by the caller) and look up
    /// every function in `names`.
    pub(crate) fn load(
        device: DeviceId,
        ordinal: c_int,
        code: &[u8],
        names: &[String],
    ) -> Result<Module, RocmError> {
        let err = |call, code| RocmError::Hip {
            device,
            call,
            code,
            requested_bytes: 0,
        };
        let mut handle: *mut c_void = std::ptr::null_mut();
        // SAFETY: `code` is a complete code object (hiprtc's output); the
        // runtime copies what it needs before returning.
        let status = unsafe { hipModuleLoadData(&mut handle, code.as_ptr().cast()) };
        if status != 0 {
            return Err(err("hipModuleLoadData", status));
        }
        let mut module = Module {
            handle: Handle(handle),
            functions: HashMap::new(),
            ordinal,
        };
        for name in names {
            let c_name = CString::new(name.as_str()).map_err(|_| err("kernel name", 1))?;
            let mut function: *mut c_void = std::ptr::null_mut();
            // SAFETY: the module is loaded; the name is NUL-terminated.
            let status = unsafe {
                hipModuleGetFunction(&mut function, module.handle.0, c_name.as_ptr().cast())
            };
            if status != 0 {
                return Err(err("hipModuleGetFunction", status));
            }
            module.functions.insert(name.clone(), Handle(function));
        }
        Ok(module)
    }

    pub(crate) fn function(&self, name: &str) -> Option<Handle> {
        self.functions.get(name).copied()
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: the module was loaded on this device and is unloaded once.
        unsafe {
            hipSetDevice(self.ordinal);
            hipModuleUnload(self.handle.0);
        }
    }
}

/// A kernel's arguments, each in an 8-byte slot (HIP reads each argument's
/// own size from its pointer; every kernel argument here is 4 or 8 bytes).
#[derive(Debug, Default)]
pub(crate) struct Args {
    slots: Vec<u64>,
}

impl Args {
    pub(crate) fn ptr(mut self, p: *const c_void) -> Self {
        self.slots.push(p as usize as u64);
        self
    }
    pub(crate) fn u64(mut self, v: u64) -> Self {
        self.slots.push(v);
        self
    }
    pub(crate) fn f64(mut self, v: f64) -> Self {
        self.slots.push(v.to_bits());
        self
    }
    pub(crate) fn i32(self, v: i32) -> Self {
        self.four(v.to_ne_bytes())
    }
    pub(crate) fn f32(self, v: f32) -> Self {
        self.four(v.to_ne_bytes())
    }
    /// A 4-byte argument at the start of its slot.
    fn four(mut self, bytes: [u8; 4]) -> Self {
        let mut slot = [0u8; 8];
        slot[..4].copy_from_slice(&bytes);
        self.slots.push(u64::from_ne_bytes(slot));
        self
    }
}

/// Grid and block of one launch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Launch {
    pub grid: (u32, u32),
    pub block: u32,
    pub shared_bytes: u32,
}

/// Launch `function` on the null stream of the current device; returns
/// HIP's status.
///
/// # Safety
/// `args` must match the kernel's parameters in number, order and type,
/// and every pointer and size must keep the kernel's accesses in bounds.
pub(crate) unsafe fn launch(function: Handle, launch: Launch, args: &mut Args) -> i32 {
    let mut params: Vec<*mut c_void> = args
        .slots
        .iter_mut()
        .map(|slot| (slot as *mut u64).cast())
        .collect();
    // SAFETY: the caller's contract; `params` points into `args`, which
    // outlives the call (HIP copies the arguments before returning).
    unsafe {
        hipModuleLaunchKernel(
            function.0,
            launch.grid.0,
            launch.grid.1,
            1,
            launch.block,
            1,
            1,
            launch.shared_bytes,
            std::ptr::null_mut(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_byte_arguments_sit_at_the_start_of_their_slot() {
        let args = Args::default().i32(-2).f32(1.5).u64(7).f64(0.25);
        let bytes: Vec<[u8; 8]> = args.slots.iter().map(|s| s.to_ne_bytes()).collect();
        assert_eq!(&bytes[0][..4], &(-2i32).to_ne_bytes());
        assert_eq!(&bytes[1][..4], &1.5f32.to_ne_bytes());
        assert_eq!(args.slots[2], 7);
        assert_eq!(f64::from_bits(args.slots[3]), 0.25);
    }
}
