//! One message: what [`Consumer::handle`] makes of herald's view of a delivery ([`Inbound`]): parse, claim, read the store, decide, deliver, and plan the copy's
//! transaction.

use tokio_util::sync::CancellationToken;

use super::delivery::Inbound;
use super::outage::OUTAGE_SETTLE;
use super::plan::{self, Plan, Queues};
use super::uncommitted::{GaugeGuard, Uncommitted};
use super::{Consumer, lock};
use crate::broker;
use crate::config::QueueType;
use crate::decision::{self, Disposition, Next};
use crate::dispatch::Answer;
use crate::job::{InvalidJob, Job, JobError};
use crate::privacy;
use crate::reply::ReplyTo;

impl Consumer {
    /// One message: parse, claim its id, read its outcome record, decide, deliver if the decision says so,
    /// and plan the copy's transaction (its store write under way). `None` when shutdown came while it
    /// waited for another replica's claim or for the store: nothing was done.
    pub(super) async fn handle(&self, inbound: Inbound, shutdown: &CancellationToken) -> Option<Uncommitted> {
        let gauge = GaugeGuard::new(&self.metrics);
        let props = &inbound.properties;
        let content_type = props.content_type().as_ref().map(|s| s.as_str());
        let redelivery = inbound.redelivery;
        let reply_to = props
            .reply_to()
            .as_ref()
            .map(|to| ReplyTo::parse(to.as_str(), &self.own_queues));
        let job = Job::from_message(&inbound.body, content_type).and_then(|job| match &reply_to {
            Some(Err(e)) => Err(InvalidJob::refused(job, JobError::ReplyTo(e.clone()))),
            _ => Ok(job),
        });
        // Refused for its headers before anything else it breaks: that is what its dead letter leaves out.
        let job = match (inbound.oversized_headers, job) {
            (Some(size), Ok(job)) => Err(InvalidJob::refused(
                job,
                JobError::Headers {
                    size,
                    max: broker::MAX_HEADERS,
                },
            )),
            (Some(size), Err(invalid)) => Err(InvalidJob {
                reason: JobError::Headers {
                    size,
                    max: broker::MAX_HEADERS,
                },
                ..invalid
            }),
            (None, job) => job,
        };
        // Never a reply to an address refused: it could close the replies connection.
        let reply_to = reply_to.and_then(Result::ok);
        // A workflow job is checked against its workflow like its fields (docs/workflows.md).
        let mut flow = None;
        let job = match job {
            Ok(job) if job.workflow.is_some() => match crate::workflow::resolve(job, &self.workflows) {
                Ok((job, found)) => {
                    flow = Some(found);
                    Ok(job)
                }
                Err(invalid) => Err(*invalid),
            },
            job => job,
        };
        let job = match job {
            Ok(job) => job,
            Err(invalid) => {
                tracing::warn!(job_id = invalid.id.as_deref().unwrap_or("-"), reason = %privacy::scrub(&invalid.reason.to_string()),
                    "invalid job dead-lettered");
                let plan = plan::of(
                    decision::rejected(&invalid),
                    &inbound,
                    None,
                    reply_to.as_ref(),
                    self.queues(),
                );
                return Some(Uncommitted::start(plan, &self.store, None, gauge));
            }
        };
        let (claim, held) = tokio::select! {
            claim = self.claim(&job.id) => claim,
            _ = shutdown.cancelled() => return None,
        };
        // Kept, not taken: copies from dead sessions wait on the same claim, and the first one to get it
        // must not leave the copy that counts (the current session's) without the answer.
        if redelivery.redelivered && lock(&self.orphans).committed.contains(&job.id) {
            tracing::info!(job_id = %job.id, "copy of a job committed after its session died acknowledged");
            let plan = Plan::acknowledge(inbound.delivery_tag);
            return Some(Uncommitted::start(plan, &self.store, Some(claim), gauge));
        }
        if held {
            // Held by a store outage: give the replica that held this id before it (its lease may have run
            // out meanwhile) the time to write the outcome it was waiting to record.
            tokio::select! {
                _ = tokio::time::sleep(OUTAGE_SETTLE) => {}
                _ = shutdown.cancelled() => return None,
            }
        }
        if let Some(flow) = flow {
            return self
                .handle_workflow(&inbound, job, flow, reply_to, claim, gauge, shutdown)
                .await;
        }
        // A record that cannot be read is not taken as none: the job waits until the store answers.
        let prior = tokio::select! {
            prior = self.held_for_store(&job.id, || self.store.get(&job.id)) => prior,
            _ = shutdown.cancelled() => return None,
        };
        let disposition =
            match decision::before_delivery(&job, prior, redelivery, self.poison_limit(), &self.default_locale) {
                Next::Settled(disposition) => *disposition,
                Next::Deliver { attempt } => {
                    // A report that overtakes the provider's answer is asked again, not lost (docs/receipts.md "State").
                    let sending = self.receipts.as_ref().and_then(|r| r.sending(&job.id));
                    let answered = self.dispatcher.deliver(&job, attempt).await;
                    if let (Some(receipts), Answer::Sent { provider, receipt }) = (&self.receipts, &answered.answer) {
                        receipts.sent(&job, *provider, receipt);
                    }
                    drop(sending);
                    decision::after_delivery(&job, attempt, &answered, &self.default_locale)
                }
            };
        log(&disposition, &job.id);
        let plan = plan::of(disposition, &inbound, Some(&job.id), reply_to.as_ref(), self.queues());
        Some(Uncommitted::start(plan, &self.store, Some(claim), gauge))
    }

