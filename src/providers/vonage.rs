//! Vonage (Nexmo) SMS API: `POST {base_url}/sms/json`, form-encoded, credentials in the form
//! (<https://developer.vonage.com/en/api/sms>). Vonage answers HTTP 200 whether or not it took the message,
//! and answers per part: a long text is one `messages[]` entry per part, each with its own `status`
//! (<https://developer.vonage.com/en/messaging/sms/guides/troubleshooting-sms>).

use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::http::{HttpClient, exchange};
use super::{
    Ambiguous, Class, Provider, ProviderCode, ProviderError, ProviderKind, Receipt, SetupError, Validity, phone_of,
    sender_without_plus, sms_of,
};
use crate::config::VonageConfig;
use crate::job::Job;
use crate::privacy::scrub;
use crate::sms::{Encoding, segments};
use crate::templates::Rendered;

/// The range of the SMS API's `ttl` (milliseconds): `minimum: 20000`, `maximum: 604800000` in Vonage's
/// API specification (<https://developer.vonage.com/en/api/sms#send-an-sms>).
pub const TTL_MIN: Duration = Duration::from_millis(20_000);
pub const TTL_MAX: Duration = Duration::from_millis(604_800_000);

pub struct Vonage {
    client: HttpClient,
    url: Url,
    api_key: String,
    api_secret: String,
    from: String,
    /// `vonage.status_callback_url`: every message asks for its delivery receipt there (docs/receipts.md
    /// "Vonage, Plivo and Infobip").
    status_callback: Option<String>,
}

/// `{"message-count": "2", "messages": [{"to", "message-id", "status": "0", "remaining-balance",
/// "message-price", "network"}, …]}`; a refused part has `status` and `error-text` instead of an id.
#[derive(Deserialize)]
struct Answer {
    messages: Vec<Message>,
}

#[derive(Deserialize)]
struct Message {
    status: String,
    #[serde(rename = "message-id")]
    message_id: Option<String>,
    #[serde(rename = "error-text")]
    error_text: Option<String>,
}

/// Vonage's SMS API status table (<https://developer.vonage.com/en/api-errors/sms>): each documented
/// status, its meaning, and how herald takes it.
///
/// - Transient: what Vonage says to retry — throttled (1), internal error (5), no credit ("top-up and
///   retry", 9), too many binds ("back-off and retry", 10).
/// - Next provider: what the page ties to the account, its credentials, its sender or its setup rather than
///   to the recipient or the message — invalid credentials (4), account barred (8), not enabled for HTTP (11),
///   signature problems (14, 32), unauthorised sender id (15), network code (22), callback URL (23), demo
///   account's whitelist (29).
/// - Permanent: the request or the recipient — missing or invalid parameters (2, 3), invalid message (6),
///   number barred (7), message too long (12), number de-activated (33).
pub const STATUSES: &[(&str, &str, Class)] = &[
    ("1", "throttled", Class::Transient),
    ("2", "missing parameters", Class::Permanent),
    ("3", "invalid parameters", Class::Permanent),
    ("4", "invalid credentials", Class::NextProvider),
    ("5", "internal error", Class::Transient),
    ("6", "invalid message", Class::Permanent),
    ("7", "number barred", Class::Permanent),
    ("8", "partner account barred", Class::NextProvider),
    ("9", "partner quota violation", Class::Transient),
    ("10", "too many existing binds", Class::Transient),
    ("11", "account not enabled for HTTP", Class::NextProvider),
    ("12", "message too long", Class::Permanent),
    ("14", "invalid signature", Class::NextProvider),
    ("15", "invalid sender address", Class::NextProvider),
    ("22", "invalid network code", Class::NextProvider),
    ("23", "invalid callback url", Class::NextProvider),
    ("29", "non-whitelisted destination", Class::NextProvider),
    ("32", "signature and api secret disallowed", Class::NextProvider),
    ("33", "number de-activated", Class::Permanent),
];

