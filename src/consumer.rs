//! The consumer loop: moves messages from `herald.jobs` to [`Dispatcher::deliver`] and outcomes back to
//! the broker. It owns connection, reconnection, acknowledgement and shutdown; nothing about delivery.
//!
//! Each finished job becomes one broker transaction on the channel it came from: its publishes (event,
//! reply, dead letter or retry) and its ack commit together or not at all (docs/guarantees.md "One outcome, once").
//! Transactions of many jobs are batched into one commit. herald consumes on `amqp.channels` transactional channels
//! ("lanes"), each with its share of the prefetch window and its own commit loop, so that with two one
//! lane's jobs are handled and framed while the other's commit is under way on the broker.

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{self, BrokerError};
use crate::config::{AmqpConfig, Config, QueueType};
use crate::decision::{self, Disposition, Step};
use crate::dispatch::{Dispatcher, Outcome};
use crate::events::{self, ErrorCode};
use crate::job::{InvalidJob, Job, JobError, Locale};
use crate::metrics::{Metrics, Sample};
use crate::receipts::Receipts;
use crate::reply::{OwnQueues, Replies, Reply, ReplyTo};
use crate::store::{Entry, PendingPut, Record, Store};
use crate::sync::lock;

/// Header showing the attempt number of a retried job, for operators reading a delay queue. Informational
/// only: herald takes attempt numbers from its outcome store, never from a header a publisher can write.
pub const ATTEMPT_HEADER: &str = "x-herald-attempt";
/// Header with the reason a message was dead-lettered.
pub const ERROR_HEADER: &str = "x-herald-error";

pub struct Consumer {
    /// Queue and exchange names, prefetch and the connection to open.
    config: AmqpConfig,
    dispatcher: Arc<Dispatcher>,
    /// The locale events name for a job without one (`templates.default_locale`).
    default_locale: Locale,
    /// Outcome records and claims: what makes a redelivered job a duplicate.
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// `/readyz`: true while consuming.
    ready: Arc<AtomicBool>,
    in_flight: InFlightIds,
    /// `(wait, queue)` of each retry delay queue, shortest first.
    delay_queues: Vec<(Duration, String)>,
    /// One per consuming channel, kept across reconnects.
    lanes: Vec<Lane>,
    /// Sequence number of the next commit, of any lane.
    commits: AtomicU64,
    /// Told of every message a provider accepted, for its delivery receipts (docs/receipts.md).
    receipts: Option<Arc<Receipts>>,
    /// Where outcomes whose session died go to be committed (see [`Orphans`]).
    orphans: Mutex<Orphans>,
    /// Queues a reply must not go to.
    own_queues: OwnQueues,
    /// Publishes committed jobs' replies on a connection of their own; set while [`Consumer::run`] runs.
    replies: std::sync::OnceLock<Replies>,
    /// Jobs held because the outcome store does not answer (see [`Consumer::held_for_store`]).
    store_outage: StoreOutage,
    /// The session consumes (`/readyz` also needs the store to answer).
    consuming: AtomicBool,
}

/// Outcomes reached after their session died, waiting for the current one. Without this, a job whose
/// provider call outlasted its connection lost its event whenever its copies kept coming back unacked:
/// each failed session counts a delivery, and past `delivery_limit` the queue dead-letters the job with no
/// event (seen with six failed sessions during one held provider call). An orphan is committed on the
/// current session's first lane without an ack (its delivery tag died with its channel), holding its
/// claim until then, so a copy of the job waits and then finds the outcome committed.
#[derive(Default)]
struct Orphans {
    /// The current session's first lane, while a session consumes.
    lane: Option<mpsc::UnboundedSender<Finished>>,
    /// Orphans that came while no session consumed, and when. Dropped after [`ORPHAN_PARKING`]: until then
    /// they hold their claims, which copies on other replicas wait for.
    waiting: Vec<(std::time::Instant, Finished)>,
    /// Job ids committed as orphans. Their redelivered copies are acked without a reply: the outcome and
    /// its reply are out. Checked in this process, not only in the store, because
    /// an orphan's copy always comes back (no ack was committed) and a lost mark must not make it a repeat.
    committed: std::collections::HashSet<String>,
}

