//! The one helper hetero's example binaries share: how a failed run ends.
//! Everything else they do is a call into a crate (devices and links:
//! `hetero-backends`; transports: `hetero-collectives`; placement, serving,
//! sync planning: `hetero-partition`, `hetero-scheduler`).

use hetero_core::Result;

/// A binary's exit: success, or the error on stderr and a non-zero code.
pub fn exit_code(result: Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
