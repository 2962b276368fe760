//! Throttling through the whole path: refused jobs end with `throttled` and are not sent, countries
//! are blocked, and with Redis the limits hold across replicas (and survive Redis going away).

use crate::helpers;
use crate::helpers::{TestApp, job, metric};
use herald::config::{Secret, ThrottleConfig};

fn sms_to(n: usize) -> serde_json::Value {
    let mut j = job("sms");
    j["to"] = format!("+1415555{n:04}").into();
    j
}

#[tokio::test]
async fn over_the_user_limit_a_job_ends_throttled_and_is_not_sent() {
    let mut app = TestApp::spawn(|c| c.throttle = ThrottleConfig::default()).await;
    let jobs: Vec<_> = (0..12).map(sms_to).collect();
    app.publish_many(&jobs).await;
    let events = app.events(12).await;
    let throttled: Vec<_> = events.iter().filter(|e| e.get("error").is_some()).collect();
    assert_eq!(throttled.len(), 2);
    for e in &throttled {
        assert_eq!(e["type"], "gd_send_sms_failure");
        assert_eq!(e["error"]["code"], "throttled");
        assert_eq!(e["scope"], "user");
    }
    assert_eq!(app.outbox_lines().len(), 10);
    let m = app.settled_metrics().await;
    assert_eq!(
        metric(&m, "gd_send_throttled_total{channel=\"sms\",scope=\"user\"}"),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "gd_send_sms_failure_total{country=\"1\",provider=\"none\",reason=\"throttled\"}"
        ),
        2.0
    );
    assert_eq!(
        app.queue_len(&app.config.amqp.jobs_queue).await,
        0,
        "throttled jobs are acknowledged"
    );
    assert_eq!(
        app.queue_len(&app.config.amqp.dead_queue).await,
        0,
        "and not dead-lettered"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_denied_country_is_blocked() {
    let mut app =
        TestApp::spawn(|c| c.throttle.countries_deny = vec![herald::destinations::Destination::parse("225").unwrap()])
            .await;
    let mut j = job("sms");
    j["to"] = "+2250700000001".into();
    app.publish(&j).await;
    let e = app.next_event(20).await;
    assert_eq!(e["error"]["code"], "blocked_destination");
    assert_eq!(e["country"], "225");
    assert!(app.outbox_lines().is_empty());
    let m = app.settled_metrics().await;
    assert_eq!(
        metric(
            &m,
            "gd_send_sms_failure_total{country=\"225\",provider=\"none\",reason=\"blocked_destination\"}"
        ),
        1.0
    );
    app.stop().await;
}

/// A region carved out of an allowed calling code (docs/providers/README.md): `countries_allow = ["1"]` with
/// `countries_deny = ["JM"]` sends to New York, not to Jamaica; the label stays the calling code.
#[tokio::test]
async fn a_denied_region_of_an_allowed_calling_code_is_blocked() {
    let mut app = TestApp::spawn(|c| {
        let keys = |keys: &[&str]| {
            keys.iter()
                .map(|k| herald::destinations::Destination::parse(k).unwrap())
                .collect()
        };
        c.throttle.countries_allow = keys(&["1"]);
        c.throttle.countries_deny = keys(&["JM"]);
    })
    .await;
    let mut jm = job("sms");
    jm["to"] = "+18765550123".into();
    let mut us = job("sms");
    us["to"] = "+12125550123".into();
    app.publish(&jm).await;
    app.publish(&us).await;
    let events = app.events(2).await;
    let of = |j: &serde_json::Value| events.iter().find(|e| e["job_id"] == j["id"]).unwrap().clone();
    assert_eq!(of(&jm)["error"]["code"], "blocked_destination", "{}", of(&jm));
    assert_eq!(of(&jm)["country"], "1");
    // The message names the entry that decided (it said "country calling code 1 is not allowed"; outside
    // attack F6).
    assert_eq!(of(&jm)["error"]["message"], "region JM is denied");
    assert_eq!(of(&us)["type"], "gd_send_sms", "{}", of(&us));
    let outbox = app.outbox_lines();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0]["to"], "+12125550123");
    app.stop().await;
}

#[tokio::test]
async fn two_replicas_sharing_redis_give_a_user_ten_sms_an_hour_in_total() {
    let mut app = TestApp::spawn(|c| {
        c.throttle = ThrottleConfig::default();
        c.redis.url = Secret::new("redis://127.0.0.1:6379");
    })
    .await;
    // A second herald on the same queue and Redis, with its own local state.
    let replica = helpers::Replica::spawn(&app.config).await;

    let jobs: Vec<_> = (0..25).map(sms_to).collect();
    app.publish_many(&jobs).await;
    let events = app.events(25).await;
    let sent = events.iter().filter(|e| e.get("error").is_none()).count();
    assert_eq!(sent, 10, "10 in the hour in total, not 10 per replica");
    assert!(
        events
            .iter()
            .filter(|e| e.get("error").is_some())
            .all(|e| e["scope"] == "user")
    );
    assert_eq!(app.outbox_lines().len(), 10);
    replica.stop().await;
    app.stop().await;
}

