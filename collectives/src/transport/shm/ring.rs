//! The shared-memory ring: one file per ordered pair of local ranks,
//! mapped by both processes. A 192-byte header (magic, version, capacity,
//! then one cache line per side holding its position, its sleeping and
//! closed flags and its process id) and a data area that the writer fills
//! between `head` and `tail + capacity` and the reader drains between
//! `head` and `tail`. Each side owns one position counter, so no lock is
//! ever shared between processes.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use hetero_core::{Error, Result};

use super::io_error;

const MAGIC: u32 = 0x4845_5348; // "HESH"
const VERSION: u32 = 1;
/// Header: magic, version, capacity; then one cache line per side.
const HEADER: usize = 192;
pub(super) const WRITER_LINE: usize = 64;
pub(super) const READER_LINE: usize = 128;

/// A mapped ring file. Its atomics live in the shared page; the data area
/// is written only by the writer between `head` and `tail + capacity` and
/// read only by the reader between `head` and `tail`.
#[derive(Debug)]
pub(super) struct Ring {
    base: *mut u8,
    len: usize,
    pub(super) capacity: usize,
}

// SAFETY: the mapping is shared memory used only through atomics and the
// single-producer single-consumer protocol above; one thread per side.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: base/len come from a successful mmap and are unmapped once.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

impl Ring {
    /// Create (exclusively) and map a ring file as its reader.
    pub(super) fn create(path: &Path, capacity: usize) -> Result<Ring> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_error(format!("creating {}", path.display())))?;
        let len = HEADER + capacity;
        // SAFETY: a valid open descriptor; reserves the pages now so a full
        // tmpfs fails here instead of faulting the mapping later.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
        if rc != 0 {
            let _ = std::fs::remove_file(path);
            return Err(Error::io(
                format!(
                    "reserving {len} bytes for {} (is the shared-memory filesystem full? set HETERO_SHM_DIR)",
                    path.display()
                ),
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        let ring = Ring::map(&file, path, len)?;
        ring.u32_at(0).store(MAGIC, Ordering::Relaxed);
        ring.u32_at(4).store(VERSION, Ordering::Relaxed);
        ring.u64_at(8).store(capacity as u64, Ordering::Relaxed);
        ring.peer_pid(READER_LINE)
            .store(std::process::id(), Ordering::Release);
        Ok(ring)
    }

    /// Map an existing ring file as its writer.
    pub(super) fn open(path: &Path, capacity: usize) -> Result<Ring> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error(format!("opening {}", path.display())))?;
        let len = HEADER + capacity;
        let actual = file
            .metadata()
            .map_err(io_error(format!("reading the size of {}", path.display())))?
            .len();
        if actual != len as u64 {
            return Err(Error::invalid(
                "shared memory",
                format!(
                    "shared-memory ring {} is {actual} bytes, expected {len} (ranks disagree on the ring size)",
                    path.display()
                ),
            ));
        }
        let ring = Ring::map(&file, path, len)?;
        if ring.u32_at(0).load(Ordering::Acquire) != MAGIC
            || ring.u32_at(4).load(Ordering::Relaxed) != VERSION
            || ring.u64_at(8).load(Ordering::Relaxed) != capacity as u64
        {
            return Err(Error::invalid(
                "shared memory",
                format!(
                    "{} is not a hetero shared-memory ring of this version and size",
                    path.display()
                ),
            ));
        }
        ring.peer_pid(WRITER_LINE)
            .store(std::process::id(), Ordering::Release);
        Ok(ring)
    }

    fn map(file: &std::fs::File, path: &Path, len: usize) -> Result<Ring> {
        // SAFETY: mapping a regular file of at least `len` bytes, shared.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Error::io(
                format!("mapping {}", path.display()),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Ring {
            base: base.cast(),
            len,
            capacity: len - HEADER,
        })
    }

    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset.is_multiple_of(4) && offset + 4 <= HEADER);
        // SAFETY: inside the mapping, aligned (the mapping is page-aligned),
        // and only ever accessed atomically.
        unsafe { &*self.base.add(offset).cast::<AtomicU32>() }
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(8) && offset + 8 <= HEADER);
        // SAFETY: as for u32_at.
        unsafe { &*self.base.add(offset).cast::<AtomicU64>() }
    }

    /// Bytes written so far (writer's counter) / read so far (reader's).
    pub(super) fn position(&self, line: usize) -> &AtomicU64 {
        self.u64_at(line)
    }
    /// Nonzero while that side sleeps on its doorbell.
    pub(super) fn sleeping(&self, line: usize) -> &AtomicU32 {
        self.u32_at(line + 12)
    }
    /// Set when that side stopped.
    pub(super) fn closed(&self, line: usize) -> &AtomicU32 {
        self.u32_at(line + 16)
    }
    pub(super) fn peer_pid(&self, line: usize) -> &AtomicU32 {
        self.u32_at(line + 20)
    }

    /// Copy `src` into the data area at stream position `pos` (wrapping).
    pub(super) fn put(&self, pos: u64, src: &[u8]) {
        let start = (pos % self.capacity as u64) as usize;
        let first = src.len().min(self.capacity - start);
        // SAFETY: both ranges lie in the data area and are owned by the
        // writer (free space between tail and head + capacity).
        unsafe {
            let data = self.base.add(HEADER);
            std::ptr::copy_nonoverlapping(src.as_ptr(), data.add(start), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), data, src.len() - first);
        }
    }

    /// Append `n` bytes from stream position `pos` to `dst` (no zeroing).
    pub(super) fn extend(&self, pos: u64, n: usize, dst: &mut Vec<u8>) {
        let start = (pos % self.capacity as u64) as usize;
        let first = n.min(self.capacity - start);
        dst.reserve(n);
        // SAFETY: the source ranges lie in the data area between head and
        // tail; the destination has `n` bytes of spare capacity, all of
        // which are written before the length grows over them.
        unsafe {
            let data = self.base.add(HEADER);
            let end = dst.as_mut_ptr().add(dst.len());
            std::ptr::copy_nonoverlapping(data.add(start), end, first);
            std::ptr::copy_nonoverlapping(data, end.add(first), n - first);
            dst.set_len(dst.len() + n);
        }
    }
}
