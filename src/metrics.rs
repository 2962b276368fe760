//! Prometheus metrics (docs/http-and-metrics.md "Metrics"). Labels carry only bounded, non-personal values.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::events::{ErrorCode, Event, RecordedEvent, Scope};
use crate::job::{Action, Channel, Country, PerChannel};
use crate::providers::ProviderKind;

pub struct Metrics {
    registry: Registry,
    /// Every metric family herald exports, whether or not it has a sample yet.
    names: Vec<String>,
    /// `gd_send_{sms,voice,email}_total`.
    sent: PerChannel<IntCounterVec>,
    /// `gd_send_{sms,voice,email}_failure_total`.
    failed: PerChannel<IntCounterVec>,
    throttled: IntCounterVec,
    duration: HistogramVec,
    pub in_flight: IntGauge,
    pub retries: IntCounter,
    pub dead_lettered: IntCounterVec,
    /// `gd_send_workflow_total{workflow,result}`: workflows ended (docs/workflows.md).
    pub workflows: IntCounterVec,
    /// `gd_send_workflow_steps_total{workflow,step,channel,outcome}`: steps that reached their outcome.
    pub workflow_steps: IntCounterVec,
    pub broker_connected: IntGauge,
    /// Throttle checks made with the local limiters because Redis failed.
    pub throttle_fallbacks: IntCounter,
    /// Failed operations of the outcome store, by `op`.
    pub store_errors: IntCounterVec,
    /// Jobs waiting for the outcome store to answer (none is sent meanwhile).
    pub store_held: IntGauge,
    /// Replies to jobs' `reply_to`, by result.
    pub replies: IntCounterVec,
    /// `herald_provider_ambiguous_total{provider,reason}`.
    pub provider_ambiguous: IntCounterVec,
    /// Broker connections dropped because the broker stopped answering (no heartbeat).
    pub broker_stalls: IntCounter,
    /// The toll-fraud guard's decisions, feedback and state (docs/fraud-and-limits.md "Adaptive guard").
    pub guard: crate::fraud::GuardMetrics,
    /// Messages settled per broker transaction: the batch a commit carries (its count is the commits).
    pub commit_batch: prometheus::Histogram,
    /// Seconds from a broker transaction's `tx.commit` to its `commit-ok`: the pipeline's serial step.
    pub commit_seconds: prometheus::Histogram,
    /// The HTTP server's connections, request deadlines and admin token refusals.
    pub http: HttpMetrics,
}

/// The HTTP server's own metrics (the `herald_http_*` family, and the admin token's refusals).
pub struct HttpMetrics {
    /// Connections open now.
    pub connections: IntGauge,
    /// Connections that filled the last free slot: accepting pauses until one closes.
    pub limit_reached: IntCounter,
    /// Requests whose head and body did not arrive within `http.request_timeout` (answered 408).
    pub request_timeouts: IntCounter,
    /// Admin API requests refused for their token, by `reason` (`missing`, `wrong`, `throttled`).
    pub admin_auth_failures: IntCounterVec,
}

impl HttpMetrics {
    pub fn new(register: &dyn Fn(Box<dyn prometheus::core::Collector>)) -> HttpMetrics {
        let connections = IntGauge::new("herald_http_connections", "HTTP connections open now").expect("valid metric");
        register(Box::new(connections.clone()));
        let limit_reached = IntCounter::new(
            "herald_http_connection_limit_reached_total",
            "HTTP connections that took the last of http.max_connections: accepting paused until one closed",
        )
        .expect("valid metric");
        register(Box::new(limit_reached.clone()));
        let request_timeouts = IntCounter::new(
            "herald_http_request_timeouts_total",
            "HTTP connections whose request head or body had not arrived within http.request_timeout of accept \
             (answered 408, or dropped having sent nothing), and connections still open 1 s past it (shut down)",
        )
        .expect("valid metric");
        register(Box::new(request_timeouts.clone()));
        let admin_auth_failures = IntCounterVec::new(
            Opts::new(
                "herald_admin_auth_failures_total",
                "Admin API requests refused for their bearer token, by reason (missing, wrong, throttled)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        register(Box::new(admin_auth_failures.clone()));
        for reason in ["missing", "wrong", "throttled"] {
            admin_auth_failures.with_label_values(&[reason]);
        }
        HttpMetrics {
            connections,
            limit_reached,
            request_timeouts,
            admin_auth_failures,
        }
    }
}

/// What the metrics count of an outcome event: its labels, as types (they become text in
/// [`Metrics::record`]), and its duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub channel: Channel,
    pub provider: Option<ProviderKind>,
    pub country: Option<Country>,
    pub action: Option<Action>,
    /// `error.code` of a failure.
    pub error: Option<ErrorCode>,
    pub scope: Option<Scope>,
    pub duration_ms: u64,
}

impl Sample {
    pub fn of(event: &Event) -> Sample {
        Sample {
            channel: event.channel,
            provider: event.provider,
            country: event.country,
            action: event.action,
            error: event.error.as_ref().map(|e| e.code),
            scope: event.scope,
            duration_ms: event.duration_ms,
        }
    }

