//! The webhook provider: Auth0-shaped body, Standard Webhooks signature checked by an independent
//! implementation, and the classification of odd answers.

use std::time::Duration;

use crate::helpers::{TestApp, job};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald::config::{HumanDuration, ProviderKind};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Standard Webhooks verification, written from the spec: HMAC-SHA256 over `id.timestamp.body` with the
/// base64-decoded part of the secret after `whsec_`, compared against each `v1,` signature.
fn verify(headers: &wiremock::http::HeaderMap, body: &[u8]) -> bool {
    let get = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let key = STANDARD.decode(SECRET.trim_start_matches("whsec_")).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", get("webhook-id"), get("webhook-timestamp")).as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    get("webhook-signature").split(' ').any(|s| s == expected)
}

fn with_webhook(c: &mut herald::config::Config, url: String) {
    c.webhook.url = Some(url.parse().unwrap());
    c.webhook.secret = Some(SECRET.parse().unwrap());
    c.channels.sms = Some(vec![ProviderKind::Webhook]);
    c.channels.voice = Some(vec![ProviderKind::Webhook]);
    c.channels.email = Some(vec![ProviderKind::Webhook]);
}

#[tokio::test]
async fn the_body_mirrors_auth0_and_the_signature_verifies() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"message_id": "m-1"})))
        .mount(&server)
        .await;
    let mut app = TestApp::spawn(|c| with_webhook(c, format!("{}/send", server.uri()))).await;
    let mut sms = job("sms");
    sms["locale"] = "fr".into();
    let mut mail = job("email");
    mail["action"] = "enrollment".into();
    app.publish(&sms).await;
    app.publish(&mail).await;
    let events = app.events(2).await;
    assert!(
        events
            .iter()
            .all(|e| e["provider"] == "webhook" && e["provider_message_id"] == "m-1"),
        "{events:?}"
    );

    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        assert!(verify(&r.headers, &r.body), "signature does not verify");
        // And as a receiver built on the Standard Webhooks reference library checks it (timestamp included).
        standardwebhooks::Webhook::new(SECRET)
            .unwrap()
            .verify(&r.body, &r.headers)
            .expect("the reference library verifies herald's signature");
        let ts: u64 = r
            .headers
            .get("webhook-timestamp")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(ts) < 300);
        assert_eq!(r.headers.get("content-type").unwrap(), "application/json");
    }
    let body = |id: &serde_json::Value| {
        let r = requests
            .iter()
            .find(|r| r.headers.get("webhook-id").unwrap().to_str().unwrap() == id.as_str().unwrap())
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()
    };
    assert_eq!(
        body(&sms["id"]),
        json!({
            "id": sms["id"],
            "message_options": {"action": "second-factor-authentication", "code": "482913", "message_type": "sms",
                "recipient": "+14155550123", "text": "482913 est votre code de vérification pour Acme."},
            "request": {"ip": "203.0.113.7", "language": "fr"},
            "user": {"user_id": "auth0|5f7c8ec7c33c6c004bbafe82"},
            "client": {"name": "Acme"},
        })
    );
    let m = body(&mail["id"]);
    assert_eq!(m["message_options"]["message_type"], "email");
    assert_eq!(m["message_options"]["recipient"], "jane.doe@example.com");
    assert_eq!(m["message_options"]["subject"], "Verify your enrollment with Acme");
    assert_eq!(m["message_options"]["action"], "enrollment");
    app.stop().await;
}

#[tokio::test]
async fn odd_answers_get_a_clear_classification() {
    let cases: Vec<(ResponseTemplate, &str, &str)> = vec![
        (
            ResponseTemplate::new(302).insert_header("Location", "http://elsewhere.test/"),
            "provider_rejected",
            "redirect",
        ),
        (
            ResponseTemplate::new(200).set_body_raw("<html><body>Proxy error</body></html>", "text/html"),
            "attempts_exhausted",
            "HTML page",
        ),
        (
            ResponseTemplate::new(422).set_body_string("bad"),
            "provider_rejected",
            "422",
        ),
        (ResponseTemplate::new(503), "attempts_exhausted", "503"),
        (
            ResponseTemplate::new(200).set_delay(Duration::from_secs(30)),
            "attempts_exhausted",
            "timed out",
        ),
    ];
    for (response, code, words) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST")).respond_with(response).mount(&server).await;
        let mut app = TestApp::spawn(|c| {
            with_webhook(c, server.uri());
            c.retry.schedule = vec![HumanDuration(Duration::from_millis(20))].into();
            c.retry.provider_timeout = HumanDuration(Duration::from_millis(500));
        })
        .await;
        app.publish(&job("sms")).await;
        let e = app.next_event(20).await;
        assert_eq!(e["error"]["code"], code, "{e}");
        assert!(e["error"]["message"].as_str().unwrap().contains(words), "{e}");
        app.stop().await;
    }
}
