//! Ending a process that used software adapters without running the C
//! libraries' exit-time teardown.
//!
//! Seen in this project's CI (Mesa 22.3 lavapipe / llvmpipe, Debian 12):
//! twice in ten runs a test binary that had used those adapters printed
//! every trial's result, then died in `exit()` with glibc's heap-corruption
//! abort ("corrupted size vs. prev_size in fastbins", "double free or
//! corruption (fasttop)"): the libraries' atexit handlers and static
//! destructors (Mesa's, LLVM's) ran while their own worker threads were
//! still alive. It never happened in 30 reruns of the same binaries on an
//! idle machine, and never before the results were printed. Skipping the
//! teardown (`_exit`) removes that window; the OS frees everything anyway.
//! Only for processes whose work is done and whose output is flushed
//! (test harness mains); a library never calls it.

use std::io::Write;

/// Flush stdout and stderr and end the process with `code`, without
/// atexit handlers or static destructors.
pub fn exit_without_teardown(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    skip_teardown(code)
}

#[cfg(unix)]
fn skip_teardown(code: i32) -> ! {
    // SAFETY: `_exit` takes any status and never returns; nothing of this
    // process runs after it, so no Rust invariant can be observed broken.
    unsafe { libc::_exit(code) }
}

#[cfg(not(unix))]
fn skip_teardown(code: i32) -> ! {
    std::process::exit(code)
}
