//! Delivery reports from Vonage, Plivo and Infobip (docs/receipts.md "Vonage, Plivo and Infobip") against the real
//! broker. Each provider's test server checks that every message asks for its reports (and sends nothing undocumented);
//! reports are signed with the provider's own SDK (`tests/support/sign_report.py`: `vonage` 3.x `Client.signature`,
//! plivo-python's `signature_v3`), or carry Infobip's token back. A final status becomes exactly one event
//! and one count per job; a report that fails authentication gets 403 and changes nothing.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::helpers;
use crate::helpers::{TestApp, form, job, metric};
use herald::config::{Config, ProviderKind, Secret, VonageSignatureMethod};
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// herald's public URLs as an operator configures them (the providers sign over these).
const VONAGE_CALLBACK: &str = "https://herald.example.test/providers/vonage/status";
/// With a query of its own, which Vonage repeats in a GET receipt beside its (signed) parameters.
const VONAGE_CALLBACK_QUERY: &str = "https://herald.example.test/providers/vonage/status?tenant=acme";
const PLIVO_CALLBACK: &str = "https://herald.example.test/providers/plivo/status";
const INFOBIP_CALLBACK: &str = "https://herald.example.test/providers/infobip/status";
const VONAGE_SECRET: &str = "vonage-signature-secret";
const PLIVO_AUTH_ID: &str = "MAXXXXXXXXXXXXXXXXXX";
const PLIVO_TOKEN: &str = "plivo-auth-token";
const INFOBIP_TOKEN: &str = "ib-status-token-0123456789abcdef";
const REDIS: &str = "redis://127.0.0.1:6379";

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn encode(params: &[(String, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Asks the provider's SDK (`tests/support/sign_report.py`) to sign.
async fn sdk(request: Value) -> Value {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/sign_report.py");
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 is needed for this test");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(request.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "sign_report.py failed: python3 with `plivo` and `vonage==3.18.0` is needed (.ci/run installs them)"
        );
        serde_json::from_slice(&out.stdout).unwrap()
    })
    .await
    .unwrap()
}

fn object(params: &[(String, String)]) -> Value {
    Value::Object(
        params
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect(),
    )
}

/// The fields of `body` (a form or a JSON object) that its API does not document, and the documented ones
/// that are missing or wrong: empty when the request is as it should be.
fn mismatches(
    present: &BTreeSet<String>,
    documented: &[&str],
    expected: &[(&str, Option<&str>)],
    value: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    let mut wrong: Vec<String> = present
        .iter()
        .filter(|k| !documented.contains(&k.as_str()))
        .map(|k| format!("undocumented field {k}"))
        .collect();
    for (name, want) in expected {
        let got = value(name);
        if got.as_deref() != *want {
            wrong.push(format!("{name}: {got:?}, expected {want:?}"));
        }
    }
    wrong
}

fn assert_documented(event: &Value) {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/asyncapi.yaml")).unwrap();
    let doc: Value = serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&doc).unwrap()).unwrap();
    let schema = json!({"$ref": "#/components/schemas/StatusEvent", "components": doc["components"]});
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let errors: Vec<String> = validator.iter_errors(event).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{event}");
    let text = event.to_string();
    for secret in ["4155550123", "482913", VONAGE_SECRET, PLIVO_TOKEN, INFOBIP_TOKEN] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

/// Sends one job and returns its outcome event (which must be a success).
async fn send(app: &mut TestApp, channel: &str) -> Value {
    let j = job(channel);
    app.publish(&j).await;
    let event = app.next_outcome(20).await;
    assert_eq!(event["job_id"], j["id"]);
    assert!(event.get("error").is_none(), "{event}");
    event
}

fn delivery(m: &str, channel: &str, provider: &str, status: &str) -> f64 {
    metric(
        m,
        &format!(
            r#"gd_send_delivery_total{{channel="{channel}",country="1",provider="{provider}",status="{status}"}}"#
        ),
    )
}

