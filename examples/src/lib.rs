//! The helpers hetero's example binaries share: how a failed run ends.
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

/// When one policy was asked for and its run failed, that failure is the
/// binary's error (a table of one failed row would hide it); with several,
/// failed rows are printed beside the others. Takes the failure out.
pub fn sole_failure<T>(runs: &mut Vec<(String, Result<T>)>) -> Result<()> {
    if runs.len() == 1
        && let Some((_, Err(_))) = runs.first()
        && let Some((_, Err(e))) = runs.pop()
    {
        return Err(e);
    }
    Ok(())
}
