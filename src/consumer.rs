//! The consumer loop: moves messages from `herald.jobs` to [`Dispatcher::deliver`] and outcomes back to
//! the broker. It owns connection, reconnection, acknowledgement and shutdown; nothing about delivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{self, BrokerError, Publisher};
use crate::config::AmqpConfig;
use crate::dispatch::Dispatcher;
use crate::events::{self, Event};
use crate::job::Job;
use crate::metrics::Metrics;

pub struct Consumer {
    config: AmqpConfig,
    dispatcher: Arc<Dispatcher>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

impl Consumer {
    pub fn new(config: AmqpConfig, dispatcher: Arc<Dispatcher>, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Self {
        Consumer {
            config,
            dispatcher,
            metrics,
            ready,
        }
    }

    /// Consumes until `shutdown` fires, reconnecting with backoff whenever the broker goes away.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.clone().session(&shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    self.set_ready(false);
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

    fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        self.metrics.broker_connected.set(i64::from(ready));
    }

    /// One connection's lifetime. `Ok` only after a clean shutdown.
    async fn session(self: Arc<Self>, shutdown: &CancellationToken) -> Result<(), BrokerError> {
        // Named after the queue so operators (and tests) can tell replicas of different deployments apart.
        let connection = broker::connect(&self.config, &format!("herald:{}", self.config.jobs_queue)).await?;
        let channel = connection.create_channel().await?;
        broker::declare_topology(&channel, &self.config).await?;
        let publisher = Publisher::new(&connection).await?;
        channel
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                self.config.jobs_queue.as_str().into(),
                "herald".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(broker = %broker::redacted_url(&self.config), queue = %self.config.jobs_queue,
            prefetch = self.config.prefetch, "consuming");
        self.set_ready(true);

        // Deliveries run concurrently, bounded by the prefetch window: the broker never hands out more.
        let tracker = TaskTracker::new();
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let this = self.clone();
                        let publisher = publisher.clone();
                        tracker.spawn(async move { this.handle(&publisher, delivery).await });
                    }
                    Some(Err(e)) => break Err(BrokerError::Amqp(e)),
                    None => break Err(BrokerError::Nacked("consumer was cancelled by the broker".into())),
                },
            }
        };
        self.set_ready(false);
        if result.is_ok() {
            // Drain: stop receiving, let every delivery in flight finish and ack, then close. Messages
            // prefetched but not started are returned to the queue when the channel closes.
            let _ = channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await;
            tracker.close();
            tracker.wait().await;
            let _ = channel.close(200, "shutdown".into()).await;
            let _ = publisher.channel().close(200, "shutdown".into()).await;
            let _ = connection.close(200, "shutdown".into()).await;
            tracing::info!("consumer drained and closed");
        }
        result
    }

    /// One message: parse, deliver, publish the outcome (dead letter, event, reply), then ack.
    async fn handle(&self, publisher: &Publisher, delivery: Delivery) {
        self.metrics.in_flight.inc();
        let props = &delivery.properties;
        let content_type = props.content_type().as_ref().map(|s| s.as_str());
        let (event, dead_reason) = match Job::from_message(&delivery.data, content_type) {
            Err(invalid) => {
                tracing::warn!(job_id = invalid.id.as_deref().unwrap_or("-"), reason = %events::scrub(&invalid.reason),
                    "invalid job dead-lettered");
                let event = Event::invalid(&invalid);
                let reason = format!(
                    "invalid_job: {}",
                    event.error.as_ref().map_or("", |e| e.message.as_str())
                );
                (event, Some(reason))
            }
            Ok(job) => {
                let delivered = self.dispatcher.deliver(&job).await;
                let reason = delivered.outcome.dead_letter_reason().map(|r| events::scrub(&r));
                (self.dispatcher.event(&job, &delivered), reason)
            }
        };
        let json = event.to_json();
        match self
            .publish_outcome(publisher, &delivery, &event, &json, dead_reason.as_deref())
            .await
        {
            Ok(()) => {
                events::print(&json);
                self.metrics.record(&event);
                if let Some(reason) = &dead_reason {
                    let code = reason.split(':').next().unwrap_or("unknown");
                    self.metrics.dead_lettered.with_label_values(&[code]).inc();
                }
                if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                    tracing::warn!(error = %e, "ack failed; the broker will redeliver");
                }
            }
            Err(e) => {
                // Not acked: the broker keeps the job and redelivers it (contract §11.1).
                tracing::warn!(error = %e, "outcome not confirmed by the broker; job left for redelivery");
                let _ = delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await;
            }
        }
        self.metrics.in_flight.dec();
    }

    async fn publish_outcome(
        &self,
        publisher: &Publisher,
        delivery: &Delivery,
        event: &Event,
        json: &[u8],
        dead_reason: Option<&str>,
    ) -> Result<(), BrokerError> {
        let props = &delivery.properties;
        if let Some(reason) = dead_reason {
            let dead_props = broker::with_error_header(props, reason);
            publisher
                .publish("", &self.config.dead_queue, &delivery.data, dead_props)
                .await?;
        }
        let mut event_props = broker::json_properties().with_type(event.kind.into());
        if let Some(id) = event.job_id.as_deref().and_then(broker::short) {
            event_props = event_props.with_message_id(id);
        }
        publisher
            .publish(&self.config.events_exchange, event.kind, json, event_props.clone())
            .await?;
        if let Some(reply_to) = props.reply_to() {
            let mut reply_props = event_props;
            if let Some(correlation_id) = props.correlation_id() {
                reply_props = reply_props.with_correlation_id(correlation_id.clone());
            }
            publisher.publish("", reply_to.as_str(), json, reply_props).await?;
        }
        Ok(())
    }
}
