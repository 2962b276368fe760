//! A lane: one transactional consuming channel and its commit loop, which carries finished jobs into the
//! broker in batches (their publishes and acks in one transaction) and does what follows a commit.

use std::collections::BTreeSet;
use std::num::NonZeroU16;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use tokio::sync::mpsc;

use super::claims::SharedClaim;
use super::in_doubt::{InDoubt, ORPHANS_REMEMBERED};
use super::plan::{Step, WorkflowCount};
use super::uncommitted::Uncommitted;
use super::{Consumer, lock};
use crate::broker::BrokerError;
use crate::events;

/// A consuming channel's commit state, which outlives the channel: its share of the prefetch window, its
/// commit-marker queue, and the batch its last connection left in doubt.
pub(super) struct Lane {
    pub(super) prefetch: NonZeroU16,
    /// This lane's commit-marker queue (see [`InDoubt`]), unique to the process and lane.
    pub(super) marker_queue: String,
    /// The batch whose commit is under way, or was when its connection went.
    pub(super) in_doubt: Mutex<Option<InDoubt>>,
}

/// `prefetch` split over `channels` lanes (at most one lane per job in the window): the lanes' windows
/// add up to `prefetch`, so at most `amqp.prefetch` jobs are in flight in all (docs/guarantees.md "In doubt").
pub(super) fn lane_windows(prefetch: NonZeroU16, channels: u16) -> Vec<NonZeroU16> {
    let prefetch = prefetch.get();
    let lanes = channels.clamp(1, prefetch);
    (0..lanes)
        .map(|i| NonZeroU16::new(prefetch / lanes + u16::from(i < prefetch % lanes)).expect("no more lanes than jobs"))
        .collect()
}

impl Consumer {
    /// Commits the finished jobs of `lane` in batches: publishes and acks of a batch go in one broker
    /// transaction on the lane's channel.
    ///
    /// The commit is a lane's serial step: a transactional channel holds its publishes until `tx.commit`,
    /// and the broker then routes and stores them all (with one lane ~80% of the outbox step's time in
    /// `herald bench`; hence a second lane). So while one batch commits, every job of the lane that
    /// finishes meanwhile is taken in, and the next commit carries all of them whose outcome records are
    /// written: a job that finished just after a gather would otherwise wait out a whole extra commit,
    /// holding its place in the prefetch window.
    pub(super) async fn commit_loop(
        self: Arc<Self>,
        lane: usize,
        channel: Channel,
        unacked: Unacked,
        mut done: mpsc::UnboundedReceiver<Uncommitted>,
    ) -> Result<(), BrokerError> {
        let max = usize::from(self.lanes[lane].prefetch.get());
        let in_doubt = &self.lanes[lane].in_doubt;
        // Handled jobs not yet committed; the batch being sent; the batch committing; one buffer of event
        // lines. All reused: per-batch buffers of this size (tens of KiB) cost a realloc chain on every
        // batch and made glibc consolidate its free lists.
        let mut waiting = Vec::with_capacity(max);
        let mut ready = Vec::with_capacity(max);
        let mut batch = Vec::with_capacity(max);
        let mut lines = Vec::new();
        let mut open = true;
        loop {
            if waiting.is_empty() && (!open || done.recv_many(&mut waiting, max).await == 0) {
                return Ok(());
            }
            take_recorded(&mut waiting, &mut ready).await;
            // An orphan whose record could not be written is dropped: without the record its copy could
            // not tell that its event is out, and sends the job again anyway.
            ready.retain(|f| f.plan.ack().is_some() || f.plan.marks().is_some());
            let seq = self.commits.fetch_add(1, Ordering::Relaxed);
            self.send_frames(&channel, &self.lanes[lane].marker_queue, &unacked, &mut ready, seq)
                .await?;
            std::mem::swap(&mut batch, &mut ready);
            // Parked while its commit is unresolved: if the connection (or this task) goes now, the next
            // session finds it there and asks the marker queue.
            *lock(in_doubt) = Some(InDoubt {
                seq,
                batch: std::mem::take(&mut batch),
            });
            let commit = async {
                let started = std::time::Instant::now();
                channel.tx_commit().await?;
                self.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
                if let Some(parked) = lock(in_doubt).take() {
                    batch = parked.batch;
                }
                self.committed(&mut batch, &mut lines);
                Ok::<_, BrokerError>(())
            };
            tokio::pin!(commit);
            loop {
                tokio::select! {
                    biased;
                    committed = &mut commit => {
                        committed?;
                        break;
                    }
                    received = done.recv_many(&mut waiting, max), if open => open = received > 0,
                }
            }
        }
    }

