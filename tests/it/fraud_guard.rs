//! The adaptive toll-fraud guard (docs/fraud-and-limits.md "Adaptive guard") against traffic that looks real, on a
//! simulated clock: two weeks of legitimate users in six countries who verify 85-95% of their codes (with a daily
//! rhythm, "resend code" retries and a day at twice the usual volume), a new market that launches with no history
//! and whose users do verify, and pumping attacks of 300, 1,500 and 36,000 SMS that rotate user ids and IPs
//! over three premium ranges and never verify. Each attack size is its own run, after the same history.
//!
//! Run with `--nocapture` to see the table.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use herald::config::{Config, FraudMode, ThrottleConfig};
use herald::fraud::{Guard, GuardVerdict, Refusals, Settings};
use herald::job::Job;
use herald::throttle::{self, Throttle};

const DAY: u64 = 86_400;
/// The simulation starts at a whole day, like a real deployment started at midnight.
const START: u64 = 20_000 * DAY;
/// Days of history before anything else happens.
const HISTORY_DAYS: u64 = 14;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Real,
    /// A real user of the market that launches on the first test day.
    NewMarket,
    Attack,
}

struct Request {
    at: u64,
    who: Who,
    job: Job,
    /// Seconds after the send at which the user types the code in, if they do.
    verifies_after: Option<u64>,
}

fn job(id: usize, to: &str, user: &str, ip: &str) -> Job {
    let json = serde_json::json!({
        "id": format!("j{id}"), "channel": "sms", "to": to, "code": "123456", "user_id": user, "ip": ip
    });
    Job::from_json(json.to_string().as_bytes()).unwrap()
}

fn number(rng: &mut fastrand::Rng, prefix: &str, len: usize) -> String {
    let mut n = prefix.to_owned();
    while n.len() < len {
        n.push(char::from(b'0' + rng.u8(0..10)));
    }
    n
}

/// Share of the day's traffic in each hour: quiet at night, busy in the afternoon.
fn hour_weight(hour: u64) -> f64 {
    let h = hour as f64;
    0.25 + (1.0 + ((h - 15.0) / 24.0 * std::f64::consts::TAU).cos()) * 0.75
}

/// Seconds into a day, drawn with the daily rhythm.
fn time_of_day(rng: &mut fastrand::Rng) -> u64 {
    loop {
        let t = rng.u64(0..DAY);
        if rng.f64() * 1.75 < hour_weight(t / 3600) {
            return t;
        }
    }
}

struct Market {
    code: &'static str,
    /// E.164 length with the `+`.
    len: usize,
    users: usize,
    per_day: usize,
    verify: f64,
}

/// Real users of one market from `first_day` to `last_day`: each request picks one of the market's users
/// (their number and home IP stay theirs); a user who does not type the code in asks again a minute
/// later half the time.
#[allow(clippy::too_many_arguments)]
fn real_traffic(
    rng: &mut fastrand::Rng,
    out: &mut Vec<Request>,
    next_id: &mut usize,
    m: &Market,
    who: Who,
    first_day: u64,
    last_day: u64,
    spike_day: Option<u64>,
) {
    let users: Vec<(String, String)> = (0..m.users)
        .map(|u| {
            let mobile = format!("+{}{}", m.code, rng.u8(6..=9));
            (
                number(rng, &mobile, m.len),
                format!("10.{}.{}.{}", m.code.len(), u / 250 % 250, u % 250),
            )
        })
        .collect();
    for day in first_day..=last_day {
        // A new market grows from a few users a day.
        let volume = if who == Who::NewMarket {
            (m.per_day * (day - first_day + 1) as usize / 3).min(m.per_day)
        } else if Some(day) == spike_day {
            m.per_day * 2
        } else {
            m.per_day
        };
        for _ in 0..volume {
            let u = rng.usize(..users.len());
            let (to, ip) = &users[u];
            let mut at = START + day * DAY + time_of_day(rng);
            for attempt in 1.. {
                let verifies = rng.f64() < m.verify;
                *next_id += 1;
                out.push(Request {
                    at,
                    who,
                    job: job(*next_id, to, &format!("{}-{u}", m.code), ip),
                    verifies_after: verifies.then(|| rng.u64(10..180)),
                });
                // Real users ask again at most twice.
                if verifies || attempt == 3 || rng.bool() {
                    break;
                }
                at += 60;
            }
        }
    }
}

