//! Vonage and Infobip against servers written from each provider's published API (`helpers/vonage_api.rs`,
//! `helpers/infobip_api.rs`): the request field by field, the answer per part (Vonage) or per destination
//! (Infobip), each documented status's class through the server, validity and languages. Provider-level
//! (calling `Provider::send`), and through the broker where the outcome is the point.

use crate::helpers;
use crate::helpers::infobip_api;
use crate::helpers::vonage_api;

use std::collections::HashMap;
use std::time::Duration;

use crate::helpers::{TestApp, form, job, phone_job, provider_client as client, sms, verdict_with_id as verdict};
use herald::config::{HttpUrl, InfobipConfig, ProviderKind, Secret, VonageConfig};
use herald::job::{Job, Locale};
use herald::providers::infobip::Infobip;
use herald::providers::vonage::Vonage;
use herald::providers::{Ambiguous, Provider, Receipt, Validity};
use herald::templates::{PAUSE, Rendered};
use infobip_api::InfobipApi;
use serde_json::{Value, json};
use vonage_api::VonageApi;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

const NUMBER: &str = "+14155550123";
const VONAGE_KEY: &str = "a1b2c3d4";
const VONAGE_SECRET: &str = "vonage-secret";
const INFOBIP_KEY: &str = "infobip-key";

/// A job that expires `secs` from now, and its validity at send time.
fn expiring(secs: i64) -> (Job, Validity) {
    let mut job = phone_job(NUMBER);
    let now = chrono::Utc::now();
    job.expires_at = Some(now + chrono::Duration::seconds(secs));
    let validity = Validity::for_job(&job, Duration::from_secs(600), now);
    (job, validity)
}

fn voice(text: &str, locale: &str) -> Rendered {
    Rendered::Voice {
        text: text.into(),
        language: Locale::parse(locale).unwrap(),
    }
}

async fn answering(response: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any()).respond_with(response).mount(&server).await;
    server
}

async fn requests(server: &MockServer) -> Vec<wiremock::Request> {
    server.received_requests().await.unwrap()
}

// --- Vonage ---------------------------------------------------------------------------------------------

fn vonage_config(base_url: &str) -> VonageConfig {
    VonageConfig {
        api_key: VONAGE_KEY.into(),
        api_secret: Secret::new(VONAGE_SECRET),
        from: "Acme".into(),
        base_url: base_url.parse::<HttpUrl>().unwrap(),
        ..herald::config::Config::default().vonage
    }
}

fn vonage_api() -> VonageApi {
    VonageApi::new(VONAGE_KEY, VONAGE_SECRET)
}

