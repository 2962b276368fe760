//! `herald bench`: herald against the raw broker, measured in the same run on the same machine, so
//! that the result is a ratio rather than an absolute number that wanders with the machine.
//!
//! 1. the broker's ceiling: publish N with confirms, then consume them with manual acks at the same
//!    prefetch, publishing one small confirmed message per message through a topic exchange to a queue
//!    (what herald minimally does);
//! 2. herald end to end (a child `herald serve`): N jobs queued, time from herald consuming until N
//!    outcome events, with a zero-latency Twilio-shaped HTTP server, then with the outbox provider. The
//!    events go to a queue like the ceiling's output, and are counted on herald's stdout. Steps 1 and 2
//!    run in rounds (`--rounds`, default 3): each herald run is divided by its round's ceiling, and the
//!    median over the rounds is the ratio printed;
//! 3. herald with a provider answering after 200 ms (concurrency is the limit, not CPU);
//! 4. latency from publish to provider request at half the measured throughput, next to the broker's
//!    own publish → consumer latency at that rate (herald's share is the difference), after a first
//!    second at that pace that is not measured (a fresh process opening its connections);
//! 5. the peak RSS of the herald process.
//!
//! Each row notes the CPU per job that herald, the broker (when local) and the bench itself spent.
//!
//! Everything runs on queues of its own (`herald.bench.<id>.*`), deleted afterwards.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};

use crate::broker;
use crate::config::{AmqpConfig, Config};

pub struct BenchArgs {
    pub jobs: usize,
    pub rounds: usize,
}

#[derive(Default)]
struct Row {
    what: String,
    jobs: usize,
    seconds: f64,
    note: String,
}

impl Row {
    fn rate(&self) -> f64 {
        self.jobs as f64 / self.seconds.max(1e-9)
    }
}

