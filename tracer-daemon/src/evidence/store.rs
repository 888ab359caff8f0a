//! The node's evidence store: what was captured when a container neared its memory limit or was
//! OOM-killed, kept in `<dir>/evidence.redb` (a hostPath) so it outlives daemon and pod restarts
//! and a `kill -9` of the daemon mid-write.
//!
//! Format version 1, one redb file whose three tables change together in each transaction (so the
//! counters never disagree with the records):
//! - `evidence_meta`: id (`u64`) → [`EvidenceMeta`] as JSON, which is self-describing: a later
//!   daemon can add `Option` fields and still read old records.
//! - `evidence_payload`: id (`u64`) → payload bytes, apart so that listing never reads payloads.
//! - `evidence_state`: name → `u64`: `format_version`, `next_id`, `payload_bytes_total`.

use std::fs;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase as _, ReadableTable, Table, TableDefinition};
use redb::{ReadableTableMetadata as _, WriteTransaction};
use serde::{Deserialize, Serialize};

const FILE_NAME: &str = "evidence.redb";
const METAS: TableDefinition<u64, &[u8]> = TableDefinition::new("evidence_meta");
const PAYLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("evidence_payload");
const STATE: TableDefinition<&str, u64> = TableDefinition::new("evidence_state");
const FORMAT_VERSION_KEY: &str = "format_version";
const NEXT_ID_KEY: &str = "next_id";
const PAYLOAD_BYTES_KEY: &str = "payload_bytes_total";
const FORMAT_VERSION: u64 = 1;
const DEFAULT_LIST_LIMIT: usize = 100;
/// redb would cache up to 1 GiB; the daemon lives under a pod memory limit and reads evidence
/// rarely, so a small cache costs nothing that matters.
const CACHE_SIZE_BYTES: usize = 16 * 1024 * 1024;

/// What the store keeps about each record besides its payload (small; listing reads only these).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceMeta {
    /// Assigned by [`EvidenceStore::put`], from 1, strictly increasing and never reused, even
    /// after retention dropped records or the daemon restarted.
    pub id: u64,
    /// What triggered the capture, e.g. `threshold`, `memory_events`, `psi`, `oom_kill`.
    pub kind: String,
    /// When the evidence was captured, in milliseconds since the Unix epoch.
    pub taken_at_unix_ms: u64,
    /// Kubernetes namespace of the pod, if known.
    pub namespace: Option<String>,
    /// Name of the pod, if known.
    pub pod_name: Option<String>,
    /// UID of the pod, if known.
    pub pod_uid: Option<String>,
    /// Name of the container, if known.
    pub container: Option<String>,
    /// Process the evidence is about, if one.
    pub pid: Option<u32>,
    /// One line for listings, e.g. "90% of limit (57.6 MiB / 64 MiB)".
    pub summary: String,
    /// Size of the payload; set by [`EvidenceStore::put`].
    pub payload_bytes: u64,
}

/// Retention: the oldest records go first when either bound is exceeded.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Most records kept; at least 1.
    pub max_records: usize,
    /// Most payload bytes kept in total (metas are small and not counted); at least 1.
    pub max_bytes: u64,
}

