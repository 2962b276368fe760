//! Status callback routes (docs/receipts.md): `POST /providers/twilio/status` (Twilio's form, checked against
//! `X-Twilio-Signature`) and `POST /providers/webhook/status` (JSON, Standard Webhooks signature). No
//! admin token: a request is taken only with a valid signature. Bodies are capped, never echoed nor
//! logged; refusals are counted, and refused signatures logged at most once per 10 seconds. A webhook
//! status callback is taken once per `webhook-id` (a replay within its timestamp window is refused), and
//! only signed with the status key, never with the key herald signs its own requests with.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::HttpState;
use crate::clock;
use crate::providers::{twilio, webhook};
use crate::receipts::{ReceiptProvider, Receipts, Reported, Status, Unavailable};
use crate::sync::lock;

/// Largest callback body taken: Twilio's status callbacks are well under 2 KiB.
pub const MAX_BODY: usize = 16 * 1024;
/// Standard Webhooks' recommended tolerance for `webhook-timestamp`.
pub const TIMESTAMP_TOLERANCE_S: u64 = 5 * 60;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/providers/twilio/status", web::post().to(twilio_status))
        .route("/providers/webhook/status", web::post().to(webhook_status));
}

/// The body, at most `limit` bytes: a longer one (by its `Content-Length` or as it streams in) is
/// refused with 413 without being read further.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    receipts: &Receipts,
    provider: ReceiptProvider,
    limit: usize,
) -> Result<web::BytesMut, HttpResponse> {
    use futures_util::StreamExt;
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(refused(receipts, provider, "too_large", StatusCode::PAYLOAD_TOO_LARGE));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            // Past the request deadline: the deadline middleware answers 408 and counts it.
            Err(e) if super::timed_out(&e) => {
                return Err(plain(StatusCode::REQUEST_TIMEOUT, "request not received in time\n"));
            }
            Err(_) => return Err(refused(receipts, provider, "malformed", StatusCode::BAD_REQUEST)),
        };
        if body.len() + chunk.len() > limit {
            return Err(refused(receipts, provider, "too_large", StatusCode::PAYLOAD_TOO_LARGE));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub(super) fn plain(status: StatusCode, text: &'static str) -> HttpResponse {
    HttpResponse::build(status).content_type("text/plain").body(text)
}

pub(super) fn refused(
    receipts: &Receipts,
    provider: ReceiptProvider,
    reason: &str,
    status: StatusCode,
) -> HttpResponse {
    receipts
        .metrics
        .rejected
        .with_label_values(&[provider.name(), reason])
        .inc();
    if reason == "signature"
        && let Some(count) = receipts.bad_signatures.hit()
    {
        tracing::warn!(
            provider = provider.name(),
            refused = count,
            "status callbacks with a missing or wrong signature refused (one warning per 10 s)"
        );
    }
    plain(status, "refused\n")
}

/// The answer to a callback once its signature holds: 200 whatever it said, 503 when it must come again.
pub(super) fn answer(
    provider: ReceiptProvider,
    applied: Result<crate::receipts::Applied, Unavailable>,
) -> HttpResponse {
    match applied {
        // Twilio reads no TwiML from a status callback: an empty answer.
        Ok(_) => HttpResponse::Ok().finish(),
        Err(e) => {
            tracing::warn!(provider = provider.name(), error = %e, "status callback not taken; the provider will retry");
            plain(StatusCode::SERVICE_UNAVAILABLE, "try again later\n")
        }
    }
}

/// What a callback route needs before its signature check: the receipts, what `provider`'s signatures
/// are checked with (`keys`; 404 when receipts or this provider's callbacks are off) and the body
/// (see [`read_body`], at most [`MAX_BODY`]). `Err` is the answer to give instead.
async fn callback<K>(
    req: &HttpRequest,
    payload: web::Payload,
    data: &HttpState,
    provider: ReceiptProvider,
    keys: impl FnOnce(&Receipts) -> Option<K>,
) -> Result<(Arc<Receipts>, K, web::BytesMut), HttpResponse> {
    callback_up_to(req, payload, data, provider, keys, MAX_BODY).await
}

/// [`callback`] with a body of at most `limit` bytes.
pub(super) async fn callback_up_to<K>(
    req: &HttpRequest,
    payload: web::Payload,
    data: &HttpState,
    provider: ReceiptProvider,
    keys: impl FnOnce(&Receipts) -> Option<K>,
    limit: usize,
) -> Result<(Arc<Receipts>, K, web::BytesMut), HttpResponse> {
    let Some(receipts) = data.receipts.clone() else {
        return Err(plain(StatusCode::NOT_FOUND, "not found\n"));
    };
    let Some(keys) = keys(&receipts) else {
        receipts
            .metrics
            .rejected
            .with_label_values(&[provider.name(), "disabled"])
            .inc();
        return Err(plain(StatusCode::NOT_FOUND, "not found\n"));
    };
    let body = read_body(req, payload, &receipts, provider, limit).await?;
    Ok((receipts, keys, body))
}

async fn twilio_status(req: HttpRequest, payload: web::Payload, data: web::Data<HttpState>) -> HttpResponse {
    let provider = ReceiptProvider::Twilio;
    // Off unless `twilio.status_callback_url` is set: there is no URL to check signatures against.
    let (receipts, twilio, body) = match callback(&req, payload, &data, provider, |r| r.twilio.clone()).await {
        Ok(taken) => taken,
        Err(refusal) => return refusal,
    };
    let params: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let claimed = req
        .headers()
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = twilio.auth_token.expose().as_bytes();
    let valid = !claimed.is_empty()
        && twilio::signed_urls(&twilio.callback_url)
            .iter()
            .any(|url| twilio::signature_matches(token, url, &params, claimed));
    if !valid {
        return refused(&receipts, provider, "signature", StatusCode::FORBIDDEN);
    }
    let field = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    // The field says whose vocabulary the status is in: a message's (`MessageStatus`) or a call's
    // (`CallStatus`).
    let (sid, status, vocabulary): (_, _, fn(Status) -> Reported) = match (field("MessageSid"), field("CallSid")) {
        (Some(sid), _) => (sid, field("MessageStatus").or(field("SmsStatus")), Reported::message),
        (None, Some(sid)) => (sid, field("CallStatus"), Reported::call),
        (None, None) => return refused(&receipts, provider, "malformed", StatusCode::BAD_REQUEST),
    };
    if !is_provider_id(sid) {
        return refused(&receipts, provider, "malformed", StatusCode::BAD_REQUEST);
    }
    // It moves only a message of that channel (the state checks the sid's own channel): a message's
    // status on a call, the reverse, or a call's status for an SMS sid is ignored.
    // A message's `read` (WhatsApp's read receipt, which may come without `delivered`) is delivered.
    let read_is_delivered = |s: Status| if s == Status::Read { Status::Delivered } else { s };
    let status = status.and_then(Status::parse).map(read_is_delivered).map(vocabulary);
    let error_code = field("ErrorCode").filter(|c| !c.is_empty()).map(str::to_owned);
    let sid = sid.to_owned();
    answer(provider, receipts.apply(provider, &sid, status, error_code).await)
}

/// A provider's message id as herald keeps it: 1-64 letters, digits, `-` or `_`.
pub(super) fn is_provider_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

#[derive(Deserialize)]
struct WebhookStatus {
    job_id: String,
    status: String,
    #[serde(default)]
    error_code: Option<String>,
}

async fn webhook_status(req: HttpRequest, payload: web::Payload, data: web::Data<HttpState>) -> HttpResponse {
    let provider = ReceiptProvider::Webhook;
    let keys = |r: &Receipts| (!r.webhook_keys.is_empty()).then(|| r.webhook_keys.clone());
    let (receipts, keys, body) = match callback(&req, payload, &data, provider, keys).await {
        Ok(taken) => taken,
        Err(refusal) => return refusal,
    };
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let now = clock::unix_secs();
    let id = header("webhook-id");
    let signed = keys.iter().any(|key| {
        webhook_signature_holds(
            key.as_bytes(),
            id,
            header("webhook-timestamp"),
            header("webhook-signature"),
            &body,
            now,
        )
    });
    if !signed {
        return refused(&receipts, provider, "signature", StatusCode::UNAUTHORIZED);
    }
    // The signature held, so the timestamp parses and is within the window.
    let timestamp = header("webhook-timestamp").trim().parse::<u64>().unwrap_or(now);
    match data.webhook_ids.take(id, timestamp, now) {
        Sighting::First => {}
        Sighting::Replay => return refused(&receipts, provider, "replay", StatusCode::CONFLICT),
        Sighting::Full => {
            tracing::warn!(
                provider = provider.name(),
                "webhook status callback not taken: too many webhook-ids within the timestamp window; the sender \
                 will retry"
            );
            return plain(StatusCode::SERVICE_UNAVAILABLE, "try again later\n");
        }
    }
    let Ok(status) = serde_json::from_slice::<WebhookStatus>(&body) else {
        return refused(&receipts, provider, "malformed", StatusCode::BAD_REQUEST);
    };
    if !(1..=128).contains(&status.job_id.len()) {
        return refused(&receipts, provider, "malformed", StatusCode::BAD_REQUEST);
    }
    // The custom provider does not say whose vocabulary its status is in: the job's channel decides.
    let parsed = Status::parse(&status.status).map(Reported::unsaid);
    let applied = receipts
        .apply(provider, &status.job_id, parsed, status.error_code)
        .await;
    if applied.is_err() {
        // Not taken (503): the sender's retry carries the same webhook-id and must not count as a replay.
        data.webhook_ids.give_back(id);
    }
    answer(provider, applied)
}

/// Webhook ids remembered at most (about 60 bytes each): a day of callbacks at 2,000 a minute fits in one
/// timestamp window many times over.
pub const SEEN_CAPACITY: usize = 200_000;

/// What [`SeenIds::take`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sighting {
    First,
    /// Taken before, within its timestamp window: a replay, or the sender's retry of a callback already
    /// answered.
    Replay,
    /// [`SEEN_CAPACITY`] ids are within their windows: nothing can be told of this one.
    Full,
}

