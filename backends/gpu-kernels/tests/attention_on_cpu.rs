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

use std::process::Command;

use libtest_mimic::{Arguments, Failed, Trial};

mod emulation;

fn main() {
    let args = Arguments::from_args();
    let trial = emulation::needs_cxx(Trial::test("attention_kernels_match_f64_on_cpu", run));
    libtest_mimic::run(&args, vec![trial]).exit();
}

fn run() -> Result<(), Failed> {
    let scratch = emulation::Scratch::new("attention")?;
    let exe = emulation::build("attention", &scratch.0)?;
    let out = Command::new(&exe)
        .output()
        .map_err(|e| format!("running {}: {e}", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        eprint!("{text}");
        Ok(())
    } else {
        Err(format!("the emulated attention disagrees ({}):\n{text}", out.status).into())
    }
}
