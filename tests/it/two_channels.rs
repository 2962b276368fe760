//! herald consuming on two channels (`amqp.channels = 2`) through what ends a channel or a process: a
//! channel error at commit, a failed session, SIGKILL and SIGTERM. Each channel has its own transactions,
//! commit marker and batch in doubt; every job still ends in exactly one event (docs/guarantees.md).

use std::time::Duration;

use crate::helpers;
use crate::helpers::{
    Broker, GatedTwilio, HeraldProcess, TcpProxy, free_port, job, kill_as_the_outbox_grows, metric, metrics_at,
    outbox_counts, printed_counts, process_env, twilio,
};

const SENT: &str = "gd_send_sms_total{action=\"second-factor-authentication\",country=\"1\",provider=\"twilio\"}";

/// The events exchange is deleted while jobs are held at the provider on both channels: their event
/// publishes fail with a channel error (404). herald reconnects, declares the exchange again, and every
/// job still ends with exactly one event (broker and stdout), counted once, sent to the provider once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_channel_error_at_commit_still_gives_every_job_one_event() {
    const JOBS: usize = 8;
    let proxy = TcpProxy::start().await;
    let provider = GatedTwilio::start().await;
    let port = free_port();
    let mut broker = Broker::new(|c| {
        twilio(c, &provider.url);
        c.amqp.url = proxy.url().parse().unwrap();
        c.amqp.prefetch = std::num::NonZeroU16::new(JOBS as u16).unwrap();
        c.amqp.channels = 2;
        c.http.addr = format!("127.0.0.1:{port}").parse().unwrap();
    })
    .await;
    let herald = HeraldProcess::start(&process_env(&broker.config));
    let jobs: Vec<_> = (0..JOBS).map(|_| job("sms")).collect();
    broker.publish_many(&jobs).await;
    provider.wait_in_flight(JOBS).await;

    let exchange = broker.config.amqp.events_exchange.clone();
    broker
        .channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await
        .unwrap();
    // The session fails; herald is kept away while the test binds its queue to the new exchange again.
    proxy.refuse_new();
    provider.open();
    for _ in 0..500 {
        if herald.logs().contains("reconnecting") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(herald.logs().contains("reconnecting"), "{}", herald.logs());
    herald::broker::declare_topology(&broker.channel, &broker.config.amqp)
        .await
        .unwrap();
    herald::broker::bind_all(&broker.channel, broker.events_queue().as_str(), &exchange)
        .await
        .unwrap();
    proxy.restore();

    let events = broker.event_counts(JOBS).await;
    assert!(events.values().all(|n| *n == 1), "events per job: {events:?}");
    for j in &jobs {
        assert!(events.contains_key(j["id"].as_str().unwrap()));
    }
    // Each event's stdout line comes after its commit: wait for them, then count.
    let herald_ref = &herald;
    helpers::eventually(Duration::from_secs(10), "a stdout line per job", || async move {
        printed_counts(&herald_ref.stdout()).len() >= JOBS
    })
    .await;
    let printed = printed_counts(&herald.stdout());
    assert_eq!(printed.len(), JOBS, "stdout lines: {printed:?}\n{}", herald.logs());
    assert!(printed.values().all(|n| *n == 1), "stdout per job: {printed:?}");
    assert_eq!(metric(&metrics_at(port).await, SENT), JOBS as f64);
    assert_eq!(provider.received.load(std::sync::atomic::Ordering::SeqCst), JOBS);
}

