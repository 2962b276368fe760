//! A handled message waiting for its transaction: its plan, its store write under way and its claim.

use super::claims::Claim;
use super::plan::Plan;
use crate::metrics::Metrics;
use crate::store::{PendingPut, Store};

/// A handled message: the rest of its plan, waiting for its transaction.
pub(super) struct Uncommitted {
    /// What is left to carry out: the transaction's publishes and ack, and what follows the commit.
    pub(super) plan: Plan,
    /// The store write of the plan, awaited before the commit (a record precedes its event).
    pub(super) put: Option<PendingPut>,
    /// Held until the commit, so a second copy of the same job waits and then sees the outcome; if the
    /// commit never comes, until the outcome record is durable (see `Drop`).
    pub(super) claim: Option<Claim>,
    _gauge: GaugeGuard,
}

impl Uncommitted {
    /// Starts carrying out `plan`: its store write is under way from now on, so that it overlaps the wait
    /// for the commit; the rest is the commit loop's.
    pub(super) fn start(mut plan: Plan, store: &Store, claim: Option<Claim>, gauge: GaugeGuard) -> Uncommitted {
        let put = plan.take_record().map(|(id, entry)| store.put(id, entry));
        // A workflow's record goes with its step's (docs/workflows.md): both written before the commit.
        let put = match (put, plan.take_workflow_record()) {
            (put, None) => put,
            (None, Some((id, entry))) => Some(store.put(&id, entry)),
            (Some(first), Some((id, entry))) => {
                let second = store.put(&id, entry);
                Some(PendingPut::both(first, second))
            }
        };
        Uncommitted {
            plan,
            put,
            claim,
            _gauge: gauge,
        }
    }
}

impl Drop for Uncommitted {
    /// A job dropped before its commit (the broker connection went away) is redelivered, and the copy
    /// must find the outcome this one reached: the claim is held until the record's write has finished,
    /// not released while it is still queued.
    fn drop(&mut self) {
        if let (Some(put), Some(claim)) = (self.put.take(), self.claim.take())
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = put.await;
                drop(claim);
            });
        }
    }
}

/// Keeps `herald_jobs_in_flight` right however a handled message ends (committed or dropped).
pub(super) struct GaugeGuard(prometheus::IntGauge);

impl GaugeGuard {
    pub(super) fn new(metrics: &Metrics) -> GaugeGuard {
        metrics.in_flight.inc();
        GaugeGuard(metrics.in_flight.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
