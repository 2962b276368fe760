//! One delivery attempt: a parsed job in, one [`Answer`] out (timed, as [`Answered`]). No broker here, so tests can drive it directly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::events::{ErrorCode, Scope};
use crate::fraud::{self, Guard};
use crate::job::Job;
use crate::providers::{ProviderCode, ProviderError, ProviderKind, Receipt, Validity};
use crate::retry::RetryPolicy;
use crate::routing::Routes;
use crate::templates::{TemplateError, Templates};
use crate::throttle::{LimitVerdict, Throttle};

/// The dispatcher's answer to one delivery attempt: sent, failed (with its error code), or retry after a
/// delay. [`crate::decision`] turns it into the job's outcome, or its retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Every provider was unavailable and the schedule has another step: not an outcome of the job.
    Retry {
        after: Duration,
        message: String,
    },
    Sent {
        provider: ProviderKind,
        receipt: Receipt,
    },
    Failed {
        code: ErrorCode,
        message: String,
        provider: Option<ProviderKind>,
        provider_code: Option<ProviderCode>,
        scope: Option<Scope>,
    },
}

impl Answer {
    pub fn failed(code: ErrorCode, message: impl Into<String>) -> Answer {
        Answer::Failed {
            code,
            message: message.into(),
            provider: None,
            provider_code: None,
            scope: None,
        }
    }

    /// The `x-herald-error` reason when this outcome sends the job to the dead-letter queue: jobs that
    /// can never be delivered as they are. Expired and throttled jobs are finished, not dead.
    pub fn dead_letter_reason(&self) -> Option<String> {
        match self {
            Answer::Failed { code, message, .. }
                if matches!(
                    code,
                    ErrorCode::InvalidJob
                        | ErrorCode::ProviderRejected
                        | ErrorCode::ProviderUnavailable
                        | ErrorCode::AttemptsExhausted
                ) =>
            {
                Some(format!("{}: {message}", code.as_str()))
            }
            _ => None,
        }
    }
}

/// An attempt's [`Answer`] with how long the attempt took: what [`crate::decision::after_delivery`] reads.
#[derive(Debug, Clone)]
pub struct Answered {
    pub answer: Answer,
    pub duration: Duration,
}

pub struct Dispatcher {
    templates: Arc<Templates>,
    /// Provider chain per channel and destination country.
    routes: Routes,
    retry: RetryPolicy,
    throttle: Arc<Throttle>,
    /// The toll-fraud guard, after the fixed limits (docs/fraud-and-limits.md "Adaptive guard"); none in tests that do
    /// not need it.
    guard: Option<Arc<Guard>>,
    /// `herald_provider_ambiguous_total{provider,reason}`.
    ambiguous: Option<prometheus::IntCounterVec>,
}

impl Dispatcher {
    pub fn new(
        templates: Arc<Templates>,
        routes: impl Into<Routes>,
        retry: RetryPolicy,
        throttle: Arc<Throttle>,
    ) -> Dispatcher {
        Dispatcher {
            templates,
            routes: routes.into(),
            retry,
            throttle,
            guard: None,
            ambiguous: None,
        }
    }

    pub fn counting_ambiguous(mut self, counter: prometheus::IntCounterVec) -> Dispatcher {
        self.ambiguous = Some(counter);
        self
    }

    pub fn with_guard(mut self, guard: Arc<Guard>) -> Dispatcher {
        self.guard = Some(guard);
        self
    }

    /// Attempt `attempt` (1-based) of one job: expiry check, render, then its chain's providers in order
    /// until one accepts. A transient failure, or a refusal the provider ties to itself (sender, account,
    /// route), moves on to the next provider; a permanent one ends the job. When none sent it, the retry
    /// schedule decides if any was only unavailable; if every one refused, the job fails.
    pub async fn deliver(&self, job: &Job, attempt: u32) -> Answered {
        let started = Instant::now();
        let answer = self.try_deliver(job, attempt).await;
        Answered {
            answer,
            duration: started.elapsed(),
        }
    }

