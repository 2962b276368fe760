//! SMS pumping simulation: an hour of legitimate traffic mixed with an attack that rotates user ids and
//! IPs and walks a few premium number ranges. Drives the throttle with a simulated clock, so the hour
//! takes a second and every run is the same.

use std::time::Duration;

use governor::clock::FakeRelativeClock;
use herald::config::ThrottleConfig;
use herald::job::Job;
use herald::throttle::{LimitVerdict, Throttle};

struct Request {
    at: u64,
    legit: bool,
    job: Job,
}

fn job(channel: &str, to: &str, user: &str, ip: &str) -> Job {
    let json =
        serde_json::json!({"id": "sim", "channel": channel, "to": to, "code": "123456", "user_id": user, "ip": ip});
    Job::from_json(json.to_string().as_bytes()).unwrap()
}

/// One hour: 2,000 real users asking for 1-3 codes each from ~300 shared IPs across eight countries,
/// and an attack of 10 requests a second (36,000) with a fresh user id and IP each time, to random
/// numbers in three premium ranges.
fn traffic() -> Vec<Request> {
    let mut rng = fastrand::Rng::with_seed(20261123);
    let mut requests = Vec::new();
    let countries = [
        ("1", 10),
        ("44", 10),
        ("49", 10),
        ("33", 9),
        ("55", 11),
        ("91", 10),
        ("81", 10),
        ("34", 9),
    ];
    for u in 0..2000 {
        let (cc, len) = countries[rng.usize(..countries.len())];
        let mut number = format!("+{cc}{}", rng.u8(2..=9));
        while number.len() < 1 + cc.len() + len {
            number.push(char::from(b'0' + rng.u8(0..10)));
        }
        let ip = format!("198.51.{}.{}", rng.u8(0..2), rng.u8(0..150));
        for _ in 0..rng.usize(1..=3) {
            let channel = if rng.u8(0..10) == 0 { "voice" } else { "sms" };
            requests.push(Request {
                at: rng.u64(0..3600),
                legit: true,
                job: job(channel, &number, &format!("auth0|user{u}"), &ip),
            });
        }
    }
    // With each one's length (with the `+`): one its calling code has (libphonenumber's metadata).
    let ranges = [("+2250700", 14), ("+8823456", 14), ("+3736012", 12)];
    for i in 0..36_000u64 {
        let (range, len) = ranges[rng.usize(..ranges.len())];
        let mut number = range.to_owned();
        while number.len() < len {
            number.push(char::from(b'0' + rng.u8(0..10)));
        }
        let ip = format!("{}.{}.{}.{}", rng.u8(1..224), rng.u8(..), rng.u8(..), rng.u8(1..255));
        requests.push(Request {
            at: i / 10,
            legit: false,
            job: job("sms", &number, &format!("auth0|bot{i}"), &ip),
        });
    }
    requests.sort_by_key(|r| r.at);
    requests
}

/// (legitimate refused, attack requests, attack sent)
fn simulate(config: &ThrottleConfig) -> (usize, usize, usize) {
    let clock = FakeRelativeClock::default();
    let throttle = Throttle::with_clock(config, None, None, clock.clone());
    let (mut legit_refused, mut attack, mut attack_sent) = (0, 0, 0);
    let mut now = 0;
    for r in traffic() {
        if r.at > now {
            clock.advance(Duration::from_secs(r.at - now));
            now = r.at;
        }
        let allowed = throttle.check_local(&r.job) == LimitVerdict::Allow;
        if r.legit {
            legit_refused += usize::from(!allowed);
        } else {
            attack += 1;
            attack_sent += usize::from(allowed);
        }
    }
    (legit_refused, attack, attack_sent)
}

#[test]
fn the_default_limits_stop_sms_pumping_and_let_real_users_through() {
    let (legit_refused, attack, sent) = simulate(&ThrottleConfig::default());
    let blocked = 100.0 * (attack - sent) as f64 / attack as f64;
    println!(
        "default limits: {sent} of {attack} attack SMS sent ({blocked:.2}% blocked); {legit_refused} real users refused"
    );
    assert_eq!(legit_refused, 0, "every real user gets their codes");
    assert!(blocked >= 99.0, "only {blocked:.2}% of the attack blocked");

    let with_deny = ThrottleConfig {
        countries_deny: ["225", "882", "373"]
            .map(|d| herald::destinations::Destination::parse(d).unwrap())
            .into(),
        ..ThrottleConfig::default()
    };
    let (legit_refused, attack, sent) = simulate(&with_deny);
    println!(
        "with countries_deny = [225, 882, 373]: {sent} of {attack} attack SMS sent; {legit_refused} real users refused"
    );
    assert_eq!(legit_refused, 0);
    assert_eq!(sent, 0);

    let no_prefix = ThrottleConfig {
        prefix: None,
        ..ThrottleConfig::default()
    };
    let (_, attack, sent) = simulate(&no_prefix);
    println!("without the prefix limit: {sent} of {attack} attack SMS sent");
    assert!(sent > attack / 2, "the prefix limit is what stops a rotating attack");
}
