//! The adaptive toll-fraud guard (docs/fraud-and-limits.md "Adaptive guard"): each destination — its country, its
//! number range and the client IP — gets a budget of unverified codes earned by the codes that were verified there.
//! Pumped numbers never verify, so a pumping run spends a destination's small floor and stops, while a busy real
//! market, whose users type their codes in, earns room as it grows.
//!
//! Checked once per job after the fixed limits and before rendering; fed by `herald.feedback`
//! ([`crate::feedback`]). Counts are local, or shared by every replica in Redis (one script per job, like
//! the limits). Modes: `off`, `monitor` (decide and count, never block: the default), `enforce`.
//! Enforcing waits for a `learning_period` of feedback (started by feedback only). While busy feedback has
//! stopped everywhere at once (the MFA server's publisher broke: that is not fraud; [`outage`] says how it
//! is told from a quiet spell or a pump), jobs to number ranges with verified history are not refused;
//! every other destination stays guarded.

pub mod budget;
mod local;
pub mod outage;
mod shared;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::clock;
use crate::config::{Config, FraudMode};
use crate::events::Scope;
use crate::job::{Channel, Job, Recipient};
// A number range or an IP never sits in memory or Redis in the clear.
use crate::privacy::hashed;
use crate::sync::lock;
use crate::throttle::ip_key;
pub use budget::{Floors, Tally, Window};
pub use local::Local;
pub use outage::FeedbackState;
pub use shared::Redis;

/// The guard's settings, parsed from `[fraud]` (and `throttle.prefix_digits`, `throttle.ipv6_prefix`,
/// which say what a number range and an IP are for the limits too).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub mode: FraudMode,
    /// E.164 prefixes (`+1415`) and destinations (calling codes, prefixes, regions) the guard never refuses.
    pub allow_prefixes: Vec<String>,
    pub allow_countries: Vec<crate::destinations::Destination>,
    /// Unverified codes each verified one earns.
    pub ratio: f64,
    pub country: Floors,
    pub range: Floors,
    /// Per IP only a day is budgeted (Authgear's formula); its hourly floor is the day's.
    pub ip_day: u32,
    /// Enforcing starts this long after the first verified code was counted.
    pub learning_period: Duration,
    /// The feedback-outage fallback ([`outage`]): busy feedback silent this long is an outage. `None`
    /// (`outage_after` under a second): off.
    pub outage_after: Option<Duration>,
    pub prefix_digits: u8,
    pub ipv6_prefix: u8,
}

impl Settings {
    /// The guard's settings: `[fraud]`, with `[throttle]`'s idea of a number range and an IP.
    pub fn from_config(config: &Config) -> Settings {
        let f = &config.fraud;
        Settings {
            mode: f.mode,
            allow_prefixes: f.allow_prefixes.clone(),
            allow_countries: f.allow_countries.clone(),
            ratio: f.ratio,
            country: Floors {
                hour: f.country_hourly_floor,
                day: f.country_daily_floor,
            },
            range: Floors {
                hour: f.range_hourly_floor,
                day: f.range_daily_floor,
            },
            ip_day: f.ip_daily_floor,
            learning_period: f.learning_period.0,
            // Under a second turns the fallback off (docs/fraud-and-limits.md "Adaptive guard").
            outage_after: Some(f.outage_after.0).filter(|d| d.as_secs() > 0),
            prefix_digits: config.throttle.prefix_digits,
            ipv6_prefix: config.throttle.ipv6_prefix,
        }
    }

    /// `outage_after` in whole seconds; 0 = the fallback is off.
    pub fn outage_window(&self) -> u64 {
        self.outage_after.map_or(0, |d| d.as_secs())
    }

    fn allowed(&self, job: &Job) -> bool {
        let Recipient::Phone(phone) = &job.to else { return true };
        self.allow_prefixes
            .iter()
            .any(|p| phone.expose().starts_with(p.as_str()))
            || crate::destinations::names(&self.allow_countries, phone)
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

/// The guard's answer for one job.
/// Hands undelivered and failed receipts (docs/receipts.md) to the guard.
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

/// The fraud guard's verdict on one job, its mode applied: allowed, or refused for a spent budget. Not the
/// throttle's ([`crate::throttle::LimitVerdict`]); made from the backend's [`Assessment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardVerdict {
    Allow,
    /// Refused (enforce mode): the level whose budget is spent.
    Refuse(Scope),
}

/// What the backend assessed of one job, before the mode is applied: the guard turns it into a
/// [`GuardVerdict`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assessment {
    /// The first level over budget, if any.
    pub over: Option<Level>,
    /// Whether the job was counted as sent (always, unless it was refused).
    pub counted: bool,
    /// Whether the job's number range has verified history: what a feedback outage may relax.
    pub range_known: bool,
    /// Whether refusals were on for this job: `enforce` asked, and the learning period over.
    pub enforcing: bool,
    /// The outage detector's inputs after this job (deployment-wide with Redis).
    pub feedback_state: FeedbackState,
}

