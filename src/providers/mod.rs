//! Delivery providers (docs/providers/README.md). Each one turns a rendered message into one provider call and
//! says whether a failure is worth retrying.

use std::time::Duration;

use crate::job::{Job, PhoneNumber, Recipient};
use crate::templates::Rendered;

mod code;
pub mod connector;
pub mod http;
pub mod infobip;
pub mod meta;
pub mod outbox;
pub mod plivo;
pub mod smtp;
pub mod sns;
pub mod stub;
pub mod twilio;
pub mod vonage;
pub mod webhook;

pub use crate::config::ProviderKind;
pub use code::ProviderCode;

/// What a provider returns on success.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    /// The provider's id for the message (Twilio `SM…`/`CA…` sid), when it gives one.
    pub message_id: Option<String>,
    /// Set when the provider may have taken the message but did not say so clearly. Such a job ends as
    /// sent, never sent again (docs/providers/README.md "A message the provider took is never sent again").
    pub ambiguous: Option<Ambiguous>,
}

impl Receipt {
    /// A clear acceptance, with the provider's id when it gave one.
    pub fn sent(message_id: Option<String>) -> Receipt {
        Receipt {
            message_id,
            ambiguous: None,
        }
    }

    /// The provider may have taken the message: it ends as sent, with the id if one is known.
    pub fn unconfirmed(reason: Ambiguous, message_id: Option<String>) -> Receipt {
        Receipt {
            message_id,
            ambiguous: Some(reason),
        }
    }
}

/// Why a send that may have reached the provider is counted as sent without a clear answer: the reasons
/// of `herald_provider_ambiguous_total{provider,reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ambiguous {
    /// A 2xx whose body could not be read whole or understood.
    UnreadableAnswer,
    /// The request was written whole and no answer came within `retry.provider_timeout`.
    Timeout,
    /// The request was written whole and the connection closed (or was reset) without an answer.
    ConnectionClosed,
    /// A long text of which the provider took some parts and refused others (Vonage answers per part).
    PartlyTaken,
}

impl Ambiguous {
    pub const ALL: [Ambiguous; 4] = [
        Ambiguous::UnreadableAnswer,
        Ambiguous::Timeout,
        Ambiguous::ConnectionClosed,
        Ambiguous::PartlyTaken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Ambiguous::UnreadableAnswer => "unreadable_answer",
            Ambiguous::Timeout => "timeout",
            Ambiguous::ConnectionClosed => "connection_closed",
            Ambiguous::PartlyTaken => "partly_taken",
        }
    }
}

/// How long a message is worth delivering: the time left before the job's `expires_at`, else
/// `retry.validity`. Providers with a validity field send it, clamped to their range, so that a code never
/// arrives after it expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Validity(Duration);

impl Validity {
    /// For `job`, at `now`: what is left of it (zero once expired), else `default`.
    pub fn for_job(job: &Job, default: Duration, now: chrono::DateTime<chrono::Utc>) -> Validity {
        Validity(match job.expires_at {
            Some(at) => (at - now).to_std().unwrap_or(Duration::ZERO),
            None => default,
        })
    }

    /// Within a provider's allowed range.
    pub fn clamped(self, min: Duration, max: Duration) -> Duration {
        self.0.clamp(min, max)
    }

    pub fn get(self) -> Duration {
        self.0
    }
}

impl Default for Validity {
    /// `retry.validity`'s default.
    fn default() -> Validity {
        Validity(Duration::from_secs(600))
    }
}

/// A failed provider call, classified. The message never contains the code or the full recipient, and the
/// provider's code is only ever one of its documented shape ([`ProviderCode`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Worth trying again (or trying the next provider): 429, 5xx, timeouts, connection errors.
    #[error("provider unavailable: {message}")]
    Transient {
        message: String,
        provider_code: Option<ProviderCode>,
        retry_after: Option<Duration>,
    },
    /// Will fail the same way again, whichever provider sends it: an invalid or unreachable number, a
    /// recipient who opted out, a message the provider refuses as it is.
    #[error("provider rejected the message: {message}")]
    Permanent {
        message: String,
        provider_code: Option<ProviderCode>,
    },
    /// This provider cannot send it, the next provider of the chain may: the provider ties the refusal to
    /// the sender, the account or the route (Twilio 21408 region not permitted, Vonage 15 invalid sender,
    /// Infobip REJECTED_ROUTE_NOT_AVAILABLE, bad credentials), not to the recipient or the message.
    #[error("provider cannot send it: {message}")]
    Refused {
        message: String,
        provider_code: Option<ProviderCode>,
    },
}

/// How a provider's documented error is to be taken: each provider's table maps its codes to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Sending again later can succeed ([`ProviderError::Transient`]).
    Transient,
    /// Fails the same way with any provider ([`ProviderError::Permanent`]).
    Permanent,
    /// This provider cannot send it; the next one may ([`ProviderError::Refused`]).
    NextProvider,
}

