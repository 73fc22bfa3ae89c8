//! How a side of a ring waits: poll (giving the CPU away between polls),
//! then mark itself sleeping and sleep on its doorbell, waking every
//! `LIVENESS_CHECK` to check that the peer is alive; and how a side
//! publishes a new position, ringing the other's doorbell only when it
//! sleeps. The sleeping flag is set before the sleeper looks at the ring
//! once more and read after the other side moves its position, both
//! sequentially consistent, so no wake-up is lost.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hetero_core::{Error, Result};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use super::doorbell::{drain_bell, ring_bell};
use super::io_error;
use super::ring::{READER_LINE, Ring, WRITER_LINE};
use crate::error::CollectiveError;

/// How long a sleeping side waits before checking its peer is alive.
const LIVENESS_CHECK: Duration = Duration::from_millis(20);

/// True while process `pid` exists (0: not known yet).
fn process_alive(pid: u32) -> bool {
    if pid == 0 {
        return true;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Polls of the ring (yielding the CPU in between) before a side goes to
/// sleep on its doorbell.
pub const DEFAULT_POLLS_BEFORE_SLEEP: usize = 64;

/// Side `mine` of a ring marked as sleeping while this lives.
struct Asleep<'a>(&'a AtomicU32);

impl<'a> Asleep<'a> {
    fn mark(ring: &'a Ring, mine: usize) -> Self {
        let flag = ring.sleeping(mine);
        flag.store(1, Ordering::SeqCst);
        Asleep(flag)
    }
}

impl Drop for Asleep<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::SeqCst);
    }
}

/// Wait, as side `mine` of `ring`, until `ready()`; the doorbell `bell` is
/// rung by the other side after it moves its position while we sleep.
/// `deadline`: when to give up, and the timeout it stands for (reported).
pub(super) async fn wait_until(
    ring: &Ring,
    mine: usize,
    bell: &AsyncFd<OwnedFd>,
    peer: usize,
    deadline: Option<(Instant, Duration)>,
    polls: usize,
    ready: impl Fn() -> bool,
) -> Result<()> {
    // Poll first, giving the CPU away between polls (sched_yield): with
    // more ranks than cores the peer needs it to make progress, and a
    // doorbell costs a system call and a reactor wake-up on each side.
    // (Yielding to tokio instead measured 10x slower: it keeps the core.)
    for _ in 0..polls {
        if ready() {
            return Ok(());
        }
        std::thread::yield_now();
    }
    let theirs = other(mine);
    loop {
        let _asleep = Asleep::mark(ring, mine);
        if ready() {
            return Ok(());
        }
        let failure =
            |reason: String| Error::from(CollectiveError::PeerFailure { rank: peer, reason });
        // a writer closes after its last bytes: look at the ring once more
        if ring.closed(theirs).load(Ordering::SeqCst) != 0 && !ready() {
            return Err(failure("it closed its shared-memory ring".into()));
        }
        let pid = ring.peer_pid(theirs).load(Ordering::Acquire);
        if !process_alive(pid) {
            return Err(failure(format!("its process {pid} exited")));
        }
        let now = Instant::now();
        let nap = match deadline {
            Some((at, timeout)) if now >= at => {
                return Err(CollectiveError::Timeout {
                    what: format!("waiting for rank {peer} over shared memory"),
                    after: timeout,
                }
                .into());
            }
            Some((at, _)) => LIVENESS_CHECK.min(at - now),
            None => LIVENESS_CHECK,
        };
        if let Ok(woken) = tokio::time::timeout(nap, bell.readable()).await {
            let mut guard =
                woken.map_err(io_error("waiting on a shared-memory doorbell".into()))?;
            drain_bell(bell.get_ref());
            guard.clear_ready();
        }
    }
}

fn other(line: usize) -> usize {
    if line == WRITER_LINE {
        READER_LINE
    } else {
        WRITER_LINE
    }
}

/// Publish side `mine`'s new position; ring `bell` if the other side sleeps.
pub(super) fn publish(ring: &Ring, mine: usize, position: u64, bell: &OwnedFd) {
    ring.position(mine).store(position, Ordering::SeqCst);
    if ring.sleeping(other(mine)).load(Ordering::SeqCst) != 0 {
        ring_bell(bell);
    }
}
