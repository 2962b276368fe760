//! Job outcome records (contract §11.2): what makes a redelivered or replayed job id safe.
//!
//! A record is written when a job reaches its outcome, *before* the outcome is published, and marked
//! committed once the broker has taken the event and the ack together. So after a crash:
//! - no record: the provider call may or may not have happened (in doubt) → the job is delivered again;
//! - a record not committed: the job was delivered, its event never left → the stored event is published;
//! - a committed record: the job is finished → a duplicate, not sent again.
//!
//! Marks are not urgent: a job whose ack committed is not redelivered, so a lost mark only changes what a
//! later replay of its id hears (its recorded event again, instead of `duplicate`), never whether it is sent.
//!
//! Embedded SQLite (WAL, `synchronous=NORMAL`: every commit reaches the OS before the reply, so a killed
//! process loses nothing, with no fsync per job) or Redis when `[redis] url` is set, shared by replicas.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// Records are kept at least this long (contract: ≥ 24 h), then dropped.
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

#[derive(Debug, thiserror::Error)]
#[error("outcome store: {0}")]
pub struct StoreError(String);

/// A record write under way; see [`Store::put`].
pub type PendingPut = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send>>;

pub enum Store {
    Local(LocalStore),
    Redis(RedisStore),
}

impl Store {
    pub async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        match self {
            Store::Local(s) => s.get(id),
            Store::Redis(s) => s.get(id).await,
        }
    }

    /// Starts writing a record; the returned future resolves once it is written (to the OS for SQLite,
    /// acknowledged by Redis). The consumer awaits it just before the job's broker commit, so the write
    /// overlaps the wait for that commit instead of adding to it.
    pub fn put(&self, id: &str, record: Record) -> PendingPut {
        match self {
            Store::Local(s) => {
                let written = s.put(id, record);
                Box::pin(async move { written.await.map_err(|_| StoreError("store thread stopped".into()))? })
            }
            Store::Redis(s) => {
                let (conn, key) = (s.conn.clone(), s.key(id));
                // A task of its own, so that the write is under way at once, like the SQLite one: the commit
                // loop only checks on it (and waits only when nothing else is ready to commit).
                let write = tokio::spawn(async move { RedisStore::put(conn, key, &record).await });
                Box::pin(async move { write.await.map_err(|e| StoreError(format!("record write: {e}")))? })
            }
        }
    }

    /// Marks records committed. Not awaited by the hot path: losing a mark only means a later replay of
    /// the same id republishes its event instead of reporting a duplicate.
    pub async fn mark_committed(&self, ids: Vec<String>) {
        let result = match self {
            Store::Local(s) => s.mark_committed(ids),
            Store::Redis(s) => s.mark_committed(ids).await,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not mark outcomes committed");
        }
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

enum Op {
    Put(String, Record, oneshot::Sender<Result<(), StoreError>>),
    Mark(Vec<String>),
}

/// SQLite on its own thread. Requests queue up while a transaction commits and are then served together
/// in the next one (group commit), so throughput does not hinge on one write per job.
pub struct LocalStore {
    tx: mpsc::Sender<Op>,
    path: PathBuf,
    /// Idle read-only connections. A lookup borrows one and runs on the caller's thread: WAL readers never
    /// wait for the writer, and a point lookup costs microseconds, less than handing it to another thread
    /// and waking the caller again. There are never more than the threads looking up at once.
    readers: Mutex<Vec<rusqlite::Connection>>,
    /// Ids whose committed mark is requested but not yet written: a lookup treats them as committed.
    marking: Arc<Mutex<HashSet<String>>>,
}

impl LocalStore {
    pub fn open(dir: &Path) -> Result<LocalStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join("outcomes.sqlite");
        let conn = rusqlite::Connection::open(&path).map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA cache_size = -512; -- KiB. SQLite's 2 MiB default was the largest share of herald's
                                       -- peak memory in `herald bench`; writes touch few pages each
             CREATE TABLE IF NOT EXISTS outcomes (
                 id TEXT PRIMARY KEY,
                 at INTEGER NOT NULL,
                 event TEXT NOT NULL,
                 dead_reason TEXT,
                 committed INTEGER NOT NULL DEFAULT 0
             );
             CREATE INDEX IF NOT EXISTS outcomes_at ON outcomes (at);",
        )
        .map_err(|e| StoreError(e.to_string()))?;
        // Opened once here so that a bad path fails at start-up, then kept for the first lookup.
        let reader = open_reader(&path)?;
        let marking: Arc<Mutex<HashSet<String>>> = Arc::default();
        let (tx, rx) = mpsc::channel();
        let marks = marking.clone();
        std::thread::Builder::new()
            .name("herald-store".into())
            .spawn(move || serve(conn, rx, marks))
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(LocalStore {
            tx,
            path,
            readers: Mutex::new(vec![reader]),
            marking,
        })
    }

    fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let idle = lock(&self.readers).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => open_reader(&self.path)?,
        };
        // The pending mark is checked before the row is read: once the writer drops it from the set, the
        // row it committed is visible to this read.
        let marked = lock(&self.marking).contains(id);
        let result = lookup(&conn, id, marked);
        lock(&self.readers).push(conn);
        result
    }

    fn put(&self, id: &str, record: Record) -> oneshot::Receiver<Result<(), StoreError>> {
        let (reply, rx) = oneshot::channel();
        if let Err(Op::Put(_, _, reply)) = self.tx.send(Op::Put(id.to_owned(), record, reply)).map_err(|e| e.0) {
            let _ = reply.send(Err(StoreError("store thread stopped".into())));
        }
        rx
    }

    fn mark_committed(&self, ids: Vec<String>) -> Result<(), StoreError> {
        // Noted before it is queued, so a lookup right after this (a replay) already sees it committed.
        lock(&self.marking).extend(ids.iter().cloned());
        self.send(Op::Mark(ids))
    }

    fn send(&self, op: Op) -> Result<(), StoreError> {
        self.tx.send(op).map_err(|_| StoreError("store thread stopped".into()))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn open_reader(path: &Path) -> Result<rusqlite::Connection, StoreError> {
    rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .and_then(|conn| {
        // A point lookup reads a handful of pages: 256 KiB keeps the index's upper levels at hand.
        conn.execute_batch("PRAGMA cache_size = -256")?;
        Ok(conn)
    })
    .map_err(|e| StoreError(format!("{}: {e}", path.display())))
}

fn lookup(conn: &rusqlite::Connection, id: &str, marked: bool) -> Result<Option<Record>, StoreError> {
    let row = conn
        .prepare_cached("SELECT event, dead_reason, committed FROM outcomes WHERE id = ?1")
        .and_then(|mut get| {
            get.query_row([id], |r| {
                Ok(Record {
                    event: r.get(0)?,
                    dead_reason: r.get(1)?,
                    committed: r.get::<_, i64>(2)? != 0 || marked,
                })
            })
        });
    match row {
        Ok(record) => Ok(Some(record)),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
        Err(e) => Err(StoreError(e.to_string())),
    }
}

/// The least time between two store commits. Most of the store's cost is the commit (the WAL pages it
/// writes), not the rows: spaced out a little, each commit carries more rows. A put is awaited only just
/// before its job's broker commit, so the wait overlaps the previous broker commit.
const COMMIT_SPACING: Duration = Duration::from_millis(2);

fn serve(mut conn: rusqlite::Connection, rx: mpsc::Receiver<Op>, marking: Arc<Mutex<HashSet<String>>>) {
    let mut last_sweep = Instant::now();
    let mut last_commit = Instant::now();
    loop {
        let first = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(op) => Some(op),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
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
        let result = run_batch(&mut conn, &mut puts, &marks, sweep);
        last_commit = Instant::now();
        // Replies go out only after COMMIT: a `put` that returned is on disk (in the OS) for good.
        for op in puts {
            if let Op::Put(_, _, reply) = op {
                let _ = reply.send(result.clone().map_err(StoreError));
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
fn run_batch(conn: &mut rusqlite::Connection, puts: &mut Vec<Op>, marks: &[String], sweep: bool) -> Result<(), String> {
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    let now = now_secs();
    let mut pending = Vec::with_capacity(puts.len());
    {
        let mut put = tx
            .prepare_cached(
                "INSERT INTO outcomes (id, at, event, dead_reason, committed) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET at = excluded.at, event = excluded.event,
                 dead_reason = excluded.dead_reason, committed = excluded.committed",
            )
            .map_err(|e| e.to_string())?;
        for op in puts.drain(..) {
            if let Op::Put(id, record, reply) = op {
                let r = put.execute(rusqlite::params![
                    id,
                    now,
                    record.event,
                    record.dead_reason,
                    record.committed as i64
                ]);
                if let Err(e) = r {
                    let _ = reply.send(Err(StoreError(e.to_string())));
                } else {
                    pending.push(Op::Put(id, record, reply));
                }
            }
        }
        let mut mark = tx
            .prepare_cached("UPDATE outcomes SET committed = 1 WHERE id = ?1")
            .map_err(|e| e.to_string())?;
        for id in marks {
            let _ = mark.execute([id]);
        }
    }
    if sweep {
        let cutoff = now - RETENTION.as_secs() as i64;
        let _ = tx.execute("DELETE FROM outcomes WHERE at < ?1", [cutoff]);
    }
    *puts = pending;
    tx.commit().map_err(|e| e.to_string())
}

/// Outcome records in Redis, shared by every replica. Keys expire after [`RETENTION`].
pub struct RedisStore {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

impl RedisStore {
    /// `namespace` keeps deployments (and tests) that share one Redis apart: the jobs queue name.
    pub fn new(conn: redis::aio::ConnectionManager, namespace: &str) -> RedisStore {
        RedisStore {
            conn,
            prefix: format!("herald:{namespace}:outcome:"),
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let key = self.key(id);
        let (record, committed): (Option<String>, Option<String>) = redis::pipe()
            .get(&key)
            .get(format!("{key}:committed"))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(match record {
            None => None,
            Some(json) => {
                let mut record: Record = serde_json::from_str(&json).map_err(|e| StoreError(e.to_string()))?;
                record.committed |= committed.is_some();
                Some(record)
            }
        })
    }

    async fn put(mut conn: redis::aio::ConnectionManager, key: String, record: &Record) -> Result<(), StoreError> {
        let json = serde_json::to_string(record).map_err(|e| StoreError(e.to_string()))?;
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(json)
            .arg("EX")
            .arg(RETENTION.as_secs())
            .query_async(&mut conn)
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(())
    }

    async fn mark_committed(&self, ids: Vec<String>) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("SET")
                .arg(format!("{}:committed", self.key(id)))
                .arg("1")
                .arg("EX")
                .arg(RETENTION.as_secs())
                .ignore();
        }
        let _: () = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(())
    }
}

/// One Redis connection (multiplexed, reconnecting) for everything herald keeps in Redis. Lazy: herald
/// starts while Redis is down, and each use fails fast until it is back.
pub fn redis_connection(url: &str) -> Result<redis::aio::ConnectionManager, String> {
    let client = redis::Client::open(url).map_err(|e| format!("redis.url: {e}"))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    redis::aio::ConnectionManager::new_lazy_with_config(client, config).map_err(|e| format!("redis.url: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(event: &str) -> Record {
        Record {
            event: event.into(),
            dead_reason: None,
            committed: false,
        }
    }

    #[tokio::test]
    async fn local_store_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::Local(LocalStore::open(dir.path()).unwrap());
            assert_eq!(store.get("a").await.unwrap(), None);
            store.put("a", record("{}")).await.unwrap();
            store.mark_committed(vec!["a".into()]).await;
            store.put("b", record("{\"b\":1}")).await.unwrap();
            // A lookup right after the mark sees it, written or not.
            assert!(store.get("a").await.unwrap().unwrap().committed);
        }
        let store = Store::Local(LocalStore::open(dir.path()).unwrap());
        assert!(store.get("a").await.unwrap().unwrap().committed);
        let b = store.get("b").await.unwrap().unwrap();
        assert_eq!(b.event, "{\"b\":1}");
        assert!(!b.committed);
    }
}
