//! Delivery receipts (docs/receipts.md): a provider's "accepted" is not "delivered". herald remembers each
//! message it sent through a provider that reports receipts ([`Receipts::sent`]), takes the provider's
//! status callbacks ([`Receipts::apply`], behind the routes in `http::receipts`), and turns each job's
//! first final status into one `gd_send_{sms,voice}_status` event, counted in
//! `gd_send_delivery_total` and `gd_send_delivery_seconds`.
//!
//! Nothing here is on the job path: a sent message is recorded in a task of its own.

pub mod meta;
pub mod providers;
mod publish;
pub mod state;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::config::{Config, Secret, VonageSignatureMethod, WebhookKey};
use crate::job::{Channel, Job};
use crate::providers::{ProviderKind, Receipt};
use crate::sync::lock;
use publish::Publisher;
pub use state::{Advance, SentMessage, State, StateError};
pub use status::{Reported, Status};

/// Messages the local state keeps at most (about 400 bytes each); with Redis there is no such bound.
pub const LOCAL_CAPACITY: usize = 250_000;

/// Records kept in memory while the state cannot be written (Redis down), at most: about 400 bytes each,
/// the messages of a minute at a few hundred a second. Beyond it a record is lost, counted and logged.
pub const PENDING_CAPACITY: usize = 50_000;

/// How long the writer of waiting records waits after a failure: doubling from the first to the second.
pub const PENDING_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

/// Event types of final receipts, also their routing keys on `herald.events`.
pub const SMS_STATUS: &str = "gd_send_sms_status";
pub const VOICE_STATUS: &str = "gd_send_voice_status";
pub const WHATSAPP_STATUS: &str = "gd_send_whatsapp_status";

/// The providers with a receipt route, and how each names a message in its callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptProvider {
    /// By its `SM…`/`CA…` sid.
    Twilio,
    /// By the job id (`webhook-id` of the send).
    Webhook,
    /// By the `message-id` of the (first) part sent, `messageId` in its receipts.
    Vonage,
    /// By the `message_uuid` of the send, `MessageUUID` in its callbacks.
    Plivo,
    /// By the `messageId` of the send, in its reports too.
    Infobip,
    /// By the `wamid` of the send (`messages[0].id`), `statuses[].id` in its webhooks.
    Meta,
}

impl ReceiptProvider {
    pub fn name(self) -> &'static str {
        match self {
            ReceiptProvider::Twilio => "twilio",
            ReceiptProvider::Webhook => "webhook",
            ReceiptProvider::Vonage => "vonage",
            ReceiptProvider::Plivo => "plivo",
            ReceiptProvider::Infobip => "infobip",
            ReceiptProvider::Meta => "meta",
        }
    }

    fn key(self, id: &str) -> String {
        format!("{}:{id}", self.name())
    }
}

/// A job's final receipt, for whoever learns from delivery (the fraud guard, docs/fraud-and-limits.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalReceipt {
    pub job_id: String,
    pub channel: Channel,
    pub country: String,
    pub status: Status,
    /// The workflow step the message was (docs/workflows.md).
    pub step: Option<u32>,
}

impl FinalReceipt {
    /// Undelivered, failed, busy, unanswered or canceled: for the guard (docs/fraud-and-limits.md), a send that was not
    /// verified.
    pub fn unverified(&self) -> bool {
        !self.status.is_delivered()
    }
}

/// Told of every final receipt once, after its event is published.
// docs/fraud-and-limits.md "Adaptive guard": the adaptive toll-fraud guard implements this and counts `unverified()`
// receipts against the destination's budget, like a code that was never verified.
pub trait ReceiptSink: Send + Sync {
    fn final_receipt(&self, receipt: &FinalReceipt);
}

/// A final receipt's event (docs/receipts.md).
#[derive(Debug, Clone, Serialize)]
pub struct StatusEvent {
    pub date: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub description: &'static str,
    pub job_id: String,
    pub channel: Channel,
    pub status: &'static str,
    pub provider: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    pub country: String,
    pub recipient: String,
    /// From the provider accepting the message to this final status.
    pub delivery_ms: u64,
}

