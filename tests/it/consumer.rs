//! The consumer as a whole: concurrency, metrics, broker loss and graceful shutdown.

use crate::helpers;
use crate::helpers::{GatedTwilio, TcpProxy, TestApp, job, metric, twilio};

#[tokio::test]
async fn deliveries_run_concurrently_up_to_the_prefetch_window() {
    let provider = GatedTwilio::start().await;
    let mut app = TestApp::spawn(|c| {
        twilio(c, &provider.url);
        c.amqp.prefetch = std::num::NonZeroU16::new(16).unwrap();
    })
    .await;
    for _ in 0..24 {
        app.publish(&job("sms")).await;
    }
    // 16 calls held open at once: deliveries do not wait for one another, and prefetch bounds them.
    provider.wait_in_flight(16).await;
    // Not a wait for something: the window in which a 17th call, which must not come, would.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        provider.received.load(std::sync::atomic::Ordering::SeqCst),
        16,
        "never more than prefetch"
    );
    let m = app.metrics().await;
    assert_eq!(metric(&m, "herald_jobs_in_flight"), 16.0);
    provider.open();
    let events = app.events(24).await;
    assert!(events.iter().all(|e| e["type"] == "gd_send_sms"));
    assert_eq!(metric(&app.settled_metrics().await, "herald_jobs_in_flight"), 0.0);
    app.stop().await;
}

/// `amqp.channels = 2`: two consumers on the jobs queue, whose windows add up to `amqp.prefetch`: no more
/// jobs in flight than with one channel.
#[tokio::test]
async fn jobs_are_consumed_on_two_channels_that_share_the_prefetch_window() {
    let provider = GatedTwilio::start().await;
    let mut app = TestApp::spawn(|c| {
        twilio(c, &provider.url);
        c.amqp.prefetch = std::num::NonZeroU16::new(7).unwrap();
        c.amqp.channels = 2;
    })
    .await;
    assert_eq!(app.consumer_count(&app.config.amqp.jobs_queue).await, 2);
    for _ in 0..12 {
        app.publish(&job("sms")).await;
    }
    provider.wait_in_flight(7).await;
    // Not a wait for something: the window in which an 8th call, which must not come, would.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        provider.received.load(std::sync::atomic::Ordering::SeqCst),
        7,
        "never more than prefetch in all"
    );
    provider.open();
    let events = app.events(12).await;
    assert!(events.iter().all(|e| e["type"] == "gd_send_sms"));
    app.stop().await;
}