fn rejected(m: &str, provider: &str, reason: &str) -> f64 {
    metric(
        m,
        &format!(r#"herald_receipts_rejected_total{{provider="{provider}",reason="{reason}"}}"#),
    )
}

fn taken(m: &str, provider: &str, result: &str) -> f64 {
    metric(
        m,
        &format!(r#"herald_receipts_total{{provider="{provider}",result="{result}"}}"#),
    )
}

// --- Vonage ---------------------------------------------------------------------------------------------

/// The SMS API's `/sms/json` form fields (https://developer.vonage.com/en/api/sms#send-an-sms).
const VONAGE_FIELDS: &[&str] = &[
    "api_key",
    "api_secret",
    "sig",
    "from",
    "to",
    "text",
    "ttl",
    "status-report-req",
    "callback",
    "message-class",
    "type",
    "body",
    "udh",
    "protocol-id",
    "client-ref",
    "account-ref",
    "entity-id",
    "content-id",
];

/// Vonage's `/sms/json`: checks the form field by field and answers as Vonage does (HTTP 200, the
/// verdict per part), with a fresh message id per message; a wrong request gets status 2 (missing
/// parameters) or 3 (invalid parameters) with what was wrong in `error-text`.
struct VonageApi {
    callback: Option<&'static str>,
    sent: AtomicU64,
}

impl Respond for VonageApi {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let fields = form(&request.body);
        let form_type = request
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mut wrong = mismatches(
            &fields.keys().cloned().collect(),
            VONAGE_FIELDS,
            &[
                ("api_key", Some("a1b2c3d4")),
                ("api_secret", Some("vonage-api-secret")),
                ("from", Some("Acme")),
                ("to", Some("14155550123")),
                ("status-report-req", self.callback.map(|_| "1")),
                ("callback", self.callback),
            ],
            |k| fields.get(k).cloned(),
        );
        if request.method.as_str() != "POST" || request.url.path() != "/sms/json" {
            wrong.push(format!("{} {}", request.method, request.url.path()));
        }
        if !form_type.starts_with("application/x-www-form-urlencoded") {
            wrong.push(format!("content-type {form_type}"));
        }
        if fields.get("text").is_none_or(|t| t.is_empty()) {
            wrong.push("no text".into());
        }
        if !wrong.is_empty() {
            return ResponseTemplate::new(200).set_body_json(json!({
                "message-count": "1",
                "messages": [{"status": "3", "error-text": wrong.join("; ")}],
            }));
        }
        let n = self.sent.fetch_add(1, Ordering::SeqCst);
        ResponseTemplate::new(200).set_body_json(json!({
            "message-count": "1",
            "messages": [{
                "to": "14155550123",
                "message-id": format!("0A00000{:010X}", n + u64::from(std::process::id()) * 1000),
                "status": "0",
                "remaining-balance": "3.14159265",
                "message-price": "0.03330000",
                "network": "310090",
            }],
        }))
    }
}

async fn vonage_server(callback: Option<&'static str>) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(VonageApi {
            callback,
            sent: AtomicU64::new(0),
        })
        .mount(&server)
        .await;
    server
}

fn vonage(c: &mut Config, server: &MockServer, method: VonageSignatureMethod) {
    c.channels.sms = Some(vec![ProviderKind::Vonage]);
    c.vonage.api_key = "a1b2c3d4".into();
    c.vonage.api_secret = Secret::new("vonage-api-secret");
    c.vonage.from = "Acme".into();
    c.vonage.base_url = server.uri().parse().unwrap();
    c.vonage.status_callback_url = Some(VONAGE_CALLBACK.parse().unwrap());
    c.vonage.signature_secret = Secret::new(VONAGE_SECRET);
    c.vonage.signature_method = method;
}

/// A delivery receipt as Vonage sends it (https://developer.vonage.com/en/messaging/sms/guides/delivery-receipts),
/// with the signed-callback fields but `sig`.
fn vonage_receipt(message_id: &str, status: &str, err_code: &str, timestamp: u64) -> Vec<(String, String)> {
    let timestamp = timestamp.to_string();
    let nonce = uuid::Uuid::new_v4().to_string();
    pairs(&[
        ("msisdn", "14155550123"),
        ("to", "Acme"),
        ("network-code", "310090"),
        ("messageId", message_id),
        ("price", "0.03330000"),
        ("status", status),
        ("scts", "2612071200"),
        ("err-code", err_code),
        ("api-key", "a1b2c3d4"),
        ("message-timestamp", "2026-12-07 12:00:00"),
        ("timestamp", &timestamp),
        ("nonce", &nonce),
    ])
}

/// `params` with the `sig` the Vonage SDK gives for `secret` and `method`.
async fn vonage_signed(params: &[(String, String)], secret: &str, method: &str) -> Vec<(String, String)> {
    let answer = sdk(json!({"provider": "vonage", "secret": secret, "method": method, "params": object(params)})).await;
    let mut signed = params.to_vec();
    signed.push(("sig".into(), answer["sig"].as_str().unwrap().to_owned()));
    signed
}

#[derive(Clone, Copy)]
enum Via {
    Get,
    Form,
    Json,
}