/// What a callback did, for its answer and its count (`herald_receipts_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The final status was evented now.
    Evented,
    Intermediate,
    /// Repeated or out of order: nothing moved.
    Stale,
    /// A final status after the evented one.
    Duplicate,
    /// No message herald sent has this id.
    Unknown,
    /// A status outside the vocabulary, or one the message's channel cannot have.
    Ignored,
}

impl Applied {
    pub fn as_str(self) -> &'static str {
        match self {
            Applied::Evented => "final",
            Applied::Intermediate => "intermediate",
            Applied::Stale => "stale",
            Applied::Duplicate => "duplicate",
            Applied::Unknown => "unknown",
            Applied::Ignored => "ignored",
        }
    }
}

/// Why a callback must be tried again later (the route answers 503; providers retry).
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("receipt event not published: {0}")]
    Broker(#[source] crate::broker::BrokerError),
    #[error("another callback is publishing this message's final status")]
    Busy,
    /// The job is being sent, its record not written yet: the report overtook the provider's answer.
    #[error("the message is still being sent")]
    Sending,
}

pub struct ReceiptMetrics {
    delivery: IntCounterVec,
    delivery_seconds: HistogramVec,
    /// Callbacks taken, by provider and [`Applied`].
    pub callbacks: IntCounterVec,
    /// Callbacks refused, by provider and reason (`signature`, `too_large`, `malformed`, `disabled`).
    pub rejected: IntCounterVec,
    /// Sent messages whose receipt state could not be written at once (each kept to be written later).
    pub record_errors: prometheus::IntCounter,
    /// Records waiting to be written.
    pub pending: prometheus::IntGauge,
    /// Records never written: over [`PENDING_CAPACITY`], or still waiting at shutdown.
    pub lost: prometheus::IntCounter,
}

impl ReceiptMetrics {
    pub fn new(registry: &Registry) -> ReceiptMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric name");
            c
        };
        let delivery = counter(
            "gd_send_delivery_total",
            "Final delivery receipts, once per job, by channel, provider, country and status",
            &["channel", "provider", "country", "status"],
        );
        let delivery_seconds = HistogramVec::new(
            HistogramOpts::new(
                "gd_send_delivery_seconds",
                "Time from the provider accepting a message to its final receipt",
            )
            .buckets(vec![1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0]),
            &["channel", "provider"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(delivery_seconds.clone()))
            .expect("unique metric name");
        let callbacks = counter(
            "herald_receipts_total",
            "Status callbacks taken, by provider and result (final, intermediate, stale, duplicate, unknown, ignored)",
            &["provider", "result"],
        );
        let rejected = counter(
            "herald_receipts_rejected_total",
            "Status callbacks refused, by provider and reason (signature, expired, replay, too_large, malformed, disabled)",
            &["provider", "reason"],
        );
        let record_errors = prometheus::IntCounter::new(
            "herald_receipts_record_errors_total",
            "Sent messages whose receipt state could not be written at once (kept, and written when the state is back)",
        )
        .expect("valid metric");
        registry
            .register(Box::new(record_errors.clone()))
            .expect("unique metric name");
        let pending = prometheus::IntGauge::new(
            "herald_receipts_pending",
            "Receipt records waiting for the state to be written (their callbacks get 503 meanwhile)",
        )
        .expect("valid metric");
        registry
            .register(Box::new(pending.clone()))
            .expect("unique metric name");
        let lost = prometheus::IntCounter::new(
            "herald_receipts_lost_total",
            "Receipt records never written: over the bound of waiting records, or waiting at shutdown (their receipts count as unknown)",
        )
        .expect("valid metric");
        registry.register(Box::new(lost.clone())).expect("unique metric name");
        // Present at 0 from the start, so that rate() and absent-based alerts see the first one.
        for provider in ["twilio", "webhook", "vonage", "plivo", "infobip", "meta"] {
            for result in ["final", "intermediate", "unknown"] {
                callbacks.with_label_values(&[provider, result]);
            }
            rejected.with_label_values(&[provider, "signature"]);
        }
        ReceiptMetrics {
            delivery,
            delivery_seconds,
            callbacks,
            rejected,
            record_errors,
            pending,
            lost,
        }
    }

    /// The metric families these are, whether or not they have a sample yet (what dashboards may query).
    pub fn names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: [&dyn Collector; 7] = [
            &self.delivery,
            &self.delivery_seconds,
            &self.callbacks,
            &self.rejected,
            &self.record_errors,
            &self.pending,
            &self.lost,
        ];
        collectors
            .iter()
            .flat_map(|c| c.desc())
            .map(|d| d.fq_name.clone())
            .collect()
    }
}

