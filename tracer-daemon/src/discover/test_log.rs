//! Test support: captures the warnings code logs, so tests can check that skipped input is
//! warned about and not dropped silently.

use std::{
    io,
    sync::{Arc, Mutex, PoisonError},
};

use tracing_subscriber::fmt::MakeWriter;

/// Log text written by a test's subscriber.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl io::Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut log = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        log.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'writer> MakeWriter<'writer> for CapturedLog {
    type Writer = Self;

    fn make_writer(&'writer self) -> Self::Writer {
        self.clone()
    }
}

/// Runs `body` with a subscriber (this thread only) that records warnings and errors; returns
/// what `body` returned and the log lines.
pub(crate) fn capture_warnings<T>(body: impl FnOnce() -> T) -> (T, Vec<String>) {
    let log = CapturedLog::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .without_time()
        .with_max_level(tracing::Level::WARN)
        .finish();
    let value = tracing::subscriber::with_default(subscriber, body);
    let bytes = log.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let lines = String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_owned)
        .collect();
    (value, lines)
}

/// Asserts that exactly one warning line holds every one of `needles`.
#[track_caller]
pub(crate) fn assert_one_warning(log: &[String], needles: &[&str]) {
    let matching: Vec<&String> = log
        .iter()
        .filter(|line| line.contains("WARN") && needles.iter().all(|needle| line.contains(needle)))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "expected one warning with {needles:?}, got {matching:?} in {log:#?}"
    );
}
