//! One broker connection's lifetime: connect, declare, settle what the last one left in doubt, open the
//! lanes and hand their deliveries to [`Consumer::handle`], reconnect with backoff when the broker goes, and
//! drain at shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::Channel;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeleteOptions};
use lapin::types::{FieldTable, ShortString};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::delivery::Inbound;
use super::lane::Unacked;
use super::uncommitted::Uncommitted;
use super::{Consumer, lock};
use crate::broker::{self, BrokerError};

impl Consumer {
    pub(super) async fn consume_until(self: &Arc<Self>, shutdown: &CancellationToken) {
        const FIRST: Duration = Duration::from_millis(100);
        let mut backoff = FIRST;
        while !shutdown.is_cancelled() {
            let mut consumed = false;
            match self.clone().session(shutdown, &mut consumed).await {
                Ok(()) => break,
                Err(e) => {
                    self.set_ready(false);
                    if broker::is_stall(&e) {
                        self.metrics.broker_stalls.inc();
                    }
                    // Backoff is for a broker that keeps refusing; one that served us starts it over.
                    if consumed {
                        backoff = FIRST;
                    }
                    // Said as is: neither is a lost connection.
                    if matches!(e, BrokerError::Connect { .. } | BrokerError::Declare { .. }) {
                        tracing::warn!("{e}; retrying in {}", humantime::format_duration(backoff));
                    } else {
                        tracing::warn!(error = %e, retry_in = ?backoff, "broker connection lost; reconnecting");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        self.set_ready(false);
    }

    /// One connection's lifetime. `Ok` only after a clean shutdown.
    async fn session(self: Arc<Self>, shutdown: &CancellationToken, consumed: &mut bool) -> Result<(), BrokerError> {
        // Named after the queue so operators (and tests) can tell deployments apart.
        let connection = broker::connect_framed(
            &self.config,
            &format!("herald:{}", self.config.jobs_queue),
            &self.frame_max,
        )
        .await?;
        let mut events = connection.events_listener().boxed();
        let result = self.clone().consume(&connection, shutdown, consumed).await;
        if let Err(e) = &result {
            // Lost to a delivery larger than its frames: the next connection asks for larger ones, or it
            // would be lost to the same delivery every time.
            self.frame_max.raise_after(e, &mut events, "consumer");
            // Closed and awaited, not dropped: every transaction of this connection is over (committed
            // or rolled back) before the next session asks the marker queues about the ones in doubt.
            let closing = connection.close(200, "reconnecting".into());
            if tokio::time::timeout(Duration::from_secs(5), closing).await.is_err() {
                tracing::warn!(
                    "the failed broker connection did not close within 5 s; a commit in doubt may be settled as not committed"
                );
            }
        }
        result
    }

    /// Opens the lanes on `connection` and moves deliveries to their handlers and finished jobs to their
    /// lane's commit loop, until shutdown (then drains) or the first broker error.
    async fn consume(
        self: Arc<Self>,
        connection: &lapin::Connection,
        shutdown: &CancellationToken,
        consumed: &mut bool,
    ) -> Result<(), BrokerError> {
        // Declarations, markers and in-doubt settling go on a channel of their own: a consuming channel
        // is transactional and takes nothing else while a commit is under way.
        let side = connection.create_channel().await?;
        broker::declare_topology(&side, &self.config).await?;
        broker::declare_delay_queues(&side, &self.config, &self.delay_queues).await?;
        self.declare_markers(&side).await?;
        for lane in &self.lanes {
            self.settle_in_doubt(&side, &lane.in_doubt, lane.marker_queue.as_str())
                .await?;
        }
        let mut refresh = tokio::time::interval(broker::MARKER_REFRESH);
        refresh.reset();

        // Every lane is set up before any consumes: a lane failing to open must not leave another's
        // prefetched jobs to go back with a delivery counted that nothing handled.
        let mut lanes = Vec::with_capacity(self.lanes.len());
        for lane in &self.lanes {
            let channel = connection.create_channel().await?;
            channel
                .basic_qos(lane.prefetch.get(), BasicQosOptions::default())
                .await?;
            channel.tx_select().await?;
            lanes.push(channel);
        }
        let mut channels = Vec::with_capacity(self.lanes.len());
        let mut deliveries = Vec::with_capacity(self.lanes.len());
        for (i, channel) in lanes.into_iter().enumerate() {
            let consumer = channel
                .basic_consume(
                    self.config.jobs_queue.as_str().into(),
                    format!("herald.{i}").as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            channels.push((channel, consumer.tag()));
            // A lane's stream ends with `None`: the broker cancelled its consumer.
            deliveries.push(
                consumer
                    .map(move |d| (i, Some(d)))
                    .chain(futures_util::stream::once(async move { (i, None) }))
                    .boxed(),
            );
        }
        let mut deliveries = futures_util::stream::select_all(deliveries);
        let markers: Vec<&str> = self.lanes.iter().map(|l| l.marker_queue.as_str()).collect();
        tracing::info!(broker = %broker::redacted_url(&self.config), queue = %self.config.jobs_queue,
            prefetch = self.config.prefetch, channels = self.lanes.len(), marker_queues = ?markers, "consuming");
        self.set_ready(true);
        *consumed = true;

        let mut done = Vec::with_capacity(self.lanes.len());
        let mut unacked = Vec::with_capacity(self.lanes.len());
        let mut committers = tokio::task::JoinSet::new();
        for (i, (channel, _)) in channels.iter().enumerate() {
            let (done_tx, done_rx) = mpsc::unbounded_channel::<Uncommitted>();
            let lane_unacked = Unacked::default();
            committers.spawn(
                self.clone()
                    .commit_loop(i, channel.clone(), lane_unacked.clone(), done_rx),
            );
            done.push(done_tx);
            unacked.push(lane_unacked);
        }
        {
            let mut orphans = lock(&self.orphans);
            for (_, orphan) in orphans.waiting.drain(..) {
                let _ = done[0].send(orphan);
            }
            orphans.lane = Some(done[0].clone());
        }
        // Deliveries run concurrently, bounded by the prefetch windows: the broker never hands out more.
        let tracker = TaskTracker::new();
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = refresh.tick() => {
                    if let Err(e) = self.declare_markers(&side).await {
                        break Err(e);
                    }
                }
                // Commit loops end only when their lane fails (their senders live until the drain).
                Some(committed) = committers.join_next() => break match committed {
                    Ok(Err(e)) => Err(e),
                    _ => Err(BrokerError::Closed("commit loop stopped".into())),
                },
                Some((lane, next)) = deliveries.next() => match next {
                    Some(Ok(delivery)) => {
                        unacked[lane].insert(delivery.delivery_tag);
                        let this = self.clone();
                        let done = done[lane].clone();
                        let stopping = shutdown.clone();
                        tracker.spawn(async move {
                            // `None`: abandoned at shutdown before anything happened; the broker redelivers.
                            if let Some(finished) = this.handle(Inbound::from(delivery), &stopping).await
                                && let Err(mpsc::error::SendError(finished)) = done.send(finished)
                            {
                                // Its session is gone: the broker redelivers the job.
                                this.adopt(finished);
                            }
                        });
                    }
                    Some(Err(e)) => break Err(BrokerError::Amqp(e)),
                    None => break Err(BrokerError::Closed("consumer cancelled by the broker".into())),
                },
            }
        };
        self.set_ready(false);
        // Orphans wait for the next session from now on; and the drain below ends when its senders go.
        lock(&self.orphans).lane = None;
        if result.is_err() {
            committers.abort_all();
            // Cancelled before the connection closes, where the connection still works: a job returned by
            // one channel's close is then not handed to another channel about to close too, which would
            // count it twice in `x-delivery-count`. (A channel the broker closed has returned its jobs
            // already, and a lost connection cancels nothing: there a job can still count twice.)
            cancel_all(&channels).await;
            return result;
        }
        // Drain: stop receiving, let every delivery under way finish and commit, then close. Messages
        // prefetched but not started return to the queue when the channels close.
        cancel_all(&channels).await;
        tracker.close();
        tracker.wait().await;
        drop(done);
        while let Some(committed) = committers.join_next().await {
            match committed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "final commit failed; the broker will redeliver"),
                Err(e) => tracing::warn!(error = %e, "commit loop failed"),
            }
        }
        for (channel, _) in &channels {
            let _ = channel.close(200, "shutdown".into()).await;
        }
        // Of use only to this process's next session: gone with it rather than left to expire.
        for lane in &self.lanes {
            let _ = side
                .queue_delete(lane.marker_queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = connection.close(200, "shutdown".into()).await;
        tracing::info!("consumer drained and closed");
        Ok(())
    }

    /// Declares (again) each lane's marker queue, which keeps it from expiring.
    async fn declare_markers(&self, channel: &Channel) -> Result<(), BrokerError> {
        for lane in &self.lanes {
            broker::declare_marker_queue(channel, &lane.marker_queue, broker::MARKER_EXPIRES).await?;
        }
        Ok(())
    }
}

/// Cancels the lanes' consumers, all at once, giving up after a second: a cancel waits behind a commit
/// under way on its channel.
async fn cancel_all(channels: &[(Channel, ShortString)]) {
    let cancels = channels
        .iter()
        .map(|(channel, tag)| channel.basic_cancel(tag.clone(), BasicCancelOptions::default()));
    let _ = tokio::time::timeout(Duration::from_secs(1), futures_util::future::join_all(cancels)).await;
}
