//! Crash safety (docs/guarantees.md): herald killed with SIGKILL in the middle of a stream, and a job that
//! keeps killing it.

use std::collections::HashMap;
use std::time::Duration;

use crate::helpers::{
    Broker, GatedTwilio, HeraldProcess, job, kill_as_the_outbox_grows, outbox_counts, process_env, twilio,
};

#[tokio::test]
async fn sigkill_mid_stream_loses_nothing_and_repeats_at_most_the_jobs_in_flight() {
    const JOBS: usize = 2000;
    const PREFETCH: u16 = 64;
    let mut broker = Broker::new(|c| c.amqp.prefetch = std::num::NonZeroU16::new(PREFETCH).unwrap()).await;
    let jobs: Vec<_> = (0..JOBS).map(|_| job("sms")).collect();
    broker.publish_many(&jobs).await;
    let env = process_env(&broker.config);
    let outbox = broker.config.outbox.path.clone();

    let mut herald = HeraldProcess::start(&env);
    // Kill it once a good part of the stream is through, while deliveries are under way.
    for _ in 0..600 {
        if outbox_counts(&outbox).len() >= JOBS / 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    herald.kill();
    let sent_before_kill = outbox_counts(&outbox).len();
    assert!(
        sent_before_kill > 0 && sent_before_kill < JOBS,
        "the kill must land mid-stream ({sent_before_kill})"
    );

    let _herald = HeraldProcess::start(&env);
    let mut events: HashMap<String, usize> = HashMap::new();
    while events.len() < JOBS {
        let Some(e) = broker.try_next_event(60).await else {
            panic!("only {} of {JOBS} jobs got an event", events.len());
        };
        *events.entry(e["job_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    // Anything late would be a second event.
    while let Some(e) = broker.try_next_event(2).await {
        *events.entry(e["job_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }

    let twice: Vec<_> = events.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "jobs with other than one event: {twice:?}");
    for j in &jobs {
        assert!(events.contains_key(j["id"].as_str().unwrap()));
    }
    let sent = outbox_counts(&outbox);
    assert_eq!(sent.len(), JOBS, "every job reached the provider");
    let repeated = sent.values().filter(|n| **n > 1).count();
    assert!(
        repeated <= usize::from(PREFETCH),
        "{repeated} jobs were sent twice; only those in flight at the kill (≤ {PREFETCH}) may be"
    );
    assert!(sent.values().all(|n| *n <= 2));
    println!("killed after {sent_before_kill} sends; {repeated} in-flight jobs were sent again");
}

#[tokio::test]
async fn a_job_that_keeps_killing_herald_is_dead_lettered_at_the_delivery_limit() {
    let provider = GatedTwilio::start().await;
    let mut broker = Broker::new(|c| {
        twilio(c, &provider.url);
        c.amqp.delivery_limit = 3;
    })
    .await;
    let env = process_env(&broker.config);
    let poison = job("sms");
    broker.publish(&poison).await;
    // Twice herald dies with the provider call under way (the provider never answers).
    for round in 1..=2 {
        let mut herald = HeraldProcess::start(&env);
        provider.wait_in_flight(round).await;
        herald.kill();
    }
    // The third delivery reaches the limit: dead-lettered with an outcome, not sent a third time.
    let _herald = HeraldProcess::start(&env);
    let e = broker.next_event(30).await;
    assert_eq!(e["job_id"], poison["id"]);
    assert_eq!(e["error"]["code"], "attempts_exhausted", "{e}");
    let dead = broker.dead_letters(1).await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].1.starts_with("attempts_exhausted: "), "{}", dead[0].1);
    assert_eq!(provider.received.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// With `amqp.channels = 2` a crash can count a job in flight twice (the quorum queue hands it to the dead
/// process's other channel before it sees that one die too), so the number of crashes before the limit
/// varies: herald is killed whenever the job's provider call is under way, until the job has an event. It
/// must be herald's own `attempts_exhausted` event, not the queue dead-lettering the job past its limit
/// without one (what three channels would allow; see `config::MAX_CHANNELS`).
#[tokio::test]
async fn with_two_channels_a_job_that_keeps_killing_herald_still_ends_in_its_own_event() {
    const LIMIT: u32 = 5;
    let provider = GatedTwilio::start().await;
    let mut broker = Broker::new(|c| {
        twilio(c, &provider.url);
        c.amqp.delivery_limit = LIMIT;
        c.amqp.channels = 2;
    })
    .await;
    let env = process_env(&broker.config);
    let poison = job("sms");
    broker.publish(&poison).await;
    let mut kills = 0;
    let event = 'crashes: loop {
        assert!(
            kills < usize::try_from(LIMIT).unwrap(),
            "still no event after {kills} crashes"
        );
        let sent = provider.received.load(std::sync::atomic::Ordering::SeqCst);
        let mut herald = HeraldProcess::start(&env);
        for second in 0.. {
            assert!(second < 20, "neither a provider call nor an event: {}", herald.logs());
            if let Some(e) = broker.try_next_event(1).await {
                break 'crashes e;
            }
            if provider.received.load(std::sync::atomic::Ordering::SeqCst) > sent {
                herald.kill();
                kills += 1;
                break;
            }
        }
    };
    assert_eq!(event["job_id"], poison["id"]);
    assert_eq!(event["error"]["code"], "attempts_exhausted", "{event}");
    let dead = broker.dead_letters(1).await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].1.starts_with("attempts_exhausted: "), "{}", dead[0].1);
    let sent = provider.received.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..LIMIT as usize).contains(&sent), "sent {sent} times");
    println!("{kills} crashes, {sent} provider calls before the job was dead-lettered");
}

/// herald is killed six times mid-stream, restarted, and finishes every job (one event each). Then the
/// MFA server replays every job id: each replay is a duplicate, not sent and without an event, even for
/// the batches whose commit marks died with a process (they are written after the broker's commit, on
/// the store thread). (Found by attacking this change: those replays published second events.)
#[tokio::test]
async fn after_sigkills_replays_of_finished_jobs_get_no_second_event() {
    const JOBS: usize = 1500;
    let mut broker = Broker::new(|c| c.amqp.prefetch = std::num::NonZeroU16::new(64).unwrap()).await;
    let jobs: Vec<_> = (0..JOBS).map(|_| job("sms")).collect();
    broker.publish_many(&jobs).await;
    let env = process_env(&broker.config);
    let outbox = broker.config.outbox.path.clone();

    // Killed six times mid-stream (one kill hits a committed-but-unmarked batch about one time in four).
    kill_as_the_outbox_grows(&env, &outbox, 6, JOBS / 8, 600).await;
    let _herald = HeraldProcess::start(&env);
    let mut events: HashMap<String, usize> = HashMap::new();
    while events.len() < JOBS {
        let Some(e) = broker.try_next_event(60).await else {
            panic!("only {} of {JOBS} jobs got an event", events.len());
        };
        *events.entry(e["job_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    while let Some(e) = broker.try_next_event(2).await {
        *events.entry(e["job_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert!(events.values().all(|n| *n == 1), "one event each before the replays");
    let sends_before = outbox_counts(&outbox);

    // The MFA server replays every job id.
    broker.publish_many(&jobs).await;
    let mut replay_events: HashMap<String, usize> = HashMap::new();
    while let Some(e) = broker.try_next_event(5).await {
        *replay_events
            .entry(e["job_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let sends_after = outbox_counts(&outbox);
    assert_eq!(sends_before, sends_after, "a replay was sent again");
    assert!(
        replay_events.is_empty(),
        "{} finished job ids got a second event on herald.events from a replay",
        replay_events.len()
    );
}