/// Twilio's side of the receipts: where it calls back, and the token its signatures are keyed with.
#[derive(Clone)]
pub struct TwilioReceipts {
    pub callback_url: String,
    pub auth_token: Secret,
}

/// Vonage's side: the signature secret and method its receipts are signed with.
#[derive(Clone)]
pub struct VonageReceipts {
    pub secret: Secret,
    pub method: VonageSignatureMethod,
    /// The query of `vonage.status_callback_url`: a receipt by GET carries it beside Vonage's own
    /// parameters, which alone are signed.
    pub url_query: Vec<(String, String)>,
}

/// Meta's side: the app secret its webhooks are signed with, and the token of its subscription handshake.
#[derive(Clone)]
pub struct MetaReceipts {
    pub app_secret: Secret,
    pub verify_token: Secret,
}

/// Plivo's side: the URL it calls back (its V3 signatures cover it) and the auth token that keys them.
#[derive(Clone)]
pub struct PlivoReceipts {
    pub callback_url: String,
    pub auth_token: Secret,
}

pub struct Receipts {
    state: Arc<State>,
    publisher: Publisher,
    exchange: String,
    pub metrics: ReceiptMetrics,
    /// Set when `twilio.status_callback_url` is: the Twilio route answers 404 otherwise.
    pub twilio: Option<TwilioReceipts>,
    /// The keys the custom provider's receipts may be signed with ([`WebhookConfig::status_keys`]); empty
    /// without `webhook.secret`.
    ///
    /// [`WebhookConfig::status_keys`]: crate::config::WebhookConfig::status_keys
    pub webhook_keys: Vec<WebhookKey>,
    /// Set when `vonage.status_callback_url` is (with its signature secret): the route answers 404 otherwise.
    pub vonage: Option<VonageReceipts>,
    /// Set when `plivo.status_callback_url` is (with the auth token).
    pub plivo: Option<PlivoReceipts>,
    /// `infobip.status_token`, set when `infobip.status_callback_url` is (with a token).
    pub infobip: Option<Secret>,
    /// Set when `meta.app_secret` is: Meta's webhooks are configured in its app, not per message.
    pub meta: Option<MetaReceipts>,
    sinks: Vec<Arc<dyn ReceiptSink>>,
    /// The runtime that state operations run on (HTTP handlers run on actix's own).
    runtime: tokio::runtime::Handle,
    /// Refused signatures not logged yet: one warning per [`LOG_EVERY`] says how many.
    pub bad_signatures: RateLimitedWarning,
    /// Records that could not be written, waiting for the state.
    pending: Pending,
    /// Job ids being sent by this process whose receipt record is not written yet, with how many hold
    /// each ([`Receipts::sending`]): a custom-provider report for one of them is asked again (503), not
    /// taken as unknown.
    sending: std::sync::Mutex<HashMap<String, usize>>,
}

/// Marks a job as being sent until dropped ([`Receipts::sending`]).
pub struct Sending {
    receipts: Arc<Receipts>,
    job_id: String,
}

impl Drop for Sending {
    fn drop(&mut self) {
        let mut sending = lock(&self.receipts.sending);
        if let Some(n) = sending.get_mut(&self.job_id) {
            *n -= 1;
            if *n == 0 {
                sending.remove(&self.job_id);
            }
        }
    }
}

/// Receipt records the state could not take (Redis down), by key, until [`Receipts::keep_writing`] or a
/// callback for one of them writes them: a message sent during an outage still gets its receipts.
#[derive(Default)]
struct Pending {
    records: Mutex<HashMap<String, SentMessage>>,
    /// Told when a record starts waiting.
    added: tokio::sync::Notify,
    /// Once the writer stopped (shutdown): a record that fails now is lost at once.
    stopped: std::sync::atomic::AtomicBool,
    /// Lost records not logged yet.
    lost: RateLimitedWarning,
}

impl Pending {
    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<String, SentMessage>> {
        lock(&self.records)
    }

    fn get(&self, key: &str) -> Option<SentMessage> {
        self.records().get(key).cloned()
    }
}

