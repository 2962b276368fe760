//! The measured steps. Each declares what it needs, runs, deletes its own queues and returns its row.
//!
//! The ceiling and the herald runs do the same broker work per job: jobs queued first, the clock running
//! from the first consume to the n-th outcome, one small persistent publish per job through a topic
//! exchange into an unconsumed queue of the configured kind.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Consumer};

use crate::broker;
use crate::config::ProviderKind;
use crate::events::Event;
use crate::job::{Job, Locale};

use super::Bench;
use super::harness::{self, Herald, Provider};
use super::procfs::StepCpu;
use super::report::{self, Instructions, Latency, Row};

/// Queues and the exchange the steps declare for themselves, each `<jobs queue>.<name>`.
const CEILING_IN: &str = "ceiling-in";
const CEILING_OUT: &str = "ceiling-out";
const EVENTS_SINK: &str = "events-sink";
const LATENCY: &str = "latency";
pub(super) const OWN_QUEUES: [&str; 4] = [CEILING_IN, CEILING_OUT, EVENTS_SINK, LATENCY];
pub(super) const OWN_EXCHANGE: &str = "ceiling";

/// How the bare client of a ceiling step answers and acks its deliveries. Both publish one small message
/// per delivery the way herald's events go, and both hold at most prefetch deliveries unacked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Ceiling {
    /// Each delivery on its own task, as herald handles up to prefetch jobs at once: its publish on a
    /// second channel in confirm mode, its ack once the publish is confirmed.
    Confirms,
    /// Herald's shape (docs/guarantees.md "One outcome, once"), without herald: on the consuming channel, each batch of
    /// the deliveries ready at the time (up to prefetch) answered with pipelined publishes, acked with one
    /// `multiple` ack and committed as one transaction. Batched commits cost the broker less than a
    /// confirm per message (#23), so this ceiling is usually the higher.
    Transaction,
    /// [`Ceiling::Transaction`] with each publish the size of herald's own event for a bench job, and with
    /// an event's properties: the broker's part of an outbox job without herald. Printed beside the bars,
    /// which keep the small publish: how much of herald's distance to the ceiling is its event's size,
    /// which docs/jobs-and-events.md fixes, and how much is herald.
    TransactionEvents,
}

/// Step 1: what the broker itself does at this prefetch, with a bare client of `shape`. Returns the rows
/// of publishing the n jobs and of consuming them.
///
/// The small publish takes the path herald's event must (docs/jobs-and-events.md "Topology": `herald.events` is a topic
/// exchange): through a topic exchange to one bound queue of the configured kind. Topic routing costs the broker
/// about 10 µs of CPU per message more than the default exchange, which a ceiling publishing straight to
/// its queue would leave out.
pub(super) async fn ceiling(bench: &Bench, n: usize, shape: Ceiling) -> anyhow::Result<(Row, Row)> {
    let channel = &bench.channel;
    let (q_in, q_out, exchange) = (bench.own(CEILING_IN), bench.own(CEILING_OUT), bench.own(OWN_EXCHANGE));
    broker::declare_queue(channel, &bench.amqp, &q_in).await?;
    broker::declare_topic_exchange(channel, &exchange).await?;
    broker::declare_queue(channel, &bench.amqp, &q_out).await?;
    broker::bind_all(channel, &q_out, &exchange).await?;
    let started = Instant::now();
    publish_all(channel, &q_in, n).await?;
    let publish = Row {
        what: "broker: publish with confirms".into(),
        jobs: n,
        seconds: started.elapsed().as_secs_f64(),
        note: String::new(),
    };

    let (consume, consumer) = consume(bench, &q_in, "bench").await?;
    let to: Arc<str> = exchange.as_str().into();
    let (what, (seconds, others_cpu, batches)) = match shape {
        Ceiling::Confirms => {
            let out = broker::Publisher::new(&bench.connection).await?;
            let what = "broker ceiling: consume + ack + one small publish (topic exchange)".to_owned();
            (what, timed(n, confirmed_each(consumer, out, to, n)).await?)
        }
        Ceiling::Transaction | Ceiling::TransactionEvents => {
            consume.tx_select().await?;
            let prefetch = bench.amqp.prefetch.get();
            let (what, reply) = if shape == Ceiling::Transaction {
                (
                    "broker ceiling, transactional: ready batch + one small publish each (topic exchange) \
                     + multiple ack + commit"
                        .to_owned(),
                    (b"{}".to_vec(), BasicProperties::default().with_delivery_mode(2)),
                )
            } else {
                let (body, properties) = herald_event()?;
                let what = format!(
                    "broker ceiling, transactional, herald's event ({} bytes, its properties) for each",
                    body.len()
                );
                (what, (body, properties))
            };
            let run = committed_batches(&consume, consumer, prefetch, &to, &reply, n);
            (what, timed(n, run).await?)
        }
    };
    close_consuming(&consume, "bench").await;
    for q in [&q_in, &q_out] {
        delete_queue(channel, q).await;
    }
    let _ = channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
    let ceiling = Row {
        what,
        jobs: n,
        seconds,
        note: format!("prefetch {}{batches}{others_cpu}", bench.amqp.prefetch),
    };
    Ok((publish, ceiling))
}