/// Two sessions fail (a channel error: an invalid job's event to a deleted events exchange) while a job is
/// held at the provider: each failure returns the job (counted once or twice), and when the provider
/// answers, its outcome is published, printed and counted once, by herald on the newest session, not
/// dead-lettered by the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_session_returns_its_jobs_within_the_delivery_limit() {
    let provider = GatedTwilio::start().await;
    let port = free_port();
    let broker = Broker::new(|c| {
        twilio(c, &provider.url);
        c.amqp.channels = 2;
        c.amqp.prefetch = std::num::NonZeroU16::new(4).unwrap();
        c.http.addr = format!("127.0.0.1:{port}").parse().unwrap();
    })
    .await;
    let herald = HeraldProcess::start(&process_env(&broker.config));
    let j = job("sms");
    broker.publish(&j).await;
    provider.wait_in_flight(1).await;
    broker.fail_sessions(&herald, 2).await;
    // The job's redelivered copy is taken (the jobs queue is empty) and waits on its first copy, which the
    // provider now answers.
    let jobs_queue = broker.config.amqp.jobs_queue.clone();
    let broker_ref = &broker;
    helpers::eventually(Duration::from_secs(20), "the redelivered copy is taken", || {
        let q = jobs_queue.clone();
        async move { broker_ref.queue_len(&q).await == 0 }
    })
    .await;
    provider.open();
    let mut counted = 0.0;
    for _ in 0..100 {
        counted = metric(&metrics_at(port).await, SENT);
        if counted > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let printed = printed_counts(&herald.stdout());
    // The two invalid jobs, dead-lettered by herald; nothing by the queue.
    let dead = broker.dead_letters(2).await;
    let by_broker = dead.iter().filter(|(_, reason)| reason.is_empty()).count();
    assert_eq!(by_broker, 0, "dead-lettered by the broker, not by herald: {dead:?}");
    assert_eq!(
        broker.queue_len(&broker.config.amqp.dead_queue).await,
        0,
        "more dead letters"
    );
    assert_eq!(counted, 1.0, "the job's outcome counted once");
    assert_eq!(printed.get(j["id"].as_str().unwrap()), Some(&1), "{printed:?}");
    assert_eq!(provider.received.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Killed three times mid-stream: one event per job, every job sent, repeats only among the jobs in flight
/// at a kill, and a replay of every job id afterwards is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_loses_and_doubles_nothing() {
    const JOBS: usize = 1500;
    const PREFETCH: u16 = 64;
    let mut broker = Broker::new(|c| {
        c.amqp.prefetch = std::num::NonZeroU16::new(PREFETCH).unwrap();
        c.amqp.channels = 2;
    })
    .await;
    let jobs: Vec<_> = (0..JOBS).map(|_| job("sms")).collect();
    broker.publish_many(&jobs).await;
    let env = process_env(&broker.config);
    let outbox = broker.config.outbox.path.clone();
    kill_as_the_outbox_grows(&env, &outbox, 3, JOBS / 4, 1000).await;
    let sent_before = outbox_counts(&outbox).len();
    assert!(sent_before < JOBS, "the kills must land mid-stream ({sent_before})");
    let _herald = HeraldProcess::start(&env);
    let events = broker.event_counts(JOBS).await;
    let other: Vec<_> = events.iter().filter(|(_, n)| **n != 1).collect();
    assert!(other.is_empty(), "jobs with other than one event: {other:?}");
    let sent = outbox_counts(&outbox);
    assert_eq!(sent.len(), JOBS, "every job reached the provider");
    let repeated = sent.values().filter(|n| **n > 1).count();
    assert!(
        repeated <= 3 * usize::from(PREFETCH),
        "{repeated} sent twice over 3 kills, prefetch {PREFETCH}"
    );
    broker.publish_many(&jobs).await;
    let mut again = 0;
    while broker.try_next_event(3).await.is_some() {
        again += 1;
    }
    for _ in 0..100 {
        if broker.queue_len(&broker.config.amqp.jobs_queue).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The last replays taken were being handled. Not a wait for something: the window in which their
    // sends, which must not happen, would.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(again, 0, "replays of finished jobs got events");
    assert_eq!(sent, outbox_counts(&outbox), "a replay was sent");
}

/// SIGTERM with provider calls held on both channels: each finishes and commits, the rest stay queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_commits_the_jobs_in_flight_on_both_channels() {
    let provider = GatedTwilio::start().await;
    let mut broker = Broker::new(|c| {
        twilio(c, &provider.url);
        c.amqp.prefetch = std::num::NonZeroU16::new(8).unwrap();
        c.amqp.channels = 2;
    })
    .await;
    let mut herald = HeraldProcess::start(&process_env(&broker.config));
    let jobs: Vec<_> = (0..20).map(|_| job("sms")).collect();
    broker.publish_many(&jobs).await;
    provider.wait_in_flight(8).await;
    herald.signal_term();
    // herald has the signal and drains while the 8 calls are still held.
    let herald_ref = &herald;
    helpers::eventually(Duration::from_secs(10), "herald drains", || async move {
        herald_ref.logs().contains("shutdown requested")
    })
    .await;
    provider.open();
    let (code, herald) = tokio::task::spawn_blocking(move || (herald.wait_exit(), herald))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{}", herald.logs());
    let events = broker.event_counts(8).await;
    assert_eq!(events.len(), 8);
    assert!(events.values().all(|n| *n == 1));
    assert_eq!(printed_counts(&herald.stdout()).len(), 8);
    assert_eq!(provider.received.load(std::sync::atomic::Ordering::SeqCst), 8);
    assert_eq!(broker.queue_len(&broker.config.amqp.jobs_queue).await, 12);
}

/// Each channel's commit-marker queue exists while herald consumes, and a clean shutdown deletes it
/// instead of leaving it to expire 15 minutes later.
#[tokio::test]
async fn a_clean_shutdown_deletes_the_commit_marker_queues() {
    let broker = Broker::new(|c| c.amqp.channels = 2).await;
    let mut herald = HeraldProcess::start(&process_env(&broker.config));
    let prefix = format!("{}.commits.", broker.config.amqp.jobs_queue);
    // `start` returns on the first "consuming" line, which can be the feedback consumer's.
    for _ in 0..100 {
        if herald.logs().contains(&prefix) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = herald.logs();
    let markers: std::collections::BTreeSet<String> = logs
        .split(|c: char| c == '"' || c.is_whitespace() || c == '[' || c == ']' || c == ',')
        .filter(|w| w.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    assert_eq!(markers.len(), 2, "{logs}");
    for marker in &markers {
        assert!(queue_exists(marker).await, "{marker} while consuming");
    }
    assert_eq!(herald.terminate(), Some(0), "{}", herald.logs());
    for marker in &markers {
        assert!(!queue_exists(marker).await, "{marker} after shutdown");
    }
}

/// A passive declare, on a channel of its own: a missing queue closes the channel that asked.
async fn queue_exists(name: &str) -> bool {
    let connection = helpers::broker().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            name.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .is_ok()
}
