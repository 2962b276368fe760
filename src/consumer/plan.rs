//! What one copy's transaction holds, as a value. [`of`] turns a [`Disposition`] into a [`Plan`]: the
//! copy's store write, its publishes and ack, and what follows the commit, in the order the protocol needs
//! them. Nothing is done here: [`super::lane`] carries plans out, and the rules are tested from a table.
//!
//! The order, and why (docs/guarantees.md, "Retries and delivery guarantees"): the store entry comes first, because its
//! write is awaited before the commit — an outcome is recorded before it is published, so that a copy
//! redelivered after a crash finds it, and a retry's attempt number is written before the retry, so that
//! the copy coming back from the delay queue reads it there. The publishes and the ack are one broker
//! transaction, so a crash leaves all of them or none. Only once it committed: the reply (on a connection
//! of its own: a crash in between loses the reply, never the event), the event line and its counts, and
//! the record's mark that its commit went through.

use std::sync::Arc;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::AMQPValue;

use super::delivery::Inbound;
use crate::broker;
use crate::broker::ATTEMPT_HEADER;
use crate::config::AmqpConfig;
use crate::decision::Disposition;
use crate::events::ErrorCode;
use crate::metrics::Sample;
use crate::reply::{Reply, ReplyTo};
use crate::store::{Entry, Record};

/// A copy's transaction, before any of it is done.
pub(super) struct Plan {
    /// The job id that [`Step::Record`] and [`Step::MarkCommitted`] are about; `None` when the plan has
    /// neither (held once for both: this is every message's path).
    pub(super) id: Option<String>,
    /// In the order they are carried out.
    pub(super) steps: Vec<Step>,
}

/// One step of a [`Plan`]. A closed set: the lane does each of these and nothing else.
// Publishes are most of a plan; boxing them would cost an allocation each for a handful of steps.
#[allow(clippy::large_enum_variant)]
pub(super) enum Step {
    /// Writes the job's entry in the outcome store, under [`Plan::id`]. Under way at once; the commit
    /// waits until it is written.
    Record(Entry),
    /// A message published inside the transaction.
    Publish(Publish),
    /// The delivery's ack, inside the same transaction.
    Ack(u64),
    /// After the commit: the reply to the job's `reply_to`, on the replies connection.
    Reply(Reply),
    /// After the commit: the event line printed to stdout and counted in the metrics.
    Report { sample: Sample, json: Arc<Vec<u8>> },
    /// After the commit: `herald_dead_lettered_total`.
    CountDeadLetter(ErrorCode),
    /// After the commit: `herald_retries_total`.
    CountRetry,
    /// After the commit: the record of [`Plan::id`] marked committed (a replay finding it is a duplicate).
    MarkCommitted,
    /// A workflow's own record (docs/workflows.md), under its job id: written with [`Step::Record`],
    /// before the commit.
    RecordWorkflow(String, Entry),
    /// After the commit: a workflow step's or end's counts, and the end's event line.
    CountWorkflow(WorkflowCount),
}

/// What a workflow's commit counts (`gd_send_workflow_steps_total`, `gd_send_workflow_total`).
pub(super) enum WorkflowCount {
    Step {
        workflow: String,
        step: u32,
        channel: crate::job::Channel,
        /// `sent` or the step's `error.code`.
        outcome: &'static str,
    },
    End {
        workflow: String,
        result: &'static str,
        json: Arc<Vec<u8>>,
    },
}

/// One message to publish inside a job's transaction.
pub(super) struct Publish {
    pub(super) exchange: String,
    pub(super) routing_key: String,
    pub(super) body: Arc<Vec<u8>>,
    pub(super) properties: BasicProperties,
}

/// Where a plan's publishes go.
#[derive(Clone, Copy)]
pub(super) struct Queues<'a> {
    /// `herald.events`, `herald.dead` and `herald.retry` by their configured names.
    pub(super) amqp: &'a AmqpConfig,
    /// `(wait, queue)` of each retry delay queue, shortest first.
    pub(super) delay: &'a [(Duration, String)],
}