fn owned(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[tokio::test]
async fn vonage_sends_the_form_its_spec_documents() {
    let api = vonage_api();
    let server = api.clone().start().await;
    let vonage = Vonage::new(&vonage_config(&server.uri()), client()).unwrap();
    assert_eq!(vonage.name(), ProviderKind::Vonage);
    let result = vonage
        .send(
            &phone_job(NUMBER),
            &sms("482913 is your code for Acme."),
            Validity::default(),
        )
        .await;
    assert_eq!(verdict(result), "sent 1A00000000000000");
    assert_eq!(api.problems(), Vec::<String>::new());
    let r = &requests(&server).await[0];
    assert_eq!((r.method.as_str(), r.url.path()), ("POST", "/sms/json"));
    // Every field, nothing else: `type` always, `ttl` from the validity (retry.validity's 10 minutes).
    assert_eq!(
        form(&r.body),
        owned(&[
            ("api_key", VONAGE_KEY),
            ("api_secret", VONAGE_SECRET),
            ("from", "Acme"),
            ("to", "14155550123"),
            ("text", "482913 is your code for Acme."),
            ("type", "text"),
            ("ttl", "600000"),
        ])
    );
}

#[tokio::test]
async fn vonage_marks_non_gsm_text_unicode_and_writes_numbers_without_plus() {
    let api = vonage_api();
    let server = api.clone().start().await;
    let mut config = vonage_config(&server.uri());
    config.from = "+447700900000".into();
    let vonage = Vonage::new(&config, client()).unwrap();
    let result = vonage
        .send(&phone_job("+447700900123"), &sms("Ваш код 482913"), Validity::default())
        .await;
    assert!(verdict(result).starts_with("sent "));
    assert_eq!(api.problems(), Vec::<String>::new());
    let f = form(&requests(&server).await[0].body);
    assert_eq!((f["type"].as_str(), f["text"].as_str()), ("unicode", "Ваш код 482913"));
    assert_eq!((f["from"].as_str(), f["to"].as_str()), ("447700900000", "447700900123"));
}

/// `ttl` is the time left before `expires_at`, in milliseconds, within the spec's 20000..604800000.
/// Before: no `ttl`, so Vonage's 72-hour default.
#[tokio::test]
async fn vonage_ttl_is_the_time_left_clamped_to_vonages_range() {
    let api = vonage_api();
    let server = api.clone().start().await;
    let vonage = Vonage::new(&vonage_config(&server.uri()), client()).unwrap();
    for secs in [300, 5, 30 * 86_400] {
        let (job, validity) = expiring(secs);
        vonage.send(&job, &sms("482913"), validity).await.unwrap();
    }
    let ttls: Vec<u64> = requests(&server)
        .await
        .iter()
        .map(|r| form(&r.body)["ttl"].parse().unwrap())
        .collect();
    assert!((299_000..=300_000).contains(&ttls[0]), "{ttls:?}");
    assert_eq!(ttls[1..], [20_000, 604_800_000]);
    assert_eq!(api.problems(), Vec::<String>::new());
}

#[tokio::test]
async fn a_long_text_is_sent_when_vonage_takes_every_part() {
    let api = vonage_api();
    let server = api.clone().start().await;
    let vonage = Vonage::new(&vonage_config(&server.uri()), client()).unwrap();
    let gsm = "482913 is your code. ".repeat(19); // 399 septets: 3 parts of 153
    let result = vonage.send(&phone_job(NUMBER), &sms(&gsm), Validity::default()).await;
    assert_eq!(verdict(result), "sent 1A00000000000000", "the first part's id");
    assert_eq!(api.taken().len(), 3);
    let ucs2 = "Ваш код 482913. ".repeat(7); // 112 UTF-16 units: 2 parts of 67
    let result = vonage.send(&phone_job(NUMBER), &sms(&ucs2), Validity::default()).await;
    assert_eq!(verdict(result), "sent 1A00000000000003");
    assert_eq!(api.taken().len(), 5);
    assert_eq!(api.taken()[3..].concat(), ucs2);
    assert_eq!(requests(&server).await.len(), 2, "one request per text");
    assert_eq!(api.problems(), Vec::<String>::new());
}

/// The test server cuts texts as herald counts them (`herald::sms::segments`), so a test's part numbers
/// mean what the provider's would.
#[test]
fn the_test_server_cuts_parts_as_herald_counts_them() {
    for text in [
        "482913".to_owned(),
        "a".repeat(160),
        "a".repeat(161),
        "a".repeat(306),
        "a".repeat(307),
        "€".repeat(80),
        "ç".repeat(70),
        "ç".repeat(71),
        "Ваш код 482913. ".repeat(7),
    ] {
        let counted = herald::sms::segments(&text);
        let unicode = counted.encoding == herald::sms::Encoding::Ucs2;
        let parts = vonage_api::parts(&text, unicode);
        assert_eq!(parts.len(), counted.segments, "{} units", counted.units);
        assert_eq!(parts.concat(), text);
    }
}

/// The issue's finding: the first part taken (status "0", an id), a later one throttled. The taken part
/// is on its way to the phone, so the text is not sent again: sent, unconfirmed, with the first id.
/// Before: transient, and the retry sent the first part twice.
#[tokio::test]
async fn a_long_text_partly_taken_is_not_sent_again() {
    let api = vonage_api().failing(1, "1", "Throughput Rate Exceeded - please wait [ 1 ] and retry");
    let server = api.clone().start().await;
    let vonage = Vonage::new(&vonage_config(&server.uri()), client()).unwrap();
    let text = "482913 is your code. ".repeat(10);
    let result = vonage.send(&phone_job(NUMBER), &sms(&text), Validity::default()).await;
    assert_eq!(
        result,
        Ok(Receipt::unconfirmed(
            Ambiguous::PartlyTaken,
            Some("1A00000000000000".into())
        ))
    );
    // The first part taken, the second refused: no id for it.
    assert_eq!(api.taken().len(), 1);

    // Only later parts taken: still not sent again, with the first id Vonage gave.
    let api = vonage_api().failing(0, "1", "Throughput Rate Exceeded");
    let server = api.clone().start().await;
    let vonage = Vonage::new(&vonage_config(&server.uri()), client()).unwrap();
    let result = vonage.send(&phone_job(NUMBER), &sms(&text), Validity::default()).await;
    assert_eq!(verdict(result), "unclear partly_taken 1A00000000000000");
}

#[tokio::test]
async fn a_long_text_vonage_refuses_whole_fails_by_its_first_refused_part() {
    let api = vonage_api()
        .failing(0, "9", "Quota Exceeded - rejected")
        .failing(1, "1", "Throughput Rate Exceeded");
    let server = api.clone().start().await;
    let vonage = Vonage::new(&vonage_config(&server.uri()), client()).unwrap();
    let text = "482913 is your code. ".repeat(10);
    let result = vonage.send(&phone_job(NUMBER), &sms(&text), Validity::default()).await;
    assert_eq!(verdict(result), "transient 9 -");
    let api = vonage_api()
        .failing(0, "15", "Illegal Sender Address - rejected")
        .failing(1, "15", "Illegal Sender Address - rejected");
    let server = api.clone().start().await;
    let vonage = Vonage::new(&vonage_config(&server.uri()), client()).unwrap();
    let result = vonage.send(&phone_job(NUMBER), &sms(&text), Validity::default()).await;
    assert_eq!(verdict(result), "next provider 15");
}

/// Rows of Vonage's status table through the server (the whole table is a unit test in vonage.rs).
/// Before: 4, 8, 15, 29 and HTTP 401 were permanent and ended the chain.
#[tokio::test]
async fn vonage_statuses_are_classified_as_documented() {
    let rows = [
        (
            "1",
            "Throughput Rate Exceeded - please wait [ 1 ] and retry",
            "transient 1 -",
        ),
        ("5", "Internal Error", "transient 5 -"),
        ("9", "Quota Exceeded - rejected", "transient 9 -"),
        ("10", "Too many existing binds", "transient 10 -"),
        ("8", "Account suspended", "next provider 8"),
        ("11", "Account not enabled for REST", "next provider 11"),
        ("15", "Illegal Sender Address - rejected", "next provider 15"),
        ("29", "Non White-listed Destination - rejected", "next provider 29"),
        ("3", "Invalid to param", "permanent 3"),
        ("6", "Invalid Message", "permanent 6"),
        ("7", &format!("Number barred: {NUMBER}"), "permanent 7"),
        ("33", "Number de-activated", "permanent 33"),
        ("99", "Something new", "permanent 99"),
    ];
    for (status, error_text, expected) in rows {
        let api = vonage_api().failing(0, status, error_text);
        let server = api.clone().start().await;
        let vonage = Vonage::new(&vonage_config(&server.uri()), client()).unwrap();
        let result = vonage
            .send(&phone_job(NUMBER), &sms("482913"), Validity::default())
            .await;
        assert_eq!(verdict(result), expected, "status {status}");
        assert_eq!(api.problems(), Vec::<String>::new());
    }
    // Wrong credentials: the server answers status 4, as Vonage does.
    let server = VonageApi::new(VONAGE_KEY, "another-secret").start().await;
    let vonage = Vonage::new(&vonage_config(&server.uri()), client()).unwrap();
    let result = vonage
        .send(&phone_job(NUMBER), &sms("482913"), Validity::default())
        .await;
    assert_eq!(verdict(result), "next provider 4");
}

#[tokio::test]
async fn vonage_http_answers_are_classified_as_documented() {
    let rows: Vec<(ResponseTemplate, &str)> = vec![
        (
            ResponseTemplate::new(401).set_body_string("Unauthorized"),
            "next provider -",
        ),
        (ResponseTemplate::new(403), "next provider -"),
        (
            ResponseTemplate::new(429).insert_header("Retry-After", "7"),
            "transient - 7",
        ),
        (ResponseTemplate::new(500), "transient - -"),
        (ResponseTemplate::new(400), "permanent -"),
        // A 200 that says nothing readable, or no answer in time: may have been taken, not sent again.
        (
            ResponseTemplate::new(200).set_body_string("<html>gateway</html>"),
            "unclear unreadable_answer -",
        ),
        (
            ResponseTemplate::new(200).set_body_json(json!({"message-count": "0", "messages": []})),
            "unclear unreadable_answer -",
        ),
        (
            ResponseTemplate::new(200).set_delay(Duration::from_secs(5)),
            "unclear timeout -",
        ),
    ];
    for (i, (response, expected)) in rows.into_iter().enumerate() {
        let server = answering(response).await;
        let vonage = Vonage::new(&vonage_config(&server.uri()), client()).unwrap();
        let result = vonage
            .send(&phone_job(NUMBER), &sms("482913"), Validity::default())
            .await;
        assert_eq!(verdict(result), expected, "case {i}");
    }
    let closed = Vonage::new(&vonage_config("http://127.0.0.1:9"), client()).unwrap();
    let e = closed
        .send(&phone_job(NUMBER), &sms("482913"), Validity::default())
        .await
        .unwrap_err();
    assert!(e.is_transient() && e.message() == "vonage connection failed", "{e}");
}

/// Through the broker: a text of which Vonage took the first part ends as sent, once, and is counted.
/// Before: retried, and the first part reached the phone again.
#[tokio::test]
async fn a_partly_taken_text_ends_as_sent_once_and_is_counted() {
    let api = vonage_api().failing(1, "1", "Throughput Rate Exceeded - please wait [ 1 ] and retry");
    let server = api.clone().start().await;
    let mut app = TestApp::spawn(|c| {
        c.vonage = vonage_config(&server.uri());
        c.channels.sms = Some(vec![ProviderKind::Vonage]);
    })
    .await;
    let mut long = job("sms");
    // 126 characters of name: the text (164 septets) takes two parts.
    long["friendly_name"] = "Acme Corporation Customer Identity and Access Management Platform for Enterprise Workforce and Consumer Accounts Worldwide Inc".into();
    app.publish(&long).await;
    let e = app.next_outcome(20).await;
    assert_eq!(
        (
            e["type"].as_str(),
            e["provider"].as_str(),
            e["provider_message_id"].as_str()
        ),
        (Some("gd_send_sms"), Some("vonage"), Some("1A00000000000000")),
        "{e}"
    );
    // Not a wait for something: the window in which a second send, which must not happen, would.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(requests(&server).await.len(), 1, "sent once");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("herald_provider_ambiguous_total{provider=\"vonage\",reason=\"partly_taken\"} 1"),
        "{metrics}"
    );
    assert_eq!(api.problems(), Vec::<String>::new());
    app.stop().await;
}

