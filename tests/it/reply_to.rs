//! A job's `reply_to` can never cost other jobs their outcomes (docs/operations.md, "Replies").
//!
//! Replies used to be published inside the batch transaction of the jobs around them: one job whose
//! `reply_to` made RabbitMQ close the connection (541 INTERNAL_ERROR for a direct reply-to name it cannot
//! decode) failed every commit it was in, on every reconnect; seen from outside, normal jobs lost their
//! events or were dead-lettered by the queue's delivery limit without a reason.

use std::collections::HashMap;
use std::time::Duration;

use crate::helpers;
use crate::helpers::TestApp;
use base64::Engine;
use futures_util::StreamExt;
use lapin::BasicProperties;
use serde_json::Value;

/// A direct reply-to name RabbitMQ 3.10 decodes to a process of a node it does not know: the shape is
/// right, so herald cannot tell it from a live one, and publishing to it closes the connection (541).
fn unknown_node_reply_to() -> String {
    let node = b"reply@1234567";
    let mut term = vec![131, 88, 118, 0, node.len() as u8];
    term.extend_from_slice(node);
    term.extend([0, 0, 3, 11, 0, 0, 0, 0, 0, 0, 0, 1]);
    format!(
        "amq.rabbitmq.reply-to.{}.a2V5",
        base64::engine::general_purpose::STANDARD.encode(term)
    )
}

fn props(reply_to: &str, correlation: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_reply_to(reply_to.into())
        .with_correlation_id(correlation.into())
}

