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
//!
//! Beside it, `evidence.next-id` holds the next id as text, written after each commit: redb
//! falls back to the previous commit when the newest one is damaged, without a word, and this
//! mark is how such a rollback is seen (and ids are never given twice). A new store is created
//! under a temporary name and renamed into place once initialized, so a start that fails (a full
//! disk) never leaves a file that blocks the next start; a damaged store is moved aside, named
//! in the log and in [`EvidenceStore::health`], and a fresh one continues the ids. After a
//! failed write (disk full, I/O error) the database is reopened, so saving recovers by itself.

use std::fs;
use std::io::Read as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use redb::{Database, Durability, ReadableDatabase as _, ReadableTable, Table, TableDefinition};
use redb::{ReadableTableMetadata as _, WriteTransaction};
use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use crate::evidence::model::Subject;

const FILE_NAME: &str = "evidence.redb";
/// The next id, as text, written after each commit (see the module docs).
const MARK_NAME: &str = "evidence.next-id";
/// A new store while it is being created.
const NEW_NAME: &str = "evidence.redb.new";
/// The first bytes of every redb file that has ever been initialized.
const REDB_MAGIC_LEN: usize = 9;
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
    /// Whose evidence it is.
    #[serde(flatten)]
    pub subject: Subject,
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
        let subject = &meta.subject;
        same(&self.namespace, subject.namespace.as_ref())
            && same(&self.pod_name, subject.pod_name.as_ref())
            && same(&self.pod_uid, subject.pod_uid.as_ref())
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
    /// The database could not be reopened after a failed write (it is retried on the next use).
    #[error("evidence store {} is unavailable: reopening it after a failed write failed", path.display())]
    Unavailable {
        /// The database file.
        path: PathBuf,
        /// Why it could not be reopened.
        #[source]
        source: Box<StoreError>,
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

/// What the store found wrong with itself, for the log, metrics and the API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreHealth {
    /// Damage found when the store was opened (records lost, or the file moved aside), in
    /// words; `None` when it opened whole.
    pub damage: Option<String>,
    /// Ids given before that can no longer be served (rolled back by damage).
    pub lost_ids: u64,
    /// The cause of the last failed write since the last successful one.
    pub last_failure: Option<String>,
    /// Times the database was reopened after a failed write.
    pub reopened: u64,
}

