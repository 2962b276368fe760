//! Jobs held while the outcome store does not answer: never delivered on a guess, counted, and `/readyz`
//! not ready meanwhile (docs/guarantees.md, "When the outcome store fails").

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Consumer, lock};

/// How long a job held by a store outage waits, once the store answers, before it reads its record: the
/// replica that held its id may have lost its claim's lease during the outage, and needs a moment to write
/// the outcome it was holding (its writes retry every second at most).
pub(super) const OUTAGE_SETTLE: Duration = Duration::from_secs(2);

/// Jobs held because the outcome store does not answer. An outage is logged when the first job is held and
/// when the last one goes on, not per job or per retry.
#[derive(Default)]
pub(super) struct StoreOutage {
    pub(super) held: std::sync::atomic::AtomicUsize,
    since: Mutex<Option<std::time::Instant>>,
}

/// One job held; dropped when the store answered it (or the job was abandoned at shutdown).
struct Held<'a> {
    consumer: &'a Consumer,
}

impl StoreOutage {
    fn hold<'a>(&self, consumer: &'a Consumer, id: &str, error: &crate::store::StoreError) -> Held<'a> {
        if self.held.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut since = lock(&self.since);
            if since.is_none() {
                *since = Some(std::time::Instant::now());
                tracing::error!(job_id = %id, error = %error,
                    "outcome store does not answer; holding jobs until it does (nothing is sent meanwhile)");
            }
        }
        consumer.metrics.store_held.inc();
        consumer.update_ready();
        Held { consumer }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let outage = &self.consumer.store_outage;
        self.consumer.metrics.store_held.dec();
        if outage.held.fetch_sub(1, Ordering::SeqCst) == 1
            && let Some(since) = lock(&outage.since).take()
        {
            tracing::info!(held_for = ?since.elapsed(), "outcome store answers again; held jobs go on");
        }
        self.consumer.update_ready();
    }
}

impl Consumer {
    /// Runs a store operation until it answers: while the store fails, the job is held (never delivered
    /// on a guess), counted in `herald_store_held_jobs`, and `/readyz` says not ready. Its broker delivery
    /// stays unacked meanwhile, so no delivery is counted against the queue's limit.
    pub(super) async fn held_for_store<T, F, Fut>(&self, id: &str, op: F) -> T
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::store::StoreError>>,
    {
        let first = match op().await {
            Ok(value) => return value,
            Err(e) => e,
        };
        let _held = self.store_outage.hold(self, id, &first);
        let mut wait = Duration::from_millis(100);
        loop {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(1));
            if let Ok(value) = op().await {
                return value;
            }
        }
    }
}
