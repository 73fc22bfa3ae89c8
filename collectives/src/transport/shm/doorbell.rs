//! Doorbells: two FIFOs per ring (`.data`, rung by the writer; `.space`,
//! rung by the reader) that a sleeping side waits on through the tokio
//! reactor, so an idle rank uses no CPU. Opened read-write and
//! non-blocking, so neither side waits for the other to open and nobody
//! sees EOF.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hetero_core::{Error, Result};
use tokio::io::unix::AsyncFd;

use super::io_error;

/// Create the two doorbell FIFOs of the ring at `path` (its creator does).
pub(super) fn make_doorbells(path: &Path) -> Result<()> {
    for suffix in [DATA_BELL, SPACE_BELL] {
        let bell = bell_path(path, suffix);
        let c = std::ffi::CString::new(bell.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::invalid("shared memory", "a path with a NUL byte"))?;
        // SAFETY: a valid C string; creates a FIFO readable by this user only.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(Error::io(
                format!("creating the FIFO {}", bell.display()),
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

pub(super) const DATA_BELL: &str = "data";
pub(super) const SPACE_BELL: &str = "space";

pub(super) fn bell_path(ring: &Path, suffix: &str) -> PathBuf {
    let mut name = ring.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Open a doorbell FIFO non-blocking for reading and writing (Linux allows
/// it; neither side then waits for the other to open, and nobody sees EOF).
pub(super) fn open_bell(ring: &Path, suffix: &str) -> Result<OwnedFd> {
    let path = bell_path(ring, suffix);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .map_err(io_error(format!("opening the FIFO {}", path.display())))?;
    Ok(OwnedFd::from(file))
}

/// Register a doorbell with the tokio reactor (in a runtime context).
pub(super) fn watch(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open and owned; it moves into the AsyncFd and
    // stays the same descriptor until the AsyncFd drops it.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::io("watching a shared-memory doorbell", e.into()))
}

/// Wake the side sleeping on this FIFO (a full FIFO already wakes it).
pub(super) fn ring_bell(fd: &OwnedFd) {
    let byte = 1u8;
    // SAFETY: writes one byte from a valid buffer to an open descriptor.
    unsafe {
        libc::write(fd.as_raw_fd(), (&byte as *const u8).cast(), 1);
    }
}

/// Empty a FIFO that woke us.
pub(super) fn drain_bell(fd: &OwnedFd) {
    let mut buf = [0u8; 64];
    // SAFETY: reads into a valid buffer from an open non-blocking descriptor.
    while unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}
