//! The shared (Redis) fraud guard across replicas and restarts.

use std::time::Duration;

use herald::config::Config;
use herald::fraud::{Guard, Mode, Shared, Verdict};
use herald::job::Job;

fn job(id: &str, to: &str, ip: &str) -> Job {
    let json = serde_json::json!({
        "id": id, "channel": "sms", "to": to, "code": "123456", "user_id": id, "ip": ip
    });
    Job::from_json(json.to_string().as_bytes()).unwrap()
}

fn settings(outage_after: Duration) -> herald::fraud::Settings {
    let mut config = Config::default();
    config.fraud.mode = Mode::Enforce;
    config.fraud.learning_period.0 = Duration::ZERO;
    config.fraud.outage_after.0 = outage_after;
    config.fraud_settings()
}

fn replica(namespace: &str, outage_after: Duration) -> Guard {
    let conn = herald::store::redis_connection("redis://127.0.0.1:6379")
        .expect("Redis must be running on 127.0.0.1:6379 for the integration tests");
    Guard::shared(settings(outage_after), Shared::new(conn, namespace), None)
}

/// Verified history for +44 (30 real codes, all typed in) through `guard`.
async fn history(guard: &Guard, tag: &str) {
    for i in 0..30 {
        let id = format!("{tag}-real-{i}");
        let j = job(&id, &format!("+4477009{i:05}"), &format!("10.1.0.{i}"));
        assert_eq!(guard.check(&j).await, Verdict::Allow);
        guard.verified(&id).await.unwrap();
    }
}

/// A restarted replica (or a new one scaled up) knows the shared learning clock only after its first
/// job's script has read it: that first job is decided as if the guard were still learning, and a
/// destination over budget gets its code. `enforcing()` reads `Shared::since` before `check` refreshes
/// it.
#[tokio::test]
async fn a_restarted_replica_enforces_from_its_first_job() {
    let namespace = format!("attack2.{}", uuid::Uuid::new_v4().simple());
    let a = replica(&namespace, Duration::from_secs(3600));
    history(&a, "a").await;
    // +882 (no history): floor of one an hour; the second is refused.
    assert_eq!(
        a.check(&job("pump-1", "+88216540001", "198.18.0.1")).await,
        Verdict::Allow
    );
    assert_ne!(
        a.check(&job("pump-2", "+88216540002", "198.18.0.2")).await,
        Verdict::Allow
    );
    // Restart: a fresh process on the same Redis.
    drop(a);
    let b = replica(&namespace, Duration::from_secs(3600));
    assert_ne!(
        b.check(&job("pump-3", "+88216540003", "198.18.0.3")).await,
        Verdict::Allow,
        "the first job after a restart went to a destination over its budget"
    );
}

/// Contract §12 / README: enforcing falls back to monitoring "while feedback has stopped everywhere at
/// once". The outage detector is per process: a replica that consumes no feedback itself (feedback is
/// spread over replicas, or its feedback consumer is reconnecting) declares an outage and lets a pump
/// through, while the other replica counts verified codes in the same Redis the whole time.
#[tokio::test]
async fn a_replica_without_feedback_of_its_own_keeps_enforcing_while_feedback_flows() {
    // Control: with the outage detector out of reach the range floor holds the pump (one more for the
    // first-job gap above).
    let control = pump_through_a_replica_without_feedback(Duration::from_secs(3600)).await;
    assert!(control <= 11, "control: {control}");
    let pumped_out = pump_through_a_replica_without_feedback(Duration::from_secs(2)).await;
    assert!(
        pumped_out <= 11,
        "{pumped_out} pumped SMS went out through the replica that saw no feedback (range daily floor 10)"
    );
}

async fn pump_through_a_replica_without_feedback(outage_after: Duration) -> usize {
    let namespace = format!("attack2.{}", uuid::Uuid::new_v4().simple());
    let a = replica(&namespace, outage_after);
    let b = replica(&namespace, outage_after);
    history(&a, "a").await;
    let mut pumped_out = 0;
    let started = std::time::Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(5) {
        i += 1;
        // Real users keep verifying, through replica A (its feedback consumer got these messages).
        let id = format!("a-live-{i}");
        let j = job(&id, &format!("+4477009{:05}", 100 + i), &format!("10.2.0.{}", i % 250));
        a.check(&j).await;
        a.verified(&id).await.unwrap();
        // A pump into one never-verified +44 range, through replica B.
        for k in 0..3 {
            let j = job(
                &format!("b-pump-{i}-{k}"),
                &format!("+4479111{:05}", i * 3 + k),
                &format!("198.19.{}.{}", i % 250, k),
            );
            if b.check(&j).await == Verdict::Allow {
                pumped_out += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(a.is_enforcing(), "feedback flowed the whole time");
    pumped_out
}
