//! Closing probe links off the agent's thread. The kernel takes about 100 ms to remove one
//! uprobe (it waits for every CPU to leave the probe), so a process's ~20 links take about two
//! seconds; on the agent's own thread that would stall every request, discovery and OOM
//! capture each time a traced process exits. Links go to one background thread instead, and
//! the agent learns which processes are fully detached (their records can then go: no probe
//! can write them any more).

use std::{
    collections::HashMap,
    sync::{Arc, Condvar, Mutex, mpsc},
};

use tracing::warn;

use crate::bpf::uprobes::ProbeLink;

/// A process's links, in the order they are to be closed; dropping this detaches them.
#[derive(Debug, Default)]
#[expect(
    dead_code,
    reason = "the links are held only to be dropped: dropping detaches them"
)]
pub struct DetachedLinks {
    pub(super) links: Vec<ProbeLink>,
}

#[derive(Default)]
struct State {
    /// Pids whose links are still being closed, with how many batches of them (an exec or a
    /// failed attach can send a second batch before the first is closed).
    pending: HashMap<u32, usize>,
    /// Pids whose links are closed, not yet taken by the agent.
    closed: Vec<u32>,
}

impl State {
    /// One batch of a process's links is closed; the process is closed with its last batch.
    fn closed_one(&mut self, pid: u32) {
        if let Some(batches) = self.pending.get_mut(&pid) {
            *batches -= 1;
            if *batches == 0 {
                let _ = self.pending.remove(&pid);
                self.closed.push(pid);
            }
        }
    }
}

/// The background closer.
pub struct LinkCloser {
    queue: Option<mpsc::Sender<(u32, DetachedLinks)>>,
    state: Arc<(Mutex<State>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Default for LinkCloser {
    fn default() -> Self {
        Self::new()
    }
}

impl LinkCloser {
    /// Starts the closing thread (without one, links are closed on the caller's thread).
    pub fn new() -> Self {
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let (queue, inbox) = mpsc::channel::<(u32, DetachedLinks)>();
        let shared = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("tracer-detach".into())
            .spawn(move || {
                for (pid, links) in inbox {
                    drop(links);
                    let (lock, changed) = &*shared;
                    let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
                    state.closed_one(pid);
                    changed.notify_all();
                }
            });
        match thread {
            Ok(thread) => Self {
                queue: Some(queue),
                state,
                thread: Some(thread),
            },
            Err(error) => {
                warn!(%error, "cannot start the detaching thread; links close on the agent's thread");
                Self {
                    queue: None,
                    state,
                    thread: None,
                }
            }
        }
    }

    /// Closes a process's links in the background.
    pub fn close(&self, pid: u32, links: DetachedLinks) {
        let (lock, _) = &*self.state;
        *lock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .entry(pid)
            .or_default() += 1;
        let unsent = match &self.queue {
            Some(queue) => queue.send((pid, links)).err().map(|e| e.0),
            None => Some((pid, links)),
        };
        if let Some((pid, links)) = unsent {
            drop(links);
            lock.lock()
                .unwrap_or_else(|e| e.into_inner())
                .closed_one(pid);
        }
    }

    /// Whether a process's links are still being closed.
    pub fn is_closing(&self, pid: u32) -> bool {
        let (lock, _) = &*self.state;
        lock.lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .contains_key(&pid)
    }

    /// Waits until a process's links are closed.
    pub fn wait_for(&self, pid: u32) {
        let (lock, changed) = &*self.state;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        while state.pending.contains_key(&pid) {
            state = changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The processes fully detached since the last call.
    pub fn take_closed(&self) -> Vec<u32> {
        let (lock, _) = &*self.state;
        std::mem::take(&mut lock.lock().unwrap_or_else(|e| e.into_inner()).closed)
    }
}

impl Drop for LinkCloser {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has closed everything sent.
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
