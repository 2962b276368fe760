//! Job ids claimed while under way: in this process, and across replicas when the store is Redis. A copy
//! of a job under way waits on its claim, then finds the outcome committed (docs/guarantees.md, "A job under way is
//! claimed").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::{Consumer, lock};
use crate::store::Store;

impl Consumer {
    /// Claims a job id: in this process, then across replicas (Redis). A copy that finds it claimed waits
    /// until the holder commits (or its record is durable), or the holder's lease runs out (it died). While
    /// Redis does not answer, the job is held (see [`Consumer::held_for_store`]); `true` when it was.
    pub(super) async fn claim(&self, id: &str) -> (Claim, bool) {
        let mut claim = self.in_flight.claim(id).await;
        if !self.store.shares_claims() {
            return (claim, false);
        }
        let mut wait = Duration::from_millis(10);
        let mut held = false;
        loop {
            let claimed = match self.store.try_claim(id).await {
                Ok(claimed) => claimed,
                Err(_) => {
                    held = true;
                    self.held_for_store(id, || self.store.try_claim(id)).await
                }
            };
            if claimed {
                claim.shared = Some(SharedClaim {
                    store: self.store.clone(),
                    id: id.to_owned(),
                });
                return (claim, held);
            }
            tracing::debug!(job_id = %id, "job id under way on another replica; waiting");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(250));
        }
    }
}

/// Job ids being handled by this process. A second copy of a job under way (a replay racing the
/// original) waits for the first to commit, then finds its outcome in the store.
#[derive(Default, Clone)]
pub(super) struct InFlightIds(Arc<Mutex<HashMap<String, Arc<Notify>>>>);

pub(super) struct Claim {
    ids: InFlightIds,
    id: String,
    done: Arc<Notify>,
    /// The same id claimed across replicas, when the store shares claims.
    pub(super) shared: Option<SharedClaim>,
}

/// A job id claimed in Redis. Released on drop; [`SharedClaim::into_id`] hands the release to the
/// commit's mark instead.
pub(super) struct SharedClaim {
    store: Arc<Store>,
    id: String,
}

impl SharedClaim {
    pub(super) fn into_id(mut self) -> String {
        std::mem::take(&mut self.id)
    }
}

impl Drop for SharedClaim {
    fn drop(&mut self) {
        if !self.id.is_empty() {
            self.store.release(vec![std::mem::take(&mut self.id)]);
        }
    }
}

impl InFlightIds {
    pub(super) async fn claim(&self, id: &str) -> Claim {
        loop {
            let waiting = {
                let mut map = lock(&self.0);
                match map.get(id) {
                    Some(done) => done.clone(),
                    None => {
                        let done = Arc::new(Notify::new());
                        map.insert(id.to_owned(), done.clone());
                        return Claim {
                            ids: self.clone(),
                            id: id.to_owned(),
                            done,
                            shared: None,
                        };
                    }
                }
            };
            let notified = waiting.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Re-check: the holder may have released between the lookup and `enable`.
            let still_held = lock(&self.0).get(id).is_some_and(|d| Arc::ptr_eq(d, &waiting));
            if still_held {
                notified.await;
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.ids.0).remove(&self.id);
        self.done.notify_waiters();
    }
}
