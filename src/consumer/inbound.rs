//! One message: from the broker's delivery to what its transaction holds.

use std::sync::Arc;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};
use tokio_util::sync::CancellationToken;

use super::lane::{Finished, GaugeGuard, Publish};
use super::outage::OUTAGE_SETTLE;
use super::{ATTEMPT_HEADER, Consumer, lock};
use crate::broker;
use crate::config::QueueType;
use crate::decision::{self, Disposition, Step};
use crate::dispatch::Outcome;
use crate::events::{self, ErrorCode};
use crate::job::{InvalidJob, Job, JobError};
use crate::metrics::Sample;
use crate::reply::{Reply, ReplyTo};
use crate::store::{Entry, Record};

impl Consumer {
    /// One message: parse, claim its id, read its outcome record, decide, deliver if the decision says so,
    /// and turn the disposition into its transaction. `None` when shutdown came while it waited for
    /// another replica's claim: nothing was done.
    pub(super) async fn handle(&self, delivery: Delivery, shutdown: &CancellationToken) -> Option<Finished> {
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

    /// Where herald's queue dead-letters poison (contract §11.4): only a quorum queue counts deliveries.
    pub(super) fn poison_limit(&self) -> decision::PoisonLimit {
        (self.config.queue_type == QueueType::Quorum).then_some(self.config.delivery_limit)
    }

    /// Turns a disposition into what the copy's transaction holds: its store write (awaited before the
    /// commit: a record precedes its event, §11.2), its publishes, and what to print and count once
    /// committed. `job_id` is the parsed job's.
    pub(super) fn transaction(
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
    pub(super) fn outcome_publishes(
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

    pub(super) fn event_publish(&self, kind: &str, job_id: Option<&str>, json: &Arc<Vec<u8>>) -> Publish {
        Publish {
            exchange: self.config.events_exchange.clone(),
            routing_key: kind.to_owned(),
            body: json.clone(),
            properties: broker::event_properties(kind, job_id),
        }
    }

    pub(super) fn dead_publish(&self, props: &BasicProperties, body: &Arc<Vec<u8>>, reason: &str) -> Publish {
        Publish {
            exchange: String::new(),
            routing_key: self.config.dead_queue.clone(),
            body: body.clone(),
            properties: broker::with_error_header(props, reason),
        }
    }

    /// The job again, to the delay queue of its wait with a per-message TTL; the broker dead-letters it
    /// back to `herald.jobs` when the TTL runs out.
    pub(super) fn retry_publish(
        &self,
        props: &BasicProperties,
        body: &Arc<Vec<u8>>,
        attempt: u32,
        after: Duration,
    ) -> Publish {
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

/// The delay queue for a wait: the one whose own wait is nearest to it (by ratio), so that a jittered or
/// Retry-After wait queues only behind waits of about its length.
pub(super) fn delay_queue(queues: &[(Duration, String)], after: Duration) -> Option<&str> {
    let distance = |w: Duration| (w.as_secs_f64().max(1e-3) / after.as_secs_f64().max(1e-3)).ln().abs();
    queues
        .iter()
        .min_by(|a, b| distance(a.0).total_cmp(&distance(b.0)))
        .map(|(_, name)| name.as_str())
}

/// The reply to publish once the job's transaction committed.
pub(super) fn reply_of(to: &ReplyTo, props: &BasicProperties, kind: &str, json: &Arc<Vec<u8>>) -> Reply {
    Reply {
        to: to.clone(),
        correlation_id: props.correlation_id().clone(),
        kind: broker::short(kind).unwrap_or_default(),
        body: json.clone(),
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
