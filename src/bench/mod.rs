//! `herald bench`: herald against the raw broker, measured in the same run on the same machine, so
//! that the result is a ratio rather than an absolute number that wanders with the machine.
//!
//! 1. the broker's ceilings: publish N with confirms, then consume them with manual acks at the same
//!    prefetch, publishing one small message per message through a topic exchange to a queue (what
//!    herald minimally does), by two bare clients: per-message publisher confirms, and herald's shape of
//!    one transaction per batch of ready deliveries (see [`steps::Ceiling`]). The higher of the two is
//!    what the bars hold herald to;
//! 2. herald end to end (a child `herald serve`): N jobs queued, time from herald consuming until N
//!    outcome events, with a zero-latency Twilio-shaped HTTP server, then with the outbox provider, and
//!    the outbox again with `amqp.channels = 2`. The
//!    events go to a queue like the ceilings' output, and are counted on herald's stdout. Steps 1 and 2
//!    run in rounds (`--rounds`, default 3): each herald run is divided by its round's ceilings, and the
//!    median over the rounds is the ratio printed;
//! 3. herald with a provider answering after 200 ms (concurrency is the limit, not CPU);
//! 4. latency from publish to provider request at 1,000 jobs/s and at half the best ceiling, each next
//!    to the broker's own publish → consumer latency at that rate (herald's share is the difference), after
//!    a first second at that pace that is not measured (a fresh process opening its connections);
//! 5. the peak RSS of the herald process (its 20,000-job runs as configured and the 1,000 jobs/s latency
//!    run; not the two-channel outbox run, nor the
//!    half-ceiling run, whose backlog, when herald falls behind, is the load and not herald);
//! 6. delivery receipts: the send rate with `twilio.status_callback_url` set, then signed status callbacks
//!    taken per second (each a final status, so a confirmed event), beside it.
//!
//! Each row notes the CPU per job that herald, the broker (when local) and the bench itself spent.
//! Everything runs on queues of its own (`herald.bench.<id>.*`), deleted afterwards.
//!
//! `--callgrind` instead counts the instructions herald executes per job (see [`instructions`]).
//!
//! This module runs the steps and cleans up; [`steps`] measures, [`harness`] runs herald and the fake
//! provider, [`procfs`] reads CPU and memory, [`report`] computes and prints.

mod harness;
mod procfs;
mod report;
mod steps;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use lapin::{Channel, Connection};

use crate::broker;
use crate::config::{AmqpConfig, Config};
use crate::templates::Templates;

use self::harness::Provider;
use self::report::{Round, Row, Summary};
use self::steps::Ceiling;

pub struct BenchArgs {
    /// Jobs per run (at least 10); by default [`JOBS`], or [`CALLGRIND_JOBS`] with `callgrind`.
    pub jobs: Option<usize>,
    /// Rounds of ceiling and herald runs; the ratios are their median.
    pub rounds: usize,
    /// Only step 6 (delivery receipts).
    pub receipts_only: bool,
    /// Only herald's instructions per job, counted by callgrind (see [`instructions`]).
    pub callgrind: bool,
}

/// Jobs per run by default.
pub const JOBS: usize = 20_000;
/// Jobs per run by default with `--callgrind`: a herald under callgrind runs some 50 times slower.
pub const CALLGRIND_JOBS: usize = 2_000;

/// How long the slow provider of step 3 takes to answer.
const SLOW_ANSWER: Duration = Duration::from_millis(200);