/// The `webhook-id`s of the signed status callbacks taken, each until its timestamp leaves the window in
/// which its signature holds (Standard Webhooks' replay protection). Bounded: [`SEEN_CAPACITY`] ids, by a
/// 128-bit digest; per process (a replica does not see another's).
#[derive(Default)]
pub struct SeenIds(std::sync::Mutex<Seen>);

#[derive(Default)]
struct Seen {
    /// Digest of an id → the second after which its signatures no longer hold.
    until: std::collections::HashMap<[u8; 16], u64>,
    /// When expired ids were last swept out.
    swept: u64,
}

fn digest(id: &str) -> [u8; 16] {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(id.as_bytes());
    let mut d = [0u8; 16];
    d.copy_from_slice(&hash[..16]);
    d
}

impl SeenIds {
    /// Takes `id`, signed at `timestamp`, unless it was taken within its window. Any sighting keeps the id
    /// until its latest timestamp's window closes.
    pub fn take(&self, id: &str, timestamp: u64, now: u64) -> Sighting {
        let until = timestamp.saturating_add(TIMESTAMP_TOLERANCE_S);
        let key = digest(id);
        let mut seen = lock(&self.0);
        if let Some(known) = seen.until.get_mut(&key) {
            if *known >= now {
                *known = (*known).max(until);
                return Sighting::Replay;
            }
            *known = until;
            return Sighting::First;
        }
        if seen.until.len() >= SEEN_CAPACITY && seen.swept != now {
            seen.swept = now;
            seen.until.retain(|_, until| *until >= now);
        }
        if seen.until.len() >= SEEN_CAPACITY {
            return Sighting::Full;
        }
        seen.until.insert(key, until);
        Sighting::First
    }