    async fn try_deliver(&self, job: &Job, attempt: u32) -> Answer {
        if job.expires_at.is_some_and(|at| at <= Utc::now()) {
            return Answer::failed(ErrorCode::Expired, "the job expired before it could be sent");
        }
        // Limits count jobs, not attempts: a retry already passed them.
        if attempt == 1 {
            let (verdict, taken) = self.throttle.check(job).await;
            match verdict {
                LimitVerdict::Allow => {}
                LimitVerdict::Throttled(scope) => {
                    return Answer::Failed {
                        code: ErrorCode::Throttled,
                        message: format!("over the {scope} limit"),
                        provider: None,
                        provider_code: None,
                        scope: Some(scope),
                    };
                }
                LimitVerdict::Blocked { country, refusal } => {
                    use crate::destinations::{Destination, Refusal};
                    // Names the entry that decided; a prefix is not written out (a long one is most of
                    // the number).
                    let message = match refusal {
                        Refusal::NotAllowed => format!("country calling code {country} is not allowed"),
                        Refusal::Denied(Destination::Code(code)) => format!("country calling code {code} is denied"),
                        Refusal::Denied(Destination::Region(region)) => format!("region {region} is denied"),
                        Refusal::Denied(Destination::Prefix(_)) => {
                            format!("a denied prefix of country calling code {country}")
                        }
                    };
                    return Answer::failed(ErrorCode::BlockedDestination, message);
                }
            }
            if let Some(guard) = &self.guard
                && let fraud::GuardVerdict::Refuse(scope) = guard.check(job).await
            {
                // Not sent, so it counts against no limit (docs/fraud-and-limits.md "Adaptive guard"): a pump the guard
                // stops must not spend its user's or IP's limits, nor the range's, for the real users after it.
                self.throttle.refund(taken).await;
                return Answer::Failed {
                    code: ErrorCode::SuspectedFraud,
                    message: format!("over the {scope} budget of unverified codes"),
                    provider: None,
                    provider_code: None,
                    scope: Some(scope),
                };
            }
        }
        let message = match self.templates.render(job) {
            Ok(m) => m,
            Err(
                e @ (TemplateError::Render { .. }
                | TemplateError::Missing(_)
                | TemplateError::TooLong { .. }
                | TemplateError::Invalid(_)
                | TemplateError::Io { .. }),
            ) => {
                return Answer::failed(ErrorCode::InvalidJob, e.to_string());
            }
        };
        let validity = Validity::for_job(job, self.retry.validity(), Utc::now());
        let mut last: Option<(ProviderKind, ProviderError)> = None;
        let mut refused: Option<(ProviderKind, ProviderError)> = None;
        for provider in self.routes.chain(job) {
            let kind = provider.name();
            // Text only for the log and the label below.
            let name = kind.name();
            match provider
                .send(job, &message, validity)
                .await
                .map_err(|e| e.scrubbed_for(job))
            {
                Ok(receipt) => {
                    if let Some(reason) = receipt.ambiguous {
                        tracing::warn!(
                            job_id = %job.id,
                            provider = name,
                            reason = reason.as_str(),
                            "the provider may have taken the message without saying so; it is not sent again"
                        );
                        if let Some(counter) = &self.ambiguous {
                            counter.with_label_values(&[name, reason.as_str()]).inc();
                        }
                    }
                    return Answer::Sent {
                        provider: kind,
                        receipt,
                    };
                }
                Err(e @ ProviderError::Permanent { .. }) => {
                    return provider_failure(ErrorCode::ProviderRejected, kind, e);
                }
                Err(e @ ProviderError::Refused { .. }) => {
                    tracing::warn!(job_id = %job.id, provider = name, error = %e, "provider cannot send it");
                    refused = Some((kind, e));
                }
                Err(e) => {
                    tracing::warn!(job_id = %job.id, provider = name, error = %e, "provider unavailable");
                    last = Some((kind, e));
                }
            }
        }
        let Some((kind, error)) = last else {
            return match refused {
                // No provider of the chain can send it: retrying would be refused the same way.
                Some((kind, error)) => provider_failure(ErrorCode::ProviderRejected, kind, error),
                None => Answer::failed(
                    ErrorCode::ProviderUnavailable,
                    "no provider configured for this channel",
                ),
            };
        };
        let retry_after = match &error {
            ProviderError::Transient { retry_after, .. } => *retry_after,
            ProviderError::Permanent { .. } | ProviderError::Refused { .. } => None,
        };
        match self.retry.delay(attempt, retry_after) {
            Some(after) if job.expires_at.is_some_and(|at| at <= Utc::now() + after) => Answer::failed(
                ErrorCode::Expired,
                format!(
                    "providers unavailable, and the job expires before the next attempt ({})",
                    error.message()
                ),
            ),
            Some(after) => Answer::Retry {
                after,
                message: error.message().to_owned(),
            },
            // No schedule at all: the job simply found no provider.
            None if self.retry.max_attempts() == 1 => provider_failure(ErrorCode::ProviderUnavailable, kind, error),
            None => provider_failure(ErrorCode::AttemptsExhausted, kind, error),
        }
    }
}

