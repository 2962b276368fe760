//! The guard's feedback across a Redis outage (contract §12): feedback waits in the queue and is counted
//! once Redis is back, instead of being nacked until the quorum queue's delivery limit drops it.

mod helpers;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use helpers::TestApp;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use serde_json::json;

/// A TCP proxy to Redis that the test can cut (drop every connection, refuse new ones) and restore.
struct RedisProxy {
    port: u16,
    enabled: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
}

impl RedisProxy {
    async fn start() -> RedisProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let enabled = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (en, cu) = (enabled.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if !en.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let cut = cu.clone();
                tokio::spawn(async move {
                    let Ok(upstream) = tokio::net::TcpStream::connect("127.0.0.1:6379").await else {
                        return;
                    };
                    let (mut crx, mut ctx) = client.into_split();
                    let (mut urx, mut utx) = upstream.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut crx, &mut utx) => {}
                        _ = tokio::io::copy(&mut urx, &mut ctx) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        RedisProxy { port, enabled, cut }
    }

    fn cut(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    fn restore(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }
}

/// Redis goes away for ten seconds while a verified code's feedback is waiting. The consumer nacks it
/// with requeue every 500 ms "so it comes back later" — but `herald.feedback` is a quorum queue with
/// `x-delivery-limit` 5 and a dead-letter route to `herald.dead`: after five tries the broker dead-letters
/// the feedback (with no `x-herald-error`), and the verified code is never counted. A Redis blip of a few
/// seconds loses every feedback message in flight, and with it the budget real users earned.
#[tokio::test]
async fn feedback_waiting_out_a_redis_outage_is_counted_when_redis_returns() {
    let proxy = RedisProxy::start().await;
    let redis_url = format!("redis://127.0.0.1:{}", proxy.port);
    let mut app = TestApp::spawn(|c| {
        c.redis.url = herald::config::Secret::new(redis_url);
        c.fraud.mode = herald::fraud::Mode::Enforce;
    })
    .await;
    let id = format!("outage-{}", uuid::Uuid::new_v4().simple());
    app.publish(
        &json!({"id": id, "channel": "sms", "to": "+447700900123", "code": "123456",
                        "user_id": "u1", "ip": "10.0.0.1"}),
    )
    .await;
    assert_eq!(app.next_outcome(20).await["type"], "gd_send_sms");

    proxy.cut();
    let confirm = app
        .channel
        .basic_publish(
            "".into(),
            app.config.amqp.feedback_queue.as_str().into(),
            BasicPublishOptions::default(),
            json!({"job_id": id, "verified": true}).to_string().as_bytes(),
            BasicProperties::default().with_content_type("application/json".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    tokio::time::sleep(Duration::from_secs(10)).await;
    proxy.restore();

    let series = r#"gd_send_verified_total{channel="sms",country="44"}"#;
    let mut counted = 0.0;
    for _ in 0..200 {
        counted = helpers::metric(&app.metrics().await, series);
        if counted >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = app.dead_letters(1).await;
    assert_eq!(
        counted,
        1.0,
        "the verified code was never counted; dead-lettered: {:?}",
        dead.iter()
            .map(|(b, r)| (String::from_utf8_lossy(b).into_owned(), r.clone()))
            .collect::<Vec<_>>()
    );
    app.stop().await;
}
