//! `herald.feedback` and the guard end to end (docs/fraud-and-limits.md "Adaptive guard").

use std::time::Duration;

use crate::helpers;
use crate::helpers::TestApp;
use serde_json::{Value, json};

fn sms(id: &str, to: &str, user: &str, ip: &str) -> Value {
    json!({"id": id, "channel": "sms", "to": to, "code": "123456", "user_id": user, "ip": ip})
}

/// docs/fraud-and-limits.md "Adaptive guard": a job refused as `suspected_fraud` "is acked, not sent, not retried, and
/// counts against nothing else". The fixed limits run first and have already counted it: a real user whose code the
/// guard refused (say, travelling to a country with no history) has spent a per-user code on nothing, and
/// their next code, to their home country, is throttled.
#[tokio::test]
async fn hostile_feedback_is_dead_lettered_or_counted_once() {
    let mut app = TestApp::spawn(|c| {
        c.fraud.mode = herald::config::FraudMode::Enforce;
        c.fraud.learning_period = herald::config::HumanDuration(Duration::ZERO);
    })
    .await;
    app.publish(&sms("fb-sms", "+447700900123", "u1", "10.0.0.1")).await;
    assert_eq!(app.next_outcome(20).await["type"], "gd_send_sms");
    let mut email = helpers::job("email");
    email["id"] = "fb-email".into();
    app.publish(&email).await;
    assert_eq!(app.next_outcome(20).await["type"], "gd_send_email");

    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let huge = format!(
        r#"{{"job_id":"fb-sms","verified":true,"pad":"{}"}}"#,
        "x".repeat(1 << 20)
    );
    let malformed: Vec<(Vec<u8>, Option<&str>)> = vec![
        (b"not json 4155550123".to_vec(), None),
        (deep.into_bytes(), None),
        (huge.into_bytes(), Some("application/json")),
        (br#"{"job_id":"fb-sms","verified":"true"}"#.to_vec(), None),
        (br#"{"job_id":"fb-sms","verified":1}"#.to_vec(), None),
        (br#"{"job_id":"fb-sms\u0000","verified":true}"#.to_vec(), None),
        (br#"{"job_id":["fb-sms"],"verified":true}"#.to_vec(), None),
        (br#"{"job_id":"fb-sms","verified":true}"#.to_vec(), Some("text/plain")),
        (b"\xef\xbb\xbf{\"job_id\":\"fb-sms\",\"verified\":true}".to_vec(), None),
        (vec![0xff, 0xfe, 0x00], None),
        (Vec::new(), None),
    ];
    let n = malformed.len();
    for (body, ct) in &malformed {
        app.publish_feedback(body, *ct).await;
    }
    // Replays, unknown ids, the email job, `verified: false`.
    for _ in 0..50 {
        app.publish_feedback(br#"{"job_id":"fb-sms","verified":true}"#, None)
            .await;
    }
    for body in [
        br#"{"job_id":"fb-email","verified":true}"#.as_slice(),
        br#"{"job_id":"never-sent","verified":true}"#,
        br#"{"job_id":"fb-sms","verified":false}"#,
        br#"{"job_id":"fb-sms","job_id":"fb-email","verified":true}"#,
    ] {
        app.publish_feedback(body, Some("application/json; charset=utf-8"))
            .await;
    }
    let m = app
        .wait_metric(r#"herald_feedback_total{result="malformed"}"#, n as f64)
        .await;
    let dead = app.dead_letters(n).await;
    assert_eq!(dead.len(), n, "every malformed message dead-lettered");
    for (_, reason) in &dead {
        assert!(
            !reason.is_empty() && !reason.contains("4155550123") && !reason.contains("fb-sms"),
            "{reason}"
        );
    }
    let m2 = app.wait_metric(r#"herald_feedback_total{result="unknown"}"#, 2.0).await;
    assert_eq!(
        helpers::metric(&m2, r#"gd_send_verified_total{channel="sms",country="44"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(
        helpers::metric(&m2, r#"herald_feedback_total{result="counted"}"#),
        1.0,
        "{m2}"
    );
    // The consumer still runs: a new job's feedback is counted.
    app.publish(&sms("fb-sms-2", "+447700900124", "u2", "10.0.0.2")).await;
    assert_eq!(app.next_outcome(20).await["type"], "gd_send_sms");
    app.publish_feedback(br#"{"job_id":"fb-sms-2","verified":true}"#, None)
        .await;
    app.wait_metric(r#"gd_send_verified_total{channel="sms",country="44"}"#, 2.0)
        .await;
    app.stop().await;
}
