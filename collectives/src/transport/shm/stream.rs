//! Messages as byte streams through a ring: a little-endian `u64` length
//! and the bytes, so a message may be larger than the ring (the reader
//! drains while the writer fills). `Inbound` is this rank's reading end
//! with the message in progress; `Outbound` the writing end, with the
//! writer task (`write_queued`) that streams the messages `send` could
//! not write at once, in order, as room appears.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::doorbell::ring_bell;
use super::ring::{READER_LINE, Ring, WRITER_LINE};
use super::wait::{publish, wait_until};

/// This rank's end of a ring it reads from, with the message in progress.
#[derive(Debug)]
pub(super) struct Inbound {
    pub(super) ring: Ring,
    /// Rung by the writer (data), and the one this side rings (space).
    pub(super) data_bell: AsyncFd<OwnedFd>,
    pub(super) space_bell: OwnedFd,
    /// Bytes of the length prefix read so far.
    pub(super) prefix: Vec<u8>,
    /// Once the prefix is complete: the message's length and its bytes so far.
    pub(super) body: Option<(usize, Vec<u8>)>,
    pub(super) polls: usize,
}

impl Inbound {
    /// Take what the ring holds; a whole message once it has arrived.
    pub(super) fn pull(&mut self) -> Option<Vec<u8>> {
        let ring = &self.ring;
        loop {
            let head = ring.position(READER_LINE).load(Ordering::Relaxed);
            let avail = (ring.position(WRITER_LINE).load(Ordering::SeqCst) - head) as usize;
            if avail == 0 {
                return None;
            }
            let taken = match &mut self.body {
                None => {
                    let n = avail.min(8 - self.prefix.len());
                    ring.extend(head, n, &mut self.prefix);
                    if let Ok(prefix) = <[u8; 8]>::try_from(self.prefix.as_slice()) {
                        let len = u64::from_le_bytes(prefix) as usize;
                        self.prefix.clear();
                        self.body = Some((len, Vec::with_capacity(len)));
                    }
                    n
                }
                Some((len, body)) => {
                    let n = avail.min(*len - body.len());
                    ring.extend(head, n, body);
                    n
                }
            };
            publish(ring, READER_LINE, head + taken as u64, &self.space_bell);
            if let Some((len, body)) = &self.body
                && body.len() == *len
            {
                return self.body.take().map(|(_, body)| body);
            }
        }
    }
}

/// This rank's end of a ring it writes to.
#[derive(Debug)]
pub(super) struct Outbound {
    pub(super) ring: Ring,
    pub(super) data_bell: OwnedFd,
    pub(super) space_bell: AsyncFd<OwnedFd>,
    /// Serialises the fast path of `send` with the writer task's chunks.
    pub(super) lock: std::sync::Mutex<()>,
    /// Messages handed to the writer task and not yet fully written.
    pub(super) queued: AtomicUsize,
    pub(super) failed: std::sync::Mutex<Option<String>>,
    pub(super) polls: usize,
}

impl Outbound {
    pub(super) fn free(&self) -> usize {
        let tail = self.ring.position(WRITER_LINE).load(Ordering::Relaxed);
        let head = self.ring.position(READER_LINE).load(Ordering::SeqCst);
        self.ring.capacity - (tail - head) as usize
    }

    /// Write bytes `from..` of `parts` (one stream) as far as the ring has
    /// room; the new offset.
    pub(super) fn put_stream(&self, parts: [&[u8]; 2], mut from: usize) -> usize {
        let ring = &self.ring;
        let mut tail = ring.position(WRITER_LINE).load(Ordering::Relaxed);
        let mut room = self.free();
        let mut skip = from;
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            let n = room.min(part.len() - skip);
            ring.put(tail, &part[skip..skip + n]);
            tail += n as u64;
            room -= n;
            from += n;
            skip = 0;
            if room == 0 {
                break;
            }
        }
        publish(ring, WRITER_LINE, tail, &self.data_bell);
        from
    }

    pub(super) fn close(&self) {
        self.ring.closed(WRITER_LINE).store(1, Ordering::SeqCst);
        ring_bell(&self.data_bell);
    }
}

/// Writes the messages `send` could not write at once, in order, waiting
/// for room; closes the ring when the transport is gone and the queue empty.
pub(super) async fn write_queued(
    out: Arc<Outbound>,
    peer: usize,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    while let Some(data) = queue.recv().await {
        let failed = out.failed.lock().map(|g| g.is_some()).unwrap_or(true);
        if !failed {
            let len = (data.len() as u64).to_le_bytes();
            let total = 8 + data.len();
            let mut done = 0;
            loop {
                done = match out.lock.lock() {
                    Ok(_g) => out.put_stream([&len, &data], done),
                    Err(_) => break,
                };
                if done == total {
                    break;
                }
                if let Err(e) = wait_until(
                    &out.ring,
                    WRITER_LINE,
                    &out.space_bell,
                    peer,
                    None,
                    out.polls,
                    || out.free() > 0,
                )
                .await
                {
                    if let Ok(mut g) = out.failed.lock() {
                        *g = Some(e.to_string());
                    }
                    break;
                }
            }
        }
        out.queued.fetch_sub(1, Ordering::AcqRel);
    }
    out.close();
}

/// A ring this rank writes to and the queue of its writer task.
pub(super) type Writer = (Arc<Outbound>, mpsc::UnboundedSender<Vec<u8>>);