/// `total` SMS over `hours` starting on `day`, each to a random number in one of three premium ranges
/// in countries with no real users, from a fresh user id and IP every time.
fn attack(rng: &mut fastrand::Rng, out: &mut Vec<Request>, next_id: &mut usize, total: usize, day: u64, hours: u64) {
    // With each one's length (with the `+`): one its calling code has (libphonenumber's metadata).
    let ranges = [("+8821654", 13), ("+2413271", 12), ("+3705583", 12)];
    let start = START + day * DAY + 9 * 3600;
    for i in 0..total {
        *next_id += 1;
        let (range, len) = ranges[rng.usize(..ranges.len())];
        let to = number(rng, range, len);
        let ip = format!("{}.{}.{}.{}", rng.u8(1..224), rng.u8(..), rng.u8(..), rng.u8(1..255));
        out.push(Request {
            at: start + (i as u64 * hours * 3600) / total as u64,
            who: Who::Attack,
            job: job(*next_id, &to, &format!("bot{i}"), &ip),
            verifies_after: None,
        });
    }
}

const MARKETS: [Market; 6] = [
    Market {
        code: "1",
        len: 12,
        users: 6000,
        per_day: 2000,
        verify: 0.93,
    },
    Market {
        code: "44",
        len: 13,
        users: 3000,
        per_day: 1000,
        verify: 0.9,
    },
    Market {
        code: "49",
        len: 14,
        users: 2500,
        per_day: 800,
        verify: 0.95,
    },
    Market {
        code: "33",
        len: 12,
        users: 1200,
        per_day: 400,
        verify: 0.88,
    },
    Market {
        code: "55",
        len: 14,
        users: 900,
        per_day: 300,
        verify: 0.85,
    },
    Market {
        code: "91",
        len: 13,
        users: 1500,
        per_day: 500,
        verify: 0.87,
    },
];

const NEW_MARKET: Market = Market {
    code: "254",
    len: 13,
    users: 600,
    per_day: 150,
    verify: 0.9,
};

/// Two weeks of history, then three test days: the new market launches on the first, the second is a
/// spike day, and the attack (if any) starts on the first.
fn traffic(attack_size: usize) -> Vec<Request> {
    let mut rng = fastrand::Rng::with_seed(20261126);
    let mut out = Vec::new();
    let mut id = 0;
    let last = HISTORY_DAYS + 2;
    for m in &MARKETS {
        real_traffic(
            &mut rng,
            &mut out,
            &mut id,
            m,
            Who::Real,
            0,
            last,
            Some(HISTORY_DAYS + 1),
        );
    }
    real_traffic(
        &mut rng,
        &mut out,
        &mut id,
        &NEW_MARKET,
        Who::NewMarket,
        HISTORY_DAYS,
        last,
        None,
    );
    if attack_size > 0 {
        // 300 in an hour, 1,500 over six hours, 36,000 over a day: ten a second at its worst.
        let hours = match attack_size {
            0..=300 => 1,
            301..=1500 => 6,
            _ => 24,
        };
        attack(&mut rng, &mut out, &mut id, attack_size, HISTORY_DAYS, hours);
    }
    out.sort_by_key(|r| r.at);
    out
}

#[derive(Debug, Default)]
struct Tally {
    attack: usize,
    attack_sent: usize,
    real_refused: usize,
    new_market: usize,
    new_market_sent: usize,
    /// Refused real requests during the test days only (for the message).
    refused_ids: Vec<String>,
    refused_by: std::collections::BTreeMap<String, usize>,
}

fn settings(mode: FraudMode) -> Settings {
    let mut config = Config::default();
    config.fraud.mode = mode;
    Settings::from_config(&config)
}