/// How long a job held by a store outage waits, once the store answers, before it reads its record: the
/// replica that held its id may have lost its claim's lease during the outage, and needs a moment to write
/// the outcome it was holding (its writes retry every second at most).
const OUTAGE_SETTLE: Duration = Duration::from_secs(2);

/// Jobs held because the outcome store does not answer. An outage is logged when the first job is held and
/// when the last one goes on, not per job or per retry.
#[derive(Default)]
struct StoreOutage {
    held: std::sync::atomic::AtomicUsize,
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

/// How long an orphan waits for a session before it is dropped (its copy then republishes the outcome).
const ORPHAN_PARKING: Duration = Duration::from_secs(10);
/// More committed orphans than this, whose copies never came (the queue dead-lettered them), are forgotten.
const ORPHANS_REMEMBERED: usize = 10_000;

/// A consuming channel's commit state, which outlives the channel: its share of the prefetch window, its
/// commit-marker queue, and the batch its last connection left in doubt.
struct Lane {
    prefetch: NonZeroU16,
    /// This lane's commit-marker queue (see [`InDoubt`]), unique to the process and lane.
    marker_queue: String,
    /// The batch whose commit is under way, or was when its connection went.
    in_doubt: Mutex<Option<InDoubt>>,
}

/// `prefetch` split over `channels` lanes (at most one lane per job in the window): the lanes' windows
/// add up to `prefetch`, so at most `amqp.prefetch` jobs are in flight in all (docs/guarantees.md "In doubt").
fn lane_windows(prefetch: NonZeroU16, channels: u16) -> Vec<NonZeroU16> {
    let prefetch = prefetch.get();
    let lanes = channels.clamp(1, prefetch);
    (0..lanes)
        .map(|i| NonZeroU16::new(prefetch / lanes + u16::from(i < prefetch % lanes)).expect("no more lanes than jobs"))
        .collect()
}

/// A batch whose `tx.commit` was sent but not confirmed: the connection can drop between the broker's
/// commit and its `commit-ok`. Each commit also publishes its sequence number to a marker queue of its
/// lane that keeps only the newest message; on the next connection that queue says whether the batch
/// committed (print, count and mark its events, which are out) or not (drop it: the broker redelivers its
/// jobs, and their copies wait on its claims until then).
struct InDoubt {
    seq: u64,
    batch: Vec<Finished>,
}

/// One message to publish inside a job's transaction.
struct Publish {
    exchange: String,
    routing_key: String,
    body: Arc<Vec<u8>>,
    properties: BasicProperties,
}

/// A handled message, waiting for its transaction.
struct Finished {
    /// `None` for an orphan: its channel is gone, and with it the delivery to ack.
    delivery_tag: Option<u64>,
    publishes: Vec<Publish>,
    /// The event to print and count once committed.
    event: Option<(Sample, Arc<Vec<u8>>)>,
    dead: Option<ErrorCode>,
    retried: bool,
    /// Published once the transaction committed, on the replies connection.
    reply: Option<Reply>,
    /// Job id to mark committed in the store.
    record: Option<String>,
    /// The outcome record's write, awaited before the commit (a record precedes its event, docs/guarantees.md
    /// "One outcome, once").
    put: Option<PendingPut>,
    /// Held until the commit, so a second copy of the same job waits and then sees the outcome; if the
    /// commit never comes, until the outcome record is durable (see `Drop`).
    claim: Option<Claim>,
    _gauge: GaugeGuard,
}

impl Finished {
    fn new(delivery_tag: u64, gauge: GaugeGuard) -> Finished {
        Finished {
            delivery_tag: Some(delivery_tag),
            publishes: Vec::new(),
            event: None,
            dead: None,
            retried: false,
            reply: None,
            record: None,
            put: None,
            claim: None,
            _gauge: gauge,
        }
    }
}

impl Drop for Finished {
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

impl Consumer {
    /// Takes from `config` its `amqp` names, `templates.default_locale` and the `retry.schedule` that
    /// names the delay queues.
    pub fn new(
        config: &Config,
        dispatcher: Arc<Dispatcher>,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        ready: Arc<AtomicBool>,
    ) -> Self {
        Consumer {
            delay_queues: config.amqp.delay_queues(&config.retry.schedule),
            lanes: lane_windows(config.amqp.prefetch, config.amqp.channels)
                .into_iter()
                .map(|prefetch| Lane {
                    prefetch,
                    marker_queue: config.amqp.marker_queue(),
                    in_doubt: Mutex::default(),
                })
                .collect(),
            commits: AtomicU64::new(1),
            default_locale: config.templates.default_locale.clone(),
            config: config.amqp.clone(),
            dispatcher,
            store,
            metrics,
            ready,
            in_flight: InFlightIds::default(),
            receipts: None,
            orphans: Mutex::default(),
            own_queues: OwnQueues::new(&config.amqp),
            replies: std::sync::OnceLock::new(),
            store_outage: StoreOutage::default(),
            consuming: AtomicBool::new(false),
        }
    }

