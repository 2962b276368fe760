//! Meta's WhatsApp status webhooks (docs/receipts.md "Meta (WhatsApp)"): the subscription handshake, the
//! `X-Hub-Signature-256` over the raw body, and the `statuses` of `entry[].changes[].value`
//! (<https://developers.facebook.com/docs/whatsapp/cloud-api/webhooks/components>). The route is in
//! `http::meta`.

use hmac::{KeyInit, Mac};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::status::Status;

/// The handshake's answer: `hub.challenge` to echo when `hub.mode=subscribe` and `hub.verify_token` is
/// `verify_token` (compared in constant time); `None` otherwise, and always with an empty token.
pub fn challenge<'q>(query: &'q [(String, String)], verify_token: &str) -> Option<&'q str> {
    let field = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let presented = field("hub.verify_token")?;
    let token_ok = !verify_token.is_empty()
        && presented.len() == verify_token.len()
        && bool::from(presented.as_bytes().ct_eq(verify_token.as_bytes()));
    (field("hub.mode") == Some("subscribe") && token_ok).then_some(())?;
    // Echoed as text: only what a challenge is (Meta sends digits), never markup.
    field("hub.challenge").filter(|c| (1..=128).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// `sha256=` and the lowercase hex HMAC-SHA256 of `body` keyed with `app_secret`.
pub fn signature(app_secret: &[u8], body: &[u8]) -> String {
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(app_secret).expect("HMAC takes keys of any length");
    mac.update(body);
    use std::fmt::Write;
    let digest = mac.finalize().into_bytes();
    digest.iter().fold(String::from("sha256="), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Whether `header` is the signature of `body` with `app_secret` (hex compared case-insensitively, in
/// constant time). Never with an empty secret.
pub fn signature_holds(app_secret: &str, body: &[u8], header: &str) -> bool {
    if app_secret.is_empty() {
        return false;
    }
    let expected = signature(app_secret.as_bytes(), body);
    let presented = header.trim().to_ascii_lowercase();
    presented.len() == expected.len() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// One status of a webhook: the message's `wamid`, what it says, and Meta's error code for a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaStatus {
    pub id: String,
    /// `None`: a status herald does not take (`deleted`, `warning`, a word it does not know).
    pub status: Option<Status>,
    pub error_code: Option<String>,
}

#[derive(Deserialize)]
struct Webhook {
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    #[serde(default)]
    value: Option<Value>,
}

#[derive(Deserialize)]
struct Value {
    /// Read one by one: a status herald cannot read is skipped, not the webhook's others (Meta would send the
    /// whole webhook again and again on a 400, and its good statuses would never land).
    #[serde(default)]
    statuses: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawStatus {
    id: String,
    status: String,
    #[serde(default)]
    errors: Vec<RawError>,
}

#[derive(Deserialize)]
struct RawError {
    code: Option<serde_json::Value>,
}

/// `sent` is on the way (intermediate); `delivered` and `read` (a read receipt, which may be the first
/// to arrive) are delivered; `failed` is failed.
pub fn status(text: &str) -> Option<Status> {
    match text {
        "sent" => Some(Status::Sent),
        "delivered" | "read" => Some(Status::Delivered),
        "failed" => Some(Status::Failed),
        _ => None,
    }
}

/// Meta's error `code`, an integer of its table (at most six digits), as the event's `error_code`.
fn error_code(error: &RawError) -> Option<String> {
    error
        .code
        .as_ref()
        .and_then(serde_json::Value::as_u64)
        .filter(|c| *c <= 999_999)
        .map(|c| c.to_string())
}

/// The statuses of a webhook body, in order; `None` when it is not a webhook's JSON. Messages and other
/// fields of the webhook are not read.
pub fn statuses(body: &[u8]) -> Option<Vec<MetaStatus>> {
    let webhook: Webhook = serde_json::from_slice(body).ok()?;
    Some(
        webhook
            .entry
            .into_iter()
            .flat_map(|e| e.changes)
            .filter_map(|c| c.value)
            .flat_map(|v| v.statuses)
            .filter_map(|s| serde_json::from_value::<RawStatus>(s).ok())
            .map(|s| MetaStatus {
                status: status(&s.status),
                error_code: s.errors.first().and_then(error_code),
                id: s.id,
            })
            .collect(),
    )
}

/// A `wamid` as herald keys it: 1-128 of letters, digits and `. _ - = + /` (base64 after `wamid.`).
pub fn is_wamid(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'=' | b'+' | b'/'))
}

/// Meta's error codes in a receipt event: digits only, at most six (131026), where a number (8 digits or
/// more) cannot hide.
pub fn is_error_code(code: &str) -> bool {
    (1..=6).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_handshake_echoes_the_challenge_only_for_the_token() {
        let ok = query(&[
            ("hub.mode", "subscribe"),
            ("hub.verify_token", "t0ken"),
            ("hub.challenge", "1158201444"),
        ]);
        assert_eq!(challenge(&ok, "t0ken"), Some("1158201444"));
        assert_eq!(challenge(&ok, "other"), None);
        assert_eq!(challenge(&ok, ""), None);
        let mode = query(&[
            ("hub.mode", "unsubscribe"),
            ("hub.verify_token", "t0ken"),
            ("hub.challenge", "1"),
        ]);
        assert_eq!(challenge(&mode, "t0ken"), None);
        let markup = query(&[
            ("hub.mode", "subscribe"),
            ("hub.verify_token", "t0ken"),
            ("hub.challenge", "<b>"),
        ]);
        assert_eq!(challenge(&markup, "t0ken"), None);
    }

    #[test]
    fn statuses_map_read_to_delivered_and_keep_metas_code() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages",
          "value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550001111","phone_number_id":"1"},
          "statuses":[{"id":"wamid.A=","status":"read","timestamp":"1","recipient_id":"14155550123"},
                      {"id":"wamid.B","status":"failed","timestamp":"1","recipient_id":"14155550123",
                       "errors":[{"code":131026,"title":"Message undeliverable"}]},
                      {"id":"wamid.C","status":"deleted"}]}}]}]}"#;
        let got = statuses(body).unwrap();
        assert_eq!(got[0].status, Some(Status::Delivered));
        assert_eq!(got[1].status, Some(Status::Failed));
        assert_eq!(got[1].error_code.as_deref(), Some("131026"));
        assert_eq!(got[2].status, None);
        assert!(statuses(b"not json").is_none());
        // One status herald cannot read (no id, a number for a status) leaves the others of its webhook.
        let mixed = br#"{"entry":[{"changes":[{"value":{"statuses":[{"status":"read"},{"id":"wamid.D","status":7},
          {"id":"wamid.E","status":"delivered"}]}}]}]}"#;
        let got = statuses(mixed).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].id.as_str(), got[0].status),
            ("wamid.E", Some(Status::Delivered))
        );
        assert!(is_wamid("wamid.HBgLMTQxNTU1NTAxMjMVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"));
        assert!(!is_wamid("wamid with space") && !is_wamid(""));
    }
}
