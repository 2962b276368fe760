//! Memory of the local fraud guard under many distinct destinations: `cargo bench --bench guard_memory`.
//!
//! Checks 1,000,000 SMS jobs, each to a distinct number range from a distinct IP (a pumping run that
//! rotates everything, the guard's worst case), then lets the simulated clock pass every window and
//! sweeps. Prints RSS at each step, like `throttle_memory`.

mod common;

use common::rss_mib;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use herald::config::{Config, FraudMode};
use herald::fraud::Guard;
use herald::job::Job;

fn main() {
    const JOBS: u32 = 1_000_000;
    let now = Arc::new(AtomicU64::new(1_800_000_000));
    let clock = now.clone();
    let mut config = Config::default();
    config.fraud.mode = FraudMode::Monitor;
    let guard = Guard::local(
        herald::fraud::Settings::from_config(&config),
        Arc::new(move || clock.load(Ordering::Relaxed)),
        None,
    );
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let before = rss_mib();
    let started = Instant::now();
    for i in 0..JOBS {
        let json = format!(
            r#"{{"id":"b{i}","channel":"sms","to":"+1{:010}","code":"123456","user_id":"u{i}","ip":"10.{}.{}.{}"}}"#,
            2_000_000_000u64 + u64::from(i) * 1000,
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        );
        let job = Job::from_json(json.as_bytes()).expect("valid job");
        runtime.block_on(guard.check(&job));
        if i % 1000 == 999 {
            now.fetch_add(1, Ordering::Relaxed);
        }
        // The minute sweep of a running herald.
        if i % 100_000 == 99_999 {
            guard.sweep();
        }
    }
    let elapsed = started.elapsed();
    let (destinations, jobs) = guard.held();
    let loaded = rss_mib();
    now.fetch_add(26 * 3600, Ordering::Relaxed);
    guard.sweep();
    let after_day = rss_mib();
    let held_day = guard.held();
    println!("| step | destinations | jobs | RSS (MiB) |");
    println!("|---|---|---|---|");
    println!("| start | 0 | 0 | {before:.1} |");
    println!("| after {JOBS} jobs, each to a new range from a new IP | {destinations} | {jobs} | {loaded:.1} |");
    println!(
        "| a day later, swept | {} | {} | {after_day:.1} |",
        held_day.0, held_day.1
    );
    println!(
        "\n{:.0} checks/s including job parsing",
        f64::from(JOBS) / elapsed.as_secs_f64()
    );
}
