//! What follows a broker commit (event lines, marks, claims) when stdout does not keep up: herald must
//! not run ahead of its own bookkeeping. Jobs it has acked but not yet printed and marked are held in
//! memory, and a SIGKILL (or the OOM killer) loses their event lines and commit marks.

mod helpers;

use std::io::{BufRead, Read};
use std::time::Duration;

use helpers::{Broker, job, process_env};

fn outbox_len(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).unwrap_or_default().lines().count()
}

#[tokio::test]
async fn a_stalled_stdout_holds_consumption_back_instead_of_queueing_bookkeeping_without_bound() {
    const JOBS: usize = 1500;
    const PREFETCH: u16 = 16;
    let broker = Broker::new(|c| c.amqp.prefetch = PREFETCH).await;
    let jobs: Vec<_> = (0..JOBS).map(|_| job("sms")).collect();
    broker.publish_many(&jobs).await;
    let outbox = broker.config.outbox.path.clone();

    // herald with a stdout pipe that nobody reads for now: it fills up after some 64 KiB of event lines.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .env("RUST_LOG", "info")
        .envs(process_env(&broker.config))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        let mut line = String::new();
        while err.read_line(&mut line).unwrap_or(0) > 0 {
            line.clear();
        }
    });
    let mut stdout = child.stdout.take().unwrap();

    // Let it run into the full pipe and settle there.
    let mut sent = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = outbox_len(&outbox);
        if now == sent && now > 0 {
            break;
        }
        sent = now;
    }
    let sent = outbox_len(&outbox);
    // Every event line is longer than 200 bytes: at most 64 KiB / 200 lines fit in the pipe; beyond that
    // only a few batches (each at most the prefetch window) may be acked ahead of their printing.
    let bound = 65536 / 200 + 8 * usize::from(PREFETCH);

    // Now read stdout: every job's line comes, exactly once.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let mut buf = [0u8; 8192];
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while text.lines().count() < JOBS && std::time::Instant::now() < deadline {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        text
    });
    let text = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let mut ids: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["job_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), JOBS, "one line per job");
    println!("{sent} of {JOBS} jobs sent while stdout was stalled");
    assert!(
        sent <= bound,
        "{sent} of {JOBS} jobs were sent and acked while stdout was stalled (at most {bound} expected): \
         their bookkeeping queued up without bound"
    );
}
