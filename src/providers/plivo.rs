//! Plivo Messages API: `POST {base_url}/v1/Account/{auth_id}/Message/`, JSON, HTTP Basic auth
//! (docs/providers/README.md, <https://www.plivo.com/docs/messaging/api/message/send-a-message>). 202 is success;
//! failures are classified by Plivo's HTTP status and its `error` text ([`class_of`], docs/providers/plivo.md).
//! `message_expiry` carries the job's validity, clamped to Plivo's 5–10 799 s.

use http::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use url::Url;

use std::time::Duration;

use http::StatusCode;
use serde::Serialize;

use super::http::{HttpClient, basic_authorization, exchange};
use super::{
    Ambiguous, Class, Provider, ProviderCode, ProviderError, ProviderKind, Receipt, SetupError, Validity, phone_of,
    sender_without_plus, sms_of,
};
use crate::config::PlivoConfig;
use crate::job::Job;
use crate::privacy::scrub;
use crate::templates::Rendered;

pub struct Plivo {
    client: HttpClient,
    url: Url,
    authorization: HeaderValue,
    from: String,
    /// `plivo.status_callback_url`: every message asks for its status callbacks there (docs/receipts.md
    /// "Vonage, Plivo and Infobip").
    status_callback: Option<String>,
}

/// `{"api_id", "message": "message(s) queued", "message_uuid": ["…"]}`, or `{"api_id", "error": "…"}`.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    message_uuid: Vec<String>,
    error: Option<serde_json::Value>,
}

/// The body of one send (plivo-python `Messages.create`): a field added here (the status callback's `url` and
/// `method`, `Option`s with `skip_serializing_if`) is one more member.
#[derive(Serialize)]
struct Send<'a> {
    src: &'a str,
    dst: &'a str,
    text: &'a str,
    /// Seconds Plivo keeps trying before it marks the message failed (error 420).
    message_expiry: u64,
    /// https://www.plivo.com/docs/messaging/api/message/send-a-message: status callbacks to `url`, by
    /// `method`, when receipts are on.
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
}

/// `message_expiry`'s range: "5 to 10,799 seconds" (default 10 800, three hours;
/// <https://support.plivo.com/hc/en-us/articles/14814454609561-Message-Expiry>).
pub const EXPIRY_RANGE: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(10_799));

/// Words of Plivo's `error` text that tie a 400 to the sender or the account rather than to the number or
/// the text (`src` not owned, not SMS-enabled, alphanumeric ids not enabled, no credit): the next provider
/// can send it. Lowercase.
const SENDER_WORDS: &[&str] = &[
    "src",
    "source",
    "sender",
    "powerpack",
    "credit",
    "balance",
    "not permitted",
    "permission",
    "not enabled",
    "suspended",
];

/// How a Plivo failure is taken: by status (plivo-python `process_response`; Plivo's "HTTP Status Codes"
/// table), and for a 400 also by its `error` text.
pub fn class_of(status: StatusCode, error: &str) -> Class {
    match status.as_u16() {
        // Authentication failed; a 403 is Plivo refusing this account (geo permissions, a country not
        // enabled): another provider's account can send it.
        401 | 403 => Class::NextProvider,
        400 => {
            let error = error.to_ascii_lowercase();
            if SENDER_WORDS.iter().any(|w| error.contains(w)) {
                Class::NextProvider
            } else {
                Class::Permanent
            }
        }
        // Too many requests, Plivo's server errors, a request timeout: worth another attempt.
        408 | 429 | 500..=599 => Class::Transient,
        // 404 not found, 405 method not allowed, 409 conflict, 422 unprocessable, and any other status.
        _ => Class::Permanent,
    }
}

