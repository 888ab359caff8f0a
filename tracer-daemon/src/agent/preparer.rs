//! Reads processes for attaching on a thread of its own: their /proc files, the ELF files they
//! map and their allocator's functions (see [`Prepared`]). That is the slow half of an attach
//! and touches no kernel object, so the agent's thread keeps serving requests, OOM kills and
//! memory checks while a burst of new processes is read; it does only the kernel half
//! ([`crate::tracer::Tracer::trace_prepared`]) itself.

use std::sync::mpsc as std_mpsc;

use tokio::sync::mpsc;
use tracing::debug;

use crate::{
    attach::{ElfCatalog, placement::PlacementMode},
    tracer::Prepared,
};

/// Processes being read at most; the agent sends no more (see
/// [`super::reconcile::Reconciler::next_to_prepare`]), so neither queue below ever fills.
pub const IN_FLIGHT: usize = 8;

/// What reading a process gave: what to attach, or why it cannot be traced.
pub type Outcome = (u32, Result<Prepared, String>);

/// The reading thread's two ends.
pub struct Preparer {
    requests: std_mpsc::SyncSender<u32>,
    results: mpsc::Receiver<Outcome>,
}

/// The reading thread has ended (it never does while the agent holds its requests' end).
#[derive(Debug, thiserror::Error)]
#[error("the thread that reads processes for attaching has ended")]
pub struct PreparerGone;

impl Preparer {
    /// Starts the thread. It has its own catalog of ELF files: the agent's thread never waits
    /// for a file read on it.
    pub fn spawn(placement: PlacementMode) -> std::io::Result<Self> {
        let (requests, inbox) = std_mpsc::sync_channel::<u32>(IN_FLIGHT);
        let (answers, results) = mpsc::channel(IN_FLIGHT);
        let _thread = std::thread::Builder::new()
            .name("tracer-prepare".into())
            .spawn(move || {
                let mut catalog = ElfCatalog::default();
                while let Ok(pid) = inbox.recv() {
                    let outcome = (pid, read(pid, &mut catalog, placement));
                    if answers.blocking_send(outcome).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self { requests, results })
    }

    /// Asks for a process to be read.
    pub fn send(&self, pid: u32) -> Result<(), PreparerGone> {
        self.requests.try_send(pid).map_err(|_| PreparerGone)
    }

    /// The next process read; `None` once the thread has ended.
    pub async fn next(&mut self) -> Option<Outcome> {
        self.results.recv().await
    }
}

/// Reads one process. A file that makes the reader panic costs that process only: it is
/// reported as not traceable, and the thread goes on with the next.
fn read(pid: u32, catalog: &mut ElfCatalog, placement: PlacementMode) -> Result<Prepared, String> {
    let started = std::time::Instant::now();
    let read = std::panic::AssertUnwindSafe(|| Prepared::read(pid, catalog, placement));
    let result = match std::panic::catch_unwind(read) {
        Ok(result) => result.map_err(|error| format!("{error:#}")),
        Err(payload) => {
            // The catalog may hold half of what the failed read added: start it afresh.
            *catalog = ElfCatalog::default();
            Err(format!(
                "reading it for attaching failed: {}",
                super::panic_message(payload.as_ref())
            ))
        }
    };
    debug!(
        pid,
        read_ms = started.elapsed().as_secs_f64() * 1e3,
        ok = result.is_ok(),
        "read for attaching"
    );
    result
}