    /// Records each sent message for its delivery receipts.
    pub fn with_receipts(mut self, receipts: Arc<Receipts>) -> Self {
        self.receipts = Some(receipts);
        self
    }

    /// Consumes until `shutdown` fires, reconnecting with backoff whenever the broker goes away.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        // Ends after the drain below: the last commits' replies still go out.
        let finish = CancellationToken::new();
        let (replies, replier) = Replies::start(self.config.clone(), self.metrics.replies.clone(), finish.clone());
        let _ = self.replies.set(replies);
        self.consume_until(&shutdown).await;
        finish.cancel();
        let _ = replier.await;
    }

    async fn consume_until(self: &Arc<Self>, shutdown: &CancellationToken) {
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
                    tracing::warn!(error = %e, retry_in = ?backoff, "broker connection lost; reconnecting");
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

    fn set_ready(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::SeqCst);
        self.metrics.broker_connected.set(i64::from(consuming));
        self.update_ready();
    }

    /// `/readyz`: consuming, and no job held for the outcome store.
    fn update_ready(&self) {
        let held = self.store_outage.held.load(Ordering::SeqCst) > 0;
        self.ready
            .store(self.consuming.load(Ordering::SeqCst) && !held, Ordering::SeqCst);
    }

    /// One connection's lifetime. `Ok` only after a clean shutdown.
    async fn session(self: Arc<Self>, shutdown: &CancellationToken, consumed: &mut bool) -> Result<(), BrokerError> {
        // Named after the queue so operators (and tests) can tell deployments apart.
        let connection = broker::connect(&self.config, &format!("herald:{}", self.config.jobs_queue)).await?;
        let result = self.clone().consume(&connection, shutdown, consumed).await;
        if result.is_err() {
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
            self.settle_in_doubt(&side, lane).await?;
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
            let (done_tx, done_rx) = mpsc::unbounded_channel::<Finished>();
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
                            if let Some(finished) = this.handle(delivery, &stopping).await
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

    /// Commits the finished jobs of `lane` in batches: publishes and acks of a batch go in one broker
    /// transaction on the lane's channel.
    ///
    /// The commit is a lane's serial step: a transactional channel holds its publishes until `tx.commit`,
    /// and the broker then routes and stores them all (with one lane ~80% of the outbox step's time in
    /// `herald bench`; hence a second lane). So while one batch commits, every job of the lane that
    /// finishes meanwhile is taken in, and the next commit carries all of them whose outcome records are
    /// written: a job that finished just after a gather would otherwise wait out a whole extra commit,
    /// holding its place in the prefetch window.
    async fn commit_loop(
        self: Arc<Self>,
        lane: usize,
        channel: Channel,
        unacked: Unacked,
        mut done: mpsc::UnboundedReceiver<Finished>,
    ) -> Result<(), BrokerError> {
        let max = usize::from(self.lanes[lane].prefetch.get());
        let in_doubt = &self.lanes[lane].in_doubt;
        // Finished jobs not yet committed; the batch being sent; the batch committing; one buffer of event
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
            ready.retain(|f| f.delivery_tag.is_some() || f.record.is_some());
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
        batch: &mut [Finished],
        seq: u64,
    ) -> Result<(), BrokerError> {
        let marker = seq.to_string();
        let mut publishes = Vec::with_capacity(batch.iter().map(|f| f.publishes.len()).sum::<usize>() + 1);
        publishes.push(channel.basic_publish(
            "".into(),
            marker_queue.into(),
            BasicPublishOptions::default(),
            marker.as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        ));
        let mut tags: Vec<u64> = batch.iter().filter_map(|f| f.delivery_tag).collect();
        tags.sort_unstable();
        // Names and properties are moved into the frames, not copied: this runs while the broker waits.
        for finished in batch.iter_mut() {
            for p in &mut finished.publishes {
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

    /// Takes the outcome of a job whose session died before it could commit it (see [`Orphans`]). Only an
    /// outcome herald recorded: the job's copies find the record, so its event cannot be doubled. Anything
    /// else (a retry, a duplicate's reply, an invalid job's dead letter) is done again by the copy the broker
    /// redelivers, and is dropped here.
    fn adopt(self: &Arc<Self>, mut finished: Finished) {
        if finished.record.is_none() {
            return;
        }
        // Its delivery went with its channel: there is nothing to ack, and its tag means nothing now.
        finished.delivery_tag = None;
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

    /// Declares (again) each lane's marker queue, which keeps it from expiring.
    async fn declare_markers(&self, channel: &Channel) -> Result<(), BrokerError> {
        for lane in &self.lanes {
            broker::declare_marker_queue(channel, &lane.marker_queue, broker::MARKER_EXPIRES).await?;
        }
        Ok(())
    }

    /// Decides a batch `lane` left in doubt on the last connection (see [`InDoubt`]), before consuming again.
    async fn settle_in_doubt(&self, channel: &Channel, lane: &Lane) -> Result<(), BrokerError> {
        let Some(seq) = lock(&lane.in_doubt).as_ref().map(|d| d.seq) else {
            return Ok(());
        };
        let newest = channel
            .basic_get(lane.marker_queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await?;
        let committed = newest.is_some_and(|m| m.data == seq.to_string().as_bytes());
        let Some(mut parked) = lock(&lane.in_doubt).take() else {
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

    /// After a batch committed: print and count its events, mark its records committed. Clearing the
    /// batch releases the claims and the in-flight gauge.
    fn committed(&self, batch: &mut Vec<Finished>, lines: &mut Vec<u8>) {
        self.metrics.commit_batch.observe(batch.len() as f64);
        let mut committed = Vec::with_capacity(batch.len());
        // One write for the batch's event lines: stdout is a pipe, a syscall per event adds up.
        lines.clear();
        let replies = self.replies.get();
        for finished in batch.iter_mut() {
            if let (Some(reply), Some(replies)) = (finished.reply.take(), replies) {
                replies.send(reply);
            }
            if let Some((sample, json)) = &finished.event {
                lines.extend_from_slice(json);
                lines.push(b'\n');
                self.metrics.record(sample);
            }
            if let Some(code) = finished.dead {
                self.metrics.dead_lettered.with_label_values(&[code.as_str()]).inc();
            }
            if finished.retried {
                self.metrics.retries.inc();
            }
            if let Some(id) = &finished.record {
                committed.push(id.clone());
            }
        }
        let orphans: Vec<&String> = batch
            .iter()
            .filter(|f| f.delivery_tag.is_none())
            .filter_map(|f| f.record.as_ref())
            .collect();
        if !orphans.is_empty() {
            let mut remembered = lock(&self.orphans);
            if remembered.committed.len() + orphans.len() > ORPHANS_REMEMBERED {
                remembered.committed.clear();
            }
            remembered.committed.extend(orphans.into_iter().cloned());
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

    /// One message: parse, claim its id, read its outcome record, decide, deliver if the decision says so,
    /// and turn the disposition into its transaction. `None` when shutdown came while it waited for
    /// another replica's claim: nothing was done.
    async fn handle(&self, delivery: Delivery, shutdown: &CancellationToken) -> Option<Finished> {
        let gauge = GaugeGuard::new(&self.metrics);
        let props = &delivery.properties;
        let content_type = props.content_type().as_ref().map(|s| s.as_str());
        let copy = decision::Copy::new(delivery.redelivered, header_u64(props, "x-delivery-count"));
        let body = Arc::new(delivery.data);
        let mut finished = Finished::new(delivery.delivery_tag, gauge);
        let reply_to = props
            .reply_to()
            .as_ref()
            .map(|to| ReplyTo::parse(to.as_str(), &self.own_queues));
        let job = Job::from_message(&body, content_type).and_then(|job| match &reply_to {
            Some(Err(e)) => Err(InvalidJob {
                reason: JobError::ReplyTo(e.clone()),
                id: Some(job.id),
                user_id: Some(job.user_id),
                channel: Some(job.channel),
                ip: job.ip.map(|ip| ip.to_string()),
            }),
            _ => Ok(job),
        });
        // Never a reply to an address refused: it could close the replies connection.
        let reply_to = reply_to.and_then(Result::ok);
        let job = match job {
            Ok(job) => job,
            Err(invalid) => {
                tracing::warn!(job_id = invalid.id.as_deref().unwrap_or("-"), reason = %events::scrub(&invalid.reason.to_string()),
                    "invalid job dead-lettered");
                self.transaction(
                    &mut finished,
                    None,
                    decision::rejected(&invalid),
                    props,
                    reply_to.as_ref(),
                    &body,
                );
                return Some(finished);
            }
        };
        let (claim, held) = tokio::select! {
            claim = self.claim(&job.id) => claim,
            _ = shutdown.cancelled() => return None,
        };
        finished.claim = Some(claim);
        // Kept, not taken: copies from dead sessions wait on the same claim, and the first one to get it
        // must not leave the copy that counts (the current session's) without the answer.
        if copy.redelivered && lock(&self.orphans).committed.contains(&job.id) {
            tracing::info!(job_id = %job.id, "copy of a job committed after its session died acknowledged");
            return Some(finished);
        }
        if held {
            // Held by a store outage: give the replica that held this id before it (its lease may have run
            // out meanwhile) the time to write the outcome it was waiting to record.
            tokio::select! {
                _ = tokio::time::sleep(OUTAGE_SETTLE) => {}
                _ = shutdown.cancelled() => return None,
            }
        }
        // A record that cannot be read is not taken as none: the job waits until the store answers.
        let prior = tokio::select! {
            prior = self.held_for_store(&job.id, || self.store.get(&job.id)) => prior,
            _ = shutdown.cancelled() => return None,
        };
        let disposition = match decision::before_delivery(&job, prior, copy, self.poison_limit(), &self.default_locale)
        {
            Step::Settled(disposition) => *disposition,
            Step::Deliver { attempt } => {
                // A report that overtakes the provider's answer is asked again, not lost (docs/receipts.md "State").
                let sending = self.receipts.as_ref().and_then(|r| r.sending(&job.id));
                let delivered = self.dispatcher.deliver(&job, attempt).await;
                if let (Some(receipts), Outcome::Sent { provider, receipt }) = (&self.receipts, &delivered.outcome) {
                    receipts.sent(&job, provider, receipt);
                }
                drop(sending);
                decision::after_delivery(&job, attempt, &delivered, &self.default_locale)
            }
        };
        self.transaction(
            &mut finished,
            Some(&job.id),
            disposition,
            props,
            reply_to.as_ref(),
            &body,
        );
        Some(finished)
    }

    /// Runs a store operation until it answers: while the store fails, the job is held (never delivered
    /// on a guess), counted in `herald_store_held_jobs`, and `/readyz` says not ready. Its broker delivery
    /// stays unacked meanwhile, so no delivery is counted against the queue's limit.
    async fn held_for_store<T, F, Fut>(&self, id: &str, op: F) -> T
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

    /// Where herald's queue dead-letters poison (docs/guarantees.md "Poison"): only a quorum queue counts deliveries.
    fn poison_limit(&self) -> decision::PoisonLimit {
        (self.config.queue_type == QueueType::Quorum).then_some(self.config.delivery_limit)
    }

    /// Turns a disposition into what the copy's transaction holds: its store write (awaited before the
    /// commit: a record precedes its event, docs/guarantees.md "One outcome, once"), its publishes, and what to print
    /// and count once committed. `job_id` is the parsed job's.
    fn transaction(
        &self,
        finished: &mut Finished,
        job_id: Option<&str>,
        disposition: Disposition,
        props: &BasicProperties,
        reply_to: Option<&ReplyTo>,
        body: &Arc<Vec<u8>>,
    ) {
        match disposition {
            Disposition::Duplicate { reply } => {
                tracing::info!(
                    job_id = job_id.unwrap_or("-"),
                    "duplicate job id acknowledged without sending"
                );
                // Serialized only for a caller waiting on reply_to: most duplicates have none.
                if let Some(to) = reply_to {
                    finished.reply = Some(reply_of(to, props, reply.kind.as_str(), &Arc::new(reply.to_json())));
                }
            }
            Disposition::Republish { record, recorded } => {
                tracing::info!(
                    job_id = job_id.unwrap_or("-"),
                    "republishing the recorded outcome of an interrupted job"
                );
                let json = Arc::new(record.event.into_bytes());
                self.outcome_publishes(
                    finished,
                    props,
                    reply_to,
                    body,
                    recorded.kind.as_str(),
                    job_id,
                    &json,
                    record.dead_reason.as_deref(),
                );
                finished.dead = recorded
                    .error
                    .as_ref()
                    .map(|e| e.code)
                    .filter(|_| record.dead_reason.is_some());
                // Printed and counted after the commit like any outcome: the first time was never committed.
                finished.event = Some((Sample::recorded(&recorded), json));
                finished.record = job_id.map(str::to_owned);
            }
            Disposition::Retry {
                after,
                next_attempt,
                reason,
            } => {
                tracing::info!(job_id = job_id.unwrap_or("-"), next_attempt, retry_in = ?after, error = %reason, "retry scheduled");
                // Written before the retry's publish commits, like an outcome record: the copy coming back
                // from the delay queue reads its attempt number (and that it passed the limits) here.
                if let Some(id) = job_id {
                    finished.put = Some(self.store.put(id, Entry::Retrying { next_attempt }));
                }
                finished
                    .publishes
                    .push(self.retry_publish(props, body, next_attempt, after));
                finished.retried = true;
            }
            Disposition::Final { event, dead_reason } => {
                let json = Arc::new(event.to_json());
                if let Some(id) = job_id {
                    let record = Record {
                        // serde_json writes UTF-8: checked, not scanned for replacements chunk by chunk.
                        event: String::from_utf8(json.to_vec())
                            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
                        dead_reason: dead_reason.clone(),
                        committed: false,
                    };
                    finished.put = Some(self.store.put(id, Entry::Outcome(record)));
                    finished.record = Some(id.to_owned());
                }
                self.outcome_publishes(
                    finished,
                    props,
                    reply_to,
                    body,
                    event.kind.as_str(),
                    job_id,
                    &json,
                    dead_reason.as_deref(),
                );
                finished.dead = dead_reason.and(event.error.as_ref().map(|e| e.code));
                finished.event = Some((Sample::of(&event), json));
            }
            Disposition::Rejected { event, reason } => {
                let json = Arc::new(event.to_json());
                self.outcome_publishes(
                    finished,
                    props,
                    reply_to,
                    body,
                    event.kind.as_str(),
                    event.job_id.as_deref(),
                    &json,
                    Some(&reason),
                );
                finished.dead = Some(ErrorCode::InvalidJob);
                finished.event = Some((Sample::of(&event), json));
            }
        }
    }

    /// The publishes of an outcome: dead letter (if any), event, reply. `json` is the event serialized
    /// once, the same bytes the outcome record holds.
    #[allow(clippy::too_many_arguments)]
    fn outcome_publishes(
        &self,
        finished: &mut Finished,
        props: &BasicProperties,
        reply_to: Option<&ReplyTo>,
        body: &Arc<Vec<u8>>,
        kind: &str,
        job_id: Option<&str>,
        json: &Arc<Vec<u8>>,
        dead_reason: Option<&str>,
    ) {
        if let Some(reason) = dead_reason {
            finished.publishes.push(self.dead_publish(props, body, reason));
        }
        finished.publishes.push(self.event_publish(kind, job_id, json));
        if let Some(to) = reply_to {
            finished.reply = Some(reply_of(to, props, kind, json));
        }
    }

    /// Claims a job id: in this process, then across replicas (Redis). A copy that finds it claimed waits
    /// until the holder commits (or its record is durable), or the holder's lease runs out (it died). While
    /// Redis does not answer, the job is held (see [`Consumer::held_for_store`]); `true` when it was.
    async fn claim(&self, id: &str) -> (Claim, bool) {
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

    fn event_publish(&self, kind: &str, job_id: Option<&str>, json: &Arc<Vec<u8>>) -> Publish {
        Publish {
            exchange: self.config.events_exchange.clone(),
            routing_key: kind.to_owned(),
            body: json.clone(),
            properties: broker::event_properties(kind, job_id),
        }
    }

    fn dead_publish(&self, props: &BasicProperties, body: &Arc<Vec<u8>>, reason: &str) -> Publish {
        Publish {
            exchange: String::new(),
            routing_key: self.config.dead_queue.clone(),
            body: body.clone(),
            properties: broker::with_error_header(props, reason),
        }
    }

    /// The job again, to the delay queue of its wait with a per-message TTL; the broker dead-letters it
    /// back to `herald.jobs` when the TTL runs out.
    fn retry_publish(&self, props: &BasicProperties, body: &Arc<Vec<u8>>, attempt: u32, after: Duration) -> Publish {
        let mut headers = FieldTable::default();
        for (k, v) in props.headers().iter().flat_map(|h| h.inner()) {
            // The broker's bookkeeping (and herald's own header) must not travel with the copy.
            let k_str = k.as_str();
            if !(matches!(k_str, "x-delivery-count" | "x-death" | ATTEMPT_HEADER)
                || k_str.starts_with("x-first-death-")
                || k_str.starts_with("x-last-death-"))
            {
                headers.insert(k.clone(), v.clone());
            }
        }
        headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(i64::from(attempt)));
        Publish {
            exchange: String::new(),
            routing_key: delay_queue(&self.delay_queues, after)
                .unwrap_or(&self.config.retry_queue)
                .to_owned(),
            body: body.clone(),
            properties: props
                .clone()
                .with_headers(headers)
                .with_delivery_mode(2)
                .with_expiration(after.as_millis().to_string().into()),
        }
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

/// The delay queue for a wait: the one whose own wait is nearest to it (by ratio), so that a jittered or
/// Retry-After wait queues only behind waits of about its length.
fn delay_queue(queues: &[(Duration, String)], after: Duration) -> Option<&str> {
    let distance = |w: Duration| (w.as_secs_f64().max(1e-3) / after.as_secs_f64().max(1e-3)).ln().abs();
    queues
        .iter()
        .min_by(|a, b| distance(a.0).total_cmp(&distance(b.0)))
        .map(|(_, name)| name.as_str())
}

/// Moves the jobs of `waiting` whose outcome records are written (or who have none) to `ready`, the rest
/// stay for a later commit; when none is written yet, waits for them all. A record must be stored before
/// its event can leave, so that after a crash a redelivered job finds it (docs/guarantees.md "One outcome, once"); a
/// failed write only loses that protection.
async fn take_recorded(waiting: &mut Vec<Finished>, ready: &mut Vec<Finished>) {
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

fn recorded(finished: &mut Finished, result: Result<(), crate::store::StoreError>) {
    if let Err(e) = result {
        tracing::warn!(job_id = finished.record.as_deref().unwrap_or("-"), error = %e, "outcome not recorded");
        finished.record = None;
    }
}

/// Delivery tags handed out on the consuming channel and not yet acked. A batch whose tags are the
/// oldest outstanding ones is acked with one `multiple` ack instead of one frame per job.
#[derive(Default, Clone)]
struct Unacked(Arc<Mutex<BTreeSet<u64>>>);

impl Unacked {
    fn insert(&self, tag: u64) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(tag);
    }

    /// Removes `tags` (ascending) and says how to ack them: a `multiple` ack up to a tag that covers
    /// every outstanding tag at or below it, then single acks for the rest.
    fn settle(&self, tags: &[u64]) -> (Option<u64>, Vec<u64>) {
        let mut outstanding = self.0.lock().unwrap_or_else(|e| e.into_inner());
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

/// The reply to publish once the job's transaction committed.
fn reply_of(to: &ReplyTo, props: &BasicProperties, kind: &str, json: &Arc<Vec<u8>>) -> Reply {
    Reply {
        to: to.clone(),
        correlation_id: props.correlation_id().clone(),
        kind: broker::short(kind).unwrap_or_default(),
        body: json.clone(),
    }
}

fn header_u64(props: &BasicProperties, name: &str) -> Option<u64> {
    let value = props.headers().as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongString(s) => s.to_string().parse().ok(),
        _ => None,
    }
}

/// Keeps `herald_jobs_in_flight` right however a handled message ends (committed or dropped).
struct GaugeGuard(prometheus::IntGauge);

impl GaugeGuard {
    fn new(metrics: &Metrics) -> GaugeGuard {
        metrics.in_flight.inc();
        GaugeGuard(metrics.in_flight.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Job ids being handled by this process. A second copy of a job under way (a replay racing the
/// original) waits for the first to commit, then finds its outcome in the store.
#[derive(Default, Clone)]
struct InFlightIds(Arc<Mutex<HashMap<String, Arc<Notify>>>>);

struct Claim {
    ids: InFlightIds,
    id: String,
    done: Arc<Notify>,
    /// The same id claimed across replicas, when the store shares claims.
    shared: Option<SharedClaim>,
}

/// A job id claimed in Redis. Released on drop; [`SharedClaim::into_id`] hands the release to the
/// commit's mark instead.
struct SharedClaim {
    store: Arc<Store>,
    id: String,
}

impl SharedClaim {
    fn into_id(mut self) -> String {
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
    async fn claim(&self, id: &str) -> Claim {
        loop {
            let waiting = {
                let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
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
            let still_held = self
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(id)
                .is_some_and(|d| Arc::ptr_eq(d, &waiting));
            if still_held {
                notified.await;
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.ids.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
        self.done.notify_waiters();
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
