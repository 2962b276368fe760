//! The shared (Redis) fraud guard across replicas and restarts.

use std::time::Duration;

use herald::config::{Config, FraudMode};
use herald::fraud::{self, Guard, GuardVerdict};
use herald::job::Job;

fn job(id: &str, to: &str, ip: &str) -> Job {
    let json = serde_json::json!({
        "id": id, "channel": "sms", "to": to, "code": "123456", "user_id": id, "ip": ip
    });
    Job::from_json(json.to_string().as_bytes()).unwrap()
}

fn settings(outage_after: Duration) -> herald::fraud::Settings {
    let mut config = Config::default();
    config.fraud.mode = FraudMode::Enforce;
    config.fraud.learning_period.0 = Duration::ZERO;
    config.fraud.outage_after.0 = outage_after;
    herald::fraud::Settings::from_config(&config)
}

fn replica(namespace: &str, outage_after: Duration) -> Guard {
    let conn = herald::store::redis_connection("redis://127.0.0.1:6379")
        .expect("Redis must be running on 127.0.0.1:6379 for the integration tests");
    Guard::redis(settings(outage_after), fraud::Redis::new(conn, namespace), None)
}

/// Verified history for +44 (30 real codes, all typed in) through `guard`.
async fn history(guard: &Guard, tag: &str) {
    for i in 0..30 {
        let id = format!("{tag}-real-{i}");
        let j = job(&id, &format!("+4477009{i:05}"), &format!("10.1.0.{i}"));
        assert_eq!(guard.check(&j).await, GuardVerdict::Allow);
        guard.verified(&id).await.unwrap();
    }
}

/// A restarted replica (or a new one scaled up) knows the shared learning clock only after its first
/// job's script has read it: that first job is decided as if the guard were still learning, and a
/// destination over budget gets its code. `enforcing()` reads `Redis::since` before `check` refreshes
/// it.
#[tokio::test]
async fn a_restarted_replica_enforces_from_its_first_job() {
    let namespace = format!("attack2.{}", uuid::Uuid::new_v4().simple());
    let a = replica(&namespace, Duration::from_secs(3600));
    history(&a, "a").await;
    // +882 (no history): floor of one an hour; the second is refused.
    assert_eq!(
        a.check(&job("pump-1", "+88216540001", "198.18.0.1")).await,
        GuardVerdict::Allow
    );
    assert_ne!(
        a.check(&job("pump-2", "+88216540002", "198.18.0.2")).await,
        GuardVerdict::Allow
    );
    // Restart: a fresh process on the same Redis.
    drop(a);
    let b = replica(&namespace, Duration::from_secs(3600));
    assert_ne!(
        b.check(&job("pump-3", "+88216540003", "198.18.0.3")).await,
        GuardVerdict::Allow,
        "the first job after a restart went to a destination over its budget"
    );
}

/// docs/fraud-and-limits.md "Adaptive guard": enforcing falls back to monitoring "while feedback has stopped everywhere
/// at once". The outage detector is per process: a replica that consumes no feedback itself (feedback is
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
            if b.check(&j).await == GuardVerdict::Allow {
                pumped_out += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(a.is_enforcing(), "feedback flowed the whole time");
    pumped_out
}

/// The outage detector's inputs (src/fraud/outage.rs) are shared in Redis: busy feedback through replica
/// A, then the same traffic through replica B while no feedback comes: both detect the outage, which
/// spares the range with verified history and not +882 (no history); feedback through A ends it for B.
#[tokio::test]
async fn replicas_share_the_outage_detector_and_an_outage_spares_only_ranges_with_history() {
    let outage_after = Duration::from_secs(2);
    let namespace = format!("outage.{}", uuid::Uuid::new_v4().simple());
    let a = replica(&namespace, outage_after);
    let b = replica(&namespace, outage_after);
    history(&a, "a").await;
    for k in 0..12 {
        let j = job(
            &format!("b-early-{k}"),
            &format!("+4477009{:05}", 100 + k),
            &format!("10.3.0.{k}"),
        );
        assert_eq!(b.check(&j).await, GuardVerdict::Allow);
    }
    // The scenario: no feedback for longer than outage_after (whole seconds, hence the margin).
    tokio::time::sleep(outage_after + Duration::from_millis(1200)).await;
    assert_eq!(
        b.check(&job("pump-1", "+88216540001", "198.18.0.1")).await,
        GuardVerdict::Allow,
        "+882's floor"
    );
    assert!(
        b.feedback_outage(),
        "replica B saw the feedback stop through the shared state"
    );
    assert_ne!(
        b.check(&job("pump-2", "+88216540002", "198.18.0.2")).await,
        GuardVerdict::Allow,
        "an outage lifted the guard from +882, which never verified"
    );
    assert_eq!(
        a.check(&job("a-late", "+447700900200", "10.3.1.1")).await,
        GuardVerdict::Allow
    );
    assert!(a.feedback_outage(), "replica A too, at its next job");
    // The range's hourly budget is 34 (4 + 30 verified) and 14 of its codes are unverified: 30 more
    // are over it, and spared.
    for k in 0..30 {
        let j = job(
            &format!("b-late-{k}"),
            &format!("+4477009{:05}", 300 + k),
            &format!("10.3.2.{k}"),
        );
        assert_eq!(
            b.check(&j).await,
            GuardVerdict::Allow,
            "code {k} to the range with history"
        );
    }
    assert!(a.is_enforcing() && b.is_enforcing(), "refusals stay on in an outage");
    // Feedback returns through A (a duplicate proves the publisher works too).
    a.verified("a-real-0").await.unwrap();
    b.check(&job("b-back", "+447700900400", "10.3.3.1")).await;
    assert!(!b.feedback_outage(), "feedback through A ended the outage for B");
    assert_ne!(
        b.check(&job("b-back-2", "+447700900401", "10.3.3.2")).await,
        GuardVerdict::Allow,
        "the range is judged on its budget again"
    );
}

/// Issue 31's attack on the shared detector: busy feedback, `outage_after` of quiet, then unverified
/// codes into the range with history through another replica: no outage, and +882 stays at its floor.
#[tokio::test]
async fn sends_after_a_quiet_spell_make_no_outage_on_any_replica() {
    let outage_after = Duration::from_secs(2);
    let namespace = format!("outage.{}", uuid::Uuid::new_v4().simple());
    let a = replica(&namespace, outage_after);
    let b = replica(&namespace, outage_after);
    history(&a, "a").await;
    // The scenario: a quiet spell longer than outage_after (whole seconds, hence the margin).
    tokio::time::sleep(outage_after + Duration::from_millis(1200)).await;
    for k in 0..24 {
        let j = job(
            &format!("b-quiet-{k}"),
            &format!("+4477009{:05}", 100 + k),
            &format!("10.4.0.{k}"),
        );
        assert_eq!(b.check(&j).await, GuardVerdict::Allow);
    }
    assert!(!b.feedback_outage() && !a.feedback_outage());
    assert_eq!(
        b.check(&job("pump-1", "+88216540001", "198.18.0.1")).await,
        GuardVerdict::Allow
    );
    for k in 2..12 {
        assert_ne!(
            b.check(&job(
                &format!("pump-{k}"),
                &format!("+882165400{k:02}"),
                &format!("198.18.0.{k}")
            ))
            .await,
            GuardVerdict::Allow,
            "pump {k} into +882 after sends that looked like an outage"
        );
    }
}
