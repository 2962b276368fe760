//! One message: herald's own view of a broker delivery ([`Inbound`], built from lapin's in one place), and
//! what [`Consumer::handle`] makes of it: parse, claim, read the store, decide, deliver, and plan the copy's
//! transaction.

use std::sync::Arc;

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::AMQPValue;
use tokio_util::sync::CancellationToken;

use super::lane::{Finished, GaugeGuard};
use super::outage::OUTAGE_SETTLE;
use super::plan::{self, Plan, Queues};
use super::{Consumer, lock};
use crate::config::QueueType;
use crate::decision::{self, Disposition, Step};
use crate::dispatch::Outcome;
use crate::events;
use crate::job::{InvalidJob, Job, JobError};
use crate::reply::ReplyTo;

/// A message as herald takes it from the broker: all that herald reads of a delivery.
pub(super) struct Inbound {
    /// What the delivery's ack names.
    pub(super) delivery_tag: u64,
    /// What the broker says of this copy: its redelivered flag, and `x-delivery-count` on a redelivery
    /// only (on a first delivery the header can only be the publisher's).
    pub(super) copy: decision::Copy,
    /// Shared by the job, its retry and its dead letter: never copied.
    pub(super) body: Arc<Vec<u8>>,
    /// As published: herald reads `content_type`, `reply_to` and `correlation_id`, and a retry or a dead
    /// letter carries them on, headers included.
    pub(super) properties: BasicProperties,
}

impl Inbound {
    pub(super) fn new(delivery_tag: u64, redelivered: bool, properties: BasicProperties, body: Vec<u8>) -> Inbound {
        Inbound {
            delivery_tag,
            copy: decision::Copy::new(redelivered, header_u64(&properties, "x-delivery-count")),
            body: Arc::new(body),
            properties,
        }
    }
}

impl From<Delivery> for Inbound {
    fn from(delivery: Delivery) -> Inbound {
        Inbound::new(
            delivery.delivery_tag,
            delivery.redelivered,
            delivery.properties,
            delivery.data,
        )
    }
}

impl Consumer {
    /// One message: parse, claim its id, read its outcome record, decide, deliver if the decision says so,
    /// and plan the copy's transaction (its store write under way). `None` when shutdown came while it
    /// waited for another replica's claim or for the store: nothing was done.
    pub(super) async fn handle(&self, inbound: Inbound, shutdown: &CancellationToken) -> Option<Finished> {
        let gauge = GaugeGuard::new(&self.metrics);
        let props = &inbound.properties;
        let content_type = props.content_type().as_ref().map(|s| s.as_str());
        let copy = inbound.copy;
        let reply_to = props
            .reply_to()
            .as_ref()
            .map(|to| ReplyTo::parse(to.as_str(), &self.own_queues));
        let job = Job::from_message(&inbound.body, content_type).and_then(|job| match &reply_to {
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
                let plan = plan::of(
                    decision::rejected(&invalid),
                    &inbound,
                    None,
                    reply_to.as_ref(),
                    self.queues(),
                );
                return Some(Finished::start(plan, &self.store, None, gauge));
            }
        };
        let (claim, held) = tokio::select! {
            claim = self.claim(&job.id) => claim,
            _ = shutdown.cancelled() => return None,
        };
        // Kept, not taken: copies from dead sessions wait on the same claim, and the first one to get it
        // must not leave the copy that counts (the current session's) without the answer.
        if copy.redelivered && lock(&self.orphans).committed.contains(&job.id) {
            tracing::info!(job_id = %job.id, "copy of a job committed after its session died acknowledged");
            let plan = Plan::acknowledge(inbound.delivery_tag);
            return Some(Finished::start(plan, &self.store, Some(claim), gauge));
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
                // A report that overtakes the provider's answer is asked again, not lost (README, "State").
                let sending = self.receipts.as_ref().and_then(|r| r.sending(&job.id));
                let delivered = self.dispatcher.deliver(&job, attempt).await;
                if let (Some(receipts), Outcome::Sent { provider, receipt }) = (&self.receipts, &delivered.outcome) {
                    receipts.sent(&job, provider, receipt);
                }
                drop(sending);
                decision::after_delivery(&job, attempt, &delivered, &self.default_locale)
            }
        };
        log(&disposition, &job.id);
        let plan = plan::of(disposition, &inbound, Some(&job.id), reply_to.as_ref(), self.queues());
        Some(Finished::start(plan, &self.store, Some(claim), gauge))
    }

    /// Where herald's queue dead-letters poison (contract §11.4): only a quorum queue counts deliveries.
    pub(super) fn poison_limit(&self) -> decision::PoisonLimit {
        (self.config.queue_type == QueueType::Quorum).then_some(self.config.delivery_limit)
    }

    fn queues(&self) -> Queues<'_> {
        Queues {
            amqp: &self.config,
            delay: &self.delay_queues,
        }
    }
}

/// What the log says of a copy settled without an outcome of its own.
fn log(disposition: &Disposition, job_id: &str) {
    match disposition {
        Disposition::Duplicate { .. } => {
            tracing::info!(job_id, "duplicate job id acknowledged without sending");
        }
        Disposition::Republish { .. } => {
            tracing::info!(job_id, "republishing the recorded outcome of an interrupted job");
        }
        Disposition::Retry {
            after,
            next_attempt,
            reason,
        } => {
            tracing::info!(job_id, next_attempt, retry_in = ?after, error = %reason, "retry scheduled");
        }
        Disposition::Final { .. } | Disposition::Rejected { .. } => {}
    }
}

pub(super) fn header_u64(props: &BasicProperties, name: &str) -> Option<u64> {
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