/// The node's evidence records, in one redb database that one process holds open at a time.
pub struct EvidenceStore {
    /// `None` after a failed write, until it is reopened.
    db: Mutex<Option<Database>>,
    path: PathBuf,
    retention: Retention,
    health: Mutex<StoreHealth>,
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
    /// and may panic on one damaged outside it. A file that was never initialized (a start that
    /// failed on a full disk) is set aside; a damaged one too, with the damage in [`Self::health`],
    /// and a rollback to an older commit is found by the `evidence.next-id` mark.
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
        let mut health = StoreHealth::default();
        let mut set_aside_damaged = false;
        if never_initialized(&path) {
            let aside = set_aside(&path, "uninitialized").map_err(dir_error)?;
            warn!(
                file = %aside.display(),
                "the evidence store was never initialized (a start failed, e.g. on a full disk); set aside"
            );
        }
        if !path.exists() {
            create(dir, &path)?;
        }
        let db = match open_database(&path) {
            Ok(db) => db,
            Err(StoreError::Open { source, .. }) if is_damage(&source) => {
                let aside = set_aside(&path, "damaged").map_err(dir_error)?;
                let damage = format!(
                    "the evidence store was damaged ({source}); it was moved to {} and a new \
                     store started: its records are not served",
                    aside.display()
                );
                error!(file = %aside.display(), "{damage}");
                health.damage = Some(damage);
                set_aside_damaged = true;
                create(dir, &path)?;
                open_database(&path)?
            }
            Err(error) => return Err(error),
        };
        let store = Self {
            db: Mutex::new(Some(db)),
            path,
            retention,
            health: Mutex::new(health),
        };
        store.initialize(set_aside_damaged)?;
        Ok(store)
    }

    /// Checks the format, applies retention, and continues the ids after the mark: a store whose
    /// next id is below it lost its newest commits (redb rolled back to an older one).
    fn initialize(&self, set_aside_damaged: bool) -> Result<(), StoreError> {
        let mark = read_mark(&self.mark_path());
        let retention = self.retention;
        let (next_id, lost) = self.run("initialize the store", |db| {
            let txn = db.begin_write()?;
            let result = {
                let mut tables = Tables::open(&txn)?;
                match counter(&tables.state, FORMAT_VERSION_KEY)? {
                    0 => {
                        tables.state.insert(FORMAT_VERSION_KEY, FORMAT_VERSION)?;
                    }
                    FORMAT_VERSION => {}
                    found => return Err(Failure::UnsupportedFormat(found)),
                }
                let next_id = counter(&tables.state, NEXT_ID_KEY)?.max(1);
                let lost = match mark {
                    Some(mark) if mark > next_id => {
                        tables.state.insert(NEXT_ID_KEY, mark)?;
                        Some((next_id, mark))
                    }
                    _ => None,
                };
                tables.enforce(retention)?;
                (lost.map_or(next_id, |(_, mark)| mark), lost)
            };
            txn.commit()?;
            Ok(result)
        })?;
        if let Some((first, mark)) = lost {
            let mut health = self.lock_health();
            health.lost_ids = mark - first;
            if set_aside_damaged {
                if let Some(damage) = &mut health.damage {
                    damage.push_str(&format!(
                        "; ids {first} to {} are not served, new records continue at id {mark}",
                        mark - 1
                    ));
                }
            } else {
                let damage = format!(
                    "the evidence store lost its newest records (ids {first} to {}): its file was \
                     damaged and redb fell back to an older commit; new records continue at id \
                     {mark}",
                    mark - 1
                );
                error!(lost_from = first, lost_to = mark - 1, "{damage}");
                health.damage = Some(damage);
            }
        }
        write_mark(&self.mark_path(), next_id);
        Ok(())
    }

    /// What the store found wrong with itself.
    pub fn health(&self) -> StoreHealth {
        self.lock_health().clone()
    }

    fn lock_health(&self) -> MutexGuard<'_, StoreHealth> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mark_path(&self) -> PathBuf {
        self.path.with_file_name(MARK_NAME)
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
        let result = self.run("store a record", |db| {
            let mut txn = db.begin_write()?;
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
        });
        match result {
            Ok(id) => {
                write_mark(&self.mark_path(), id + 1);
                self.lock_health().last_failure = None;
                Ok(id)
            }
            Err(error) => {
                // redb refuses every later write on a handle that saw an I/O error (even once
                // space is back): the next use opens the file afresh.
                if matches!(error, StoreError::Database { .. }) {
                    *self.lock_db() = None;
                }
                self.lock_health().last_failure = Some(crate::error_chain(&error));
                Err(error)
            }
        }
    }

    /// One record's meta and payload, or `None` if there is no such id (never stored, or dropped
    /// by retention).
    pub fn get(&self, id: u64) -> Result<Option<(EvidenceMeta, Vec<u8>)>, StoreError> {
        self.run("read a record", |db| {
            let txn = db.begin_read()?;
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
        self.run("list records", |db| {
            let mut found = Vec::new();
            let txn = db.begin_read()?;
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
        self.run("measure the store", |db| {
            let txn = db.begin_read()?;
            let records = txn.open_table(METAS)?.len()?;
            let total_bytes = counter(&txn.open_table(STATE)?, PAYLOAD_BYTES_KEY)?;
            Ok((usize::try_from(records).unwrap_or(usize::MAX), total_bytes))
        })
    }

    fn lock_db(&self) -> MutexGuard<'_, Option<Database>> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `work` on the database (reopening it first after a failed write) and names this
    /// store's file in its failure.
    fn run<T>(
        &self,
        action: &'static str,
        work: impl FnOnce(&Database) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let mut db = self.lock_db();
        if db.is_none() {
            match open_database(&self.path) {
                Ok(reopened) => {
                    *db = Some(reopened);
                    self.lock_health().reopened += 1;
                    warn!(file = %self.path.display(), "evidence store reopened after a failed write");
                }
                Err(source) => {
                    return Err(StoreError::Unavailable {
                        path: self.path.clone(),
                        source: Box::new(source),
                    });
                }
            }
        }
        let Some(database) = db.as_ref() else {
            unreachable!("opened above");
        };
        work(database).map_err(|failure| {
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

/// Opens an existing database file with the store's settings.
fn open_database(path: &Path) -> Result<Database, StoreError> {
    redb::Builder::new()
        .set_cache_size(CACHE_SIZE_BYTES)
        .set_check_integrity_on_open(true)
        .create(path)
        .map_err(|source| match source {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                path: path.to_path_buf(),
            },
            source => StoreError::Open {
                path: path.to_path_buf(),
                source: Box::new(source),
            },
        })
}

/// Creates an empty, initialized store at `path` under a temporary name first: a failure (a
/// full disk) leaves no file at `path` to block the next start.
fn create(dir: &Path, path: &Path) -> Result<(), StoreError> {
    let new = dir.join(NEW_NAME);
    let _ = fs::remove_file(&new);
    let created = (|| {
        let db = open_database(&new)?;
        let txn = db
            .begin_write()
            .map_err(|e| database_error(&new, e.into()))?;
        {
            let tables = Tables::open(&txn).map_err(|failure| match failure {
                Failure::Database(e) => database_error(&new, e),
                _ => database_error(&new, redb::Error::Corrupted("creating tables".into())),
            });
            let mut tables = tables?;
            tables
                .state
                .insert(FORMAT_VERSION_KEY, FORMAT_VERSION)
                .map_err(|e| database_error(&new, e.into()))?;
        }
        txn.commit().map_err(|e| database_error(&new, e.into()))?;
        drop(db);
        fs::rename(&new, path).map_err(|source| StoreError::Directory {
            dir: dir.to_path_buf(),
            source,
        })?;
        // The new file's directory entry must reach the disk too, or a power loss could lose
        // the whole file although every commit in it was fsync'd.
        fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| StoreError::Directory {
                dir: dir.to_path_buf(),
                source,
            })
    })();
    if created.is_err() {
        let _ = fs::remove_file(&new);
    }
    created
}

fn database_error(path: &Path, source: redb::Error) -> StoreError {
    StoreError::Database {
        path: path.to_path_buf(),
        action: "create the store",
        source: Box::new(source),
    }
}

/// True for a file that exists but never got redb's magic number: redb writes it last when it
/// initializes a file, so all zeros (or fewer bytes) there means nothing was ever committed.
fn never_initialized(path: &Path) -> bool {
    let Ok(mut file) = fs::File::open(path) else {
        return false;
    };
    let mut head = [0u8; REDB_MAGIC_LEN];
    match file.read(&mut head) {
        Ok(read) => read < REDB_MAGIC_LEN || head.iter().all(|&b| b == 0),
        Err(_) => false,
    }
}

/// Whether an open failure means the file is damaged (not locked, not unreadable for now).
fn is_damage(error: &redb::DatabaseError) -> bool {
    match error {
        // Every store this daemon wrote is in redb's current format: a claim of an older one is
        // a damaged header (a flipped version byte).
        redb::DatabaseError::UpgradeRequired(_) => true,
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => true,
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// Renames a store file aside as `<name>.<why>-<unix ms>`; returns the new path.
fn set_aside(path: &Path, why: &str) -> std::io::Result<PathBuf> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let aside = path.with_file_name(format!("{FILE_NAME}.{why}-{millis}"));
    fs::rename(path, &aside)?;
    Ok(aside)
}

/// The next-id mark, when there is a readable one.
fn read_mark(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Writes the next-id mark (after a commit, so it can lag the store but never lead it).
fn write_mark(path: &Path, next_id: u64) {
    let temporary = path.with_extension("tmp");
    let written = fs::write(&temporary, format!("{next_id}\n"))
        .and_then(|()| fs::File::open(&temporary)?.sync_all())
        .and_then(|()| fs::rename(&temporary, path));
    if let Err(error) = written {
        warn!(%error, file = %path.display(), "cannot write the evidence id mark; a rollback of the newest records would go unnoticed");
    }
}

#[cfg(test)]
mod tests;