fn provider_failure(code: ErrorCode, provider: ProviderKind, e: ProviderError) -> Answer {
    Answer::Failed {
        code,
        message: e.message().to_owned(),
        provider: Some(provider),
        provider_code: e.provider_code().cloned(),
        scope: None,
    }
}

#[cfg(test)]
mod tests {
    //! Every rule of one delivery attempt, driven with scripted providers: no broker, no network.
    use super::*;
    use crate::config::ThrottleConfig;
    use crate::job::{Locale, PerChannel};
    use crate::providers::stub::StubProvider;
    use crate::providers::{Provider, ProviderKind};

    fn transient(retry_after: Option<Duration>) -> Result<Receipt, ProviderError> {
        Err(ProviderError::Transient {
            message: "answered 503".into(),
            provider_code: ProviderCode::twilio(&serde_json::json!(20503)),
            retry_after,
        })
    }

    fn permanent() -> Result<Receipt, ProviderError> {
        Err(ProviderError::Permanent {
            message: "The 'To' number +14155550123 is not valid".into(),
            provider_code: ProviderCode::twilio(&serde_json::json!(21211)),
        })
    }

    fn sent(id: &str) -> Result<Receipt, ProviderError> {
        Ok(Receipt::sent(Some(id.into())))
    }

    fn refused() -> Result<Receipt, ProviderError> {
        Err(ProviderError::Refused {
            message: "Permission to send an SMS has not been enabled for the region".into(),
            provider_code: ProviderCode::twilio(&serde_json::json!(21408)),
        })
    }

    fn unclear() -> Result<Receipt, ProviderError> {
        Ok(Receipt::unconfirmed(crate::providers::Ambiguous::Timeout, None))
    }