// --- Infobip --------------------------------------------------------------------------------------------

fn infobip_config(base_url: &str) -> InfobipConfig {
    InfobipConfig {
        api_key: Secret::new(INFOBIP_KEY),
        from: "+447491163443".into(),
        base_url: Some(base_url.parse::<HttpUrl>().unwrap()),
        ..herald::config::Config::default().infobip
    }
}

fn infobip(base_url: &str, default_locale: &str) -> Infobip {
    Infobip::new(
        &infobip_config(base_url),
        &Locale::parse(default_locale).unwrap(),
        client(),
    )
    .unwrap()
}

#[tokio::test]
async fn infobip_sends_sms_and_voice_as_its_models_document() {
    let api = InfobipApi::new(INFOBIP_KEY);
    let server = api.clone().start().await;
    let infobip = infobip(&format!("{}/", server.uri()), "en");
    assert_eq!(infobip.name(), ProviderKind::Infobip);
    let sent = infobip
        .send(
            &phone_job(NUMBER),
            &sms("482913 is your code for Acme."),
            Validity::default(),
        )
        .await;
    assert_eq!(verdict(sent), "sent 0000be2d4219-3af1-78856-aabe-000000000000");
    let called = infobip
        .send(
            &phone_job(NUMBER),
            &voice(&format!("Su código es{PAUSE}4. 8. 2. 9. 1. 3"), "es-AR"),
            Validity::default(),
        )
        .await;
    assert_eq!(verdict(called), "sent 0001be2d4219-3af1-78856-aabe-000000000000");
    assert_eq!(api.problems(), Vec::<String>::new());
    let requests = requests(&server).await;
    for r in &requests {
        assert_eq!(r.headers.get("authorization").unwrap(), "App infobip-key");
        assert_eq!(r.headers.get("content-type").unwrap(), "application/json");
    }
    assert_eq!(requests[0].url.path(), "/sms/2/text/advanced");
    assert_eq!(
        serde_json::from_slice::<Value>(&requests[0].body).unwrap(),
        json!({"messages": [{"destinations": [{"to": "14155550123"}], "from": "447491163443",
                             "text": "482913 is your code for Acme.", "validityPeriod": 10}]})
    );
    assert_eq!(requests[1].url.path(), "/tts/3/advanced");
    assert_eq!(
        serde_json::from_slice::<Value>(&requests[1].body).unwrap(),
        json!({"messages": [{"destinations": [{"to": "14155550123"}], "from": "447491163443",
                             "text": "Su código es <break time=\"1s\"/> 4. 8. 2. 9. 1. 3", "language": "es",
                             "validityPeriod": 10}]})
    );
}

