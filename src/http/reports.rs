//! Delivery report routes of Vonage, Plivo and Infobip (docs/receipts.md "Vonage, Plivo and Infobip"), beside Twilio's
//! and the webhook's in `http::receipts`, with the same body caps, refusal counts and answers:
//! - `GET` or `POST /providers/vonage/status`: Vonage's delivery receipt (query, form or JSON, as the
//!   account is set up), signed (`sig`, `timestamp`, `nonce`) with `vonage.signature_secret`;
//! - `POST /providers/plivo/status`: Plivo's form, `X-Plivo-Signature-V3` with its nonce, keyed with
//!   `plivo.auth_token` over `plivo.status_callback_url`;
//! - `POST /providers/infobip/status`: Infobip's JSON reports, taken only with `infobip.status_token` in the
//!   URL's `token` (Infobip signs nothing).
//!
//! A report that fails authentication gets 403 and changes nothing. Bodies and parameters (numbers among
//! them) are never echoed nor logged.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::HttpState;
use super::receipts::{MAX_BODY, answer, callback_up_to, is_provider_id, refused};
use crate::clock;
use crate::receipts::providers::{infobip, plivo, vonage};
use crate::receipts::{ReceiptProvider, Reported, Unavailable};

/// Largest Infobip report body taken: Infobip pushes reports in batches (about 500 bytes each), so a
/// batch may be well over a single callback's [`MAX_BODY`].
pub const MAX_INFOBIP_BODY: usize = 256 * 1024;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/providers/vonage/status")
            .route(web::post().to(vonage_status))
            .route(web::get().to(vonage_status)),
    )
    .route("/providers/plivo/status", web::post().to(plivo_status))
    .route("/providers/infobip/status", web::post().to(infobip_status));
}

fn is_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"))
}

fn form(bytes: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

/// A flat JSON object's members as the parameters Vonage signs: strings as they are, numbers, booleans
/// and null as Python writes them (the SDK signs the decoded values). `None` for anything else.
fn json_params(body: &[u8]) -> Option<Vec<(String, String)>> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    object
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(true) => "True".into(),
                serde_json::Value::Bool(false) => "False".into(),
                serde_json::Value::Null => "None".into(),
                _ => return None,
            };
            Some((k, text))
        })
        .collect()
}

fn field<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

async fn vonage_status(req: HttpRequest, payload: web::Payload, data: web::Data<HttpState>) -> HttpResponse {
    let provider = ReceiptProvider::Vonage;
    let (receipts, vonage, body) =
        match callback_up_to(&req, payload, &data, provider, |r| r.vonage.clone(), MAX_BODY).await {
            Ok(taken) => taken,
            Err(refusal) => return refusal,
        };
    // Vonage sends receipts as a GET query, a POST form or POST JSON, as the account is set up.
    let params = if req.method() == actix_web::http::Method::GET {
        // Less the callback URL's own query, which Vonage does not sign.
        let mut params = form(req.query_string().as_bytes());
        for own in &vonage.url_query {
            if let Some(at) = params.iter().position(|p| p == own) {
                params.remove(at);
            }
        }
        Some(params)
    } else if is_json(&req) {
        json_params(&body)
    } else {
        Some(form(&body))
    };
    let Some(params) = params else {
        return refused(&receipts, provider, "malformed", StatusCode::BAD_REQUEST);
    };
    match vonage::check(vonage.method, vonage.secret.expose(), &params, clock::unix_secs()) {
        Ok(()) => {}
        Err(vonage::Refusal::Signature) => {
            return refused(&receipts, provider, "signature", StatusCode::FORBIDDEN);
        }
        Err(vonage::Refusal::Expired) => return refused(&receipts, provider, "expired", StatusCode::FORBIDDEN),
    }
    let Some(id) = field(&params, "messageId").filter(|id| is_provider_id(id)) else {
        return refused(&receipts, provider, "malformed", StatusCode::BAD_REQUEST);
    };
    let status = field(&params, "status").and_then(vonage::status).map(Reported::message);
    let error_code = field(&params, "err-code").and_then(vonage::error_code);
    let id = id.to_owned();
    answer(provider, receipts.apply(provider, &id, status, error_code).await)
}