/// Runs a ceiling's consuming loop for n jobs; returns its seconds, the CPU note of the broker and the
/// bench (see [`StepCpu::others_per_job`]) and the loop's own note.
async fn timed(
    n: usize,
    run: impl std::future::Future<Output = anyhow::Result<String>>,
) -> anyhow::Result<(f64, String, String)> {
    let cpu = StepCpu::start(None);
    let started = Instant::now();
    let note = run.await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok((seconds, cpu.others_per_job(n), note))
}

/// The [`Ceiling::Confirms`] loop: n deliveries, each answered on `out` and acked on its own task.
async fn confirmed_each(
    mut consumer: Consumer,
    out: broker::Publisher,
    to: Arc<str>,
    n: usize,
) -> anyhow::Result<String> {
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            let Some(Ok(delivery)) = consumer.next().await else {
                break;
            };
            let (out, done, to) = (out.clone(), done_tx.clone(), to.clone());
            tokio::spawn(async move {
                let small = BasicProperties::default().with_delivery_mode(2);
                let published = out.publish(&to, "gd_send_sms", b"{}", small).await;
                let acked = delivery.acker.ack(BasicAckOptions::default()).await;
                let _ = done.send(published.map_err(anyhow::Error::from).and(acked.map_err(Into::into)));
            });
        }
    });
    for _ in 0..n {
        done_rx
            .recv()
            .await
            .context("the broker ceiling's consumer stopped")?
            .context("the broker ceiling run failed")?;
    }
    reader.abort();
    Ok(String::new())
}

/// How long the transactional ceiling waits for the next delivery of a window it has begun: after a
/// commit the broker sends the window's deliveries over a few hundred µs, and taking only those already
/// there made batches of ~150 instead of the ~250 that #23 measured this shape with.
const WINDOW_GRACE: Duration = Duration::from_millis(1);