    /// Where herald's queue dead-letters poison (docs/guarantees.md "Poison"): only a quorum queue counts deliveries.
    pub(super) fn poison_limit(&self) -> decision::PoisonLimit {
        (self.config.queue_type == QueueType::Quorum).then_some(self.config.delivery_limit)
    }

    pub(super) fn queues(&self) -> Queues<'_> {
        Queues {
            amqp: &self.config,
            delay: &self.delay_queues,
        }
    }
}

/// What the log says of a duplicate, a republish or a retry; an outcome is told by its event.
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

#[cfg(test)]
mod tests {
    //! [`Consumer::handle`] driven with herald's own deliveries: a scripted provider and a SQLite store in
    //! a temporary directory, no broker.
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use std::sync::Arc;

    use lapin::BasicProperties;
    use lapin::types::AMQPValue;

    use super::*;
    use crate::config::{Config, ThrottleConfig};
    use crate::consumer::plan::tests::words;
    use crate::dispatch::Dispatcher;
    use crate::job::{Locale, PerChannel};
    use crate::metrics::Metrics;
    use crate::providers::stub::StubProvider;
    use crate::providers::{Provider, ProviderCode, ProviderError, ProviderKind, Receipt};
    use crate::retry::RetryPolicy;
    use crate::store::{Entry, Store};
    use crate::templates::Templates;
    use crate::throttle::Throttle;

    const JOB: &[u8] = br#"{"id":"j1","channel":"sms","to":"+14155550123","code":"482913","user_id":"u1"}"#;

    struct Harness {
        consumer: Consumer,
        provider: Arc<StubProvider>,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        _dir: tempfile::TempDir,
    }