impl Plan {
    /// A copy that only needs its ack: its outcome is out already.
    pub(super) fn acknowledge(delivery_tag: u64) -> Plan {
        Plan {
            id: None,
            steps: vec![Step::Ack(delivery_tag)],
        }
    }

    /// The delivery tag to ack; `None` for an orphan (its delivery went with its channel).
    pub(super) fn ack(&self) -> Option<u64> {
        self.steps.iter().find_map(|s| match s {
            Step::Ack(tag) => Some(*tag),
            _ => None,
        })
    }

    /// The job id whose record the commit marks: an outcome herald recorded.
    pub(super) fn marks(&self) -> Option<&str> {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::MarkCommitted))
            .then_some(self.id.as_deref())
            .flatten()
    }

    /// Takes the store write out of the plan, to be started now.
    pub(super) fn take_record(&mut self) -> Option<(&str, Entry)> {
        let i = self.steps.iter().position(|s| matches!(s, Step::Record(_)))?;
        let id = self.id.as_deref()?;
        match self.steps.remove(i) {
            Step::Record(entry) => Some((id, entry)),
            _ => None,
        }
    }

    /// Drops the ack: the delivery it names is gone with its channel.
    pub(super) fn orphan(&mut self) {
        self.steps.retain(|s| !matches!(s, Step::Ack(_)));
    }

    /// Drops the mark: the record it would mark could not be written.
    pub(super) fn unmark(&mut self) {
        self.steps.retain(|s| !matches!(s, Step::MarkCommitted));
    }

    /// Takes the workflow's record out of the plan, to be written with the job's.
    pub(super) fn take_workflow_record(&mut self) -> Option<(String, Entry)> {
        let i = self.steps.iter().position(|s| matches!(s, Step::RecordWorkflow(..)))?;
        match self.steps.remove(i) {
            Step::RecordWorkflow(id, entry) => Some((id, entry)),
            _ => None,
        }
    }

    /// Adds `step` to the transaction, just before its ack (a plan without an ack is an orphan's: last).
    pub(super) fn insert_before_ack(&mut self, step: Step) {
        let i = self
            .steps
            .iter()
            .position(|s| matches!(s, Step::Ack(_)))
            .unwrap_or(self.steps.len());
        self.steps.insert(i, step);
    }

    pub(super) fn publishes(&mut self) -> impl Iterator<Item = &mut Publish> {
        self.steps.iter_mut().filter_map(|s| match s {
            Step::Publish(p) => Some(p),
            _ => None,
        })
    }
}

/// The plan of `disposition` for the copy `inbound`. `job_id` is the parsed job's (`None` for a message
/// that is not a valid job); `reply_to` is the job's, once accepted.
pub(super) fn of(
    disposition: Disposition,
    inbound: &Inbound,
    job_id: Option<&str>,
    reply_to: Option<&ReplyTo>,
    queues: Queues<'_>,
) -> Plan {
    of_ids(disposition, inbound, job_id, job_id, reply_to, queues)
}

