//! The guard's feedback across a Redis outage (docs/fraud-and-limits.md "Adaptive guard"): feedback waits in the queue
//! and is counted once Redis is back, instead of being nacked until the quorum queue's delivery limit drops it.

use std::time::Duration;

use crate::helpers;
use crate::helpers::TestApp;
use serde_json::json;

/// Redis goes away for ten seconds while a verified code's feedback is waiting. The consumer nacks it
/// with requeue every 500 ms "so it comes back later" — but `herald.feedback` is a quorum queue with
/// `x-delivery-limit` 5 and a dead-letter route to `herald.dead`: after five tries the broker dead-letters
/// the feedback (with no `x-herald-error`), and the verified code is never counted. A Redis blip of a few
/// seconds loses every feedback message in flight, and with it the budget real users earned.
#[tokio::test]
async fn feedback_waiting_out_a_redis_outage_is_counted_when_redis_returns() {
    let proxy = helpers::TcpProxy::to(6379).await;
    let redis_url = format!("redis://127.0.0.1:{}", proxy.port);
    let mut app = TestApp::spawn(|c| {
        c.redis.url = herald::config::Secret::new(redis_url);
        c.fraud.mode = herald::config::FraudMode::Enforce;
    })
    .await;
    let id = format!("outage-{}", uuid::Uuid::new_v4().simple());
    app.publish(
        &json!({"id": id, "channel": "sms", "to": "+447700900123", "code": "123456",
                        "user_id": "u1", "ip": "10.0.0.1"}),
    )
    .await;
    assert_eq!(app.next_outcome(20).await["type"], "gd_send_sms");

    proxy.cut();
    app.publish_feedback(
        json!({"job_id": id, "verified": true}).to_string().as_bytes(),
        Some("application/json"),
    )
    .await;
    // The scenario: an outage longer than the feedback queue's five deliveries at 500 ms each.
    tokio::time::sleep(Duration::from_secs(10)).await;
    proxy.restore();

    let series = r#"gd_send_verified_total{channel="sms",country="44"}"#;
    let mut counted = 0.0;
    for _ in 0..200 {
        counted = helpers::metric(&app.metrics().await, series);
        if counted >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = app.dead_letters(1).await;
    assert_eq!(
        counted,
        1.0,
        "the verified code was never counted; dead-lettered: {:?}",
        dead.iter()
            .map(|(b, r)| (String::from_utf8_lossy(b).into_owned(), r.clone()))
            .collect::<Vec<_>>()
    );
    app.stop().await;
}