    /// Forgets `id`: its callback was not taken.
    pub fn give_back(&self, id: &str) {
        let mut seen = lock(&self.0);
        seen.until.remove(&digest(id));
    }
}

/// Standard Webhooks verification: the timestamp within [`TIMESTAMP_TOLERANCE_S`] of `now`, and one of
/// the space-separated `v1,<base64>` signatures equal (in constant time) to ours over `id.timestamp.body`.
pub fn webhook_signature_holds(key: &[u8], id: &str, timestamp: &str, signatures: &str, body: &[u8], now: u64) -> bool {
    let Ok(ts) = timestamp.trim().parse::<u64>() else {
        return false;
    };
    if id.is_empty() || ts.abs_diff(now) > TIMESTAMP_TOLERANCE_S {
        return false;
    }
    // Standard Webhooks signs UTF-8 payloads only: any other body holds no signature.
    let Some(expected) = webhook::try_sign(key, id, ts, body) else {
        return false;
    };
    signatures
        .split_whitespace()
        .any(|s| s.len() == expected.len() && bool::from(s.as_bytes().ct_eq(expected.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_id_is_taken_once_within_its_window() {
        let seen = SeenIds::default();
        let now = 1_000_000;
        assert_eq!(seen.take("msg_1", now, now), Sighting::First);
        assert_eq!(seen.take("msg_1", now, now + 1), Sighting::Replay);
        assert_eq!(seen.take("msg_2", now, now + 1), Sighting::First);
        // A replay with a later (re-signed) timestamp keeps the id until that one's window closes too.
        assert_eq!(seen.take("msg_1", now + 200, now + 200), Sighting::Replay);
        assert_eq!(seen.take("msg_1", now + 200, now + 400), Sighting::Replay);
        assert_eq!(
            seen.take("msg_1", now + 600, now + 200 + TIMESTAMP_TOLERANCE_S + 1),
            Sighting::First
        );
        // Given back (answered 503), the sender's retry is taken.
        seen.give_back("msg_2");
        assert_eq!(seen.take("msg_2", now, now + 2), Sighting::First);
    }

    #[test]
    fn the_seen_ids_are_bounded_and_make_room_as_windows_close() {
        let seen = SeenIds::default();
        let now = 1_000_000;
        for i in 0..SEEN_CAPACITY {
            assert_eq!(seen.take(&format!("msg_{i}"), now, now), Sighting::First);
        }
        assert_eq!(seen.take("one-more", now, now), Sighting::Full);
        assert_eq!(seen.take("msg_7", now, now), Sighting::Replay);
        let later = now + TIMESTAMP_TOLERANCE_S + 1;
        assert_eq!(seen.take("one-more", later, later), Sighting::First);
        assert_eq!(seen.0.lock().unwrap().until.len(), 1);
    }

    #[test]
    fn standard_webhooks_signatures_are_checked_with_their_timestamp() {
        let key: crate::config::WebhookKey = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        let key = key.as_bytes().to_vec();
        let body = br#"{"test": 2432232314}"#;
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let good = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let at = 1614265330;
        assert!(webhook_signature_holds(&key, id, "1614265330", good, body, at));
        assert!(webhook_signature_holds(
            &key,
            id,
            "1614265330",
            &format!("v1,bm90 {good}"),
            body,
            at + 299
        ));
        assert!(!webhook_signature_holds(&key, id, "1614265330", good, body, at + 301));
        assert!(!webhook_signature_holds(&key, id, "1614265331", good, body, at));
        assert!(!webhook_signature_holds(
            &key,
            "msg_other",
            "1614265330",
            good,
            body,
            at
        ));
        assert!(!webhook_signature_holds(&key, id, "1614265330", good, b"{}", at));
        assert!(!webhook_signature_holds(&key, id, "1614265330", "", body, at));
    }
}