    /// From a recorded outcome (one whose transaction never committed).
    pub fn recorded(r: &RecordedEvent) -> Sample {
        Sample {
            channel: r.channel,
            provider: r.provider,
            country: r.country,
            action: r.action,
            error: r.error.as_ref().map(|e| e.code),
            scope: r.scope,
            duration_ms: r.duration_ms,
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let names = std::cell::RefCell::new(Vec::new());
        let register = |c: Box<dyn prometheus::core::Collector>| {
            names.borrow_mut().extend(c.desc().iter().map(|d| d.fq_name.clone()));
            registry.register(c).expect("unique metric name")
        };
        let counter_vec = |name: String, help: String, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            register(Box::new(c.clone()));
            c
        };
        let sent = PerChannel::from_fn(|c| {
            counter_vec(
                format!("gd_send_{}_total", c.as_str()),
                format!("{} messages accepted by a provider", c.as_str()),
                &["provider", "country", "action"],
            )
        });
        let failed = PerChannel::from_fn(|c| {
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
        let workflows = counter_vec(
            "gd_send_workflow_total".into(),
            "Workflows ended, by workflow and result (delivered, verified, sent, failed, expired)".into(),
            &["workflow", "result"],
        );
        let workflow_steps = counter_vec(
            "gd_send_workflow_steps_total".into(),
            "Workflow steps that reached their outcome, by workflow, step, channel and outcome (sent or error.code)"
                .into(),
            &["workflow", "step", "channel", "outcome"],
        );
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = prometheus::Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            register(Box::new(h.clone()));
            h
        };
        let commit_batch = histogram(
            "herald_commit_batch_messages",
            "Jobs settled (event, retry or dead letter, and ack) per broker transaction",
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
        );
        let commit_seconds = histogram(
            "herald_commit_seconds",
            "Seconds from a broker transaction's commit to the broker's commit-ok",
            vec![
                0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 1.0,
            ],
        );
        let broker_connected = IntGauge::new(
            "herald_broker_connected",
            "1 while connected to the broker and consuming",
        )
        .expect("valid");
        register(Box::new(broker_connected.clone()));
        let throttle_fallbacks = IntCounter::new(
            "herald_throttle_local_fallback_total",
            "Throttle checks made with per-replica limiters because Redis was unreachable",
        )
        .expect("valid");
        register(Box::new(throttle_fallbacks.clone()));
        let store_errors = counter_vec(
            "herald_store_errors_total".into(),
            "Failed outcome-store operations (get, put, mark, claim; files: a state file deleted or replaced under \
             herald): duplicate protection is lost meanwhile"
                .into(),
            &["op"],
        );
        // Present at 0 from the start, so that rate() sees the first failure.
        for op in ["get", "put", "mark", "claim", "files"] {
            store_errors.with_label_values(&[op]);
        }
        let store_held = IntGauge::new(
            "herald_store_held_jobs",
            "Jobs held because the outcome store does not answer: none of them is sent until it does",
        )
        .expect("valid");
        register(Box::new(store_held.clone()));
        let replies = counter_vec(
            "herald_replies_total".into(),
            "Replies to jobs' reply_to, by result: sent (confirmed by the broker), refused (the broker \
             refused that address), dropped (not published: backlog full or shutdown)"
                .into(),
            &["result"],
        );
        for result in ["sent", "refused", "dropped"] {
            replies.with_label_values(&[result]);
        }
        let provider_ambiguous = counter_vec(
            "herald_provider_ambiguous_total".into(),
            "Sends that may have reached the provider without a clear answer, counted as sent and never sent \
             again, by reason: unreadable_answer (a 2xx not understood), timeout or connection_closed (the \
             request was written whole), partly_taken (some parts of a long text taken)"
                .into(),
            &["provider", "reason"],
        );
        let broker_stalls = IntCounter::new(
            "herald_broker_stalls_total",
            "Broker connections given up because the broker sent nothing (not even a heartbeat) for two heartbeat intervals",
        )
        .expect("valid");
        register(Box::new(broker_stalls.clone()));
        let suspected = counter_vec(
            "gd_send_fraud_suspected_total".into(),
            "Phone jobs over their destination's verified budget, by scope; mode=enforce were refused, \
             mode=monitor only counted"
                .into(),
            &["channel", "scope", "mode"],
        );
        let verified = counter_vec(
            "gd_send_verified_total".into(),
            "Codes the MFA server reported verified (herald.feedback), by channel and country".into(),
            &["channel", "country"],
        );
        let feedback = counter_vec(
            "herald_feedback_total".into(),
            "herald.feedback messages, by result: counted, duplicate, unknown (job id not sent or \
             expired), not_verified, malformed"
                .into(),
            &["result"],
        );
        for result in ["counted", "duplicate", "unknown", "not_verified", "malformed"] {
            feedback.with_label_values(&[result]);
        }
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid");
            register(Box::new(g.clone()));
            g
        };
        let guard = crate::fraud::GuardMetrics {
            suspected,
            verified,
            feedback,
            outage: gauge(
                "herald_fraud_feedback_outage",
                "1 while busy verification feedback has stopped although codes go to ranges that verify \
                 (those ranges are then not refused)",
            ),
            enforcing: gauge(
                "herald_fraud_enforcing",
                "1 while the fraud guard refuses jobs (enforce mode, learning over; also in a feedback outage)",
            ),
            errors: {
                let c = IntCounter::new(
                    "herald_fraud_errors_total",
                    "Fraud-guard checks skipped because Redis was unreachable (the job was allowed)",
                )
                .expect("valid");
                register(Box::new(c.clone()));
                c
            },
        };
        let http = HttpMetrics::new(&register);
        Metrics {
            http,
            names: names.into_inner(),
            guard,
            registry,
            sent,
            failed,
            throttled,
            duration,
            in_flight,
            retries,
            commit_batch,
            commit_seconds,
            dead_lettered,
            workflows,
            workflow_steps,
            broker_connected,
            throttle_fallbacks,
            store_errors,
            store_held,
            replies,
            provider_ambiguous,
            broker_stalls,
        }
    }

