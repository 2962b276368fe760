//! Prometheus metrics (contract §9). Labels carry only bounded, non-personal values.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::events::Event;
use crate::job::Channel;

pub struct Metrics {
    registry: Registry,
    /// `gd_send_{sms,voice,email}_total`, indexed by [`channel_index`].
    sent: [IntCounterVec; 3],
    /// `gd_send_{sms,voice,email}_failure_total`.
    failed: [IntCounterVec; 3],
    throttled: IntCounterVec,
    duration: HistogramVec,
    pub in_flight: IntGauge,
    pub retries: IntCounter,
    pub dead_lettered: IntCounterVec,
    pub broker_connected: IntGauge,
}

fn channel_index(channel: Channel) -> usize {
    match channel {
        Channel::Sms => 0,
        Channel::Voice => 1,
        Channel::Email => 2,
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let register = |c: Box<dyn prometheus::core::Collector>| registry.register(c).expect("unique metric name");
        let counter_vec = |name: String, help: String, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            register(Box::new(c.clone()));
            c
        };
        let sent = Channel::ALL.map(|c| {
            counter_vec(
                format!("gd_send_{}_total", c.as_str()),
                format!("{} messages accepted by a provider", c.as_str()),
                &["provider", "country", "action"],
            )
        });
        let failed = Channel::ALL.map(|c| {
            counter_vec(
                format!("gd_send_{}_failure_total", c.as_str()),
                format!("{} jobs that ended in failure, by reason (= error.code)", c.as_str()),
                &["provider", "country", "reason"],
            )
        });
        let throttled = counter_vec(
            "gd_send_throttled_total".into(),
            "Jobs refused by a throttle, by channel and scope".into(),
            &["channel", "scope"],
        );
        let duration = HistogramVec::new(
            HistogramOpts::new("gd_send_duration_seconds", "Provider call duration of successful sends")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["channel", "provider"],
        )
        .expect("valid metric");
        register(Box::new(duration.clone()));
        let in_flight =
            IntGauge::new("herald_jobs_in_flight", "Jobs received and not yet acknowledged").expect("valid");
        register(Box::new(in_flight.clone()));
        let retries = IntCounter::new("herald_retries_total", "Delivery attempts scheduled for retry").expect("valid");
        register(Box::new(retries.clone()));
        let dead_lettered = counter_vec(
            "herald_dead_lettered_total".into(),
            "Messages moved to the dead-letter queue, by reason".into(),
            &["reason"],
        );
        let broker_connected = IntGauge::new(
            "herald_broker_connected",
            "1 while connected to the broker and consuming",
        )
        .expect("valid");
        register(Box::new(broker_connected.clone()));
        Metrics {
            registry,
            sent,
            failed,
            throttled,
            duration,
            in_flight,
            retries,
            dead_lettered,
            broker_connected,
        }
    }

    /// Counts one outcome event.
    pub fn record(&self, event: &Event) {
        let i = channel_index(event.channel);
        let provider = event.provider.unwrap_or("none");
        let country = event.country.as_deref().unwrap_or("none");
        match &event.error {
            None => {
                self.sent[i]
                    .with_label_values(&[provider, country, event.action.unwrap_or("none")])
                    .inc();
                self.duration
                    .with_label_values(&[event.channel.as_str(), provider])
                    .observe(event.duration_ms as f64 / 1000.0);
            }
            Some(error) => {
                self.failed[i]
                    .with_label_values(&[provider, country, error.code.as_str()])
                    .inc();
                if let Some(scope) = event.scope {
                    self.throttled.with_label_values(&[event.channel.as_str(), scope]).inc();
                }
            }
        }
    }

    /// Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics");
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