impl Default for Retention {
    /// 1000 records and 256 MiB.
    fn default() -> Self {
        Self {
            max_records: 1000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Which records to list; every field that is set must match.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only records of this namespace.
    pub namespace: Option<String>,
    /// Only records of pods with this name.
    pub pod_name: Option<String>,
    /// Only records of the pod with this UID.
    pub pod_uid: Option<String>,
    /// Only records of this kind.
    pub kind: Option<String>,
    /// Only records taken at or after this time (milliseconds since the Unix epoch).
    pub since_unix_ms: Option<u64>,
    /// Only records taken at or before this time (milliseconds since the Unix epoch).
    pub until_unix_ms: Option<u64>,
    /// At most this many records; 100 if unset.
    pub limit: Option<usize>,
}

impl ListFilter {
    fn matches(&self, meta: &EvidenceMeta) -> bool {
        let same = |wanted: &Option<String>, actual: Option<&String>| {
            wanted.as_ref().is_none_or(|wanted| actual == Some(wanted))
        };
        same(&self.namespace, meta.namespace.as_ref())
            && same(&self.pod_name, meta.pod_name.as_ref())
            && same(&self.pod_uid, meta.pod_uid.as_ref())
            && same(&self.kind, Some(&meta.kind))
            && self
                .since_unix_ms
                .is_none_or(|since| meta.taken_at_unix_ms >= since)
            && self
                .until_unix_ms
                .is_none_or(|until| meta.taken_at_unix_ms <= until)
    }
}

/// Failures of the evidence store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The retention bounds would drop every record, including the one just stored.
    #[error(
        "evidence retention of {max_records} records / {max_bytes} bytes keeps nothing; \
         set both to at least 1"
    )]
    InvalidRetention {
        /// The configured record bound.
        max_records: usize,
        /// The configured byte bound.
        max_bytes: u64,
    },
    /// The store's directory cannot be created, or a new file's entry in it cannot be synced.
    #[error(
        "evidence directory {} is unusable (is the hostPath mounted and writable?)",
        dir.display()
    )]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// What the system reported.
        #[source]
        source: std::io::Error,
    },
    /// Another process has the database open.
    #[error(
        "evidence store {} is locked by another process (is another tracer-daemon running?)",
        path.display()
    )]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// The database file cannot be opened: unreadable, not a redb file, or damaged.
    #[error(
        "cannot open evidence store {}; if it is damaged, move it aside and restart the daemon \
         to start an empty store",
        path.display()
    )]
    Open {
        /// The database file.
        path: PathBuf,
        /// What redb reported.
        #[source]
        source: Box<redb::DatabaseError>,
    },
    /// The database was written by a newer daemon, in a format this one cannot read.
    #[error(
        "evidence store {} has format version {found}, this daemon reads only {supported}; \
         run a newer daemon or move the file aside",
        path.display()
    )]
    UnsupportedFormat {
        /// The database file.
        path: PathBuf,
        /// The version in the file.
        found: u64,
        /// The version this code reads and writes.
        supported: u64,
    },
    /// A payload alone is larger than the whole byte budget, so it could never be kept.
    #[error(
        "evidence payload of {payload_bytes} bytes exceeds the retention limit of {max_bytes} \
         bytes; capture less or raise the limit"
    )]
    PayloadTooLarge {
        /// Size of the refused payload.
        payload_bytes: u64,
        /// The retention's byte bound.
        max_bytes: u64,
    },
    /// A database operation failed on an open store (disk full, I/O error, damaged page).
    #[error("evidence store {}: failed to {action}", path.display())]
    Database {
        /// The database file.
        path: PathBuf,
        /// What the store was doing.
        action: &'static str,
        /// What redb reported.
        #[source]
        source: Box<redb::Error>,
    },
    /// A record's meta cannot be encoded or, once stored, decoded.
    #[error(
        "evidence store {}: the meta of record {id} cannot be encoded or decoded",
        path.display()
    )]
    Meta {
        /// The database file.
        path: PathBuf,
        /// The record's id.
        id: u64,
        /// What `serde_json` reported.
        #[source]
        source: serde_json::Error,
    },
}

/// What went wrong inside a transaction, before [`EvidenceStore::run`] names the file.
enum Failure {
    Database(redb::Error),
    Meta(u64, serde_json::Error),
    UnsupportedFormat(u64),
}

impl<E: Into<redb::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Self::Database(error.into())
    }
}

/// The three tables of the format, opened in one write transaction.
struct Tables<'txn> {
    metas: Table<'txn, u64, &'static [u8]>,
    payloads: Table<'txn, u64, &'static [u8]>,
    state: Table<'txn, &'static str, u64>,
}

impl<'txn> Tables<'txn> {
    /// Opening also creates them, so read transactions never meet a missing table.
    fn open(txn: &'txn WriteTransaction) -> Result<Self, Failure> {
        let (metas, payloads) = (txn.open_table(METAS)?, txn.open_table(PAYLOADS)?);
        let state = txn.open_table(STATE)?;
        Ok(Self {
            metas,
            payloads,
            state,
        })
    }

