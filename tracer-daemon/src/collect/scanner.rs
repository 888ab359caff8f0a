//! The node agent's background scans: every sampling interval, on a thread of its own and on
//! duplicate map descriptors, it scans every outstanding allocation for ages (O(allocations))
//! and reads every per-stack total to keep the largest stacks' bytes for the growth windows
//! (O(stacks)). The agent's actor only picks up the results, so a report query never waits
//! behind a scan of a million allocations. The scans take at most a tenth of a core: after a
//! round that took t, the next starts no sooner than 10·t later, however large the maps are.

use std::{
    os::fd::{AsFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tracing::warn;

use super::{
    ages::{self, OldestByStack},
    monotonic_now_ns,
    stack_table::StackTable,
};

/// The pause after a round, in multiples of the round's own duration (at most 10% of a core).
const PAUSE_PER_SCAN: u32 = 9;

/// One round of background scans.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// When the totals were read (CLOCK_MONOTONIC ns); 0 before the first round.
    pub taken_ns: u64,
    /// Oldest outstanding allocation per stack.
    pub oldest: Arc<OldestByStack>,
    /// The largest stacks by outstanding bytes: ((pid, stack id), bytes), at most `keep`.
    pub largest: Vec<((u32, u64), u64)>,
    /// Outstanding allocations in the kernel's map when it was read.
    pub allocations: u64,
}

/// Runs the scans periodically.
pub struct Scanner {
    latest: Arc<Mutex<Arc<Snapshot>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scanner {
    /// Starts scanning every `interval`, keeping the `keep` largest stacks.
    pub fn spawn(
        allocs: OwnedFd,
        totals: Arc<StackTable>,
        interval: Duration,
        keep: usize,
    ) -> std::io::Result<Self> {
        let latest = Arc::new(Mutex::new(Arc::new(Snapshot::default())));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopping) = (Arc::clone(&latest), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("tracer-scans".into())
            .spawn(move || {
                // Background work: let report queries and the probes' own work go first.
                // SAFETY: setpriority on this thread (tid 0 with PRIO_PROCESS means the caller).
                let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
                while !stopping.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let mut largest = Vec::new();
                    totals.for_each(|_, value| {
                        if value.outstanding_bytes > 0 {
                            largest.push((
                                (value.key.tgid, value.key.stack_id),
                                value.outstanding_bytes,
                            ));
                        }
                    });
                    let taken_ns = monotonic_now_ns();
                    if largest.len() > keep {
                        let _ = largest.select_nth_unstable_by(keep, |a, b| b.1.cmp(&a.1));
                        largest.truncate(keep);
                    }
                    match ages::oldest_and_count(allocs.as_fd()) {
                        Ok((oldest, allocations)) => {
                            *shared.lock().unwrap_or_else(|e| e.into_inner()) =
                                Arc::new(Snapshot {
                                    taken_ns,
                                    oldest: Arc::new(oldest),
                                    largest,
                                    allocations,
                                });
                        }
                        Err(error) => warn!(%error, "background scan failed"),
                    }
                    // Sleep in short steps so stopping is prompt.
                    let pause = interval.max(started.elapsed() * PAUSE_PER_SCAN);
                    let mut slept = Duration::ZERO;
                    while slept < pause && !stopping.load(Ordering::Relaxed) {
                        let step = Duration::from_millis(100).min(pause - slept);
                        std::thread::sleep(step);
                        slept += step;
                    }
                }
            })?;
        Ok(Self {
            latest,
            stop,
            thread: Some(thread),
        })
    }

    /// The last completed round.
    pub fn latest(&self) -> Arc<Snapshot> {
        Arc::clone(&self.latest.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Scanner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
