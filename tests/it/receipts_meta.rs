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
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/asyncapi.yaml")).unwrap();
    let doc: Value = serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&doc).unwrap()).unwrap();
    let schema = serde_json::json!({"$ref": "#/components/schemas/StatusEvent", "components": doc["components"]});
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
