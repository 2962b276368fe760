//! Job outcome records (docs/guarantees.md "One outcome, once"): what makes a redelivered or replayed job id safe.
//!
//! A record is written when a job reaches its outcome, *before* the outcome is published, and marked
//! committed once the broker has taken the event and the ack together. So after a crash:
//! - no record: the provider call may or may not have happened (in doubt) → the job is delivered again;
//! - a record not committed, on the broker's redelivery: the job was delivered, its event never left → the
//!   stored event is published;
//! - a committed record: the job is finished → a duplicate, not sent again.
//!
//! Marks are not urgent: a job whose ack committed is never redelivered, and only the broker's redelivery
//! of a job republishes an uncommitted record (a replay finding one is a duplicate), so a lost mark
//! changes neither whether a job is sent nor how many events it gets.
//!
//! A retried job leaves a [`Entry::Retrying`] entry: the attempt number of its next copy comes from here,
//! never from a header a publisher could write.
//!
//! With Redis, a job id under way is also *claimed* across replicas (`SET NX` with a lease a little longer
//! than the worst provider call): a second copy on another replica waits until the claim is released (at
//! commit, or once the outcome record is durable) or expires (its holder died: the job is in doubt, docs/guarantees.md
//! "In doubt").
//!
//! Embedded SQLite (WAL, `synchronous=NORMAL`: every commit reaches the OS before the reply, so a killed
//! process loses nothing, with no fsync per job) or Redis when `[redis] url` is set, shared by replicas.
//! Every failed store operation is counted in `herald_store_errors_total{op}`: while it fails, a job whose
//! record cannot be read is held and a record that cannot be written is retried, its commit waiting: a delay,
//! never a repeat (docs/guarantees.md "When the outcome store fails").

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::IntCounterVec;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::sync::lock;

/// Records are kept at least this long (docs/guarantees.md: at least 24 h), then dropped.
pub const RETENTION: Duration = Duration::from_secs(25 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The outcome event, as published (it holds only masked data).
    pub event: String,
    /// `x-herald-error` when the job also went to the dead-letter queue.
    pub dead_reason: Option<String>,
    #[serde(default)]
    pub committed: bool,
}

/// What the store knows of a job id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// The job reached its outcome.
    Outcome(Record),
    /// An attempt failed and a retry is scheduled: the next copy of the job is attempt `next_attempt`,
    /// and it already passed the limits.
    Retrying { next_attempt: u32 },
    /// What herald knows of a workflow (docs/workflows.md), under the keys of [`crate::workflow`].
    Workflow(WorkflowEntry),
}

/// A workflow's state in the store: never a code or an address, only where the workflow stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkflowEntry {
    /// Under the job id: step `step` reached its outcome at `at_ms` (ms since the epoch), `failed` or sent;
    /// `sent` steps were sent so far. The check for it waits in the broker.
    Step {
        step: u32,
        at_ms: u64,
        failed: bool,
        sent: u32,
        /// The token of the step's check chain ([`crate::broker::CHECK_HEADER`]).
        #[serde(default)]
        check: String,
    },
    /// Under a step's receipt key: the step's message got its final receipt.
    Receipt { delivered: bool },
    /// Under the job's verified key: `verified: true` feedback came for the job.
    Verified,
}

/// The wire form of an [`Entry`] in Redis: a record, plus `next_attempt` for a retry (older herald
/// versions wrote records without it).
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(default)]
    event: String,
    #[serde(default)]
    dead_reason: Option<String>,
    #[serde(default)]
    committed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_attempt: Option<u32>,
    /// A [`WorkflowEntry`] as JSON (its own column in SQLite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    workflow: Option<String>,
}

impl From<&Entry> for Stored {
    fn from(entry: &Entry) -> Stored {
        match entry {
            Entry::Outcome(r) => Stored {
                event: r.event.clone(),
                dead_reason: r.dead_reason.clone(),
                committed: r.committed,
                next_attempt: None,
                workflow: None,
            },
            Entry::Retrying { next_attempt } => Stored {
                event: String::new(),
                dead_reason: None,
                committed: false,
                next_attempt: Some(*next_attempt),
                workflow: None,
            },
            Entry::Workflow(w) => Stored {
                event: String::new(),
                dead_reason: None,
                committed: false,
                next_attempt: None,
                // Plain enums and numbers: serializing cannot fail.
                workflow: serde_json::to_string(w).ok(),
            },
        }
    }
}