/// `language` is one of Infobip's own codes. Before: the language subtag, so `pt-BR` went out as `pt`,
/// `zh-TW` as `zh` and `nb` as `nb` (none of them listed), and Infobip refused every Brazilian call.
#[tokio::test]
async fn infobip_speaks_each_locale_in_a_language_it_lists() {
    let api = InfobipApi::new(INFOBIP_KEY);
    let server = api.clone().start().await;
    let rows = [
        ("en", "pt-BR", "pt-br"),
        ("en", "pt-PT", "pt-pt"),
        ("en", "zh-TW", "zh-tw"),
        ("en", "zh-Hans-CN", "zh-cn"),
        ("en", "nb-NO", "no"),
        ("en", "cy", "wls"),
        ("en", "eo", "epo"),
        ("en", "en-GB", "en-gb"),
        ("en", "es-MX", "es-mx"),
        // A locale Infobip cannot speak: `templates.default_locale`'s language.
        ("en", "sw", "en"),
        ("de-CH", "sw-KE", "de-ch"),
        ("pt-BR", "sr", "pt-br"),
    ];
    for (default_locale, locale, _) in rows {
        let provider = infobip(&server.uri(), default_locale);
        let result = provider
            .send(
                &phone_job(NUMBER),
                &voice("4. 8. 2. 9. 1. 3", locale),
                Validity::default(),
            )
            .await;
        assert!(verdict(result).starts_with("sent "), "{locale}");
    }
    assert_eq!(api.problems(), Vec::<String>::new());
    let sent: Vec<Value> = api
        .accepted()
        .into_iter()
        .map(|(_, body)| body["messages"][0]["language"].clone())
        .collect();
    let expected: Vec<Value> = rows.iter().map(|(_, _, l)| json!(l)).collect();
    assert_eq!(sent, expected);
}

