//! Workflows (docs/workflows.md) against the real broker: one code over several channels in turn, the
//! next step only when the last did not reach the person within its wait. The waits are short (1-2 s);
//! the providers are the outbox and the spec-checking Twilio, whose status callbacks are signed as Twilio
//! signs them.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::{Mock, MockServer};

use crate::helpers::twilio_api::{Answer, TwilioApi};
use crate::helpers::{Broker, HeraldProcess, TestApp, metric, outbox_counts, process_env, twilio};
use crate::receipts::{CALLBACK, callback, message_status};
use herald::config::workflows::{Step, Until, Workflow};
use herald::config::{Config, HumanDuration, ProviderKind};
use herald::job::Channel;

fn step(channel: Channel, wait_ms: Option<u64>) -> Step {
    Step {
        channel,
        wait: wait_ms.map(|ms| HumanDuration(Duration::from_millis(ms))),
    }
}

fn workflow(c: &mut Config, until: Until, steps: Vec<Step>) {
    c.workflows.insert("otp".into(), Workflow { steps, until });
}

/// A workflow job for a phone, with no channel: the workflow's first step gives it.
fn otp_job() -> Value {
    json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "workflow": "otp",
        "to": "+14155550123",
        "code": "482913",
        "user_id": "auth0|5f7c8ec7c33c6c004bbafe82",
        "ip": "203.0.113.7",
    })
}

/// The spec-checking Twilio, and the server it answers on.
async fn twilio_api() -> (TwilioApi, MockServer) {
    let api = TwilioApi::new("AC0123456789abcdef0123456789abcdef", "test-auth-token");
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(api.clone())
        .mount(&server)
        .await;
    (api, server)
}

/// Twilio for sms, with its status callbacks; voice through the outbox.
fn with_twilio(c: &mut Config, server: &MockServer) {
    twilio(c, &server.uri());
    c.twilio.status_callback_url = Some(CALLBACK.parse().unwrap());
    c.channels.voice = Some(vec![ProviderKind::Outbox]);
}

/// The events of one job until `until` (inclusive) or `secs`, then any that follow within 1.5 s.
async fn events_of(broker: &mut Broker, id: &Value, last: &str, secs: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let Some(e) = broker.try_next_event(1).await else {
            continue;
        };
        if e["job_id"] != *id {
            continue;
        }
        let done = e["type"] == last;
        out.push(e);
        if done {
            break;
        }
    }
    while let Some(e) = broker.try_next_event(2).await {
        if e["job_id"] == *id {
            out.push(e);
        }
    }
    out
}

/// An event matches its schema in docs/asyncapi.yaml (`Event` for a step, `WorkflowEvent` for the end).
fn assert_documented(event: &Value) {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/asyncapi.yaml")).unwrap();
    let doc: Value = serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&doc).unwrap()).unwrap();
    let name = if event["type"] == "gd_send_workflow" {
        "WorkflowEvent"
    } else {
        "Event"
    };
    let schema = json!({"$ref": format!("#/components/schemas/{name}"), "components": doc["components"]});
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let errors: Vec<String> = validator.iter_errors(event).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{event} breaks docs/asyncapi.yaml {name}: {errors:?}"
    );
}

fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| format!("{}:{}", e["type"].as_str().unwrap_or("?"), e["step"]))
        .collect()
}