async fn vonage_post(app: &TestApp, params: &[(String, String)], via: Via) -> u16 {
    let url = app.url("/providers/vonage/status");
    let client = reqwest::Client::new();
    let request = match via {
        // As Vonage calls VONAGE_CALLBACK_QUERY: its own query first.
        Via::Get => client.get(format!("{url}?tenant=acme&{}", encode(params))),
        Via::Form => client
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode(params)),
        Via::Json => client
            .post(url)
            .header("content-type", "application/json")
            .body(object(params).to_string()),
    };
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn vonage_receipts_are_asked_for_and_taken_only_signed() {
    let server = vonage_server(Some(VONAGE_CALLBACK)).await;
    let mut app = TestApp::spawn(|c| vonage(c, &server, VonageSignatureMethod::Md5hash)).await;
    let sent = send(&mut app, "sms").await;
    assert_eq!(sent["provider"], "vonage");
    let id = sent["provider_message_id"].as_str().unwrap().to_owned();
    let request = form(&server.received_requests().await.unwrap()[0].body);
    assert_eq!(request["callback"], VONAGE_CALLBACK);
    assert_eq!(request["status-report-req"], "1");

    // An intermediate status: taken, not evented.
    let accepted = vonage_signed(&vonage_receipt(&id, "accepted", "0", now()), VONAGE_SECRET, "md5hash").await;
    assert_eq!(vonage_post(&app, &accepted, Via::Form).await, 200);
    assert_eq!(app.try_next_event(1).await, None);

    // Refused, changing nothing: signed with another secret or method, changed after signing, unsigned,
    // and signed properly but ten minutes old.
    let failed = vonage_receipt(&id, "failed", "6", now());
    let other_secret = vonage_signed(&failed, "another-secret", "md5hash").await;
    assert_eq!(vonage_post(&app, &other_secret, Via::Form).await, 403);
    let other_method = vonage_signed(&failed, VONAGE_SECRET, "sha256").await;
    assert_eq!(vonage_post(&app, &other_method, Via::Form).await, 403);
    let mut tampered = vonage_signed(&vonage_receipt(&id, "delivered", "0", now()), VONAGE_SECRET, "md5hash").await;
    tampered[5].1 = "failed".into();
    assert_eq!(vonage_post(&app, &tampered, Via::Form).await, 403);
    assert_eq!(vonage_post(&app, &failed, Via::Form).await, 403);
    let old = vonage_signed(
        &vonage_receipt(&id, "failed", "6", now() - 600),
        VONAGE_SECRET,
        "md5hash",
    )
    .await;
    assert_eq!(vonage_post(&app, &old, Via::Form).await, 403);
    assert_eq!(app.try_next_event(1).await, None, "a refused receipt changed something");

    // The final one: one event, without an error code (`0` is none).
    let delivered = vonage_signed(&vonage_receipt(&id, "delivered", "0", now()), VONAGE_SECRET, "md5hash").await;
    assert_eq!(vonage_post(&app, &delivered, Via::Form).await, 200);
    let event = app.next_event(10).await;
    assert_eq!(event["type"], "gd_send_sms_status");
    assert_eq!(event["job_id"], sent["job_id"]);
    assert_eq!(event["status"], "delivered");
    assert_eq!(event["provider"], "vonage");
    assert_eq!(event["provider_message_id"], id.as_str());
    assert_eq!(event["country"], "1");
    assert_eq!(event["recipient"], "+1415*****23");
    assert!(event.get("error_code").is_none(), "{event}");
    assert_documented(&event);
    // The same receipt again, and a contradicting final one: nothing more.
    assert_eq!(vonage_post(&app, &delivered, Via::Form).await, 200);
    let late = vonage_signed(&vonage_receipt(&id, "expired", "1", now()), VONAGE_SECRET, "md5hash").await;
    assert_eq!(vonage_post(&app, &late, Via::Form).await, 200);
    assert_eq!(app.try_next_event(1).await, None);

    let m = app.metrics().await;
    assert_eq!(delivery(&m, "sms", "vonage", "delivered"), 1.0, "{m}");
    assert_eq!(delivery(&m, "sms", "vonage", "undelivered"), 0.0);
    assert_eq!(rejected(&m, "vonage", "signature"), 4.0);
    assert_eq!(rejected(&m, "vonage", "expired"), 1.0);
    assert_eq!(taken(&m, "vonage", "final"), 1.0);
    assert_eq!(taken(&m, "vonage", "intermediate"), 1.0);
    assert_eq!(taken(&m, "vonage", "duplicate"), 2.0);
    app.stop().await;
}

/// Receipts by GET (Vonage's default, the callback URL's own query beside them) and as JSON, HMAC-SHA256
/// signed: `expired` is undelivered with
/// Vonage's `err-code`, `rejected` is failed.
#[tokio::test]
async fn vonage_receipts_come_by_get_or_json_with_an_hmac_signature() {
    let server = vonage_server(Some(VONAGE_CALLBACK_QUERY)).await;
    let mut app = TestApp::spawn(|c| {
        vonage(c, &server, VonageSignatureMethod::Sha256);
        c.vonage.status_callback_url = Some(VONAGE_CALLBACK_QUERY.parse().unwrap());
    })
    .await;
    let first = send(&mut app, "sms").await;
    let second = send(&mut app, "sms").await;
    let id = |e: &Value| e["provider_message_id"].as_str().unwrap().to_owned();

    let expired = vonage_signed(
        &vonage_receipt(&id(&first), "expired", "5", now()),
        VONAGE_SECRET,
        "sha256",
    )
    .await;
    let md5 = vonage_signed(
        &vonage_receipt(&id(&first), "expired", "5", now()),
        VONAGE_SECRET,
        "md5hash",
    )
    .await;
    assert_eq!(vonage_post(&app, &md5, Via::Get).await, 403);
    assert_eq!(vonage_post(&app, &expired, Via::Get).await, 200);
    let event = app.next_event(10).await;
    assert_eq!(event["job_id"], first["job_id"]);
    assert_eq!(event["status"], "undelivered");
    assert_eq!(event["error_code"], "5");
    assert_documented(&event);

    let rejected_receipt = vonage_signed(
        &vonage_receipt(&id(&second), "rejected", "15", now()),
        VONAGE_SECRET,
        "sha256",
    )
    .await;
    assert_eq!(vonage_post(&app, &rejected_receipt, Via::Json).await, 200);
    let event = app.next_event(10).await;
    assert_eq!(event["job_id"], second["job_id"]);
    assert_eq!(event["status"], "failed");
    assert_eq!(event["error_code"], "15");
    // Replayed as a form: the same status again, nothing more.
    assert_eq!(vonage_post(&app, &rejected_receipt, Via::Form).await, 200);
    assert_eq!(app.try_next_event(1).await, None);

    let m = app.metrics().await;
    assert_eq!(delivery(&m, "sms", "vonage", "undelivered"), 1.0, "{m}");
    assert_eq!(delivery(&m, "sms", "vonage", "failed"), 1.0, "{m}");
    assert_eq!(rejected(&m, "vonage", "signature"), 1.0);
    app.stop().await;
}

