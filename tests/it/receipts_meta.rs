//! WhatsApp delivery receipts (docs/receipts.md "Meta (WhatsApp)"): a WhatsApp message sent through Twilio
//! hears its statuses on Twilio's status route, where `read` is delivered; one sent through Meta hears them
//! on `/providers/meta/status`, signed with `X-Hub-Signature-256`.

use crate::helpers::twilio_api::TwilioApi;
use crate::helpers::{TestApp, job, metric, twilio};
use serde_json::Value;
use wiremock::{Mock, MockServer};

const TWILIO_CALLBACK: &str = "https://herald.example.test/providers/twilio/status";
const CONTENT_SID: &str = "HX0123456789abcdef0123456789abcdef";

/// A receipt event matches its schema in docs/asyncapi.yaml, and carries nothing personal.
fn assert_documented(event: &Value) {
    assert_documented_as(event, "StatusEvent");
}

/// `event` matches `schema` of docs/asyncapi.yaml, and carries nothing personal.
pub fn assert_documented_as(event: &Value, schema: &str) {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/asyncapi.yaml")).unwrap();
    let doc: Value = serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&doc).unwrap()).unwrap();
    let schema = serde_json::json!({"$ref": format!("#/components/schemas/{schema}"), "components": doc["components"]});
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let errors: Vec<String> = validator.iter_errors(event).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{event}");
    let text = event.to_string();
    for secret in ["4155550123", "482913", "test-auth-token", "meta-app-secret"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

fn twilio_message_status(sid: &str, status: &str) -> Vec<(String, String)> {
    [
        ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
        ("ApiVersion", "2010-04-01"),
        ("From", "whatsapp:+15005550007"),
        ("To", "whatsapp:+14155550123"),
        ("MessageSid", sid),
        ("SmsSid", sid),
        ("MessageStatus", status),
        ("SmsStatus", status),
        ("ChannelPrefix", "whatsapp"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

async fn twilio_callback(app: &TestApp, params: &[(String, String)]) -> u16 {
    let signature = herald::providers::twilio::signature(b"test-auth-token", TWILIO_CALLBACK, params);
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    reqwest::Client::new()
        .post(format!("http://{}/providers/twilio/status", app.http))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", signature)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Twilio's WhatsApp StatusCallback: `read` (which may come without `delivered`) is delivered, evented
/// once as `gd_send_whatsapp_status`; a late `delivered` changes nothing.
#[tokio::test]
async fn a_whatsapp_message_through_twilio_is_delivered_by_its_read_receipt_once() {
    let api = TwilioApi::new("AC0123456789abcdef0123456789abcdef", "test-auth-token");
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(api.clone())
        .mount(&server)
        .await;
    let mut app = TestApp::spawn(|c| {
        twilio(c, &server.uri());
        c.twilio.status_callback_url = Some(TWILIO_CALLBACK.parse().unwrap());
        c.twilio.whatsapp_from = Some(herald::job::PhoneNumber::parse("+15005550007").unwrap());
        c.twilio.whatsapp_content_sid = CONTENT_SID.into();
        c.channels.whatsapp = Some(vec![herald::config::ProviderKind::Twilio]);
    })
    .await;
    app.publish(&job("whatsapp")).await;
    let sent = app.next_outcome(20).await;
    assert_eq!(sent["type"], "gd_send_whatsapp", "{sent}");
    assert_eq!(sent["provider"], "twilio");
    assert_eq!(api.violations(), Vec::<String>::new());
    let sid = sent["provider_message_id"].as_str().unwrap().to_owned();
    assert_eq!(twilio_callback(&app, &twilio_message_status(&sid, "sent")).await, 200);
    assert_eq!(app.try_next_event(1).await, None);
    assert_eq!(twilio_callback(&app, &twilio_message_status(&sid, "read")).await, 200);
    let event = app.next_event(10).await;
    assert_eq!(event["type"], "gd_send_whatsapp_status", "{event}");
    assert_eq!(event["channel"], "whatsapp");
    assert_eq!(event["status"], "delivered");
    assert_eq!(event["provider"], "twilio");
    assert_eq!(event["job_id"], sent["job_id"]);
    assert_documented(&event);
    assert_eq!(
        twilio_callback(&app, &twilio_message_status(&sid, "delivered")).await,
        200
    );
    assert_eq!(app.try_next_event(1).await, None);
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"gd_send_delivery_total{channel="whatsapp",country="1",provider="twilio",status="delivered"}"#
        ),
        1.0,
        "{m}"
    );
    app.stop().await;
}

const APP_SECRET: &str = "meta-app-secret";
const VERIFY_TOKEN: &str = "meta-verify-token";

/// `sha256=<hex>` of `body` keyed with `secret`, computed by Python's `hmac` (an implementation that is not
/// herald's).
fn python_signature(secret: &str, body: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import hashlib, hmac, sys; \
             print('sha256=' + hmac.new(sys.argv[1].encode(), sys.stdin.buffer.read(), hashlib.sha256).hexdigest())",
            secret,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (tests/it need it)");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A status webhook as Meta posts it (Cloud API webhooks, `statuses` of a `messages` change).
fn meta_webhook(id: &str, status: &str, error: Option<u64>) -> Vec<u8> {
    let mut s = serde_json::json!({
        "id": id, "status": status, "timestamp": "1750263773", "recipient_id": "14155550123",
        "conversation": {"id": "CONVERSATION_ID", "origin": {"type": "authentication"}},
        "pricing": {"billable": true, "pricing_model": "PMP", "category": "authentication"},
    });
    if let Some(code) = error {
        s["errors"] = serde_json::json!([{"code": code, "title": "Message undeliverable",
            "message": "Message undeliverable", "error_data": {"details": "Message Undeliverable."}}]);
    }
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "statuses": [s],
        }}]}],
    })
    .to_string()
    .into_bytes()
}

