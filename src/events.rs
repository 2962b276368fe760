//! Outcome events (docs/jobs-and-events.md "Events"): one per job, as a JSON line on stdout and a message on the events
//! exchange. Built only from masked or non-personal fields.

use std::io::Write;

use serde::Serialize;

use crate::clock;
use crate::job::{Channel, InvalidJob, Job, Locale};

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
    pub provider_code: Option<crate::providers::ProviderCode>,
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
    pub action: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    pub attempt: u32,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<EventError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
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
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub country: Option<String>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub scope: Option<Scope>,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub error: Option<RecordedError>,
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
            action: Some(job.action.as_str()),
            locale: Some(job.locale.as_ref().unwrap_or(default_locale).to_string()),
            recipient: Some(job.to.masked()),
            country: Some(job.to.country_label()),
            provider: None,
            provider_message_id: None,
            attempt: 1,
            duration_ms: 0,
            error: None,
            scope: None,
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
                message: scrub(&invalid.reason.to_string()),
                provider_code: None,
            }),
            scope: None,
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

/// Longest text [`scrub`] returns: a message is for an operator to read, not a channel for a payload.
const SCRUBBED_MAX: usize = 256;

/// Masks anything in free text (provider error messages) that could be a phone number, a code or an
/// email address: runs of 6+ digits and `x@y` words. Shorter numbers (statuses, Twilio error codes) stay.
/// Cut to [`SCRUBBED_MAX`] characters.
pub fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(SCRUBBED_MAX + 3));
    let original_len = text.len();
    let text = match text.char_indices().nth(SCRUBBED_MAX) {
        // A digit run cut short could be the visible part of a number: drop it.
        Some((cut, _)) => text[..cut].trim_end_matches(|c: char| c.is_ascii_digit()),
        None => text,
    };
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if word.contains('@') && word.len() > 3 {
            out.push_str("[address]");
            continue;
        }
        let mut run = String::new();
        for c in word.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_digit() {
                run.push(c);
                continue;
            }
            if run.len() >= 6 {
                out.push_str("[number]");
            } else {
                out.push_str(&run);
            }
            run.clear();
            if c != ' ' {
                out.push(c);
            }
        }
    }
    if text.len() < original_len {
        out.push('…');
    }
    out
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

/// [`scrub`], and then anything still holding this job's own code or recipient, however it is written:
/// a provider that echoes a 4-digit code (below [`scrub`]'s 6), or the number as `(415) 555-0123`, or the
/// mailbox's local part alone. Digit groups joined by spaces, `-`, `.`, `/`, `(` or `)` count as one
/// number; one whose digits hold the code, or the last 6 digits of the phone number, becomes `[number]`.
pub fn scrub_for(text: &str, job: &crate::job::Job) -> String {
    let mut text = scrub(text);
    let code = job.code.expose();
    let phone_tail = match &job.to {
        crate::job::Recipient::Phone(p) => Some(&p.digits()[p.digits().len().saturating_sub(6)..]),
        crate::job::Recipient::Email(e) => {
            let address = e.expose();
            let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
            for secret in [address, local] {
                if secret.len() >= 3 {
                    text = replace_ignore_case(&text, secret, "[address]");
                }
            }
            None
        }
    };
    mask_numbers(&text, |digits| {
        digits.contains(code) || phone_tail.is_some_and(|t| digits.contains(t))
    })
}

/// Replaces every digit group (see [`scrub_for`]) for which `secret` says so with `[number]`.
fn mask_numbers(text: &str, secret: impl Fn(&str) -> bool) -> String {
    let joiner = |c: char| matches!(c, ' ' | '-' | '.' | '/' | '(' | ')' | '+');
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let (start, c) = chars[i];
        if !c.is_ascii_digit() {
            out.push(c);
            i += 1;
            continue;
        }
        // A group: digits, with single joiners between them.
        let mut digits = String::new();
        let mut end = i;
        let mut j = i;
        while j < chars.len() {
            let c = chars[j].1;
            if c.is_ascii_digit() {
                digits.push(c);
                end = j;
                j += 1;
            } else if joiner(c) && chars.get(j + 1).is_some_and(|(_, n)| n.is_ascii_digit() || joiner(*n)) {
                j += 1;
            } else {
                break;
            }
        }
        let stop = chars.get(end + 1).map_or(text.len(), |(at, _)| *at);
        if secret(&digits) {
            out.push_str("[number]");
        } else {
            out.push_str(&text[start..stop]);
        }
        i = end + 1;
    }
    out
}

fn replace_ignore_case(text: &str, needle: &str, with: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let needle = needle.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (at, _) in lower.match_indices(&needle) {
        if at < last {
            continue;
        }
        out.push_str(&text[last..at]);
        out.push_str(with);
        last = at + needle.len();
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_masks_numbers_and_addresses() {
        assert_eq!(
            scrub("The 'To' number +14155550123 is invalid"),
            "The 'To' number +[number] is invalid"
        );
        assert_eq!(scrub("mail jane@example.com failed"), "mail [address] failed");
        assert_eq!(
            scrub("twilio answered 400: code 21211"),
            "twilio answered 400: code 21211"
        );
    }

    #[test]
    fn scrub_for_masks_the_jobs_own_code_and_recipient_however_written() {
        let sms = crate::job::Job::from_json(
            br#"{"id":"j","channel":"sms","to":"+14155550123","code":"4829","user_id":"u"}"#,
        )
        .unwrap();
        let email = crate::job::Job::from_json(
            br#"{"id":"j","channel":"email","to":"Jane.Doe@example.com","code":"48291","user_id":"u"}"#,
        )
        .unwrap();
        let cases: [(&crate::job::Job, &str, &str); 8] = [
            (&sms, "code 4829 rejected", "code [number] rejected"),
            (
                &sms,
                "error 21211: bad To (415) 555-0123.",
                "error 21211: bad To ([number].",
            ),
            (&sms, "To 415.555.0123 / 4829", "To [number]"),
            (&sms, "status 400, code 21614", "status 400, code 21614"),
            (&sms, "48290 is not 4829x", "[number] is not [number]x"),
            (&email, "mailbox jane.doe unknown", "mailbox [address] unknown"),
            (
                &email,
                "550 5.1.1 JANE.DOE@EXAMPLE.COM: no such user",
                "550 5.1.1 [address] no such user",
            ),
            (&email, "code 4-8-2-9-1 seen", "code [number] seen"),
        ];
        for (job, text, expected) in cases {
            assert_eq!(scrub_for(text, job), expected, "{text}");
        }
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

    #[test]
    fn scrub_caps_the_length() {
        let long = "é".repeat(10_000);
        let out = scrub(&long);
        assert_eq!(out.chars().count(), SCRUBBED_MAX + 1);
        assert!(out.ends_with('…'));
        assert_eq!(scrub("short"), "short");
        let cut_in_a_number = format!("{}+14155550123", "x".repeat(SCRUBBED_MAX - 4));
        assert!(!scrub(&cut_in_a_number).contains("141"), "{}", scrub(&cut_in_a_number));
    }
}
