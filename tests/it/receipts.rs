//! Delivery receipts (docs/receipts.md) against the real broker: herald asks a Twilio-shaped local server for
//! status callbacks, and takes signed callbacks the way Twilio sends them (a form with `MessageSid`,
//! `MessageStatus`, `ErrorCode`, the numbers…). Final statuses become exactly one event and one count per
//! job; everything else changes nothing.

use std::time::Duration;

use crate::helpers;
use crate::helpers::{Broker, HeraldProcess, TestApp, form, job, metric, process_env, twilio};
use serde_json::{Value, json};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// herald's public URL as an operator configures it (Twilio signs over this, not herald's local address).
pub(crate) const CALLBACK: &str = "https://herald.example.test/providers/twilio/status";
const TOKEN: &str = "test-auth-token";
const REDIS: &str = "redis://127.0.0.1:6379";

fn sid(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A Twilio-shaped server answering every Messages.json and Calls.json with `sid`.
async fn twilio_server(sid: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/2010-04-01/Accounts/AC[0-9a-f]+/(Messages|Calls)\.json$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"sid": sid, "status": "queued"})))
        .mount(&server)
        .await;
    server
}

fn with_receipts(c: &mut herald::config::Config, server: &MockServer) {
    twilio(c, &server.uri());
    c.twilio.status_callback_url = Some(CALLBACK.parse().unwrap());
}

