//! Routing by destination through the broker (docs/providers/README.md): `[routing.sms]` keys are a calling code
//! (`"1"`), a longer E.164 prefix (`"1876"`) or a region (`"JM"`, from libphonenumber's metadata), the most
//! specific one naming the number deciding: prefix, then region, then calling code, else `[channels]`.

use crate::helpers;
use crate::helpers::{TestApp, form, job};
use herald::config::{Config, ProviderKind, Secret};
use herald::destinations::Destination;
use serde_json::{Value, json};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Twilio's `Messages.json` answer (201, the message resource).
async fn twilio_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/2010-04-01/Accounts/AC[0-9a-f]{32}/Messages\.json$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"sid": "SM1", "status": "queued"})))
        .mount(&server)
        .await;
    server
}

/// Vonage's `POST /sms/json` answer: one part, status "0".
async fn vonage_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"message-count": "1", "messages": [{"message-id": "v-1", "status": "0"}]})),
        )
        .mount(&server)
        .await;
    server
}

fn vonage(c: &mut Config, url: &str) {
    c.vonage.api_key = "a1b2c3d4".into();
    c.vonage.api_secret = Secret::new("vonage-secret");
    c.vonage.from = "Acme".into();
    c.vonage.base_url = url.parse().unwrap();
}

fn routes(keys: &[(&str, ProviderKind)]) -> std::collections::BTreeMap<Destination, Vec<ProviderKind>> {
    keys.iter()
        .map(|(key, kind)| (Destination::parse(key).unwrap(), vec![*kind]))
        .collect()
}

fn sms_to(to: &str) -> Value {
    let mut j = job("sms");
    j["to"] = to.into();
    j
}

/// Sends each job and returns, per job in order, the provider its outcome names and its `country`.
async fn providers(app: &mut TestApp, jobs: &[Value]) -> Vec<(String, String)> {
    for j in jobs {
        app.publish(j).await;
    }
    let events = app.events(jobs.len()).await;
    jobs.iter()
        .map(|j| {
            let e = events
                .iter()
                .find(|e| e["job_id"] == j["id"])
                .unwrap_or_else(|| panic!("no event for {}", j["id"]));
            assert_eq!(e["type"], "gd_send_sms", "{e}");
            (
                e["provider"].as_str().unwrap_or("-").to_owned(),
                e["country"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(p, c)| (p.to_string(), c.to_string())).collect()
}

#[tokio::test]
async fn jamaica_takes_the_jm_chain_and_the_us_the_calling_codes() {
    let twilio = twilio_server().await;
    let vonage_up = vonage_server().await;
    let mut app = TestApp::spawn(|c| {
        helpers::twilio(c, &twilio.uri());
        vonage(c, &vonage_up.uri());
        c.channels.sms = Some(vec![ProviderKind::Vonage]);
        c.routing.sms = routes(&[("1", ProviderKind::Outbox), ("JM", ProviderKind::Twilio)]);
    })
    .await;
    let jobs = [
        sms_to("+18765550123"),
        sms_to("+12125550123"),
        sms_to("+16585550123"),
        sms_to("+447700900123"),
    ];
    assert_eq!(
        providers(&mut app, &jobs).await,
        pairs(&[("twilio", "1"), ("outbox", "1"), ("twilio", "1"), ("vonage", "44")]),
        "+1 876 and +1 658 are Jamaica; the `country` label stays the calling code"
    );
    let sent = twilio.received_requests().await.unwrap();
    let to: Vec<String> = sent.iter().map(|r| form(&r.body)["To"].clone()).collect();
    assert_eq!(to, ["+18765550123", "+16585550123"]);
    let outbox = app.outbox_lines();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0]["to"], "+12125550123");
    app.stop().await;
}

#[tokio::test]
async fn a_prefix_beats_a_region_and_a_region_beats_its_calling_code() {
    let twilio = twilio_server().await;
    let vonage_up = vonage_server().await;
    let mut app = TestApp::spawn(|c| {
        helpers::twilio(c, &twilio.uri());
        vonage(c, &vonage_up.uri());
        c.routing.sms = routes(&[
            ("1", ProviderKind::Outbox),
            ("JM", ProviderKind::Vonage),
            ("1876", ProviderKind::Twilio),
            ("7", ProviderKind::Outbox),
            ("KZ", ProviderKind::Twilio),
            ("GG", ProviderKind::Vonage),
        ]);
    })
    .await;
    let jobs = [
        sms_to("+18765550123"),
        sms_to("+16585550123"),
        sms_to("+12125550123"),
        sms_to("+77012345678"),
        sms_to("+79161234567"),
        sms_to("+441481256789"),
    ];
    assert_eq!(
        providers(&mut app, &jobs).await,
        pairs(&[
            ("twilio", "1"),
            ("vonage", "1"),
            ("outbox", "1"),
            ("twilio", "7"),
            ("outbox", "7"),
            ("vonage", "44"),
        ])
    );
    app.stop().await;
}

/// A number whose range the metadata does not list is sent (the provider decides), through its calling
/// code's chain; one of a length its calling code cannot have is an invalid job.
#[tokio::test]
async fn an_unlisted_range_is_routed_by_its_calling_code_and_an_impossible_length_is_invalid() {
    let twilio = twilio_server().await;
    let mut app = TestApp::spawn(|c| {
        helpers::twilio(c, &twilio.uri());
        c.routing.sms = routes(&[("1", ProviderKind::Twilio), ("JM", ProviderKind::Outbox)]);
    })
    .await;
    // +1 999 is no area code (yet).
    let unlisted = sms_to("+19995550123");
    assert_eq!(providers(&mut app, &[unlisted]).await, pairs(&[("twilio", "1")]));
    let short = sms_to("+1876555012");
    app.publish(&short).await;
    let e = app.next_outcome(20).await;
    assert_eq!(e["type"], "gd_send_sms_failure", "{e}");
    assert_eq!(e["error"]["code"], "invalid_job", "{e}");
    assert!(!e.to_string().contains("1876555012"), "the number is not echoed: {e}");
    app.stop().await;
}