#[tokio::test]
async fn a_reply_address_the_broker_rejects_costs_only_its_own_reply() {
    let mut app = TestApp::spawn(|_| {}).await;
    let (replies, mut reply_consumer) = app.reply_queue().await;

    // 30 normal jobs waiting for replies, with two bad addresses among them: one herald can tell is not
    // a name the broker issues (refused with its job), one it cannot (it goes out and the broker closes
    // the connection it is published on).
    let mut ids = Vec::new();
    let malformed = helpers::job("sms");
    let undetectable = helpers::job("sms");
    for i in 0..32 {
        let (job, to) = match i {
            10 => (malformed.clone(), "amq.rabbitmq.reply-to.abc.def".to_owned()),
            20 => (undetectable.clone(), unknown_node_reply_to()),
            _ => (helpers::job("sms"), replies.to_string()),
        };
        let id = job["id"].as_str().unwrap().to_owned();
        app.publish_raw(job.to_string().as_bytes(), props(&to, &format!("c-{id}")))
            .await;
        ids.push(id);
    }

    let events = app.event_counts(32).await;
    for id in &ids {
        assert_eq!(events.get(id), Some(&1), "job {id}: {events:?}");
    }
    let mut got = HashMap::new();
    while got.len() < 30 {
        let reply = tokio::time::timeout(Duration::from_secs(20), reply_consumer.next())
            .await
            .expect("every normal job's reply within 20 s")
            .unwrap()
            .unwrap();
        let event: Value = serde_json::from_slice(&reply.data).unwrap();
        let id = event["job_id"].as_str().unwrap().to_owned();
        assert_eq!(
            reply.properties.correlation_id().as_ref().unwrap().as_str(),
            format!("c-{id}")
        );
        *got.entry(id).or_insert(0) += 1;
    }
    for id in ids
        .iter()
        .filter(|id| **id != malformed["id"] && **id != undetectable["id"])
    {
        assert_eq!(got.get(id), Some(&1), "reply of {id}");
    }

    // The refused address: its job is an invalid job, dead-lettered with the reason, and not sent.
    let dead = app.dead_letters(2).await;
    assert_eq!(
        dead.len(),
        1,
        "only the malformed reply_to's job is dead-lettered: {dead:?}"
    );
    let dead_job: Value = serde_json::from_slice(&dead[0].0).unwrap();
    assert_eq!(dead_job["id"], malformed["id"]);
    assert!(dead[0].1.starts_with("invalid_job: `reply_to`"), "{}", dead[0].1);
    // Everything else was sent once; the undetectable address's job too (only its reply is lost).
    let sent: Vec<String> = app
        .outbox_lines()
        .iter()
        .map(|l| l["job_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(sent.len(), 31, "{sent:?}");
    assert!(!sent.iter().any(|id| *id == malformed["id"]));
    assert!(sent.iter().any(|id| *id == undetectable["id"]));

    let metrics = app.wait_metric(r#"herald_replies_total{result="refused"}"#, 1.0).await;
    assert_eq!(
        helpers::metric(&metrics, r#"herald_replies_total{result="sent"}"#),
        30.0
    );
    // herald's consuming connection never went down: nothing was redelivered.
    assert_eq!(helpers::metric(&metrics, "herald_broker_connected"), 1.0);
    assert_eq!(
        helpers::metric(&metrics, "herald_dead_lettered_total{reason=\"invalid_job\"}"),
        1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_reply_to_one_of_herald_s_own_queues_is_refused_with_its_job() {
    let mut app = TestApp::spawn(|_| {}).await;
    let own = [
        app.config.amqp.feedback_queue.clone(),
        app.config.amqp.jobs_queue.clone(),
        app.config.amqp.dead_queue.clone(),
        format!("{}.30s", app.config.amqp.retry_queue),
    ];
    for (i, to) in own.iter().enumerate() {
        let job = helpers::job("sms");
        app.publish_raw(job.to_string().as_bytes(), props(to, &format!("own-{i}")))
            .await;
        let event = app.next_outcome(20).await;
        assert_eq!(event["job_id"], job["id"]);
        assert_eq!(event["error"]["code"], "invalid_job", "reply_to {to}: {event}");
        assert!(
            event["error"]["message"].as_str().unwrap().contains("reply_to"),
            "{event}"
        );
    }
    // Nothing was sent, and nothing reached herald's queues as a "reply": no feedback was counted, the
    // jobs queue got no event to parse (which would be one more invalid_job), the dead-letter queue holds
    // only the four jobs.
    assert!(app.outbox_lines().is_empty());
    // dead_letters polls for a fifth (for 10 s): the window in which a fifth would come.
    let dead = app.dead_letters(5).await;
    assert_eq!(dead.len(), 4, "{dead:?}");
    let metrics = app.settled_metrics().await;
    assert_eq!(
        helpers::metric(&metrics, r#"herald_feedback_total{result="malformed"}"#),
        0.0
    );
    assert_eq!(
        helpers::metric(&metrics, "herald_dead_lettered_total{reason=\"invalid_job\"}"),
        4.0
    );
    app.stop().await;
}

/// A flood of jobs whose `reply_to` names direct reply-to nodes that do not exist (each closes the
/// connection its reply is published on; the jobs can be invalid ones, which cost the publisher nothing):
/// the replies of callers whose queues and nodes work still go out at once. Before, every poison reply
/// cost a reconnect of the one replies connection, the backlog filled, and 0 of 200 good replies arrived
/// within 90 s. A caller using RabbitMQ's real direct reply-to meanwhile gets its reply too.
#[tokio::test]
async fn a_flood_of_poison_reply_addresses_does_not_hold_up_working_ones() {
    let mut app = TestApp::spawn(|_| {}).await;
    let (replies, mut reply_consumer) = app.reply_queue().await;
    let poison = |i: usize| {
        let node = format!("reply@nosuch{i}");
        let mut term = vec![131, 88, 118, 0, node.len() as u8];
        term.extend_from_slice(node.as_bytes());
        term.extend([7; 12]);
        format!(
            "amq.rabbitmq.reply-to.{}.a2V5",
            base64::engine::general_purpose::STANDARD.encode(term)
        )
    };
    for i in 0..1500 {
        let bad = format!(r#"{{"id":"poison-{i}","channel":"sms","to":"+14155550100","code":"x","user_id":"atk"}}"#);
        app.publish_raw(bad.as_bytes(), props(&poison(i), "p")).await;
    }
    let good: Vec<Value> = (0..50).map(|_| helpers::job("email")).collect();
    let started = std::time::Instant::now();
    for job in &good {
        let id = job["id"].as_str().unwrap();
        app.publish_raw(job.to_string().as_bytes(), props(replies.as_str(), &format!("c-{id}")))
            .await;
    }
    let mut got = std::collections::HashSet::new();
    while got.len() < good.len() {
        let reply = tokio::time::timeout(Duration::from_secs(20), reply_consumer.next())
            .await
            .unwrap_or_else(|_| panic!("{} of 50 good replies in 20 s", got.len()))
            .unwrap()
            .unwrap();
        let event: Value = serde_json::from_slice(&reply.data).unwrap();
        got.insert(event["job_id"].as_str().unwrap().to_owned());
    }
    println!("good replies after {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "good replies took {:?}",
        started.elapsed()
    );

    // RabbitMQ's own direct reply-to: the broker names this connection's node, which herald has not
    // seen yet; its reply goes through the probation lane and arrives.
    let direct = helpers::broker().await;
    let channel = direct.create_channel().await.unwrap();
    let mut direct_replies = channel
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "direct".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let job = helpers::job("sms");
    channel
        .basic_publish(
            "".into(),
            app.config.amqp.jobs_queue.as_str().into(),
            lapin::options::BasicPublishOptions::default(),
            job.to_string().as_bytes(),
            props("amq.rabbitmq.reply-to", "direct-1"),
        )
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(60), direct_replies.next())
        .await
        .expect("the direct reply-to reply within 60 s")
        .unwrap()
        .unwrap();
    let event: Value = serde_json::from_slice(&reply.data).unwrap();
    assert_eq!(event["job_id"], job["id"]);
    let metrics = app.metrics().await;
    assert!(helpers::metric(&metrics, r#"herald_replies_total{result="refused"}"#) >= 1.0);
    app.stop().await;
}
