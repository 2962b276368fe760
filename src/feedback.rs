//! `herald.feedback` (docs/fraud-and-limits.md "Adaptive guard"): the MFA server says which codes were verified, and
//! the fraud guard counts them against the destinations their jobs went to. The body becomes a [`Verification`] here,
//! in one place; anything else is dead-lettered with its reason, and the consumer goes on.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, BrokerError, Publisher};
use crate::config::AmqpConfig;
use crate::fraud::{Feedback, Guard, GuardMetrics};

/// Feedback is a few dozen bytes; anything this large is not feedback.
pub const MAX_BODY: usize = 4096;

/// One parsed feedback message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub job_id: String,
    pub verified: bool,
    pub verified_at: Option<DateTime<Utc>>,
}

/// Why a feedback message was dead-lettered: the `x-herald-error` text. Never echoes the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidFeedback {
    #[error("feedback body is {0} bytes, more than the {MAX_BODY} allowed")]
    TooLarge(usize),
    #[error("feedback content type is not application/json")]
    ContentType,
    #[error("feedback body is not a JSON object")]
    NotAnObject,
    #[error("feedback field `job_id` must be a string of 1 to 128 printable ASCII characters, no spaces")]
    JobId,
    #[error("feedback field `verified` must be true or false")]
    Verified,
    #[error("feedback field `verified_at` must be an RFC 3339 time")]
    VerifiedAt,
    /// The encoded size of the message's AMQP headers, over what herald takes (`broker::MAX_HEADERS`).
    #[error("feedback headers are {0} bytes; herald takes at most {max}", max = broker::MAX_HEADERS)]
    Headers(usize),
}

impl Verification {
    pub fn from_message(body: &[u8], content_type: Option<&str>) -> Result<Verification, InvalidFeedback> {
        if body.len() > MAX_BODY {
            return Err(InvalidFeedback::TooLarge(body.len()));
        }
        if let Some(ct) = content_type {
            let mime = ct.split(';').next().unwrap_or("").trim();
            if !mime.eq_ignore_ascii_case("application/json") {
                return Err(InvalidFeedback::ContentType);
            }
        }
        let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Err(InvalidFeedback::NotAnObject);
        };
        let job_id = match map.get("job_id") {
            Some(serde_json::Value::String(id)) if crate::job::valid_id(id) => id.clone(),
            _ => return Err(InvalidFeedback::JobId),
        };
        let verified = match map.get("verified") {
            Some(serde_json::Value::Bool(v)) => *v,
            _ => return Err(InvalidFeedback::Verified),
        };
        let verified_at = match map.get("verified_at") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(
                DateTime::parse_from_rfc3339(s)
                    .map_err(|_| InvalidFeedback::VerifiedAt)?
                    .with_timezone(&Utc),
            ),
            Some(_) => return Err(InvalidFeedback::VerifiedAt),
        };
        Ok(Verification {
            job_id,
            verified,
            verified_at,
        })
    }
}

/// Consumes `amqp.feedback_queue` for as long as herald runs, reconnecting like the job consumer.
pub struct FeedbackConsumer {
    config: AmqpConfig,
    guard: Arc<Guard>,
    metrics: GuardMetrics,
    dead_lettered: prometheus::IntCounterVec,
    /// The frames its connections ask for, raised for good by a delivery larger than them.
    frame_max: broker::FrameMax,
    /// Where workflows learn of verified codes (docs/workflows.md).
    store: Option<Arc<crate::store::Store>>,
}

impl FeedbackConsumer {
    pub fn new(
        config: AmqpConfig,
        guard: Arc<Guard>,
        metrics: GuardMetrics,
        dead_lettered: prometheus::IntCounterVec,
    ) -> FeedbackConsumer {
        FeedbackConsumer {
            config,
            guard,
            metrics,
            dead_lettered,
            frame_max: broker::FrameMax::default(),
            store: None,
        }
    }

