//! Throttling and toll-fraud defence (docs/fraud-and-limits.md "Fixed limits"): GCRA limits per user, IP, recipient,
//! number range (prefix) and overall, plus country allow/deny lists. Checked once per job, before
//! anything is rendered or sent.
//!
//! Limits are local (GCRA in one map of 64-bit key hashes) or, with `[redis] url`, shared by every
//! replica through one atomic Lua script per job; both take all of a job's limits or none. When Redis
//! fails, the local limiters take over for a few seconds at a time: limits stay on, deliveries go on.
//!
//! What a passed check took can be given back ([`Throttle::refund`]): a job the fraud guard then refuses
//! counts against no limit (docs/fraud-and-limits.md "Adaptive guard"). governor provides the clocks (its fake clock
//! drives the simulations); its limiters cannot give a token back, hence the GCRA here, the same as the Lua script.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};

use crate::clock;
use crate::config::{Rate, ThrottleConfig};
use crate::destinations;
use crate::events::Scope;
use crate::job::{Channel, Country, Job, Recipient};
use crate::privacy;
use crate::sync::lock;

/// One configured limit. Each has its own limiter (its own quota) and a `scope` for events and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    UserPhone,
    UserVoice,
    UserEmail,
    Ip,
    Recipient,
    Prefix,
    GlobalPhone,
}

impl Limit {
    const ALL: [Limit; 7] = [
        Limit::UserPhone,
        Limit::UserVoice,
        Limit::UserEmail,
        Limit::Ip,
        Limit::Recipient,
        Limit::Prefix,
        Limit::GlobalPhone,
    ];

    pub fn scope(self) -> Scope {
        match self {
            Limit::UserPhone | Limit::UserVoice | Limit::UserEmail => Scope::User,
            Limit::Ip => Scope::Ip,
            Limit::Recipient => Scope::Recipient,
            Limit::Prefix => Scope::Prefix,
            Limit::GlobalPhone => Scope::Global,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Limit::UserPhone => "user_phone",
            Limit::UserVoice => "user_voice",
            Limit::UserEmail => "user_email",
            Limit::Ip => "ip",
            Limit::Recipient => "recipient",
            Limit::Prefix => "prefix",
            Limit::GlobalPhone => "global_phone",
        }
    }

    fn rate(self, config: &ThrottleConfig) -> Option<Rate> {
        match self {
            Limit::UserPhone => config.user_phone,
            Limit::UserVoice => config.user_voice,
            Limit::UserEmail => config.user_email,
            Limit::Ip => config.ip,
            Limit::Recipient => config.recipient,
            Limit::Prefix => config.prefix,
            Limit::GlobalPhone => config.global_phone,
        }
    }

    fn index(self) -> usize {
        Limit::ALL.iter().position(|l| *l == self).unwrap_or(0)
    }

    /// GCRA parameters: the emission interval and the burst tolerance (`burst - 1` intervals).
    fn gcra(self, config: &ThrottleConfig) -> Option<(Duration, Duration)> {
        self.rate(config).map(|rate| {
            let interval = (rate.period / rate.count).max(Duration::from_nanos(1));
            (interval, interval * rate.burst.saturating_sub(1))
        })
    }
}

/// The throttle's verdict on one job (its fixed limits and destination lists): allowed, over a limit, or
/// its destination blocked. Not the fraud guard's ([`crate::fraud::GuardVerdict`]), which comes after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitVerdict {
    Allow,
    /// Over a limit: the scope that refused.
    Throttled(Scope),
    /// The destination is not allowed: its calling code (or `unknown`) and why.
    Blocked {
        country: Country,
        refusal: destinations::Refusal,
    },
}