#[tokio::test]
async fn metrics_move_by_exactly_the_number_of_deliveries() {
    let mut app = TestApp::spawn(|_| {}).await;
    let before = app.metrics().await;
    assert_eq!(
        metric(
            &before,
            "gd_send_sms_total{action=\"second-factor-authentication\",country=\"1\",provider=\"outbox\"}"
        ),
        0.0
    );

    let mut uk = job("sms");
    uk["to"] = "+447700900123".into();
    let mut enrollment = job("voice");
    enrollment["action"] = "enrollment".into();
    for j in [job("sms"), job("sms"), job("sms"), uk, enrollment, job("email")] {
        app.publish(&j).await;
    }
    let mut expired = job("sms");
    expired["expires_at"] = "2001-01-01T00:00:00Z".into();
    app.publish(&expired).await;
    app.publish_raw(b"nope", lapin::BasicProperties::default()).await;
    app.events(8).await;

    let m = app.settled_metrics().await;
    // Every delivery is settled in some broker transaction, the malformed one (dead-lettered) included.
    assert_eq!(metric(&m, "herald_commit_batch_messages_sum"), 8.0);
    let commits = metric(&m, "herald_commit_batch_messages_count");
    assert!((1.0..=8.0).contains(&commits), "{commits} commits");
    // Each of those commits is timed once, and takes some time.
    assert_eq!(metric(&m, "herald_commit_seconds_count"), commits);
    assert!(metric(&m, "herald_commit_seconds_sum") > 0.0);
    let sms = |country: &str| {
        metric(
            &m,
            &format!(
                "gd_send_sms_total{{action=\"second-factor-authentication\",country=\"{country}\",provider=\"outbox\"}}"
            ),
        )
    };
    assert_eq!(sms("1"), 3.0);
    assert_eq!(sms("44"), 1.0);
    assert_eq!(
        metric(
            &m,
            "gd_send_voice_total{action=\"enrollment\",country=\"1\",provider=\"outbox\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "gd_send_email_total{action=\"second-factor-authentication\",country=\"none\",provider=\"outbox\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "gd_send_sms_failure_total{country=\"1\",provider=\"none\",reason=\"expired\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "gd_send_sms_failure_total{country=\"none\",provider=\"none\",reason=\"invalid_job\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "gd_send_duration_seconds_count{channel=\"sms\",provider=\"outbox\"}"
        ),
        4.0
    );
    assert_eq!(metric(&m, "herald_dead_lettered_total{reason=\"invalid_job\"}"), 1.0);
    assert_eq!(metric(&m, "herald_jobs_in_flight"), 0.0);
    assert_eq!(metric(&m, "herald_broker_connected"), 1.0);
    for family in [
        "gd_send_sms_total",
        "gd_send_voice_total",
        "gd_send_email_total",
        "gd_send_sms_failure_total",
        "gd_send_duration_seconds",
    ] {
        assert!(m.contains(&format!("# TYPE {family} ")), "{family} missing");
    }
    assert!(!m.contains("482913") && !m.contains("4155550123") && !m.contains("jane.doe"));
    app.stop().await;
}

#[tokio::test]
async fn herald_reconnects_when_the_broker_goes_away_and_readyz_follows() {
    let proxy = TcpProxy::start().await;
    let mut app = TestApp::spawn(|c| c.amqp.url = proxy.url().parse().unwrap()).await;
    app.publish(&job("sms")).await;
    app.events(1).await;

    proxy.cut();
    app.wait_ready(false).await;
    let health = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200, "the process is alive while the broker is away");
    // Published while herald is disconnected: the broker keeps it until herald is back.
    let waiting = job("sms");
    app.publish(&waiting).await;

    proxy.restore();
    app.wait_ready(true).await;
    let event = app.next_event(30).await;
    assert_eq!(event["job_id"], waiting["id"]);
    app.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_deliveries_and_loses_nothing() {
    let provider = GatedTwilio::start().await;
    let mut app = TestApp::spawn(|c| {
        twilio(c, &provider.url);
        c.amqp.prefetch = std::num::NonZeroU16::new(4).unwrap();
    })
    .await;
    for _ in 0..10 {
        app.publish(&job("sms")).await;
    }
    provider.wait_in_flight(4).await;
    // Stop while 4 provider calls are under way; they complete, the other 6 stay queued.
    let opener = async {
        // The scenario: the provider answers a moment after the stop began.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        provider.open();
    };
    tokio::join!(app.stop(), opener);
    let events = app.events(4).await;
    assert!(events.iter().all(|e| e["type"] == "gd_send_sms"));
    assert_eq!(provider.received.load(std::sync::atomic::Ordering::SeqCst), 4);

    assert_eq!(
        app.queue_len(&app.config.amqp.jobs_queue).await,
        6,
        "undelivered jobs are back in the queue, none lost"
    );
}

/// A broker that stops answering without closing the connection (a frozen node, a half-dead link): with
/// the broker's 60 s heartbeat, herald noticed after two minutes at the earliest, its work paused
/// meanwhile. herald asks for a heartbeat of its own (here 1 s, from the URL) and gives up on a silent
/// connection after two intervals, counted in `herald_broker_stalls_total`, then reconnects.
#[tokio::test]
async fn a_silent_broker_is_noticed_by_its_missing_heartbeats_and_counted() {
    let proxy = TcpProxy::start().await;
    let url = format!("{}?heartbeat=1", proxy.url());
    let mut app = TestApp::spawn(|c| c.amqp.url = url.parse().unwrap()).await;
    app.publish(&job("sms")).await;
    app.events(1).await;

    // Everything herald writes still reaches the broker; nothing comes back.
    proxy.swallow_replies();
    let stalled = std::time::Instant::now();
    app.wait_metric("herald_broker_stalls_total", 1.0).await;
    assert!(
        stalled.elapsed() < std::time::Duration::from_secs(8),
        "noticed after {:?}",
        stalled.elapsed()
    );
    proxy.restore();
    app.wait_ready(true).await;
    let after = job("sms");
    app.publish(&after).await;
    let event = app.next_outcome(20).await;
    assert_eq!(event["job_id"], after["id"]);
    app.stop().await;
}

/// Without a heartbeat of its own, herald took RabbitMQ's (60 s): a stall went unnoticed for two minutes.
#[tokio::test]
async fn herald_asks_the_broker_for_a_ten_second_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let config = helpers::test_config(dir.path());
    let connection = herald::broker::connect(&config.amqp, "heartbeat-test").await.unwrap();
    assert_eq!(connection.configuration().heartbeat(), 10);
    connection.close(200, "done".into()).await.unwrap();
}
