//! An outage of the outcome store (Redis) costs delay, never a repeated send (docs/operations.md,
//! "Outcome store outages").
//!
//! A record that could not be read used to be taken as no record, and a cross-replica claim that could
//! not be made let the job through: with Redis down, every replayed job id was sent again, and with two
//! replicas most jobs of a run were sent twice.

use std::collections::HashMap;
use std::time::Duration;

use crate::helpers;
use crate::helpers::{TcpProxy, TestApp};
use serde_json::Value;

fn sent_counts(app: &TestApp) -> HashMap<String, usize> {
    helpers::outbox_counts(&app.outbox)
}

#[tokio::test]
async fn jobs_replayed_while_redis_is_down_wait_for_it_and_are_not_sent_again() {
    let proxy = TcpProxy::to(6379).await;
    let redis_url = format!("redis://127.0.0.1:{}", proxy.port);
    let mut app = TestApp::spawn(|c| c.redis.url = herald::config::Secret::new(redis_url)).await;
    let jobs: Vec<Value> = (0..50).map(|_| helpers::job("sms")).collect();
    app.publish_many(&jobs).await;
    assert_eq!(app.event_counts(50).await.len(), 50);

    proxy.cut();
    // The same 50 again, and 10 new ones.
    let new: Vec<Value> = (0..10).map(|_| helpers::job("sms")).collect();
    app.publish_many(&jobs).await;
    app.publish_many(&new).await;
    // Not a wait for something: the outage's length, in which nothing must be sent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sent_counts(&app).values().sum::<usize>(),
        50,
        "nothing is sent while the store does not answer"
    );
    assert!(
        app.try_next_event(0).await.is_none(),
        "no event while the store does not answer"
    );
    assert!(!app.ready().await, "/readyz says not ready while jobs are held");
    let metrics = app.metrics().await;
    assert!(helpers::metric(&metrics, "herald_store_held_jobs") > 0.0, "{metrics}");

    proxy.restore();
    // Only the new jobs get events: the replays are duplicates (acknowledged, nothing published).
    let events = app.event_counts(10).await;
    assert_eq!(events.len(), 10, "{events:?}");
    for job in &new {
        assert_eq!(events.get(job["id"].as_str().unwrap()), Some(&1));
    }
    let sent = sent_counts(&app);
    assert_eq!(sent.len(), 60);
    assert!(sent.values().all(|&n| n == 1), "a job sent twice: {sent:?}");
    app.wait_ready(true).await;
    let metrics = app.settled_metrics().await;
    assert_eq!(helpers::metric(&metrics, "herald_store_held_jobs"), 0.0);
    assert!(helpers::metric(&metrics, r#"herald_store_errors_total{op="claim"}"#) > 0.0);
    assert!(app.dead_letters(1).await.is_empty());
    app.stop().await;
}

/// Two replicas, every job published twice, and Redis cut in the middle of the run: each job is sent
/// once and gets one event.
#[tokio::test]
async fn two_replicas_send_each_job_once_across_a_redis_outage() {
    let proxy = TcpProxy::to(6379).await;
    let redis_url = format!("redis://127.0.0.1:{}", proxy.port);
    let mut app = TestApp::spawn(|c| c.redis.url = herald::config::Secret::new(redis_url)).await;
    let replica = helpers::Replica::spawn(&app.config).await;
    let jobs: Vec<Value> = (0..300).map(|_| helpers::job("sms")).collect();
    app.publish_many(&jobs[..150]).await;
    app.publish_many(&jobs[..150]).await;
    let mut events: HashMap<String, usize> = HashMap::new();
    while events.len() < 50 {
        let event = app.next_event(20).await;
        *events.entry(event["job_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    proxy.cut();
    app.publish_many(&jobs[150..]).await;
    app.publish_many(&jobs[150..]).await;
    // The scenario: a 3 s outage with the jobs queued.
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore();
    while events.len() < 300 {
        let Some(event) = app.try_next_event(30).await else {
            panic!("only {} of 300 jobs got an event", events.len());
        };
        *events.entry(event["job_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    while let Some(event) = app.try_next_event(3).await {
        *events.entry(event["job_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    let twice: Vec<_> = events.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "{} jobs with two events: {twice:?}", twice.len());
    let sent = sent_counts(&app);
    assert_eq!(sent.len(), 300);
    let repeated = sent.values().filter(|&&n| n > 1).count();
    assert_eq!(repeated, 0, "{repeated} jobs sent twice");
    replica.stop().await;
    app.stop().await;
}

/// A Redis that hangs rather than refuses (its process stopped, here with SIGSTOP on a redis-server of the
/// test's own): herald's claim (`SET NX`) times out on its side but still runs when Redis resumes, leaving
/// a claim in herald's own name. Taking it for another replica's, the job waited out the claim's whole
/// lease (22 s after Redis came back, in the outside attack); the outage should cost its length and a
/// moment.
#[tokio::test]
async fn a_claim_that_ran_on_a_hung_redis_is_taken_as_herald_s_own() {
    let (port, redis) = own_redis();
    let redis_url = format!("redis://127.0.0.1:{port}");
    let pid = redis.id() as i32;
    let mut app = TestApp::spawn(|c| c.redis.url = herald::config::Secret::new(redis_url)).await;
    // Connected to Redis before it hangs, as a running herald is.
    app.publish(&helpers::job("sms")).await;
    app.next_outcome(20).await;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let jobs: Vec<Value> = (0..3).map(|_| helpers::job("sms")).collect();
    app.publish_many(&jobs).await;
    // The scenario: Redis hangs for 3 s, in which no event must leave.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let nothing = app.try_next_event(0).await;
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(nothing.is_none(), "an event while Redis hung: {nothing:?}");
    let back = std::time::Instant::now();
    let mut events = std::collections::HashMap::new();
    while events.len() < 3 {
        let Some(event) = app.try_next_event(30).await else {
            break;
        };
        *events.entry(event["job_id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
    }
    let waited = back.elapsed();
    app.stop().await;
    drop(redis);
    assert_eq!(events.len(), 3, "{events:?}");
    // OUTAGE_SETTLE (2 s) and the retries' backoff: well under the claim's 20 s lease.
    assert!(waited < Duration::from_secs(8), "held {waited:?} after Redis answered");
}

/// A redis-server of the test's own on a free port, to stop, cut or restrict without touching the shared
/// one.
fn own_redis() -> (u16, OwnRedis) {
    let port = helpers::free_port();
    let redis = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-server is installed with Redis");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (port, OwnRedis(redis))
}

/// Killed when dropped, a failed test's too.
struct OwnRedis(std::process::Child);

impl OwnRedis {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_cli(port: u16, args: &[&str]) {
    let out = std::process::Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli is installed with Redis");
    assert!(
        out.status.success() && !String::from_utf8_lossy(&out.stdout).starts_with("ERR"),
        "{out:?}"
    );
}

/// Redis takes herald's reads and claims but refuses its record writes (an ACL here; on a Redis Cluster, a
/// claim and its record can live on different masters, one of them down). The jobs were sent and waited on
/// their records while `/readyz` said ready and no gauge showed them (outside attack F5).
#[tokio::test]
async fn record_writes_refused_show_as_held_jobs_and_not_ready() {
    let (port, redis) = own_redis();
    redis_cli(port, &["ACL", "SETUSER", "herald", "on", ">pw", "~*", "+@all"]);
    let url = format!("redis://herald:pw@127.0.0.1:{port}");
    let mut app = TestApp::spawn(|c| c.redis.url = herald::config::Secret::new(url)).await;
    // Reads of everything, writes of the claims only.
    redis_cli(port, &["ACL", "SETUSER", "herald", "resetkeys", "~*:claim", "%R~*"]);
    let jobs: Vec<Value> = (0..3).map(|_| helpers::job("sms")).collect();
    app.publish_many(&jobs).await;
    app.wait_metric("herald_store_held_jobs", 3.0).await;
    let readyz = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(readyz.status(), 503);
    assert!(readyz.text().await.unwrap().contains("outcome store"));
    assert!(app.try_next_event(0).await.is_none(), "an event left before its record");

    redis_cli(port, &["ACL", "SETUSER", "herald", "allkeys"]);
    let events = app.event_counts(3).await;
    assert_eq!(events.len(), 3);
    assert!(events.values().all(|&n| n == 1), "{events:?}");
    app.wait_ready(true).await;
    assert_eq!(helpers::metric(&app.metrics().await, "herald_store_held_jobs"), 0.0);
    app.stop().await;
    drop(redis);
}
