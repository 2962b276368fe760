//! Outcome events (docs/jobs-and-events.md "Events"): one per job, as a JSON line on stdout and a message on the events
//! exchange. Built only from masked or non-personal fields.

use std::io::Write;

use serde::Serialize;

use crate::clock;
use crate::job::{Action, Channel, Country, InvalidJob, Job, Locale};
use crate::privacy;
use crate::providers::{ProviderCode, ProviderKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJob,
    Expired,
    Throttled,
    BlockedDestination,
    ProviderRejected,
    ProviderUnavailable,
    AttemptsExhausted,
    Duplicate,
    SuspectedFraud,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJob => "invalid_job",
            ErrorCode::Expired => "expired",
            ErrorCode::Throttled => "throttled",
            ErrorCode::BlockedDestination => "blocked_destination",
            ErrorCode::ProviderRejected => "provider_rejected",
            ErrorCode::ProviderUnavailable => "provider_unavailable",
            ErrorCode::AttemptsExhausted => "attempts_exhausted",
            ErrorCode::Duplicate => "duplicate",
            ErrorCode::SuspectedFraud => "suspected_fraud",
        }
    }
}

/// Which limit or guard refused a job (docs/jobs-and-events.md "Events": `scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    User,
    Ip,
    Recipient,
    Prefix,
    Country,
    Global,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Ip => "ip",
            Scope::Recipient => "recipient",
            Scope::Prefix => "prefix",
            Scope::Country => "country",
            Scope::Global => "global",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventError {
    pub code: ErrorCode,
    pub message: String,
    /// Only ever of its provider's documented shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_code: Option<ProviderCode>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub date: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub description: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    pub channel: Channel,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locale: Option<Locale>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<Country>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    pub attempt: u32,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<EventError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// The workflow this send is a step of (docs/workflows.md), and the step (1-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
}

/// An outcome event's `type` (docs/jobs-and-events.md "Events"): its channel and whether it succeeded. Also its routing
/// key on `herald.events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    GdSendSms,
    GdSendSmsFailure,
    GdSendVoice,
    GdSendVoiceFailure,
    GdSendEmail,
    GdSendEmailFailure,
    GdSendWhatsapp,
    GdSendWhatsappFailure,
}

impl EventType {
    pub fn of(channel: Channel, success: bool) -> EventType {
        match (channel, success) {
            (Channel::Sms, true) => EventType::GdSendSms,
            (Channel::Sms, false) => EventType::GdSendSmsFailure,
            (Channel::Voice, true) => EventType::GdSendVoice,
            (Channel::Voice, false) => EventType::GdSendVoiceFailure,
            (Channel::Email, true) => EventType::GdSendEmail,
            (Channel::Email, false) => EventType::GdSendEmailFailure,
            (Channel::Whatsapp, true) => EventType::GdSendWhatsapp,
            (Channel::Whatsapp, false) => EventType::GdSendWhatsappFailure,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::GdSendSms => "gd_send_sms",
            EventType::GdSendSmsFailure => "gd_send_sms_failure",
            EventType::GdSendVoice => "gd_send_voice",
            EventType::GdSendVoiceFailure => "gd_send_voice_failure",
            EventType::GdSendEmail => "gd_send_email",
            EventType::GdSendEmailFailure => "gd_send_email_failure",
            EventType::GdSendWhatsapp => "gd_send_whatsapp",
            EventType::GdSendWhatsappFailure => "gd_send_whatsapp_failure",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            EventType::GdSendSms => "SMS sent",
            EventType::GdSendSmsFailure => "SMS delivery failed",
            EventType::GdSendVoice => "Voice call placed",
            EventType::GdSendVoiceFailure => "Voice call failed",
            EventType::GdSendEmail => "Email sent",
            EventType::GdSendEmailFailure => "Email delivery failed",
            EventType::GdSendWhatsapp => "WhatsApp message sent",
            EventType::GdSendWhatsappFailure => "WhatsApp delivery failed",
        }
    }
}

/// What a stored outcome record says of itself, read back as types (a record holds the event as
/// published): enough to route it again and to count it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RecordedEvent {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub channel: Channel,
    // Labels only: a value this build does not know (a record written by another herald version during a
    // rollout) reads as absent, so the record still republishes instead of counting as unreadable and
    // sending the job again.
    #[serde(default, deserialize_with = "known_or_none")]
    pub provider: Option<ProviderKind>,
    #[serde(default, deserialize_with = "known_or_none")]
    pub country: Option<Country>,
    #[serde(default, deserialize_with = "known_or_none")]
    pub action: Option<Action>,
    #[serde(default)]
    pub scope: Option<Scope>,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub error: Option<RecordedError>,
}

/// A label field of a record: its value when this build knows it, else `None` (never an error).
fn known_or_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = <Option<serde_json::Value> as serde::Deserialize>::deserialize(d)?;
    Ok(value.and_then(|v| serde_json::from_value(v).ok()))
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RecordedError {
    pub code: ErrorCode,
}