/// `validityPeriod`, in minutes, is the time left before `expires_at` (rounded down), 1..2880.
/// Before: none, so Infobip's 48-hour default.
#[tokio::test]
async fn infobip_validity_period_is_the_time_left_in_minutes() {
    let api = InfobipApi::new(INFOBIP_KEY);
    let server = api.clone().start().await;
    let provider = infobip(&server.uri(), "en");
    for secs in [330, 20, 5 * 86_400] {
        let (job, validity) = expiring(secs);
        provider.send(&job, &sms("482913"), validity).await.unwrap();
        provider
            .send(&job, &voice("4. 8. 2. 9. 1. 3", "en"), validity)
            .await
            .unwrap();
    }
    assert_eq!(api.problems(), Vec::<String>::new());
    let periods: Vec<(String, Value)> = api
        .accepted()
        .into_iter()
        .map(|(path, body)| (path, body["messages"][0]["validityPeriod"].clone()))
        .collect();
    let sms_path = "/sms/2/text/advanced".to_owned();
    let tts_path = "/tts/3/advanced".to_owned();
    assert_eq!(
        periods,
        [
            (sms_path.clone(), json!(5)),
            (tts_path.clone(), json!(5)),
            (sms_path.clone(), json!(1)),
            (tts_path.clone(), json!(1)),
            (sms_path, json!(2880)),
            (tts_path, json!(2880)),
        ]
    );
}