/// A status's meaning and class; one the table does not document is permanent.
pub fn classify(status: &str) -> (&'static str, Class) {
    STATUSES
        .iter()
        .find(|(s, ..)| *s == status)
        .map_or(("undocumented status", Class::Permanent), |&(_, meaning, class)| {
            (meaning, class)
        })
}

/// The `ttl` form value for `validity`: milliseconds within Vonage's range.
pub fn ttl(validity: Validity) -> String {
    validity.clamped(TTL_MIN, TTL_MAX).as_millis().to_string()
}

impl Vonage {
    pub fn new(config: &VonageConfig, client: HttpClient) -> Result<Vonage, SetupError> {
        let base = config.base_url.as_url().as_str().trim_end_matches('/');
        Ok(Vonage {
            client,
            // `vonage.base_url` may not take `/sms/json`.
            url: Url::parse(&format!("{base}/sms/json")).map_err(|source| SetupError::Url {
                keys: "vonage.base_url",
                what: "a URL",
                source,
            })?,
            api_key: config.api_key.clone(),
            api_secret: config.api_secret.expose().to_owned(),
            // Vonage writes numbers without `+`; an alphanumeric sender id stays as it is.
            from: sender_without_plus(&config.from),
            status_callback: config.status_callback_url.as_ref().map(|u| u.as_url().to_string()),
        })
    }
}

#[async_trait::async_trait]
impl Provider for Vonage {
    fn name(&self) -> ProviderKind {
        ProviderKind::Vonage
    }

    async fn send(&self, job: &Job, message: &Rendered, validity: Validity) -> Result<Receipt, ProviderError> {
        let body = sms_of(message, self.name())?;
        let to = phone_of(job, self.name())?.digits();
        let ttl = ttl(validity);
        // `text` for GSM-7, `unicode` otherwise: Vonage sends a `text` message in the GSM alphabet.
        let kind = match segments(body).encoding {
            Encoding::Gsm7 => "text",
            Encoding::Ucs2 => "unicode",
        };
        let mut form: Vec<(&str, &str)> = vec![
            ("api_key", &self.api_key),
            ("api_secret", &self.api_secret),
            ("from", &self.from),
            ("to", to),
            ("text", body),
            ("type", kind),
            ("ttl", &ttl),
        ];
        // https://developer.vonage.com/en/api/sms#send-an-sms: a receipt for each part, sent to `callback`.
        if let Some(url) = &self.status_callback {
            form.extend([("status-report-req", "1"), ("callback", url.as_str())]);
        }
        let exchanged = match exchange(self.name(), self.client.post(&self.url).form(&form)).await {
            Ok(answer) => answer,
            Err(no_answer) => return no_answer.into_result(),
        };
        let answer = serde_json::from_slice::<Answer>(&exchanged.body).ok();
        if !exchanged.status.is_success() {
            let code = answer
                .and_then(|a| a.messages.into_iter().next())
                .and_then(|m| ProviderCode::vonage(&m.status));
            let message = format!("vonage answered HTTP {}", exchanged.status.as_u16());
            // Credentials or account refused at the door: the next provider of the chain can send.
            if matches!(exchanged.status.as_u16(), 401 | 403) {
                return Err(exchanged.rejection(Class::NextProvider, message, code));
            }
            return Err(exchanged.failure(message, code));
        }
        let Some(answer) = answer.filter(|a| !a.messages.is_empty()) else {
            // HTTP 200 without a readable verdict: Vonage may have taken the message, so it is not sent
            // again (docs/providers/README.md).
            return Ok(Receipt::unconfirmed(Ambiguous::UnreadableAnswer, None));
        };
        verdict(answer.messages).map_err(|failed| {
            let (meaning, class) = classify(&failed.status);
            let detail = failed.error_text.as_deref().map(scrub).unwrap_or_default();
            let code = ProviderCode::vonage(&failed.status);
            // The status is written only when it is one: what else Vonage put there is not repeated.
            let status = code.as_deref().unwrap_or("-");
            let message = format!("vonage status {status} ({meaning}): {detail}");
            exchanged.rejection(class, message, code)
        })
    }
}

