//! The consumer loop: moves messages from `herald.jobs` to [`Dispatcher::deliver`] and outcomes back to
//! the broker. It owns connection, reconnection, acknowledgement and shutdown; nothing about delivery.
//!
//! Each finished job becomes one broker transaction on the channel it came from: its publishes (event,
//! reply, dead letter or retry) and its ack commit together or not at all (docs/guarantees.md "One outcome, once").
//! Transactions of many jobs are batched into one commit. herald consumes on `amqp.channels` transactional channels
//! ("lanes"), each with its share of the prefetch window and its own commit loop, so that with two one
//! lane's jobs are handled and framed while the other's commit is under way on the broker.
//!
//! - [`session`]: one connection's lifetime: connect, reconnect with backoff, open the lanes, drain at
//!   shutdown.
//! - [`delivery`]: herald's own view of a broker delivery ([`delivery::Inbound`]), built from lapin's once.
//! - [`inbound`]: one message, from the broker's delivery to what its transaction holds.
//! - [`plan`]: what a copy's transaction holds, as a value: publishes, ack, store write, and what follows.
//! - [`lane`]: a lane's commit loop, which carries finished jobs into the broker in batches.
//! - [`uncommitted`]: a handled message waiting for its lane's transaction (plan, store write, claim).
//! - [`in_doubt`]: commits the broker never confirmed, and outcomes whose session died (orphans).
//! - [`claims`]: job ids claimed while under way, in this process and across replicas.
//! - [`outage`]: jobs held while the outcome store does not answer.

mod claims;
mod delivery;
mod in_doubt;
mod inbound;
mod lane;
mod outage;
mod plan;
mod session;
mod uncommitted;
mod workflow;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{AmqpConfig, Config};
use crate::dispatch::Dispatcher;
use crate::job::Locale;
use crate::metrics::Metrics;
use crate::receipts::Receipts;
use crate::reply::{OwnQueues, Replies};
use crate::store::Store;
use crate::sync::lock;

use claims::InFlightIds;
use in_doubt::Orphans;
use lane::{Lane, lane_windows};
use outage::StoreOutage;

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
    /// The frames its connections ask for, raised for good by a delivery larger than them.
    frame_max: crate::broker::FrameMax,
    /// `[workflows]` (docs/workflows.md).
    workflows: crate::config::workflows::Workflows,
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
            delay_queues: config.amqp.delay_queues(&config.delay_schedule()),
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
            frame_max: crate::broker::FrameMax::default(),
            workflows: config.workflows.clone(),
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
}