/// The checks one job needs, most specific first: a job refused by its user limit then uses no
/// capacity of the wider ones (locally each check takes its token when it passes).
fn checks(config: &ThrottleConfig, job: &Job) -> Vec<(Limit, String)> {
    let mut out = Vec::with_capacity(6);
    let user = &job.user_id;
    match job.channel {
        Channel::Sms | Channel::Whatsapp => out.push((Limit::UserPhone, user.clone())),
        Channel::Voice => {
            out.push((Limit::UserVoice, user.clone()));
            out.push((Limit::UserPhone, user.clone()));
        }
        Channel::Email => out.push((Limit::UserEmail, user.clone())),
    }
    if let Some(ip) = job.ip {
        out.push((Limit::Ip, ip_key(ip, config.ipv6_prefix)));
    }
    out.push((Limit::Recipient, job.to.expose().to_ascii_lowercase()));
    if let Recipient::Phone(phone) = &job.to {
        let digits = phone.digits();
        let n = usize::from(config.prefix_digits).min(digits.len());
        out.push((Limit::Prefix, digits[..n].to_owned()));
        out.push((Limit::GlobalPhone, String::new()));
    }
    out.retain(|(limit, _)| limit.rate(config).is_some());
    out
}

/// The per-IP limit's key, keyed the way one client can vary its address: an IPv4 address written as IPv6,
/// IPv4-mapped (`::ffff:198.51.100.9`) or the deprecated IPv4-compatible form (`::198.51.100.9`), is its IPv4
/// address, and an IPv6 address counts by its first `prefix` bits (a host is routinely given a whole /64 to
/// rotate through). IPv4 keys are the address as before.
pub fn ip_key(ip: IpAddr, prefix: u8) -> String {
    let v6 = match ip {
        IpAddr::V4(v4) => return v4.to_string(),
        // `::` and `::1` are IPv6's own unspecified and loopback addresses, not IPv4-compatible ones.
        IpAddr::V6(v6) => match v6.to_ipv4() {
            Some(v4) if !v6.is_unspecified() && !v6.is_loopback() => return v4.to_string(),
            _ => v6,
        },
    };
    // 1..=128 is checked at start-up; clamped anyway so that a shift never overflows.
    let prefix = u32::from(prefix.clamp(1, 128));
    let network = u128::from(v6) & (u128::MAX << (128 - prefix));
    format!("{}/{prefix}", Ipv6Addr::from(network))
}

/// In-process limiters: each key's theoretical arrival time (GCRA), in nanoseconds from the limiter's start.
/// One lock for all of a job's limits, so that a job takes all of them or none, as in Redis.
pub struct Local<C: Clock = DefaultClock> {
    clock: C,
    start: C::Instant,
    tats: Mutex<HashMap<u64, u64>>,
}

/// What one passed check took from each limit, to give back if the job is not sent after all: per key,
/// the emission interval and the theoretical arrival time the check set. A refund gives back only what is
/// left of that reservation (at most an interval, nothing once its time has passed), so that it can never
/// hand out a token another job took after the key went idle.
#[derive(Debug, Default)]
pub struct Taken {
    local: Vec<Reservation<u64>>,
    shared: Vec<Reservation<String>>,
}

#[derive(Debug)]
struct Reservation<K> {
    key: K,
    interval: u64,
    tat: u64,
}

/// What is left of a reservation at `now`: what a refund may give back.
fn unused(interval: u64, tat: u64, now: u64) -> u64 {
    interval.min(tat.saturating_sub(now))
}

impl Taken {
    pub fn is_empty(&self) -> bool {
        self.local.is_empty() && self.shared.is_empty()
    }
}

impl<C: Clock + Clone> Local<C> {
    pub fn new(clock: C) -> Local<C> {
        let start = clock.now();
        Local {
            clock,
            start,
            tats: Mutex::new(HashMap::new()),
        }
    }

    fn now(&self) -> u64 {
        u64::from(self.clock.now().duration_since(self.start))
    }

    fn tats(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        // A panic elsewhere while holding the lock leaves the map consistent (each update is one insert).
        lock(&self.tats)
    }

