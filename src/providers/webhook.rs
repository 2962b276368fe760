//! Custom provider: POSTs the message to an operator's endpoint in the shape of Auth0's
//! send-phone-message event, signed per Standard Webhooks (docs/providers/README.md).

use serde_json::json;
use url::Url;

use super::http::{HttpClient, exchange};
use super::{Provider, ProviderCode, ProviderError, Receipt, Validity};
use crate::clock;
use crate::job::Job;
use crate::templates::{PAUSE, Rendered};

pub struct Webhook {
    client: HttpClient,
    url: Url,
    key: Vec<u8>,
    default_locale: String,
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, by the Standard Webhooks reference library
/// (`standardwebhooks`), or `None` for a body that is not UTF-8, which Standard Webhooks does not sign
/// (<https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md>).
pub fn try_sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> Option<String> {
    let timestamp = i64::try_from(timestamp).ok()?;
    standardwebhooks::Webhook::from_bytes(key.to_vec())
        .ok()?
        .sign(id, timestamp, body)
        .ok()
}

/// [`try_sign`] for the bodies herald writes (JSON, always UTF-8); empty for any other body, which then
/// matches no signature.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    try_sign(key, id, timestamp, body).unwrap_or_default()
}

impl Webhook {
    pub fn new(url: Url, key: Vec<u8>, default_locale: &str, client: HttpClient) -> Webhook {
        Webhook {
            client,
            url,
            key,
            default_locale: default_locale.to_owned(),
        }
    }

    fn body(&self, job: &Job, message: &Rendered) -> serde_json::Value {
        let mut options = json!({
            "action": job.action.as_str(),
            "code": job.code.expose(),
            "message_type": job.channel.as_str(),
            "recipient": job.to.expose(),
        });
        match message {
            // Config keeps webhook out of whatsapp chains (`ProviderKind::delivers`); a hand-built one
            // hears the code.
            Rendered::Sms { body } => options["text"] = body.as_str().into(),
            Rendered::Whatsapp => options["text"] = job.code.expose().into(),
            Rendered::Voice { text, .. } => options["text"] = text.replace(PAUSE, " ").into(),
            Rendered::Email { subject, text, html } => {
                options["text"] = text.as_str().into();
                options["subject"] = subject.as_str().into();
                options["html"] = html.as_str().into();
            }
        }
        json!({
            "id": job.id,
            "message_options": options,
            "request": {
                "ip": job.ip.map(|ip| ip.to_string()),
                "language": job.locale.as_ref().map_or(self.default_locale.as_str(), |l| l.as_str()),
            },
            "user": { "user_id": job.user_id },
            "client": { "name": job.friendly_name.as_deref().unwrap_or("") },
        })
    }
}

#[async_trait::async_trait]
impl Provider for Webhook {
    fn name(&self) -> super::ProviderKind {
        super::ProviderKind::Webhook
    }

    async fn send(&self, job: &Job, message: &Rendered, _validity: Validity) -> Result<Receipt, ProviderError> {
        let body = serde_json::to_vec(&self.body(job, message)).map_err(|e| ProviderError::Permanent {
            message: format!("cannot encode webhook body: {e}"),
            provider_code: None,
        })?;
        let timestamp = clock::unix_secs();
        let signature = try_sign(&self.key, &job.id, timestamp, &body).ok_or_else(|| ProviderError::Permanent {
            message: "cannot sign the webhook body".into(),
            provider_code: None,
        })?;
        let request = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", &job.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            // Receivers drop a second delivery of the same `webhook-id` (Standard Webhooks), so a request
            // left unanswered is sent again rather than counted as sent.
            .idempotent()
            .body(body);
        let exchanged = match exchange(self.name(), request).await {
            Ok(answer) => answer,
            Err(no_answer) => return no_answer.into_result(),
        };
        let status = exchanged.status;
        let code = Some(ProviderCode::http_status(status));
        if status.is_success() {
            if exchanged.html {
                // A proxy's or portal's error page, not the endpoint's answer: the message was not taken.
                return Err(ProviderError::Transient {
                    message: format!(
                        "webhook answered {} with an HTML page, not the endpoint's answer",
                        status.as_u16()
                    ),
                    provider_code: code,
                    retry_after: None,
                });
            }
            let message_id = serde_json::from_slice::<serde_json::Value>(&exchanged.body)
                .ok()
                .and_then(|v| {
                    ["message_id", "id", "sid"]
                        .iter()
                        .find_map(|k| v.get(*k)?.as_str().map(str::to_owned))
                });
            return Ok(Receipt::sent(message_id));
        }
        if status.is_redirection() {
            return Err(ProviderError::Permanent {
                message: format!(
                    "webhook answered {} (a redirect); redirects are not followed: check webhook.url",
                    status.as_u16()
                ),
                provider_code: code,
            });
        }
        let message = format!("webhook answered {}", status.as_u16());
        Err(exchanged.failure(message, code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WebhookKey;

    #[test]
    fn secret_and_signature() {
        // Example from the Standard Webhooks specification test vectors.
        let key: WebhookKey = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        let key = key.as_bytes();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        // The same through the reference library's own entry point, and its refusal of a non-UTF-8 body.
        assert_eq!(
            try_sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert_eq!(try_sign(key, "msg_1", 1614265330, b"\xff\xfe"), None);
        assert_eq!(sign(key, "msg_1", 1614265330, b"\xff\xfe"), "");
    }
}