async fn plivo_status(req: HttpRequest, payload: web::Payload, data: web::Data<HttpState>) -> HttpResponse {
    let provider = ReceiptProvider::Plivo;
    let (receipts, plivo, body) =
        match callback_up_to(&req, payload, &data, provider, |r| r.plivo.clone(), MAX_BODY).await {
            Ok(taken) => taken,
            Err(refusal) => return refusal,
        };
    let params = form(&body);
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    // V3 signatures carry no timestamp: a replay cannot be told apart, but the receipt state never
    // moves a message backwards nor counts a status twice.
    if !plivo::signature_holds(
        plivo.auth_token.expose(),
        &plivo.callback_url,
        &params,
        header("x-plivo-signature-v3-nonce"),
        header("x-plivo-signature-v3"),
    ) {
        return refused(&receipts, provider, "signature", StatusCode::FORBIDDEN);
    }
    let Some(id) = field(&params, "MessageUUID").filter(|id| is_provider_id(id)) else {
        return refused(&receipts, provider, "malformed", StatusCode::BAD_REQUEST);
    };
    let status = field(&params, "Status").and_then(plivo::status).map(Reported::message);
    let error_code = field(&params, "ErrorCode").and_then(plivo::error_code);
    let id = id.to_owned();
    answer(provider, receipts.apply(provider, &id, status, error_code).await)
}

async fn infobip_status(req: HttpRequest, payload: web::Payload, data: web::Data<HttpState>) -> HttpResponse {
    let provider = ReceiptProvider::Infobip;
    let (receipts, token, body) =
        match callback_up_to(&req, payload, &data, provider, |r| r.infobip.clone(), MAX_INFOBIP_BODY).await {
            Ok(taken) => taken,
            Err(refusal) => return refusal,
        };
    if !infobip::token_holds(req.query_string(), token.expose()) {
        return refused(&receipts, provider, "signature", StatusCode::FORBIDDEN);
    }
    let Ok(reports) = serde_json::from_slice::<infobip::Reports>(&body) else {
        return refused(&receipts, provider, "malformed", StatusCode::BAD_REQUEST);
    };
    // Every report of the batch is applied; one that must come again makes the whole batch come again
    // (the ones already taken are then stale or duplicate, changing nothing).
    let mut again: Option<Unavailable> = None;
    for report in &reports.results {
        if !is_provider_id(&report.message_id) {
            receipts
                .metrics
                .rejected
                .with_label_values(&[provider.name(), "malformed"])
                .inc();
            continue;
        }
        let applied = receipts
            .apply_first(provider, &report.message_id, report.reported(), report.error_code())
            .await;
        if let Err(e) = applied {
            again = Some(e);
        }
    }
    answer(provider, again.map_or(Ok(crate::receipts::Applied::Ignored), Err))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// JSON receipts are signed over their decoded values, written as Python writes them.
    #[test]
    fn json_receipts_become_the_parameters_vonage_signs() {
        let params =
            json_params(br#"{"messageId":"0A1","price":"0.03","network-code":310090,"flag":true,"none":null}"#);
        let mut params = params.unwrap();
        params.sort();
        assert_eq!(
            params,
            [
                ("flag".to_owned(), "True".to_owned()),
                ("messageId".into(), "0A1".into()),
                ("network-code".into(), "310090".into()),
                ("none".into(), "None".into()),
                ("price".into(), "0.03".into()),
            ]
        );
        assert_eq!(json_params(br#"{"nested":{"a":1}}"#), None);
        assert_eq!(json_params(b"[1]"), None);
        assert_eq!(json_params(b"not json"), None);
    }
}