impl From<Stored> for Entry {
    fn from(s: Stored) -> Entry {
        if s.event.is_empty()
            && let Some(w) = s.workflow.as_deref().and_then(|w| serde_json::from_str(w).ok())
        {
            return Entry::Workflow(w);
        }
        match s.next_attempt {
            Some(next_attempt) if s.event.is_empty() => Entry::Retrying { next_attempt },
            _ => Entry::Outcome(Record {
                event: s.event,
                dead_reason: s.dead_reason,
                committed: s.committed,
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("outcome store: state.path {}: {source}", dir.display())]
    Open {
        dir: PathBuf,
        #[source]
        source: OpenError,
    },
    /// Another read connection, opened when every open one is busy.
    #[error("outcome store: {}: {source}", path.display())]
    Reader {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("outcome store: store thread stopped")]
    Stopped,
    #[error("outcome store: record write: {0}")]
    Write(#[source] tokio::task::JoinError),
    /// Shared: a failed batch of local writes tells every write of the batch.
    #[error("outcome store: {0}")]
    Sqlite(#[source] Arc<rusqlite::Error>),
    #[error("outcome store: {0}")]
    Redis(#[source] redis::RedisError),
    #[error("outcome store: {0}")]
    Json(#[source] serde_json::Error),
    #[error("outcome store: {0}")]
    Thread(#[source] std::io::Error),
}

/// Why `state.path` does not hold a usable outcome store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Dir(#[source] std::io::Error),
    #[error("{0}")]
    Sqlite(#[source] rusqlite::Error),
    /// A read-only file or directory opens fine and fails at the first write.
    #[error("not writable: {0}")]
    NotWritable(#[source] rusqlite::Error),
    /// Not an SQLite database, or a damaged one (SQLITE_NOTADB, SQLITE_CORRUPT).
    #[error(
        "{} is malformed (not an SQLite database, or a damaged one): move it away to start with an empty store",
        path.display()
    )]
    Malformed {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{}: {source}", path.display())]
    Reader {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Sqlite(Arc::new(e))
    }
}

/// A record write under way; see [`Store::put`].
/// Once it has resolved, polling it again resolves at once: a job dropped with its connection waits on its
/// write before releasing its claim, and the commit loop may have seen that write finish already.
pub struct PendingPut(Option<futures_util::future::BoxFuture<'static, Result<(), StoreError>>>);

impl PendingPut {
    /// Both writes, resolved once both are: the first failure, if any.
    pub fn both(first: PendingPut, second: PendingPut) -> PendingPut {
        PendingPut::new(async move {
            let (a, b) = futures_util::future::join(first, second).await;
            a.and(b)
        })
    }

    fn new(write: impl Future<Output = Result<(), StoreError>> + Send + 'static) -> PendingPut {
        PendingPut(Some(Box::pin(write)))
    }
}

impl Future for PendingPut {
    type Output = Result<(), StoreError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let Some(write) = self.0.as_mut() else {
            return std::task::Poll::Ready(Ok(()));
        };
        let result = std::task::ready!(write.as_mut().poll(cx));
        self.0 = None;
        std::task::Poll::Ready(result)
    }
}

/// The outcome store of this deployment, with the counter of its failures.
pub struct Store {
    backend: Backend,
    /// `herald_store_errors_total{op}`.
    errors: IntCounterVec,
    /// Once cancelled (shutdown), a record write that keeps failing is given up after [`PUT_GRACE`].
    stopping: CancellationToken,
    /// Record writes being retried.
    retries: Arc<PutRetries>,
}

/// Record writes being retried: what `/readyz` reads, counted in `herald_store_held_jobs` with the jobs
/// held for reads, and logged once per outage (not per write).
#[derive(Default)]
struct PutRetries {
    /// Set by the first failure, cleared by the first write that succeeds again: what the log lines follow.
    failing: AtomicBool,
    now: std::sync::atomic::AtomicUsize,
    held: Option<prometheus::IntGauge>,
}

#[derive(Clone)]
enum Backend {
    Local(Arc<Local>),
    Redis(Arc<Redis>),
}

/// How long a failing record write is still retried once herald shuts down; then its job commits without
/// a record (logged), which only a later replay of the same id could repeat (docs/operations.md).
const PUT_GRACE: Duration = Duration::from_secs(5);

/// An operation of the store, the `op` label of `herald_store_errors_total`.
#[derive(Debug, Clone, Copy)]
enum StoreOp {
    Get,
    Put,
    Mark,
    Claim,
}

impl StoreOp {
    fn as_str(self) -> &'static str {
        match self {
            StoreOp::Get => "get",
            StoreOp::Put => "put",
            StoreOp::Mark => "mark",
            StoreOp::Claim => "claim",
        }
    }
}

impl Store {
    /// The embedded store in `dir` (`state.path`), checked writable now rather than at the first job.
    pub fn local(dir: &Path, errors: IntCounterVec) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Local(Arc::new(Local::open(dir, errors.clone())?)),
            errors,
            stopping: CancellationToken::new(),
            retries: Arc::default(),
        })
    }

    /// The state file found deleted or replaced under the embedded store, if one was (never with Redis).
    pub fn lost_file(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Local(s) => s.lost(),
            Backend::Redis(_) => None,
        }
    }

    /// Records and claims in Redis, shared by every replica; `lease` bounds how long a claim outlives a
    /// replica that died holding it.
    pub fn redis(
        conn: redis::aio::ConnectionManager,
        namespace: &str,
        lease: Duration,
        errors: IntCounterVec,
    ) -> Store {
        let store = Arc::new(Redis::new(conn, namespace, lease));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(Redis::renew_claims(Arc::downgrade(&store)));
        }
        Store {
            backend: Backend::Redis(store),
            errors,
            stopping: CancellationToken::new(),
            retries: Arc::default(),
        }
    }

    /// Jobs whose record write is being retried count in `held` (`herald_store_held_jobs`).
    pub fn counting_held(mut self, held: prometheus::IntGauge) -> Store {
        self.retries = Arc::new(PutRetries {
            held: Some(held),
            ..PutRetries::default()
        });
        self
    }

    /// Whether a record write is being retried: the jobs behind it wait, and `/readyz` says so.
    pub fn writes_failing(&self) -> bool {
        self.retries.now.load(Ordering::SeqCst) > 0
    }

    /// Record writes that keep failing are retried until `shutdown`, then for [`PUT_GRACE`].
    pub fn stopping_with(mut self, shutdown: CancellationToken) -> Store {
        self.stopping = shutdown;
        self
    }

    fn counted<T>(&self, op: StoreOp, result: Result<T, StoreError>) -> Result<T, StoreError> {
        count(&self.errors, op, result)
    }

    pub async fn get(&self, id: &str) -> Result<Option<Entry>, StoreError> {
        let result = match &self.backend {
            Backend::Local(s) => s.get(id),
            Backend::Redis(s) => s.get(id).await,
        };
        self.counted(StoreOp::Get, result)
    }

    /// Starts writing an entry; the returned future resolves once it is written (to the OS for SQLite,
    /// acknowledged by Redis). The consumer awaits it just before the job's broker commit, so the write
    /// overlaps the wait for that commit instead of adding to it.
    ///
    /// A write that fails is retried until it succeeds: the job's event must not leave without its record,
    /// or a copy of the job would be sent again (docs/operations.md, "Outcome store outages"). Only at
    /// shutdown is it given up, [`PUT_GRACE`] after.
    pub fn put(&self, id: &str, entry: Entry) -> PendingPut {
        let retry = Retry {
            backend: self.backend.clone(),
            id: id.to_owned(),
            errors: self.errors.clone(),
            stopping: self.stopping.clone(),
            retries: self.retries.clone(),
        };
        match &self.backend {
            Backend::Local(s) => {
                let written = s.put(id, entry.clone());
                PendingPut::new(async move {
                    match written.await.unwrap_or_else(|_| Err(StoreError::Stopped)) {
                        Ok(()) => Ok(()),
                        Err(e) => retry.until_written(e, entry).await,
                    }
                })
            }
            Backend::Redis(s) => {
                let (conn, key) = (s.conn.clone(), s.key(id));
                // A task of its own, so that the write is under way at once, like the SQLite one: the commit
                // loop only checks on it (and waits only when nothing else is ready to commit).
                let write = tokio::spawn(async move {
                    match Redis::put(conn, key, &entry).await {
                        Ok(()) => Ok(()),
                        Err(e) => retry.until_written(e, entry).await,
                    }
                });
                // Failures are counted by the retry, one per failed try.
                PendingPut::new(async move { write.await.unwrap_or_else(|e| Err(StoreError::Write(e))) })
            }
        }
    }

    /// Claims `id` for this process across replicas: `Ok(true)` when claimed (always, without Redis: one
    /// process has nothing to share), `Ok(false)` while another replica holds it.
    pub async fn try_claim(&self, id: &str) -> Result<bool, StoreError> {
        let result = match &self.backend {
            Backend::Local(_) => Ok(true),
            Backend::Redis(s) => s.try_claim(id).await,
        };
        self.counted(StoreOp::Claim, result)
    }

    /// Whether claims are shared with other replicas (and so must be released).
    pub fn shares_claims(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// Marks outcome records committed, then releases the cross-replica claims `release`, in that order:
    /// a copy waiting on a released claim must find its outcome committed. Never waits on Redis (the
    /// broker's commit loop calls it): losing a mark only means a later replay of the same id republishes
    /// its event instead of reporting a duplicate, and a claim not released expires with its lease.
    pub fn mark_committed(&self, ids: Vec<String>, release: Vec<String>) {
        match &self.backend {
            Backend::Local(s) => {
                let result = s.mark_committed(ids);
                if let Err(e) = self.counted(StoreOp::Mark, result) {
                    tracing::warn!(error = %e, "could not mark outcomes committed");
                }
            }
            Backend::Redis(s) => {
                if ids.is_empty() && release.is_empty() {
                    return;
                }
                s.forget(&release);
                let (store, errors) = (s.clone(), self.errors.clone());
                // Called from drops too: without a runtime (process exit) the leases expire on their own.
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                runtime.spawn(async move {
                    if let Err(e) = count(&errors, StoreOp::Mark, store.mark_and_release(&ids, &release).await) {
                        tracing::warn!(error = %e, "could not mark outcomes committed");
                    }
                });
            }
        }
    }

    /// Releases cross-replica claims without marking anything (the job left no outcome to commit).
    pub fn release(&self, ids: Vec<String>) {
        self.mark_committed(Vec::new(), ids);
    }
}

/// A record write that failed, written again until it succeeds (or herald has been stopping for
/// [`PUT_GRACE`]).
struct Retry {
    backend: Backend,
    id: String,
    errors: IntCounterVec,
    stopping: CancellationToken,
    retries: Arc<PutRetries>,
}

/// One write being retried, counted until it ends (written, given up or dropped).
struct Retrying(Arc<PutRetries>);

impl Retrying {
    fn start(retries: &Arc<PutRetries>) -> Retrying {
        retries.now.fetch_add(1, Ordering::SeqCst);
        if let Some(held) = &retries.held {
            held.inc();
        }
        Retrying(retries.clone())
    }
}

impl Drop for Retrying {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
        if let Some(held) = &self.0.held {
            held.dec();
        }
    }
}

impl Retry {
    async fn until_written(self, first: StoreError, entry: Entry) -> Result<(), StoreError> {
        errors_inc(&self.errors, StoreOp::Put);
        let _retrying = Retrying::start(&self.retries);
        if !self.retries.failing.swap(true, Ordering::SeqCst) {
            tracing::error!(job_id = %self.id, error = %first,
                "outcome record not written; retrying until the store takes it (its job waits)");
        }
        let mut wait = Duration::from_millis(100);
        let mut last = first;
        let mut give_up: Option<tokio::time::Instant> = None;
        loop {
            let now = tokio::time::Instant::now();
            if self.stopping.is_cancelled() && *give_up.get_or_insert(now + PUT_GRACE) <= now {
                return Err(last);
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stopping.cancelled(), if give_up.is_none() => {}
            }
            wait = (wait * 2).min(Duration::from_secs(1));
            let written = match &self.backend {
                Backend::Local(s) => s.put(&self.id, entry.clone()).await.unwrap_or(Err(StoreError::Stopped)),
                Backend::Redis(s) => Redis::put(s.conn.clone(), s.key(&self.id), &entry).await,
            };
            match written {
                Ok(()) => {
                    if self.retries.failing.swap(false, Ordering::SeqCst) {
                        tracing::info!("outcome records are written again");
                    }
                    return Ok(());
                }
                Err(e) => {
                    errors_inc(&self.errors, StoreOp::Put);
                    last = e;
                }
            }
        }
    }
}

fn errors_inc(errors: &IntCounterVec, op: StoreOp) {
    errors.with_label_values(&[op.as_str()]).inc();
}

/// Counts a failed operation in `herald_store_errors_total{op}`, passing the result on.
fn count<T>(errors: &IntCounterVec, op: StoreOp, result: Result<T, StoreError>) -> Result<T, StoreError> {
    if result.is_err() {
        errors.with_label_values(&[op.as_str()]).inc();
    }
    result
}

enum Op {
    Put(String, Entry, oneshot::Sender<Result<(), StoreError>>),
    Mark(Vec<String>),
}

/// SQLite on its own thread. Requests queue up while a transaction commits and are then served together
/// in the next one (group commit), so throughput does not hinge on one write per job.
pub struct Local {
    tx: mpsc::Sender<Op>,
    path: PathBuf,
    /// Idle read-only connections. A lookup borrows one and runs on the caller's thread: WAL readers never
    /// wait for the writer, and a point lookup costs microseconds, less than handing it to another thread
    /// and waking the caller again. There are never more than the threads looking up at once.
    readers: Mutex<Vec<rusqlite::Connection>>,
    /// Ids whose committed mark is requested but not yet written: a lookup treats them as committed.
    marking: Arc<Mutex<HashSet<String>>>,
    /// The first state file found deleted or replaced under the open store, once one is.
    lost: Arc<OnceLock<PathBuf>>,
}

impl Local {
    /// Opens (or creates) the store in `dir`; a file of it found gone later is counted in `errors`
    /// (`op="files"`).
    pub fn open(dir: &Path, errors: IntCounterVec) -> Result<Local, StoreError> {
        let named = |source: OpenError| StoreError::Open {
            dir: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| named(OpenError::Dir(e)))?;
        let path = dir.join("outcomes.sqlite");
        // A file that is not a database opens fine and fails at the first statement, whichever it is.
        let sqlite = |e: rusqlite::Error| {
            if malformed(&e) {
                named(OpenError::Malformed {
                    path: path.clone(),
                    source: e,
                })
            } else {
                named(OpenError::Sqlite(e))
            }
        };
        let conn = rusqlite::Connection::open(&path).map_err(sqlite)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA cache_size = -512; -- KiB. SQLite's 2 MiB default was the largest share of herald's
                                       -- peak memory in `herald bench`; writes touch few pages each
             PRAGMA journal_size_limit = 4194304; -- the WAL shrinks back to 4 MiB after each checkpoint
             CREATE TABLE IF NOT EXISTS outcomes (
                 id TEXT PRIMARY KEY,
                 at INTEGER NOT NULL,
                 event TEXT NOT NULL,
                 dead_reason TEXT,
                 committed INTEGER NOT NULL DEFAULT 0
             );
             CREATE INDEX IF NOT EXISTS outcomes_at ON outcomes (at);",
        )
        .map_err(sqlite)?;
        // Added after the first release: a store written by an older herald gains the column in place.
        let has_attempts: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('outcomes') WHERE name = 'next_attempt'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(sqlite)?
            > 0;
        if !has_attempts {
            conn.execute_batch("ALTER TABLE outcomes ADD COLUMN next_attempt INTEGER")
                .map_err(sqlite)?;
        }
        // Added with workflows (docs/workflows.md), in place like `next_attempt`.
        let has_workflow: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('outcomes') WHERE name = 'workflow'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(sqlite)?
            > 0;
        if !has_workflow {
            conn.execute_batch("ALTER TABLE outcomes ADD COLUMN workflow TEXT")
                .map_err(sqlite)?;
        }
        // A read-only file or directory opens fine and fails at the first write: find out now, not with
        // every job's record failing while /readyz says ready.
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             INSERT OR REPLACE INTO outcomes (id, at, event) VALUES ('', 0, '');
             DELETE FROM outcomes WHERE id = '';
             COMMIT;",
        )
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            if malformed(&e) {
                sqlite(e)
            } else {
                named(OpenError::NotWritable(e))
            }
        })?;
        // Written to once, so the WAL and its index exist: the files whose loss the store thread watches for.
        let files = StateFiles::new(&path);
        // Opened once here so that a bad path fails at start-up, then kept for the first lookup.
        let reader = open_reader(&path).map_err(|source| {
            named(OpenError::Reader {
                path: path.clone(),
                source,
            })
        })?;
        let marking: Arc<Mutex<HashSet<String>>> = Arc::default();
        let lost: Arc<OnceLock<PathBuf>> = Arc::default();
        let (tx, rx) = mpsc::channel();
        let marks = marking.clone();
        let watch = Watch {
            files,
            lost: lost.clone(),
            errors,
        };
        std::thread::Builder::new()
            .name("herald-store".into())
            .spawn(move || serve(conn, rx, marks, watch))
            .map_err(StoreError::Thread)?;
        Ok(Local {
            tx,
            path,
            readers: Mutex::new(vec![reader]),
            marking,
            lost,
        })
    }

    /// The state file found deleted or replaced, if one was: from then on records go to files no path
    /// leads to, and are gone at the next start.
    pub fn lost(&self) -> Option<&Path> {
        self.lost.get().map(PathBuf::as_path)
    }

    fn get(&self, id: &str) -> Result<Option<Entry>, StoreError> {
        let idle = lock(&self.readers).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => open_reader(&self.path).map_err(|source| StoreError::Reader {
                path: self.path.clone(),
                source,
            })?,
        };
        // The pending mark is checked before the row is read: once the writer drops it from the set, the
        // row it committed is visible to this read.
        let marked = lock(&self.marking).contains(id);
        let result = lookup(&conn, id, marked);
        lock(&self.readers).push(conn);
        result
    }

    fn put(&self, id: &str, entry: Entry) -> oneshot::Receiver<Result<(), StoreError>> {
        let (reply, rx) = oneshot::channel();
        if let Err(Op::Put(_, _, reply)) = self.tx.send(Op::Put(id.to_owned(), entry, reply)).map_err(|e| e.0) {
            let _ = reply.send(Err(StoreError::Stopped));
        }
        rx
    }

    fn mark_committed(&self, ids: Vec<String>) -> Result<(), StoreError> {
        // Noted before it is queued, so a lookup right after this (a replay) already sees it committed.
        lock(&self.marking).extend(ids.iter().cloned());
        self.send(Op::Mark(ids))
    }

    fn send(&self, op: Op) -> Result<(), StoreError> {
        self.tx.send(op).map_err(|_| StoreError::Stopped)
    }
}