    /// Queues every publish and ack of a batch at once and awaits them together: awaiting each in turn
    /// would cost a round trip to lapin's I/O thread per frame. All must be written before the commit.
    async fn send_frames(
        &self,
        channel: &Channel,
        marker_queue: &str,
        unacked: &Unacked,
        batch: &mut [Uncommitted],
        seq: u64,
    ) -> Result<(), BrokerError> {
        let marker = seq.to_string();
        let count = batch.iter_mut().map(|f| f.plan.publishes().count()).sum::<usize>();
        let mut publishes = Vec::with_capacity(count + 1);
        publishes.push(channel.basic_publish(
            "".into(),
            marker_queue.into(),
            BasicPublishOptions::default(),
            marker.as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        ));
        let mut tags: Vec<u64> = batch.iter().filter_map(|f| f.plan.ack()).collect();
        tags.sort_unstable();
        // Names and properties are moved into the frames, not copied: this runs while the broker waits.
        for finished in batch.iter_mut() {
            for p in finished.plan.publishes() {
                let too_long = |_| BrokerError::Closed("exchange or routing key longer than 255 bytes".into());
                let exchange = ShortString::try_new(std::mem::take(&mut p.exchange)).map_err(too_long)?;
                let routing_key = ShortString::try_new(std::mem::take(&mut p.routing_key)).map_err(too_long)?;
                publishes.push(channel.basic_publish(
                    exchange,
                    routing_key,
                    BasicPublishOptions::default(),
                    &p.body,
                    std::mem::take(&mut p.properties),
                ));
            }
        }
        let (up_to, singles) = unacked.settle(&tags);
        let mut acks = Vec::with_capacity(singles.len() + 1);
        if let Some(tag) = up_to {
            acks.push(channel.basic_ack(tag, BasicAckOptions { multiple: true }));
        }
        for tag in singles {
            acks.push(channel.basic_ack(tag, BasicAckOptions::default()));
        }
        futures_util::future::try_join(
            futures_util::future::try_join_all(publishes),
            futures_util::future::try_join_all(acks),
        )
        .await?;
        Ok(())
    }

    /// After a batch committed: print and count its events, mark its records committed. Clearing the
    /// batch releases the claims and the in-flight gauge.
    pub(super) fn committed(&self, batch: &mut Vec<Uncommitted>, lines: &mut Vec<u8>) {
        self.metrics.commit_batch.observe(batch.len() as f64);
        let mut committed = Vec::with_capacity(batch.len());
        // One write for the batch's event lines: stdout is a pipe, a syscall per event adds up.
        lines.clear();
        let replies = self.replies.get();
        let mut orphans = Vec::new();
        for finished in batch.iter_mut() {
            let orphan = finished.plan.ack().is_none();
            for step in finished.plan.steps.drain(..) {
                match step {
                    Step::Reply(reply) => {
                        if let Some(replies) = replies {
                            replies.send(reply);
                        }
                    }
                    Step::Report { sample, json } => {
                        lines.extend_from_slice(&json);
                        lines.push(b'\n');
                        self.metrics.record(&sample);
                    }
                    Step::CountDeadLetter(code) => {
                        self.metrics.dead_lettered.with_label_values(&[code.as_str()]).inc();
                    }
                    Step::CountRetry => self.metrics.retries.inc(),
                    Step::MarkCommitted => {
                        if let Some(id) = &finished.plan.id {
                            committed.push(id.clone());
                            if orphan {
                                orphans.push(id.clone());
                            }
                        }
                    }
                    Step::CountWorkflow(WorkflowCount::Step {
                        workflow,
                        step,
                        channel,
                        outcome,
                    }) => {
                        self.metrics
                            .workflow_steps
                            .with_label_values(&[&workflow, &step.to_string(), channel.as_str(), outcome])
                            .inc();
                    }
                    Step::CountWorkflow(WorkflowCount::End { workflow, result, json }) => {
                        lines.extend_from_slice(&json);
                        lines.push(b'\n');
                        self.metrics.workflows.with_label_values(&[&workflow, result]).inc();
                    }
                    // Done before the commit.
                    Step::Record(_) | Step::RecordWorkflow(..) | Step::Publish(_) | Step::Ack(_) => {}
                }
            }
        }
        if !orphans.is_empty() {
            let mut remembered = lock(&self.orphans);
            if remembered.committed.len() + orphans.len() > ORPHANS_REMEMBERED {
                remembered.committed.clear();
            }
            remembered.committed.extend(orphans);
        }
        events::print_lines(lines);
        // Cross-replica claims are released after their marks, in one request that the commit loop
        // does not wait for: Redis latency stays out of the broker's commit path.
        let release = batch
            .iter_mut()
            .filter_map(|f| f.claim.as_mut().and_then(|c| c.shared.take()))
            .map(SharedClaim::into_id)
            .collect();
        self.store.mark_committed(committed, release);
        batch.clear();
    }
}