    /// Drops the oldest records until both bounds hold.
    fn enforce(&mut self, retention: Retention) -> Result<(), Failure> {
        let mut records = self.metas.len()?;
        let initial_bytes = counter(&self.state, PAYLOAD_BYTES_KEY)?;
        let mut total_bytes = initial_bytes;
        while records > retention.max_records as u64 || total_bytes > retention.max_bytes {
            let Some((id, size)) = self
                .payloads
                .pop_first()?
                .map(|(id, payload)| (id.value(), payload.value().len() as u64))
            else {
                break;
            };
            self.metas.remove(id)?;
            total_bytes = total_bytes.saturating_sub(size);
            records -= 1;
        }
        if total_bytes != initial_bytes {
            self.state.insert(PAYLOAD_BYTES_KEY, total_bytes)?;
        }
        Ok(())
    }
}

/// A counter of the state table; 0 if never written.
fn counter(state: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64, Failure> {
    Ok(state.get(key)?.map_or(0, |value| value.value()))
}

/// The node's evidence records, in one redb database that one process holds open at a time.
pub struct EvidenceStore {
    db: Database,
    path: PathBuf,
    retention: Retention,
}

// The daemon's agent owns the store and may move between runtime threads; errors travel into
// `anyhow` at the binary's edge.
const _: () = {
    const fn assert_send<T: Send>() {}
    const fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send::<EvidenceStore>();
    assert_send_sync::<StoreError>();
};

impl EvidenceStore {
    /// Opens (creating if needed) `<dir>/evidence.redb`, creating `dir` with mode 0700 if missing,
    /// and applies `retention` at once, so lowering it takes effect on restart.
    ///
    /// Opening after a crash or `kill -9` works: redb commits by switching between two checksummed
    /// commit slots, so an interrupted commit is simply absent and the last acknowledged one is
    /// used, after redb rebuilds its allocator state. Every open also verifies the checksums of the
    /// whole file (about `max_bytes` at most), because redb otherwise trusts a cleanly closed file
    /// and may panic on one damaged outside it; this way damage is [`StoreError::Open`].
    pub fn open(dir: &Path, retention: Retention) -> Result<Self, StoreError> {
        let Retention {
            max_records,
            max_bytes,
        } = retention;
        if max_records == 0 || max_bytes == 0 {
            return Err(StoreError::InvalidRetention {
                max_records,
                max_bytes,
            });
        }
        let dir_error = |source| StoreError::Directory {
            dir: dir.to_path_buf(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_error)?;
        let path = dir.join(FILE_NAME);
        let existed = path.exists();
        let db = redb::Builder::new()
            .set_cache_size(CACHE_SIZE_BYTES)
            .set_check_integrity_on_open(true)
            .create(&path)
            .map_err(|source| match source {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    StoreError::Locked { path: path.clone() }
                }
                source => StoreError::Open {
                    path: path.clone(),
                    source: Box::new(source),
                },
            })?;
        if !existed {
            // A new file's directory entry must reach the disk too, or a power loss could lose
            // the whole file although every commit in it was fsync'd.
            fs::File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(dir_error)?;
        }
        let store = Self {
            db,
            path,
            retention,
        };
        store.run("initialize the store", || {
            let txn = store.db.begin_write()?;
            {
                let mut tables = Tables::open(&txn)?;
                match counter(&tables.state, FORMAT_VERSION_KEY)? {
                    0 => {
                        tables.state.insert(FORMAT_VERSION_KEY, FORMAT_VERSION)?;
                    }
                    FORMAT_VERSION => {}
                    found => return Err(Failure::UnsupportedFormat(found)),
                }
                tables.enforce(retention)?;
            }
            Ok(txn.commit()?)
        })?;
        Ok(store)
    }

    /// Stores a record and returns its new id; `meta.id` and `meta.payload_bytes` are ignored.
    ///
    /// The record and the retention it triggers are one transaction, committed with fsync before
    /// this returns: a returned id survives a crash, and a crash before that leaves no trace of
    /// the record (nor drops older ones for it). A payload larger than the retention's
    /// `max_bytes` is refused.
    pub fn put(&self, mut meta: EvidenceMeta, payload: &[u8]) -> Result<u64, StoreError> {
        let payload_bytes = payload.len() as u64;
        let max_bytes = self.retention.max_bytes;
        if payload_bytes > max_bytes {
            return Err(StoreError::PayloadTooLarge {
                payload_bytes,
                max_bytes,
            });
        }
        self.run("store a record", || {
            let mut txn = self.db.begin_write()?;
            // redb's default already, pinned because put's contract rests on it.
            txn.set_durability(Durability::Immediate)?;
            let id = {
                let mut tables = Tables::open(&txn)?;
                let id = counter(&tables.state, NEXT_ID_KEY)?.max(1);
                meta.id = id;
                meta.payload_bytes = payload_bytes;
                let encoded =
                    serde_json::to_vec(&meta).map_err(|error| Failure::Meta(id, error))?;
                let total_bytes = counter(&tables.state, PAYLOAD_BYTES_KEY)? + payload_bytes;
                tables.metas.insert(id, encoded.as_slice())?;
                tables.payloads.insert(id, payload)?;
                tables.state.insert(NEXT_ID_KEY, id + 1)?;
                tables.state.insert(PAYLOAD_BYTES_KEY, total_bytes)?;
                tables.enforce(self.retention)?;
                id
            };
            txn.commit()?;
            Ok(id)
        })
    }

    /// One record's meta and payload, or `None` if there is no such id (never stored, or dropped
    /// by retention).
    pub fn get(&self, id: u64) -> Result<Option<(EvidenceMeta, Vec<u8>)>, StoreError> {
        self.run("read a record", || {
            let txn = self.db.begin_read()?;
            let Some(encoded) = txn.open_table(METAS)?.get(id)? else {
                return Ok(None);
            };
            let meta = serde_json::from_slice(encoded.value()).map_err(|e| Failure::Meta(id, e))?;
            // Both are written in one transaction, so only damage can separate them.
            let missing = || redb::Error::Corrupted(format!("record {id} has no payload"));
            let payload = txn.open_table(PAYLOADS)?.get(id)?.ok_or_else(missing)?;
            Ok(Some((meta, payload.value().to_vec())))
        })
    }

    /// Metas matching the filter, newest (highest id, i.e. last stored) first, at most `limit`
    /// (default 100). Reads no payloads.
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<EvidenceMeta>, StoreError> {
        let limit = filter.limit.unwrap_or(DEFAULT_LIST_LIMIT);
        self.run("list records", || {
            let mut found = Vec::new();
            let txn = self.db.begin_read()?;
            for entry in txn.open_table(METAS)?.iter()?.rev() {
                if found.len() >= limit {
                    break;
                }
                let (id, encoded) = entry?;
                let meta: EvidenceMeta = serde_json::from_slice(encoded.value())
                    .map_err(|error| Failure::Meta(id.value(), error))?;
                if filter.matches(&meta) {
                    found.push(meta);
                }
            }
            Ok(found)
        })
    }

    /// Record count and total payload bytes (for metrics).
    pub fn usage(&self) -> Result<(usize, u64), StoreError> {
        self.run("measure the store", || {
            let txn = self.db.begin_read()?;
            let records = txn.open_table(METAS)?.len()?;
            let total_bytes = counter(&txn.open_table(STATE)?, PAYLOAD_BYTES_KEY)?;
            Ok((usize::try_from(records).unwrap_or(usize::MAX), total_bytes))
        })
    }

    /// Runs `work` and names this store's file in its failure.
    fn run<T>(
        &self,
        action: &'static str,
        work: impl FnOnce() -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        work().map_err(|failure| {
            let path = self.path.clone();
            match failure {
                Failure::Database(source) => StoreError::Database {
                    path,
                    action,
                    source: Box::new(source),
                },
                Failure::Meta(id, source) => StoreError::Meta { path, id, source },
                Failure::UnsupportedFormat(found) => StoreError::UnsupportedFormat {
                    path,
                    found,
                    supported: FORMAT_VERSION,
                },
            }
        })
    }
}

#[cfg(test)]
mod tests;