/// Whether SQLite says the file is not a database or a damaged one.
fn malformed(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

/// The database, its WAL and the WAL's index, each with the device and inode it had at open. SQLite keeps
/// writing to the files it has open: one deleted (`rm` in `state.path`) or replaced under herald loses
/// every record at the next start, with nothing failing before (docs/operations.md, "State volume").
struct StateFiles(Vec<(PathBuf, Option<(u64, u64)>)>);

impl StateFiles {
    fn new(db: &Path) -> StateFiles {
        let files = ["", "-wal", "-shm"].map(|suffix| {
            let mut path = db.as_os_str().to_owned();
            path.push(suffix);
            let path = PathBuf::from(path);
            let id = file_id(&path);
            (path, id)
        });
        StateFiles(files.into_iter().collect())
    }

    /// The first file that is no longer the one opened.
    fn gone(&self) -> Option<&Path> {
        self.0
            .iter()
            // A file that did not exist at open (no WAL on some file systems) is not watched.
            .find(|(path, id)| id.is_some() && file_id(path) != *id)
            .map(|(path, _)| path.as_path())
    }
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// What the store thread watches, and whom it tells.
struct Watch {
    files: StateFiles,
    lost: Arc<OnceLock<PathBuf>>,
    errors: IntCounterVec,
}

impl Watch {
    /// Counts each check that finds a file gone (so that the counter rises for as long as it lasts, like a
    /// failing write's), logs the first and latches it for `/readyz`.
    fn check(&self) {
        if self.lost.get().is_some() {
            self.errors.with_label_values(&["files"]).inc();
            return;
        }
        if let Some(path) = self.files.gone() {
            tracing::error!(
                path = %path.display(),
                "outcome store: a state file was deleted or replaced while herald runs: the records written \
                 until the next start are lost then (replays of those jobs will be sent again); /readyz is \
                 false until herald is restarted"
            );
            self.errors.with_label_values(&["files"]).inc();
            let _ = self.lost.set(path.to_owned());
        }
    }
}

/// How often the store thread looks at its files when it has nothing else to do (it also looks after a
/// batch, at most this often).
const FILES_CHECK: Duration = Duration::from_secs(1);

fn open_reader(path: &Path) -> Result<rusqlite::Connection, rusqlite::Error> {
    rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .and_then(|conn| {
        // A point lookup reads a handful of pages: 256 KiB keeps the index's upper levels at hand.
        conn.execute_batch("PRAGMA cache_size = -256")?;
        Ok(conn)
    })
}

fn lookup(conn: &rusqlite::Connection, id: &str, marked: bool) -> Result<Option<Entry>, StoreError> {
    let row = conn
        .prepare_cached("SELECT event, dead_reason, committed, next_attempt, workflow FROM outcomes WHERE id = ?1")
        .and_then(|mut get| {
            get.query_row([id], |r| {
                Ok(Entry::from(Stored {
                    event: r.get(0)?,
                    dead_reason: r.get(1)?,
                    committed: r.get::<_, i64>(2)? != 0 || marked,
                    next_attempt: r.get::<_, Option<i64>>(3)?.and_then(|n| u32::try_from(n).ok()),
                    workflow: r.get(4)?,
                }))
            })
        });
    match row {
        Ok(record) => Ok(Some(record)),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The least time between two store commits. Most of the store's cost is the commit (the WAL pages it
/// writes), not the rows: spaced out a little, each commit carries more rows. A put is awaited only just
/// before its job's broker commit, so the wait overlaps the previous broker commit.
const COMMIT_SPACING: Duration = Duration::from_millis(2);

fn serve(mut conn: rusqlite::Connection, rx: mpsc::Receiver<Op>, marking: Arc<Mutex<HashSet<String>>>, watch: Watch) {
    let mut last_sweep = Instant::now();
    let mut last_commit = Instant::now();
    let mut last_check = Instant::now();
    loop {
        let first = match rx.recv_timeout(FILES_CHECK) {
            Ok(op) => Some(op),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if last_check.elapsed() >= FILES_CHECK {
            last_check = Instant::now();
            watch.check();
        }
        if first.is_none() && last_sweep.elapsed() < Duration::from_secs(60) {
            continue;
        }
        if first.is_some() {
            std::thread::sleep(COMMIT_SPACING.saturating_sub(last_commit.elapsed()));
        }
        let mut puts = Vec::new();
        let mut marks = Vec::new();
        let mut next = first;
        while let Some(op) = next.take() {
            match op {
                Op::Mark(ids) => marks.extend(ids),
                put => puts.push(put),
            }
            if puts.len() < 4096 {
                next = rx.try_recv().ok();
            }
        }
        let sweep = last_sweep.elapsed() >= Duration::from_secs(60);
        if sweep {
            last_sweep = Instant::now();
        }
        let result = run_batch(&mut conn, &mut puts, &marks, sweep).map_err(Arc::new);
        last_commit = Instant::now();
        if result.is_err() || sweep {
            // Keeps the WAL bounded: after a failed write (a full disk) its pages would otherwise stay, and
            // a long-lived reader can hold automatic checkpoints back. TRUNCATE gives the space back.
            if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
                tracing::debug!(error = %e, "outcome store checkpoint");
            }
        }
        // Replies go out only after COMMIT: a `put` that returned is on disk (in the OS) for good.
        for op in puts {
            if let Op::Put(_, _, reply) = op {
                let _ = reply.send(result.clone().map_err(StoreError::Sqlite));
            }
        }
        // Written (or lost with a failed batch: then a replay republishes the event instead of reporting a
        // duplicate); either way no longer pending.
        let mut marking = lock(&marking);
        for id in &marks {
            marking.remove(id);
        }
    }
}

/// Runs a batch of writes in one transaction; puts are answered and marks cleared by the caller after
/// COMMIT.
fn run_batch(
    conn: &mut rusqlite::Connection,
    puts: &mut Vec<Op>,
    marks: &[String],
    sweep: bool,
) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction()?;
    let now = clock::unix_secs() as i64;
    let mut pending = Vec::with_capacity(puts.len());
    {
        let mut put = tx.prepare_cached(
            "INSERT INTO outcomes (id, at, event, dead_reason, committed, next_attempt, workflow)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(id) DO UPDATE SET at = excluded.at, event = excluded.event,
                 dead_reason = excluded.dead_reason, committed = excluded.committed,
                 next_attempt = excluded.next_attempt, workflow = excluded.workflow",
        )?;
        for op in puts.drain(..) {
            if let Op::Put(id, entry, reply) = op {
                let row = Stored::from(&entry);
                let r = put.execute(rusqlite::params![
                    id,
                    now,
                    row.event,
                    row.dead_reason,
                    row.committed as i64,
                    row.next_attempt,
                    row.workflow
                ]);
                if let Err(e) = r {
                    let _ = reply.send(Err(e.into()));
                } else {
                    pending.push(Op::Put(id, entry, reply));
                }
            }
        }
        let mut mark = tx.prepare_cached("UPDATE outcomes SET committed = 1 WHERE id = ?1")?;
        for id in marks {
            let _ = mark.execute([id]);
        }
    }
    if sweep {
        let cutoff = now - RETENTION.as_secs() as i64;
        let _ = tx.execute("DELETE FROM outcomes WHERE at < ?1", [cutoff]);
    }
    *puts = pending;
    tx.commit()
}

/// Outcome records and claims in Redis, shared by every replica. Records expire after [`RETENTION`].
pub struct Redis {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    /// Who holds a claim: this process (random per start), so a release never frees another's claim.
    owner: String,
    lease: Duration,
    /// Ids this process has claimed and not released: their leases are renewed while it lives, so a job
    /// that takes longer than the lease (a provider queue, a commit-ok lost with the connection) is never
    /// taken over by another replica while its holder is alive. Only a dead holder's claim expires.
    held: Mutex<HashSet<String>>,
}

/// Extends a claim only while it is still this owner's.
const RENEW: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0";

/// Claims an id unless another owner holds it. A claim already this owner's is taken (and its lease
/// renewed): a `SET NX` that timed out on herald's side may still have run on Redis (one held up while Redis
/// hung), and without this the job waited out its own ghost claim's whole lease. Within one process a job id
/// is handled by one copy at a time (the in-process claim comes first), so an own claim is this copy's.
const CLAIM: &str = "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end \
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end return 0";

/// Deletes a claim only while it is still this owner's: a claim that expired and was taken by another
/// replica stays.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

impl Redis {
    /// `namespace` keeps deployments (and tests) that share one Redis apart: the jobs queue name.
    pub fn new(conn: redis::aio::ConnectionManager, namespace: &str, lease: Duration) -> Redis {
        Redis {
            conn,
            prefix: format!("herald:{namespace}:outcome:"),
            owner: ulid::Ulid::generate().to_string(),
            lease,
            held: Mutex::default(),
        }
    }

    fn forget(&self, ids: &[String]) {
        let mut held = lock(&self.held);
        for id in ids {
            held.remove(id);
        }
    }

    /// Renews the leases of the claims held, three times per lease, until the store is dropped.
    async fn renew_claims(store: std::sync::Weak<Redis>) {
        let Some(every) = store.upgrade().map(|s| s.lease / 3) else {
            return;
        };
        loop {
            tokio::time::sleep(every).await;
            let Some(store) = store.upgrade() else {
                return;
            };
            let ids: Vec<String> = lock(&store.held).iter().cloned().collect();
            if ids.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.cmd("EVAL")
                    .arg(RENEW)
                    .arg(1)
                    .arg(store.claim_key(id))
                    .arg(&store.owner)
                    .arg(store.lease.as_millis() as u64)
                    .ignore();
            }
            let renewed: Result<(), _> = pipe.query_async(&mut store.conn.clone()).await;
            if let Err(e) = renewed {
                tracing::warn!(error = %e, claims = ids.len(), "could not renew job claims");
            }
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    fn claim_key(&self, id: &str) -> String {
        format!("{}{id}:claim", self.prefix)
    }

    async fn get(&self, id: &str) -> Result<Option<Entry>, StoreError> {
        let key = self.key(id);
        let (record, committed): (Option<String>, Option<String>) = redis::pipe()
            .get(&key)
            .get(format!("{key}:committed"))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::Redis)?;
        Ok(match record {
            None => None,
            Some(json) => {
                let mut stored: Stored = serde_json::from_str(&json).map_err(StoreError::Json)?;
                stored.committed |= committed.is_some();
                Some(Entry::from(stored))
            }
        })
    }

    async fn put(mut conn: redis::aio::ConnectionManager, key: String, entry: &Entry) -> Result<(), StoreError> {
        let json = serde_json::to_string(&Stored::from(entry)).map_err(StoreError::Json)?;
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(json)
            .arg("EX")
            .arg(RETENTION.as_secs())
            .query_async(&mut conn)
            .await
            .map_err(StoreError::Redis)?;
        Ok(())
    }

    async fn try_claim(&self, id: &str) -> Result<bool, StoreError> {
        let claimed: i64 = redis::cmd("EVAL")
            .arg(CLAIM)
            .arg(1)
            .arg(self.claim_key(id))
            .arg(&self.owner)
            .arg(self.lease.as_millis() as u64)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::Redis)?;
        if claimed == 1 {
            lock(&self.held).insert(id.to_owned());
        }
        Ok(claimed == 1)
    }

    async fn mark_and_release(&self, ids: &[String], release: &[String]) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("SET")
                .arg(format!("{}:committed", self.key(id)))
                .arg("1")
                .arg("EX")
                .arg(RETENTION.as_secs())
                .ignore();
        }
        for id in release {
            pipe.cmd("EVAL")
                .arg(RELEASE)
                .arg(1)
                .arg(self.claim_key(id))
                .arg(&self.owner)
                .ignore();
        }
        let _: () = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::Redis)?;
        Ok(())
    }
}