    fn job(extra: serde_json::Value) -> Job {
        let mut body = serde_json::json!({
            "id": "j1", "channel": "sms", "to": "+14155550123", "code": "482913", "user_id": "u1"
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        Job::from_json(body.to_string().as_bytes()).unwrap()
    }

    /// A dispatcher whose SMS chain is `chain`, with schedule `[1s, 5s]` and `throttle`.
    fn dispatcher(chain: Vec<Arc<dyn Provider>>, throttle: ThrottleConfig) -> Dispatcher {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let templates = Templates::load(&dir, &Locale::parse("en").unwrap()).unwrap();
        Dispatcher::new(
            Arc::new(templates),
            PerChannel {
                sms: chain,
                ..PerChannel::default()
            },
            RetryPolicy::new(vec![Duration::from_secs(1), Duration::from_secs(5)]),
            Arc::new(Throttle::new(&throttle, None, None)),
        )
    }

    fn stub(name: ProviderKind, script: Vec<Result<Receipt, ProviderError>>) -> Arc<StubProvider> {
        Arc::new(StubProvider::new(name, script))
    }

    /// An outcome in a word, for the table.
    fn word(answer: &Answer) -> String {
        match answer {
            Answer::Sent { provider, receipt } => {
                format!("sent by {provider} as {}", receipt.message_id.as_deref().unwrap_or("-"))
            }
            // Whole seconds: a Retry-After (jittered steps are never exactly whole).
            Answer::Retry { after, .. } if after.subsec_nanos() == 0 => format!("retry after {after:?}"),
            Answer::Retry { after, .. } if after.as_secs_f64() >= 0.8 && after.as_secs_f64() <= 1.2 => {
                "retry after ~1s".into()
            }
            Answer::Retry { after, .. } if after.as_secs_f64() >= 4.0 && after.as_secs_f64() <= 6.0 => {
                "retry after ~5s".into()
            }
            Answer::Retry { after, .. } => format!("retry after {after:?}"),
            Answer::Failed { code, provider, .. } => {
                format!("{} by {}", code.as_str(), provider.map_or("-", ProviderKind::name))
            }
        }
    }

    /// A row: name, each chain provider's script, fields added to the job, attempt, expected outcome.
    type Case = (
        &'static str,
        Vec<Vec<Result<Receipt, ProviderError>>>,
        serde_json::Value,
        u32,
        &'static str,
    );

    #[tokio::test]
    async fn one_attempt_by_the_rules() {
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339();
        let past = (chrono::Utc::now() - chrono::Duration::seconds(1)).to_rfc3339();
        let cases: Vec<Case> = vec![
            (
                "first provider accepts",
                vec![vec![sent("SM1")]],
                serde_json::json!({}),
                1,
                "sent by vonage as SM1",
            ),
            (
                "a permanent failure ends the job, no failover",
                vec![vec![permanent()], vec![sent("SM2")]],
                serde_json::json!({}),
                1,
                "provider_rejected by vonage",
            ),
            (
                "a transient failure fails over",
                vec![vec![transient(None)], vec![sent("SM2")]],
                serde_json::json!({}),
                1,
                "sent by plivo as SM2",
            ),
            (
                "a refusal of the sender or route moves to the next provider",
                vec![vec![refused()], vec![sent("SM2")]],
                serde_json::json!({}),
                1,
                "sent by plivo as SM2",
            ),
            (
                "every provider refused: the job fails, no retry",
                vec![vec![refused()], vec![refused()]],
                serde_json::json!({}),
                1,
                "provider_rejected by plivo",
            ),
            (
                "refused and unavailable: retried for the unavailable one",
                vec![vec![refused()], vec![transient(None)]],
                serde_json::json!({}),
                1,
                "retry after ~1s",
            ),
            (
                "a permanent failure after a refusal ends the job",
                vec![vec![refused()], vec![permanent()], vec![sent("SM3")]],
                serde_json::json!({}),
                1,
                "provider_rejected by plivo",
            ),
            (
                "a send of unknown outcome is sent, the next provider is not tried",
                vec![vec![unclear()], vec![sent("SM2")]],
                serde_json::json!({}),
                1,
                "sent by vonage as -",
            ),
            (
                "all unavailable: retry on the schedule",
                vec![vec![transient(None)], vec![transient(None)]],
                serde_json::json!({}),
                1,
                "retry after ~1s",
            ),
            (
                "second attempt: the second step",
                vec![vec![transient(None)]],
                serde_json::json!({}),
                2,
                "retry after ~5s",
            ),
            (
                "Retry-After is honoured",
                vec![vec![transient(Some(Duration::from_secs(3)))]],
                serde_json::json!({}),
                1,
                "retry after 3s",
            ),
            (
                "Retry-After is capped at the longest step",
                vec![vec![transient(Some(Duration::from_secs(3600)))]],
                serde_json::json!({}),
                1,
                "retry after 5s",
            ),
            (
                "after the last step: exhausted",
                vec![vec![transient(None)]],
                serde_json::json!({}),
                3,
                "attempts_exhausted by vonage",
            ),
            (
                "expired before sending",
                vec![vec![sent("SM1")]],
                serde_json::json!({"expires_at": past}),
                1,
                "expired by -",
            ),
            (
                "expires before the next attempt",
                vec![vec![transient(Some(Duration::from_secs(5)))]],
                serde_json::json!({"expires_at": soon}),
                1,
                "expired by -",
            ),
            (
                "no provider for the channel",
                vec![],
                serde_json::json!({}),
                1,
                "provider_unavailable by -",
            ),
        ];
        for (name, scripts, extra, attempt, expected) in cases {
            let names = [ProviderKind::Vonage, ProviderKind::Plivo, ProviderKind::Infobip];
            let stubs: Vec<Arc<StubProvider>> = scripts
                .into_iter()
                .enumerate()
                .map(|(i, s)| stub(names[i], s))
                .collect();
            let chain = stubs.iter().map(|s| s.clone() as Arc<dyn Provider>).collect();
            let d = dispatcher(chain, ThrottleConfig::unlimited());
            let answered = d.deliver(&job(extra), attempt).await;
            assert_eq!(word(&answered.answer), expected, "{name}");
        }
    }

    #[tokio::test]
    async fn limits_count_jobs_not_attempts() {
        let a = stub(ProviderKind::Vonage, vec![sent("SM1")]);
        let limits = ThrottleConfig {
            user_phone: Some("1/h".parse().unwrap()),
            ..ThrottleConfig::unlimited()
        };
        let d = dispatcher(vec![a.clone()], limits);
        assert_eq!(
            word(&d.deliver(&job(serde_json::json!({})), 1).await.answer),
            "sent by vonage as SM1"
        );
        let second = d.deliver(&job(serde_json::json!({"id": "j2"})), 1).await.answer;
        assert!(
            matches!(
                second,
                Answer::Failed {
                    code: ErrorCode::Throttled,
                    scope: Some(Scope::User),
                    ..
                }
            ),
            "{second:?}"
        );
        // A retry of a job that passed the limits is not counted again.
        let retry = d.deliver(&job(serde_json::json!({"id": "j3"})), 2).await.answer;
        assert_eq!(word(&retry), "sent by vonage as SM1");
        assert_eq!(a.calls(), ["j1", "j3"], "the throttled job never reached the provider");
    }

    #[tokio::test]
    async fn a_denied_country_is_blocked_before_any_provider() {
        let a = stub(ProviderKind::Vonage, vec![sent("SM1")]);
        let limits = ThrottleConfig {
            countries_deny: vec![crate::destinations::Destination::parse("1").unwrap()],
            ..ThrottleConfig::unlimited()
        };
        let d = dispatcher(vec![a.clone()], limits);
        let answer = d.deliver(&job(serde_json::json!({})), 1).await.answer;
        assert_eq!(word(&answer), "blocked_destination by -");
        assert!(a.calls().is_empty());
    }

    #[tokio::test]
    async fn a_job_takes_its_countrys_chain_else_its_channels() {
        let default = stub(ProviderKind::Vonage, vec![sent("V1")]);
        let uk = stub(ProviderKind::Infobip, vec![sent("I1")]);
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let templates = Templates::load(&dir, &Locale::parse("en").unwrap()).unwrap();
        let routes = Routes::new(
            PerChannel {
                sms: vec![default.clone() as Arc<dyn Provider>],
                ..PerChannel::default()
            },
            PerChannel {
                sms: [(
                    crate::destinations::Destination::parse("44").unwrap(),
                    vec![uk.clone() as Arc<dyn Provider>],
                )]
                .into_iter()
                .collect(),
                ..PerChannel::default()
            },
        );
        let d = Dispatcher::new(
            Arc::new(templates),
            routes,
            RetryPolicy::new(vec![Duration::from_secs(1)]),
            Arc::new(Throttle::new(&ThrottleConfig::unlimited(), None, None)),
        );
        let gb = job(serde_json::json!({"id": "gb", "to": "+447700900123"}));
        assert_eq!(word(&d.deliver(&gb, 1).await.answer), "sent by infobip as I1");
        let us = job(serde_json::json!({"id": "us"}));
        assert_eq!(word(&d.deliver(&us, 1).await.answer), "sent by vonage as V1");
        // Voice has no +44 entry: the voice chain (empty here), not the SMS route.
        let call = job(serde_json::json!({"id": "call", "channel": "voice", "to": "+447700900123"}));
        assert_eq!(word(&d.deliver(&call, 1).await.answer), "provider_unavailable by -");
        assert_eq!(
            (uk.calls(), default.calls()),
            (vec!["gb".to_owned()], vec!["us".to_owned()])
        );
    }
}