// --- Plivo ----------------------------------------------------------------------------------------------

/// The Messages API's JSON fields (https://www.plivo.com/docs/messaging/api/message/send-a-message).
const PLIVO_FIELDS: &[&str] = &[
    "src",
    "dst",
    "text",
    "type",
    "url",
    "method",
    "log",
    "trackable",
    "powerpack_uuid",
    "media_urls",
    "media_ids",
    "message_expiry",
    "dlt_entity_id",
    "dlt_template_id",
    "dlt_template_category",
];

/// Plivo's `POST /v1/Account/{auth_id}/Message/`: checks Basic auth, JSON and every field; answers 202
/// with a fresh `message_uuid`, or 400 with Plivo's error body saying what was wrong.
struct PlivoApi {
    callback: Option<&'static str>,
}

impl Respond for PlivoApi {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        use base64::Engine;
        let body: serde_json::Map<String, Value> = serde_json::from_slice(&request.body).unwrap_or_default();
        let header = |name: &str| {
            request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{PLIVO_AUTH_ID}:{PLIVO_TOKEN}"))
        );
        if header("authorization") != auth {
            return ResponseTemplate::new(401).set_body_json(json!({"api_id": "x", "error": "authentication failed"}));
        }
        let mut wrong = mismatches(
            &body.keys().cloned().collect(),
            PLIVO_FIELDS,
            &[
                ("src", Some("14155550100")),
                ("dst", Some("14155550123")),
                ("url", self.callback),
                ("method", self.callback.map(|_| "POST")),
            ],
            |k| body.get(k).and_then(Value::as_str).map(str::to_owned),
        );
        if request.method.as_str() != "POST" || request.url.path() != format!("/v1/Account/{PLIVO_AUTH_ID}/Message/") {
            wrong.push(format!("{} {}", request.method, request.url.path()));
        }
        if !header("content-type").starts_with("application/json") {
            wrong.push("not JSON".into());
        }
        if body.get("text").and_then(Value::as_str).is_none_or(str::is_empty) {
            wrong.push("no text".into());
        }
        if !wrong.is_empty() {
            return ResponseTemplate::new(400).set_body_json(json!({"api_id": "x", "error": wrong.join("; ")}));
        }
        ResponseTemplate::new(202).set_body_json(json!({
            "api_id": uuid::Uuid::new_v4().to_string(),
            "message": "message(s) queued",
            "message_uuid": [uuid::Uuid::new_v4().to_string()],
        }))
    }
}

async fn plivo_server(callback: Option<&'static str>) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(PlivoApi { callback })
        .mount(&server)
        .await;
    server
}

fn plivo(c: &mut Config, server: &MockServer) {
    c.channels.sms = Some(vec![ProviderKind::Plivo]);
    c.plivo.auth_id = PLIVO_AUTH_ID.into();
    c.plivo.auth_token = Secret::new(PLIVO_TOKEN);
    c.plivo.from = "+14155550100".into();
    c.plivo.base_url = server.uri().parse().unwrap();
    c.plivo.status_callback_url = Some(PLIVO_CALLBACK.parse().unwrap());
}

/// A message status callback as Plivo posts it.
fn plivo_callback(uuid: &str, status: &str, error_code: &str) -> Vec<(String, String)> {
    pairs(&[
        ("From", "14155550100"),
        ("To", "14155550123"),
        ("MessageUUID", uuid),
        ("ParentMessageUUID", uuid),
        ("PartInfo", "1 of 1"),
        ("Status", status),
        ("ErrorCode", error_code),
        ("TotalRate", "0.00500"),
        ("TotalAmount", "0.00500"),
        ("Units", "1"),
        ("MCC", "310"),
        ("MNC", "090"),
        ("MessageTime", "2026-12-07 12:00:00+00:00"),
        ("Sequence", "1"),
    ])
}

/// The nonce and `X-Plivo-Signature-V3` plivo-python gives for `params` posted to `url` with `token`.
async fn plivo_signature(params: &[(String, String)], url: &str, token: &str) -> (String, String) {
    let nonce = fastrand::u64(..).to_string();
    let answer = sdk(json!({
        "provider": "plivo", "auth_token": token, "url": url, "nonce": nonce, "params": object(params),
    }))
    .await;
    (nonce, answer["signature"].as_str().unwrap().to_owned())
}

