//! Memory of the local limiters under many distinct keys: `cargo bench --bench throttle_memory`.
//!
//! Checks 1,000,000 SMS jobs, each from a distinct user id, IP and number, then lets the simulated
//! clock pass the longest window and sweeps. Prints RSS at each step.

mod common;

use common::rss_mib;
use std::time::{Duration, Instant};

use governor::clock::FakeRelativeClock;
use herald::config::ThrottleConfig;
use herald::job::Job;
use herald::throttle::Throttle;

fn main() {
    const USERS: u32 = 1_000_000;
    let clock = FakeRelativeClock::default();
    let throttle = Throttle::with_clock(&ThrottleConfig::default(), None, None, clock.clone());
    let before = rss_mib();
    let started = Instant::now();
    for i in 0..USERS {
        let json = format!(
            r#"{{"id":"b{i}","channel":"sms","to":"+1{:010}","code":"123456","user_id":"auth0|{i:024}","ip":"10.{}.{}.{}"}}"#,
            2_000_000_000u64 + u64::from(i) * 7919 % 7_000_000_000,
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        );
        let job = Job::from_json(json.as_bytes()).expect("valid job");
        throttle.check_local(&job);
        if i % 1000 == 999 {
            clock.advance(Duration::from_millis(1));
        }
    }
    let elapsed = started.elapsed();
    let keys = throttle.local().keys();
    let loaded = rss_mib();
    clock.advance(Duration::from_secs(3 * 3600));
    throttle.local().sweep();
    let swept = rss_mib();
    println!("| step | keys | RSS (MiB) |");
    println!("|---|---|---|");
    println!("| start | 0 | {before:.1} |");
    println!("| after {USERS} distinct users (user, ip, recipient, prefix keys) | {keys} | {loaded:.1} |");
    println!(
        "| after the windows passed and a sweep | {} | {swept:.1} |",
        throttle.local().keys()
    );
    println!(
        "\n{:.0} checks/s including job parsing; {:.1} bytes of RSS per key",
        f64::from(USERS) / elapsed.as_secs_f64(),
        (loaded - before) * 1024.0 * 1024.0 / keys as f64
    );
}