impl Event {
    /// The event skeleton for a parsed job; the caller fills in the outcome.
    pub fn for_job(job: &Job, default_locale: &Locale, success: bool) -> Event {
        let kind = EventType::of(job.channel, success);
        Event {
            date: clock::now_rfc3339(),
            kind,
            description: kind.description(),
            job_id: Some(job.id.clone()),
            user_id: Some(public_user_id(&job.user_id)),
            ip: job.ip.map(|ip| ip.to_string()),
            channel: job.channel,
            action: Some(job.action),
            locale: Some(job.locale.as_ref().unwrap_or(default_locale).clone()),
            recipient: Some(job.to.masked()),
            country: Some(job.to.country()),
            provider: None,
            provider_message_id: None,
            attempt: 1,
            duration_ms: 0,
            error: None,
            scope: None,
            workflow: job.workflow.as_ref().map(|w| w.name.clone()),
            step: job.workflow.as_ref().map(|w| w.step),
        }
    }

    /// The failure event of a message that is not a valid job (an unknown channel counts as sms).
    pub fn invalid(invalid: &InvalidJob) -> Event {
        let channel = invalid.channel.unwrap_or(Channel::Sms);
        let kind = EventType::of(channel, false);
        Event {
            date: clock::now_rfc3339(),
            kind,
            description: kind.description(),
            job_id: invalid.id.clone(),
            user_id: invalid.user_id.as_deref().map(public_user_id),
            ip: invalid.ip.clone(),
            channel,
            action: None,
            locale: None,
            recipient: None,
            country: None,
            provider: None,
            provider_message_id: None,
            attempt: 1,
            duration_ms: 0,
            error: Some(EventError {
                code: ErrorCode::InvalidJob,
                message: privacy::scrub(&invalid.reason.to_string()),
                provider_code: None,
            }),
            scope: None,
            workflow: None,
            step: None,
        }
    }

    pub fn is_success(&self) -> bool {
        self.error.is_none()
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Writes one event per line on stdout. Logs go to stderr, so stdout is a clean event stream.
pub fn print(json: &[u8]) {
    let mut line = Vec::with_capacity(json.len() + 1);
    line.extend_from_slice(json);
    line.push(b'\n');
    print_lines(&line);
}

/// Writes complete lines (each ending in `\n`) to stdout at once.
pub fn print_lines(lines: &[u8]) {
    if lines.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    // A closed stdout must not stop deliveries: the event is on the broker anyway.
    let _ = out.write_all(lines).and_then(|_| out.flush());
}

/// The user id as events carry it: as given, except a part (between `|`s, as in `sms|+14155550123`) that is
/// itself a phone number or an email address, which is masked like a recipient: some MFA servers key their
/// users by them, and an event must not carry either in full.
pub fn public_user_id(user_id: &str) -> String {
    user_id
        .split('|')
        .map(|part| {
            if let Some(masked) = crate::job::PhoneNumber::mask_text(part) {
                masked
            } else if part.contains('@')
                && let Ok(email) = crate::job::EmailAddress::parse(part)
            {
                email.masked()
            } else {
                part.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_naming_labels_this_build_does_not_know_still_reads() {
        let known = r#"{"type":"gd_send_sms","channel":"sms","provider":"twilio","country":"44","action":"enrollment","duration_ms":7}"#;
        let r: RecordedEvent = serde_json::from_str(known).unwrap();
        assert_eq!(r.provider, Some(ProviderKind::Twilio));
        assert_eq!(r.country.map(|c| c.to_string()).as_deref(), Some("44"));
        assert_eq!(r.action, Some(Action::Enrollment));
        // Another version's provider, an unassigned calling code, an action not in this build.
        let other = r#"{"type":"gd_send_sms","channel":"sms","provider":"carrier-pigeon","country":"999","action":"login","duration_ms":7}"#;
        let r: RecordedEvent = serde_json::from_str(other).unwrap();
        assert_eq!((r.provider, r.country, r.action), (None, None, None));
        assert_eq!(
            (r.kind, r.channel, r.duration_ms),
            (EventType::GdSendSms, Channel::Sms, 7)
        );
    }

    #[test]
    fn a_user_id_that_is_a_number_or_an_address_is_masked_in_events() {
        for (user_id, public) in [
            ("auth0|5f7c8ec7c33c6c004bbafe82", "auth0|5f7c8ec7c33c6c004bbafe82"),
            (
                "google-oauth2|103547991597142817347",
                "google-oauth2|103547991597142817347",
            ),
            ("+14155550199", "+1415*****99"),
            ("sms|+14155550199", "sms|+1415*****99"),
            // Not a possible number for +1 (one digit short), but a number all the same.
            ("sms|+1415555019", "sms|+1415****19"),
            ("jane.doe@example.com", "j***@***.com"),
            ("email|jane.doe@example.com", "email|j***@***.com"),
            ("u1", "u1"),
        ] {
            assert_eq!(public_user_id(user_id), public, "{user_id}");
        }
    }
}