impl Receipts {
    /// Must be called inside the runtime that state operations should run on.
    pub fn new(config: &Config, state: State, registry: &Registry) -> Receipts {
        Receipts {
            state: Arc::new(state),
            publisher: Publisher::new(config.amqp.clone()),
            exchange: config.amqp.events_exchange.clone(),
            metrics: ReceiptMetrics::new(registry),
            // Never with an empty token, which would let anyone sign (config validation refuses it too).
            twilio: config
                .twilio
                .status_callback_url
                .as_ref()
                .filter(|_| !config.twilio.auth_token.is_empty())
                .map(|url| TwilioReceipts {
                    callback_url: url.as_url().as_str().to_owned(),
                    auth_token: config.twilio.auth_token.clone(),
                }),
            webhook_keys: config.webhook.status_keys(),
            // As for Twilio: never without a key (config validation refuses it too).
            vonage: config
                .vonage
                .status_callback_url
                .as_ref()
                .filter(|_| !config.vonage.signature_secret.is_blank())
                .map(|url| VonageReceipts {
                    secret: config.vonage.signature_secret.clone(),
                    method: config.vonage.signature_method,
                    url_query: url.as_url().query_pairs().into_owned().collect(),
                }),
            plivo: config
                .plivo
                .status_callback_url
                .as_ref()
                .filter(|_| !config.plivo.auth_token.is_blank())
                .map(|url| PlivoReceipts {
                    callback_url: url.as_url().as_str().to_owned(),
                    auth_token: config.plivo.auth_token.clone(),
                }),
            infobip: config
                .infobip
                .status_callback_url
                .as_ref()
                .filter(|_| !config.infobip.status_token.is_blank())
                .map(|_| config.infobip.status_token.clone()),
            meta: (!config.meta.app_secret.is_blank()).then(|| MetaReceipts {
                app_secret: config.meta.app_secret.clone(),
                verify_token: config.meta.status_callback_verify_token.clone(),
            }),
            sinks: Vec::new(),
            runtime: tokio::runtime::Handle::current(),
            bad_signatures: RateLimitedWarning::default(),
            pending: Pending::default(),
            sending: std::sync::Mutex::default(),
        }
    }

    /// `job_id` is about to be sent: until the guard is dropped (after [`Receipts::sent`]), and until
    /// its record is written, a report keyed by it (the custom provider's, by job id) answers 503 so that
    /// the receiver sends it again, instead of being lost as unknown. `None` without webhook receipts,
    /// the only ones keyed by the job id (the other providers' reports name an id their answer gives).
    pub fn sending(self: &Arc<Self>, job_id: &str) -> Option<Sending> {
        if self.webhook_keys.is_empty() {
            return None;
        }
        *lock(&self.sending).entry(job_id.to_owned()).or_default() += 1;
        Some(Sending {
            receipts: self.clone(),
            job_id: job_id.to_owned(),
        })
    }

    fn is_sending(&self, job_id: &str) -> bool {
        lock(&self.sending).contains_key(job_id)
    }

    /// `sink` hears of every final receipt too (the guard of docs/fraud-and-limits.md, workflows).
    pub fn with_sink(mut self, sink: Arc<dyn ReceiptSink>) -> Receipts {
        self.sinks.push(sink);
        self
    }

    /// Which receipt route a message sent by `provider` will hear from, if any.
    fn route_of(&self, provider: ProviderKind) -> Option<ReceiptProvider> {
        match provider {
            ProviderKind::Twilio if self.twilio.is_some() => Some(ReceiptProvider::Twilio),
            ProviderKind::Webhook if !self.webhook_keys.is_empty() => Some(ReceiptProvider::Webhook),
            ProviderKind::Vonage if self.vonage.is_some() => Some(ReceiptProvider::Vonage),
            ProviderKind::Plivo if self.plivo.is_some() => Some(ReceiptProvider::Plivo),
            ProviderKind::Infobip if self.infobip.is_some() => Some(ReceiptProvider::Infobip),
            ProviderKind::Meta if self.meta.is_some() => Some(ReceiptProvider::Meta),
            _ => None,
        }
    }

