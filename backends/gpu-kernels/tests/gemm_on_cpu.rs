//! The tiled GEMM kernel (`kernels/gemm.cu`) compiled as C++ and run on the
//! CPU with one thread per GPU thread (`tests/emulation/gemm.cpp`), against
//! a double-precision reference: the kernel's indexing, transposes,
//! alpha / beta and edge tiles are checked on machines with no GPU. It does
//! not replace running on a GPU (no warps, no real memory model).
//!
//! Needs a C++20 compiler with `_Float16` (`c++`, GCC 12 or clang 15 and
//! later); without one the trial is reported ignored with the reason.

use libtest_mimic::{Arguments, Failed, Trial};

mod emulation;

fn main() {
    let args = Arguments::from_args();
    let trial = emulation::needs_cxx(Trial::test("gemm_kernel_matches_f64_on_cpu", run));
    libtest_mimic::run(&args, vec![trial]).exit();
}

fn run() -> Result<(), Failed> {
    emulation::build_and_run("gemm", "GEMM")
}