/// [`of`] for a record whose key is not the job id (a workflow step's, `<id> #<n>`): `record_id` is the
/// record's key, `job_id` the event's `message_id`.
pub(super) fn of_ids(
    disposition: Disposition,
    inbound: &Inbound,
    record_id: Option<&str>,
    job_id: Option<&str>,
    reply_to: Option<&ReplyTo>,
    queues: Queues<'_>,
) -> Plan {
    let props = &inbound.properties;
    match disposition {
        Disposition::Duplicate { reply } => {
            let mut steps = Vec::with_capacity(1 + usize::from(reply_to.is_some()));
            steps.push(Step::Ack(inbound.delivery_tag));
            // Serialized only for a caller waiting on reply_to: most duplicates have none.
            if let Some(to) = reply_to {
                let json = Arc::new(reply.to_json());
                steps.push(Step::Reply(reply_of(to, props, reply.kind.as_str(), &json)));
            }
            Plan { id: None, steps }
        }
        Disposition::Republish { record, recorded } => {
            let dead = recorded
                .error
                .as_ref()
                .map(|e| e.code)
                .filter(|_| record.dead_reason.is_some());
            let outcome = Outcome {
                kind: recorded.kind.as_str(),
                message_id: job_id,
                json: Arc::new(record.event.into_bytes()),
                dead_reason: record.dead_reason.as_deref(),
                // Printed and counted after the commit like any outcome: the first time was never committed.
                sample: Sample::recorded(&recorded),
                dead,
            };
            // Not written again: the record is what is republished.
            outcome.plan(inbound, record_id, None, reply_to, queues)
        }
        Disposition::Retry {
            after, next_attempt, ..
        } => {
            let mut steps = Vec::with_capacity(3 + usize::from(job_id.is_some()));
            // Written before the retry's publish commits, like an outcome record: the copy coming back
            // from the delay queue reads its attempt number (and that it passed the limits) here.
            if record_id.is_some() {
                steps.push(Step::Record(Entry::Retrying { next_attempt }));
            }
            steps.push(Step::Publish(retry_publish(
                queues,
                props,
                &inbound.body,
                next_attempt,
                after,
            )));
            steps.push(Step::Ack(inbound.delivery_tag));
            steps.push(Step::CountRetry);
            Plan {
                id: record_id.map(str::to_owned),
                steps,
            }
        }
        Disposition::Final { event, dead_reason } => {
            let json = Arc::new(event.to_json());
            let record = record_id.map(|_| {
                Entry::Outcome(Record {
                    // serde_json writes UTF-8: checked, not scanned for replacements chunk by chunk.
                    event: String::from_utf8(json.to_vec())
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
                    dead_reason: dead_reason.clone(),
                    committed: false,
                })
            });
            let outcome = Outcome {
                kind: event.kind.as_str(),
                message_id: job_id,
                json,
                dead_reason: dead_reason.as_deref(),
                sample: Sample::of(&event),
                dead: dead_reason.as_ref().and(event.error.as_ref().map(|e| e.code)),
            };
            outcome.plan(inbound, record_id, record, reply_to, queues)
        }
        Disposition::Rejected { event, reason } => {
            let outcome = Outcome {
                kind: event.kind.as_str(),
                message_id: event.job_id.as_deref(),
                json: Arc::new(event.to_json()),
                dead_reason: Some(&reason),
                sample: Sample::of(&event),
                dead: Some(ErrorCode::InvalidJob),
            };
            // Not recorded: a message that is not a valid job has no id to trust.
            outcome.plan(inbound, None, None, reply_to, queues)
        }
    }
}

/// An outcome to publish: a new one, a recorded one again, or an invalid message's.
struct Outcome<'a> {
    /// The event type: its routing key on `herald.events` and its AMQP `type`.
    kind: &'a str,
    /// The event's AMQP `message_id`.
    message_id: Option<&'a str>,
    /// The event serialized once: the bytes published, replied, printed (and recorded, for a new one).
    json: Arc<Vec<u8>>,
    /// `x-herald-error` when the job also goes to `herald.dead`.
    dead_reason: Option<&'a str>,
    sample: Sample,
    /// The code `herald_dead_lettered_total` counts.
    dead: Option<ErrorCode>,
}

