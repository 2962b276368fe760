//! The test helpers clean up what they declare on the shared broker.

mod helpers;

use std::time::Duration;

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
    let exists = |name: String| {
        let connection = &connection;
        async move {
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
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!exists(jobs).await, "the jobs queue is cleaned up");
    let leaked = exists(feedback.clone()).await;
    if leaked {
        // Do not add to the pile.
        let channel = connection.create_channel().await.unwrap();
        let _ = channel.queue_delete(feedback.as_str().into(), Default::default()).await;
    }
    assert!(!leaked, "{feedback} was left on the broker");
}
