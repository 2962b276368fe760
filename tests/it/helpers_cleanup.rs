//! The test helpers clean up what they declare on the shared broker.

use std::time::Duration;

use crate::helpers;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

/// `Broker::drop` deletes the namespace's jobs, retry, delay and dead queues and its events exchange,
/// but not `amqp.feedback_queue`, which `declare_topology` now declares too (a quorum queue: a Raft group
/// of its own on the broker). Every test leaks one; 270 were left on the shared broker at one count.
#[tokio::test]
async fn a_dropped_test_broker_leaves_no_feedback_queue_behind() {
    let broker = helpers::Broker::new(|_| {}).await;
    let feedback = broker.config.amqp.feedback_queue.clone();
    let jobs = broker.config.amqp.jobs_queue.clone();
    drop(broker);
    let connection = helpers::broker().await;
    let exists = |name: String| exists(&connection, name);
    helpers::eventually(Duration::from_secs(5), "the jobs queue is cleaned up", || {
        let jobs = jobs.clone();
        async move { !exists(jobs).await }
    })
    .await;
    let leaked = exists(feedback.clone()).await;
    if leaked {
        // Do not add to the pile.
        let channel = connection.create_channel().await.unwrap();
        let _ = channel.queue_delete(feedback.as_str().into(), Default::default()).await;
    }
    assert!(!leaked, "{feedback} was left on the broker");
}

/// A herald process a test drops is killed, and its commit-marker queues are deleted after it (a killed
/// process cannot delete them; left to expire in 15 minutes they piled up, about 200 after one run of the
/// suite).
#[tokio::test]
async fn a_dropped_herald_process_leaves_no_commit_marker_queue_behind() {
    let broker = helpers::Broker::new(|c| c.amqp.channels = 2).await;
    let herald = helpers::HeraldProcess::start(&helpers::process_env(&broker.config));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut markers = Vec::new();
    while markers.len() < 2 && std::time::Instant::now() < deadline {
        markers = helpers::marker_queues(&herald.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(markers.len(), 2, "{}", herald.logs());
    let connection = helpers::broker().await;
    let exists = |name: String| exists(&connection, name);
    for q in &markers {
        assert!(exists(q.clone()).await, "{q} is declared while herald runs");
    }
    drop(herald);
    for q in &markers {
        assert!(!exists(q.clone()).await, "{q} was left on the broker");
    }
}

#[test]
fn marker_queues_are_read_from_herald_s_lines() {
    let logs = r#"{"message":"consuming","marker_queues":"[\"test.ab.jobs.commits.01x\", \"test.ab.jobs.commits.01y\"]"}
{"message":"consuming","marker_queues":"[\"test.ab.jobs.commits.01x\"]"}"#;
    assert_eq!(
        helpers::marker_queues(logs),
        ["test.ab.jobs.commits.01x", "test.ab.jobs.commits.01y"]
    );
    assert!(helpers::marker_queues("no queue here").is_empty());
}

/// Whether queue `name` is declared (a passive declare, on a channel of its own: a failed one closes it).
async fn exists(connection: &lapin::Connection, name: String) -> bool {
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok()
}
