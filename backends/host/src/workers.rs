//! The host device's persistent workers: `threads - 1` threads plus the
//! calling thread, which takes tasks too.
//!
//! A decode step runs a few hundred kernels of tens of microseconds each.
//! A thread spawn per kernel costs more than that, and so does waking a
//! sleeping worker per kernel: with rayon's pool (workers sleep between
//! jobs, the caller sleeps while they run) perf put 17% of a
//! single-sequence decode in the scheduler, and two threads ran it only
//! 1.15x faster than one. So, as llama.cpp's thread pool does, workers spin
//! on a job counter for a while after each job (about a millisecond) and
//! only then park on a condition variable; the caller never waits for a
//! worker that has not joined the job (a late worker finds it closed).
//! Tasks are taken from a shared counter, so uneven tasks even out.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use hetero_core::{Backend, DeviceId, Error, Result};

/// Spins of an idle worker before it parks.
const SPINS: u32 = 1 << 16;

/// One job: `task(i)` for `i` in `0..n`, tasks claimed through `next`.
struct Job<'a> {
    task: &'a (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
}

impl Job<'_> {
    fn drain(&self) {
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= self.n {
                break;
            }
            (self.task)(i);
        }
    }
}

#[derive(Default)]
struct Shared {
    /// `generation << 1 | open`: a new generation is a new job; `open`
    /// while workers may still join it.
    state: AtomicU64,
    /// The current job (valid while its generation is open, and while any
    /// worker that joined it is still `active`).
    job: AtomicUsize,
    /// Workers inside the current job.
    active: AtomicUsize,
    /// Workers parked on `wake`.
    sleepers: AtomicUsize,
    /// A task panicked on a worker during the current job.
    panicked: AtomicBool,
    shutdown: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// An output buffer shared by the tasks of one `run`, each writing only
/// elements no other task writes (its own rows or columns).
pub(crate) struct SharedOut<T = f32>(*mut T);
// SAFETY: tasks write disjoint elements while the kernel holds the unique
// borrow of the buffer for the whole `run`; T: Send, so an element may be
// written on another thread.
unsafe impl<T: Send> Send for SharedOut<T> {}
unsafe impl<T: Send> Sync for SharedOut<T> {}

// Copy whatever T is (a derive would ask T: Copy).
impl<T> Clone for SharedOut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedOut<T> {}

impl<T> SharedOut<T> {
    pub(crate) fn new(out: &mut [T]) -> Self {
        SharedOut(out.as_mut_ptr())
    }

    /// Element `i`'s address (a method, so closures capture the `Sync`
    /// wrapper, not its raw pointer field).
    pub(crate) fn at(self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}

/// Worker threads of one host device.
pub(crate) struct Workers {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    threads: usize,
    /// One job at a time (a device may be called from several threads).
    running: Mutex<()>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.threads)
            .finish()
    }
}

impl Workers {
    /// `threads` in all (the caller included), named after device `index`.
    pub(crate) fn new(threads: usize, index: u32) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        let mut handles = Vec::new();
        for i in 1..threads {
            let s = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("hetero-host{index}-{i}"))
                .spawn(move || worker(&s))
                .map_err(|e| Error::DeviceLost {
                    device: DeviceId::new(Backend::Host, index),
                    reason: format!("cannot start the host device's worker threads: {e}"),
                })?;
            handles.push(h);
        }
        Ok(Workers {
            shared,
            handles,
            threads,
            running: Mutex::new(()),
        })
    }

    /// Threads in all, the caller included.
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    /// `task(c, part)` for the consecutive parts of `out` of `chunk`
    /// values each (the last may be shorter), `c` counting from 0, run as
    /// [`run`](Self::run) runs its tasks: each task owns its part alone.
    pub(crate) fn run_chunks<T: Send>(
        &self,
        out: &mut [T],
        chunk: usize,
        task: impl Fn(usize, &mut [T]) + Sync,
    ) {
        let (len, ptr) = (out.len(), SharedOut::new(out));
        let chunk = chunk.max(1);
        self.run(len.div_ceil(chunk), |c| {
            let (start, end) = (c * chunk, ((c + 1) * chunk).min(len));
            // SAFETY: the parts of distinct tasks are disjoint ranges of
            // `out`, which is borrowed mutably for the whole run.
            let part = unsafe { std::slice::from_raw_parts_mut(ptr.at(start), end - start) };
            task(c, part);
        });
    }

    /// `task(i)` for every `i` in `0..n`, on the workers and the calling
    /// thread; returns when all are done.
    pub(crate) fn run(&self, n: usize, task: impl Fn(usize) + Sync) {
        if n <= 1 || self.handles.is_empty() {
            (0..n).for_each(task);
            return;
        }
        // A poisoned lock only means another job's task panicked; the
        // protocol's state is in the atomics, which are consistent.
        let _one_job = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let job = Job {
            task: &task,
            n,
            next: AtomicUsize::new(0),
        };
        let s = &*self.shared;
        s.job.store(&job as *const Job<'_> as usize, SeqCst);
        let generation = (s.state.load(SeqCst) >> 1) + 1;
        s.state.store(generation << 1 | 1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        job.drain();
        // Close the job, then wait for the workers that joined it: a worker
        // that joins after this sees it closed and leaves it alone (both
        // sides use SeqCst, so one of them sees the other's write).
        s.state.store(generation << 1, SeqCst);
        while s.active.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
        // A kernel task never panics on validated input; if one did on a
        // worker, fail here as it would have on the calling thread.
        if s.panicked.swap(false, SeqCst) {
            panic!("a host kernel task panicked on a worker thread");
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        // Spin for a new generation, then park.
        let mut spins = 0u32;
        let state = loop {
            let state = s.state.load(SeqCst);
            if state >> 1 != seen || s.shutdown.load(SeqCst) {
                break state;
            }
            spins += 1;
            if spins < SPINS {
                std::hint::spin_loop();
                continue;
            }
            let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, SeqCst);
            while s.state.load(SeqCst) >> 1 == seen && !s.shutdown.load(SeqCst) {
                g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, SeqCst);
            drop(g);
            spins = 0;
        };
        if s.shutdown.load(SeqCst) {
            return;
        }
        seen = state >> 1;
        if state & 1 == 0 {
            continue; // closed before we got here
        }
        s.active.fetch_add(1, SeqCst);
        if s.state.load(SeqCst) == state {
            let job = s.job.load(SeqCst) as *const Job<'_>;
            // SAFETY: the job is open and we are counted in `active`, so
            // the caller has not returned: it waits for `active` to drop
            // to zero after closing, and `job` points at its stack frame.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
                (*job).drain()
            }));
            if ran.is_err() {
                s.panicked.store(true, SeqCst);
            }
        }
        s.active.fetch_sub(1, SeqCst);
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
                for _ in 0..50 {
                    let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                    w.run(n, |i| {
                        hits[i].fetch_add(1, SeqCst);
                    });
                    assert!(hits.iter().all(|h| h.load(SeqCst) == 1));
                }
            }
        }
    }

    #[test]
    fn parked_workers_wake_for_the_next_job() {
        let w = Workers::new(3, 0).unwrap_or_else(|e| panic!("{e}"));
        std::thread::sleep(std::time::Duration::from_millis(50));
        let sum = AtomicUsize::new(0);
        w.run(64, |i| {
            sum.fetch_add(i, SeqCst);
        });
        assert_eq!(sum.load(SeqCst), 63 * 64 / 2);
    }
}