/// Which jobs over budget a check may refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusals {
    /// `off`/`monitor`: none (decide and count only).
    None,
    /// `enforce`, once the learning period is over: every one.
    All,
    /// `enforce` during a feedback outage: all but those to a number range with verified history, whose
    /// real users' codes are no longer seen verified. A range (or country) that never verified is judged
    /// exactly as without the outage: an outage can never lift the guard from a pump's destinations.
    UnlessRangeVerified,
}

impl Refusals {
    /// Whether a job over budget is refused, given whether its range has verified history (refusals
    /// being on at all: learning over).
    pub fn refuse(self, range_known: bool) -> bool {
        match self {
            Refusals::None => false,
            Refusals::All => true,
            Refusals::UnlessRangeVerified => !range_known,
        }
    }
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
    Arc::new(clock::unix_secs)
}

/// Where the tallies live: this process, or Redis for every replica ([`Redis`]).
enum Backend {
    Local(Local),
    Redis(Redis),
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
    /// The outage detector's inputs as the shared backend last returned them (the local backend holds
    /// its own).
    feedback: Mutex<FeedbackState>,
    in_outage: AtomicBool,
}

impl Guard {
    pub fn local(settings: Settings, clock: Clock, metrics: Option<GuardMetrics>) -> Guard {
        Guard::new(settings, Backend::Local(Local::default()), clock, metrics)
    }

    pub fn redis(settings: Settings, redis: Redis, metrics: Option<GuardMetrics>) -> Guard {
        Guard::new(settings, Backend::Redis(redis), system_clock(), metrics)
    }

    fn new(settings: Settings, backend: Backend, clock: Clock, metrics: Option<GuardMetrics>) -> Guard {
        Guard {
            settings,
            backend,
            clock,
            metrics,
            feedback: Mutex::new(FeedbackState::default()),
            in_outage: AtomicBool::new(false),
        }
    }

    /// The start-up log line: what the guard does and every default that delays or weakens it, with
    /// what triggers it (docs/operations.md "The adaptive guard at start-up, and feedback outages").
    pub fn log_start_up(&self) {
        let s = &self.settings;
        let learning = humantime::format_duration(s.learning_period).to_string();
        let outage_after = s
            .outage_after
            .map_or_else(|| "off".to_string(), |d| humantime::format_duration(d).to_string());
        tracing::info!(
            mode = s.mode.as_str(),
            learning_period = %learning,
            outage_after = %outage_after,
            "{}",
            start_up_line(s)
        );
    }