    /// The name of every metric family herald exports (a histogram adds `_bucket`, `_sum`, `_count`):
    /// what dashboards and alert rules may query.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Counts one outcome event.
    pub fn record(&self, s: &Sample) {
        // The labels' text is made here, and only here.
        let provider = s.provider.map_or("none", ProviderKind::name);
        let country = s.country.map(|c| c.to_string());
        let country = country.as_deref().unwrap_or("none");
        match s.error {
            None => {
                self.sent
                    .get(s.channel)
                    .with_label_values(&[provider, country, s.action.map_or("none", Action::as_str)])
                    .inc();
                self.duration
                    .with_label_values(&[s.channel.as_str(), provider])
                    .observe(s.duration_ms as f64 / 1000.0);
            }
            Some(code) => {
                self.failed
                    .get(s.channel)
                    .with_label_values(&[provider, country, code.as_str()])
                    .inc();
                if let Some(scope) = s.scope {
                    self.throttled
                        .with_label_values(&[s.channel.as_str(), scope.as_str()])
                        .inc();
                }
            }
        }
    }

    /// The registry, for metrics kept by their own module (receipts).
    pub fn registry(&self) -> &Registry {
        &self.registry
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventError;
    use crate::job::{Job, Locale};

    /// A republished outcome is counted with the labels its first publication would have had.
    #[test]
    fn a_recorded_outcome_counts_as_its_event_would() {
        let job =
            Job::from_json(br#"{"id":"j1","channel":"voice","to":"+447700900123","code":"482913","user_id":"u1"}"#)
                .unwrap();
        let mut sent = Event::for_job(&job, &Locale::parse("en").unwrap(), true);
        sent.provider = Some(ProviderKind::Twilio);
        sent.duration_ms = 142;
        let mut throttled = Event::for_job(&job, &Locale::parse("en").unwrap(), false);
        throttled.scope = Some(Scope::Prefix);
        throttled.error = Some(EventError {
            code: ErrorCode::Throttled,
            message: "over the prefix limit".into(),
            provider_code: None,
        });
        for event in [sent, throttled] {
            let recorded: RecordedEvent = serde_json::from_slice(&event.to_json()).unwrap();
            assert_eq!(Sample::recorded(&recorded), Sample::of(&event));
        }
    }
}