/// The parts' verdict: every part taken is sent, with the first part's id; some parts taken is sent
/// unconfirmed (the taken parts reach the phone, so the text is not sent again); no part taken is the
/// first refused part's failure.
fn verdict(messages: Vec<Message>) -> Result<Receipt, Message> {
    let taken = |m: &Message| m.status == "0";
    let first_id = messages.iter().filter(|m| taken(m)).find_map(|m| m.message_id.clone());
    let all = messages.iter().all(taken);
    let any = messages.iter().any(taken);
    if all {
        return Ok(Receipt::sent(first_id));
    }
    if any {
        return Ok(Receipt::unconfirmed(Ambiguous::PartlyTaken, first_id));
    }
    match messages.into_iter().next() {
        Some(first) => Err(first),
        None => Ok(Receipt::unconfirmed(Ambiguous::UnreadableAnswer, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every status of <https://developer.vonage.com/en/api-errors/sms>, row by row.
    #[test]
    fn every_documented_status_has_its_class() {
        let expected = [
            ("1", Class::Transient),
            ("2", Class::Permanent),
            ("3", Class::Permanent),
            ("4", Class::NextProvider),
            ("5", Class::Transient),
            ("6", Class::Permanent),
            ("7", Class::Permanent),
            ("8", Class::NextProvider),
            ("9", Class::Transient),
            ("10", Class::Transient),
            ("11", Class::NextProvider),
            ("12", Class::Permanent),
            ("14", Class::NextProvider),
            ("15", Class::NextProvider),
            ("22", Class::NextProvider),
            ("23", Class::NextProvider),
            ("29", Class::NextProvider),
            ("32", Class::NextProvider),
            ("33", Class::Permanent),
        ];
        assert_eq!(STATUSES.len(), expected.len(), "a row per documented status");
        for (status, class) in expected {
            assert_eq!(classify(status).1, class, "status {status}");
            assert_ne!(classify(status).0, "undocumented status", "status {status}");
        }
        for undocumented in ["13", "16", "34", "99", "", "0x1"] {
            assert_eq!(
                classify(undocumented),
                ("undocumented status", Class::Permanent),
                "{undocumented:?}"
            );
        }
    }

    #[test]
    fn ttl_is_the_validity_in_milliseconds_within_vonages_range() {
        let at = |secs: u64| {
            let mut job = crate::job::Job::from_json(
                br#"{"id":"7d9f0a52-7a0e-4a43-a6d4-0f4ac5a3e0b1","channel":"sms","to":"+14155550123","code":"482913","user_id":"u"}"#,
            )
            .unwrap();
            let now = chrono::Utc::now();
            job.expires_at = Some(now + chrono::Duration::seconds(secs as i64));
            Validity::for_job(&job, Duration::from_secs(600), now)
        };
        assert_eq!(ttl(Validity::default()), "600000");
        assert_eq!(ttl(at(300)), "300000");
        assert_eq!(ttl(at(5)), "20000", "below the minimum");
        assert_eq!(ttl(at(0)), "20000", "expired");
        assert_eq!(ttl(at(30 * 86_400)), "604800000", "above the maximum");
    }

    fn part(status: &str, id: Option<&str>) -> Message {
        Message {
            status: status.into(),
            message_id: id.map(Into::into),
            error_text: None,
        }
    }

    #[test]
    fn parts_taken_are_never_sent_again() {
        let all = verdict(vec![part("0", Some("a")), part("0", Some("b"))]).ok();
        assert_eq!(all, Some(Receipt::sent(Some("a".into()))));
        let some = verdict(vec![part("0", Some("a")), part("1", None)]).ok();
        assert_eq!(
            some,
            Some(Receipt::unconfirmed(Ambiguous::PartlyTaken, Some("a".into())))
        );
        let later = verdict(vec![part("1", None), part("0", Some("b"))]).ok();
        assert_eq!(
            later,
            Some(Receipt::unconfirmed(Ambiguous::PartlyTaken, Some("b".into())))
        );
        let none = verdict(vec![part("9", None), part("1", None)]).err().map(|m| m.status);
        assert_eq!(none.as_deref(), Some("9"), "the first refused part decides");
    }
}