pub async fn run(config: &Config, args: BenchArgs) -> anyhow::Result<()> {
    let n = args
        .jobs
        .unwrap_or(if args.callgrind { CALLGRIND_JOBS } else { JOBS })
        .max(10);
    let bench = Bench::connect(config).await?;
    eprintln!(
        "herald bench: {n} jobs, prefetch {}, broker {}, queues {}*",
        bench.amqp.prefetch,
        broker::redacted_url(&bench.amqp),
        bench.amqp.jobs_queue.trim_end_matches("jobs")
    );
    // Ctrl-C ends the run but not the clean-up below: dropping the run kills the herald children.
    let result = tokio::select! {
        result = run_steps(&bench, n, &args) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    bench.clean_up().await;
    print!("{}", result?);
    Ok(())
}

/// Runs what `args` asks for; returns the tables to print.
async fn run_steps(bench: &Bench, n: usize, args: &BenchArgs) -> anyhow::Result<String> {
    if args.callgrind {
        return Ok(report::instructions_table(&instructions(bench, n).await?));
    }
    if args.receipts_only {
        return Ok(format!("{}\n", report::steps_table(&receipts(bench, n).await?)));
    }
    let (rows, summary) = measure(bench, n, args.rounds).await?;
    Ok(format!(
        "{}\n{}",
        report::steps_table(&rows),
        report::measures_table(&summary)
    ))
}

/// The outbox step again with `amqp.channels = 2`, whatever the bench's configuration says (with 2 there
/// too, the two outbox rows measure the same setting): what the second channel buys is in every run
/// (docs/configuration.md: `amqp.channels`). Printed beside the outbox bar, not held to it.
const TWO_CHANNELS: &str = "herald e2e, outbox provider, amqp.channels = 2";

/// Runs the steps in order; returns their rows and what the measures are computed from.
async fn measure(bench: &Bench, n: usize, rounds: usize) -> anyhow::Result<(Vec<Row>, Summary)> {
    let mut rows = Vec::new();
    let fast = Provider::start(Duration::ZERO)?;
    let (mut measured, mut rss) = (Vec::new(), Vec::new());
    // Rounds of ceiling, Twilio-shaped and outbox runs: each herald run is held to the ceiling measured
    // just before it (see `Summary`), and the median over the rounds drops a round that caught a stall
    // on one side only.
    let channels = bench.amqp.channels;
    for round in 1..=rounds {
        let (publish, ceiling) = steps::ceiling(bench, n, Ceiling::Confirms).await?;
        let (_, tx_ceiling) = steps::ceiling(bench, n, Ceiling::Transaction).await?;
        let (_, tx_events_ceiling) = steps::ceiling(bench, n, Ceiling::TransactionEvents).await?;
        let (twilio, rss1) = steps::herald_run(
            bench,
            n,
            Some(&fast),
            "herald e2e, Twilio-shaped server (0 ms)",
            channels,
        )
        .await?;
        let (outbox, rss2) = steps::herald_run(bench, n, None, "herald e2e, outbox provider", channels).await?;
        // Its peak RSS stays in its row: the bar is herald's memory as configured.
        let (outbox_two, _) = steps::herald_run(bench, n, None, TWO_CHANNELS, 2).await?;
        measured.push(Round {
            ceiling: ceiling.rate(),
            tx_ceiling: tx_ceiling.rate(),
            tx_events_ceiling: tx_events_ceiling.rate(),
            twilio: twilio.rate(),
            outbox: outbox.rate(),
            outbox_two_channels: outbox_two.rate(),
        });
        rss.extend([rss1, rss2]);
        if round == 1 {
            rows.push(publish);
        }
        let mut round_rows = [ceiling, tx_ceiling, tx_events_ceiling, twilio, outbox, outbox_two];
        for row in &mut round_rows {
            row.what = format!("{}, round {round}", row.what);
        }
        rows.extend(round_rows);
    }

    let prefetch = bench.amqp.prefetch.get();
    // Enough jobs to fill prefetch 20 times over: the rate is then set by concurrency, not by start-up.
    let slow_jobs = n.min(usize::from(prefetch) * 20).max(10);
    let slow = Provider::start(SLOW_ANSWER)?;
    let what = format!("herald e2e, provider answering in {} ms", SLOW_ANSWER.as_millis());
    let (slow_row, rss3) = steps::herald_run(bench, slow_jobs, Some(&slow), &what, channels).await?;
    let (bar_row, at_bar, rss4) = steps::latency(bench, &fast, report::LATENCY_BAR_RATE, n).await?;
    // Its own RSS stays in its row, out of the bar: when herald falls behind half the ceiling, the run holds
    // a backlog of deliveries, and the bar is herald's memory at 20,000 jobs, not the size of a backlog.
    let (half_row, at_half, _) = steps::latency(bench, &fast, report::half_load(&measured), n).await?;
    rss.extend([rss3, rss4]);
    let summary = Summary {
        jobs: n,
        rounds: measured,
        prefetch,
        slow_delay: SLOW_ANSWER,
        slow_rate: slow_row.rate(),
        latency: [at_bar, at_half],
        peak_rss_mib: rss.into_iter().fold(0.0, f64::max),
    };
    rows.extend([slow_row, bar_row, half_row]);
    rows.extend(receipts(bench, n).await?);
    Ok((rows, summary))
}

/// Step 6: the send rate with receipts on, and receipts/s beside it.
async fn receipts(bench: &Bench, n: usize) -> anyhow::Result<Vec<Row>> {
    let (send, receipts) = steps::receipts(bench, n, &Provider::start_with_sids(Duration::ZERO)?).await?;
    Ok(vec![send, receipts])
}

/// `--callgrind`: herald's instructions per job, Twilio-shaped (0 ms) and with the outbox, counted by
/// valgrind's callgrind on the herald child (see [`steps::instructions`]). This machine has no hardware
/// counters (`perf stat -e instructions`: not supported), and times wander with its load; an instruction
/// count is a figure that does not, so a change to herald's pipeline can be judged by it in one run each.
/// It lives in the bench, not in a script, because it needs everything the bench has: the queues of its
/// own, the child's configuration, the Twilio-shaped server and the count of herald's events.
async fn instructions(bench: &Bench, n: usize) -> anyhow::Result<Vec<report::Instructions>> {
    let fast = Provider::start(Duration::ZERO)?;
    Ok(vec![
        steps::instructions(bench, n, Some(&fast), "herald e2e, Twilio-shaped server (0 ms)").await?,
        steps::instructions(bench, n, None, "herald e2e, outbox provider").await?,
    ])
}

/// What every step runs against.
struct Bench {
    connection: Connection,
    /// In confirm mode: publishes the jobs, declares and deletes queues.
    channel: Channel,
    /// The configured broker and kind of queue, with names of the bench's own (`herald.bench.<id>.*`).
    amqp: AmqpConfig,
    /// Herald's state and outbox files.
    dir: PathBuf,
    /// `templates.dir` as the bench was configured, or the shipped templates when it is not there: its herald
    /// children load them.
    templates_dir: PathBuf,
}

impl Bench {
    async fn connect(config: &Config) -> anyhow::Result<Bench> {
        let id = ulid::Ulid::generate().to_string().to_ascii_lowercase();
        let mut amqp = config.amqp.clone();
        amqp.jobs_queue = format!("herald.bench.{id}.jobs");
        amqp.retry_queue = format!("herald.bench.{id}.retry");
        amqp.dead_queue = format!("herald.bench.{id}.dead");
        amqp.events_exchange = format!("herald.bench.{id}.events");
        amqp.feedback_queue = format!("herald.bench.{id}.feedback");
        let connection = broker::connect(&amqp, "herald-bench").await?;
        let channel = broker::Publisher::new(&connection).await?.channel().clone();
        let dir = std::env::temp_dir().join(format!("herald-bench-{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Run from anywhere: without the configured templates.dir (`templates` of a checkout), the
        // children get the shipped templates, which the binary carries.
        let templates_dir = if config.templates.dir.is_dir() {
            config.templates.dir.clone()
        } else {
            let shipped = dir.join("templates");
            Templates::write_shipped(&shipped)
                .with_context(|| format!("writing templates to {}", shipped.display()))?;
            eprintln!(
                "herald bench: no templates.dir {}; using the templates shipped in the binary",
                config.templates.dir.display()
            );
            shipped
        };
        Ok(Bench {
            connection,
            channel,
            amqp,
            dir,
            templates_dir,
        })
    }

    /// A queue or exchange of a step's own: `<jobs queue>.<name>`.
    fn own(&self, name: &str) -> String {
        format!("{}.{name}", self.amqp.jobs_queue)
    }

    /// Deletes everything the steps may have declared, whether or not a step got to delete its own.
    async fn clean_up(self) {
        let amqp = &self.amqp;
        let own = steps::OWN_QUEUES.map(|q| self.own(q));
        for q in broker::topology_queues(amqp)
            .into_iter()
            .chain(own.iter().map(String::as_str))
        {
            steps::delete_queue(&self.channel, q).await;
        }
        for x in [amqp.events_exchange.clone(), self.own(steps::OWN_EXCHANGE)] {
            let _ = self
                .channel
                .exchange_delete(x.as_str().into(), Default::default())
                .await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = self.connection.close(200, "bench done".into()).await;
    }
}
