//! Delivery providers (contract §6). Each one turns a rendered message into one provider call and
//! says whether a failure is worth retrying.

use std::time::Duration;

use crate::job::{Channel, Job, PhoneNumber, Recipient};
use crate::templates::Rendered;

pub mod infobip;
pub mod outbox;
pub mod plivo;
pub mod smtp;
pub mod sns;
pub mod stub;
pub mod twilio;
pub mod vonage;
pub mod webhook;

/// Every provider herald has: one closed vocabulary for config (`channels.sms = ["twilio"]`), dispatch,
/// events and metric labels. The text form appears only where a name is written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Twilio,
    Smtp,
    Webhook,
    Outbox,
    Vonage,
    Sns,
    Infobip,
    Plivo,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 8] = [
        ProviderKind::Twilio,
        ProviderKind::Smtp,
        ProviderKind::Webhook,
        ProviderKind::Outbox,
        ProviderKind::Vonage,
        ProviderKind::Sns,
        ProviderKind::Infobip,
        ProviderKind::Plivo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Twilio => "twilio",
            ProviderKind::Smtp => "smtp",
            ProviderKind::Webhook => "webhook",
            ProviderKind::Outbox => "outbox",
            ProviderKind::Vonage => "vonage",
            ProviderKind::Sns => "sns",
            ProviderKind::Infobip => "infobip",
            ProviderKind::Plivo => "plivo",
        }
    }

    /// Whether this provider can deliver on `channel` at all (a chain naming it elsewhere is a config error).
    pub fn delivers(self, channel: Channel) -> bool {
        match self {
            ProviderKind::Webhook | ProviderKind::Outbox => true,
            ProviderKind::Smtp => channel == Channel::Email,
            ProviderKind::Twilio | ProviderKind::Infobip => channel != Channel::Email,
            ProviderKind::Vonage | ProviderKind::Sns | ProviderKind::Plivo => channel == Channel::Sms,
        }
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a provider returns on success.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    /// The provider's id for the message (Twilio `SM…`/`CA…` sid), when it gives one.
    pub message_id: Option<String>,
}

/// A failed provider call, classified. The message never contains the code or the full recipient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Worth trying again (or trying the next provider): 429, 5xx, timeouts, connection errors.
    #[error("provider unavailable: {message}")]
    Transient {
        message: String,
        provider_code: Option<String>,
        retry_after: Option<Duration>,
    },
    /// Will fail the same way again: invalid number, opted out, region not permitted, bad credentials.
    #[error("provider rejected the message: {message}")]
    Permanent {
        message: String,
        provider_code: Option<String>,
    },
}

impl ProviderError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ProviderError::Transient { .. })
    }

    pub fn provider_code(&self) -> Option<&str> {
        match self {
            ProviderError::Transient { provider_code, .. } | ProviderError::Permanent { provider_code, .. } => {
                provider_code.as_deref()
            }
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ProviderError::Transient { message, .. } | ProviderError::Permanent { message, .. } => message,
        }
    }
}

#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Which provider this is: its name in events and metric labels.
    fn name(&self) -> ProviderKind;

    /// Sends one rendered message for `job`. Implementations must be bounded by the provider timeout.
    async fn send(&self, job: &Job, message: &Rendered) -> Result<Receipt, ProviderError>;
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

/// Reads at most 64 KiB of a response body: a provider answering garbage cannot exhaust memory.
pub async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    const CAP: usize = 64 * 1024;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = CAP - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= CAP {
            break;
        }
    }
    Ok(body)
}

/// The `Retry-After` header in seconds, if any.
pub fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// Seconds form of Retry-After, as sent by rate limiters (the HTTP-date form is rare for APIs).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// An HTTP provider's failed answer, classified the way Twilio, Standard Webhooks receivers and most
/// APIs mean it: 408, 429 and 5xx are worth retrying (with the answer's Retry-After), other statuses
/// fail the same way again.
pub fn http_failure(
    status: reqwest::StatusCode,
    message: String,
    provider_code: Option<String>,
    retry_after: Option<Duration>,
) -> ProviderError {
    use reqwest::StatusCode;
    if status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        ProviderError::Transient {
            message,
            provider_code,
            retry_after,
        }
    } else {
        ProviderError::Permanent { message, provider_code }
    }
}

/// A failed HTTP exchange: always transient (timeouts, refused connections, resets).
pub fn transport_error(provider: ProviderKind, e: &reqwest::Error) -> ProviderError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "answer could not be read"
    } else {
        "request failed"
    };
    ProviderError::Transient {
        message: format!("{provider} {what}"),
        provider_code: None,
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn a_provider_has_one_name_in_config_events_and_metrics() {
        for kind in ProviderKind::ALL {
            let written = serde_json::to_string(&kind).unwrap();
            assert_eq!(written, format!("\"{}\"", kind.name()));
            assert_eq!(serde_json::from_str::<ProviderKind>(&written).unwrap(), kind);
            assert_eq!(kind.to_string(), kind.name());
        }
        let voice: Vec<&str> = ProviderKind::ALL
            .into_iter()
            .filter(|k| k.delivers(Channel::Voice))
            .map(ProviderKind::name)
            .collect();
        assert_eq!(voice, ["twilio", "webhook", "outbox", "infobip"]);
    }

    #[test]
    fn http_statuses_are_classified_once_for_every_provider() {
        let cases = [
            (StatusCode::REQUEST_TIMEOUT, true),
            (StatusCode::TOO_MANY_REQUESTS, true),
            (StatusCode::INTERNAL_SERVER_ERROR, true),
            (StatusCode::SERVICE_UNAVAILABLE, true),
            (StatusCode::BAD_REQUEST, false),
            (StatusCode::UNAUTHORIZED, false),
            (StatusCode::NOT_FOUND, false),
            (StatusCode::UNPROCESSABLE_ENTITY, false),
        ];
        for (status, transient) in cases {
            let e = http_failure(status, "m".into(), Some("1".into()), Some(Duration::from_secs(3)));
            assert_eq!(e.is_transient(), transient, "{status}");
            assert_eq!(e.provider_code(), Some("1"));
        }
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