    fn feedback_state(&self) -> FeedbackState {
        match &self.backend {
            Backend::Local(local) => local.feedback_state(),
            Backend::Redis(_) => *lock(&self.feedback),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// One phone job, once: counts it as sent unless it is refused. Email, allow-listed destinations and
    /// mode `off` pass without a look.
    pub async fn check(&self, job: &Job) -> GuardVerdict {
        if self.settings.mode == FraudMode::Off || self.settings.allowed(job) {
            return GuardVerdict::Allow;
        }
        let Some(dest) = Destinations::of(job, &self.settings) else {
            return GuardVerdict::Allow;
        };
        let now = (self.clock)();
        // Which refusals may be on; the backend adds the learning period, whose clock it holds.
        let refusals = match (self.settings.mode, self.outage(now)) {
            (FraudMode::Enforce, false) => Refusals::All,
            (FraudMode::Enforce, true) => Refusals::UnlessRangeVerified,
            _ => Refusals::None,
        };
        let assessment = match &self.backend {
            Backend::Local(local) => Ok(local.check(&job.id, &dest, &self.settings, now, refusals)),
            Backend::Redis(shared) => shared.check(&job.id, &dest, &self.settings, now, refusals).await,
        };
        let assessment = match assessment {
            Ok(d) => d,
            Err(e) => {
                // Redis down: the limits still stand; the guard lets the job through rather than stopping
                // every delivery, and says so.
                if let Some(m) = &self.metrics {
                    m.errors.inc();
                }
                tracing::warn!(error = %e, "fraud guard: redis unreachable, job allowed unchecked");
                return GuardVerdict::Allow;
            }
        };
        if let Backend::Redis(_) = &self.backend {
            *lock(&self.feedback) = assessment.feedback_state;
        }
        if let Some(m) = &self.metrics
            && self.settings.mode == FraudMode::Enforce
        {
            m.enforcing.set(i64::from(assessment.enforcing));
        }
        let Some(level) = assessment.over else {
            return GuardVerdict::Allow;
        };
        if let Some(m) = &self.metrics {
            let mode = if assessment.counted {
                FraudMode::Monitor
            } else {
                FraudMode::Enforce
            };
            m.suspected
                .with_label_values(&[job.channel.as_str(), level.scope().as_str(), mode.as_str()])
                .inc();
        }
        if assessment.counted {
            GuardVerdict::Allow
        } else {
            GuardVerdict::Refuse(level.scope())
        }
    }

    /// Whether refusals are on: enforce mode and the learning period over (as this process last heard of
    /// it). A feedback outage does not turn them off: it only spares ranges with verified history.
    fn enforcing(&self, now: u64) -> bool {
        if self.settings.mode != FraudMode::Enforce {
            return false;
        }
        let since = match &self.backend {
            Backend::Local(local) => local.since(),
            Backend::Redis(shared) => shared.since(),
        };
        since.is_some_and(|s| now.saturating_sub(s) >= self.settings.learning_period.as_secs())
    }

    /// Busy feedback stopped everywhere at once while the traffic that verified went on ([`outage`]):
    /// decided on the feedback stream, which job publishers cannot write, never on sends alone.
    fn outage(&self, now: u64) -> bool {
        let state = self.feedback_state();
        let outage = state.outage(now, self.settings.outage_window());
        if outage != self.in_outage.swap(outage, Ordering::Relaxed) {
            if outage {
                tracing::error!(
                    quiet_seconds = now.saturating_sub(state.last_feedback),
                    "fraud guard: verification feedback stopped while codes keep going to ranges that verify; \
                     the MFA server's feedback publisher may be down. Until feedback returns, jobs to number \
                     ranges with verified history are not refused; every other destination stays guarded"
                );
            } else {
                tracing::warn!("fraud guard: feedback is back; every destination is judged on its budget again");
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
        let window = self.settings.outage_window();
        let result = match &self.backend {
            Backend::Local(local) => local.verified(job_id, now, window),
            Backend::Redis(shared) => {
                let result = shared.verified(job_id, now, window).await?;
                // The script kept the shared state; this replica's copy follows until its next check.
                let counted = matches!(result, Feedback::Counted { .. });
                lock(&self.feedback).feedback(now, counted, window);
                result
            }
        };
        self.outage(now);
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

    /// A delivery receipt said the job's code never arrived (docs/receipts.md): it stays counted as unverified, as it
    /// already is, and feedback naming it later (a code verified that was never delivered) counts nothing.
    pub async fn undelivered(&self, job_id: &str) -> Result<(), redis::RedisError> {
        match &self.backend {
            Backend::Local(local) => {
                local.close(job_id);
                Ok(())
            }
            Backend::Redis(shared) => shared.close(job_id).await,
        }
    }

    /// What the guard knows of a destination, for operators (`GET /admin/api/guard`): for the number (or
    /// number prefix) `digits` — its country and its range — and the IP if given, the counts, the budget
    /// and whether one more unverified code fits now. `None` when `digits` has no calling code.
    pub async fn explain(&self, digits: &str, ip: Option<IpAddr>) -> Result<Option<Vec<Explained>>, redis::RedisError> {
        // A prefix, not a whole number: only its calling code is looked up.
        let Some(country) = crate::numbering::code_of(digits).map(|meta| meta.code) else {
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
                Backend::Redis(shared) => shared.tally(level, &key).await?,
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

    /// Whether the guard refuses jobs right now (enforce mode, learning over). During a feedback outage
    /// it still does, except to ranges with verified history ([`Guard::feedback_outage`]).
    pub fn is_enforcing(&self) -> bool {
        self.enforcing((self.clock)())
    }

    /// Whether a feedback outage spares ranges with verified history right now (as this process last
    /// heard of the shared state).
    pub fn feedback_outage(&self) -> bool {
        self.outage((self.clock)())
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
            Backend::Redis(_) => (0, 0),
        }
    }
}

/// What [`Guard::log_start_up`] says: the mode, and every default that delays or weakens enforcing, with
/// what triggers it.
fn start_up_line(s: &Settings) -> String {
    let learning = humantime::format_duration(s.learning_period);
    match s.mode {
        FraudMode::Off => "fraud guard off (fraud.mode = \"off\"): phone jobs are not budgeted".to_string(),
        FraudMode::Monitor => "fraud guard in monitor mode: it decides and counts (gd_send_fraud_suspected_total, \
                          mode=\"monitor\") and refuses nothing"
            .to_string(),
        FraudMode::Enforce => {
            let outage = match s.outage_after {
                None => "outage fallback off (fraud.outage_after under 1s)".to_string(),
                Some(d) => {
                    let d = humantime::format_duration(d);
                    format!(
                        "outage fallback on: when at least {} verified codes arrived in the {d} before \
                         feedback stops, then none for {d}, while {} or more codes went to number ranges \
                         with verified history in that {d}, jobs to ranges with verified history are not \
                         refused until feedback returns; ranges and countries without verified history stay \
                         guarded, the fixed limits still apply, and sends alone (any number, destinations, \
                         user ids or IPs) never trigger it",
                        outage::MIN_VERIFIED,
                        outage::MIN_EARLY_SENDS
                    )
                }
            };
            format!(
                "fraud guard enforcing. Learning period {learning}: nothing is refused before the first \
                 verified code is counted and for {learning} after it (started by feedback only); {outage}"
            )
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
    use super::*;

    fn settings(mode: FraudMode, outage_after: Option<Duration>) -> Settings {
        let mut s = Settings::from_config(&Config::default());
        s.mode = mode;
        s.outage_after = outage_after;
        s
    }

    #[test]
    fn the_start_up_line_names_every_default_that_weakens_enforcing_and_its_trigger() {
        let on = start_up_line(&settings(FraudMode::Enforce, Some(Duration::from_secs(600))));
        for part in [
            "enforcing",
            "Learning period 1day",
            "outage fallback on",
            "20 verified codes arrived in the 10m",
            "jobs to ranges with verified history are not refused",
            "without verified history stay guarded",
            "sends alone",
        ] {
            assert!(on.contains(part), "{part:?} missing from {on:?}");
        }
        let off = start_up_line(&settings(FraudMode::Enforce, None));
        assert!(off.contains("outage fallback off"), "{off}");
        assert!(!off.contains("fallback on"), "{off}");
        assert!(start_up_line(&settings(FraudMode::Monitor, None)).contains("refuses nothing"));
        assert!(start_up_line(&settings(FraudMode::Off, None)).contains("off"));
    }

    /// `allow_countries` takes calling codes, prefixes and regions (docs/providers/README.md).
    #[test]
    fn allow_countries_take_calling_codes_prefixes_and_regions() {
        let phone = |to: &str| {
            let body = serde_json::json!({"id": "j", "channel": "sms", "to": to, "code": "123456", "user_id": "u"});
            Job::from_json(body.to_string().as_bytes()).unwrap()
        };
        let cases: &[(&str, &[(&str, bool)])] = &[
            (
                "1",
                &[("+12125550123", true), ("+18765550123", true), ("+447700900123", false)],
            ),
            (
                "JM",
                &[("+18765550123", true), ("+16585550123", true), ("+12125550123", false)],
            ),
            ("1876", &[("+18765550123", true), ("+16585550123", false)]),
            ("KZ", &[("+77012345678", true), ("+74951234567", false)]),
            ("GG", &[("+441481256789", true), ("+442071234567", false)]),
        ];
        for (key, numbers) in cases {
            let mut s = settings(FraudMode::Enforce, None);
            s.allow_countries = vec![crate::destinations::Destination::parse(key).unwrap()];
            for (to, allowed) in *numbers {
                assert_eq!(s.allowed(&phone(to)), *allowed, "allow_countries = [{key:?}]: {to}");
            }
        }
    }

    #[test]
    fn an_outage_spares_only_ranges_with_verified_history() {
        for (refusals, known, refused) in [
            (Refusals::None, false, false),
            (Refusals::None, true, false),
            (Refusals::All, false, true),
            (Refusals::All, true, true),
            (Refusals::UnlessRangeVerified, false, true),
            (Refusals::UnlessRangeVerified, true, false),
        ] {
            assert_eq!(refusals.refuse(known), refused, "{refusals:?}, range known: {known}");
        }
    }
}