#[tokio::test]
async fn a_step_undelivered_within_its_wait_is_followed_by_the_next_step_once() {
    let mut app = TestApp::spawn(|c| {
        workflow(
            c,
            Until::Delivered,
            vec![step(Channel::Whatsapp, Some(1000)), step(Channel::Sms, None)],
        )
    })
    .await;
    let job = otp_job();
    let (replies, mut reply) = app.reply_queue().await;
    let props = lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_reply_to(replies)
        .with_correlation_id("c-1".into());
    let sent = Instant::now();
    app.publish_raw(job.to_string().as_bytes(), props).await;
    let events = events_of(&mut app, &job["id"], "gd_send_workflow", 20).await;
    assert_eq!(
        types(&events),
        ["gd_send_whatsapp:1", "gd_send_sms:2", "gd_send_workflow:null"],
        "{events:?}"
    );
    assert_eq!(events[0]["workflow"], "otp");
    events.iter().for_each(assert_documented);
    assert!(sent.elapsed() >= Duration::from_secs(1), "step 2 waited step 1's wait");
    let end = &events[2];
    assert_eq!(
        (&end["result"], &end["steps"], &end["channel"]),
        (&json!("sent"), &json!(2), &json!("sms"))
    );
    assert_eq!(end["workflow"], "otp");
    // The outbox got each step once; reply_to heard step 1 only.
    let lines = app.outbox_lines();
    let channels: Vec<&str> = lines.iter().filter_map(|l| l["channel"].as_str()).collect();
    assert_eq!(channels, ["whatsapp", "sms"], "{lines:?}");
    let first = tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut reply))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first: Value = serde_json::from_slice(&first.data).unwrap();
    assert_eq!(first["type"], "gd_send_whatsapp");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), futures_util::StreamExt::next(&mut reply))
            .await
            .is_err(),
        "reply_to answered once"
    );
    let m = app.settled_metrics().await;
    assert_eq!(
        metric(&m, r#"gd_send_workflow_total{result="sent",workflow="otp"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"gd_send_workflow_steps_total{channel="sms",outcome="sent",step="2",workflow="otp"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn a_delivered_receipt_within_the_wait_ends_the_workflow_without_the_next_step() {
    let (api, server) = twilio_api().await;
    let mut app = TestApp::spawn(|c| {
        workflow(
            c,
            Until::Delivered,
            vec![step(Channel::Sms, Some(2000)), step(Channel::Voice, None)],
        );
        with_twilio(c, &server);
    })
    .await;
    let job = otp_job();
    app.publish(&job).await;
    let first = app.next_outcome(20).await;
    assert_eq!(
        (&first["type"], &first["step"]),
        (&json!("gd_send_sms"), &json!(1)),
        "{first}"
    );
    let sid = first["provider_message_id"].as_str().unwrap().to_owned();
    assert_eq!(
        callback(&app.http.to_string(), &message_status(&sid, "delivered", None)).await,
        200
    );
    let events = events_of(&mut app, &job["id"], "gd_send_workflow", 20).await;
    assert_eq!(
        types(&events),
        ["gd_send_sms_status:null", "gd_send_workflow:null"],
        "{events:?}"
    );
    assert_eq!(
        (&events[1]["result"], &events[1]["channel"], &events[1]["steps"]),
        (&json!("delivered"), &json!("sms"), &json!(1))
    );
    assert!(app.outbox_lines().is_empty(), "no voice call");
    assert_eq!((api.served(), api.violations()), (1, Vec::<String>::new()));
}

#[tokio::test]
async fn a_failed_step_moves_on_at_once() {
    let (api, server) = twilio_api().await;
    // 21211: 'To' is not a valid phone number, a permanent refusal.
    api.then([Answer::Error(21211)]);
    let mut app = TestApp::spawn(|c| {
        workflow(
            c,
            Until::Delivered,
            vec![step(Channel::Sms, Some(30_000)), step(Channel::Voice, None)],
        );
        with_twilio(c, &server);
    })
    .await;
    let job = otp_job();
    let sent = Instant::now();
    app.publish(&job).await;
    let events = events_of(&mut app, &job["id"], "gd_send_workflow", 20).await;
    // Twilio refused step 1 for good: step 2 does not wait step 1's 30 s.
    assert_eq!(
        types(&events),
        ["gd_send_sms_failure:1", "gd_send_voice:2", "gd_send_workflow:null"],
        "{events:?}"
    );
    assert!(sent.elapsed() < Duration::from_secs(20));
    assert_eq!(events[0]["error"]["code"], "provider_rejected");
    assert_eq!((&events[2]["result"], &events[2]["steps"]), (&json!("sent"), &json!(1)));
    // A step followed by another is not the job's end: nothing in herald.dead.
    let dead = app.config.amqp.dead_queue.clone();
    assert_eq!(app.queue_len(&dead).await, 0);
}

#[tokio::test]
async fn verified_feedback_ends_the_workflow() {
    let mut app = TestApp::spawn(|c| {
        workflow(
            c,
            Until::Verified,
            vec![step(Channel::Sms, Some(1500)), step(Channel::Voice, None)],
        );
        c.channels.voice = Some(vec![ProviderKind::Outbox]);
    })
    .await;
    let job = otp_job();
    app.publish(&job).await;
    let first = app.next_outcome(20).await;
    assert_eq!(first["step"], 1);
    let feedback = json!({"job_id": job["id"], "verified": true}).to_string();
    app.publish_feedback(feedback.as_bytes(), Some("application/json"))
        .await;
    let events = events_of(&mut app, &job["id"], "gd_send_workflow", 20).await;
    assert_eq!(types(&events), ["gd_send_workflow:null"], "{events:?}");
    assert_eq!(
        (&events[0]["result"], &events[0]["channel"]),
        (&json!("verified"), &json!("sms"))
    );
    assert_eq!(app.outbox_lines().len(), 1, "the voice step never came");
}

#[tokio::test]
async fn a_replay_never_restarts_a_workflow() {
    let mut app = TestApp::spawn(|c| {
        workflow(
            c,
            Until::Delivered,
            vec![step(Channel::Sms, Some(1500)), step(Channel::Voice, None)],
        )
    })
    .await;
    let job = otp_job();
    app.publish(&job).await;
    let first = app.next_outcome(20).await;
    assert_eq!(first["step"], 1);
    // During the wait, and after the end: each replay is acked, nothing is sent.
    app.publish(&job).await;
    let events = events_of(&mut app, &job["id"], "gd_send_workflow", 20).await;
    assert_eq!(
        types(&events),
        ["gd_send_voice:2", "gd_send_workflow:null"],
        "{events:?}"
    );
    app.publish(&job).await;
    assert!(events_of(&mut app, &job["id"], "-", 3).await.is_empty());
    let sends = app.outbox_lines();
    assert_eq!(sends.len(), 2, "{sends:?}");
}

#[tokio::test]
async fn an_unknown_workflow_or_a_step_that_does_not_fit_is_an_invalid_job() {
    let mut app = TestApp::spawn(|c| {
        workflow(
            c,
            Until::Delivered,
            vec![step(Channel::Sms, Some(1000)), step(Channel::Voice, None)],
        )
    })
    .await;
    let mut unknown = otp_job();
    unknown["workflow"] = json!("nope");
    let mut email = otp_job();
    email["to"] = json!("jane.doe@example.com");
    for (job, reason) in [
        (&unknown, "invalid_job: field `workflow` names no configured workflow"),
        (
            &email,
            "invalid_job: step 1 of the workflow is sms, which field `to` does not fit",
        ),
    ] {
        app.publish(job).await;
        let e = app.next_outcome(20).await;
        assert_eq!(e["job_id"], job["id"]);
        assert_eq!(e["error"]["code"], "invalid_job", "{e}");
        let dead = app.dead_letters(1).await;
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].1, reason);
    }
    assert!(app.outbox_lines().is_empty());
}