/// One Redis connection (multiplexed, reconnecting) for everything herald keeps in Redis. Lazy: herald
/// starts while Redis is down, and each use fails fast until it is back.
pub fn redis_connection(url: &str) -> Result<redis::aio::ConnectionManager, RedisUrlError> {
    let client = redis::Client::open(url).map_err(RedisUrlError)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    redis::aio::ConnectionManager::new_lazy_with_config(client, config).map_err(RedisUrlError)
}

/// `redis.url` does not open a Redis client.
#[derive(Debug, thiserror::Error)]
#[error("redis.url")]
pub struct RedisUrlError(#[source] redis::RedisError);

#[cfg(test)]
mod tests {
    use super::*;

    fn record(event: &str) -> Entry {
        Entry::Outcome(Record {
            event: event.into(),
            dead_reason: None,
            committed: false,
        })
    }

    fn errors() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("e", "e"), &["op"]).unwrap()
    }

    fn committed(entry: Option<Entry>) -> bool {
        matches!(entry, Some(Entry::Outcome(Record { committed: true, .. })))
    }

    #[tokio::test]
    async fn local_store_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let step = Entry::Workflow(WorkflowEntry::Step {
            step: 2,
            at_ms: 7,
            failed: true,
            sent: 1,
            check: "01JD3V7ZQ4T6Y0M2W8K5H9N1PB".into(),
        });
        {
            let store = Store::local(dir.path(), errors()).unwrap();
            assert_eq!(store.get("a").await.unwrap(), None);
            store.put("a", record("{}")).await.unwrap();
            store.mark_committed(vec!["a".into()], Vec::new());
            store.put("b", record("{\"b\":1}")).await.unwrap();
            store.put("r", Entry::Retrying { next_attempt: 3 }).await.unwrap();
            store.put("w", step.clone()).await.unwrap();
            store
                .put(
                    "w #2 receipt",
                    Entry::Workflow(WorkflowEntry::Receipt { delivered: true }),
                )
                .await
                .unwrap();
            // A lookup right after the mark sees it, written or not.
            assert!(committed(store.get("a").await.unwrap()));
        }
        let store = Store::local(dir.path(), errors()).unwrap();
        assert!(committed(store.get("a").await.unwrap()));
        assert_eq!(store.get("b").await.unwrap(), Some(record("{\"b\":1}")));
        assert_eq!(store.get("r").await.unwrap(), Some(Entry::Retrying { next_attempt: 3 }));
        assert_eq!(store.get("w").await.unwrap(), Some(step));
        assert_eq!(
            store.get("w #2 receipt").await.unwrap(),
            Some(Entry::Workflow(WorkflowEntry::Receipt { delivered: true }))
        );
        // An outcome replaces the retry state.
        store.put("r", record("{}")).await.unwrap();
        assert_eq!(store.get("r").await.unwrap(), Some(record("{}")));
    }

    #[test]
    fn a_store_of_an_older_version_gains_the_attempt_column() {
        let dir = tempfile::tempdir().unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("outcomes.sqlite")).unwrap();
        conn.execute_batch(
            "CREATE TABLE outcomes (id TEXT PRIMARY KEY, at INTEGER NOT NULL, event TEXT NOT NULL,
             dead_reason TEXT, committed INTEGER NOT NULL DEFAULT 0);
             INSERT INTO outcomes VALUES ('old', 1, '{}', NULL, 1);",
        )
        .unwrap();
        drop(conn);
        let store = Store::local(dir.path(), errors()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert!(committed(rt.block_on(store.get("old")).unwrap()));
    }
}
