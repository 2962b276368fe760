//! One delivery: a parsed job in, one [`Outcome`] out. No broker here, so tests can drive it directly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::events::ErrorCode;
use crate::job::{Channel, Job};
use crate::providers::{Provider, ProviderError, Receipt};
use crate::retry::RetryPolicy;
use crate::templates::{TemplateError, Templates};
use crate::throttle::{Throttle, Verdict};

/// How one delivery attempt ended: a final outcome, or a retry after a delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every provider was unavailable and the schedule has another step: not an outcome of the job.
    Retry {
        after: Duration,
        message: String,
    },
    Sent {
        provider: &'static str,
        receipt: Receipt,
    },
    Failed {
        code: ErrorCode,
        message: String,
        provider: Option<&'static str>,
        provider_code: Option<String>,
        scope: Option<&'static str>,
    },
}

impl Outcome {
    pub fn failed(code: ErrorCode, message: impl Into<String>) -> Outcome {
        Outcome::Failed {
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
            Outcome::Failed { code, message, .. }
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

/// A delivery's result with its timing, ready to become an event.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub outcome: Outcome,
    pub duration: Duration,
}

pub struct Dispatcher {
    templates: Arc<Templates>,
    /// Provider chain per channel, indexed like [`Channel::ALL`].
    chains: [Vec<Arc<dyn Provider>>; 3],
    retry: RetryPolicy,
    throttle: Arc<Throttle>,
}

fn index(channel: Channel) -> usize {
    Channel::ALL.iter().position(|c| *c == channel).unwrap_or(0)
}

impl Dispatcher {
    pub fn new(
        templates: Arc<Templates>,
        chains: [Vec<Arc<dyn Provider>>; 3],
        retry: RetryPolicy,
        throttle: Arc<Throttle>,
    ) -> Dispatcher {
        Dispatcher {
            templates,
            chains,
            retry,
            throttle,
        }
    }

    /// Attempt `attempt` (1-based) of one job: expiry check, render, then the channel's providers in order
    /// until one accepts. A transient failure moves on to the next provider; a permanent one ends the job;
    /// when all were unavailable the retry schedule decides between another attempt and the end.
    pub async fn deliver(&self, job: &Job, attempt: u32) -> Delivered {
        let started = Instant::now();
        let outcome = self.try_deliver(job, attempt).await;
        Delivered {
            outcome,
            duration: started.elapsed(),
        }
    }

    async fn try_deliver(&self, job: &Job, attempt: u32) -> Outcome {
        if job.expires_at.is_some_and(|at| at <= Utc::now()) {
            return Outcome::failed(ErrorCode::Expired, "the job expired before it could be sent");
        }
        // Limits count jobs, not attempts: a retry already passed them.
        if attempt == 1 {
            match self.throttle.check(job).await {
                Verdict::Allow => {}
                Verdict::Throttled(scope) => {
                    return Outcome::Failed {
                        code: ErrorCode::Throttled,
                        message: format!("over the {scope} limit"),
                        provider: None,
                        provider_code: None,
                        scope: Some(scope),
                    };
                }
                Verdict::Blocked(country) => {
                    return Outcome::failed(
                        ErrorCode::BlockedDestination,
                        format!("country calling code {country} is not allowed"),
                    );
                }
            }
        }
        let message = match self.templates.render(job) {
            Ok(m) => m,
            Err(
                e @ (TemplateError::Render { .. }
                | TemplateError::Missing(_)
                | TemplateError::Invalid(_)
                | TemplateError::Io { .. }),
            ) => {
                return Outcome::failed(ErrorCode::InvalidJob, e.to_string());
            }
        };
        let mut last: Option<(&'static str, ProviderError)> = None;
        for provider in &self.chains[index(job.channel)] {
            match provider.send(job, &message).await {
                Ok(receipt) => {
                    return Outcome::Sent {
                        provider: provider.name(),
                        receipt,
                    };
                }
                Err(e @ ProviderError::Permanent { .. }) => {
                    return provider_failure(ErrorCode::ProviderRejected, provider.name(), e);
                }
                Err(e) => {
                    tracing::warn!(job_id = %job.id, provider = provider.name(), error = %e, "provider unavailable");
                    last = Some((provider.name(), e));
                }
            }
        }
        let Some((name, error)) = last else {
            return Outcome::failed(
                ErrorCode::ProviderUnavailable,
                "no provider configured for this channel",
            );
        };
        let retry_after = match &error {
            ProviderError::Transient { retry_after, .. } => *retry_after,
            ProviderError::Permanent { .. } => None,
        };
        match self.retry.delay(attempt, retry_after) {
            Some(after) if job.expires_at.is_some_and(|at| at <= Utc::now() + after) => Outcome::failed(
                ErrorCode::Expired,
                format!(
                    "providers unavailable, and the job expires before the next attempt ({})",
                    error.message()
                ),
            ),
            Some(after) => Outcome::Retry {
                after,
                message: error.message().to_owned(),
            },
            // No schedule at all: the job simply found no provider.
            None if self.retry.max_attempts() == 1 => provider_failure(ErrorCode::ProviderUnavailable, name, error),
            None => provider_failure(ErrorCode::AttemptsExhausted, name, error),
        }
    }
}

fn provider_failure(code: ErrorCode, provider: &'static str, e: ProviderError) -> Outcome {
    Outcome::Failed {
        code,
        message: e.message().to_owned(),
        provider: Some(provider),
        provider_code: e.provider_code().map(str::to_owned),
        scope: None,
    }
}