pub async fn run(config: &Config, args: BenchArgs) -> anyhow::Result<()> {
    let n = args.jobs.max(10);
    let prefetch = config.amqp.prefetch;
    let id = ulid::Ulid::generate().to_string().to_ascii_lowercase();
    let mut amqp = config.amqp.clone();
    amqp.jobs_queue = format!("herald.bench.{id}.jobs");
    amqp.retry_queue = format!("herald.bench.{id}.retry");
    amqp.dead_queue = format!("herald.bench.{id}.dead");
    amqp.events_exchange = format!("herald.bench.{id}.events");
    let connection = broker::connect(&amqp, "herald-bench")
        .await
        .with_context(|| format!("connecting to {}", broker::redacted_url(&amqp)))?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    eprintln!(
        "herald bench: {n} jobs, prefetch {prefetch}, broker {}",
        broker::redacted_url(&amqp)
    );

    let body = async {
        let mut rows = Vec::new();
        let dir = tempfile_dir(&id)?;
        let fast = Provider::start(Duration::ZERO)?;
        // Rounds of ceiling, Twilio-shaped and outbox runs. Each herald run is held to the ceiling measured
        // just before it: on a shared machine the speed of everything wanders by tens of percent within a
        // minute, and a ceiling measured next to the run it judges shares most of that drift.
        let (mut twilio, mut outbox, mut rss) = (Vec::new(), Vec::new(), Vec::<f64>::new());
        for round in 1..=args.rounds {
            let (publish, mut ceiling_row) = ceiling(&connection, &channel, &amqp, n).await?;
            let (mut twilio_row, rss1) = herald_run(
                &channel,
                &amqp,
                &dir,
                n,
                Some(&fast),
                "herald e2e, Twilio-shaped server (0 ms)",
            )
            .await?;
            let (mut outbox_row, rss2) =
                herald_run(&channel, &amqp, &dir, n, None, "herald e2e, outbox provider").await?;
            twilio.push((twilio_row.rate(), twilio_row.rate() / ceiling_row.rate()));
            outbox.push(outbox_row.rate() / ceiling_row.rate());
            rss.extend([rss1, rss2]);
            if round == 1 {
                rows.push(publish);
            }
            for row in [&mut ceiling_row, &mut twilio_row, &mut outbox_row] {
                row.what = format!("{}, round {round}", row.what);
            }
            rows.extend([ceiling_row, twilio_row, outbox_row]);
        }
        let slow_jobs = n.min(usize::from(prefetch) * 20).max(10);
        let slow = Provider::start(Duration::from_millis(200))?;
        let (slow_row, rss3) = herald_run(
            &channel,
            &amqp,
            &dir,
            slow_jobs,
            Some(&slow),
            "herald e2e, provider answering in 200 ms",
        )
        .await?;
        let half = median(twilio.iter().map(|(rate, _)| *rate).collect()) / 2.0;
        let (latency_row, lat, rss4) = latency(&connection, &channel, &amqp, &dir, &fast, half, n).await?;
        rss.extend([rss3, rss4]);
        let peak_rss = rss.into_iter().fold(0.0, f64::max);
        let slow_ideal = f64::from(prefetch) / 0.2;
        let slow_ratio = slow_row.rate() / slow_ideal;
        rows.push(slow_row);
        rows.push(latency_row);
        let _ = std::fs::remove_dir_all(&dir);

        println!("| step | jobs | seconds | jobs/s | |");
        println!("|---|---:|---:|---:|---|");
        for r in &rows {
            println!(
                "| {} | {} | {:.2} | {:.0} | {} |",
                r.what,
                r.jobs,
                r.seconds,
                r.rate(),
                r.note
            );
        }
        println!();
        let rounds = match args.rounds {
            1 => "1 round".to_owned(),
            n => format!("{n} rounds"),
        };
        println!("| measure | value | bar |");
        println!("|---|---:|---|");
        println!(
            "| e2e outbox / broker ceiling, median of {rounds} | {} | ≥ 0.80 |",
            ratios(outbox)
        );
        println!(
            "| e2e Twilio-shaped / broker ceiling, median of {rounds} | {} | ≥ 0.60 |",
            ratios(twilio.into_iter().map(|(_, ratio)| ratio).collect())
        );
        println!("| 200 ms provider / (prefetch / 0.2 s = {slow_ideal:.0}/s) | {slow_ratio:.2} | ≥ 0.90 |");
        let (b50, b99) = lat.broker;
        let (h50, h99) = lat.herald;
        println!("| broker alone: publish → consumer p50 / p99 at {half:.0} jobs/s | {b50:.2} / {b99:.2} ms | |");
        println!("| herald: publish → provider request p50 / p99 | {h50:.2} / {h99:.2} ms | |");
        println!(
            "| added by herald p50 / p99 | {:.2} / {:.2} ms | p99 ≤ 2 ms |",
            h50 - b50,
            h99 - b99
        );
        // The bar is the issue's 30 MB (10^6 bytes); the rows above count MiB like /proc does.
        let peak_mb = peak_rss * 1024.0 * 1024.0 / 1e6;
        println!("| peak RSS of the herald process | {peak_rss:.1} MiB = {peak_mb:.1} MB | ≤ 30 MB |");
        anyhow::Ok(())
    };
    // Ctrl-C ends the run but not the clean-up below: dropping the run kills the herald children.
    let result = tokio::select! {
        result = body => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };

    // Everything the steps may have declared, whether or not a step got to delete its own.
    let steps = ["ceiling-in", "ceiling-out", "events-sink", "latency"].map(|s| format!("{}.{s}", amqp.jobs_queue));
    for q in [&amqp.jobs_queue, &amqp.retry_queue, &amqp.dead_queue]
        .into_iter()
        .chain(&steps)
    {
        delete_queue(&channel, q).await;
    }
    for x in [amqp.events_exchange.clone(), format!("{}.ceiling", amqp.jobs_queue)] {
        let _ = channel.exchange_delete(x.as_str().into(), Default::default()).await;
    }
    let _ = std::fs::remove_dir_all(bench_dir(&id));
    let _ = connection.close(200, "bench done".into()).await;
    result
}

