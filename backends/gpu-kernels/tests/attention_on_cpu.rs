//! The causal attention kernels (`kernels/llama.cu`, over f32 and over f16
//! KV caches) and the f32 <-> f16 conversions that fill f16 caches,
//! compiled as C++ and run on the CPU with one thread per GPU thread
//! (`tests/emulation/attention.cpp`), against a double-precision reference
//! on the same rounded keys and values. It does not replace running on a
//! GPU (the 32-lane shuffles are emulated by barriers, no real memory
//! model).
//!
//! Needs a C++20 compiler with `_Float16` (`c++`, GCC 12 or clang 15 and
//! later); without one the trial is reported ignored with the reason.

use libtest_mimic::{Arguments, Failed, Trial};

mod emulation;

fn main() {
    let args = Arguments::from_args();
    let trial = emulation::needs_cxx(Trial::test("attention_kernels_match_f64_on_cpu", run));
    libtest_mimic::run(&args, vec![trial]).exit();
}

fn run() -> Result<(), Failed> {
    emulation::build_and_run("attention", "attention")
}