/// The [`Ceiling::Transaction`] loop on `channel` (already in transaction mode, `prefetch` deliveries
/// unacked at most): waits for a delivery, takes every other one ready by then or within
/// [`WINDOW_GRACE`] of the last, publishes one small message each and acks them all with one `multiple`
/// ack, all pipelined, then commits; until n are committed. Notes the mean batch size.
async fn committed_batches(
    channel: &Channel,
    mut consumer: Consumer,
    prefetch: u16,
    to: &str,
    (body, properties): &(Vec<u8>, BasicProperties),
    n: usize,
) -> anyhow::Result<String> {
    let (mut committed, mut commits) = (0_usize, 0_u32);
    while committed < n {
        let first = consumer
            .next()
            .await
            .context("the transactional ceiling's consumer stopped")??;
        let (mut batch, mut last_tag) = (1, first.delivery_tag);
        // What can be ready at most: the rest of the window, or of the jobs.
        let window = usize::from(prefetch).min(n - committed);
        loop {
            while let Some(Some(delivery)) = consumer.next().now_or_never() {
                (batch, last_tag) = (batch + 1, delivery?.delivery_tag);
            }
            if batch >= window {
                break;
            }
            match tokio::time::timeout(WINDOW_GRACE, consumer.next()).await {
                Ok(Some(delivery)) => (batch, last_tag) = (batch + 1, delivery?.delivery_tag),
                _ => break,
            }
        }
        let publishes = (0..batch).map(|_| {
            channel.basic_publish(
                to.into(),
                "gd_send_sms".into(),
                BasicPublishOptions::default(),
                body,
                properties.clone(),
            )
        });
        futures_util::future::try_join(
            futures_util::future::try_join_all(publishes),
            channel.basic_ack(last_tag, BasicAckOptions { multiple: true }),
        )
        .await?;
        channel.tx_commit().await?;
        (committed, commits) = (committed + batch, commits + 1);
    }
    Ok(batches(f64::from(commits), committed as f64))
}

/// A run's commits and their mean batch, as the ceiling's and herald's rows both print them.
fn batches(commits: f64, messages: f64) -> String {
    format!(", {commits:.0} commits of {:.0} on average", messages / commits)
}

/// Steps 2 and 3: n jobs through a fresh herald consuming on `channels` channels (`amqp.channels`), with
/// Twilio at `provider` or the outbox; returns the row and herald's peak RSS in MiB.
///
/// Like the ceiling run, the jobs are queued first and the clock runs from the moment herald consumes
/// until the n-th outcome event, so both rows measure consuming, not the bench's own publishing.
pub(super) async fn herald_run(
    bench: &Bench,
    n: usize,
    provider: Option<&Provider>,
    what: &str,
    channels: u16,
) -> anyhow::Result<(Row, f64)> {
    let sink = events_sink(bench).await?;
    publish_all(&bench.channel, &bench.amqp.jobs_queue, n).await?;
    let (mut herald, started) = Herald::start_with(bench, provider, |c| c.amqp.channels = channels).await?;
    let cpu = StepCpu::start(Some(herald.pid()));
    let failures = herald.events.wait(n).await?;
    let seconds = started.elapsed().as_secs_f64();
    let (cpu_per_job, others_cpu) = (cpu.herald_per_job(n), cpu.others_per_job(n));
    let rss = herald.peak_rss_mib();
    let channels = channels.clamp(1, bench.amqp.prefetch.get());
    let batches = herald_batches(herald.port, seconds, channels).await;
    herald.stop().await?;
    delete_queue(&bench.channel, &sink).await;
    let mut note = format!("herald peak RSS {rss:.1} MiB, CPU {cpu_per_job:.0} µs/job{others_cpu}{batches}");
    if failures > 0 {
        note.push_str(&format!(", {failures} failed"));
    }
    let row = Row {
        what: what.into(),
        jobs: n,
        seconds,
        note,
    };
    Ok((row, rss))
}

/// Herald's commits, their mean batch and how long the broker took to commit each (`herald_commit_seconds`,
/// with its share of the run's `seconds`: over 100% when its `channels` commit at once), from its
/// `/metrics`, as the ceiling rows print theirs; empty when they cannot be read.
async fn herald_batches(port: u16, seconds: f64, channels: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let Ok(response) = reqwest::get(&url).await else {
        return String::new();
    };
    let Ok(text) = response.text().await else {
        return String::new();
    };
    batches_note(&text, seconds, channels)
}

