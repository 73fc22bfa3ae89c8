//! The host device's persistent workers: `threads - 1` rayon threads plus
//! the calling thread, which takes tasks too. A decode step runs a few
//! hundred kernels of tens of microseconds each, so neither a thread spawn
//! per kernel nor a caller that sleeps while the pool works (rayon's
//! `install`: a sleep and a wake-up of the caller around every kernel;
//! perf put 17% of a single-sequence decode's samples in the scheduler
//! with it) is affordable. Tasks are taken from a shared counter, so
//! uneven tasks even out.

use std::sync::atomic::{AtomicUsize, Ordering};

use hetero_core::{Backend, DeviceId, Error, Result};

/// Worker threads of one host device.
#[derive(Debug)]
pub(crate) struct Workers {
    pool: Option<rayon::ThreadPool>,
    threads: usize,
}

impl Workers {
    /// `threads` in all (the caller included), named after device `index`.
    pub(crate) fn new(threads: usize, index: u32) -> Result<Self> {
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads - 1)
                    .thread_name(move |i| format!("hetero-host{index}-{i}"))
                    .build()
                    .map_err(|e| Error::DeviceLost {
                        device: DeviceId::new(Backend::Host, index),
                        reason: format!("cannot start the host device's worker threads: {e}"),
                    })?,
            )
        } else {
            None
        };
        Ok(Workers { pool, threads })
    }

    /// Threads in all, the caller included.
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    /// `task(i)` for every `i` in `0..n`, on the workers and the calling
    /// thread; returns when all are done.
    pub(crate) fn run(&self, n: usize, task: impl Fn(usize) + Sync) {
        let Some(pool) = self.pool.as_ref().filter(|_| n > 1) else {
            (0..n).for_each(task);
            return;
        };
        let next = AtomicUsize::new(0);
        let drain = || {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                task(i);
            }
        };
        pool.in_place_scope(|s| {
            for _ in 0..(self.threads - 1).min(n - 1) {
                s.spawn(|_| drain());
            }
            drain();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for threads in [1, 2, 3, 5] {
            let w = Workers::new(threads, 0).unwrap_or_else(|e| panic!("{e}"));
            for n in [0, 1, 2, 7, 100] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                w.run(n, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }
}
