//! Retries, failover chains, expiry and idempotency (docs/providers/README.md, docs/guarantees.md) against the real
//! broker.

use std::time::{Duration, Instant};

use crate::helpers;
use crate::helpers::{TestApp, job, metric, twilio};
use herald::config::{HumanDuration, ProviderKind, Secret};
use serde_json::json;
use wiremock::matchers::{body_string_contains, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn fast_schedule(steps: usize) -> Vec<HumanDuration> {
    vec![HumanDuration(Duration::from_millis(50)); steps]
}

fn unavailable() -> ResponseTemplate {
    ResponseTemplate::new(503).set_body_json(json!({"code": 20503, "message": "Service unavailable", "status": 503}))
}

fn too_many_requests(retry_after: &str) -> ResponseTemplate {
    ResponseTemplate::new(429)
        .insert_header("Retry-After", retry_after)
        .set_body_json(json!({"code": 20429, "message": "Too Many Requests", "status": 429}))
}

fn created() -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(json!({"sid": "SM0123456789abcdef0123456789abcdef", "status": "queued"}))
}

#[tokio::test]
async fn a_transient_failure_is_retried_and_only_the_final_result_is_an_event() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(unavailable())
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("POST")).respond_with(created()).mount(&server).await;
    let mut app = TestApp::spawn(|c| {
        twilio(c, &server.uri());
        c.retry.schedule = fast_schedule(3).into();
    })
    .await;
    let j = job("sms");
    app.publish(&j).await;
    let events = app.events(1).await;
    assert_eq!(events[0]["type"], "gd_send_sms");
    assert_eq!(events[0]["attempt"], 3);
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
    let m = app.settled_metrics().await;
    assert_eq!(metric(&m, "herald_retries_total"), 2.0);
    assert_eq!(app.queue_len(&app.config.amqp.retry_queue).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn after_the_last_step_the_job_is_exhausted_and_dead_lettered() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(unavailable())
        .mount(&server)
        .await;
    let mut app = TestApp::spawn(|c| {
        twilio(c, &server.uri());
        c.retry.schedule = fast_schedule(2).into();
    })
    .await;
    app.publish(&job("sms")).await;
    let e = &app.events(1).await[0];
    assert_eq!(e["type"], "gd_send_sms_failure");
    assert_eq!(e["error"]["code"], "attempts_exhausted");
    assert_eq!(e["error"]["provider_code"], "20503");
    assert_eq!(e["attempt"], 3);
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
    let dead = app.dead_letters(1).await;
    assert!(dead[0].1.starts_with("attempts_exhausted: "), "{}", dead[0].1);
    let m = app.settled_metrics().await;
    assert_eq!(metric(&m, "herald_retries_total"), 2.0);
    assert_eq!(
        metric(
            &m,
            "gd_send_sms_failure_total{country=\"1\",provider=\"twilio\",reason=\"attempts_exhausted\"}"
        ),
        1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn permanent_failures_are_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400}),
        ))
        .mount(&server)
        .await;
    let mut app = TestApp::spawn(|c| {
        twilio(c, &server.uri());
        c.retry.schedule = fast_schedule(3).into();
    })
    .await;
    app.publish(&job("sms")).await;
    let e = &app.events(1).await[0];
    assert_eq!(e["error"]["code"], "provider_rejected");
    assert_eq!(e["error"]["provider_code"], "21610");
    assert_eq!(e["attempt"], 1);
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(too_many_requests("2"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST")).respond_with(created()).mount(&server).await;
    let mut app = TestApp::spawn(|c| {
        twilio(c, &server.uri());
        c.retry.schedule = vec![
            HumanDuration(Duration::from_millis(50)),
            HumanDuration(Duration::from_secs(5)),
        ]
        .into();
    })
    .await;
    let started = Instant::now();
    app.publish(&job("sms")).await;
    let e = &app.events(1).await[0];
    assert_eq!(e["type"], "gd_send_sms");
    assert_eq!(e["attempt"], 2);
    // A lower bound only: the broker cannot hand the job back before its TTL ran out.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After: 2 was not honoured"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_unavailable_provider_fails_over_to_the_next_in_the_chain() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(unavailable())
        .mount(&server)
        .await;
    let mut app = TestApp::spawn(|c| {
        twilio(c, &server.uri());
        c.channels.sms = Some(vec![ProviderKind::Twilio, ProviderKind::Outbox]);
    })
    .await;
    let j = job("sms");
    app.publish(&j).await;
    let e = &app.events(1).await[0];
    assert_eq!(e["type"], "gd_send_sms");
    assert_eq!(e["provider"], "outbox", "the event names the provider that delivered");
    assert_eq!(e["attempt"], 1);
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    assert_eq!(app.outbox_lines().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_job_that_would_expire_before_its_retry_ends_as_expired() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(unavailable())
        .mount(&server)
        .await;
    let mut app = TestApp::spawn(|c| {
        twilio(c, &server.uri());
        c.retry.schedule = vec![HumanDuration(Duration::from_secs(60))].into();
    })
    .await;
    let mut j = job("sms");
    j["expires_at"] = (chrono::Utc::now() + chrono::Duration::seconds(10)).to_rfc3339().into();
    app.publish(&j).await;
    let e = &app.events(1).await[0];
    assert_eq!(e["error"]["code"], "expired");
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_replayed_job_id_is_not_sent_again() {
    let mut app = TestApp::spawn(|_| {}).await;
    let j = job("sms");
    app.publish(&j).await;
    assert_eq!(app.events(1).await[0]["type"], "gd_send_sms");

    // The MFA server replays it: acked, not sent, no event on the exchange...
    app.publish(&j).await;
    // ...and a replay that waits on reply_to hears `duplicate`.
    let reply = app.publish_and_wait(&j).await;
    assert_eq!(reply["error"]["code"], "duplicate");
    assert_eq!(reply["job_id"], j["id"]);

    app.events(0).await;
    assert_eq!(app.outbox_lines().len(), 1, "sent once");
    assert_eq!(app.queue_len(&app.config.amqp.jobs_queue).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_copies_of_one_job_are_sent_once() {
    let mut app = TestApp::spawn(|_| {}).await;
    let j = job("sms");
    for _ in 0..5 {
        app.publish(&j).await;
    }
    app.events(1).await;
    assert_eq!(app.outbox_lines().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn with_redis_a_replica_knows_what_another_one_delivered() {
    let redis = Secret::new("redis://127.0.0.1:6379");
    let mut app = TestApp::spawn(|c| c.redis.url = redis.clone()).await;
    let j = job("sms");
    app.publish(&j).await;
    app.events(1).await;
    app.stop().await;

    // A second replica: its own local state directory, the same Redis.
    let replica = helpers::Replica::spawn(&app.config).await;
    let reply = app.publish_and_wait(&j).await;
    assert_eq!(reply["error"]["code"], "duplicate", "{reply}");
    app.events(0).await;
    assert_eq!(app.outbox_lines().len(), 1, "not sent again");
    replica.stop().await;
}

/// A retry waits its own delay, not the longest one queued before it: two jobs whose waits differ are
/// each back within 20% of their own.
#[tokio::test]
async fn each_retry_waits_its_own_delay() {
    let server = MockServer::start().await;
    // The long job is told to come back in 8 s, the short one fails plainly (1 s step).
    Mock::given(method("POST"))
        .and(body_string_contains("15550000001"))
        .respond_with(too_many_requests("8"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(body_string_contains("15550000002"))
        .respond_with(unavailable())
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST")).respond_with(created()).mount(&server).await;
    let mut app = TestApp::spawn(|c| {
        twilio(c, &server.uri());
        c.retry.schedule = vec![
            HumanDuration(Duration::from_secs(1)),
            HumanDuration(Duration::from_secs(8)),
        ]
        .into();
    })
    .await;
    let mut long = job("sms");
    long["to"] = "+15550000001".into();
    let mut short = job("sms");
    short["to"] = "+15550000002".into();
    app.publish(&long).await;
    let long_at = Instant::now();
    // The scenario: the second job comes 300 ms after the first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.publish(&short).await;
    let short_at = Instant::now();
    let mut waited = std::collections::HashMap::new();
    for _ in 0..2 {
        let e = app.next_outcome(30).await;
        assert_eq!(e["type"], "gd_send_sms", "{e}");
        assert_eq!(e["attempt"], 2);
        let since = if e["job_id"] == long["id"] { long_at } else { short_at };
        waited.insert(e["job_id"].as_str().unwrap().to_owned(), since.elapsed());
    }
    // Each event leaves right after the second attempt: its wait, jittered ±20% (Retry-After exactly).
    let short_wait = waited[short["id"].as_str().unwrap()];
    let long_wait = waited[long["id"].as_str().unwrap()];
    assert!(
        short_wait >= Duration::from_millis(800) && short_wait <= Duration::from_millis(1200 * 6 / 5),
        "the 1 s retry came back after {short_wait:?}"
    );
    assert!(
        long_wait >= Duration::from_secs(8) && long_wait <= Duration::from_millis(9600),
        "the 8 s retry came back after {long_wait:?}"
    );
    app.stop().await;
}