    fn check(&self, config: &ThrottleConfig, checks: &[(Limit, String)]) -> (LimitVerdict, Taken) {
        let now = self.now();
        let mut tats = self.tats();
        let mut next = Vec::with_capacity(checks.len());
        for (limit, key) in checks {
            let Some((interval, tolerance)) = limit.gcra(config) else {
                continue;
            };
            let (interval, tolerance) = (interval.as_nanos() as u64, tolerance.as_nanos() as u64);
            let k = privacy::local_key(limit.index(), key);
            let tat = tats.get(&k).copied().unwrap_or(now).max(now);
            if tat - now > tolerance {
                return (LimitVerdict::Throttled(limit.scope()), Taken::default());
            }
            next.push((k, tat + interval, interval));
        }
        for (k, tat, _) in &next {
            tats.insert(*k, *tat);
        }
        let local = next
            .into_iter()
            .map(|(key, tat, interval)| Reservation { key, interval, tat })
            .collect();
        (
            LimitVerdict::Allow,
            Taken {
                local,
                shared: Vec::new(),
            },
        )
    }

    fn refund(&self, taken: &[Reservation<u64>]) {
        let now = self.now();
        let mut tats = self.tats();
        for r in taken {
            if let Some(tat) = tats.get_mut(&r.key) {
                *tat = tat.saturating_sub(unused(r.interval, r.tat, now));
                if *tat <= now {
                    tats.remove(&r.key);
                }
            }
        }
    }

    /// Drops keys whose state is back to "never seen" (the memory bound under many distinct keys).
    pub fn sweep(&self) {
        let now = self.now();
        let mut tats = self.tats();
        tats.retain(|_, tat| *tat > now);
        tats.shrink_to_fit();
    }

    /// Keys held, all limits together.
    pub fn keys(&self) -> usize {
        self.tats().len()
    }
}

/// GCRA over all of a job's limits at once: either every limit has room and all are updated, or none
/// is. KEYS = limiter keys; ARGV = for each key, emission interval and burst tolerance in microseconds.
/// Returns `{i}`, the 1-based index of the refusing key, or (allowed) `{0, tat…}`: each key's new arrival
/// time, for a refund. Time comes from Redis, so replicas
/// with skewed clocks still agree.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  if tat - now > tolerance then return {i} end
  tats[i] = tat + interval
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], tats[i], 'PX', math.ceil((tats[i] - now) / 1000) + 1000)
end
table.insert(tats, 1, 0)
return tats
"#;

/// Gives back what [`GCRA`] took, as [`unused`] does locally. KEYS = limiter keys; ARGV = for each key, its
/// emission interval and the arrival time the check set, in microseconds.
const REFUND: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat then
    local left = tonumber(ARGV[2 * i]) - now
    if left < 0 then left = 0 end
    tat = tat - math.min(tonumber(ARGV[2 * i - 1]), left)
    if tat <= now then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], tat, 'PX', math.ceil((tat - now) / 1000) + 1000)
    end
  end
end
return 0
"#;

/// The limits in Redis, one set for every replica: all of a job's limits in one script call.
pub struct Redis {
    conn: redis::aio::ConnectionManager,
    script: redis::Script,
    refund: redis::Script,
    prefix: String,
}

impl Redis {
    pub fn new(conn: redis::aio::ConnectionManager, namespace: &str) -> Redis {
        Redis {
            conn,
            script: redis::Script::new(GCRA),
            refund: redis::Script::new(REFUND),
            prefix: format!("herald:{namespace}:throttle:"),
        }
    }

