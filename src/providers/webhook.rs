//! Custom provider: POSTs the message to an operator's endpoint in the shape of Auth0's
//! send-phone-message event, signed per Standard Webhooks (docs/providers/README.md).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;
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

/// What is wrong with a `whsec_…` secret, never quoting it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("must start with `whsec_`")]
    Prefix,
    // No `#[source]`: base64's message names the offending byte of the secret.
    #[error("the part after `whsec_` is not base64")]
    NotBase64,
    #[error("the key is empty")]
    Empty,
    /// Zero bytes or spaces only: an empty value that went through an encoder, never a real key.
    #[error("the key is only zero bytes or whitespace")]
    Blank,
}

/// `whsec_<base64>` → the HMAC key bytes.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, SecretError> {
    let encoded = secret.strip_prefix("whsec_").ok_or(SecretError::Prefix)?;
    let key = BASE64.decode(encoded).map_err(|_| SecretError::NotBase64)?;
    if key.is_empty() {
        return Err(SecretError::Empty);
    }
    if key.iter().all(|b| *b == 0 || b.is_ascii_whitespace()) {
        return Err(SecretError::Blank);
    }
    Ok(key)
}

/// What the key of the status callbacks is derived from when `webhook.status_secret` is unset.
pub const STATUS_KEY_LABEL: &[u8] = b"herald webhook status v1";

/// The status-callback key derived from the outbound key: HMAC-SHA256(key, "herald webhook status v1"),
/// 32 bytes (docs/receipts.md). A different key for each direction: a request herald signed
/// can never pass as a status callback.
pub fn status_key(key: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(STATUS_KEY_LABEL);
    mac.finalize().into_bytes().to_vec()
}

/// The key as a `whsec_…` secret again: the inverse of [`decode_secret`].
pub fn encode_secret(key: &[u8]) -> String {
    format!("whsec_{}", BASE64.encode(key))
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
            Rendered::Sms { body } => options["text"] = body.as_str().into(),
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

    #[test]
    fn secret_and_signature() {
        // Example from the Standard Webhooks specification test vectors.
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        // The same through the reference library's own entry point, and its refusal of a non-UTF-8 body.
        assert_eq!(
            try_sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert_eq!(try_sign(&key, "msg_1", 1614265330, b"\xff\xfe"), None);
        assert_eq!(sign(&key, "msg_1", 1614265330, b"\xff\xfe"), "");
        assert!(decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(decode_secret("whsec_!!!").is_err());
        assert_eq!(encode_secret(&key), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        // base64 of "\0\0\0" and of three spaces: empty values an encoder made look set.
        assert_eq!(decode_secret("whsec_AAAA"), Err(SecretError::Blank));
        assert_eq!(decode_secret("whsec_ICAg"), Err(SecretError::Blank));
        assert_eq!(decode_secret("whsec_"), Err(SecretError::Empty));
    }

    /// The derivation docs/receipts.md gives the receivers of herald's webhooks, with a fixed vector they can check
    /// their own code against (computed independently with `openssl dgst -sha256 -mac HMAC`).
    const STATUS_KEY_VECTOR: &str = "whsec_rLjHTJf4Rdxczsvyjk6H6/fWcJJbpIVr27b6Z36M9gw=";

    #[test]
    fn the_status_key_is_the_documented_hmac_of_the_secret() {
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let derived = status_key(&key);
        assert_eq!(derived.len(), 32);
        assert_ne!(derived, key);
        assert_eq!(encode_secret(&derived), STATUS_KEY_VECTOR);
    }
}