fn batches_note(metrics: &str, seconds: f64, channels: u16) -> String {
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
    };
    let (Some(commits), Some(jobs)) = (
        value("herald_commit_batch_messages_count"),
        value("herald_commit_batch_messages_sum"),
    ) else {
        return String::new();
    };
    if commits <= 0.0 {
        return String::new();
    }
    let mut note = batches(commits, jobs);
    if let Some(committing) = value("herald_commit_seconds_sum").filter(|_| seconds > 0.0) {
        note.push_str(&format!(
            ", each committing {:.1} ms ({:.0}% of the run{})",
            committing * 1000.0 / commits,
            committing * 100.0 / seconds,
            if channels > 1 {
                format!(", summed over {channels} channels")
            } else {
                String::new()
            }
        ));
    }
    note
}

/// The callback URL and auth token of the receipts step (Twilio signs with both; nothing is fetched).
const RECEIPTS_URL: &str = "https://herald.bench.invalid/providers/twilio/status";
const RECEIPTS_TOKEN: &str = "bench";
/// Callbacks the receipts step has under way at once (Twilio spreads them over many connections).
const RECEIPTS_CONCURRENCY: usize = 64;

/// Step 6: delivery receipts. n jobs through herald with `twilio.status_callback_url` set (the send
/// rate with receipts recorded), then one signed `delivered` callback per message, RECEIPTS_CONCURRENCY
/// at a time: the clock runs from the first callback to the n-th receipt event. Returns both rows.
pub(super) async fn receipts(bench: &Bench, n: usize, provider: &Provider) -> anyhow::Result<(Row, Row)> {
    let sink = events_sink(bench).await?;
    publish_all(&bench.channel, &bench.amqp.jobs_queue, n).await?;
    let callback = RECEIPTS_URL.parse().context("the bench's status callback URL")?;
    let (mut herald, started) =
        Herald::start_with(bench, Some(provider), |c| c.twilio.status_callback_url = Some(callback)).await?;
    let cpu = StepCpu::start(Some(herald.pid()));
    herald.events.wait(n).await?;
    let send = Row {
        what: "herald e2e, Twilio-shaped server (0 ms), receipts on".into(),
        jobs: n,
        seconds: started.elapsed().as_secs_f64(),
        note: format!("CPU {:.0} µs/job", cpu.herald_per_job(n)),
    };

    // Signed before the clock starts: signing is Twilio's work, not herald's.
    let bodies: Vec<(String, String)> = (0..n)
        .map(|i| {
            let sid = super::harness::sid_of(code(i));
            let params: Vec<(String, String)> = [
                ("AccountSid", "ACbench"),
                ("MessageSid", sid.as_str()),
                ("MessageStatus", "delivered"),
                ("To", "+14155550000"),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
            let signature = crate::providers::twilio::signature(RECEIPTS_TOKEN.as_bytes(), RECEIPTS_URL, &params);
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&params)
                .finish();
            (body, signature)
        })
        .collect();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/providers/twilio/status", herald.port);
    let cpu = StepCpu::start(Some(herald.pid()));
    let started = Instant::now();
    let answers: Vec<u16> = futures_util::stream::iter(bodies)
        .map(|(body, signature)| {
            let request = client
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-twilio-signature", signature)
                .body(body);
            async move { request.send().await.map_or(0, |r| r.status().as_u16()) }
        })
        .buffer_unordered(RECEIPTS_CONCURRENCY)
        .collect()
        .await;
    herald.events.wait(2 * n).await?;
    let seconds = started.elapsed().as_secs_f64();
    let refused = answers.iter().filter(|s| **s != 200).count();
    // Read while herald still runs: a process gone has no CPU time to read.
    let mut note = format!(
        "{RECEIPTS_CONCURRENCY} at once, CPU {:.0} µs/receipt{}",
        cpu.herald_per_job(n),
        cpu.others_per_job(n)
    );
    herald.stop().await?;
    delete_queue(&bench.channel, &sink).await;
    if refused > 0 {
        note.push_str(&format!(", {refused} not 200"));
    }
    let receipts = Row {
        what: "receipts: signed Twilio status callbacks (delivered) → events".into(),
        jobs: n,
        seconds,
        note,
    };
    Ok((send, receipts))
}