/// Rows of Infobip's status table through the server (the whole table is a unit test in infobip.rs).
/// Before: credits and route were transient, sender, network and source permanent, flooding permanent.
#[tokio::test]
async fn infobip_statuses_are_classified_as_documented() {
    let rows = [
        ("PENDING_ACCEPTED", "sent"),
        ("PENDING_ENROUTE", "sent"),
        ("DELIVERED_TO_HANDSET", "sent"),
        ("REJECTED_NETWORK", "next provider REJECTED_NETWORK"),
        ("REJECTED_SOURCE", "next provider REJECTED_SOURCE"),
        ("REJECTED_SENDER", "next provider REJECTED_SENDER"),
        (
            "REJECTED_NOT_ENOUGH_CREDITS",
            "next provider REJECTED_NOT_ENOUGH_CREDITS",
        ),
        (
            "REJECTED_PREPAID_PACKAGE_EXPIRED",
            "next provider REJECTED_PREPAID_PACKAGE_EXPIRED",
        ),
        (
            "REJECTED_DESTINATION_NOT_REGISTERED",
            "next provider REJECTED_DESTINATION_NOT_REGISTERED",
        ),
        (
            "REJECTED_ROUTE_NOT_AVAILABLE",
            "next provider REJECTED_ROUTE_NOT_AVAILABLE",
        ),
        ("REJECTED_SYSTEM_ERROR", "transient REJECTED_SYSTEM_ERROR -"),
        ("REJECTED_FLOODING_FILTER", "transient REJECTED_FLOODING_FILTER -"),
        ("REJECTED_DESTINATION", "permanent REJECTED_DESTINATION"),
        ("REJECTED_INVALID_DESTINATION", "permanent REJECTED_INVALID_DESTINATION"),
        ("REJECTED_PREFIX_MISSING", "permanent REJECTED_PREFIX_MISSING"),
        ("REJECTED_DND", "permanent REJECTED_DND"),
        ("UNDELIVERABLE_NOT_DELIVERED", "permanent UNDELIVERABLE_NOT_DELIVERED"),
        ("EXPIRED_EXPIRED", "permanent EXPIRED_EXPIRED"),
    ];
    for (status, expected) in rows {
        let api = InfobipApi::new(INFOBIP_KEY).answering(status);
        let server = api.clone().start().await;
        let provider = infobip(&server.uri(), "en");
        for message in [sms("482913"), voice("4. 8. 2. 9. 1. 3", "en")] {
            let got = verdict(provider.send(&phone_job(NUMBER), &message, Validity::default()).await);
            let got = if got.starts_with("sent ") {
                "sent".to_owned()
            } else {
                got
            };
            assert_eq!(got, expected, "{status}");
        }
        assert_eq!(api.problems(), Vec::<String>::new());
    }
    // A wrong key: Infobip's 401 UNAUTHORIZED, another provider can send. Before: permanent.
    let server = InfobipApi::new("another-key").start().await;
    let result = infobip(&server.uri(), "en")
        .send(&phone_job(NUMBER), &sms("482913"), Validity::default())
        .await;
    assert_eq!(verdict(result), "next provider UNAUTHORIZED");
}