    /// Verified feedback also ends the job's workflow, if it has one (docs/workflows.md).
    pub fn with_store(mut self, store: Arc<crate::store::Store>) -> FeedbackConsumer {
        self.store = Some(store);
        self
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.session(&shutdown).await {
                Ok(()) => break,
                // The job consumer says these (the broker cannot be reached, a queue's arguments differ)
                // once per attempt.
                Err(e @ (BrokerError::Connect { .. } | BrokerError::Declare { .. })) => {
                    tracing::debug!("feedback consumer: {e}")
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "feedback consumer: broker connection lost; reconnecting")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn session(&self, shutdown: &CancellationToken) -> Result<(), BrokerError> {
        let name = format!("herald:{}:feedback", self.config.jobs_queue);
        let connection = broker::connect_framed(&self.config, &name, &self.frame_max).await?;
        let mut events = connection.events_listener().boxed();
        let result = self.consume(&connection, shutdown).await;
        if let Err(e) = &result {
            // Lost to a delivery larger than its frames: the next connection asks for larger ones.
            self.frame_max.raise_after(e, &mut events, "feedback consumer");
        }
        result
    }

    async fn consume(&self, connection: &lapin::Connection, shutdown: &CancellationToken) -> Result<(), BrokerError> {
        let channel = connection.create_channel().await?;
        broker::declare_topology(&channel, &self.config).await?;
        let dead = Publisher::new(connection).await?;
        channel
            .basic_qos(self.config.prefetch.get(), BasicQosOptions::default())
            .await?;
        let mut deliveries = channel
            .basic_consume(
                self.config.feedback_queue.as_str().into(),
                "herald-feedback".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %self.config.feedback_queue, "consuming feedback");
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = connection.close(200, "herald stopping".into()).await;
                    return Ok(());
                }
                next = deliveries.next() => match next {
                    Some(delivery) => delivery?,
                    None => return Err(BrokerError::Closed("feedback consumer cancelled by the broker".into())),
                },
            };
            self.handle(&dead, delivery, shutdown).await?;
        }
    }

    /// One message: counted (or dead-lettered) and then acked. While Redis is unreachable the message
    /// is tried again here, with backoff, and feedback waits in the queue: a nack would count a delivery
    /// each time, and the quorum queue's delivery limit would dead-letter it uncounted.
    async fn handle(
        &self,
        dead: &Publisher,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let content_type = delivery.properties.content_type().as_ref().map(|c| c.as_str());
        let headers = broker::carried_headers_size(&delivery.properties);
        let verification = if headers > broker::MAX_HEADERS {
            // Its dead letter goes without them (`with_error_header`).
            Err(InvalidFeedback::Headers(headers))
        } else {
            Verification::from_message(&delivery.data, content_type)
        };
        let verification = match verification {
            Ok(v) => v,
            Err(reason) => {
                let reason = reason.to_string();
                tracing::warn!(%reason, "feedback dead-lettered");
                let properties = broker::with_error_header(&delivery.properties, &reason);
                dead.publish("", &self.config.dead_queue, &delivery.data, properties)
                    .await?;
                self.dead_lettered.with_label_values(&["invalid_feedback"]).inc();
                self.metrics.feedback.with_label_values(&["malformed"]).inc();
                delivery.ack(BasicAckOptions::default()).await?;
                return Ok(());
            }
        };
        if !verification.verified {
            self.metrics.feedback.with_label_values(&["not_verified"]).inc();
            delivery.ack(BasicAckOptions::default()).await?;
            return Ok(());
        }
        let mut backoff = Duration::from_millis(200);
        loop {
            let counted = self.guard.verified(&verification.job_id).await;
            let remembered = match (&counted, &self.store) {
                (Ok(_), Some(store)) => crate::workflow::verified(store, &verification.job_id).await,
                _ => Ok(()),
            };
            if let Err(e) = remembered {
                tracing::warn!(error = %e, retry_in = ?backoff, "feedback not remembered for its workflow yet (store unreachable)");
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        delivery.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await?;
                        return Ok(());
                    }
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            match counted {
                Ok(result) => {
                    if let Feedback::Counted { .. } = result {
                        tracing::debug!(job_id = %verification.job_id, "code verified");
                    }
                    delivery.ack(BasicAckOptions::default()).await?;
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "feedback not counted yet (redis unreachable)");
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            // Back to the queue for the next herald; one delivery counted, not one per try.
                            delivery
                                .nack(BasicNackOptions {
                                    requeue: true,
                                    ..BasicNackOptions::default()
                                })
                                .await?;
                            return Ok(());
                        }
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedback_is_parsed_once_and_bad_feedback_names_its_fault() {
        let ok = Verification::from_message(br#"{"job_id":"j1","verified":true}"#, Some("application/json"));
        assert_eq!(
            ok,
            Ok(Verification {
                job_id: "j1".into(),
                verified: true,
                verified_at: None
            })
        );
        let at = Verification::from_message(
            br#"{"job_id":"j1","verified":false,"verified_at":"2026-11-26T10:00:00Z","extra":1}"#,
            None,
        )
        .unwrap();
        assert!(!at.verified && at.verified_at.is_some());
        let big = format!(r#"{{"job_id":"j1","verified":true,"pad":"{}"}}"#, "x".repeat(MAX_BODY));
        let cases: [(&[u8], Option<&str>, InvalidFeedback); 9] = [
            (b"not json", None, InvalidFeedback::NotAnObject),
            (b"[1,2]", None, InvalidFeedback::NotAnObject),
            (br#"{"verified":true}"#, None, InvalidFeedback::JobId),
            (br#"{"job_id":"","verified":true}"#, None, InvalidFeedback::JobId),
            (br#"{"job_id":7,"verified":true}"#, None, InvalidFeedback::JobId),
            (br#"{"job_id":"j1","verified":"yes"}"#, None, InvalidFeedback::Verified),
            (br#"{"job_id":"j1"}"#, None, InvalidFeedback::Verified),
            (
                br#"{"job_id":"j1","verified":true,"verified_at":"yesterday"}"#,
                None,
                InvalidFeedback::VerifiedAt,
            ),
            (
                br#"{"job_id":"j1","verified":true}"#,
                Some("text/plain"),
                InvalidFeedback::ContentType,
            ),
        ];
        for (body, ct, want) in cases {
            assert_eq!(
                Verification::from_message(body, ct),
                Err(want),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(matches!(
            Verification::from_message(big.as_bytes(), None),
            Err(InvalidFeedback::TooLarge(_))
        ));
    }
}