impl Plivo {
    pub fn new(config: &PlivoConfig, client: HttpClient) -> Result<Plivo, SetupError> {
        let base = config.base_url.as_url().as_str().trim_end_matches('/');
        let auth_id = &config.auth_id;
        let url = Url::parse(&format!("{base}/v1/Account/{auth_id}/Message/")).map_err(|source| SetupError::Url {
            keys: "plivo.base_url / plivo.auth_id",
            what: "a URL",
            source,
        })?;
        let authorization =
            basic_authorization(auth_id, config.auth_token.expose()).map_err(|source| SetupError::Authorization {
                keys: "plivo.auth_id / plivo.auth_token",
                source,
            })?;
        Ok(Plivo {
            client,
            url,
            authorization,
            // Plivo writes numbers with the country code and without `+`.
            from: sender_without_plus(&config.from),
            status_callback: config.status_callback_url.as_ref().map(|u| u.as_url().to_string()),
        })
    }
}

#[async_trait::async_trait]
impl Provider for Plivo {
    fn name(&self) -> ProviderKind {
        ProviderKind::Plivo
    }

    async fn send(&self, job: &Job, message: &Rendered, validity: Validity) -> Result<Receipt, ProviderError> {
        let body = sms_of(message, self.name())?;
        let dst = phone_of(job, self.name())?.digits();
        let send = Send {
            src: &self.from,
            dst,
            text: body,
            message_expiry: validity.clamped(EXPIRY_RANGE.0, EXPIRY_RANGE.1).as_secs(),
            url: self.status_callback.as_deref(),
            method: self.status_callback.as_ref().map(|_| "POST"),
        };
        let request = self
            .client
            .post(&self.url)
            .header(AUTHORIZATION, self.authorization.clone())
            .json(&send);
        let exchanged = match exchange(self.name(), request).await {
            Ok(answer) => answer,
            Err(no_answer) => return no_answer.into_result(),
        };
        let status = exchanged.status;
        let answer = serde_json::from_slice::<Answer>(&exchanged.body).ok();
        if status.is_success() {
            // Plivo has queued the message: an unreadable body must not make us send it twice.
            return Ok(match answer.and_then(|a| a.message_uuid.into_iter().next()) {
                Some(uuid) => Receipt::sent(Some(uuid)),
                None => Receipt::unconfirmed(Ambiguous::UnreadableAnswer, None),
            });
        }
        let error = answer.and_then(|a| a.error).map(|e| match e {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        });
        let class = class_of(status, error.as_deref().unwrap_or(""));
        let detail = error.map_or_else(|| "no Plivo error body".into(), |e| scrub(&e));
        let message = format!("plivo answered {}: {detail}", status.as_u16());
        Err(exchanged.rejection(class, message, Some(ProviderCode::http_status(status))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of docs/providers/plivo.md's table.
    #[test]
    fn every_documented_status_has_its_class() {
        use Class::{NextProvider as Next, Permanent as Perm, Transient as Tran};
        let rows: &[(u16, &str, Class)] = &[
            (400, "invalid_parameter", Perm),
            (400, "dst parameter is invalid", Perm),
            (400, "text is too long", Perm),
            (400, "src parameter not present", Next),
            (400, "The source number is not owned by you", Next),
            (400, "Alphanumeric sender id not enabled for your account", Next),
            (400, "Insufficient credit", Next),
            (400, "This account is not permitted to send to this country", Next),
            (400, "Powerpack not found", Next),
            (401, "authentication_failed", Next),
            (403, "Geo permission not enabled for destination country", Next),
            (403, "", Next),
            (404, "not found", Perm),
            (405, "method not allowed", Perm),
            (409, "conflict", Perm),
            (422, "unprocessable entity", Perm),
            (408, "", Tran),
            (429, "rate_limit_exceeded", Tran),
            (500, "server error", Tran),
            (502, "", Tran),
            (503, "", Tran),
            (504, "", Tran),
            (402, "", Perm),
        ];
        for (status, error, class) in rows {
            let status = StatusCode::from_u16(*status).unwrap();
            assert_eq!(class_of(status, error), *class, "{status} {error:?}");
        }
    }
}