/// Runs one scenario through the fixed limits (`limits`) and the guard, as dispatch does: limits first,
/// then the guard; feedback arrives when users type their codes in.
fn simulate(traffic: &[Request], limits: &ThrottleConfig, mode: FraudMode) -> Tally {
    let now = Arc::new(AtomicU64::new(START));
    let clock_now = now.clone();
    let guard = Guard::local(
        settings(mode),
        Arc::new(move || clock_now.load(Ordering::Relaxed)),
        None,
    );
    let limiter_clock = FakeRelativeClock::default();
    let limits = Throttle::with_clock(limits, None, None, limiter_clock.clone());
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut verifications: BinaryHeap<Reverse<(u64, String)>> = BinaryHeap::new();
    let mut t = Tally::default();
    let mut last_sweep = START;
    for r in traffic {
        while let Some(Reverse((at, _))) = verifications.peek()
            && *at <= r.at
        {
            let Reverse((at, id)) = verifications.pop().unwrap();
            now.store(at, Ordering::Relaxed);
            runtime.block_on(guard.verified(&id)).unwrap();
        }
        let previous = now.swap(r.at, Ordering::Relaxed);
        limiter_clock.advance(Duration::from_secs(r.at.saturating_sub(previous)));
        if r.at - last_sweep >= 3600 {
            guard.sweep();
            last_sweep = r.at;
        }
        let verdict = if limits.check_local(&r.job) == throttle::LimitVerdict::Allow {
            runtime.block_on(guard.check(&r.job))
        } else {
            GuardVerdict::Refuse(herald::events::Scope::User)
        };
        let sent = verdict == GuardVerdict::Allow;
        if !sent && r.who != Who::Attack {
            *t.refused_by
                .entry(format!("{verdict:?} {:?}", r.who == Who::NewMarket))
                .or_default() += 1;
        }
        match r.who {
            Who::Attack => {
                t.attack += 1;
                t.attack_sent += usize::from(sent);
            }
            Who::Real | Who::NewMarket => {
                if !sent {
                    t.real_refused += 1;
                    if t.refused_ids.len() < 5 || r.who == Who::NewMarket {
                        t.refused_ids
                            .push(format!("{} at day {:.2}", r.job.id, (r.at - START) as f64 / DAY as f64));
                    }
                }
                if r.who == Who::NewMarket {
                    t.new_market += 1;
                    t.new_market_sent += usize::from(sent);
                }
                if sent && let Some(after) = r.verifies_after {
                    verifications.push(Reverse((r.at + after, r.job.id.clone())));
                }
            }
        }
    }
    t
}

fn report(name: &str, size: usize, t: &Tally) -> f64 {
    let blocked = if t.attack == 0 {
        100.0
    } else {
        100.0 * (t.attack - t.attack_sent) as f64 / t.attack as f64
    };
    println!(
        "| {name:<26} | {size:>6} | {:>5} | {blocked:>6.2}% | {:>4} | {}/{} |",
        t.attack_sent, t.real_refused, t.new_market_sent, t.new_market
    );
    blocked
}