impl Outcome<'_> {
    /// The steps of an outcome: its record's write, then dead letter (if any), event and ack, then after the
    /// commit its reply, line, counts and mark. `id` is the job whose record the commit marks.
    fn plan(
        self,
        inbound: &Inbound,
        id: Option<&str>,
        record: Option<Entry>,
        reply_to: Option<&ReplyTo>,
        queues: Queues<'_>,
    ) -> Plan {
        let props = &inbound.properties;
        let capacity = 3
            + usize::from(record.is_some())
            + usize::from(self.dead_reason.is_some())
            + usize::from(reply_to.is_some())
            + usize::from(self.dead.is_some())
            + usize::from(id.is_some());
        let mut steps = Vec::with_capacity(capacity);
        if let Some(entry) = record {
            steps.push(Step::Record(entry));
        }
        if let Some(reason) = self.dead_reason {
            steps.push(Step::Publish(dead_publish(queues, props, &inbound.body, reason)));
        }
        steps.push(Step::Publish(event_publish(
            queues,
            self.kind,
            self.message_id,
            &self.json,
        )));
        steps.push(Step::Ack(inbound.delivery_tag));
        if let Some(to) = reply_to {
            steps.push(Step::Reply(reply_of(to, props, self.kind, &self.json)));
        }
        steps.push(Step::Report {
            sample: self.sample,
            json: self.json,
        });
        if let Some(code) = self.dead {
            steps.push(Step::CountDeadLetter(code));
        }
        if id.is_some() {
            steps.push(Step::MarkCommitted);
        }
        Plan {
            id: id.map(str::to_owned),
            steps,
        }
    }
}

pub(super) fn event_publish(queues: Queues<'_>, kind: &str, job_id: Option<&str>, json: &Arc<Vec<u8>>) -> Publish {
    Publish {
        exchange: queues.amqp.events_exchange.clone(),
        routing_key: kind.to_owned(),
        body: json.clone(),
        properties: broker::event_properties(kind, job_id),
    }
}

fn dead_publish(queues: Queues<'_>, props: &BasicProperties, body: &Arc<Vec<u8>>, reason: &str) -> Publish {
    Publish {
        exchange: String::new(),
        routing_key: queues.amqp.dead_queue.clone(),
        body: body.clone(),
        properties: broker::with_error_header(props, reason),
    }
}

/// The job again, to the delay queue of its wait with a per-message TTL; the broker dead-letters it
/// back to `herald.jobs` when the TTL runs out.
fn retry_publish(
    queues: Queues<'_>,
    props: &BasicProperties,
    body: &Arc<Vec<u8>>,
    attempt: u32,
    after: Duration,
) -> Publish {
    // The broker's bookkeeping (and herald's own header) must not travel with the copy.
    let mut headers = broker::carried_headers(props);
    headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(i64::from(attempt)));
    delayed(
        queues,
        body,
        props.clone().with_headers(headers).with_delivery_mode(2),
        after,
    )
}

/// `body` with `properties` to the delay queue of `after`, with a per-message TTL of it; the broker
/// dead-letters it back to `herald.jobs` when the TTL runs out.
fn delayed(queues: Queues<'_>, body: &Arc<Vec<u8>>, properties: BasicProperties, after: Duration) -> Publish {
    Publish {
        exchange: String::new(),
        routing_key: delay_queue(queues.delay, after)
            .unwrap_or(&queues.amqp.retry_queue)
            .to_owned(),
        body: body.clone(),
        properties: properties.with_expiration(after.as_millis().to_string().into()),
    }
}