impl ProviderError {
    /// The error with its message cleared of the job's own code and recipient ([`crate::privacy::scrub_for`]),
    /// before it reaches a log line, an event or a dead letter.
    pub fn scrubbed_for(self, job: &crate::job::Job) -> ProviderError {
        match self {
            ProviderError::Transient {
                message,
                provider_code,
                retry_after,
            } => ProviderError::Transient {
                message: crate::privacy::scrub_for(&message, job),
                provider_code,
                retry_after,
            },
            ProviderError::Permanent { message, provider_code } => ProviderError::Permanent {
                message: crate::privacy::scrub_for(&message, job),
                provider_code,
            },
            ProviderError::Refused { message, provider_code } => ProviderError::Refused {
                message: crate::privacy::scrub_for(&message, job),
                provider_code,
            },
        }
    }

    /// An error of `class`; only a transient one keeps `retry_after`.
    pub fn of(
        class: Class,
        message: String,
        provider_code: Option<ProviderCode>,
        retry_after: Option<Duration>,
    ) -> ProviderError {
        match class {
            Class::Transient => ProviderError::Transient {
                message,
                provider_code,
                retry_after,
            },
            Class::Permanent => ProviderError::Permanent { message, provider_code },
            Class::NextProvider => ProviderError::Refused { message, provider_code },
        }
    }

    pub fn class(&self) -> Class {
        match self {
            ProviderError::Transient { .. } => Class::Transient,
            ProviderError::Permanent { .. } => Class::Permanent,
            ProviderError::Refused { .. } => Class::NextProvider,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, ProviderError::Transient { .. })
    }

    pub fn provider_code(&self) -> Option<&ProviderCode> {
        match self {
            ProviderError::Transient { provider_code, .. }
            | ProviderError::Permanent { provider_code, .. }
            | ProviderError::Refused { provider_code, .. } => provider_code.as_ref(),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ProviderError::Transient { message, .. }
            | ProviderError::Permanent { message, .. }
            | ProviderError::Refused { message, .. } => message,
        }
    }
}

#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Which provider this is: its name in events and metric labels.
    fn name(&self) -> ProviderKind;

    /// Sends one rendered message for `job`, worth delivering for `validity`. Implementations must be
    /// bounded by the provider timeout.
    async fn send(&self, job: &Job, message: &Rendered, validity: Validity) -> Result<Receipt, ProviderError>;
}

/// The destination number of a phone job; an email job is a permanent failure for a phone-only provider
/// (config validation keeps it from happening).
pub fn phone_of(job: &Job, provider: ProviderKind) -> Result<&PhoneNumber, ProviderError> {
    match &job.to {
        Recipient::Phone(number) => Ok(number),
        Recipient::Email(_) => Err(ProviderError::Permanent {
            message: format!("{provider} cannot deliver email"),
            provider_code: None,
        }),
    }
}

/// The text of an SMS, for the providers that deliver SMS only (vonage, plivo, sns). Config refuses a chain
/// that names one of them for voice or email at start-up, naming the chain's key (`ProviderKind::delivers`):
/// only chains built by hand, past `Config::validate`, can hand one another message, which then fails as
/// permanent, as an email job does at a phone-only provider ([`phone_of`]).
pub fn sms_of(message: &Rendered, provider: ProviderKind) -> Result<&str, ProviderError> {
    match message {
        Rendered::Sms { body } => Ok(body),
        Rendered::Voice { .. } | Rendered::Email { .. } | Rendered::Whatsapp => Err(ProviderError::Permanent {
            message: format!("{provider} delivers SMS only"),
            provider_code: None,
        }),
    }
}

/// A provider's settings that do not form its requests, found at start-up: names the keys, never
/// quotes a value.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{keys} is required when a chain uses {provider}")]
    Missing { keys: &'static str, provider: ProviderKind },
    #[error("{keys} {} form {what}", if keys.contains(" / ") { "do not" } else { "does not" })]
    Url {
        keys: &'static str,
        /// `a URL`, or what the URL is for.
        what: &'static str,
        #[source]
        source: url::ParseError,
    },
    #[error("{keys} cannot form an Authorization header")]
    Authorization {
        keys: &'static str,
        #[source]
        source: ::http::header::InvalidHeaderValue,
    },
}

/// A sender number as the providers that write numbers without `+` take it; an alphanumeric sender id
/// stays as it is.
pub fn sender_without_plus(from: &str) -> String {
    from.strip_prefix('+')
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or(from)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_errors_name_the_keys() {
        let source = url::Url::parse("::").unwrap_err();
        let one = SetupError::Url {
            keys: "vonage.base_url",
            what: "a URL",
            source,
        };
        assert_eq!(one.to_string(), "vonage.base_url does not form a URL");
        let two = SetupError::Url {
            keys: "sns.base_url / sns.region",
            what: "an endpoint URL",
            source,
        };
        assert_eq!(two.to_string(), "sns.base_url / sns.region do not form an endpoint URL");
        assert_eq!(sender_without_plus("+4915112345678"), "4915112345678");
        assert_eq!(sender_without_plus("+Herald"), "+Herald");
        assert_eq!(sender_without_plus("Herald"), "Herald");
    }
}