/// Moves the jobs of `waiting` whose outcome records are written (or who have none) to `ready`, the rest
/// stay for a later commit; when none is written yet, waits for them all. A record must be stored before
/// its event can leave, so that after a crash a redelivered job finds it (docs/guarantees.md "One outcome, once"); a
/// failed write only loses that protection.
async fn take_recorded(waiting: &mut Vec<Uncommitted>, ready: &mut Vec<Uncommitted>) {
    use futures_util::FutureExt;
    let mut i = 0;
    while i < waiting.len() {
        let written = match waiting[i].put.as_mut() {
            None => Some(Ok(())),
            Some(put) => put.now_or_never(),
        };
        match written {
            Some(result) => {
                let mut finished = waiting.swap_remove(i);
                finished.put = None;
                recorded(&mut finished, result);
                ready.push(finished);
            }
            None => i += 1,
        }
    }
    if ready.is_empty() {
        // Awaited in place, not taken out: if this task is aborted meanwhile (the connection went), each
        // job's drop still finds its write and holds its claim until it is done.
        let writes = waiting.iter_mut().map(|finished| async move {
            let result = match finished.put.as_mut() {
                Some(put) => put.await,
                None => Ok(()),
            };
            finished.put = None;
            recorded(finished, result);
        });
        futures_util::future::join_all(writes).await;
        ready.append(waiting);
    }
}

fn recorded(finished: &mut Uncommitted, result: Result<(), crate::store::StoreError>) {
    if let Err(e) = result {
        tracing::warn!(job_id = finished.plan.marks().unwrap_or("-"), error = %e, "outcome not recorded");
        finished.plan.unmark();
    }
}

/// Delivery tags handed out on the consuming channel and not yet acked. A batch whose tags are the
/// oldest outstanding ones is acked with one `multiple` ack instead of one frame per job.
#[derive(Default, Clone)]
pub(super) struct Unacked(Arc<Mutex<BTreeSet<u64>>>);

impl Unacked {
    pub(super) fn insert(&self, tag: u64) {
        lock(&self.0).insert(tag);
    }

    /// Removes `tags` (ascending) and says how to ack them: a `multiple` ack up to a tag that covers
    /// every outstanding tag at or below it, then single acks for the rest.
    fn settle(&self, tags: &[u64]) -> (Option<u64>, Vec<u64>) {
        let mut outstanding = lock(&self.0);
        // The oldest job still under way: a `multiple` ack must stop below it.
        let oldest_other = outstanding.iter().find(|t| tags.binary_search(t).is_err()).copied();
        let mut up_to = None;
        let mut singles = Vec::new();
        for &tag in tags {
            outstanding.remove(&tag);
            if oldest_other.is_none_or(|o| tag < o) {
                up_to = Some(tag);
            } else {
                singles.push(tag);
            }
        }
        (up_to, singles)
    }
}

#[cfg(test)]
mod tests {
    use super::{NonZeroU16, Unacked, lane_windows};

    #[test]
    fn lanes_share_the_prefetch_window_without_exceeding_it() {
        let cases: [(u16, u16, &[u16]); 5] = [
            (256, 2, &[128, 128]),
            (256, 1, &[256]),
            (10, 3, &[4, 3, 3]),
            // Never a lane with a window of 0 (AMQP's "no limit"): fewer lanes instead.
            (2, 4, &[1, 1]),
            (1, 16, &[1]),
        ];
        let windows = |prefetch, channels| -> Vec<u16> {
            lane_windows(NonZeroU16::new(prefetch).unwrap(), channels)
                .into_iter()
                .map(NonZeroU16::get)
                .collect()
        };
        for (prefetch, channels, expected) in cases {
            assert_eq!(windows(prefetch, channels), expected, "{prefetch} over {channels}");
        }
        for (prefetch, channels) in [(u16::MAX, 16), (1000, 7), (3, 3), (17, 16)] {
            let windows = windows(prefetch, channels);
            assert_eq!(windows.len(), usize::from(channels.min(prefetch)));
            assert_eq!(windows.iter().map(|&w| u32::from(w)).sum::<u32>(), u32::from(prefetch));
            assert!(windows.iter().all(|&w| w > 0));
        }
    }

    #[test]
    fn a_multiple_ack_never_covers_a_job_still_under_way() {
        let unacked = Unacked::default();
        for tag in 1..=6 {
            unacked.insert(tag);
        }
        // 3 and 5 are still under way: 1-2 go as one multiple ack, 4 and 6 one by one.
        assert_eq!(unacked.settle(&[1, 2, 4, 6]), (Some(2), vec![4, 6]));
        assert_eq!(unacked.settle(&[5]), (None, vec![5]));
        assert_eq!(unacked.settle(&[3]), (Some(3), vec![]));
        unacked.insert(7);
        assert_eq!(unacked.settle(&[7]), (Some(7), vec![]));
    }
}