async fn plivo_post(app: &TestApp, params: &[(String, String)], signed: Option<(&str, &str)>) -> u16 {
    let mut request = reqwest::Client::new()
        .post(app.url("/providers/plivo/status"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(params));
    if let Some((nonce, signature)) = signed {
        request = request
            .header("X-Plivo-Signature-V3-Nonce", nonce)
            .header("X-Plivo-Signature-V3", signature);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn plivo_callbacks_are_asked_for_and_taken_only_with_a_v3_signature() {
    let server = plivo_server(Some(PLIVO_CALLBACK)).await;
    let mut app = TestApp::spawn(|c| plivo(c, &server)).await;
    let sent = send(&mut app, "sms").await;
    assert_eq!(sent["provider"], "plivo");
    let uuid = sent["provider_message_id"].as_str().unwrap().to_owned();
    let request: Value = serde_json::from_slice(&server.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(request["url"], PLIVO_CALLBACK);
    assert_eq!(request["method"], "POST");

    for status in ["queued", "sent"] {
        let params = plivo_callback(&uuid, status, "000");
        let (nonce, signature) = plivo_signature(&params, PLIVO_CALLBACK, PLIVO_TOKEN).await;
        assert_eq!(plivo_post(&app, &params, Some((&nonce, &signature))).await, 200);
    }
    assert_eq!(app.try_next_event(1).await, None);

    // Refused, changing nothing: another token, another URL, another nonce, a changed value, no headers.
    let params = plivo_callback(&uuid, "undelivered", "300");
    let (nonce, good) = plivo_signature(&params, PLIVO_CALLBACK, PLIVO_TOKEN).await;
    let (other_nonce, other_token) = plivo_signature(&params, PLIVO_CALLBACK, "another-token").await;
    assert_eq!(plivo_post(&app, &params, Some((&other_nonce, &other_token))).await, 403);
    let (url_nonce, other_url) = plivo_signature(&params, &format!("{PLIVO_CALLBACK}?x=1"), PLIVO_TOKEN).await;
    assert_eq!(plivo_post(&app, &params, Some((&url_nonce, &other_url))).await, 403);
    assert_eq!(plivo_post(&app, &params, Some(("12345", &good))).await, 403);
    let mut changed = params.clone();
    changed[5].1 = "delivered".into();
    assert_eq!(plivo_post(&app, &changed, Some((&nonce, &good))).await, 403);
    assert_eq!(plivo_post(&app, &params, None).await, 403);
    assert_eq!(plivo_post(&app, &params, Some(("", &good))).await, 403);
    assert_eq!(
        app.try_next_event(1).await,
        None,
        "a refused callback changed something"
    );

    // The real one (with a second signature beside it, as while a token is rotated): one event.
    let both = format!("{other_token},{good}");
    assert_eq!(plivo_post(&app, &params, Some((&nonce, &both))).await, 200);
    let event = app.next_event(10).await;
    assert_eq!(event["type"], "gd_send_sms_status");
    assert_eq!(event["job_id"], sent["job_id"]);
    assert_eq!(event["status"], "undelivered");
    assert_eq!(event["provider"], "plivo");
    assert_eq!(event["provider_message_id"], uuid.as_str());
    assert_eq!(event["error_code"], "300");
    assert_documented(&event);
    // V3 has no timestamp: the very same request replayed is taken, and changes nothing.
    assert_eq!(plivo_post(&app, &params, Some((&nonce, &good))).await, 200);
    let delivered = plivo_callback(&uuid, "delivered", "000");
    let (n, s) = plivo_signature(&delivered, PLIVO_CALLBACK, PLIVO_TOKEN).await;
    assert_eq!(plivo_post(&app, &delivered, Some((&n, &s))).await, 200);
    assert_eq!(app.try_next_event(1).await, None);

    // `rejected` is failed.
    let second = send(&mut app, "sms").await;
    let rejected_callback = plivo_callback(second["provider_message_id"].as_str().unwrap(), "rejected", "450");
    let (n, s) = plivo_signature(&rejected_callback, PLIVO_CALLBACK, PLIVO_TOKEN).await;
    assert_eq!(plivo_post(&app, &rejected_callback, Some((&n, &s))).await, 200);
    let event = app.next_event(10).await;
    assert_eq!(event["job_id"], second["job_id"]);
    assert_eq!(event["status"], "failed");

    let m = app.metrics().await;
    assert_eq!(delivery(&m, "sms", "plivo", "undelivered"), 1.0, "{m}");
    assert_eq!(delivery(&m, "sms", "plivo", "failed"), 1.0, "{m}");
    assert_eq!(delivery(&m, "sms", "plivo", "delivered"), 0.0, "{m}");
    assert_eq!(rejected(&m, "plivo", "signature"), 6.0);
    assert_eq!(taken(&m, "plivo", "final"), 2.0);
    assert_eq!(taken(&m, "plivo", "intermediate"), 2.0);
    assert_eq!(taken(&m, "plivo", "duplicate"), 2.0);
    app.stop().await;
}

/// With Redis, a replica that did not send the message takes its callback; the first hears it again and
/// counts nothing more.
#[tokio::test]
async fn a_plivo_callback_at_another_replica_events_once() {
    let server = plivo_server(Some(PLIVO_CALLBACK)).await;
    let mut app = TestApp::spawn(|c| {
        plivo(c, &server);
        c.redis.url = Secret::new(REDIS);
    })
    .await;
    let sent = send(&mut app, "sms").await;
    let uuid = sent["provider_message_id"].as_str().unwrap().to_owned();
    let replica = helpers::Replica::spawn(&app.config).await;
    let params = plivo_callback(&uuid, "delivered", "000");
    let (nonce, signature) = plivo_signature(&params, PLIVO_CALLBACK, PLIVO_TOKEN).await;
    let post_to = |host: String| {
        let body = encode(&params);
        let (nonce, signature) = (nonce.clone(), signature.clone());
        async move {
            reqwest::Client::new()
                .post(format!("http://{host}/providers/plivo/status"))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("X-Plivo-Signature-V3-Nonce", nonce)
                .header("X-Plivo-Signature-V3", signature)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(post_to(replica.http.to_string()).await, 200);
    let event = app.next_event(10).await;
    assert_eq!(event["job_id"], sent["job_id"]);
    assert_eq!(event["status"], "delivered");
    assert_eq!(post_to(app.http.to_string()).await, 200);
    assert_eq!(app.try_next_event(1).await, None);
    let m = app.metrics().await;
    assert_eq!(taken(&m, "plivo", "duplicate"), 1.0, "{m}");
    replica.stop().await;
    app.stop().await;
}

// --- Infobip --------------------------------------------------------------------------------------------

/// Message fields of `/sms/2/text/advanced` and `/tts/3/advanced` (Infobip's SDK models and API pages).
const INFOBIP_FIELDS: &[&str] = &[
    "destinations",
    "from",
    "text",
    "language",
    "voice",
    "speechRate",
    "notifyUrl",
    "notifyContentType",
    "callbackData",
    "validityPeriod",
    "sendAt",
    "flash",
    "intermediateReport",
    "transliteration",
    "languageCode",
    "regional",
    "entityId",
    "applicationId",
    "deliveryTimeWindow",
    "ringTimeout",
    "record",
    "repeatDtmf",
    "maxDtmf",
    "dtmfTimeout",
    "pause",
    "retry",
    "audioFileUrl",
    "machineDetection",
];

/// Infobip's SMS and TTS endpoints: checks `Authorization: App …`, JSON and each message's fields; answers
/// 200 with a fresh `messageId` per message and status PENDING, or 400 with Infobip's error body.
struct InfobipApi {
    notify: Option<String>,
}

impl Respond for InfobipApi {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let header = |name: &str| {
            request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let refuse = |id: &str, text: String| {
            ResponseTemplate::new(400)
                .set_body_json(json!({"requestError": {"serviceException": {"messageId": id, "text": text}}}))
        };
        if header("authorization") != "App infobip-key" {
            return ResponseTemplate::new(401).set_body_json(json!({"requestError": {"serviceException": {
                "messageId": "UNAUTHORIZED", "text": "Invalid login details"}}}));
        }
        let path = request.url.path();
        let mut wrong = Vec::new();
        if request.method.as_str() != "POST" || !["/sms/2/text/advanced", "/tts/3/advanced"].contains(&path) {
            wrong.push(format!("{} {path}", request.method));
        }
        if !header("content-type").starts_with("application/json") {
            wrong.push("not JSON".into());
        }
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        if messages.len() != 1 {
            wrong.push("not one message".into());
        }
        for message in &messages {
            let fields = message.as_object().cloned().unwrap_or_default();
            wrong.extend(mismatches(
                &fields.keys().cloned().collect(),
                INFOBIP_FIELDS,
                &[
                    ("from", Some("447491163443")),
                    ("notifyUrl", self.notify.as_deref()),
                    ("notifyContentType", self.notify.as_ref().map(|_| "application/json")),
                ],
                |k| fields.get(k).and_then(Value::as_str).map(str::to_owned),
            ));
            if message["destinations"] != json!([{"to": "14155550123"}]) {
                wrong.push(format!("destinations {}", message["destinations"]));
            }
        }
        if !wrong.is_empty() {
            return refuse("BAD_REQUEST", wrong.join("; "));
        }
        ResponseTemplate::new(200).set_body_json(json!({
            "bulkId": uuid::Uuid::new_v4().to_string(),
            "messages": [{
                "to": "14155550123",
                "messageId": uuid::Uuid::new_v4().simple().to_string(),
                "status": {"groupId": 1, "groupName": "PENDING", "id": 26, "name": "PENDING_ACCEPTED",
                           "description": "Message sent to next instance"},
            }],
        }))
    }
}

fn infobip_notify_url() -> String {
    format!("{INFOBIP_CALLBACK}?token={INFOBIP_TOKEN}")
}

async fn infobip_server(notify: Option<String>) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(InfobipApi { notify })
        .mount(&server)
        .await;
    server
}

fn infobip(c: &mut Config, server: &MockServer) {
    c.channels.sms = Some(vec![ProviderKind::Infobip]);
    c.channels.voice = Some(vec![ProviderKind::Infobip]);
    c.infobip.api_key = Secret::new("infobip-key");
    c.infobip.from = "+447491163443".into();
    c.infobip.base_url = Some(server.uri().parse().unwrap());
    c.infobip.status_callback_url = Some(INFOBIP_CALLBACK.parse().unwrap());
    c.infobip.status_token = Secret::new(INFOBIP_TOKEN);
}

/// An SMS delivery report as Infobip pushes it (the SDK's `SMSReport`).
fn sms_report(message_id: &str, group: (u8, &str), name: &str, error: (u16, &str, &str)) -> Value {
    json!({
        "bulkId": "bulk-1",
        "messageId": message_id,
        "to": "14155550123",
        "sentAt": "2026-12-07T12:00:00.000+0000",
        "doneAt": "2026-12-07T12:00:05.000+0000",
        "smsCount": 1,
        "mccMnc": "310090",
        "price": {"pricePerMessage": 0.01, "currency": "EUR"},
        "status": {"groupId": group.0, "groupName": group.1, "id": 5, "name": name, "description": "-"},
        "error": {"groupId": 0, "groupName": error.1, "id": error.0, "name": error.2, "description": "-",
                  "permanent": false},
    })
}

async fn infobip_post(app: &TestApp, query: &str, results: Vec<Value>) -> u16 {
    reqwest::Client::new()
        .post(app.url(&format!("/providers/infobip/status{query}")))
        .json(&json!({"results": results}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn infobip_reports_are_asked_for_and_taken_only_with_the_token() {
    let server = infobip_server(Some(infobip_notify_url())).await;
    let mut app = TestApp::spawn(|c| infobip(c, &server)).await;
    let sent = send(&mut app, "sms").await;
    assert_eq!(sent["provider"], "infobip");
    let id = sent["provider_message_id"].as_str().unwrap().to_owned();
    let request: Value = serde_json::from_slice(&server.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(request["messages"][0]["notifyUrl"], infobip_notify_url());
    assert_eq!(request["messages"][0]["notifyContentType"], "application/json");

    let token = format!("?token={INFOBIP_TOKEN}");
    let pending = sms_report(&id, (1, "PENDING"), "PENDING_ENROUTE", (0, "OK", "NO_ERROR"));
    assert_eq!(infobip_post(&app, &token, vec![pending]).await, 200);
    assert_eq!(app.try_next_event(1).await, None);

    // Refused, changing nothing: no token, a wrong one, the token twice, the token in another parameter.
    let undeliverable = sms_report(
        &id,
        (2, "UNDELIVERABLE"),
        "UNDELIVERABLE_NOT_DELIVERED",
        (27, "HANDSET_ERRORS", "EC_ABSENT_SUBSCRIBER"),
    );
    for query in [
        String::new(),
        "?token=ib-status-token-0123456789abcdeF".into(),
        format!("{token}&token={INFOBIP_TOKEN}"),
        format!("?secret={INFOBIP_TOKEN}"),
    ] {
        assert_eq!(
            infobip_post(&app, &query, vec![undeliverable.clone()]).await,
            403,
            "{query}"
        );
    }
    assert_eq!(app.try_next_event(1).await, None, "a refused report changed something");

    // A batch bigger than a single callback's 16 KiB is taken (a hundred reports of messages herald never
    // sent: counted unknown); one over 256 KiB is not read.
    let strangers: Vec<Value> = (0..100)
        .map(|i| {
            sms_report(
                &format!("stranger-{i}"),
                (3, "DELIVERED"),
                "DELIVERED_TO_HANDSET",
                (0, "OK", "NO_ERROR"),
            )
        })
        .collect();
    assert!(json!({"results": strangers}).to_string().len() > 16 * 1024);
    assert_eq!(infobip_post(&app, &token, strangers.clone()).await, 200);
    let flood: Vec<Value> = strangers.iter().cycle().take(700).cloned().collect();
    assert_eq!(infobip_post(&app, &token, flood).await, 413);
    // A batch: ours, and one for a message herald never sent.
    let other = sms_report(
        "not-ours-1",
        (3, "DELIVERED"),
        "DELIVERED_TO_HANDSET",
        (0, "OK", "NO_ERROR"),
    );
    assert_eq!(
        infobip_post(&app, &token, vec![undeliverable.clone(), other]).await,
        200
    );
    let event = app.next_event(10).await;
    assert_eq!(event["type"], "gd_send_sms_status");
    assert_eq!(event["job_id"], sent["job_id"]);
    assert_eq!(event["status"], "undelivered");
    assert_eq!(event["provider"], "infobip");
    assert_eq!(event["provider_message_id"], id.as_str());
    assert_eq!(event["error_code"], "EC_ABSENT_SUBSCRIBER");
    assert_documented(&event);
    // Infobip pushing the same report again, and a late DELIVERED: nothing more.
    assert_eq!(infobip_post(&app, &token, vec![undeliverable]).await, 200);
    let late = sms_report(&id, (3, "DELIVERED"), "DELIVERED_TO_HANDSET", (0, "OK", "NO_ERROR"));
    assert_eq!(infobip_post(&app, &token, vec![late]).await, 200);
    assert_eq!(app.try_next_event(1).await, None);

    let m = app.metrics().await;
    assert_eq!(delivery(&m, "sms", "infobip", "undelivered"), 1.0, "{m}");
    assert_eq!(delivery(&m, "sms", "infobip", "delivered"), 0.0, "{m}");
    assert_eq!(rejected(&m, "infobip", "signature"), 4.0);
    assert_eq!(taken(&m, "infobip", "unknown"), 101.0);
    assert_eq!(rejected(&m, "infobip", "too_large"), 1.0);
    assert_eq!(taken(&m, "infobip", "final"), 1.0);
    assert_eq!(taken(&m, "infobip", "duplicate"), 2.0);
    app.stop().await;
}

/// Infobip's text-to-speech messages ask for reports too; a voice report (its call fields) becomes a
/// voice status: an unanswered call is `no-answer`.
#[tokio::test]
async fn infobip_voice_reports_become_voice_statuses() {
    let server = infobip_server(Some(infobip_notify_url())).await;
    let mut app = TestApp::spawn(|c| infobip(c, &server)).await;
    let sent = send(&mut app, "voice").await;
    let id = sent["provider_message_id"].as_str().unwrap().to_owned();
    let request = &server.received_requests().await.unwrap()[0];
    assert_eq!(request.url.path(), "/tts/3/advanced");
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["messages"][0]["notifyUrl"], infobip_notify_url());

    let report = json!({
        "bulkId": "bulk-2", "messageId": id, "to": "14155550123", "from": "447491163443",
        "sentAt": "2026-12-07T12:00:00.000+0000", "doneAt": "2026-12-07T12:00:40.000+0000",
        "duration": 0, "fileDuration": 12.5, "mccMnc": "310090",
        "price": {"pricePerSecond": 0.0, "currency": "EUR"},
        "status": {"groupId": 2, "groupName": "UNDELIVERABLE", "id": 9, "name": "UNDELIVERABLE_NOT_DELIVERED",
                   "description": "-"},
        "error": {"groupId": 1, "groupName": "USER_ERRORS", "id": 5003, "name": "EC_VOICE_NO_ANSWER",
                  "description": "-", "permanent": true},
    });
    assert_eq!(
        infobip_post(&app, &format!("?token={INFOBIP_TOKEN}"), vec![report]).await,
        200
    );
    let event = app.next_event(10).await;
    assert_eq!(event["type"], "gd_send_voice_status");
    assert_eq!(event["job_id"], sent["job_id"]);
    assert_eq!(event["channel"], "voice");
    assert_eq!(event["status"], "no-answer");
    assert_eq!(event["error_code"], "EC_VOICE_NO_ANSWER");
    assert_documented(&event);
    let m = app.metrics().await;
    assert_eq!(delivery(&m, "voice", "infobip", "no-answer"), 1.0, "{m}");
    assert_eq!(taken(&m, "infobip", "final"), 1.0);
    app.stop().await;
}

// --- Off ------------------------------------------------------------------------------------------------

/// Without `status_callback_url`, no message asks for reports (the test servers refuse callback fields
/// then) and the routes answer 404.
#[tokio::test]
async fn without_status_callback_urls_nothing_is_asked_and_the_routes_are_not_there() {
    let vonage_api = vonage_server(None).await;
    let infobip_api = infobip_server(None).await;
    let mut app = TestApp::spawn(|c| {
        infobip(c, &infobip_api);
        c.infobip.status_callback_url = None;
        vonage(c, &vonage_api, VonageSignatureMethod::Md5hash);
        c.vonage.status_callback_url = None;
    })
    .await;
    assert_eq!(send(&mut app, "sms").await["provider"], "vonage");
    assert_eq!(send(&mut app, "voice").await["provider"], "infobip");
    for route in ["vonage", "plivo", "infobip"] {
        let status = reqwest::Client::new()
            .post(app.url(&format!("/providers/{route}/status")))
            .body("x=1")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404, "{route}");
    }
    app.stop().await;

    let plivo_api = plivo_server(None).await;
    let mut app = TestApp::spawn(|c| {
        plivo(c, &plivo_api);
        c.plivo.status_callback_url = None;
    })
    .await;
    assert_eq!(send(&mut app, "sms").await["provider"], "plivo");
    app.stop().await;
}

/// The logs (at trace level) of a herald process taking reports, refused and not, show no number, code,
/// token or body.
#[tokio::test]
async fn reports_leave_no_number_code_token_or_body_in_the_log() {
    let server = infobip_server(Some(infobip_notify_url())).await;
    let mut broker = helpers::Broker::new(|c| infobip(c, &server)).await;
    let mut env = helpers::process_env(&broker.config);
    env.push(("RUST_LOG".into(), "trace".into()));
    let mut herald = helpers::HeraldProcess::start(&env);
    let logs = herald.logs();
    let http = logs
        .lines()
        .find(|l| l.contains("http listening"))
        .and_then(|l| l.split("addr=").nth(1))
        .map(|a| a.trim().to_owned())
        .unwrap_or_else(|| panic!("no http address in the log:\n{logs}"));
    broker.publish(&job("sms")).await;
    let sent = broker.next_outcome(20).await;
    let id = sent["provider_message_id"].as_str().unwrap().to_owned();
    let report = sms_report(
        &id,
        (2, "UNDELIVERABLE"),
        "UNDELIVERABLE_NOT_DELIVERED",
        (27, "HANDSET_ERRORS", "EC_ABSENT_SUBSCRIBER"),
    );
    let post = |query: String| {
        let body = json!({"results": [report.clone()]});
        let url = format!("http://{http}/providers/infobip/status{query}");
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    for _ in 0..3 {
        assert_eq!(post("?token=wrong-token-value".into()).await, 403);
    }
    assert_eq!(post(format!("?token={INFOBIP_TOKEN}")).await, 200);
    let event = broker.next_event(10).await;
    assert_eq!(event["type"], "gd_send_sms_status");
    assert_eq!(herald.terminate(), Some(0));
    let logs = herald.logs();
    for secret in [
        "4155550123",
        "482913",
        INFOBIP_TOKEN,
        "wrong-token-value",
        "infobip-key",
        "UNDELIVERABLE_NOT_DELIVERED",
        "bulk-1",
    ] {
        if let Some(at) = logs.find(secret) {
            let line = logs[..at].rsplit('\n').next().unwrap_or_default();
            panic!("`{secret}` is in the log: {line}…");
        }
    }
}