    /// A consumer with herald's default configuration whose SMS chain answers from `script`.
    fn harness(script: Vec<Result<Receipt, ProviderError>>) -> Harness {
        let config = Config::default();
        let provider = Arc::new(StubProvider::new(ProviderKind::Twilio, script));
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let templates = Templates::load(&dir, &Locale::parse("en").unwrap()).unwrap();
        let dispatcher = Dispatcher::new(
            Arc::new(templates),
            PerChannel {
                sms: vec![provider.clone() as Arc<dyn Provider>],
                ..PerChannel::default()
            },
            RetryPolicy::new(vec![Duration::from_secs(1), Duration::from_secs(5)]),
            Arc::new(Throttle::new(&ThrottleConfig::unlimited(), None, None)),
        );
        let metrics = Arc::new(Metrics::new());
        let state = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::local(state.path(), metrics.store_errors.clone()).unwrap());
        let consumer = Consumer::new(
            &config,
            Arc::new(dispatcher),
            store.clone(),
            metrics.clone(),
            Arc::new(AtomicBool::new(false)),
        );
        Harness {
            consumer,
            provider,
            store,
            metrics,
            _dir: state,
        }
    }

    fn json() -> BasicProperties {
        BasicProperties::default().with_content_type("application/json".into())
    }

    impl Harness {
        /// Handles one copy and waits for its store write, as the commit loop does before the commit.
        async fn handle(&self, tag: u64, redelivered: bool, properties: BasicProperties, body: &[u8]) -> Uncommitted {
            let inbound = Inbound::new(tag, redelivered, properties, body.to_vec());
            let mut finished = self
                .consumer
                .handle(inbound, &CancellationToken::new())
                .await
                .expect("handled");
            if let Some(put) = finished.put.take() {
                put.await.unwrap();
            }
            finished
        }
    }

    #[tokio::test]
    async fn a_job_is_sent_recorded_and_planned() {
        let h = harness(vec![Ok(Receipt::sent(Some("SM1".into())))]);
        let finished = h.handle(1, false, json(), JOB).await;
        // The record's write is under way (here: done); the rest waits for the commit loop.
        assert_eq!(
            words(&finished.plan),
            "publish herald.events gd_send_sms, ack 1, report sent, mark j1"
        );
        assert_eq!(h.provider.calls(), ["j1"]);
        assert!(matches!(
            h.store.get("j1").await.unwrap(),
            Some(Entry::Outcome(record)) if !record.committed && record.event.contains("gd_send_sms")
        ));
        assert_eq!(h.metrics.in_flight.get(), 1, "in flight until committed or dropped");
        drop(finished);
        assert_eq!(h.metrics.in_flight.get(), 0);
    }

    #[tokio::test]
    async fn a_replay_is_acknowledged_and_a_redelivery_republishes_without_sending_again() {
        let h = harness(vec![Ok(Receipt::sent(Some("SM1".into())))]);
        // Its commit never came: the record stays unmarked.
        drop(h.handle(1, false, json(), JOB).await);
        let replay = h
            .handle(2, false, json().with_reply_to("caller.replies".into()), JOB)
            .await;
        assert_eq!(words(&replay.plan), "ack 2, reply gd_send_sms_failure");
        drop(replay);
        let redelivered = h.handle(3, true, json(), JOB).await;
        assert_eq!(
            words(&redelivered.plan),
            "publish herald.events gd_send_sms, ack 3, report sent, mark j1"
        );
        assert_eq!(h.provider.calls(), ["j1"], "sent once");
    }

    #[tokio::test]
    async fn a_retry_records_its_next_attempt_before_it_leaves() {
        let h = harness(vec![Err(ProviderError::Transient {
            message: "answered 503".into(),
            provider_code: ProviderCode::twilio(&serde_json::json!(20503)),
            retry_after: None,
        })]);
        let finished = h.handle(1, false, json(), JOB).await;
        // A wait of 1 s ±20%: the 1 s delay queue of retry.schedule.
        assert_eq!(words(&finished.plan), "publish herald.retry.1s, ack 1, count retry");
        assert!(matches!(
            h.store.get("j1").await.unwrap(),
            Some(Entry::Retrying { next_attempt: 2 })
        ));
    }

    #[tokio::test]
    async fn what_is_not_a_valid_job_is_dead_lettered_unsent() {
        let h = harness(vec![Ok(Receipt::sent(Some("SM1".into())))]);
        let mut big = lapin::types::FieldTable::default();
        big.insert(
            "x-trace".into(),
            AMQPValue::LongString("t".repeat(broker::MAX_HEADERS).into()),
        );
        let cases: [(&str, BasicProperties, &[u8]); 4] = [
            ("not JSON", json(), b"{"),
            // Refused before anything is sent: a retry would come back larger still (docs/jobs-and-events.md).
            ("headers over the bound", json().with_headers(big), JOB),
            (
                "not JSON by its content type",
                BasicProperties::default().with_content_type("text/plain".into()),
                JOB,
            ),
            // Never a reply to one of herald's own queues: the job is refused with it.
            ("reply_to herald.jobs", json().with_reply_to("herald.jobs".into()), JOB),
        ];
        for (name, properties, body) in cases {
            let finished = h.handle(4, false, properties, body).await;
            assert_eq!(
                words(&finished.plan),
                "publish herald.dead, publish herald.events gd_send_sms_failure, ack 4, report invalid_job, \
                 count dead invalid_job",
                "{name}"
            );
            if name == "headers over the bound" {
                let plan::Step::Publish(dead) = &finished.plan.steps[0] else {
                    panic!("a dead letter first")
                };
                let headers = dead.properties.headers().as_ref().unwrap().inner();
                assert_eq!(
                    headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
                    ["x-herald-error"]
                );
            }
        }
        assert!(h.provider.calls().is_empty());
        assert!(h.store.get("j1").await.unwrap().is_none(), "nothing recorded");
    }

    #[tokio::test]
    async fn a_redelivered_copy_of_a_committed_orphan_is_only_acked() {
        let h = harness(vec![Ok(Receipt::sent(Some("SM1".into())))]);
        lock(&h.consumer.orphans).committed.insert("j1".into());
        let finished = h.handle(5, true, json(), JOB).await;
        assert_eq!(words(&finished.plan), "ack 5");
        assert!(finished.claim.is_some(), "its claim held until its commit");
        assert!(h.provider.calls().is_empty());
    }

    #[tokio::test]
    async fn a_copy_waiting_on_a_claim_is_abandoned_at_shutdown() {
        let h = harness(vec![Ok(Receipt::sent(Some("SM1".into())))]);
        let _held = h.consumer.in_flight.claim("j1").await;
        let stopping = CancellationToken::new();
        stopping.cancel();
        let inbound = Inbound::new(6, false, json(), JOB.to_vec());
        assert!(h.consumer.handle(inbound, &stopping).await.is_none());
        assert!(h.provider.calls().is_empty());
        assert_eq!(h.metrics.in_flight.get(), 0);
    }

    #[test]
    fn the_brokers_delivery_count_is_read_on_a_redelivery_only() {
        let counted = |redelivered, count: AMQPValue| {
            let mut headers = lapin::types::FieldTable::default();
            headers.insert("x-delivery-count".into(), count);
            Inbound::new(1, redelivered, json().with_headers(headers), Vec::new()).redelivery
        };
        assert_eq!(counted(true, AMQPValue::LongLongInt(3)).deliveries, 4);
        assert_eq!(counted(true, AMQPValue::LongString("3".into())).deliveries, 4);
        assert_eq!(counted(false, AMQPValue::LongLongInt(3)).deliveries, 1);
        assert_eq!(counted(true, AMQPValue::LongLongInt(-1)).deliveries, 1);
    }
}
