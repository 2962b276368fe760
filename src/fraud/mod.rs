//! The adaptive toll-fraud guard (contract §12): each destination — its country, its number range and the
//! client IP — gets a budget of unverified codes earned by the codes that were verified there. Pumped
//! numbers never verify, so a pumping run spends a destination's small floor and stops, while a busy real
//! market, whose users type their codes in, earns room as it grows.
//!
//! Checked once per job after the fixed limits and before rendering; fed by `herald.feedback`
//! ([`crate::feedback`]). Counts are local, or shared by every replica in Redis (one script per job, like
//! the limits). Modes: `off`, `monitor` (decide and count, never block: the default), `enforce`.
//! Enforcing waits for a `learning_period` of feedback and falls back to monitoring while feedback has
//! stopped everywhere at once (the MFA server's publisher broke: that is not fraud).

pub mod budget;
mod local;
mod shared;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::events::Scope;
use crate::job::{Channel, Job, Recipient};
use crate::throttle::ip_key;
pub use budget::{Floors, Tally, Window};
pub use local::Local;
pub use shared::Shared;

/// `fraud.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Off,
    Monitor,
    Enforce,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Monitor => "monitor",
            Mode::Enforce => "enforce",
        }
    }
}

/// The guard's settings, parsed from `[fraud]` (and `throttle.prefix_digits`, `throttle.ipv6_prefix`,
/// which say what a number range and an IP are for the limits too).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub mode: Mode,
    /// E.164 prefixes (`+1415`) and calling codes the guard never refuses.
    pub allow_prefixes: Vec<String>,
    pub allow_countries: Vec<u16>,
    /// Unverified codes each verified one earns.
    pub ratio: f64,
    pub country: Floors,
    pub range: Floors,
    /// Per IP only a day is budgeted (Authgear's formula); its hourly floor is the day's.
    pub ip_day: u32,
    /// Enforcing starts this long after the first verified code was counted.
    pub learning_period: Duration,
    /// No feedback for this long, while codes went to destinations that used to verify: an outage.
    pub outage_after: Duration,
    pub prefix_digits: u8,
    pub ipv6_prefix: u8,
}

impl Settings {
    fn allowed(&self, job: &Job) -> bool {
        let Recipient::Phone(phone) = &job.to else { return true };
        self.allow_prefixes
            .iter()
            .any(|p| phone.expose().starts_with(p.as_str()))
            || phone.country_code().is_some_and(|c| self.allow_countries.contains(&c))
    }
}

/// A destination level, most specific first: the order a refusal names its scope in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    Range,
    Country,
    Ip,
}

impl Level {
    pub fn scope(self) -> Scope {
        match self {
            Level::Range => Scope::Prefix,
            Level::Country => Scope::Country,
            Level::Ip => Scope::Ip,
        }
    }

    fn tag(self) -> char {
        match self {
            Level::Range => 'r',
            Level::Country => 'c',
            Level::Ip => 'i',
        }
    }

    fn floors(self, s: &Settings) -> Floors {
        match self {
            Level::Range => s.range,
            Level::Country => s.country,
            Level::Ip => Floors {
                hour: s.ip_day,
                day: s.ip_day,
            },
        }
    }
}

/// What the guard keeps of one phone job it let through, to count its feedback against the same
/// destinations: the calling code in the clear (it is a label anyway), the range and IP as hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destinations {
    pub channel: Channel,
    /// The calling code, for labels.
    pub country: u16,
    /// The country level's key: the calling code, except that the North American Numbering Plan is one
    /// calling code for 25 countries (`+1 876` is Jamaica, a classic pumping target): there each area
    /// code is a country of its own, so a pump into the Caribbean cannot spend the budget US users earned.
    /// A calling code (1-3 digits) or `1` and an area code (4 digits): see [`country_of_region`].
    pub region: u16,
    pub range: String,
    pub ip: Option<String>,
}

impl Destinations {
    pub fn of(job: &Job, s: &Settings) -> Option<Destinations> {
        let Recipient::Phone(phone) = &job.to else { return None };
        let digits = phone.digits();
        let n = usize::from(s.prefix_digits).min(digits.len());
        let country = phone.country_code().unwrap_or(0);
        Some(Destinations {
            channel: job.channel,
            country,
            region: region(country, digits),
            range: hashed(&digits[..n]),
            ip: job.ip.map(|ip: IpAddr| hashed(&ip_key(ip, s.ipv6_prefix))),
        })
    }