/// herald as a process, SIGKILLed during step 1's wait: the wait is a message in the broker, so the next
/// herald sends step 2 when it is due, once.
#[tokio::test]
async fn a_sigkill_during_a_wait_neither_loses_nor_repeats_the_next_step() {
    let mut broker = Broker::new(|c| {
        workflow(
            c,
            Until::Delivered,
            vec![step(Channel::Sms, Some(2000)), step(Channel::Voice, None)],
        )
    })
    .await;
    let env = process_env(&broker.config);
    let outbox = broker.config.outbox.path.clone();
    let mut herald = HeraldProcess::start(&env);
    let job = otp_job();
    broker.publish(&job).await;
    let first = broker.next_outcome(20).await;
    assert_eq!(first["step"], 1);
    herald.kill();
    let _herald = HeraldProcess::start(&env);
    let events = events_of(&mut broker, &job["id"], "gd_send_workflow", 30).await;
    assert_eq!(
        types(&events),
        ["gd_send_voice:2", "gd_send_workflow:null"],
        "{events:?}"
    );
    let id = job["id"].as_str().unwrap();
    assert_eq!(outbox_counts(&outbox).get(id), Some(&2), "one send per step");
}

/// Two replicas on Redis take the jobs, their replays and their checks in any order: each job still gets
/// step 1, step 2 and its end exactly once (the workflow's records are in Redis, shared).
#[tokio::test]
async fn two_replicas_on_redis_send_each_step_once() {
    const JOBS: usize = 20;
    let mut app = TestApp::spawn(|c| {
        workflow(
            c,
            Until::Delivered,
            vec![step(Channel::Sms, Some(1000)), step(Channel::Voice, None)],
        );
        c.redis.url = herald::config::Secret::new("redis://127.0.0.1:6379");
    })
    .await;
    let replica = crate::helpers::Replica::spawn(&app.config).await;
    let jobs: Vec<Value> = (0..JOBS).map(|_| otp_job()).collect();
    app.publish_many(&jobs).await;
    // Replayed during their wait (some may still be on step 1's send): never a second step 1.
    app.publish_many(&jobs).await;
    let mut seen: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen
        .values()
        .filter(|t| t.iter().any(|t| t.starts_with("gd_send_workflow")))
        .count()
        < JOBS
    {
        assert!(Instant::now() < deadline, "not every workflow ended: {seen:?}");
        if let Some(e) = app.try_next_event(1).await {
            let t = format!("{}:{}", e["type"].as_str().unwrap(), e["step"]);
            seen.entry(e["job_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(t);
        }
    }
    while let Some(e) = app.try_next_event(3).await {
        let t = format!("{}:{}", e["type"].as_str().unwrap(), e["step"]);
        seen.entry(e["job_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(t);
    }
    for job in &jobs {
        let id = job["id"].as_str().unwrap();
        assert_eq!(
            seen.get(id).map(Vec::as_slice),
            Some(
                &[
                    "gd_send_sms:1".to_owned(),
                    "gd_send_voice:2".into(),
                    "gd_send_workflow:null".into()
                ][..]
            ),
            "{id}"
        );
    }
    replica.stop().await;
}

/// A step is retried like any send: a transient refusal retries step 1 (attempt 2), and its wait starts from
/// the send that went through.
#[tokio::test]
async fn a_step_is_retried_like_any_send() {
    let (api, server) = twilio_api().await;
    // 20503: Twilio's service unavailable, transient.
    api.then([Answer::Error(20503)]);
    let mut app = TestApp::spawn(|c| {
        workflow(
            c,
            Until::Delivered,
            vec![step(Channel::Sms, Some(1000)), step(Channel::Voice, None)],
        );
        with_twilio(c, &server);
        c.retry.schedule = vec![HumanDuration(Duration::from_millis(200))].into();
    })
    .await;
    let job = otp_job();
    app.publish(&job).await;
    let events = events_of(&mut app, &job["id"], "gd_send_workflow", 20).await;
    assert_eq!(
        types(&events),
        ["gd_send_sms:1", "gd_send_voice:2", "gd_send_workflow:null"],
        "{events:?}"
    );
    assert_eq!(events[0]["attempt"], 2, "{}", events[0]);
    assert_eq!(api.served(), 2);
}

/// No step starts after the job's `expires_at`: the workflow ends `expired` instead of calling.
#[tokio::test]
async fn no_step_starts_after_the_code_expired() {
    let mut app = TestApp::spawn(|c| {
        workflow(
            c,
            Until::Delivered,
            vec![step(Channel::Sms, Some(2000)), step(Channel::Voice, None)],
        )
    })
    .await;
    let mut job = otp_job();
    job["expires_at"] = json!((chrono::Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339());
    app.publish(&job).await;
    let events = events_of(&mut app, &job["id"], "gd_send_workflow", 20).await;
    assert_eq!(types(&events), ["gd_send_sms:1", "gd_send_workflow:null"], "{events:?}");
    assert_eq!(
        (&events[1]["result"], &events[1]["steps"]),
        (&json!("expired"), &json!(1))
    );
    assert_eq!(app.outbox_lines().len(), 1, "no voice call");
}

/// An undelivered receipt moves the workflow on at the step's next check (every 5 s of its wait at most),
/// not at the end of a 12 s wait.
#[tokio::test]
async fn an_undelivered_receipt_moves_on_before_the_wait_runs_out() {
    let (_api, server) = twilio_api().await;
    let mut app = TestApp::spawn(|c| {
        workflow(
            c,
            Until::Delivered,
            vec![step(Channel::Sms, Some(12_000)), step(Channel::Voice, None)],
        );
        with_twilio(c, &server);
    })
    .await;
    let job = otp_job();
    let sent = Instant::now();
    app.publish(&job).await;
    let first = app.next_outcome(20).await;
    assert_eq!(first["step"], 1, "{first}");
    let sid = first["provider_message_id"].as_str().unwrap().to_owned();
    let status = message_status(&sid, "undelivered", Some("30008"));
    assert_eq!(callback(&app.http.to_string(), &status).await, 200);
    let events = events_of(&mut app, &job["id"], "gd_send_workflow", 20).await;
    assert_eq!(
        types(&events),
        ["gd_send_sms_status:null", "gd_send_voice:2", "gd_send_workflow:null"],
        "{events:?}"
    );
    let ended = sent.elapsed();
    assert!(
        ended < Duration::from_secs(10),
        "moved on after {ended:?}, not at the first check (4 s)"
    );
}