    async fn check(
        &self,
        config: &ThrottleConfig,
        checks: &[(Limit, String)],
    ) -> Result<(LimitVerdict, Taken), redis::RedisError> {
        let mut keys = Vec::with_capacity(checks.len());
        let mut invocation = self.script.prepare_invoke();
        for (limit, key) in checks {
            let Some((interval, tolerance)) = limit.gcra(config) else {
                continue;
            };
            let (interval, tolerance) = (interval.as_micros() as u64, tolerance.as_micros() as u64);
            let name = format!("{}{}:{}", self.prefix, limit.name(), privacy::hashed(key));
            invocation.key(&name);
            invocation.arg(interval).arg(tolerance);
            keys.push((name, interval));
        }
        if keys.is_empty() {
            return Ok((LimitVerdict::Allow, Taken::default()));
        }
        let answer: Vec<u64> = invocation.invoke_async(&mut self.conn.clone()).await?;
        Ok(match answer.split_first() {
            Some((0, tats)) => {
                let shared = keys
                    .into_iter()
                    .zip(tats)
                    .map(|((key, interval), &tat)| Reservation { key, interval, tat })
                    .collect();
                (
                    LimitVerdict::Allow,
                    Taken {
                        local: Vec::new(),
                        shared,
                    },
                )
            }
            Some((&i, _)) => (
                LimitVerdict::Throttled(checks.get(i as usize - 1).map_or(Scope::Global, |(l, _)| l.scope())),
                Taken::default(),
            ),
            None => (LimitVerdict::Allow, Taken::default()),
        })
    }

    async fn refund(&self, taken: &[Reservation<String>]) -> Result<(), redis::RedisError> {
        let mut invocation = self.refund.prepare_invoke();
        for r in taken {
            invocation.key(&r.key).arg(r.interval).arg(r.tat);
        }
        invocation.invoke_async::<()>(&mut self.conn.clone()).await
    }
}

pub struct Throttle<C: Clock = DefaultClock> {
    config: ThrottleConfig,
    local: Local<C>,
    shared: Option<Redis>,
    /// Unix ms until which Redis is skipped after a failure.
    shared_down_until: AtomicU64,
    fallbacks: Option<prometheus::IntCounter>,
}

/// How long herald uses its local limiters after Redis failed, before trying Redis again.
const FALLBACK_FOR: Duration = Duration::from_secs(5);