    /// The tally id of each level this job counts in, most specific first: the range, the country, then
    /// the IP if any (the shared guard's script relies on this order).
    pub fn keys(&self) -> Vec<(Level, String)> {
        let mut out = vec![
            (Level::Range, self.range.clone()),
            (Level::Country, self.region.to_string()),
        ];
        if let Some(ip) = &self.ip {
            out.push((Level::Ip, ip.clone()));
        }
        out
    }
}

/// The country level's key of a number's `digits` with calling code `country` (see
/// [`Destinations::region`]).
fn region(country: u16, digits: &str) -> u16 {
    match digits.get(..4).and_then(|npa| npa.parse().ok()) {
        Some(npa) if country == 1 => npa,
        _ => country,
    }
}

/// The calling code of a [`region`]: calling codes have at most 3 digits, so a 4-digit region is `1` and
/// an area code (1000-1999).
pub fn country_of_region(region: u16) -> u16 {
    if region >= 1000 { 1 } else { region }
}

/// 96 bits of SHA-256, hex: a number range or an IP never sits in memory or Redis in the clear.
fn hashed(s: &str) -> String {
    // Hex by hand: a `format!` per byte was most of the guard's CPU per job (callgrind, #23).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(s.as_bytes());
    let mut out = String::with_capacity(24);
    for b in &digest[..12] {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// The guard's answer for one job.
/// Hands undelivered and failed receipts (contract §13) to the guard.
pub struct ReceiptsToGuard(pub Arc<Guard>);

impl crate::receipts::ReceiptSink for ReceiptsToGuard {
    fn final_receipt(&self, receipt: &crate::receipts::FinalReceipt) {
        if !receipt.unverified() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let guard = self.0.clone();
        let job_id = receipt.job_id.clone();
        runtime.spawn(async move {
            if let Err(e) = guard.undelivered(&job_id).await {
                tracing::warn!(error = %e, "fraud guard: undelivered receipt not recorded (redis unreachable)");
            }
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused (enforce mode): the level whose budget is spent.
    Refuse(Scope),
}

/// What the backend decided, before the mode is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The first level over budget, if any.
    pub over: Option<Level>,
    /// Whether the job was counted as sent (always, unless it was refused).
    pub counted: bool,
    /// Whether the job's number range has verified history (feeds the outage detector: real users'
    /// codes go there, a pump's do not).
    pub range_known: bool,
    /// Whether refusals were on for this job: `enforce` asked, and the learning period over.
    pub enforcing: bool,
    /// The deployment-wide outage inputs, when the backend shares them (Redis): when feedback last
    /// arrived (0 = never) and the counted sends to known ranges since.
    pub feedback_state: Option<(u64, u64)>,
}

/// A feedback message's effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feedback {
    /// First feedback for a job the guard counted: verified in its destinations now.
    Counted { channel: Channel, country: u16 },
    /// Its job was already verified.
    Duplicate,
    /// A job id the guard does not know: never sent, not a phone job, or older than a day.
    Unknown,
}

/// Seconds since the epoch.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

enum Backend {
    Local(Local),
    Shared(Shared),
}

/// The guard's counters for ops: decisions by mode and scope, feedback by result, and its state.
#[derive(Clone)]
pub struct GuardMetrics {
    pub suspected: prometheus::IntCounterVec,
    pub verified: prometheus::IntCounterVec,
    pub feedback: prometheus::IntCounterVec,
    pub outage: prometheus::IntGauge,
    pub enforcing: prometheus::IntGauge,
    pub errors: prometheus::IntCounter,
}

pub struct Guard {
    settings: Settings,
    backend: Backend,
    clock: Clock,
    metrics: Option<GuardMetrics>,
    /// When feedback last arrived, and how many codes went to destinations with a verified history since.
    last_feedback: AtomicU64,
    known_sends: AtomicU64,
    in_outage: AtomicBool,
}

/// Codes sent to destinations that used to verify, with no feedback at all, before it is an outage (and
/// not just a quiet few minutes).
const OUTAGE_MIN_SENDS: u64 = 20;

impl Guard {
    pub fn local(settings: Settings, clock: Clock, metrics: Option<GuardMetrics>) -> Guard {
        Guard::new(settings, Backend::Local(Local::default()), clock, metrics)
    }

    pub fn shared(settings: Settings, shared: Shared, metrics: Option<GuardMetrics>) -> Guard {
        Guard::new(settings, Backend::Shared(shared), system_clock(), metrics)
    }

    fn new(settings: Settings, backend: Backend, clock: Clock, metrics: Option<GuardMetrics>) -> Guard {
        let now = clock();
        Guard {
            settings,
            backend,
            clock,
            metrics,
            last_feedback: AtomicU64::new(now),
            known_sends: AtomicU64::new(0),
            in_outage: AtomicBool::new(false),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// One phone job, once: counts it as sent unless it is refused. Email, allow-listed destinations and
    /// mode `off` pass without a look.
    pub async fn check(&self, job: &Job) -> Verdict {
        if self.settings.mode == Mode::Off || self.settings.allowed(job) {
            return Verdict::Allow;
        }
        let Some(dest) = Destinations::of(job, &self.settings) else {
            return Verdict::Allow;
        };
        let now = (self.clock)();
        // Whether refusals may be on; the backend adds the learning period, whose clock it holds.
        let enforce = self.settings.mode == Mode::Enforce && !self.outage(now);
        let decision = match &self.backend {
            Backend::Local(local) => Ok(local.check(&job.id, &dest, &self.settings, now, enforce)),
            Backend::Shared(shared) => shared.check(&job.id, &dest, &self.settings, now, enforce).await,
        };
        let decision = match decision {
            Ok(d) => d,
            Err(e) => {
                // Redis down: the limits still stand; the guard lets the job through rather than stopping
                // every delivery, and says so.
                if let Some(m) = &self.metrics {
                    m.errors.inc();
                }
                tracing::warn!(error = %e, "fraud guard: redis unreachable, job allowed unchecked");
                return Verdict::Allow;
            }
        };
        match decision.feedback_state {
            Some((last_feedback, known_sends)) => {
                if last_feedback > 0 {
                    self.last_feedback.store(last_feedback, Ordering::Relaxed);
                }
                self.known_sends.store(known_sends, Ordering::Relaxed);
            }
            None if decision.counted && decision.range_known => {
                self.known_sends.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
        if let Some(m) = &self.metrics
            && self.settings.mode == Mode::Enforce
        {
            m.enforcing.set(i64::from(decision.enforcing));
        }
        let Some(level) = decision.over else {
            return Verdict::Allow;
        };
        if let Some(m) = &self.metrics {
            let mode = if decision.counted { Mode::Monitor } else { Mode::Enforce };
            m.suspected
                .with_label_values(&[job.channel.as_str(), level.scope().as_str(), mode.as_str()])
                .inc();
        }
        if decision.counted {
            Verdict::Allow
        } else {
            Verdict::Refuse(level.scope())
        }
    }

    /// Whether refusals are on: enforce mode, the learning period over (as this process last heard of it),
    /// and feedback flowing.
    fn enforcing(&self, now: u64) -> bool {
        if self.settings.mode != Mode::Enforce {
            return false;
        }
        let since = match &self.backend {
            Backend::Local(local) => local.since(),
            Backend::Shared(shared) => shared.since(),
        };
        since.is_some_and(|s| now.saturating_sub(s) >= self.settings.learning_period.as_secs()) && !self.outage(now)
    }

    /// Feedback stopped everywhere at once: nothing for `outage_after`, while codes kept going to number
    /// ranges whose users verify. Only sends that went out count, and only to ranges with verified history:
    /// a pump's codes, refused or not, go to ranges that never verified and cannot make an outage.
    fn outage(&self, now: u64) -> bool {
        let quiet = now.saturating_sub(self.last_feedback.load(Ordering::Relaxed));
        let outage = quiet >= self.settings.outage_after.as_secs()
            && self.known_sends.load(Ordering::Relaxed) >= OUTAGE_MIN_SENDS;
        if outage != self.in_outage.swap(outage, Ordering::Relaxed) {
            if outage {
                tracing::error!(
                    quiet_seconds = quiet,
                    "fraud guard: no verification feedback while codes keep going out; the MFA server's \
                     feedback publisher may be down. Monitoring only (nothing refused) until feedback returns"
                );
            } else {
                tracing::warn!("fraud guard: feedback is back");
            }
            if let Some(m) = &self.metrics {
                m.outage.set(i64::from(outage));
            }
        }
        outage
    }

    /// A code was verified (`herald.feedback`). Idempotent per job id.
    pub async fn verified(&self, job_id: &str) -> Result<Feedback, redis::RedisError> {
        let now = (self.clock)();
        self.last_feedback.store(now, Ordering::Relaxed);
        self.known_sends.store(0, Ordering::Relaxed);
        self.outage(now);
        let result = match &self.backend {
            Backend::Local(local) => local.verified(job_id, now),
            Backend::Shared(shared) => shared.verified(job_id, now).await?,
        };
        if let Some(m) = &self.metrics {
            let label = match &result {
                Feedback::Counted { channel, country } => {
                    m.verified
                        .with_label_values(&[channel.as_str(), &country.to_string()])
                        .inc();
                    "counted"
                }
                Feedback::Duplicate => "duplicate",
                Feedback::Unknown => "unknown",
            };
            m.feedback.with_label_values(&[label]).inc();
        }
        Ok(result)
    }

    /// A delivery receipt said the job's code never arrived (§13): it stays counted as unverified, as it
    /// already is, and feedback naming it later (a code verified that was never delivered) counts nothing.
    pub async fn undelivered(&self, job_id: &str) -> Result<(), redis::RedisError> {
        match &self.backend {
            Backend::Local(local) => {
                local.close(job_id);
                Ok(())
            }
            Backend::Shared(shared) => shared.close(job_id).await,
        }
    }

    /// What the guard knows of a destination, for operators (`GET /admin/api/guard`): for the number (or
    /// number prefix) `digits` — its country and its range — and the IP if given, the counts, the budget
    /// and whether one more unverified code fits now. `None` when `digits` has no calling code.
    pub async fn explain(&self, digits: &str, ip: Option<IpAddr>) -> Result<Option<Vec<Explained>>, redis::RedisError> {
        // Calling codes are 1-3 digits and prefix-free: padding a short prefix cannot change its code.
        let padded = format!("+{digits:0<8}");
        let Some(country) = crate::job::PhoneNumber::parse(&padded)
            .ok()
            .and_then(|p| p.country_code())
        else {
            return Ok(None);
        };
        let n = usize::from(self.settings.prefix_digits).min(digits.len());
        let region = region(country, digits);
        let mut levels = vec![
            (Level::Range, format!("+{}", &digits[..n]), hashed(&digits[..n])),
            (Level::Country, region.to_string(), region.to_string()),
        ];
        if let Some(ip) = ip {
            let key = ip_key(ip, self.settings.ipv6_prefix);
            levels.push((Level::Ip, key.clone(), hashed(&key)));
        }
        let now = (self.clock)();
        let mut out = Vec::with_capacity(levels.len());
        for (level, shown, key) in levels {
            let tally = match &self.backend {
                Backend::Local(local) => local.tally(level, &key),
                Backend::Shared(shared) => shared.tally(level, &key).await?,
            };
            let window = tally.window(now);
            let floors = level.floors(&self.settings);
            out.push(Explained {
                scope: level.scope(),
                destination: shown,
                window,
                budget: window.budget(floors, self.settings.ratio),
                allows: window.allows(floors, self.settings.ratio),
            });
        }
        Ok(Some(out))
    }

    /// Whether the guard refuses jobs right now (enforce mode, learning over, feedback flowing).
    pub fn is_enforcing(&self) -> bool {
        self.enforcing((self.clock)())
    }

    /// Drops what no window looks at any more (local counts only; Redis keys expire).
    pub fn sweep(&self) {
        if let Backend::Local(local) = &self.backend {
            local.sweep((self.clock)());
        }
    }

    /// Destinations and jobs held in memory (local counts only), for the memory bound.
    pub fn held(&self) -> (usize, usize) {
        match &self.backend {
            Backend::Local(local) => local.held(),
            Backend::Shared(_) => (0, 0),
        }
    }
}

/// One level of [`Guard::explain`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explained {
    pub scope: Scope,
    /// The calling code, the range as `+` and its digits, or the IP key.
    pub destination: String,
    #[serde(flatten)]
    pub window: Window,
    pub budget: budget::Budget,
    /// Whether one more unverified code fits now.
    pub allows: bool,
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_destination_hash_is_the_first_96_bits_of_its_sha256_in_lowercase_hex() {
        assert_eq!(super::hashed(""), "e3b0c44298fc1c149afbf4c8");
        assert_eq!(super::hashed("abc"), "ba7816bf8f01cfea414140de");
    }
}