#[test]
fn the_guard_blocks_pumping_of_every_size_and_refuses_no_real_user() {
    println!("| limits                     | attack |  sent | blocked | real refused | new market sent |");
    let mut failures = Vec::new();
    let runs: Vec<(usize, Vec<Request>)> = [0, 300, 1500, 36_000].into_iter().map(|n| (n, traffic(n))).collect();
    for (name, limits) in [
        ("guard alone (limits off)", ThrottleConfig::unlimited()),
        ("guard + default limits", ThrottleConfig::default()),
    ] {
        for (size, traffic) in &runs {
            let size = *size;
            let t = simulate(traffic, &limits, FraudMode::Enforce);
            let blocked = report(name, size, &t);
            if t.real_refused > 0 {
                failures.push(format!(
                    "{name}, attack {size}: real users refused: {:?} {:?}",
                    t.refused_ids, t.refused_by
                ));
            }
            if t.new_market_sent != t.new_market {
                failures.push(format!("{name}, attack {size}: the new market is not served"));
            }
            if blocked < 99.0 {
                failures.push(format!("{name}: only {blocked:.2}% of an attack of {size} blocked"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn monitor_mode_refuses_nothing() {
    let t = simulate(&traffic(1500), &ThrottleConfig::unlimited(), FraudMode::Monitor);
    assert_eq!((t.attack_sent, t.attack), (1500, 1500));
    assert_eq!(t.real_refused, 0);
}

/// The shared guard (Lua in Redis) and the local one (Rust) decide alike on the same history: random
/// sends and verifications to a few destinations over three simulated weeks, enforcing (and, at random,
/// as during a feedback outage: sparing ranges with verified history only); and they keep the outage
/// detector's inputs alike.
#[tokio::test]
async fn redis_and_local_guards_decide_alike() {
    let conn = herald::store::redis_connection("redis://127.0.0.1:6379")
        .expect("Redis must be running on 127.0.0.1:6379 for the integration tests");
    let namespace = format!("test.{}", uuid::Uuid::new_v4().simple());
    let shared = herald::fraud::Redis::new(conn, &namespace);
    let local = herald::fraud::Local::default();
    let s = settings(FraudMode::Enforce);
    let window = s.outage_window();
    let mut rng = fastrand::Rng::with_seed(7);
    let destinations = ["+88216540001", "+447700900123", "+447700900999", "+14155550123"];
    let mut sent: Vec<String> = Vec::new();
    let mut now = START;
    let (mut over, mut decisions, mut spared, mut early_sends) = (0, 0, 0, 0);
    for i in 0..3000 {
        // Bursts and gaps: up to two hours between steps, so hours and days roll over.
        now += if rng.u8(0..10) == 0 {
            rng.u64(0..7200)
        } else {
            rng.u64(0..120)
        };
        if rng.u8(0..3) == 0 && !sent.is_empty() {
            let id = sent[rng.usize(..sent.len())].clone();
            let a = local.verified(&id, now, window);
            let b = shared.verified(&id, now, window).await.expect("redis");
            assert_eq!(a, b, "feedback for {id} at step {i}");
            continue;
        }
        let to = destinations[rng.usize(..destinations.len())];
        let j = job(i, to, "u", &format!("198.51.100.{}", rng.u8(0..3)));
        let dest = herald::fraud::Destinations::of(&j, &s).unwrap();
        let refusals = if rng.bool() {
            Refusals::All
        } else {
            Refusals::UnlessRangeVerified
        };
        let a = local.check(&j.id, &dest, &s, now, refusals);
        let mut b = shared.check(&j.id, &dest, &s, now, refusals).await.expect("redis");
        let (fa, fb) = (a.feedback_state, b.feedback_state);
        assert!(
            (fa.verified - fb.verified).abs() <= 1e-9 * fa.verified.max(1.0),
            "decayed verified count at step {i}: {fa:?} / {fb:?}"
        );
        b.feedback_state.verified = fa.verified;
        assert_eq!(a, b, "check of {to} at step {i}");
        spared += usize::from(refusals == Refusals::UnlessRangeVerified && a.over.is_some() && a.counted);
        early_sends = early_sends.max(fa.early_sends);
        decisions += 1;
        over += usize::from(a.over.is_some());
        if a.counted {
            sent.push(j.id.clone());
        }
    }
    assert!(
        over > 100 && over < decisions - 100,
        "both kinds of decision were compared: {over} of {decisions}"
    );
    assert!(
        spared > 10,
        "jobs over budget spared as in an outage were compared: {spared}"
    );
    assert!(early_sends > 2, "early sends were counted: {early_sends}");
    assert_eq!(local.since(), shared.since());

    // An undelivered receipt settles a job as never verified: its feedback then counts nothing.
    let j = job(99_999, "+447700900123", "u", "198.51.100.1");
    let dest = herald::fraud::Destinations::of(&j, &s).unwrap();
    now += 3600;
    assert!(local.check(&j.id, &dest, &s, now, Refusals::None).counted);
    assert!(
        shared
            .check(&j.id, &dest, &s, now, Refusals::None)
            .await
            .unwrap()
            .counted
    );
    local.close(&j.id);
    shared.close(&j.id).await.unwrap();
    assert_eq!(local.verified(&j.id, now, window), herald::fraud::Feedback::Duplicate);
    assert_eq!(
        shared.verified(&j.id, now, window).await.unwrap(),
        herald::fraud::Feedback::Duplicate
    );
}