    /// A job was accepted by `provider`: remember it for its receipts. Returns at once: the local state
    /// is a map insert, Redis is written in a task of its own, so the job path never waits for it. A record
    /// Redis cannot take is kept and written once it can ([`Receipts::keep_writing`]).
    pub fn sent(self: &Arc<Self>, job: &Job, provider: ProviderKind, receipt: &Receipt) {
        if job.channel == Channel::Email {
            return;
        }
        let Some(route) = self.route_of(provider) else {
            return;
        };
        let id = match route {
            ReceiptProvider::Twilio
            | ReceiptProvider::Vonage
            | ReceiptProvider::Plivo
            | ReceiptProvider::Infobip
            | ReceiptProvider::Meta => match &receipt.message_id {
                Some(sid) => sid.clone(),
                None => return,
            },
            ReceiptProvider::Webhook => job.id.clone(),
        };
        let sent = SentMessage {
            job_id: job.id.clone(),
            channel: job.channel,
            country: job.to.country_label(),
            recipient: job.to.masked(),
            provider: provider.name().to_owned(),
            provider_message_id: receipt.message_id.clone(),
            accepted_at_ms: clock::unix_millis(),
            step: job.workflow.as_ref().map(|w| w.step),
        };
        let key = route.key(&id);
        // In memory: a map insert, no need for a task.
        let Some(sent) = self.state.record_in_process(&key, sent) else {
            return;
        };
        let this = self.clone();
        // Until the record is written, a report for this job is asked again rather than lost.
        let held = self.sending(&job.id);
        self.runtime.spawn(async move {
            let _held = held;
            if let Err(e) = this.state.record(&key, &sent).await {
                this.metrics.record_errors.inc();
                tracing::warn!(job_id = %sent.job_id, error = %e, "receipt state not recorded; kept to be written when it is back");
                this.wait(key, sent);
            }
        });
    }

    /// Keeps a record the state could not take, for [`Receipts::keep_writing`]; over [`PENDING_CAPACITY`]
    /// (or after shutdown) it is lost, counted and logged.
    fn wait(&self, key: String, sent: SentMessage) {
        let job_id = sent.job_id.clone();
        let kept = {
            let mut records = self.pending.records();
            let room = records.len() < PENDING_CAPACITY || records.contains_key(&key);
            let writing = !self.pending.stopped.load(std::sync::atomic::Ordering::SeqCst);
            if room && writing {
                records.insert(key, sent);
            }
            self.metrics.pending.set(records.len() as i64);
            room && writing
        };
        if kept {
            self.pending.added.notify_one();
            return;
        }
        self.metrics.lost.inc();
        if let Some(count) = self.pending.lost.hit() {
            tracing::warn!(
                %job_id,
                lost = count,
                bound = PENDING_CAPACITY,
                "receipt records lost: more waiting for the state than the bound, or herald is stopping; their receipts will count as unknown (one warning per 10 s)"
            );
        }
    }

    /// Writes the waiting record under `key`, if there is one. `Err` while the state still cannot take it.
    async fn write_waiting(&self, key: &str) -> Result<(), StateError> {
        let Some(sent) = self.pending.get(key) else {
            return Ok(());
        };
        self.state.record_late(key, &sent).await?;
        let mut records = self.pending.records();
        records.remove(key);
        self.metrics.pending.set(records.len() as i64);
        Ok(())
    }