/// Step 4: jobs published at a steady `rate`; the latency to the provider request through herald, and
/// the broker's own publish → consumer latency at the same rate on the same kind of queue, just before
/// (what herald adds is the difference). Returns the row, the latencies and herald's peak RSS in MiB.
pub(super) async fn latency(
    bench: &Bench,
    provider: &Provider,
    rate: f64,
    n: usize,
) -> anyhow::Result<(Row, Latency, f64)> {
    let channel = &bench.channel;
    // Three seconds, and at least 5,000 jobs so that p99.9 rests on five of them (at n jobs at most).
    let count = ((rate * 3.0) as usize).max(5_000).min(n);
    // The first second at this pace is not measured: it covers a freshly started process opening its
    // connections to the provider and warming its caches, which is start-up, not steady-state latency.
    let warm = (rate as usize).max(50).min(n);
    let offset = 500_000; // codes distinct from the throughput runs

    // The broker alone: a plain consumer acking each message.
    let q = bench.own(LATENCY);
    broker::declare_queue(channel, &bench.amqp, &q).await?;
    let (consume, mut consumer) = consume(bench, &q, "bench-latency").await?;
    let reader = tokio::spawn(async move {
        let mut arrived = HashMap::with_capacity(warm + count);
        while arrived.len() < warm + count {
            let Some(Ok(delivery)) = consumer.next().await else {
                break;
            };
            let at = Instant::now();
            if let Some(code) = body_code(&delivery.data) {
                arrived.insert(code, at);
            }
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
        arrived
    });
    let started = Instant::now();
    let published = report::measured(
        paced_publish(channel, &q, offset, warm + count, rate).await?,
        offset + warm,
    );
    let arrived = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .context("the broker latency run stalled")??;
    let broker_pace = (warm + count) as f64 / started.elapsed().as_secs_f64();
    let broker = report::percentiles(&published, &arrived);
    close_consuming(&consume, "bench-latency").await;
    delete_queue(channel, &q).await;

    // Through herald, to the Twilio-shaped server.
    let sink = events_sink(bench).await?;
    let (mut herald, _) = Herald::start(bench, Some(provider)).await?;
    provider.clear_arrivals();
    let started = Instant::now();
    let published = report::measured(
        paced_publish(channel, &bench.amqp.jobs_queue, offset, warm + count, rate).await?,
        offset + warm,
    );
    herald.events.wait(warm + count).await?;
    let seconds = started.elapsed().as_secs_f64();
    let rss = herald.peak_rss_mib();
    herald.stop().await?;
    delete_queue(channel, &sink).await;
    let row = Row {
        what: format!("latency run at {rate:.0} jobs/s"),
        jobs: warm + count,
        seconds,
        note: format!("latency of the last {count}: the first {warm} warm up, herald peak RSS {rss:.1} MiB"),
    };
    let latency = Latency {
        rate,
        broker_pace,
        herald_pace: row.rate(),
        broker,
        herald: report::percentiles(&published, &provider.arrivals()),
        samples: count,
    };
    Ok((row, latency, rss))
}

/// `--callgrind`: the instructions herald executes per job with Twilio at `provider` or the outbox. A
/// herald under callgrind, counting from once it is ready: n jobs published, until its n-th event and its
/// exit; then one that gets no job, stopped after as long. The difference is the jobs' own (idle timers
/// and shutdown cancel out), divided by n. Start-up is left out of both: its count depends on time (a
/// clock calibration loops for a while), so that it would not cancel out. Instruction counts do not
/// depend on the machine's load as times do; what still varies is how the jobs fall into batches.
pub(super) async fn instructions(
    bench: &Bench,
    n: usize,
    provider: Option<&Provider>,
    what: &str,
) -> anyhow::Result<Instructions> {
    let sink = events_sink(bench).await?;
    let counted = |name: &str| bench.dir.join(format!("callgrind.{}.{name}", ulid::Ulid::generate()));
    let (jobs_out, idle_out) = (counted("jobs"), counted("idle"));
    let (mut herald, _) = Herald::start_counted(bench, provider, &jobs_out).await?;
    herald.zero_instructions().await?;
    let started = Instant::now();
    publish_all(&bench.channel, &bench.amqp.jobs_queue, n).await?;
    let failures = herald.events.wait(n).await?;
    let seconds = started.elapsed();
    herald.stop().await?;
    anyhow::ensure!(failures == 0, "{failures} of {n} jobs failed under callgrind ({what})");
    let (idle, _) = Herald::start_counted(bench, provider, &idle_out).await?;
    idle.zero_instructions().await?;
    tokio::time::sleep(seconds).await;
    idle.stop().await?;
    delete_queue(&bench.channel, &sink).await;
    Ok(Instructions {
        what: what.into(),
        jobs: n,
        seconds: seconds.as_secs_f64(),
        total: harness::instructions(&jobs_out)?,
        baseline: harness::instructions(&idle_out)?,
    })
}

/// Closes the channel of [`consume`] once its consumer (`tag`) is dropped. lapin cancels a dropped consumer
/// from a task of its own, whose `basic.cancel` could reach the broker after the channel's close: the broker
/// then closes the whole connection (504 "expected 'channel.open'", on class 60 method 30; seen in CI as a
/// failed `herald bench`). Cancelled here first and awaited, the consumer is no longer active when that task
/// looks.
async fn close_consuming(channel: &Channel, tag: &str) {
    let _ = channel.basic_cancel(tag.into(), BasicCancelOptions::default()).await;
    let _ = channel.close(200, "done".into()).await;
}

/// A consumer of `queue` with manual acks at herald's prefetch, on a channel of its own.
async fn consume(bench: &Bench, queue: &str, tag: &str) -> anyhow::Result<(Channel, Consumer)> {
    let channel = bench.connection.create_channel().await?;
    channel
        .basic_qos(bench.amqp.prefetch.get(), BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Herald's topology, and a queue of the bench's own bound to the events exchange, of the same kind as the
/// ceiling's output queue and, like it, not consumed: the broker does the same work for herald's events as
/// for the ceiling's small publishes. The bench counts herald's events on its stdout instead.
async fn events_sink(bench: &Bench) -> anyhow::Result<String> {
    broker::declare_topology(&bench.channel, &bench.amqp).await?;
    let queue = bench.own(EVENTS_SINK);
    broker::declare_queue(&bench.channel, &bench.amqp, &queue).await?;
    broker::bind_all(&bench.channel, &queue, &bench.amqp.events_exchange).await?;
    Ok(queue)
}

/// Best effort: a queue left behind is deleted again by the clean-up.
pub(super) async fn delete_queue(channel: &Channel, queue: &str) {
    let _ = channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await;
}

/// Publishes jobs 0..n to `queue` as fast as the broker takes them, then waits for every confirm.
async fn publish_all(channel: &Channel, queue: &str, n: usize) -> anyhow::Result<()> {
    paced_publish(channel, queue, 0, n, f64::INFINITY).await.map(drop)
}

/// Publishes `count` jobs (codes from `offset`) at a steady `rate` (jobs/s; infinite = no pause) without
/// waiting for each confirm, so the pace holds; returns when each code was published.
async fn paced_publish(
    channel: &Channel,
    queue: &str,
    offset: usize,
    count: usize,
    rate: f64,
) -> anyhow::Result<HashMap<u32, Instant>> {
    let props = broker::json_properties();
    let gap = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let mut published = HashMap::with_capacity(count);
    let mut confirms = Vec::with_capacity(count);
    let started = Instant::now();
    for k in 0..count {
        if rate.is_finite() {
            tokio::time::sleep_until((started + gap * k as u32).into()).await;
        }
        let i = offset + k;
        published.insert(code(i), Instant::now());
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &job_body(i),
                    props.clone(),
                )
                .await?,
        );
    }
    for c in confirms {
        c.await?;
    }
    Ok(published)
}

/// The code of job `i`: it carries the index, so that an arrival is matched to its publish time.
fn code(i: usize) -> u32 {
    (i % 1_000_000) as u32
}

/// Job `i` as published: a valid SMS job whose code is [`code`]`(i)`.
fn job_body(i: usize) -> Vec<u8> {
    format!(
        r#"{{"id":"bench-{i}","channel":"sms","to":"+1415555{:04}","code":"{:06}","user_id":"bench-user-{i}","friendly_name":"Acme"}}"#,
        i % 10_000,
        code(i)
    )
    .into_bytes()
}

/// The event herald publishes for bench job 0 sent by the outbox, and its properties, made by herald's own
/// code: what [`Ceiling::TransactionEvents`] publishes.
fn herald_event() -> anyhow::Result<(Vec<u8>, BasicProperties)> {
    let job = Job::from_json(&job_body(0)).map_err(|e| anyhow::anyhow!("the bench's job is invalid: {e}"))?;
    let locale = Locale::parse("en").map_err(|_| anyhow::anyhow!("`en` is not a locale"))?;
    let mut event = Event::for_job(&job, &locale, true);
    event.provider = Some(ProviderKind::Outbox);
    event.duration_ms = 1;
    let properties = broker::event_properties(event.kind.as_str(), Some(&job.id));
    Ok((event.to_json(), properties))
}

/// The code of a job body, as the broker-alone latency consumer reads it.
fn body_code(body: &[u8]) -> Option<u32> {
    let job: serde_json::Value = serde_json::from_slice(body).ok()?;
    job["code"].as_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn herald_batches_come_from_its_commit_histogram() {
        let metrics = "# TYPE herald_commit_batch_messages histogram\n\
            herald_commit_batch_messages_bucket{le=\"+Inf\"} 80\n\
            herald_commit_batch_messages_sum 20000\n\
            herald_commit_batch_messages_count 80\n";
        assert_eq!(batches_note(metrics, 2.0, 1), ", 80 commits of 250 on average");
        let timed = format!("{metrics}herald_commit_seconds_sum 0.8\nherald_commit_seconds_count 80\n");
        assert_eq!(
            batches_note(&timed, 2.0, 1),
            ", 80 commits of 250 on average, each committing 10.0 ms (40% of the run)"
        );
        assert_eq!(
            batches_note(&timed, 0.5, 2),
            ", 80 commits of 250 on average, each committing 10.0 ms (160% of the run, summed over 2 channels)"
        );
        assert_eq!(batches_note("herald_commit_batch_messages_count 0\n", 2.0, 2), "");
        assert_eq!(batches_note("", 2.0, 2), "");
    }

    #[test]
    fn a_job_body_is_a_valid_job_that_carries_its_index_as_code() {
        for i in [0, 7, 500_001, 1_234_567] {
            let body = job_body(i);
            let job = crate::job::Job::from_json(&body).unwrap_or_else(|e| panic!("job {i}: {e:?}"));
            assert_eq!(job.code.expose(), format!("{:06}", i % 1_000_000));
            assert_eq!(body_code(&body), Some(code(i)));
        }
        assert_eq!(body_code(b"{}"), None);
    }

    #[test]
    fn the_event_sized_ceiling_publishes_an_event_as_herald_does() {
        let (body, properties) = herald_event().unwrap();
        let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(event["type"], "gd_send_sms");
        assert_eq!(event["provider"], "outbox");
        assert_eq!(event["job_id"], "bench-0");
        assert!(body.len() > 250, "{} bytes", body.len());
        assert_eq!(properties.kind().as_ref().map(|k| k.as_str()), Some("gd_send_sms"));
        assert_eq!(properties.message_id().as_ref().map(|m| m.as_str()), Some("bench-0"));
        assert_eq!(properties.delivery_mode(), &Some(2));
    }
}