async fn post_meta(http: &str, body: &[u8], signature: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new()
        .post(format!("http://{http}/providers/meta/status"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(s) = signature {
        request = request.header("X-Hub-Signature-256", s);
    }
    request.send().await.unwrap().status().as_u16()
}

async fn signed_meta(http: &str, body: &[u8]) -> u16 {
    post_meta(http, body, Some(&python_signature(APP_SECRET, body))).await
}

/// A WhatsApp job sent through the documentation-built Meta; returns its outcome event.
async fn send_through_meta(app: &mut TestApp) -> Value {
    app.publish(&job("whatsapp")).await;
    let sent = app.next_outcome(20).await;
    assert_eq!(sent["type"], "gd_send_whatsapp", "{sent}");
    assert_eq!(sent["provider"], "meta");
    sent
}

async fn meta_app(customize: impl FnOnce(&mut herald::config::Config)) -> (TestApp, MockServer) {
    let (_api, server) = crate::provider_meta::meta_api().await;
    let app = TestApp::spawn(|c| {
        c.meta = crate::provider_meta::config(&server.uri());
        c.channels.whatsapp = Some(vec![herald::config::ProviderKind::Meta]);
        customize(c);
    })
    .await;
    (app, server)
}

/// Meta's subscription handshake: `hub.challenge` echoed as text for the configured token, 403 otherwise;
/// 404 while `meta.app_secret` is unset (no receipts).
#[tokio::test]
async fn the_subscription_handshake_echoes_the_challenge_only_for_the_verify_token() {
    let (app, _server) = meta_app(|_| {}).await;
    let get = |query: String| {
        let url = format!("http://{}/providers/meta/status?{query}", app.http);
        async move { reqwest::get(url).await.unwrap() }
    };
    let ok = get(format!(
        "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={VERIFY_TOKEN}"
    ))
    .await;
    assert_eq!(ok.status().as_u16(), 200);
    assert!(
        ok.headers()["content-type"].to_str().unwrap().starts_with("text/plain"),
        "{:?}",
        ok.headers()
    );
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    for query in [
        "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=wrong".to_owned(),
        "hub.mode=subscribe&hub.challenge=1158201444".to_owned(),
        format!("hub.mode=unsubscribe&hub.challenge=1158201444&hub.verify_token={VERIFY_TOKEN}"),
        String::new(),
    ] {
        let refused = get(query.clone()).await;
        assert_eq!(refused.status().as_u16(), 403, "{query}");
        assert!(!refused.text().await.unwrap().contains("1158201444"));
    }
    let (off, _server) = meta_app(|c| c.meta.app_secret = herald::config::Secret::new("")).await;
    let url = format!(
        "http://{}/providers/meta/status?hub.mode=subscribe&hub.challenge=1&hub.verify_token={VERIFY_TOKEN}",
        off.http
    );
    assert_eq!(reqwest::get(url).await.unwrap().status().as_u16(), 404);
    let body = meta_webhook("wamid.X", "delivered", None);
    assert_eq!(signed_meta(&off.http.to_string(), &body).await, 404);
}

/// Signed webhooks move a message forward only: `sent` is intermediate, `read` is delivered (evented once as
/// `gd_send_whatsapp_status`), a later `delivered` or `failed` changes nothing; a missing or wrong signature
/// is 401 and changes nothing.
#[tokio::test]
async fn signed_statuses_event_once_and_unsigned_ones_change_nothing() {
    let (mut app, _server) = meta_app(|_| {}).await;
    let sent = send_through_meta(&mut app).await;
    let wamid = crate::helpers::meta_api::wamid_of(&sent);
    let http = app.http.to_string();
    assert_eq!(signed_meta(&http, &meta_webhook(&wamid, "sent", None)).await, 200);
    assert_eq!(app.try_next_event(1).await, None);
    let read = meta_webhook(&wamid, "read", None);
    // Unsigned, signed with another secret, signed over another body, a bare hex: refused.
    assert_eq!(post_meta(&http, &read, None).await, 401);
    assert_eq!(
        post_meta(&http, &read, Some(&python_signature("other-secret", &read))).await,
        401
    );
    let other_body = meta_webhook(&wamid, "failed", Some(131026));
    assert_eq!(
        post_meta(&http, &other_body, Some(&python_signature(APP_SECRET, &read))).await,
        401
    );
    let bare = python_signature(APP_SECRET, &read)
        .trim_start_matches("sha256=")
        .to_owned();
    assert_eq!(post_meta(&http, &read, Some(&bare)).await, 401);
    assert_eq!(app.try_next_event(1).await, None, "a refused webhook changed something");
    // Upper-case hex is the same signature.
    let upper = python_signature(APP_SECRET, &read)
        .to_uppercase()
        .replace("SHA256=", "sha256=");
    assert_eq!(post_meta(&http, &read, Some(&upper)).await, 200);
    let event = app.next_event(10).await;
    assert_eq!(event["type"], "gd_send_whatsapp_status", "{event}");
    assert_eq!(event["status"], "delivered");
    assert_eq!(event["provider"], "meta");
    assert_eq!(
        event["provider_message_id"],
        crate::helpers::meta_api::published_id(&wamid).as_str()
    );
    assert_eq!(event["channel"], "whatsapp");
    assert_eq!(event["job_id"], sent["job_id"]);
    assert_documented(&event);
    for status in ["delivered", "read", "sent", "failed"] {
        assert_eq!(
            signed_meta(&http, &meta_webhook(&wamid, status, Some(131026))).await,
            200
        );
    }
    assert_eq!(app.try_next_event(1).await, None);
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"gd_send_delivery_total{channel="whatsapp",country="1",provider="meta",status="delivered"}"#
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"herald_receipts_rejected_total{provider="meta",reason="signature"}"#
        ),
        4.0
    );
    // Not Meta's JSON, signed: 400; a wamid herald never sent: 200, unknown.
    assert_eq!(signed_meta(&http, b"{\"entry\": 5}").await, 400);
    assert_eq!(
        signed_meta(&http, &meta_webhook("wamid.NEVERSENT", "delivered", None)).await,
        200
    );
    let m = app.metrics().await;
    assert_eq!(
        metric(&m, r#"herald_receipts_total{provider="meta",result="unknown"}"#),
        1.0
    );
    app.stop().await;
}

/// `failed` carries Meta's code (`errors[0].code`) and settles the job as unverified for the guard: the
/// MFA server's later feedback counts nothing; a delivered job's feedback is counted.
#[tokio::test]
async fn a_failed_status_carries_metas_code_and_counts_as_unverified_for_the_guard() {
    let (mut app, _server) = meta_app(|_| {}).await;
    let failed = send_through_meta(&mut app).await;
    let delivered = send_through_meta(&mut app).await;
    let http = app.http.to_string();
    let id = |e: &Value| crate::helpers::meta_api::wamid_of(e);
    assert_eq!(
        signed_meta(&http, &meta_webhook(&id(&failed), "failed", Some(131026))).await,
        200
    );
    let event = app.next_event(10).await;
    assert_eq!(event["status"], "failed", "{event}");
    assert_eq!(event["error_code"], "131026");
    assert_documented(&event);
    assert_eq!(
        signed_meta(&http, &meta_webhook(&id(&delivered), "delivered", None)).await,
        200
    );
    assert_eq!(app.next_event(10).await["status"], "delivered");
    for e in [&failed, &delivered] {
        let body = serde_json::json!({"job_id": e["job_id"], "verified": true}).to_string();
        app.publish_feedback(body.as_bytes(), None).await;
    }
    let m = app
        .wait_metric(r#"gd_send_verified_total{channel="whatsapp",country="1"}"#, 1.0)
        .await;
    let m = if metric(&m, r#"herald_feedback_total{result="duplicate"}"#) >= 1.0 {
        m
    } else {
        app.wait_metric(r#"herald_feedback_total{result="duplicate"}"#, 1.0)
            .await
    };
    assert_eq!(
        metric(&m, r#"gd_send_verified_total{channel="whatsapp",country="1"}"#),
        1.0,
        "{m}"
    );
    app.stop().await;
}

/// With Redis, a replica takes the webhook of a message another one sent; the event is still once.
#[tokio::test]
async fn a_second_replica_takes_metas_webhook_and_the_event_is_once() {
    let (mut app, _server) = meta_app(|c| c.redis.url = herald::config::Secret::new("redis://127.0.0.1:6379")).await;
    let sent = send_through_meta(&mut app).await;
    let wamid = crate::helpers::meta_api::wamid_of(&sent);
    let replica = crate::helpers::Replica::spawn(&app.config).await;
    let at_replica = replica.http.to_string();
    assert_eq!(
        signed_meta(&at_replica, &meta_webhook(&wamid, "delivered", None)).await,
        200
    );
    let event = app.next_event(10).await;
    assert_eq!(event["type"], "gd_send_whatsapp_status", "{event}");
    assert_eq!(event["job_id"], sent["job_id"]);
    let http = app.http.to_string();
    assert_eq!(signed_meta(&http, &meta_webhook(&wamid, "read", None)).await, 200);
    assert_eq!(signed_meta(&http, &meta_webhook(&wamid, "sent", None)).await, 200);
    assert_eq!(app.try_next_event(1).await, None);
    replica.stop().await;
    app.stop().await;
}

/// Whether `text` holds `digits` in clear or inside a base64 run (standard or URL-safe alphabet, padded or
/// not, read from any of its first four offsets), as Meta's wamids carry the recipient's number.
fn holds_number(text: &str, digits: &str) -> bool {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    if text.contains(digits) {
        return true;
    }
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '-' | '_');
    text.split(|c: char| !is_b64(c))
        .filter(|run| run.len() >= 8)
        .any(|run| {
            (0..4).any(|skip| {
                let mut part = &run[skip..];
                part = &part[..part.len() - part.len() % 4];
                [STANDARD_NO_PAD, URL_SAFE_NO_PAD].iter().any(|engine| {
                    engine
                        .decode(part)
                        .is_ok_and(|bytes| bytes.windows(digits.len()).any(|w| w == digits.as_bytes()))
                })
            })
        })
}

/// Meta's `wamid` is base64 that spells the recipient's number: its documented example
/// `wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDNkVFNjVFM0MyMEQ0RDIzRTEA` decodes to `…16503879439…`, and the test
/// server's ids are built the same way. Published as `provider_message_id`, it is the full number in every
/// `gd_send_whatsapp` and `gd_send_whatsapp_status` event (and their stdout lines), which
/// docs/jobs-and-events.md forbids at any level. Fails while herald publishes Meta's id as it is.
#[tokio::test]
async fn no_whatsapp_event_carries_the_number_inside_metas_message_id() {
    assert!(holds_number(
        "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDNkVFNjVFM0MyMEQ0RDIzRTEA",
        "6503879439"
    ));
    let (mut app, _server) = meta_app(|_| {}).await;
    let sent = send_through_meta(&mut app).await;
    let wamid = crate::helpers::meta_api::wamid(1);
    assert!(
        holds_number(&wamid, "4155550123"),
        "the test server's wamid is not Meta's shape"
    );
    let http = app.http.to_string();
    assert_eq!(signed_meta(&http, &meta_webhook(&wamid, "delivered", None)).await, 200);
    let status = app.next_event(10).await;
    assert_eq!(status["type"], "gd_send_whatsapp_status", "{status}");
    for event in [&sent, &status] {
        assert!(
            !holds_number(&event.to_string(), "4155550123"),
            "the recipient's number, base64 in Meta's id, is published: {event}"
        );
    }
    app.stop().await;
}
