//! The broker restarted in the middle of a stream (`rabbitmqctl stop_app` / `start_app`): herald
//! reconnects by itself, `/readyz` drops and returns, and every job still ends in exactly one event.
//!
//! Its own test binary, with one test: cargo runs test binaries one after another, so stopping the
//! broker here cannot disturb another test (in `tests/it` it would cut every test running beside it).

// The helpers of tests/it, of which this test uses a few.
#[path = "it/helpers/mod.rs"]
#[allow(dead_code, reason = "tests/it uses the rest of the helpers")]
mod helpers;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use helpers::{TestApp, job};
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl is installed with RabbitMQ");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the broker again even when the test fails half-way.
struct Stopped;

impl Stopped {
    fn stop() -> Stopped {
        rabbitmqctl(&["stop_app"]);
        Stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    }
}

#[tokio::test]
async fn herald_rides_out_a_broker_restart() {
    const JOBS: usize = 2000;
    let mut app = TestApp::spawn(|c| c.amqp.prefetch = std::num::NonZeroU16::new(64).unwrap()).await;
    // A durable queue for the events: the test's own connection does not survive the restart.
    let events_queue = format!("{}.captured-events", app.config.amqp.jobs_queue);
    app.channel
        .queue_declare(
            events_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    app.channel
        .queue_bind(
            events_queue.as_str().into(),
            app.config.amqp.events_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let jobs: Vec<_> = (0..JOBS).map(|_| job("sms")).collect();
    app.publish_many(&jobs).await;
    while app.outbox_lines().len() < JOBS / 4 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    {
        let _stopped = Stopped::stop();
        app.wait_ready(false).await;
        let m = app.metrics().await;
        assert!(m.contains("herald_broker_connected 0"), "{m}");
    }
    app.wait_ready(true).await;

    let conn = helpers::broker().await;
    let ch = conn.create_channel().await.unwrap();
    let mut events: HashMap<String, usize> = HashMap::new();
    let mut idle = 0;
    while idle < 40 {
        match ch
            .basic_get(events_queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(m) => {
                idle = 0;
                let e: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
                *events.entry(e["job_id"].as_str().unwrap().to_owned()).or_default() += 1;
            }
            None if events.len() >= JOBS => {
                // Keep listening a little: a second event for a job would show up here.
                idle += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let _ = ch
        .queue_delete(events_queue.as_str().into(), QueueDeleteOptions::default())
        .await;

    assert_eq!(events.len(), JOBS, "every job got an event");
    let not_once: Vec<_> = events.iter().filter(|(_, n)| **n != 1).collect();
    assert!(not_once.is_empty(), "jobs with other than one event: {not_once:?}");
    let mut sent: HashMap<String, usize> = HashMap::new();
    for line in app.outbox_lines() {
        *sent.entry(line["job_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(sent.len(), JOBS, "every job reached the provider");
    let repeated = sent.values().filter(|n| **n > 1).count();
    assert!(
        repeated <= 64,
        "{repeated} jobs sent twice; at most the prefetch window may be"
    );
    app.stop().await;
}