/// The limits fall back to per-replica limiters when Redis fails at a throttle check (the outcome store
/// answered a moment before: with Redis away for good the store holds the jobs instead, below).
#[tokio::test]
async fn without_redis_limits_fall_back_to_local_and_still_limit() {
    // Nothing listens there.
    let conn = herald::store::redis_connection("redis://127.0.0.1:1").unwrap();
    let fallbacks = prometheus::IntCounter::new("fallbacks", "fallbacks").unwrap();
    let throttle = herald::throttle::Throttle::new(
        &ThrottleConfig::default(),
        Some(herald::throttle::Redis::new(conn, "test.throttle.fallback")),
        Some(fallbacks.clone()),
    );
    let mut allowed = 0;
    for n in 0..11 {
        let job = herald::job::Job::from_json(sms_to(n).to_string().as_bytes()).unwrap();
        if matches!(throttle.check(&job).await.0, herald::throttle::LimitVerdict::Allow) {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10, "still limited");
    assert_eq!(fallbacks.get(), 11);
}

/// With `redis.url` pointing nowhere, no job is sent without its outcome record: they wait (nothing is
/// delivered, `/readyz` says not ready) instead of being delivered as new (docs/operations.md, "Outcome store
/// outages").
#[tokio::test]
async fn with_redis_away_jobs_wait_instead_of_being_delivered_unrecorded() {
    let mut app = TestApp::spawn(|c| {
        c.throttle = ThrottleConfig::default();
        c.redis.url = Secret::new("redis://127.0.0.1:1");
    })
    .await;
    let jobs: Vec<_> = (0..3).map(sms_to).collect();
    app.publish_many(&jobs).await;
    app.wait_ready(false).await;
    assert!(app.try_next_event(2).await.is_none());
    assert!(app.outbox_lines().is_empty());
    assert_eq!(metric(&app.metrics().await, "herald_store_held_jobs"), 3.0);
}

/// An attacker rotating addresses within one IPv6 /64, or writing its IPv4 address as `::ffff:…` or as
/// `::a.b.c.d` (IPv4-compatible, which used to be a bucket of its own), still spends one per-IP budget.
#[tokio::test]
async fn the_ip_limit_keys_ipv6_by_its_64_and_a_mapped_ipv4_as_ipv4() {
    let mut app = TestApp::spawn(|c| c.throttle.ip = Some("2/h".parse().unwrap())).await;
    let from = |n: usize, ip: &str| {
        let mut j = sms_to(n);
        j["user_id"] = format!("u{n}").into();
        j["ip"] = ip.into();
        j
    };
    let jobs = [
        from(1, "2001:db8:1:2::1"),
        from(2, "2001:db8:1:2:ffff::2"),
        from(3, "2001:db8:1:2:abcd:ef01:2345:6789"),
        from(4, "198.51.100.9"),
        from(5, "::ffff:198.51.100.9"),
        from(6, "198.51.100.9"),
        from(7, "::203.0.113.7"),
        from(8, "203.0.113.7"),
        from(9, "::ffff:203.0.113.7"),
    ];
    // One at a time: the verdicts depend on the order.
    let mut scopes = Vec::new();
    for j in &jobs {
        app.publish(j).await;
        let e = app.next_event(20).await;
        scopes.push(e["scope"].as_str().unwrap_or("sent").to_owned());
    }
    assert_eq!(
        scopes,
        ["sent", "sent", "ip", "sent", "sent", "ip", "sent", "sent", "ip"]
    );
    assert_eq!(app.outbox_lines().len(), 6);
    app.stop().await;
}

/// A start that fails at the HTTP bind leaves nothing running behind it (the throttle sweeper used to be
/// spawned before the bind and outlived the failed start).
#[tokio::test]
async fn a_start_that_cannot_bind_its_port_leaves_no_task_behind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = helpers::test_config(dir.path());
    config.http.addr = taken.local_addr().unwrap();
    let err = match herald::app::Application::build(config).await {
        Ok(_) => panic!("herald started on a port already in use"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("http.addr"), "{err}");
    let tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks();
    assert_eq!(tasks, 0, "tasks still running after the failed start");
}
