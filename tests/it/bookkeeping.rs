//! What follows a broker commit (event lines, marks, claims) when stdout does not keep up: herald must
//! not run ahead of its own bookkeeping. Jobs it has acked but not yet printed and marked are held in
//! memory, and a SIGKILL (or the OOM killer) loses their event lines and commit marks.

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::helpers::{Broker, collect_output, job, outbox_counts, process_env, spawn_herald};

#[tokio::test]
async fn a_stalled_stdout_holds_consumption_back_instead_of_queueing_bookkeeping_without_bound() {
    const JOBS: usize = 1500;
    // herald with a stdout pipe that nobody reads for now: it fills up after some 64 KiB of event lines.
    // `_broker` is held to the end: dropping it deletes the test's queues.
    let Stalled {
        broker: _broker,
        mut child,
        stdout,
        sent,
        ..
    } = stalled(JOBS).await;
    // Every event line is longer than 200 bytes: at most 64 KiB / 200 lines fit in the pipe; beyond that
    // only a few batches (each at most the prefetch window) may be acked ahead of their printing.
    let bound = 65536 / 200 + 8 * usize::from(STALLED_PREFETCH);

    // Now read stdout: every job's line comes, exactly once.
    let printed = collect_output(stdout);
    let lines = wait_for_lines(&printed, JOBS).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(lines.len(), JOBS, "one line per job");
    assert!(lines.values().all(|n| *n == 1), "one line per job");
    println!("{sent} of {JOBS} jobs sent while stdout was stalled");
    assert!(
        sent <= bound,
        "{sent} of {JOBS} jobs were sent and acked while stdout was stalled (at most {bound} expected): \
         their bookkeeping queued up without bound"
    );
}

#[tokio::test]
async fn copies_of_jobs_committed_but_not_yet_booked_are_duplicates() {
    const JOBS: usize = 600;
    let Stalled {
        mut broker,
        jobs,
        outbox,
        mut child,
        stdout,
        ..
    } = stalled(JOBS).await;
    // Held up by its stdout: some jobs are committed (acked, events out) and wait for their lines, marks
    // and claims' release. A second copy of every job now (a replay of the same id).
    broker.publish_many(&jobs).await;
    let printed = collect_output(stdout);
    wait_for_lines(&printed, JOBS).await;
    let mut events = HashMap::<String, usize>::new();
    while let Some(e) = broker.try_next_event(3).await {
        *events.entry(e["job_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    let lines = count_lines(&printed.lock().unwrap());
    let _ = child.kill();
    let _ = child.wait();
    let sent = outbox_counts(&outbox);
    for j in &jobs {
        let id = j["id"].as_str().unwrap();
        assert_eq!(sent.get(id), Some(&1), "sent once");
        assert_eq!(events.get(id), Some(&1), "one event on the broker");
        assert_eq!(lines.get(id), Some(&1), "one line on stdout");
    }
    assert_eq!(events.len(), JOBS);
    assert_eq!(lines.len(), JOBS);
}

/// The prefetch of [`stalled`]'s herald: a window far smaller than what 64 KiB of event lines hold.
const STALLED_PREFETCH: u16 = 16;

/// `n` SMS jobs queued, and a herald consuming them with an unread stdout, once its outbox stopped growing.
struct Stalled {
    broker: Broker,
    jobs: Vec<serde_json::Value>,
    outbox: std::path::PathBuf,
    child: std::process::Child,
    stdout: std::process::ChildStdout,
    /// Jobs sent before herald stalled.
    sent: usize,
}

async fn stalled(n: usize) -> Stalled {
    let broker = Broker::new(|c| c.amqp.prefetch = std::num::NonZeroU16::new(STALLED_PREFETCH).unwrap()).await;
    let jobs: Vec<_> = (0..n).map(|_| job("sms")).collect();
    broker.publish_many(&jobs).await;
    let outbox = broker.config.outbox.path.clone();
    let (child, stdout) = herald_with_unread_stdout(&broker);
    let sent = until_stalled(&outbox).await;
    Stalled {
        broker,
        jobs,
        outbox,
        child,
        stdout,
        sent,
    }
}

/// `herald serve` on `broker`'s queues, with its stdout handed back unread (stderr is drained).
fn herald_with_unread_stdout(broker: &Broker) -> (std::process::Child, std::process::ChildStdout) {
    let mut child = spawn_herald(&process_env(&broker.config));
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        let mut line = String::new();
        while err.read_line(&mut line).unwrap_or(0) > 0 {
            line.clear();
        }
    });
    let stdout = child.stdout.take().unwrap();
    (child, stdout)
}

/// Event lines per job id.
fn count_lines(text: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        *counts.entry(v["job_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    counts
}

/// Waits (up to 60 s) for `n` whole lines, then half a second more for any that should not come.
async fn wait_for_lines(text: &Arc<Mutex<String>>, n: usize) -> HashMap<String, usize> {
    for _ in 0..600 {
        if text.lock().unwrap().matches('\n').count() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Not a wait for something: the window in which a line too many would come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    count_lines(&text.lock().unwrap())
}

fn outbox_len(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).unwrap_or_default().lines().count()
}

/// Waits until the outbox stops growing (herald is held up by its stdout) and returns its length.
async fn until_stalled(path: &std::path::Path) -> usize {
    let mut sent = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = outbox_len(path);
        if now == sent && now > 0 {
            break;
        }
        sent = now;
    }
    outbox_len(path)
}

#[tokio::test]
async fn sigterm_with_a_stalled_stdout_prints_every_committed_event_before_exit() {
    const JOBS: usize = 600;
    let Stalled {
        mut broker,
        outbox,
        mut child,
        stdout,
        ..
    } = stalled(JOBS).await;
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    // The scenario: herald has the signal a while with nobody reading its stdout. It cannot exit before
    // its lines are out; reading them lets it finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let printed = collect_output(stdout);
    let mut status = None;
    for _ in 0..300 {
        status = child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0), "exits cleanly");
    // The reader thread drops its handle at EOF, once it has every line.
    let reader = &printed;
    crate::helpers::eventually(Duration::from_secs(5), "stdout read to its end", || async move {
        Arc::strong_count(reader) == 1
    })
    .await;
    let lines = count_lines(&printed.lock().unwrap());
    let mut events = HashMap::<String, usize>::new();
    while let Some(e) = broker.try_next_event(2).await {
        *events.entry(e["job_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    let sent = outbox_counts(&outbox);
    assert!(sent.values().all(|n| *n == 1));
    assert_eq!(events.len(), sent.len(), "an event for each job sent");
    assert!(events.values().all(|n| *n == 1));
    assert_eq!(lines, events, "a line for each event, before exit");
    assert!(
        !sent.is_empty() && sent.len() < JOBS,
        "stopped mid-stream ({})",
        sent.len()
    );
    // What was left goes to the next process.
    assert_eq!(
        broker.queue_len(&broker.config.amqp.jobs_queue).await as usize,
        JOBS - sent.len()
    );
}