/// A message status callback as Twilio posts it.
pub(crate) fn message_status(sid: &str, status: &str, error_code: Option<&str>) -> Vec<(String, String)> {
    let mut params = vec![
        ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
        ("ApiVersion", "2010-04-01"),
        ("From", "+15005550006"),
        ("To", "+14155550123"),
        ("MessageSid", sid),
        ("SmsSid", sid),
        ("MessageStatus", status),
        ("SmsStatus", status),
    ];
    if let Some(code) = error_code {
        params.push(("ErrorCode", code));
    }
    params.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

pub(crate) fn call_status(sid: &str, status: &str) -> Vec<(String, String)> {
    [
        ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", sid),
        ("CallStatus", status),
        ("Direction", "outbound-api"),
        ("From", "+15005550006"),
        ("To", "+14155550123"),
        ("CallDuration", "14"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn encode(params: &[(String, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

/// Posts a form body with `signature` (or none) to herald's Twilio route; returns the status code.
async fn post(http: &str, body: impl Into<reqwest::Body>, signature: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new()
        .post(format!("http://{http}/providers/twilio/status"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(s) = signature {
        request = request.header("X-Twilio-Signature", s);
    }
    request.send().await.unwrap().status().as_u16()
}

/// Posts `params` signed as Twilio signs them for [`CALLBACK`].
pub(crate) async fn callback(http: &str, params: &[(String, String)]) -> u16 {
    let signature = herald::providers::twilio::signature(TOKEN.as_bytes(), CALLBACK, params);
    post(http, encode(params), Some(&signature)).await
}

fn host(app: &TestApp) -> String {
    app.http.to_string()
}

/// Sends one job through Twilio and returns its outcome event.
async fn send(app: &mut TestApp, channel: &str) -> Value {
    let j = job(channel);
    app.publish(&j).await;
    let event = app.next_outcome(20).await;
    assert_eq!(event["job_id"], j["id"]);
    assert!(event.get("error").is_none(), "{event}");
    event
}

/// A receipt event matches its schema in docs/asyncapi.yaml.
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
}

fn assert_no_personal_data(event: &Value) {
    assert_documented(event);
    let text = event.to_string();
    for secret in ["4155550123", "482913", "test-auth-token"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

#[tokio::test]
async fn status_callback_is_requested_and_final_statuses_event_once() {
    let message = sid("SM");
    let server = twilio_server(&message).await;
    let mut app = TestApp::spawn(|c| with_receipts(c, &server)).await;
    let sent = send(&mut app, "sms").await;
    assert_eq!(sent["provider_message_id"], message.as_str());
    let request = &server.received_requests().await.unwrap()[0];
    assert_eq!(form(&request.body)["StatusCallback"], CALLBACK);

    // An intermediate status: taken, not evented.
    assert_eq!(
        callback(&host(&app), &message_status(&message, "sent", None)).await,
        200
    );
    assert_eq!(app.try_next_event(1).await, None);
    // A call's status for a message, and a word outside the vocabulary (an inbound message's status):
    // ignored, nothing moves.
    for status in ["completed", "receiving"] {
        assert_eq!(
            callback(&host(&app), &message_status(&message, status, None)).await,
            200
        );
    }
    // The final one: one event.
    assert_eq!(
        callback(&host(&app), &message_status(&message, "delivered", None)).await,
        200
    );
    let event = app.next_event(10).await;
    assert_eq!(event["type"], "gd_send_sms_status");
    assert_eq!(event["job_id"], sent["job_id"]);
    assert_eq!(event["status"], "delivered");
    assert_eq!(event["provider"], "twilio");
    assert_eq!(event["provider_message_id"], message.as_str());
    assert_eq!(event["country"], "1");
    assert_eq!(event["recipient"], "+1415*****23");
    assert_eq!(event["channel"], "sms");
    assert!(event.get("error_code").is_none(), "{event}");
    chrono::DateTime::parse_from_rfc3339(event["date"].as_str().unwrap()).unwrap();
    assert_no_personal_data(&event);
    // A repeat, a late intermediate status and a contradicting final one: nothing more.
    for status in ["delivered", "sent", "undelivered"] {
        assert_eq!(
            callback(&host(&app), &message_status(&message, status, None)).await,
            200
        );
    }
    assert_eq!(app.try_next_event(1).await, None);

    let m = app.metrics().await;
    let delivered = r#"gd_send_delivery_total{channel="sms",country="1",provider="twilio",status="delivered"}"#;
    assert_eq!(metric(&m, delivered), 1.0, "{m}");
    assert_eq!(
        metric(
            &m,
            r#"gd_send_delivery_total{channel="sms",country="1",provider="twilio",status="undelivered"}"#
        ),
        0.0
    );
    assert_eq!(
        metric(&m, r#"gd_send_delivery_seconds_count{channel="sms",provider="twilio"}"#),
        1.0
    );
    for (result, n) in [
        ("final", 1.0),
        ("intermediate", 1.0),
        ("stale", 1.0),
        ("duplicate", 2.0),
        ("ignored", 2.0),
    ] {
        let name = format!(r#"herald_receipts_total{{provider="twilio",result="{result}"}}"#);
        assert_eq!(metric(&m, &name), n, "{name}");
    }
    app.stop().await;
}

/// Twilio's `partially_delivered` (twilio-oai `message_enum_status`) is final: evented once, as
/// `undelivered` (the part with the code may be missing), and counted as unverified. Failed before: it was
/// outside the vocabulary and the job never got a final status.
#[tokio::test]
async fn partially_delivered_is_a_final_status_evented_as_undelivered() {
    let message = sid("SM");
    let server = twilio_server(&message).await;
    let mut app = TestApp::spawn(|c| with_receipts(c, &server)).await;
    let sent = send(&mut app, "sms").await;
    let partly = message_status(&message, "partially_delivered", Some("30008"));
    assert_eq!(callback(&host(&app), &partly).await, 200);
    let event = app.next_event(10).await;
    assert_eq!(event["type"], "gd_send_sms_status");
    assert_eq!(event["job_id"], sent["job_id"]);
    assert_eq!(event["status"], "undelivered");
    assert_eq!(event["error_code"], "30008");
    // Final: a later `delivered` moves nothing.
    assert_eq!(
        callback(&host(&app), &message_status(&message, "delivered", None)).await,
        200
    );
    assert_eq!(app.try_next_event(1).await, None);
    let m = app.metrics().await;
    let undelivered = r#"gd_send_delivery_total{channel="sms",country="1",provider="twilio",status="undelivered"}"#;
    assert_eq!(metric(&m, undelivered), 1.0, "{m}");
    app.stop().await;
}

/// herald's public URL written with a port: Twilio may sign it with the port or without, and herald takes
/// both as twilio-python's `RequestValidator.validate` does (failed before: only the URL as written).
#[tokio::test]
async fn a_callback_signed_over_the_url_without_its_port_is_taken() {
    const WITH_PORT: &str = "https://herald.example.test:8443/providers/twilio/status";
    let message = sid("SM");
    let server = twilio_server(&message).await;
    let mut app = TestApp::spawn(|c| {
        twilio(c, &server.uri());
        c.twilio.status_callback_url = Some(WITH_PORT.parse().unwrap());
    })
    .await;
    send(&mut app, "sms").await;
    let params = message_status(&message, "delivered", None);
    let sign = |url: &str| herald::providers::twilio::signature(TOKEN.as_bytes(), url, &params);
    // Another port: refused.
    let other = sign("https://herald.example.test:8444/providers/twilio/status");
    assert_eq!(post(&host(&app), encode(&params), Some(&other)).await, 403);
    let without_port = sign("https://herald.example.test/providers/twilio/status");
    assert_eq!(post(&host(&app), encode(&params), Some(&without_port)).await, 200);
    let event = app.next_event(10).await;
    assert_eq!(event["status"], "delivered");
    app.stop().await;
}

#[tokio::test]
async fn undelivered_carries_twilios_error_code_and_calls_event_as_voice() {
    let message = sid("SM");
    let server = twilio_server(&message).await;
    let mut app = TestApp::spawn(|c| with_receipts(c, &server)).await;
    // Only receipts of voice calls: a queue bound to their routing key alone.
    let (_, mut voice_only) = {
        let (queue, consumer) = herald::broker::private_queue(&app.channel, "voice-status", None)
            .await
            .unwrap();
        app.channel
            .queue_bind(
                queue.clone(),
                app.config.amqp.events_exchange.as_str().into(),
                "gd_send_voice_status".into(),
                Default::default(),
                Default::default(),
            )
            .await
            .unwrap();
        (queue, consumer)
    };
    send(&mut app, "sms").await;
    assert_eq!(
        callback(&host(&app), &message_status(&message, "undelivered", Some("30008"))).await,
        200
    );
    let event = app.next_event(10).await;
    assert_eq!(event["type"], "gd_send_sms_status");
    assert_eq!(event["status"], "undelivered");
    assert_eq!(event["error_code"], "30008");

    // A call: Calls.json asks for the callback too; `completed` arrives as CallStatus.
    server.reset().await;
    let call = sid("CA");
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"sid": call, "status": "queued"})))
        .mount(&server)
        .await;
    let placed = send(&mut app, "voice").await;
    let request = &server.received_requests().await.unwrap()[0];
    assert!(request.url.path().ends_with("/Calls.json"));
    assert_eq!(form(&request.body)["StatusCallback"], CALLBACK);
    assert_eq!(callback(&host(&app), &call_status(&call, "completed")).await, 200);
    let event = app.next_event(10).await;
    assert_eq!(event["type"], "gd_send_voice_status");
    assert_eq!(event["status"], "completed");
    assert_eq!(event["job_id"], placed["job_id"]);
    assert_eq!(event["channel"], "voice");
    assert_no_personal_data(&event);
    use futures_util::StreamExt;
    let routed = tokio::time::timeout(Duration::from_secs(5), voice_only.next())
        .await
        .expect("the voice receipt is routed by its type")
        .unwrap()
        .unwrap();
    let routed: Value = serde_json::from_slice(&routed.data).unwrap();
    assert_eq!(routed["job_id"], placed["job_id"]);

    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"gd_send_delivery_total{channel="sms",country="1",provider="twilio",status="undelivered"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            r#"gd_send_delivery_total{channel="voice",country="1",provider="twilio",status="completed"}"#
        ),
        1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn unsigned_tampered_or_oversized_callbacks_are_refused_and_change_nothing() {
    let message = sid("SM");
    let server = twilio_server(&message).await;
    let mut app = TestApp::spawn(|c| with_receipts(c, &server)).await;
    send(&mut app, "sms").await;
    let http = host(&app);
    let params = message_status(&message, "undelivered", Some("30008"));
    let good = herald::providers::twilio::signature(TOKEN.as_bytes(), CALLBACK, &params);

    // Signed for another URL.
    let other_url = herald::providers::twilio::signature(
        TOKEN.as_bytes(),
        "https://herald.example.test/providers/twilio/status?x=1",
        &params,
    );
    assert_eq!(post(&http, encode(&params), Some(&other_url)).await, 403);
    // A key renamed after signing.
    let mut renamed = params.clone();
    renamed[6].0 = "MessageStatusX".into();
    assert_eq!(post(&http, encode(&renamed), Some(&good)).await, 403);
    // A value changed after signing.
    let mut changed = params.clone();
    changed[6].1 = "delivered".into();
    assert_eq!(post(&http, encode(&changed), Some(&good)).await, 403);
    // A signature with one character changed, one by another token, none at all.
    let mut flipped = good.clone().into_bytes();
    flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        post(&http, encode(&params), Some(std::str::from_utf8(&flipped).unwrap())).await,
        403
    );
    let other_token = herald::providers::twilio::signature(b"another-token", CALLBACK, &params);
    assert_eq!(post(&http, encode(&params), Some(&other_token)).await, 403);
    assert_eq!(post(&http, encode(&params), None).await, 403);
    // 1 MB, signed or not, is not read.
    let huge = format!("{}&Padding={}", encode(&params), "x".repeat(1024 * 1024));
    assert_eq!(post(&http, huge, Some(&good)).await, 413);
    assert_eq!(
        app.try_next_event(1).await,
        None,
        "a refused callback changed something"
    );

    // Nothing moved: the real callback is still the first final status.
    assert_eq!(post(&http, encode(&params), Some(&good)).await, 200);
    let event = app.next_event(10).await;
    assert_eq!(event["status"], "undelivered");
    // A message herald never sent: taken (Twilio must not retry it) and counted.
    assert_eq!(
        callback(&http, &message_status(&sid("SM"), "delivered", None)).await,
        200
    );
    assert_eq!(app.try_next_event(1).await, None);

    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"herald_receipts_rejected_total{provider="twilio",reason="signature"}"#
        ),
        6.0
    );
    assert_eq!(
        metric(
            &m,
            r#"herald_receipts_rejected_total{provider="twilio",reason="too_large"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(&m, r#"herald_receipts_total{provider="twilio",result="unknown"}"#),
        1.0
    );
    assert_eq!(
        metric(&m, r#"herald_receipts_total{provider="twilio",result="final"}"#),
        1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn without_a_status_callback_url_nothing_is_asked_and_the_route_is_not_there() {
    let message = sid("SM");
    let server = twilio_server(&message).await;
    let mut app = TestApp::spawn(|c| {
        twilio(c, &server.uri());
    })
    .await;
    send(&mut app, "sms").await;
    let request = &server.received_requests().await.unwrap()[0];
    assert!(!form(&request.body).contains_key("StatusCallback"));
    assert_eq!(
        callback(&host(&app), &message_status(&message, "delivered", None)).await,
        404
    );
    assert_eq!(app.try_next_event(1).await, None);
    app.stop().await;
}

/// With Redis, any replica takes a callback for a message another one sent, and the event is still once.
#[tokio::test]
async fn a_second_replica_takes_the_callback_of_a_message_the_first_sent() {
    let message = sid("SM");
    let server = twilio_server(&message).await;
    let mut app = TestApp::spawn(|c| {
        with_receipts(c, &server);
        c.redis.url = herald::config::Secret::new(REDIS);
    })
    .await;
    let sent = send(&mut app, "sms").await;
    let replica = helpers::Replica::spawn(&app.config).await;
    let at_replica = replica.http.to_string();

    assert_eq!(
        callback(&at_replica, &message_status(&message, "sent", None)).await,
        200
    );
    assert_eq!(
        callback(&at_replica, &message_status(&message, "delivered", None)).await,
        200
    );
    let event = app.next_event(10).await;
    assert_eq!(event["type"], "gd_send_sms_status");
    assert_eq!(event["job_id"], sent["job_id"]);
    assert_eq!(event["recipient"], "+1415*****23");
    // The first replica hears the same status again (Twilio retrying at another pod): nothing more.
    assert_eq!(
        callback(&host(&app), &message_status(&message, "delivered", None)).await,
        200
    );
    assert_eq!(
        callback(&host(&app), &message_status(&message, "sent", None)).await,
        200
    );
    assert_eq!(app.try_next_event(1).await, None);

    let replica_metrics = reqwest::get(format!("http://{at_replica}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let delivered = r#"gd_send_delivery_total{channel="sms",country="1",provider="twilio",status="delivered"}"#;
    let first_metrics = app.metrics().await;
    assert_eq!(
        metric(&replica_metrics, delivered) + metric(&first_metrics, delivered),
        1.0
    );
    assert_eq!(
        metric(
            &first_metrics,
            r#"herald_receipts_total{provider="twilio",result="duplicate"}"#
        ),
        1.0
    );
    replica.stop().await;
    app.stop().await;
}

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The status key docs/receipts.md derives from `WEBHOOK_SECRET` (HMAC-SHA256 over "herald webhook status v1").
const WEBHOOK_STATUS_KEY: &str = "whsec_rLjHTJf4Rdxczsvyjk6H6/fWcJJbpIVr27b6Z36M9gw=";

/// herald sending SMS through a webhook endpoint that takes everything, `customize`d further.
async fn webhook_app(customize: impl FnOnce(&mut herald::config::Config)) -> (TestApp, MockServer) {
    let endpoint = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"message_id": "gw-1"})))
        .mount(&endpoint)
        .await;
    let app = TestApp::spawn(|c| {
        c.channels.sms = Some(vec![herald::config::ProviderKind::Webhook]);
        c.webhook.url = Some(endpoint.uri().parse().unwrap());
        c.webhook.secret = Some(WEBHOOK_SECRET.parse().unwrap());
        customize(c);
    })
    .await;
    (app, endpoint)
}

/// POSTs `body` to the webhook status route with Standard Webhooks headers, signed with `secret` unless
/// `signature` is given; the answer's status.
async fn post_webhook_status(
    url: &str,
    secret: &str,
    body: &[u8],
    id: &str,
    timestamp: u64,
    signature: Option<&str>,
) -> u16 {
    let key = secret
        .parse::<herald::config::WebhookKey>()
        .unwrap()
        .as_bytes()
        .to_vec();
    let signature = signature.map_or_else(
        || herald::providers::webhook::sign(&key, id, timestamp, body),
        str::to_owned,
    );
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn webhook_rejected(m: &str, reason: &str) -> f64 {
    metric(
        m,
        &format!(r#"herald_receipts_rejected_total{{provider="webhook",reason="{reason}"}}"#),
    )
}

/// The custom provider's receipts: Standard Webhooks-signed JSON keyed by job id, signed with the status
/// key derived from `webhook.secret` (docs/receipts.md).
#[tokio::test]
async fn webhook_receipts_need_a_valid_standard_webhooks_signature() {
    let (mut app, _endpoint) = webhook_app(|_| {}).await;
    let sent = send(&mut app, "sms").await;
    let job_id = sent["job_id"].as_str().unwrap().to_owned();
    let now = chrono::Utc::now().timestamp() as u64;
    let body =
        serde_json::to_vec(&json!({"job_id": job_id, "status": "failed", "error_code": "carrier_blocked"})).unwrap();
    let status_url = app.url("/providers/webhook/status");
    let post = |id: &'static str, timestamp: u64, signature: Option<&'static str>| {
        post_webhook_status(&status_url, WEBHOOK_STATUS_KEY, &body, id, timestamp, signature)
    };
    assert_eq!(post("rcpt-1", now, Some("v1,AAAA")).await, 401);
    assert_eq!(post("rcpt-1", now - 3600, None).await, 401);
    // Signed with webhook.secret itself, the key of herald's own requests: refused.
    assert_eq!(
        post_webhook_status(&status_url, WEBHOOK_SECRET, &body, "rcpt-1", now, None).await,
        401
    );
    assert_eq!(app.try_next_event(1).await, None);
    assert_eq!(post("rcpt-1", now, None).await, 200);
    let event = app.next_event(10).await;
    assert_eq!(event["type"], "gd_send_sms_status");
    assert_eq!(event["job_id"], job_id.as_str());
    assert_eq!(event["provider"], "webhook");
    assert_eq!(event["provider_message_id"], "gw-1");
    assert_eq!(event["status"], "failed");
    assert_eq!(event["error_code"], "carrier_blocked");
    assert_no_personal_data(&event);
    assert_eq!(post("rcpt-2", now, None).await, 200);
    assert_eq!(app.try_next_event(1).await, None);
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"gd_send_delivery_total{channel="sms",country="1",provider="webhook",status="failed"}"#
        ),
        1.0
    );
    assert_eq!(webhook_rejected(&m, "signature"), 3.0);
    app.stop().await;
}

/// A signed status callback replayed (same `webhook-id`, within its window) is refused and counted, even
/// re-sent before its first copy's status was final; another id is taken.
#[tokio::test]
async fn a_replayed_webhook_status_is_refused() {
    let (mut app, _endpoint) = webhook_app(|_| {}).await;
    let status_url = app.url("/providers/webhook/status");
    let sent = send(&mut app, "sms").await;
    let job_id = sent["job_id"].as_str().unwrap().to_owned();
    let now = chrono::Utc::now().timestamp() as u64;
    let sent_status = serde_json::to_vec(&json!({"job_id": job_id, "status": "sent"})).unwrap();
    let delivered = serde_json::to_vec(&json!({"job_id": job_id, "status": "delivered"})).unwrap();
    let key = WEBHOOK_STATUS_KEY;
    assert_eq!(
        post_webhook_status(&status_url, key, &sent_status, "msg_a", now, None).await,
        200
    );
    // The same message again, byte for byte: a replay.
    assert_eq!(
        post_webhook_status(&status_url, key, &sent_status, "msg_a", now, None).await,
        409
    );
    assert_eq!(
        post_webhook_status(&status_url, key, &delivered, "msg_b", now, None).await,
        200
    );
    assert_eq!(app.next_event(10).await["status"], "delivered");
    assert_eq!(
        post_webhook_status(&status_url, key, &delivered, "msg_b", now, None).await,
        409
    );
    assert_eq!(app.try_next_event(1).await, None);
    let m = app.metrics().await;
    assert_eq!(webhook_rejected(&m, "replay"), 2.0);
    assert_eq!(
        metric(&m, r#"herald_receipts_total{provider="webhook",result="intermediate"}"#),
        1.0
    );
    app.stop().await;
}

/// herald's own outbound webhook request (its body and Standard Webhooks headers, as the endpoint got
/// them) replayed to herald's status route: before, it passed the signature check (one key for both
/// directions); now it is refused as unsigned.
#[tokio::test]
async fn heralds_own_webhook_request_replayed_to_its_status_route_is_refused() {
    let (mut app, endpoint) = webhook_app(|_| {}).await;
    send(&mut app, "sms").await;
    let requests = endpoint.received_requests().await.unwrap();
    let sent = requests.last().expect("herald called the endpoint");
    let mut replay = reqwest::Client::new().post(app.url("/providers/webhook/status"));
    for (name, value) in &sent.headers {
        if name.as_str().starts_with("webhook-") || name == "content-type" {
            replay = replay.header(name.as_str(), value.to_str().unwrap());
        }
    }
    let answer = replay.body(sent.body.clone()).send().await.unwrap();
    assert_eq!(answer.status(), 401);
    let m = app.metrics().await;
    assert_eq!(webhook_rejected(&m, "signature"), 1.0);
    assert_eq!(webhook_rejected(&m, "malformed"), 0.0);
    app.stop().await;
}

/// `webhook.status_accepts_secret` (the older form, opt-in): a status signed with `webhook.secret` is taken,
/// and one signed with the status key still is.
#[tokio::test]
async fn the_older_form_signed_with_the_webhook_secret_is_taken_when_opted_in() {
    let (mut app, _endpoint) = webhook_app(|c| c.webhook.status_accepts_secret = true).await;
    let status_url = app.url("/providers/webhook/status");
    let sent = send(&mut app, "sms").await;
    let job_id = sent["job_id"].as_str().unwrap().to_owned();
    let now = chrono::Utc::now().timestamp() as u64;
    let sent_status = serde_json::to_vec(&json!({"job_id": job_id, "status": "sent"})).unwrap();
    let delivered = serde_json::to_vec(&json!({"job_id": job_id, "status": "delivered"})).unwrap();
    assert_eq!(
        post_webhook_status(&status_url, WEBHOOK_SECRET, &sent_status, "old-1", now, None).await,
        200
    );
    assert_eq!(
        post_webhook_status(&status_url, WEBHOOK_STATUS_KEY, &delivered, "new-1", now, None).await,
        200
    );
    assert_eq!(app.next_event(10).await["status"], "delivered");
    app.stop().await;
}

/// `webhook.status_secret` set: it is the status key, and the derived one is not.
#[tokio::test]
async fn a_configured_status_secret_replaces_the_derived_key() {
    const OWN: &str = "whsec_c3RhdHVzLXNlY3JldC1vZi10aGUtcmVjZWl2ZXI=";
    let (mut app, _endpoint) = webhook_app(|c| c.webhook.status_secret = Some(OWN.parse().unwrap())).await;
    let status_url = app.url("/providers/webhook/status");
    let sent = send(&mut app, "sms").await;
    let job_id = sent["job_id"].as_str().unwrap().to_owned();
    let now = chrono::Utc::now().timestamp() as u64;
    let delivered = serde_json::to_vec(&json!({"job_id": job_id, "status": "delivered"})).unwrap();
    assert_eq!(
        post_webhook_status(&status_url, WEBHOOK_STATUS_KEY, &delivered, "k-1", now, None).await,
        401
    );
    assert_eq!(
        post_webhook_status(&status_url, OWN, &delivered, "k-2", now, None).await,
        200
    );
    assert_eq!(app.next_event(10).await["status"], "delivered");
    app.stop().await;
}

/// herald as a process: its receipt event on stdout, and nothing of a callback (numbers, code, body) in
/// its log; refused signatures make one warning, not one per request.
#[tokio::test]
async fn callbacks_leave_no_number_code_or_body_in_the_log() {
    let message = sid("SM");
    let server = twilio_server(&message).await;
    let mut broker = Broker::new(|c| with_receipts(c, &server)).await;
    let mut env = process_env(&broker.config);
    env.push(("RUST_LOG".into(), "trace".into()));
    let mut herald = HeraldProcess::start(&env);
    let logs = herald.logs();
    let http = logs
        .lines()
        .find(|l| l.contains("http listening"))
        .and_then(|l| l.split("addr=").nth(1))
        .map(|a| a.trim().to_owned())
        .unwrap_or_else(|| panic!("no http address in the log:\n{logs}"));
    broker.publish(&job("sms")).await;
    broker.next_outcome(20).await;
    let params = message_status(&message, "undelivered", Some("30008"));
    for _ in 0..5 {
        assert_eq!(post(&http, encode(&params), Some("bm90IGl0")).await, 403);
    }
    assert_eq!(callback(&http, &params).await, 200);
    let event = broker.next_event(10).await;
    assert_eq!(event["type"], "gd_send_sms_status");
    assert_eq!(herald.terminate(), Some(0));
    let logs = herald.logs();
    for secret in [
        "4155550123",
        "5005550006",
        "482913",
        "MessageStatus",
        "30008",
        "bm90IGl0",
        TOKEN,
    ] {
        if let Some(at) = logs.find(secret) {
            let line = logs[..at].rsplit('\n').next().unwrap_or_default();
            panic!("`{secret}` is in the log: {line}…");
        }
    }
    let warnings = logs
        .lines()
        .filter(|l| l.contains("missing or wrong signature"))
        .count();
    assert_eq!(warnings, 1, "{logs}");
    let stdout = herald.stdout();
    let line = stdout
        .lines()
        .find(|l| l.contains("gd_send_sms_status"))
        .unwrap_or_else(|| panic!("no receipt event on stdout:\n{stdout}"));
    let printed: Value = serde_json::from_str(line).unwrap();
    assert_eq!(printed["status"], "undelivered");
    assert_eq!(printed["job_id"], event["job_id"]);
}

/// The broker is away when the final status comes: 503, so that Twilio retries, and the status is not
/// spent: its retry, once the broker is back, is evented.
#[tokio::test]
async fn a_final_status_that_cannot_be_published_gets_503_and_is_evented_on_its_retry() {
    let message = sid("SM");
    let server = twilio_server(&message).await;
    let proxy = helpers::TcpProxy::start().await;
    let mut app = TestApp::spawn(|c| {
        with_receipts(c, &server);
        c.amqp.url = proxy.url().parse().unwrap();
    })
    .await;
    let sent = send(&mut app, "sms").await;
    assert_eq!(
        callback(&host(&app), &message_status(&message, "sent", None)).await,
        200
    );
    proxy.cut();
    let params = message_status(&message, "delivered", None);
    assert_eq!(callback(&host(&app), &params).await, 503);
    assert_eq!(app.try_next_event(1).await, None);
    proxy.restore();
    app.wait_ready(true).await;
    assert_eq!(callback(&host(&app), &params).await, 200);
    let event = app.next_event(10).await;
    assert_eq!(event["type"], "gd_send_sms_status");
    assert_eq!(event["job_id"], sent["job_id"]);
    assert_eq!(callback(&host(&app), &params).await, 200);
    assert_eq!(app.try_next_event(1).await, None);
    let m = app.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"gd_send_delivery_total{channel="sms",country="1",provider="twilio",status="delivered"}"#
        ),
        1.0
    );
    app.stop().await;
}

/// The Redis receipt state (the Lua scripts) moves as the local one does: forward only, a final status
/// claimed once, given back when its event could not be published. (Taken again after a dead holder's
/// lease is left to the local state's unit test: it takes 30 s.)
#[tokio::test]
async fn redis_receipt_state_moves_forward_only_and_claims_a_final_status_once() {
    use herald::receipts::{Advance, Reported, SentMessage, State, Status};
    let conn = herald::store::redis_connection(REDIS).unwrap();
    let state = State::redis(conn, &format!("test.{}", uuid::Uuid::new_v4().simple()));
    let sent = SentMessage {
        job_id: "j1".into(),
        channel: herald::job::Channel::Sms,
        country: "1".into(),
        recipient: "+1415*****23".into(),
        provider: "twilio".into(),
        provider_message_id: Some("SM1".into()),
        accepted_at_ms: 1,
        step: None,
    };
    let advance = |status| state.advance("twilio:SM1", Reported::message(status));
    assert_eq!(
        advance(Status::Sent).await.expect("Redis must run on 127.0.0.1:6379"),
        Advance::Unknown
    );
    state.record("twilio:SM1", &sent).await.unwrap();
    assert_eq!(advance(Status::Queued).await.unwrap(), Advance::Moved);
    // Another channel's status moves nothing (the script reads the message's channel).
    for other in [
        Reported::call(Status::InProgress),
        Reported::unsaid(Status::InProgress),
        Reported::call(Status::Queued),
        Reported::call(Status::Completed),
    ] {
        assert_eq!(
            state.advance("twilio:SM1", other).await.unwrap(),
            Advance::Ignored,
            "{other:?}"
        );
    }
    assert_eq!(advance(Status::Sent).await.unwrap(), Advance::Moved);
    assert_eq!(advance(Status::Queued).await.unwrap(), Advance::Stale);
    assert_eq!(
        advance(Status::Undelivered).await.unwrap(),
        Advance::Final(sent.clone())
    );
    assert_eq!(advance(Status::Delivered).await.unwrap(), Advance::Busy);
    state.settle("twilio:SM1", false).await.unwrap();
    assert_eq!(advance(Status::Delivered).await.unwrap(), Advance::Final(sent.clone()));
    state.settle("twilio:SM1", true).await.unwrap();
    assert_eq!(advance(Status::Delivered).await.unwrap(), Advance::Duplicate);
    assert_eq!(advance(Status::Failed).await.unwrap(), Advance::Duplicate);
    assert_eq!(advance(Status::Sent).await.unwrap(), Advance::Stale);
    assert_eq!(advance(Status::Read).await.unwrap(), Advance::Moved);
    // A record written late (Redis was down when the message was sent) never resets one written since.
    state.record_late("twilio:SM1", &sent).await.unwrap();
    assert_eq!(advance(Status::Delivered).await.unwrap(), Advance::Duplicate);
    state.record_late("twilio:SM2", &sent).await.unwrap();
    assert_eq!(
        state
            .advance("twilio:SM2", Reported::message(Status::Sent))
            .await
            .unwrap(),
        Advance::Moved
    );
}

/// The outside attack's seventh finding: a signed `CallStatus=in-progress` for an SMS's sid was counted
/// and moved the SMS past `sent`, so the SMS's real `sent` that followed counted as stale. A status in a
/// call's vocabulary moves only a call (docs/receipts.md: ignored).
#[tokio::test]
async fn a_calls_status_for_an_sms_sid_moves_nothing() {
    let message = sid("SM");
    let server = twilio_server(&message).await;
    let mut app = TestApp::spawn(|c| with_receipts(c, &server)).await;
    send(&mut app, "sms").await;
    for status in ["in-progress", "ringing", "queued", "completed", "failed"] {
        assert_eq!(
            callback(&host(&app), &call_status(&message, status)).await,
            200,
            "{status}"
        );
    }
    assert_eq!(app.try_next_event(1).await, None, "a call's status evented an SMS");
    // The SMS's own statuses move it as if nothing had come.
    for status in ["queued", "sent"] {
        assert_eq!(
            callback(&host(&app), &message_status(&message, status, None)).await,
            200
        );
    }
    assert_eq!(
        callback(&host(&app), &message_status(&message, "delivered", None)).await,
        200
    );
    let event = app.next_event(10).await;
    assert_eq!(event["type"], "gd_send_sms_status");
    assert_eq!(event["status"], "delivered");
    let m = app.metrics().await;
    for (result, n) in [("ignored", 5.0), ("intermediate", 2.0), ("stale", 0.0), ("final", 1.0)] {
        let name = format!(r#"herald_receipts_total{{provider="twilio",result="{result}"}}"#);
        assert_eq!(metric(&m, &name), n, "{name}\n{m}");
    }
    app.stop().await;
}

/// The same through the custom provider's route, whose statuses name no vocabulary: the job's channel
/// decides, and `in-progress` (a call's) for an SMS job is ignored.
#[tokio::test]
async fn a_webhook_status_the_jobs_channel_cannot_have_moves_nothing() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let endpoint = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"message_id": "gw-1"})))
        .mount(&endpoint)
        .await;
    let mut app = TestApp::spawn(|c| {
        c.channels.sms = Some(vec![herald::config::ProviderKind::Webhook]);
        c.webhook.url = Some(endpoint.uri().parse().unwrap());
        c.webhook.secret = Some(SECRET.parse().unwrap());
    })
    .await;
    let sent = send(&mut app, "sms").await;
    let job_id = sent["job_id"].as_str().unwrap().to_owned();
    // Inbound callbacks are signed with the status key derived from the secret.
    assert_eq!(SECRET, WEBHOOK_SECRET);
    let key = WEBHOOK_STATUS_KEY
        .parse::<herald::config::WebhookKey>()
        .unwrap()
        .as_bytes()
        .to_vec();
    let url = app.url("/providers/webhook/status");
    let post = |status: &str, n: usize| {
        let body = serde_json::to_vec(&json!({"job_id": job_id, "status": status})).unwrap();
        let now = chrono::Utc::now().timestamp() as u64;
        let id = format!("rcpt-{n}");
        let signature = herald::providers::webhook::sign(&key, &id, now, &body);
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .header("webhook-id", id)
                .header("webhook-timestamp", now.to_string())
                .header("webhook-signature", signature)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for (n, status) in ["in-progress", "ringing", "busy", "sent"].iter().enumerate() {
        assert_eq!(post(status, n).await, 200, "{status}");
    }
    assert_eq!(app.try_next_event(1).await, None, "a call's status evented an SMS job");
    let m = app.metrics().await;
    for (result, n) in [("ignored", 3.0), ("intermediate", 1.0), ("stale", 0.0)] {
        let name = format!(r#"herald_receipts_total{{provider="webhook",result="{result}"}}"#);
        assert_eq!(metric(&m, &name), n, "{name}\n{m}");
    }
    app.stop().await;
}

/// A Twilio-shaped server that answers each Messages.json with a sid of its own, after `delay`: long
/// enough for a test to take Redis away while herald waits for the answer. The sids, in order given.
struct SlowTwilio {
    delay: Duration,
    sids: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl wiremock::Respond for SlowTwilio {
    fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
        let sid = sid("SM");
        self.sids.lock().unwrap().push(sid.clone());
        ResponseTemplate::new(201)
            .set_body_json(json!({"sid": sid, "status": "queued"}))
            .set_delay(self.delay)
    }
}

/// The outside attack's sixth finding: with `[redis] url`, the receipt records of the messages sent while
/// Redis was away were never written, so after it came back their callbacks got 200 `unknown`, no status
/// event, and Twilio did not retry them. Now such a record is kept and written once Redis is back, and a
/// callback for it meanwhile gets 503 (Twilio retries), never 200 without its event.
#[tokio::test]
async fn receipts_of_messages_sent_while_redis_was_away_are_evented_after_it_returns() {
    const JOBS: usize = 3;
    let sids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/2010-04-01/Accounts/AC[0-9a-f]+/Messages\.json$"))
        .respond_with(SlowTwilio {
            // Ample on a loaded machine: every job must be at Twilio before the first answer comes back.
            delay: Duration::from_secs(3),
            sids: sids.clone(),
        })
        .mount(&server)
        .await;
    let redis = helpers::TcpProxy::to(6379).await;
    let mut app = TestApp::spawn(|c| {
        with_receipts(c, &server);
        c.redis.url = herald::config::Secret::new(format!("redis://127.0.0.1:{}", redis.port));
    })
    .await;
    let jobs: Vec<Value> = (0..JOBS).map(|_| job("sms")).collect();
    for j in &jobs {
        app.publish(j).await;
    }
    // Every job is at Twilio (past its Redis reads): Redis goes away before Twilio answers.
    for _ in 0..500 {
        if server.received_requests().await.unwrap().len() >= JOBS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.received_requests().await.unwrap().len(), JOBS);
    redis.cut();
    app.wait_metric("herald_receipts_record_errors_total", JOBS as f64)
        .await;
    let sids: Vec<String> = sids.lock().unwrap().clone();
    assert_eq!(sids.len(), JOBS);
    assert_eq!(metric(&app.metrics().await, "herald_receipts_pending"), JOBS as f64);
    // While Redis is away: come again.
    let delivered = |sid: &str| message_status(sid, "delivered", None);
    assert_eq!(callback(&host(&app), &delivered(&sids[0])).await, 503);
    // The scenario: Redis stays away a while longer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restore();

    let mut evented = std::collections::HashMap::new();
    // The first callback right away, as Twilio's retry may come: 503 until the record is written, then
    // 200 with its event; never 200 alone.
    let mut answered = 0;
    for _ in 0..100 {
        answered = callback(&host(&app), &delivered(&sids[0])).await;
        if answered == 200 {
            break;
        }
        assert_eq!(answered, 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered, 200, "the callback was never taken after Redis returned");
    let event = status_event(&mut app).await;
    evented.insert(event["provider_message_id"].as_str().unwrap().to_owned(), event);
    // The others once the background writer has written their records.
    for _ in 0..200 {
        if metric(&app.metrics().await, "herald_receipts_pending") == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&app.metrics().await, "herald_receipts_pending"), 0.0);
    for sid in &sids[1..] {
        assert_eq!(callback(&host(&app), &delivered(sid)).await, 200);
        let event = status_event(&mut app).await;
        evented.insert(event["provider_message_id"].as_str().unwrap().to_owned(), event);
    }
    let mut got: Vec<&str> = evented.keys().map(String::as_str).collect();
    let mut want: Vec<&str> = sids.iter().map(String::as_str).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "one status event per message sent during the outage");
    let mut job_ids: Vec<&str> = evented.values().map(|e| e["job_id"].as_str().unwrap()).collect();
    let mut sent_ids: Vec<&str> = jobs.iter().map(|j| j["id"].as_str().unwrap()).collect();
    job_ids.sort();
    sent_ids.sort();
    assert_eq!(job_ids, sent_ids);
    for event in evented.values() {
        assert_eq!(event["status"], "delivered");
        assert_no_personal_data(event);
    }
    let m = app.metrics().await;
    assert_eq!(metric(&m, "herald_receipts_lost_total"), 0.0);
    assert_eq!(
        metric(&m, r#"herald_receipts_total{provider="twilio",result="unknown"}"#),
        0.0,
        "{m}"
    );
    app.stop().await;
}

/// The next `gd_send_sms_status` event, past the jobs' own outcome events.
async fn status_event(app: &mut TestApp) -> Value {
    loop {
        let event = app.next_event(10).await;
        if event["type"] == "gd_send_sms_status" {
            return event;
        }
    }
}

/// A custom-provider endpoint that posts its signed status callback to herald *before* it answers herald's
/// webhook request (send, report, then answer), and records the HTTP status herald answered the callback
/// with.
struct ReportsBeforeAnswering {
    herald: std::sync::Arc<std::sync::OnceLock<std::net::SocketAddr>>,
    answers: std::sync::Arc<std::sync::Mutex<Vec<u16>>>,
}

impl wiremock::Respond for ReportsBeforeAnswering {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        use std::io::{Read, Write};
        let sent: Value = serde_json::from_slice(&request.body).unwrap();
        let body = serde_json::to_vec(&json!({"job_id": sent["id"], "status": "delivered"})).unwrap();
        let key = WEBHOOK_STATUS_KEY
            .parse::<herald::config::WebhookKey>()
            .unwrap()
            .as_bytes()
            .to_vec();
        let now = chrono::Utc::now().timestamp() as u64;
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let signature = herald::providers::webhook::sign(&key, &id, now, &body);
        let addr = *self.herald.get().expect("herald's address");
        // Blocking is fine: wiremock answers on a thread of its own.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let head = format!(
            "POST /providers/webhook/status HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             webhook-id: {id}\r\nwebhook-timestamp: {now}\r\nwebhook-signature: {signature}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        let status = answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        self.answers.lock().unwrap().push(status);
        ResponseTemplate::new(200).set_body_json(json!({"message_id": "gw-1"}))
    }
}

/// A report that overtakes herald's own record of the send (the receiver reports before it answers) is
/// asked again with 503, never answered 200 and lost as unknown; sent again once the job is recorded, it
/// becomes the status event. Failed before: 200, `herald_receipts_total{result="unknown"}` 1, no event
/// (outside attack F1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_overtakes_the_send_is_asked_again_not_lost() {
    let endpoint = MockServer::start().await;
    let herald_addr = std::sync::Arc::new(std::sync::OnceLock::new());
    let answers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut app = TestApp::spawn(|c| {
        c.channels.sms = Some(vec![herald::config::ProviderKind::Webhook]);
        c.webhook.url = Some(endpoint.uri().parse().unwrap());
        c.webhook.secret = Some(WEBHOOK_SECRET.parse().unwrap());
    })
    .await;
    herald_addr.set(app.http).unwrap();
    Mock::given(method("POST"))
        .respond_with(ReportsBeforeAnswering {
            herald: herald_addr.clone(),
            answers: answers.clone(),
        })
        .mount(&endpoint)
        .await;
    let sms = job("sms");
    app.publish(&sms).await;
    let outcome = app.next_outcome(20).await;
    assert_eq!(outcome["job_id"], sms["id"]);
    assert!(outcome.get("error").is_none(), "{outcome}");
    assert_eq!(*answers.lock().unwrap(), [503], "the early report is asked again");
    let m = app.metrics().await;
    assert_eq!(
        metric(&m, r#"herald_receipts_total{provider="webhook",result="unknown"}"#),
        0.0
    );
    // The receiver sends it again: now it is the job's status.
    let body = serde_json::to_vec(&json!({"job_id": sms["id"], "status": "delivered"})).unwrap();
    let key = WEBHOOK_STATUS_KEY
        .parse::<herald::config::WebhookKey>()
        .unwrap()
        .as_bytes()
        .to_vec();
    let now = chrono::Utc::now().timestamp() as u64;
    let signature = herald::providers::webhook::sign(&key, "msg_again", now, &body);
    let answer = reqwest::Client::new()
        .post(app.url("/providers/webhook/status"))
        .header("content-type", "application/json")
        .header("webhook-id", "msg_again")
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let status = loop {
        let e = app.try_next_event(5).await.expect("a status event");
        if e["type"] == "gd_send_sms_status" {
            break e;
        }
    };
    assert_eq!(
        (status["job_id"].clone(), status["status"].clone()),
        (sms["id"].clone(), json!("delivered"))
    );
    app.stop().await;
}
