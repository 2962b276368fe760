//! What a lost connection leaves behind: a batch whose commit the broker never confirmed (settled on the
//! next connection from the lane's marker queue), and outcomes reached after their session died (orphans,
//! committed on the next session). docs/guarantees.md, "Retries and delivery guarantees".

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::Channel;
use lapin::options::BasicGetOptions;
use tokio::sync::mpsc;

use super::uncommitted::Uncommitted;
use super::{Consumer, lock};
use crate::broker::BrokerError;

/// Outcomes reached after their session died, waiting for the current one. Without this, a job whose
/// provider call outlasted its connection lost its event whenever its copies kept coming back unacked:
/// each failed session counts a delivery, and past `delivery_limit` the queue dead-letters the job with no
/// event (seen with six failed sessions during one held provider call). An orphan is committed on the
/// current session's first lane without an ack (its delivery tag died with its channel), holding its
/// claim until then, so a copy of the job waits and then finds the outcome committed.
#[derive(Default)]
pub(super) struct Orphans {
    /// The current session's first lane, while a session consumes.
    pub(super) lane: Option<mpsc::UnboundedSender<Uncommitted>>,
    /// Orphans that came while no session consumed, and when. Dropped after [`ORPHAN_PARKING`]: until then
    /// they hold their claims, which copies on other replicas wait for.
    pub(super) waiting: Vec<(std::time::Instant, Uncommitted)>,
    /// Job ids committed as orphans. Their redelivered copies are acked without a reply: the outcome and
    /// its reply are out. Checked in this process, not only in the store, because
    /// an orphan's copy always comes back (no ack was committed) and a lost mark must not make it a repeat.
    pub(super) committed: std::collections::HashSet<String>,
}

/// How long an orphan waits for a session before it is dropped (its copy then republishes the outcome).
const ORPHAN_PARKING: Duration = Duration::from_secs(10);
/// More committed orphans than this, whose copies never came (the queue dead-lettered them), are forgotten.
pub(super) const ORPHANS_REMEMBERED: usize = 10_000;

/// A batch whose `tx.commit` was sent but not confirmed: the connection can drop between the broker's
/// commit and its `commit-ok`. Each commit also publishes its sequence number to a marker queue of its
/// lane that keeps only the newest message; on the next connection that queue says whether the batch
/// committed (print, count and mark its events, which are out) or not (drop it: the broker redelivers its
/// jobs, and their copies wait on its claims until then).
pub(super) struct InDoubt {
    pub(super) seq: u64,
    pub(super) batch: Vec<Uncommitted>,
}

impl Consumer {
    /// Takes the outcome of a job whose session died before it could commit it (see [`Orphans`]). Only an
    /// outcome herald recorded: the job's copies find the record, so its event cannot be doubled. Anything
    /// else (a retry, a duplicate's reply, an invalid job's dead letter) is done again by the copy the broker
    /// redelivers, and is dropped here.
    pub(super) fn adopt(self: &Arc<Self>, mut finished: Uncommitted) {
        if finished.plan.marks().is_none() {
            return;
        }
        // Its delivery went with its channel: there is nothing to ack, and its tag means nothing now.
        finished.plan.orphan();
        let mut orphans = lock(&self.orphans);
        let finished = match &orphans.lane {
            Some(lane) => match lane.send(finished) {
                Ok(()) => return,
                Err(mpsc::error::SendError(finished)) => finished,
            },
            None => finished,
        };
        orphans.lane = None;
        orphans.waiting.push((std::time::Instant::now(), finished));
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ORPHAN_PARKING).await;
            lock(&this.orphans)
                .waiting
                .retain(|(since, _)| since.elapsed() < ORPHAN_PARKING);
        });
    }

    /// Decides a batch a lane left in doubt on the last connection (see [`InDoubt`]), before consuming again:
    /// `in_doubt` is the lane's, `marker_queue` its commit-marker queue.
    pub(super) async fn settle_in_doubt(
        &self,
        channel: &Channel,
        in_doubt: &Mutex<Option<InDoubt>>,
        marker_queue: &str,
    ) -> Result<(), BrokerError> {
        let Some(seq) = lock(in_doubt).as_ref().map(|d| d.seq) else {
            return Ok(());
        };
        let newest = channel
            .basic_get(marker_queue.into(), BasicGetOptions { no_ack: true })
            .await?;
        let committed = newest.is_some_and(|m| m.data == seq.to_string().as_bytes());
        let Some(mut parked) = lock(in_doubt).take() else {
            return Ok(());
        };
        tracing::info!(
            jobs = parked.batch.len(),
            committed,
            "settled a commit the broker never confirmed"
        );
        if committed {
            self.committed(&mut parked.batch, &mut Vec::new());
        }
        Ok(())
    }
}
