//! Meta's WhatsApp status webhooks (docs/receipts.md "Meta (WhatsApp)"), beside the other providers' routes
//! with the same body caps, refusal counts and answers:
//! - `GET /providers/meta/status`: the subscription handshake, `hub.challenge` echoed as text when
//!   `hub.mode=subscribe` and `hub.verify_token` is `meta.status_callback_verify_token`; 403 otherwise;
//! - `POST /providers/meta/status`: the webhook, taken only with `X-Hub-Signature-256` the HMAC-SHA256 of
//!   its raw body keyed with `meta.app_secret` (401 and nothing changed otherwise); each of its `statuses`
//!   moves its message.
//!
//! Off (404) without `meta.app_secret`. Bodies are never echoed nor logged.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::HttpState;
use super::receipts::{answer, callback_up_to, plain, refused};
use crate::receipts::meta::{challenge, is_wamid, signature_holds, statuses};
use crate::receipts::{Applied, ReceiptProvider, Reported};

/// Largest webhook body taken: Meta batches statuses of several messages in one webhook.
pub const MAX_META_BODY: usize = 256 * 1024;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/providers/meta/status")
            .route(web::get().to(handshake))
            .route(web::post().to(webhook)),
    );
}

async fn handshake(req: HttpRequest, data: web::Data<HttpState>) -> HttpResponse {
    let provider = ReceiptProvider::Meta;
    let Some(receipts) = data.receipts.clone() else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let Some(meta) = receipts.meta.clone() else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let query: Vec<(String, String)> = url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    match challenge(&query, meta.verify_token.expose()) {
        Some(challenge) => HttpResponse::Ok().content_type("text/plain").body(challenge.to_owned()),
        None => refused(&receipts, provider, "signature", StatusCode::FORBIDDEN),
    }
}

async fn webhook(req: HttpRequest, payload: web::Payload, data: web::Data<HttpState>) -> HttpResponse {
    let provider = ReceiptProvider::Meta;
    let (receipts, meta, body) =
        match callback_up_to(&req, payload, &data, provider, |r| r.meta.clone(), MAX_META_BODY).await {
            Ok(taken) => taken,
            Err(refusal) => return refusal,
        };
    let header = req
        .headers()
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !signature_holds(meta.app_secret.expose(), &body, header) {
        return refused(&receipts, provider, "signature", StatusCode::UNAUTHORIZED);
    }
    let Some(statuses) = statuses(&body) else {
        return refused(&receipts, provider, "malformed", StatusCode::BAD_REQUEST);
    };
    // Each status in turn; one that cannot be taken now makes Meta send the webhook again (503), and
    // what was taken then counts as stale or duplicate.
    let mut applied = Ok(Applied::Ignored);
    for status in statuses.into_iter().filter(|s| is_wamid(&s.id)) {
        let result = receipts
            .apply(
                provider,
                &crate::providers::meta::message_id(&status.id),
                status.status.map(Reported::message),
                status.error_code,
            )
            .await;
        if result.is_err() {
            applied = result;
            break;
        }
        applied = result;
    }
    answer(provider, applied)
}