impl Throttle<DefaultClock> {
    pub fn new(config: &ThrottleConfig, shared: Option<Redis>, fallbacks: Option<prometheus::IntCounter>) -> Self {
        Throttle::with_clock(config, shared, fallbacks, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Throttle<C> {
    pub fn with_clock(
        config: &ThrottleConfig,
        shared: Option<Redis>,
        fallbacks: Option<prometheus::IntCounter>,
        clock: C,
    ) -> Self {
        Throttle {
            config: config.clone(),
            local: Local::new(clock),
            shared,
            shared_down_until: AtomicU64::new(0),
            fallbacks,
        }
    }

    pub fn local(&self) -> &Local<C> {
        &self.local
    }

    /// The destination policy: allow/deny lists of calling codes, prefixes and regions, the most specific
    /// entry naming the number deciding (deny wins a tie). The verdict names the calling code (a label).
    fn destination(&self, job: &Job) -> Option<LimitVerdict> {
        let Recipient::Phone(phone) = &job.to else { return None };
        let refusal = destinations::refusal(&self.config.countries_allow, &self.config.countries_deny, phone)?;
        Some(LimitVerdict::Blocked {
            country: job.to.country(),
            refusal,
        })
    }

    /// One job's limits, taken if all have room. `Taken` is what to give back should the job not be sent
    /// after all (empty unless allowed).
    pub async fn check(&self, job: &Job) -> (LimitVerdict, Taken) {
        if let Some(blocked) = self.destination(job) {
            return (blocked, Taken::default());
        }
        let checks = checks(&self.config, job);
        if let Some(shared) = &self.shared
            && clock::unix_millis() >= self.shared_down_until.load(Ordering::Relaxed)
        {
            match shared.check(&self.config, &checks).await {
                Ok(checked) => return checked,
                Err(e) => self.redis_failed(&e),
            }
        }
        if self.shared.is_some()
            && let Some(counter) = &self.fallbacks
        {
            counter.inc();
        }
        self.local.check(&self.config, &checks)
    }

    /// Gives back what a check took: the job was refused by a later check (the fraud guard) and was not
    /// sent, so it counts against no limit. Best effort: with Redis unreachable, the tokens stay spent.
    pub async fn refund(&self, taken: Taken) {
        self.local.refund(&taken.local);
        if let Some(shared) = &self.shared
            && !taken.shared.is_empty()
            && let Err(e) = shared.refund(&taken.shared).await
        {
            self.redis_failed(&e);
        }
    }

    fn redis_failed(&self, e: &redis::RedisError) {
        let until = clock::unix_millis() + FALLBACK_FOR.as_millis() as u64;
        let previous = self.shared_down_until.swap(until, Ordering::Relaxed);
        if previous < clock::unix_millis().saturating_sub(60_000) {
            tracing::warn!(error = %e, "redis unreachable: throttling with local limiters (per replica) until it is back");
        }
    }

    /// A synchronous check against the local limiters only (simulations and benchmarks).
    pub fn check_local(&self, job: &Job) -> LimitVerdict {
        self.destination(job)
            .unwrap_or_else(|| self.local.check(&self.config, &checks(&self.config, job)).0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn job(channel: &str, to: &str, user: &str, ip: &str) -> Job {
        let json =
            serde_json::json!({"id": "j", "channel": channel, "to": to, "code": "123456", "user_id": user, "ip": ip});
        Job::from_json(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn user_phone_limit_is_ten_an_hour() {
        let clock = FakeRelativeClock::default();
        let t = Throttle::with_clock(&ThrottleConfig::default(), None, None, clock.clone());
        for i in 0..10 {
            let j = job("sms", &format!("+1415555{:04}", i), "u1", "203.0.113.7");
            assert_eq!(t.check_local(&j), LimitVerdict::Allow, "sms {i}");
        }
        let j = job("sms", "+14155559999", "u1", "203.0.113.7");
        assert_eq!(t.check_local(&j), LimitVerdict::Throttled(Scope::User));
        clock.advance(Duration::from_secs(360));
        assert_eq!(
            t.check_local(&j),
            LimitVerdict::Allow,
            "one more after a tenth of the hour"
        );
    }

    #[test]
    fn voice_gets_a_burst_of_ten_then_one_an_hour() {
        let config = ThrottleConfig {
            user_phone: None,
            recipient: None,
            ..ThrottleConfig::default()
        };
        let clock = FakeRelativeClock::default();
        let t = Throttle::with_clock(&config, None, None, clock.clone());
        let j = job("voice", "+14155550123", "u1", "203.0.113.7");
        for _ in 0..10 {
            assert_eq!(t.check_local(&j), LimitVerdict::Allow);
        }
        assert_eq!(t.check_local(&j), LimitVerdict::Throttled(Scope::User));
        clock.advance(Duration::from_secs(30 * 60));
        assert_eq!(t.check_local(&j), LimitVerdict::Throttled(Scope::User));
        clock.advance(Duration::from_secs(30 * 60));
        assert_eq!(t.check_local(&j), LimitVerdict::Allow);
    }

    #[test]
    fn prefix_and_recipient_limits() {
        let t = Throttle::with_clock(&ThrottleConfig::default(), None, None, FakeRelativeClock::default());
        // Different users and IPs, one number: the recipient limit.
        for i in 0..10 {
            assert_eq!(
                t.check_local(&job(
                    "sms",
                    "+14155550123",
                    &format!("u{i}"),
                    &format!("198.51.100.{i}")
                )),
                LimitVerdict::Allow
            );
        }
        assert_eq!(
            t.check_local(&job("sms", "+14155550123", "u99", "198.51.100.99")),
            LimitVerdict::Throttled(Scope::Recipient)
        );
        // Different users, IPs and numbers in one range: the prefix limit (30/h on 7 digits).
        let mut allowed = 0;
        for i in 0..100 {
            let j = job(
                "sms",
                &format!("+2250700{i:06}"),
                &format!("a{i}"),
                &format!("192.0.2.{i}"),
            );
            if t.check_local(&j) == LimitVerdict::Allow {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 30);
    }

    #[test]
    fn ip_keys_normalize_mapped_addresses_and_group_ipv6_by_prefix() {
        let key = |ip: &str, prefix| ip_key(ip.parse().unwrap(), prefix);
        assert_eq!(key("198.51.100.9", 64), "198.51.100.9");
        assert_eq!(key("::ffff:198.51.100.9", 64), "198.51.100.9");
        assert_eq!(key("::198.51.100.9", 64), "198.51.100.9", "IPv4-compatible");
        assert_eq!(key("::c633:6409", 64), "198.51.100.9", "the same, in hex");
        assert_eq!(key("0:0:0:0:0:ffff:c633:6409", 128), "198.51.100.9");
        assert_eq!(key("::1", 64), "::/64", "loopback is IPv6's own");
        assert_eq!(key("::", 64), "::/64", "so is the unspecified address");
        assert_eq!(key("::1:c633:6409", 64), "::/64", "neither mapped nor compatible");
        assert_eq!(key("2001:db8:1:2::1", 64), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:ffff:eeee:dddd:cccc", 64), "2001:db8:1:2::/64");
        assert_ne!(key("2001:db8:1:3::1", 64), key("2001:db8:1:2::1", 64));
        assert_eq!(key("2001:db8:1:2::1", 48), "2001:db8:1::/48");
        assert_eq!(key("2001:db8::1", 128), "2001:db8::1/128");
        assert_eq!(key("2001:db8::1", 1), "::/1");
        assert_eq!(key("2001:db8::1", 0), "::/1", "never a 128-bit shift");
    }

    #[test]
    fn one_ipv6_64_and_a_mapped_ipv4_share_the_ip_budget() {
        let config = ThrottleConfig {
            ip: Some("2/h".parse().unwrap()),
            ..no_limits()
        };
        let t = Throttle::with_clock(&config, None, None, FakeRelativeClock::default());
        let sms = |n: u32, ip: &str| job("sms", &format!("+1415555{n:04}"), &format!("u{n}"), ip);
        assert_eq!(t.check_local(&sms(1, "2001:db8:1:2::1")), LimitVerdict::Allow);
        assert_eq!(t.check_local(&sms(2, "2001:db8:1:2::2")), LimitVerdict::Allow);
        assert_eq!(
            t.check_local(&sms(3, "2001:db8:1:2:abcd::3")),
            LimitVerdict::Throttled(Scope::Ip),
            "a third address of the same /64"
        );
        assert_eq!(
            t.check_local(&sms(4, "2001:db8:1:3::1")),
            LimitVerdict::Allow,
            "the next /64"
        );
        assert_eq!(t.check_local(&sms(5, "198.51.100.9")), LimitVerdict::Allow);
        assert_eq!(t.check_local(&sms(6, "::ffff:198.51.100.9")), LimitVerdict::Allow);
        assert_eq!(
            t.check_local(&sms(7, "198.51.100.9")),
            LimitVerdict::Throttled(Scope::Ip),
            "v4-mapped is the same address"
        );
        assert_eq!(t.check_local(&sms(8, "203.0.113.7")), LimitVerdict::Allow);
        assert_eq!(
            t.check_local(&sms(9, "::203.0.113.7")),
            LimitVerdict::Allow,
            "the second of 2 from 203.0.113.7"
        );
        assert_eq!(
            t.check_local(&sms(10, "::ffff:203.0.113.7")),
            LimitVerdict::Throttled(Scope::Ip),
            "v4-compatible is the same address"
        );
    }

    fn no_limits() -> ThrottleConfig {
        ThrottleConfig::unlimited()
    }

    use crate::destinations::Refusal;

    fn blocked(country: &str, refusal: Refusal) -> LimitVerdict {
        LimitVerdict::Blocked {
            country: Country::parse(country).unwrap(),
            refusal,
        }
    }

    fn destinations(keys: &[&str]) -> Vec<crate::destinations::Destination> {
        keys.iter()
            .map(|k| crate::destinations::Destination::parse(k).unwrap())
            .collect()
    }

    #[test]
    fn countries_allow_and_deny() {
        let config = ThrottleConfig {
            countries_deny: destinations(&["225"]),
            ..ThrottleConfig::default()
        };
        let t = Throttle::with_clock(&config, None, None, FakeRelativeClock::default());
        assert_eq!(
            t.check_local(&job("sms", "+2250700000000", "u", "192.0.2.1")),
            blocked("225", Refusal::Denied(destinations(&["225"]).remove(0)))
        );
        assert_eq!(
            t.check_local(&job("sms", "+14155550123", "u", "192.0.2.1")),
            LimitVerdict::Allow
        );
        let config = ThrottleConfig {
            countries_allow: destinations(&["1", "44"]),
            ..ThrottleConfig::default()
        };
        let t = Throttle::with_clock(&config, None, None, FakeRelativeClock::default());
        assert_eq!(
            t.check_local(&job("sms", "+33612345678", "u", "192.0.2.1")),
            blocked("33", Refusal::NotAllowed)
        );
        assert_eq!(
            t.check_local(&job("sms", "+447700900123", "u", "192.0.2.1")),
            LimitVerdict::Allow
        );
        let email = job("email", "a@b.co", "u", "192.0.2.1");
        assert_eq!(t.check_local(&email), LimitVerdict::Allow, "lists apply to phones only");
    }

    /// Calling codes, prefixes and regions (docs/providers/README.md): the most specific entry naming the number
    /// decides, deny winning a tie, and the verdict names the calling code (the `country` label).
    #[test]
    fn allow_and_deny_take_calling_codes_prefixes_and_regions() {
        let us = "+12125550123";
        let jm = "+18765550123";
        let kz = "+77012345678";
        let ru = "+74951234567";
        let gg = "+441481256789";
        let gb = "+442071234567";
        // (allow, deny, [(number, the calling code it is blocked under, if it is)]).
        type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [(&'a str, Option<&'a str>)]);
        let cases: &[Case] = &[
            // A region carved out of its calling code, both ways.
            (&["1"], &["JM"], &[(us, None), (jm, Some("1"))]),
            (&["JM"], &["1"], &[(us, Some("1")), (jm, None)]),
            // A prefix is more specific than a region.
            (&["1876"], &["JM"], &[(jm, None), (us, Some("1"))]),
            (&["JM"], &["1876"], &[(jm, Some("1"))]),
            (&[], &["KZ"], &[(kz, Some("7")), (ru, None)]),
            (&["RU"], &[], &[(ru, None), (kz, Some("7"))]),
            (&[], &["GG"], &[(gg, Some("44")), (gb, None)]),
            (&["44"], &["441481"], &[(gg, Some("44")), (gb, None)]),
            // Ties: deny wins.
            (&["JM"], &["JM"], &[(jm, Some("1"))]),
            (&["1876"], &["1876"], &[(jm, Some("1"))]),
            // The longer prefix wins.
            (&["18765"], &["1876"], &[(jm, None), ("+18764550123", Some("1"))]),
        ];
        for (allow, deny, numbers) in cases {
            let config = ThrottleConfig {
                countries_allow: destinations(allow),
                countries_deny: destinations(deny),
                ..ThrottleConfig::default()
            };
            let t = Throttle::with_clock(&config, None, None, FakeRelativeClock::default());
            for (to, blocked) in *numbers {
                let got = match t.check_local(&job("sms", to, "u", "192.0.2.1")) {
                    LimitVerdict::Blocked { country, .. } => Some(country.to_string()),
                    _ => None,
                };
                assert_eq!(got.as_deref(), *blocked, "allow {allow:?} deny {deny:?}: {to}");
            }
        }
    }

    #[test]
    fn a_job_refused_by_one_limit_takes_nothing_from_the_others() {
        let config = ThrottleConfig {
            user_phone: Some("5/h".parse().unwrap()),
            recipient: Some("1/h".parse().unwrap()),
            ..no_limits()
        };
        let t = Throttle::with_clock(&config, None, None, FakeRelativeClock::default());
        let to = |n: u32| job("sms", &format!("+1415555{n:04}"), "u1", "192.0.2.1");
        assert_eq!(t.check_local(&to(1)), LimitVerdict::Allow);
        for _ in 0..10 {
            assert_eq!(t.check_local(&to(1)), LimitVerdict::Throttled(Scope::Recipient));
        }
        for n in 2..6 {
            assert_eq!(t.check_local(&to(n)), LimitVerdict::Allow, "the user's {n}th SMS");
        }
        assert_eq!(t.check_local(&to(6)), LimitVerdict::Throttled(Scope::User));
    }

    #[tokio::test]
    async fn a_refund_gives_back_what_a_check_took() {
        let config = ThrottleConfig {
            user_phone: Some("2/h".parse().unwrap()),
            ..no_limits()
        };
        let clock = FakeRelativeClock::default();
        let t = Throttle::with_clock(&config, None, None, clock.clone());
        let j = job("sms", "+14155550123", "u1", "192.0.2.1");
        let (first, taken) = t.check(&j).await;
        assert_eq!(first, LimitVerdict::Allow);
        assert!(!taken.is_empty());
        t.refund(taken).await;
        assert_eq!(t.local().keys(), 0, "back to never seen");
        assert_eq!(t.check(&j).await.0, LimitVerdict::Allow);
        let (_, second) = t.check(&j).await;
        assert_eq!(t.check(&j).await.0, LimitVerdict::Throttled(Scope::User));
        t.refund(second).await;
        assert_eq!(t.check(&j).await.0, LimitVerdict::Allow, "one token back");
        let (refused, nothing) = t.check(&j).await;
        assert_eq!(refused, LimitVerdict::Throttled(Scope::User));
        assert!(nothing.is_empty(), "a refused check takes nothing");
        t.refund(nothing).await;
        assert_eq!(t.check(&j).await.0, LimitVerdict::Throttled(Scope::User));
    }

    #[tokio::test]
    async fn a_late_refund_never_gives_back_a_token_another_job_took() {
        let config = ThrottleConfig {
            global_phone: Some("10/s burst 1".parse().unwrap()),
            ..no_limits()
        };
        let clock = FakeRelativeClock::default();
        let t = Throttle::with_clock(&config, None, None, clock.clone());
        let sms = |n: u32| job("sms", &format!("+1415555{n:04}"), &format!("u{n}"), "192.0.2.1");
        let (a, taken) = t.check(&sms(1)).await;
        assert_eq!(a, LimitVerdict::Allow);
        // A's token runs out while the guard looks at it; B takes the key afresh.
        clock.advance(Duration::from_millis(150));
        assert_eq!(t.check(&sms(2)).await.0, LimitVerdict::Allow);
        assert_eq!(t.check(&sms(3)).await.0, LimitVerdict::Throttled(Scope::Global));
        t.refund(taken).await;
        assert_eq!(
            t.check(&sms(3)).await.0,
            LimitVerdict::Throttled(Scope::Global),
            "A's refund gave back B's token"
        );
    }

    #[test]
    fn sweeping_forgets_idle_keys() {
        let clock = FakeRelativeClock::default();
        let t = Throttle::with_clock(&ThrottleConfig::default(), None, None, clock.clone());
        for i in 0..1000 {
            let ip = format!("10.0.{}.{}", i / 256, i % 256);
            t.check_local(&job("email", &format!("u{i}@example.com"), &format!("u{i}"), &ip));
        }
        assert_eq!(t.local().keys(), 3000, "user, ip and recipient keys");
        clock.advance(Duration::from_secs(2 * 3600));
        t.local().sweep();
        assert_eq!(t.local().keys(), 0);
    }
}