/// A workflow's check (docs/workflows.md): the job again, as it came (without the broker's bookkeeping),
/// back on `herald.jobs` after `after`: through the delay queue of that wait, or at once.
pub(super) fn check_publish(
    queues: Queues<'_>,
    props: &BasicProperties,
    body: &Arc<Vec<u8>>,
    after: Duration,
    check: &str,
) -> Publish {
    let mut headers = broker::carried_headers(props);
    headers.insert(crate::broker::CHECK_HEADER.into(), AMQPValue::LongString(check.into()));
    let properties = props.clone().with_headers(headers).with_delivery_mode(2);
    if after.is_zero() {
        return Publish {
            exchange: String::new(),
            routing_key: queues.amqp.jobs_queue.clone(),
            body: body.clone(),
            properties,
        };
    }
    delayed(queues, body, properties, after)
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

/// The reply to publish once the job's transaction committed.
fn reply_of(to: &ReplyTo, props: &BasicProperties, kind: &str, json: &Arc<Vec<u8>>) -> Reply {
    Reply {
        to: to.clone(),
        correlation_id: props.correlation_id().clone(),
        kind: broker::short(kind).unwrap_or_default(),
        body: json.clone(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    //! The plan of every disposition, from a table: no broker, no store.
    use super::*;
    use crate::config::RetrySchedule;
    use crate::decision::{self, Redelivery};
    use crate::dispatch::{Answer, Answered};
    use crate::job::{Job, Locale};
    use crate::providers::Receipt;
    use crate::reply::OwnQueues;
    use lapin::types::ShortString;

    pub(in crate::consumer) fn amqp() -> AmqpConfig {
        crate::config::Config::default().amqp
    }

    fn job() -> Job {
        Job::from_json(br#"{"id":"j1","channel":"sms","to":"+14155550123","code":"482913","user_id":"u1"}"#).unwrap()
    }

    fn en() -> Locale {
        Locale::parse("en").unwrap()
    }

    /// A copy as a publisher sent it, with a header of its own and the broker's bookkeeping of a
    /// message that went through a delay queue before.
    fn inbound() -> Inbound {
        let mut headers = lapin::types::FieldTable::default();
        headers.insert("x-trace".into(), AMQPValue::LongString("t-1".into()));
        headers.insert("x-death".into(), AMQPValue::LongString("queue herald.retry.5s".into()));
        headers.insert(
            "x-first-death-queue".into(),
            AMQPValue::LongString("herald.retry.5s".into()),
        );
        headers.insert("x-last-death-reason".into(), AMQPValue::LongString("expired".into()));
        headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(1));
        headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(99));
        let properties = BasicProperties::default()
            .with_headers(headers)
            .with_correlation_id("c-1".into())
            .with_content_type("application/json".into());
        Inbound::new(7, false, properties, br#"{"id":"j1"}"#.to_vec())
    }

    fn answered(answer: Answer) -> Answered {
        Answered {
            answer,
            duration: Duration::from_millis(142),
        }
    }

    fn sent() -> Disposition {
        decision::after_delivery(
            &job(),
            1,
            &answered(Answer::Sent {
                provider: crate::providers::ProviderKind::Twilio,
                receipt: Receipt::sent(Some("SM1".into())),
            }),
            &en(),
        )
    }

    fn failed(code: ErrorCode) -> Disposition {
        decision::after_delivery(&job(), 1, &answered(Answer::failed(code, "answered 400")), &en())
    }

    fn retry(after: Duration) -> Disposition {
        decision::after_delivery(
            &job(),
            1,
            &answered(Answer::Retry {
                after,
                message: "503".into(),
            }),
            &en(),
        )
    }

    /// What a settled copy's decision is, from the store's entry and the broker's flags.
    fn settled(prior: Entry, copy: Redelivery) -> Disposition {
        match decision::before_delivery(&job(), Some(prior), copy, Some(5), &en()) {
            decision::Next::Settled(disposition) => *disposition,
            decision::Next::Deliver { .. } => panic!("settled before delivery"),
        }
    }

    fn recorded(event: &str, dead_reason: Option<&str>, committed: bool) -> Entry {
        Entry::Outcome(Record {
            event: event.into(),
            dead_reason: dead_reason.map(str::to_owned),
            committed,
        })
    }

    fn rejected() -> Disposition {
        decision::rejected(&Job::from_json(br#"{"id":"j1","channel":"fax"}"#).unwrap_err())
    }

    const REDELIVERED: Redelivery = Redelivery {
        redelivered: true,
        deliveries: 2,
    };

    /// A plan in words, step by step, for the table.
    pub(in crate::consumer) fn words(plan: &Plan) -> String {
        let id = plan.id.as_deref().unwrap_or("-");
        let word = |step: &Step| match step {
            Step::Record(Entry::Outcome(r)) => {
                format!(
                    "record {id} outcome{}",
                    if r.dead_reason.is_some() { " dead" } else { "" }
                )
            }
            Step::Record(Entry::Retrying { next_attempt }) => format!("record {id} retrying {next_attempt}"),
            Step::Record(Entry::Workflow(w)) => format!("record {id} {w:?}"),
            Step::Publish(p) if p.exchange.is_empty() => format!("publish {}", p.routing_key),
            Step::Publish(p) => format!("publish {} {}", p.exchange, p.routing_key),
            Step::Ack(tag) => format!("ack {tag}"),
            Step::Reply(r) => format!("reply {}", r.kind.as_str()),
            Step::Report { sample, .. } => format!("report {}", sample.error.map_or("sent", ErrorCode::as_str)),
            Step::CountDeadLetter(code) => format!("count dead {}", code.as_str()),
            Step::CountRetry => "count retry".into(),
            Step::MarkCommitted => format!("mark {id}"),
            Step::RecordWorkflow(key, w) => format!("record {key} {w:?}"),
            Step::CountWorkflow(WorkflowCount::Step { step, outcome, .. }) => format!("count step {step} {outcome}"),
            Step::CountWorkflow(WorkflowCount::End { result, .. }) => format!("count workflow {result}"),
        };
        plan.steps.iter().map(word).collect::<Vec<_>>().join(", ")
    }

    /// A row: name, disposition, the parsed job's id, reply_to, delay queues, the plan in words.
    type Case<'a> = (
        &'a str,
        Disposition,
        Option<&'a str>,
        Option<&'a ReplyTo>,
        Queues<'a>,
        &'a str,
    );

    #[test]
    fn every_disposition_plans_its_transaction_in_order() {
        let amqp = amqp();
        let delay = amqp.delay_queues(&RetrySchedule::new(vec![
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_secs(30),
        ]));
        let with_delay = Queues {
            amqp: &amqp,
            delay: &delay,
        };
        let without_delay = Queues {
            amqp: &amqp,
            delay: &[],
        };
        let own = OwnQueues::new(&amqp);
        let caller = ReplyTo::parse("caller.replies", &own).unwrap();
        let dead_record = recorded(
            r#"{"type":"gd_send_sms_failure","channel":"sms","error":{"code":"provider_rejected"}}"#,
            Some("provider_rejected: answered 400"),
            false,
        );
        let cases: Vec<Case> = vec![
            (
                "sent",
                sent(),
                Some("j1"),
                None,
                with_delay,
                "record j1 outcome, publish herald.events gd_send_sms, ack 7, report sent, mark j1",
            ),
            (
                "sent, with reply_to: the reply after the commit",
                sent(),
                Some("j1"),
                Some(&caller),
                with_delay,
                "record j1 outcome, publish herald.events gd_send_sms, ack 7, reply gd_send_sms, report sent, \
                 mark j1",
            ),
            (
                "failed for good: dead letter before the event",
                failed(ErrorCode::ProviderRejected),
                Some("j1"),
                None,
                with_delay,
                "record j1 outcome dead, publish herald.dead, publish herald.events gd_send_sms_failure, ack 7, \
                 report provider_rejected, count dead provider_rejected, mark j1",
            ),
            (
                "retries exhausted",
                failed(ErrorCode::AttemptsExhausted),
                Some("j1"),
                Some(&caller),
                with_delay,
                "record j1 outcome dead, publish herald.dead, publish herald.events gd_send_sms_failure, ack 7, \
                 reply gd_send_sms_failure, report attempts_exhausted, count dead attempts_exhausted, mark j1",
            ),
            (
                "throttled: an outcome, not a dead letter",
                failed(ErrorCode::Throttled),
                Some("j1"),
                None,
                with_delay,
                "record j1 outcome, publish herald.events gd_send_sms_failure, ack 7, report throttled, mark j1",
            ),
            (
                "retry: to the delay queue of its wait, its attempt recorded first",
                retry(Duration::from_secs(5)),
                Some("j1"),
                Some(&caller),
                with_delay,
                "record j1 retrying 2, publish herald.retry.5s, ack 7, count retry",
            ),
            (
                "retry of a jittered wait: the nearest queue by ratio",
                retry(Duration::from_secs(20)),
                Some("j1"),
                None,
                with_delay,
                "record j1 retrying 2, publish herald.retry.30s, ack 7, count retry",
            ),
            (
                "retry without delay queues: herald.retry",
                retry(Duration::from_secs(5)),
                Some("j1"),
                None,
                without_delay,
                "record j1 retrying 2, publish herald.retry, ack 7, count retry",
            ),
            (
                "duplicate: acked, nothing else",
                settled(
                    recorded(r#"{"type":"gd_send_sms","channel":"sms"}"#, None, true),
                    REDELIVERED,
                ),
                Some("j1"),
                None,
                with_delay,
                "ack 7",
            ),
            (
                "duplicate with reply_to: its reply, no event",
                settled(
                    recorded(r#"{"type":"gd_send_sms","channel":"sms"}"#, None, true),
                    REDELIVERED,
                ),
                Some("j1"),
                Some(&caller),
                with_delay,
                "ack 7, reply gd_send_sms_failure",
            ),
            (
                "republish: the recorded event, not written again",
                settled(
                    recorded(r#"{"type":"gd_send_sms","channel":"sms"}"#, None, false),
                    REDELIVERED,
                ),
                Some("j1"),
                Some(&caller),
                with_delay,
                "publish herald.events gd_send_sms, ack 7, reply gd_send_sms, report sent, mark j1",
            ),
            (
                "republish of a dead-lettered outcome",
                settled(dead_record, REDELIVERED),
                Some("j1"),
                None,
                with_delay,
                "publish herald.dead, publish herald.events gd_send_sms_failure, ack 7, report provider_rejected, \
                 count dead provider_rejected, mark j1",
            ),
            (
                "poison at the delivery limit: exhausted, without an attempt",
                match decision::before_delivery(
                    &job(),
                    None,
                    Redelivery {
                        redelivered: true,
                        deliveries: 5,
                    },
                    Some(5),
                    &en(),
                ) {
                    decision::Next::Settled(d) => *d,
                    decision::Next::Deliver { .. } => panic!("poison is settled"),
                },
                Some("j1"),
                None,
                with_delay,
                "record j1 outcome dead, publish herald.dead, publish herald.events gd_send_sms_failure, ack 7, \
                 report attempts_exhausted, count dead attempts_exhausted, mark j1",
            ),
            (
                "not a valid job: dead letter and failure event, nothing recorded",
                rejected(),
                None,
                None,
                with_delay,
                "publish herald.dead, publish herald.events gd_send_sms_failure, ack 7, report invalid_job, \
                 count dead invalid_job",
            ),
            (
                "not a valid job, with reply_to",
                rejected(),
                None,
                Some(&caller),
                with_delay,
                "publish herald.dead, publish herald.events gd_send_sms_failure, ack 7, reply gd_send_sms_failure, \
                 report invalid_job, count dead invalid_job",
            ),
        ];
        for (name, disposition, job_id, reply_to, queues, expected) in cases {
            let plan = of(disposition, &inbound(), job_id, reply_to, queues);
            assert_eq!(words(&plan), expected, "{name}");
        }
        assert_eq!(words(&Plan::acknowledge(7)), "ack 7", "a copy whose outcome is out");
    }

    fn publishes(plan: &mut Plan) -> Vec<&mut Publish> {
        plan.publishes().collect()
    }

    fn header<'a>(p: &'a Publish, name: &str) -> Option<&'a AMQPValue> {
        p.properties.headers().as_ref()?.inner().get(name)
    }

    #[test]
    fn an_outcome_is_serialized_once_and_the_job_body_never_copied() {
        let amqp = amqp();
        let queues = Queues {
            amqp: &amqp,
            delay: &[],
        };
        let own = OwnQueues::new(&amqp);
        let caller = ReplyTo::parse("caller.replies", &own).unwrap();
        let inbound = inbound();
        let mut plan = of(
            failed(ErrorCode::ProviderRejected),
            &inbound,
            Some("j1"),
            Some(&caller),
            queues,
        );
        let (id, record) = plan.take_record().unwrap();
        assert_eq!(id, "j1");
        let Entry::Outcome(record) = record else {
            panic!("an outcome record")
        };
        let [dead, event] = &publishes(&mut plan)[..] else {
            panic!("a dead letter and an event")
        };
        // The dead letter is the job as it came, with the publisher's headers and the reason.
        assert!(Arc::ptr_eq(&dead.body, &inbound.body));
        assert_eq!(header(dead, "x-trace"), Some(&AMQPValue::LongString("t-1".into())));
        assert_eq!(
            header(dead, crate::broker::ERROR_HEADER),
            Some(&AMQPValue::LongString(record.dead_reason.clone().unwrap().into()))
        );
        assert_eq!(dead.properties.delivery_mode(), &Some(2));
        // The event: its type and the job id, the very bytes recorded, replied and printed.
        assert_eq!(
            event.properties.kind().as_ref().map(ShortString::as_str),
            Some("gd_send_sms_failure")
        );
        assert_eq!(
            event.properties.message_id().as_ref().map(ShortString::as_str),
            Some("j1")
        );
        assert_eq!(event.body.as_slice(), record.event.as_bytes());
        let event_body = event.body.clone();
        let reply = plan.steps.iter().find_map(|s| match s {
            Step::Reply(r) => Some(r),
            _ => None,
        });
        let reply = reply.unwrap();
        assert!(Arc::ptr_eq(&reply.body, &event_body));
        assert_eq!(reply.correlation_id.as_ref().map(ShortString::as_str), Some("c-1"));
        let printed = plan.steps.iter().find_map(|s| match s {
            Step::Report { json, .. } => Some(json),
            _ => None,
        });
        assert!(Arc::ptr_eq(printed.unwrap(), &event_body));
    }

    #[test]
    fn a_retry_carries_the_job_without_the_brokers_bookkeeping() {
        let amqp = amqp();
        let delay = amqp.delay_queues(&RetrySchedule::new(vec![Duration::from_secs(5)]));
        let queues = Queues {
            amqp: &amqp,
            delay: &delay,
        };
        let inbound = inbound();
        let mut plan = of(retry(Duration::from_millis(4321)), &inbound, Some("j1"), None, queues);
        let [retry] = &publishes(&mut plan)[..] else {
            panic!("one publish")
        };
        assert!(Arc::ptr_eq(&retry.body, &inbound.body));
        assert_eq!(retry.routing_key, "herald.retry.5s");
        assert_eq!(
            retry.properties.expiration().as_ref().map(ShortString::as_str),
            Some("4321")
        );
        assert_eq!(retry.properties.delivery_mode(), &Some(2));
        assert_eq!(
            retry.properties.correlation_id().as_ref().map(ShortString::as_str),
            Some("c-1")
        );
        let mut names: Vec<&str> = retry
            .properties
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .keys()
            .map(|k| k.as_str())
            .collect();
        names.sort_unstable();
        // herald's own attempt number replaces the publisher's 99.
        assert_eq!(names, [ATTEMPT_HEADER, "x-trace"]);
        assert_eq!(header(retry, ATTEMPT_HEADER), Some(&AMQPValue::LongLongInt(2)));
    }

    #[test]
    fn an_orphan_keeps_its_outcome_and_loses_its_ack() {
        let amqp = amqp();
        let queues = Queues {
            amqp: &amqp,
            delay: &[],
        };
        let mut plan = of(sent(), &inbound(), Some("j1"), None, queues);
        assert_eq!((plan.ack(), plan.marks()), (Some(7), Some("j1")));
        assert!(plan.take_record().is_some());
        assert!(plan.take_record().is_none(), "taken once");
        plan.orphan();
        assert_eq!(words(&plan), "publish herald.events gd_send_sms, report sent, mark j1");
        plan.unmark();
        assert_eq!((plan.ack(), plan.marks()), (None, None));
        // A retry records an entry but has nothing to mark.
        let retrying = of(retry(Duration::from_secs(1)), &inbound(), Some("j1"), None, queues);
        assert_eq!(retrying.marks(), None);
    }
}