#[tokio::test]
async fn infobip_http_answers_are_classified_as_documented() {
    let rows: Vec<(ResponseTemplate, &str)> = vec![
        (
            infobip_api::error(400, "BAD_REQUEST", "Bad request"),
            "permanent BAD_REQUEST",
        ),
        (
            infobip_api::error(401, "UNAUTHORIZED", "Invalid login details"),
            "next provider UNAUTHORIZED",
        ),
        (
            infobip_api::error(403, "FORBIDDEN", "Forbidden"),
            "next provider FORBIDDEN",
        ),
        (
            infobip_api::error(429, "TOO_MANY_REQUESTS", "Too many requests").insert_header("Retry-After", "2"),
            "transient TOO_MANY_REQUESTS 2",
        ),
        (
            infobip_api::error(500, "GENERAL_ERROR", "Something went wrong"),
            "transient GENERAL_ERROR -",
        ),
        (
            ResponseTemplate::new(502).set_body_string("<html>bad gateway</html>"),
            "transient - -",
        ),
        (
            ResponseTemplate::new(200).set_body_string("garbage"),
            "unclear unreadable_answer -",
        ),
        (
            ResponseTemplate::new(200).set_delay(Duration::from_secs(5)),
            "unclear timeout -",
        ),
        // Two messages, neither for the number herald sent to: which one is ours cannot be told.
        (
            ResponseTemplate::new(200).set_body_json(json!({"messages": [
                {"to": "447700900001", "messageId": "a", "status": {"groupId": 1, "groupName": "PENDING",
                 "id": 26, "name": "PENDING_ACCEPTED", "description": "Message sent to next instance"}},
                {"to": "447700900002", "messageId": "b", "status": {"groupId": 5, "groupName": "REJECTED",
                 "id": 14, "name": "REJECTED_DESTINATION", "description": "By Destination"}}]})),
            "unclear unreadable_answer -",
        ),
        // The message for herald's number decides, wherever it is.
        (
            ResponseTemplate::new(200).set_body_json(json!({"bulkId": "b-1", "messages": [
                {"to": "447700900001", "messageId": "a", "status": {"groupId": 5, "groupName": "REJECTED",
                 "id": 14, "name": "REJECTED_DESTINATION", "description": "By Destination"}},
                {"to": "14155550123", "messageId": "ours", "status": {"groupId": 1, "groupName": "PENDING",
                 "id": 26, "name": "PENDING_ACCEPTED", "description": "Message sent to next instance"}}]})),
            "sent ours",
        ),
    ];
    for (i, (response, expected)) in rows.into_iter().enumerate() {
        let server = answering(response).await;
        let result = infobip(&server.uri(), "en")
            .send(&phone_job(NUMBER), &sms("482913"), Validity::default())
            .await;
        assert_eq!(verdict(result), expected, "case {i}");
    }
}

/// Through the broker: Infobip's refusal tied to the sender moves the job to the next provider in the
/// same attempt. Before: permanent, so the job failed without trying Vonage.
#[tokio::test]
async fn an_infobip_sender_refusal_moves_to_the_next_provider() {
    let infobip = InfobipApi::new(INFOBIP_KEY).answering("REJECTED_SENDER").start().await;
    let vonage_api = vonage_api();
    let vonage = vonage_api.clone().start().await;
    let mut app = TestApp::spawn(|c| {
        c.infobip = infobip_config(&infobip.uri());
        c.vonage = vonage_config(&vonage.uri());
        c.channels.sms = Some(vec![ProviderKind::Infobip, ProviderKind::Vonage]);
    })
    .await;
    app.publish(&job("sms")).await;
    let e = app.next_outcome(20).await;
    helpers::assert_event_shape(&e);
    assert_eq!(
        (e["type"].as_str(), e["provider"].as_str(), e["attempt"].as_u64()),
        (Some("gd_send_sms"), Some("vonage"), Some(1)),
        "{e}"
    );
    assert_eq!(requests(&infobip).await.len(), 1);
    assert_eq!(vonage_api.problems(), Vec::<String>::new());
    app.stop().await;
}