    /// Writes the records that could not be written when their messages were sent, as soon as the state
    /// takes them again: retried with a backoff ([`PENDING_BACKOFF`]) until `shutdown`, when the ones
    /// still waiting are counted as lost. Run once, in a task of its own.
    pub async fn keep_writing(self: Arc<Self>, shutdown: CancellationToken) {
        let (first, most) = PENDING_BACKOFF;
        let mut backoff = first;
        loop {
            if self.pending.records().is_empty() {
                tokio::select! {
                    _ = self.pending.added.notified() => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
            match self.write_all_waiting().await {
                Ok(written) => {
                    tracing::info!(written, "receipt records kept while the state was unavailable written");
                    backoff = first;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "receipt records still waiting for the state");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(most);
                }
            }
        }
        // One last try, briefly: the state may be back while the writer was waiting out its backoff.
        self.pending.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = tokio::time::timeout(first * 5, self.write_all_waiting()).await;
        let lost = {
            let mut records = self.pending.records();
            let lost = records.len();
            records.clear();
            self.metrics.pending.set(0);
            lost
        };
        if lost > 0 {
            self.metrics.lost.inc_by(lost as u64);
            tracing::warn!(
                lost,
                "receipt records still waiting for the state at shutdown are lost; their receipts will count as unknown"
            );
        }
    }

    /// Writes every waiting record, stopping at the first the state refuses (it is still away).
    async fn write_all_waiting(&self) -> Result<usize, StateError> {
        let keys: Vec<String> = self.pending.records().keys().cloned().collect();
        for key in &keys {
            self.write_waiting(key).await?;
        }
        Ok(keys.len())
    }

    /// A provider's status for one of its messages. `Ok` when the callback is done with (whatever it
    /// said); `Err` when it must come again (state or broker unavailable).
    pub async fn apply(
        self: &Arc<Self>,
        provider: ReceiptProvider,
        id: &str,
        status: Option<Reported>,
        error_code: Option<String>,
    ) -> Result<Applied, Unavailable> {
        self.apply_first(provider, id, status.into_iter().collect(), error_code)
            .await
    }

    /// [`Receipts::apply`] for a status whose vocabulary the report does not say for sure (Infobip's
    /// groups are the same for messages and calls): each of `candidates` in turn, until one applies to
    /// the message's channel. Counted once.
    pub async fn apply_first(
        self: &Arc<Self>,
        provider: ReceiptProvider,
        id: &str,
        candidates: Vec<Reported>,
        error_code: Option<String>,
    ) -> Result<Applied, Unavailable> {
        let this = self.clone();
        let id = id.to_owned();
        let applied = self
            .runtime
            .spawn(async move {
                let mut applied = Ok(Applied::Ignored);
                for reported in candidates {
                    applied = this.apply_here(provider, &id, Some(reported), error_code.clone()).await;
                    if !matches!(applied, Ok(Applied::Ignored)) {
                        break;
                    }
                }
                applied
            })
            .await
            .unwrap_or_else(|e| Err(Unavailable::Broker(crate::broker::BrokerError::Closed(e.to_string()))));
        if let Ok(applied) = &applied {
            self.metrics
                .callbacks
                .with_label_values(&[provider.name(), applied.as_str()])
                .inc();
        }
        applied
    }

    async fn apply_here(
        &self,
        provider: ReceiptProvider,
        id: &str,
        reported: Option<Reported>,
        error_code: Option<String>,
    ) -> Result<Applied, Unavailable> {
        let Some(reported) = reported else {
            return Ok(Applied::Ignored);
        };
        let status = reported.status;
        let key = provider.key(id);
        // A message whose record is still waiting for the state is not unknown: written now, or the
        // provider comes again (503) rather than being told it is done with.
        self.write_waiting(&key).await?;
        let sent = match self.state.advance(&key, reported).await? {
            Advance::Unknown if provider == ReceiptProvider::Webhook && self.is_sending(id) => {
                return Err(Unavailable::Sending);
            }
            Advance::Unknown => return Ok(Applied::Unknown),
            Advance::Moved => return Ok(Applied::Intermediate),
            Advance::Stale => return Ok(Applied::Stale),
            Advance::Duplicate => return Ok(Applied::Duplicate),
            Advance::Ignored => return Ok(Applied::Ignored),
            Advance::Busy => return Err(Unavailable::Busy),
            Advance::Final(sent) => sent,
        };
        let event = status_event(&sent, status, error_code);
        let json = serde_json::to_vec(&event).unwrap_or_default();
        if let Err(e) = self
            .publisher
            .publish(&self.exchange, event.kind, &event.job_id, &json)
            .await
        {
            // Given back, so the provider's retry of this callback can event it.
            if let Err(e) = self.state.settle(&key, false).await {
                tracing::warn!(job_id = %sent.job_id, error = %e, "receipt claim not given back; it expires");
            }
            return Err(Unavailable::Broker(e));
        }
        crate::events::print(&json);
        if let Err(e) = self.state.settle(&key, true).await {
            // The event is out; a repeat of this status after the lease could event it again.
            tracing::warn!(job_id = %sent.job_id, error = %e, "receipt not marked evented");
        }
        let channel = sent.channel.as_str();
        self.metrics
            .delivery
            .with_label_values(&[channel, &sent.provider, &sent.country, status.as_str()])
            .inc();
        self.metrics
            .delivery_seconds
            .with_label_values(&[channel, &sent.provider])
            .observe(event.delivery_ms as f64 / 1000.0);
        let receipt = FinalReceipt {
            job_id: sent.job_id,
            channel: sent.channel,
            country: sent.country,
            status,
            step: sent.step,
        };
        for sink in &self.sinks {
            sink.final_receipt(&receipt);
        }
        Ok(Applied::Evented)
    }
}

fn status_event(sent: &SentMessage, status: Status, error_code: Option<String>) -> StatusEvent {
    let (kind, description) = match (sent.channel, status.is_delivered()) {
        (Channel::Voice, true) => (VOICE_STATUS, "Voice call answered"),
        (Channel::Voice, false) => (VOICE_STATUS, "Voice call not answered"),
        (Channel::Whatsapp, true) => (WHATSAPP_STATUS, "WhatsApp message delivered"),
        (Channel::Whatsapp, false) => (WHATSAPP_STATUS, "WhatsApp message not delivered"),
        (_, true) => (SMS_STATUS, "SMS delivered"),
        (_, false) => (SMS_STATUS, "SMS not delivered"),
    };
    StatusEvent {
        date: clock::now_rfc3339(),
        kind,
        description,
        job_id: sent.job_id.clone(),
        channel: sent.channel,
        status: status.as_str(),
        provider: sent.provider.clone(),
        provider_message_id: sent.provider_message_id.clone(),
        // Meta's codes are six digits (131026), one more than other providers' tokens may hold.
        error_code: error_code.filter(|c| is_error_code(c) || (sent.provider == "meta" && meta::is_error_code(c))),
        country: sent.country.clone(),
        recipient: sent.recipient.clone(),
        delivery_ms: clock::unix_millis().saturating_sub(sent.accepted_at_ms),
    }
}

/// A provider's error code as events may carry it: a short token of letters, digits, `_`, `-`, `.`
/// (Twilio's are numbers like `30008`), with no run of more than five digits, where a phone number or a
/// one-time code would hide. Anything else is dropped, never echoed.
pub fn is_error_code(code: &str) -> bool {
    (1..=32).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && code.split(|c: char| !c.is_ascii_digit()).all(|run| run.len() <= 5)
}

/// How often a refused-signature warning is logged at most.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// One warning per [`LOG_EVERY`] with the count since the last one: a scanner or a misconfigured token
/// cannot flood the log.
#[derive(Default)]
pub struct RateLimitedWarning(std::sync::Mutex<(Option<Instant>, u64)>);

impl RateLimitedWarning {
    /// Counts one occurrence; `Some(n)` when this one should be logged, covering `n` occurrences.
    pub fn hit(&self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    fn hit_at(&self, now: Instant) -> Option<u64> {
        let mut guard = lock(&self.0);
        let (last, unlogged) = &mut *guard;
        *unlogged += 1;
        if last.is_some_and(|at| now.duration_since(at) < LOG_EVERY) {
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_signatures_are_logged_once_per_period_with_a_count() {
        let warning = RateLimitedWarning::default();
        let t = Instant::now();
        assert_eq!(warning.hit_at(t), Some(1));
        assert_eq!(warning.hit_at(t), None);
        assert_eq!(warning.hit_at(t + Duration::from_secs(1)), None);
        // Ten seconds later the next one covers the two unlogged ones and itself.
        assert_eq!(warning.hit_at(t + LOG_EVERY), Some(3));
    }

    fn sent_message(job: &str) -> SentMessage {
        SentMessage {
            job_id: job.into(),
            channel: Channel::Sms,
            country: "1".into(),
            recipient: "+1415*****23".into(),
            provider: "twilio".into(),
            provider_message_id: Some(format!("SM{job}")),
            accepted_at_ms: clock::unix_millis(),
            step: None,
        }
    }

    fn receipts(state: State) -> (Arc<Receipts>, Registry) {
        let registry = Registry::new();
        let receipts = Arc::new(Receipts::new(&Config::default(), state, &registry));
        (receipts, registry)
    }

    /// A record waiting for the state is written by the first callback for it, which then counts as if
    /// the record had always been there.
    #[tokio::test]
    async fn a_callback_writes_its_waiting_record_first() {
        let (receipts, _) = receipts(State::local(10));
        receipts.wait("twilio:SMa".into(), sent_message("a"));
        assert_eq!(receipts.metrics.pending.get(), 1);
        let applied = receipts
            .apply_here(
                ReceiptProvider::Twilio,
                "SMa",
                Some(Reported::message(Status::Sent)),
                None,
            )
            .await
            .unwrap();
        assert_eq!(applied, Applied::Intermediate);
        assert_eq!(receipts.metrics.pending.get(), 0);
    }

    /// Redis away (nothing listens on port 1): a callback for a waiting record must come again, and the
    /// records still waiting at shutdown are counted as lost.
    #[tokio::test]
    async fn waiting_records_get_their_callbacks_retried_and_are_counted_when_lost() {
        let conn = crate::store::redis_connection("redis://127.0.0.1:1").unwrap();
        let (receipts, _) = receipts(State::redis(conn, "test"));
        for job in ["a", "b", "c"] {
            receipts.wait(format!("twilio:SM{job}"), sent_message(job));
        }
        let applied = receipts
            .apply_here(
                ReceiptProvider::Twilio,
                "SMa",
                Some(Reported::message(Status::Delivered)),
                None,
            )
            .await;
        assert!(matches!(applied, Err(Unavailable::State(_))), "{applied:?}");
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        receipts.clone().keep_writing(shutdown).await;
        assert_eq!(receipts.metrics.lost.get(), 3);
        assert_eq!(receipts.metrics.pending.get(), 0);
        // Once the writer has stopped, a record that cannot be written is lost at once.
        receipts.wait("twilio:SMd".into(), sent_message("d"));
        assert_eq!(receipts.metrics.lost.get(), 4);
        assert_eq!(receipts.metrics.pending.get(), 0);
    }

    #[tokio::test]
    async fn waiting_records_are_bounded() {
        let (receipts, _) = receipts(State::local(10));
        for i in 0..PENDING_CAPACITY {
            receipts.wait(format!("twilio:SM{i}"), sent_message("j"));
        }
        assert_eq!(receipts.metrics.lost.get(), 0);
        receipts.wait("twilio:SMover".into(), sent_message("over"));
        assert_eq!(receipts.metrics.lost.get(), 1);
        assert_eq!(receipts.metrics.pending.get(), PENDING_CAPACITY as i64);
        // A record already waiting is kept as it is, not counted again.
        receipts.wait("twilio:SM0".into(), sent_message("j"));
        assert_eq!(receipts.metrics.lost.get(), 1);
    }

    #[test]
    fn error_codes_are_tokens_or_dropped() {
        assert!(is_error_code("30008"));
        assert!(is_error_code("carrier_rejected"));
        assert!(!is_error_code(""));
        assert!(!is_error_code("+14155550123 is blocked"));
        assert!(!is_error_code(&"9".repeat(33)));
        assert!(!is_error_code("14155550123"));
        assert!(!is_error_code("blocked_482913"));
        assert!(is_error_code("err_30008.a1"));
    }

    #[test]
    fn a_final_receipt_event_has_its_status_error_code_and_ids_and_a_masked_recipient() {
        let sent = SentMessage {
            job_id: "j1".into(),
            channel: Channel::Sms,
            country: "1".into(),
            recipient: "+1415*****23".into(),
            provider: "twilio".into(),
            provider_message_id: Some("SM1".into()),
            accepted_at_ms: clock::unix_millis() - 1500,
            step: None,
        };
        let event = status_event(&sent, Status::Undelivered, Some("30008".into()));
        let json: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "gd_send_sms_status");
        assert_eq!(json["status"], "undelivered");
        assert_eq!(json["error_code"], "30008");
        assert_eq!(json["recipient"], "+1415*****23");
        assert!(json["delivery_ms"].as_u64().unwrap() >= 1500);
        for field in ["date", "job_id", "provider", "provider_message_id", "country"] {
            assert!(json.get(field).is_some(), "{field}");
        }
        let voice = SentMessage {
            channel: Channel::Voice,
            ..sent
        };
        let event = status_event(&voice, Status::NoAnswer, Some("+14155550123".into()));
        assert_eq!(event.kind, "gd_send_voice_status");
        assert_eq!(event.error_code, None);
    }
}