fn bench_dir(id: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("herald-bench-{id}"))
}

fn tempfile_dir(id: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = bench_dir(id);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn job_body(i: usize) -> Vec<u8> {
    // The code carries the index, so the provider side can match a request to its publish time.
    format!(
        r#"{{"id":"bench-{i}","channel":"sms","to":"+1415555{:04}","code":"{:06}","user_id":"bench-user-{i}","friendly_name":"Acme"}}"#,
        i % 10_000,
        i % 1_000_000
    )
    .into_bytes()
}

async fn declare(channel: &Channel, name: &str, amqp: &AmqpConfig) -> anyhow::Result<()> {
    let mut args = FieldTable::default();
    if amqp.queue_type == crate::config::QueueType::Quorum {
        args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
    }
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    Ok(())
}

/// A queue of the configured kind that takes everything published to topic exchange `exchange`.
async fn declare_bound(channel: &Channel, name: &str, exchange: &str, amqp: &AmqpConfig) -> anyhow::Result<()> {
    declare(channel, name, amqp).await?;
    channel
        .queue_bind(
            name.into(),
            exchange.into(),
            "#".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Step 1: what the broker itself does at this prefetch. The small publish takes the path herald's event
/// must (contract: `herald.events` is a topic exchange): through a topic exchange to one bound queue of the
/// configured kind. Topic routing costs the broker about 10 µs of CPU per message more than the default
/// exchange, which a ceiling publishing straight to its queue would leave out.
async fn ceiling(
    connection: &Connection,
    channel: &Channel,
    amqp: &AmqpConfig,
    n: usize,
) -> anyhow::Result<(Row, Row)> {
    let q_in = format!("{}.ceiling-in", amqp.jobs_queue);
    let q_out = format!("{}.ceiling-out", amqp.jobs_queue);
    declare(channel, &q_in, amqp).await?;
    let exchange = format!("{}.ceiling", amqp.jobs_queue);
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    declare_bound(channel, &q_out, &exchange, amqp).await?;
    let started = Instant::now();
    publish_all(channel, &q_in, 0..n).await?;
    let publish = Row {
        what: "broker: publish with confirms".into(),
        jobs: n,
        seconds: started.elapsed().as_secs_f64(),
        note: String::new(),
    };

    let consume = connection.create_channel().await?;
    consume.basic_qos(amqp.prefetch, BasicQosOptions::default()).await?;
    let out = connection.create_channel().await?;
    out.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut consumer = consume
        .basic_consume(
            q_in.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let cpu = StepCpu::start(None);
    let started = Instant::now();
    let to = Arc::new(exchange.clone());
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            let Some(Ok(delivery)) = consumer.next().await else {
                break;
            };
            let out = out.clone();
            let done = done_tx.clone();
            let to = to.clone();
            tokio::spawn(async move {
                let small = BasicProperties::default().with_delivery_mode(2);
                let confirmed = match out
                    .basic_publish(
                        to.as_str().into(),
                        "gd_send_sms".into(),
                        BasicPublishOptions::default(),
                        b"{}",
                        small,
                    )
                    .await
                {
                    Ok(c) => c.await.is_ok(),
                    Err(_) => false,
                };
                let acked = delivery.acker.ack(BasicAckOptions::default()).await.is_ok();
                let _ = done.send(confirmed && acked);
            });
        }
    });
    for _ in 0..n {
        match done_rx.recv().await {
            Some(true) => {}
            _ => bail!("the broker ceiling run failed"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let others_cpu = cpu.others_per_job(n);
    reader.abort();
    let _ = consume.close(200, "done".into()).await;
    for q in [&q_in, &q_out] {
        delete_queue(channel, q).await;
    }
    let _ = channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
    let ceiling = Row {
        what: "broker ceiling: consume + ack + one small publish (topic exchange)".into(),
        jobs: n,
        seconds,
        note: format!("prefetch {}{others_cpu}", amqp.prefetch),
    };
    Ok((publish, ceiling))
}

/// The median; the mean of the middle two for an even count.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Per-round ratios as "median (round 1, round 2, …)".
fn ratios(values: Vec<f64>) -> String {
    let each: Vec<String> = values.iter().map(|r| format!("{r:.2}")).collect();
    if values.len() == 1 {
        return each.join("");
    }
    format!("{:.2} ({})", median(values), each.join(", "))
}

/// The code at the start of the form's `Body` field ("123456 is your code…", URL-encoded).
fn form_code(form: &[u8]) -> Option<u32> {
    let at = form.windows(5).position(|w| w == b"Body=")? + 5;
    let digits = form[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&form[at..at + digits]).ok()?.parse().ok()
}

/// A Twilio-shaped server answering `201 {"sid": …}` after `delay`, recording when each code arrived.
struct Provider {
    url: String,
    arrivals: Arc<Mutex<HashMap<u32, Instant>>>,
    handle: actix_web::dev::ServerHandle,
}

impl Provider {
    fn start(delay: Duration) -> anyhow::Result<Provider> {
        use actix_web::{App, HttpResponse, HttpServer, web};
        let arrivals = Arc::new(Mutex::new(HashMap::new()));
        let seen = arrivals.clone();
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = HttpServer::new(move || {
            let seen = seen.clone();
            // As little work as a server can do per request, so that its own cost stays out of herald's row:
            // the code is read from the raw form body, the answer is a constant.
            App::new().default_service(web::to(move |body: web::Bytes| {
                let now = Instant::now();
                let seen = seen.clone();
                async move {
                    if let Some(code) = form_code(&body) {
                        seen.lock().unwrap_or_else(|e| e.into_inner()).insert(code, now);
                    }
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    HttpResponse::Created()
                        .content_type("application/json")
                        .body(r#"{"sid":"SMbench","status":"queued"}"#)
                }
            }))
        })
        .workers(1)
        .disable_signals()
        .backlog(4096)
        .max_connections(100_000)
        .listen(listener)?
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Provider { url, arrivals, handle })
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

struct Child {
    process: std::process::Child,
    events: EventLines,
}

impl Child {
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.id())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

/// CPU time (user + system) process `pid` has used so far, in seconds; 0 when it cannot be read.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces: utime and stime are
    // the 12th and 13th of them, in clock ticks.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks / per_second
}

/// The CPU use over a step of herald (when the step runs one), of the broker when it runs on this machine
/// (an Erlang VM, `beam.smp`) and of this bench process (the ceiling's consumer, or the reader of herald's
/// events): together they show where a step's time goes on a machine they all share, and herald's own is
/// less noisy than its rate.
struct StepCpu {
    /// (pid, CPU seconds at the start) of herald and of the broker.
    herald: Option<(u32, f64)>,
    broker: Option<(u32, f64)>,
    bench: (u32, f64),
}

impl StepCpu {
    fn start(herald: Option<&Child>) -> StepCpu {
        // The busiest one: RabbitMQ's command-line tools run in an Erlang VM of their own too.
        let broker = std::fs::read_dir("/proc").ok().and_then(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "beam.smp")
                })
                .max_by(|a, b| cpu_seconds(*a).total_cmp(&cpu_seconds(*b)))
        });
        let at_start = |pid: u32| (pid, cpu_seconds(pid));
        StepCpu {
            herald: herald.map(|h| at_start(h.process.id())),
            broker: broker.map(at_start),
            bench: at_start(std::process::id()),
        }
    }

    /// Herald's CPU per job since `start`, in µs (0 when the step runs no herald).
    fn herald_per_job(&self, jobs: usize) -> f64 {
        self.herald.map_or(0.0, |h| per_job(h, jobs))
    }

    /// ", broker CPU N µs/job, bench M µs/job" since `start`; the broker's only when it is a local process.
    fn others_per_job(&self, jobs: usize) -> String {
        let bench = per_job(self.bench, jobs);
        match self.broker {
            Some(broker) => format!(
                ", broker CPU {:.0} µs/job, bench {bench:.0} µs/job",
                per_job(broker, jobs)
            ),
            None => format!(", bench CPU {bench:.0} µs/job"),
        }
    }
}

/// CPU µs per job that process `pid` spent since it had used `at_start` seconds.
fn per_job((pid, at_start): (u32, f64), jobs: usize) -> f64 {
    (cpu_seconds(pid) - at_start) / jobs.max(1) as f64 * 1e6
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Starts `herald serve` on the bench's queues, with Twilio at `provider` or the outbox.
/// Returns the child and the instant it reported ready (it consumes from then on).
async fn start_herald(
    amqp: &AmqpConfig,
    dir: &std::path::Path,
    provider: Option<&Provider>,
) -> anyhow::Result<(Child, Instant)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD_") && !key.starts_with("HERALD_AMQP__URL") && key != "HERALD_TEMPLATES__DIR" {
            cmd.env_remove(key);
        }
    }
    let state = dir.join(format!("state-{}", ulid::Ulid::generate()));
    cmd.arg("serve")
        .env("RUST_LOG", "warn")
        .env("HERALD_AMQP__URL", amqp.url.expose())
        .env("HERALD_AMQP__PREFETCH", amqp.prefetch.to_string())
        .env(
            "HERALD_AMQP__QUEUE_TYPE",
            if amqp.queue_type == crate::config::QueueType::Quorum {
                "quorum"
            } else {
                "classic"
            },
        )
        .env("HERALD_AMQP__JOBS_QUEUE", &amqp.jobs_queue)
        .env("HERALD_AMQP__RETRY_QUEUE", &amqp.retry_queue)
        .env("HERALD_AMQP__DEAD_QUEUE", &amqp.dead_queue)
        .env("HERALD_AMQP__EVENTS_EXCHANGE", &amqp.events_exchange)
        .env("HERALD_HTTP__ADDR", format!("127.0.0.1:{port}"))
        .env("HERALD_STATE__PATH", &state)
        .env("HERALD_OUTBOX__PATH", dir.join("outbox.jsonl"))
        .env("HERALD_RETRY__SCHEDULE", "[]");
    for limit in ["USER_PHONE", "USER_VOICE", "USER_EMAIL", "IP", "RECIPIENT", "PREFIX"] {
        cmd.env(format!("HERALD_THROTTLE__{limit}"), "");
    }
    if let Some(p) = provider {
        cmd.env("HERALD_TWILIO__ACCOUNT_SID", "ACbench")
            .env("HERALD_TWILIO__AUTH_TOKEN", "bench")
            .env("HERALD_TWILIO__FROM", "+15005550006")
            .env("HERALD_TWILIO__BASE_URL", &p.url)
            .env("HERALD_RETRY__PROVIDER_TIMEOUT", "30s");
    }
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    let mut process = cmd.spawn().context("starting herald serve")?;
    let events = EventLines::read(process.stdout.take().context("herald's stdout")?);
    let child = Child { process, events };
    let ready = format!("http://127.0.0.1:{port}/readyz");
    // Polled tightly: with jobs already queued, the clock starts here.
    let client = reqwest::Client::new();
    for _ in 0..3000 {
        if client.get(&ready).send().await.is_ok_and(|r| r.status() == 200) {
            return Ok((child, Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("herald did not become ready")
}

/// A queue of the bench's own bound to the events exchange, of the same kind as the ceiling's output
/// queue and, like it, not consumed: the broker does the same work for herald's events as for the
/// ceiling's small publishes. The bench counts herald's events on its stdout instead (see [`EventLines`]).
async fn events_sink(channel: &Channel, amqp: &AmqpConfig) -> anyhow::Result<String> {
    broker::declare_topology(channel, amqp).await?;
    let queue = format!("{}.events-sink", amqp.jobs_queue);
    declare_bound(channel, &queue, &amqp.events_exchange, amqp).await?;
    Ok(queue)
}

/// Herald's outcome events as it prints them on stdout: one JSON line each, written once the broker
/// committed the job's event and ack. A thread counts them, so that reading them costs the bench (which
/// shares the machine with herald and the broker) next to nothing; consuming them from the broker cost
/// it about 10 µs of CPU per job, and the broker a delivery each.
struct EventLines {
    /// Lines so far, and how many of them carry an `error`.
    seen: tokio::sync::watch::Receiver<(usize, usize)>,
}

impl EventLines {
    fn read(mut stdout: std::process::ChildStdout) -> EventLines {
        use std::io::Read;
        let (tx, seen) = tokio::sync::watch::channel((0, 0));
        std::thread::spawn(move || {
            let (mut lines, mut failed) = (0, 0);
            let mut buf = vec![0; 1 << 16];
            // The unfinished last line of a read, carried to the next.
            let mut partial = Vec::new();
            while let Ok(read @ 1..) = stdout.read(&mut buf) {
                partial.extend_from_slice(&buf[..read]);
                let complete = partial.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                for line in partial[..complete].split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    lines += 1;
                    if line.windows(8).any(|w| w == b"\"error\":") {
                        failed += 1;
                    }
                }
                partial.drain(..complete);
                // One wake-up per read, not per line.
                tx.send_replace((lines, failed));
            }
        });
        EventLines { seen }
    }

    /// Waits for `n` events in all; returns how many of them are failures.
    async fn wait(&mut self, n: usize) -> anyhow::Result<usize> {
        loop {
            let (lines, failed) = *self.seen.borrow_and_update();
            if lines >= n {
                return Ok(failed);
            }
            tokio::time::timeout(Duration::from_secs(120), self.seen.changed())
                .await
                .with_context(|| format!("no event for 120 s ({lines} of {n})"))?
                .context("herald's stdout closed")?;
        }
    }
}

async fn delete_queue(channel: &Channel, queue: &str) {
    let _ = channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await;
}

/// Publishes jobs `range` to `queue` as fast as the broker takes them, then waits for every confirm.
async fn publish_all(channel: &Channel, queue: &str, range: std::ops::Range<usize>) -> anyhow::Result<()> {
    paced_publish(channel, queue, range.start, range.len(), f64::INFINITY)
        .await
        .map(drop)
}

/// Steps 2 and 3: n jobs through a fresh herald; returns the row and herald's peak RSS.
///
/// Like the ceiling run, the jobs are queued first and the clock runs from the moment herald consumes
/// until the n-th outcome event, so both rows measure consuming, not the bench's own publishing.
async fn herald_run(
    channel: &Channel,
    amqp: &AmqpConfig,
    dir: &std::path::Path,
    n: usize,
    provider: Option<&Provider>,
    what: &str,
) -> anyhow::Result<(Row, f64)> {
    let sink = events_sink(channel, amqp).await?;
    publish_all(channel, &amqp.jobs_queue, 0..n).await?;
    let (mut herald, started) = start_herald(amqp, dir, provider).await?;
    let cpu = StepCpu::start(Some(&herald));
    let failures = herald.events.wait(n).await?;
    let seconds = started.elapsed().as_secs_f64();
    let (cpu_per_job, others_cpu) = (cpu.herald_per_job(n), cpu.others_per_job(n));
    let rss = herald.peak_rss_mib();
    drop(herald);
    delete_queue(channel, &sink).await;
    let mut note = format!("herald peak RSS {rss:.1} MiB, CPU {cpu_per_job:.0} µs/job{others_cpu}");
    if failures > 0 {
        note.push_str(&format!(", {failures} failed"));
    }
    Ok((
        Row {
            what: what.into(),
            jobs: n,
            seconds,
            note,
        },
        rss,
    ))
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
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let gap = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let mut published = HashMap::with_capacity(count);
    let mut confirms = Vec::with_capacity(count);
    let started = Instant::now();
    for k in 0..count {
        if rate.is_finite() {
            tokio::time::sleep_until((started + gap * k as u32).into()).await;
        }
        let i = offset + k;
        published.insert((i % 1_000_000) as u32, Instant::now());
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

/// The publish times of codes from `first` on: the warm-up before it is not measured.
fn measured(mut published: HashMap<u32, Instant>, first: usize) -> HashMap<u32, Instant> {
    published.retain(|code, _| *code as usize >= first);
    published
}

/// p50 and p99 in milliseconds of `arrived - published`, matched by code.
fn percentiles(published: &HashMap<u32, Instant>, arrived: &HashMap<u32, Instant>) -> (f64, f64) {
    let mut ms: Vec<f64> = published
        .iter()
        .filter_map(|(code, at)| {
            arrived
                .get(code)
                .map(|arr| arr.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        ms.get(((ms.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    (pct(0.5), pct(0.99))
}

/// Latency figures of step 4, in milliseconds.
struct Latency {
    broker: (f64, f64),
    herald: (f64, f64),
}

/// Step 4: jobs published at a steady `rate`; the latency to the provider request through herald, and
/// the broker's own publish → consumer latency at the same rate on the same kind of queue (what herald
/// adds is the difference).
async fn latency(
    connection: &Connection,
    channel: &Channel,
    amqp: &AmqpConfig,
    dir: &std::path::Path,
    provider: &Provider,
    rate: f64,
    n: usize,
) -> anyhow::Result<(Row, Latency, f64)> {
    let count = ((rate * 3.0) as usize).clamp(50, n);
    // The first second at this pace is not measured: it covers a freshly started process opening its
    // connections to the provider and warming its caches, which is start-up, not steady-state latency.
    let warm = ((rate * 1.0) as usize).clamp(50, n);

    // The broker alone: a plain consumer acking each message.
    let q = format!("{}.latency", amqp.jobs_queue);
    declare(channel, &q, amqp).await?;
    let consume = connection.create_channel().await?;
    consume.basic_qos(amqp.prefetch, BasicQosOptions::default()).await?;
    let mut consumer = consume
        .basic_consume(
            q.as_str().into(),
            "bench-latency".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let reader = tokio::spawn(async move {
        let mut arrived = HashMap::with_capacity(warm + count);
        while arrived.len() < warm + count {
            let Some(Ok(delivery)) = consumer.next().await else {
                break;
            };
            let at = Instant::now();
            if let Some(code) = serde_json::from_slice::<serde_json::Value>(&delivery.data)
                .ok()
                .and_then(|v| v["code"].as_str().and_then(|c| c.parse::<u32>().ok()))
            {
                arrived.insert(code, at);
            }
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
        arrived
    });
    let offset = 500_000; // codes distinct from the throughput runs
    let published = measured(
        paced_publish(channel, &q, offset, warm + count, rate).await?,
        offset + warm,
    );
    let arrived = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .context("the broker latency run stalled")??;
    let broker = percentiles(&published, &arrived);
    let _ = consume.close(200, "done".into()).await;
    delete_queue(channel, &q).await;

    // Through herald, to the Twilio-shaped server.
    let sink = events_sink(channel, amqp).await?;
    let (mut herald, _) = start_herald(amqp, dir, Some(provider)).await?;
    provider.arrivals.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let started = Instant::now();
    let published = measured(
        paced_publish(channel, &amqp.jobs_queue, offset, warm + count, rate).await?,
        offset + warm,
    );
    herald.events.wait(warm + count).await?;
    let seconds = started.elapsed().as_secs_f64();
    let rss = herald.peak_rss_mib();
    drop(herald);
    delete_queue(channel, &sink).await;
    let arrivals = provider.arrivals.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let row = Row {
        what: format!("latency run at {rate:.0} jobs/s"),
        jobs: warm + count,
        seconds,
        note: format!("latency of the last {count}: the first {warm} warm up"),
    };
    Ok((
        row,
        Latency {
            broker,
            herald: percentiles(&published, &arrivals),
        },
        rss,
    ))
}
