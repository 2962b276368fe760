//! What the bench prints: the rows of its steps, and the measures computed from them. Pure functions of
//! numbers, so that the statistics are tested without a broker.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// One measured step: `jobs` in `seconds`, with a free-form note (CPU, RSS, failures).
#[derive(Debug, Default)]
pub(super) struct Row {
    pub what: String,
    pub jobs: usize,
    pub seconds: f64,
    pub note: String,
}

impl Row {
    /// Jobs per second; a step too fast for the clock does not divide by zero.
    pub fn rate(&self) -> f64 {
        self.jobs as f64 / self.seconds.max(1e-9)
    }
}

/// The rates (jobs/s) of one round: the broker's two ceilings and the two herald runs measured right
/// after them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Round {
    /// The bare client with per-message publisher confirms.
    pub ceiling: f64,
    /// The bare client committing each batch of ready deliveries as one transaction.
    pub tx_ceiling: f64,
    /// The same, each publish herald's event for a bench job (its size and properties). Not a bar's
    /// reference: it tells herald's own distance from the part of the gap its event's size makes.
    pub tx_events_ceiling: f64,
    pub twilio: f64,
    pub outbox: f64,
    /// The outbox run again with `amqp.channels = 2`.
    pub outbox_two_channels: f64,
}

/// One of a round's rates.
type RoundRate = fn(&Round) -> f64;

impl Round {
    /// The higher of the two ceilings: what the bars hold herald to.
    pub fn best_ceiling(&self) -> f64 {
        self.ceiling.max(self.tx_ceiling)
    }
}

/// p50, p99 and p99.9 of publish → arrival, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

impl Percentiles {
    /// Each percentile of `self` less the same percentile of `base`: what `self`'s path adds over
    /// `base`'s. A difference of two tail values, noisy, and it can come out negative.
    pub fn minus(self, base: Percentiles) -> Percentiles {
        Percentiles {
            p50: self.p50 - base.p50,
            p99: self.p99 - base.p99,
            p999: self.p999 - base.p999,
        }
    }
}

impl std::fmt::Display for Percentiles {
    /// "p50 / p99 / p99.9 ms", to two decimals.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2} / {:.2} / {:.2} ms", self.p50, self.p99, self.p999)
    }
}

/// The latency step: the broker alone and through herald, at the same `rate` (jobs/s).
#[derive(Debug, Clone, Copy)]
pub(super) struct Latency {
    pub rate: f64,
    /// Jobs/s through the broker alone and through herald over each run, first publish to last arrival:
    /// below `rate` when that path fell behind, and its latency then is mostly queueing.
    pub broker_pace: f64,
    pub herald_pace: f64,
    pub broker: Percentiles,
    pub herald: Percentiles,
    /// Jobs whose latency was measured (after the warm-up), on each path.
    pub samples: usize,
}

/// Everything the measures table is computed from.
#[derive(Debug)]
pub(super) struct Summary {
    /// Jobs per run (`--jobs`).
    pub jobs: usize,
    pub rounds: Vec<Round>,
    pub prefetch: u16,
    /// The slow provider's answer time and the rate herald reached against it.
    pub slow_delay: Duration,
    pub slow_rate: f64,
    /// At [`LATENCY_BAR_RATE`], then at [`half_load`].
    pub latency: [Latency; 2],
    /// Of all herald children, in MiB as /proc counts.
    pub peak_rss_mib: f64,
}

impl Summary {
    /// Each herald run is divided by a ceiling of its own round: on a shared machine the speed of
    /// everything wanders by tens of percent within a minute, and a ceiling measured next to the run it
    /// judges shares most of that drift.
    fn ratios(&self, herald: impl Fn(&Round) -> f64, ceiling: impl Fn(&Round) -> f64) -> Vec<f64> {
        self.rounds.iter().map(|r| herald(r) / ceiling(r)).collect()
    }

    /// What prefetch allows against the slow provider: every slot busy for one answer time.
    fn slow_ideal(&self) -> f64 {
        f64::from(self.prefetch) / self.slow_delay.as_secs_f64()
    }
}

/// The pace (jobs/s) at which herald's added latency has a bar: a very large MFA deployment.
pub(super) const LATENCY_BAR_RATE: f64 = 1000.0;

/// The latency step's second pace: half of the median best ceiling (#23). Where herald's own throughput
/// is below it, the latency there includes queueing, and says so.
pub(super) fn half_load(rounds: &[Round]) -> f64 {
    median(rounds.iter().map(Round::best_ceiling).collect()) / 2.0
}

/// One `--callgrind` measure: the instructions a herald under callgrind executed with `jobs` jobs, and
/// without any for as long (`seconds`, from ready to the last event).
#[derive(Debug)]
pub(super) struct Instructions {
    pub what: String,
    pub jobs: usize,
    pub seconds: f64,
    pub total: u64,
    pub baseline: u64,
}

impl Instructions {
    /// What the jobs added, per job.
    pub fn per_job(&self) -> f64 {
        (self.total as f64 - self.baseline as f64) / self.jobs.max(1) as f64
    }
}

/// The median; the mean of the middle two for an even count; NaN for none.
pub(super) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Per-round ratios as "median (round 1, round 2, …)"; one round alone, without brackets.
fn ratios(values: Vec<f64>) -> String {
    let each: Vec<String> = values.iter().map(|r| format!("{r:.2}")).collect();
    if values.len() == 1 {
        return each.join("");
    }
    format!("{:.2} ({})", median(values), each.join(", "))
}

/// Keeps the publish times of codes from `first` on: the warm-up before it is not measured.
pub(super) fn measured(mut published: HashMap<u32, Instant>, first: usize) -> HashMap<u32, Instant> {
    published.retain(|code, _| *code as usize >= first);
    published
}

/// p50, p99 and p99.9 of `arrived - published`, matched by code; a code that never arrived is left out.
pub(super) fn percentiles(published: &HashMap<u32, Instant>, arrived: &HashMap<u32, Instant>) -> Percentiles {
    let mut ms: Vec<f64> = published
        .iter()
        .filter_map(|(code, at)| {
            arrived
                .get(code)
                .map(|arr| arr.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    Percentiles {
        p50: percentile(&ms, 0.5),
        p99: percentile(&ms, 0.99),
        p999: percentile(&ms, 0.999),
    }
}

/// The `p` quantile (0..=1) of ascending `sorted`, by nearest rank on 0..len-1: of 100 values, p99 is the
/// 99th smallest; of 1,000, p99.9 is the 999th. NaN for no values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Runs of fewer jobs than this many times prefetch are judged by no throughput, slow-provider or memory
/// bar: a short run is mostly start-up and the first prefetch window (the slow step's own sizing rule,
/// "the rate is then set by concurrency, not by start-up").
pub(super) const PREFETCH_WINDOWS: usize = 20;
/// Latency samples the p99 bar needs: with fewer, p99 rests on fewer than 10 values.
pub(super) const LATENCY_SAMPLES: usize = 1_000;

/// The last column of a measure that has a bar: "PASS" when `met`, else "MISS"; "not judged" when the
/// sample (`size` jobs) is below the `need` of that bar, whatever the figure.
fn verdict(met: bool, size: usize, need: usize) -> String {
    if size < need {
        format!("not judged (sample too small: {size} jobs; use --jobs ≥ {need})")
    } else if met {
        "PASS".into()
    } else {
        "MISS".into()
    }
}

/// Added latency as the table prints it: a percentile where herald's path came out faster than the
/// broker's alone (a difference of two separate runs' tails: noise) shows as 0, and says so.
fn added_text(added: Percentiles) -> String {
    let shown = |v: f64| if v < 0.0 { 0.0 } else { v };
    let clamped = Percentiles {
        p50: shown(added.p50),
        p99: shown(added.p99),
        p999: shown(added.p999),
    };
    if [added.p50, added.p99, added.p999].iter().any(|v| *v < 0.0) {
        format!("{clamped} (a percentile below the broker's own, noise, shows as 0)")
    } else {
        clamped.to_string()
    }
}

/// MiB (2^20 bytes, what /proc reports in KiB) to MB (10^6 bytes, the unit of the 30 MB bar).
pub(super) fn mib_to_mb(mib: f64) -> f64 {
    mib * 1024.0 * 1024.0 / 1e6
}

/// The steps table, in Markdown as BENCHMARKS.md shows it.
pub(super) fn steps_table(rows: &[Row]) -> String {
    let mut out = String::from("| step | jobs | seconds | jobs/s | |\n|---|---:|---:|---:|---|\n");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.0} | {} |",
            r.what,
            r.jobs,
            r.seconds,
            r.rate(),
            r.note
        );
    }
    out
}

/// The `--callgrind` table, in Markdown as BENCHMARKS.md shows it.
pub(super) fn instructions_table(measures: &[Instructions]) -> String {
    let mut out = String::from(
        "| herald under callgrind | jobs | seconds | instructions | without jobs, as long | instructions per job |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for m in measures {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {} | {} | {} |",
            m.what,
            m.jobs,
            m.seconds,
            thousands(m.total),
            thousands(m.baseline),
            thousands(m.per_job().round() as u64)
        );
    }
    out
}

/// 1234567 as "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() * 4 / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// Added latency p99 at [`LATENCY_BAR_RATE`], in ms.
const ADDED_P99_BAR_MS: f64 = 2.0;
/// Peak RSS of herald, in MB.
const PEAK_RSS_BAR_MB: f64 = 30.0;

/// The measures table: each figure next to its bar, and whether it meets it (PASS or MISS). The
/// throughput bars hold herald to the higher of the two ceilings of each round (#23).
pub(super) fn measures_table(s: &Summary) -> String {
    let rounds = match s.rounds.len() {
        1 => "1 round".to_owned(),
        n => format!("{n} rounds"),
    };
    let slow_ms = s.slow_delay.as_millis();
    let slow_seconds = s.slow_delay.as_secs_f64();
    let (slow_ideal, slow_ratio) = (s.slow_ideal(), s.slow_rate / s.slow_ideal());
    let peak_mb = mib_to_mb(s.peak_rss_mib);
    let mut out = String::from("| measure | value | bar | met |\n|---|---:|---|---|\n");
    // A run too short to judge a bar by: its sample and what the bar needs.
    let windows = (s.jobs, usize::from(s.prefetch) * PREFETCH_WINDOWS);
    let mut line = |measure: String, value: String, bar: Option<(String, bool, (usize, usize))>| {
        let (bar, met) = bar.map_or((String::new(), String::new()), |(bar, met, (size, need))| {
            (bar, verdict(met, size, need))
        });
        let _ = writeln!(out, "| {measure} | {value} | {bar} | {met} |");
    };
    line(
        format!("broker: transactional ceiling / confirms ceiling, median of {rounds}"),
        ratios(s.ratios(|r| r.tx_ceiling, |r| r.ceiling)),
        None,
    );
    line(
        format!("broker: transactional ceiling with herald's events / transactional ceiling, median of {rounds}"),
        ratios(s.ratios(|r| r.tx_events_ceiling, |r| r.tx_ceiling)),
        None,
    );
    // The two-channel outbox run is an opt-in setting beside the bar, not held to it.
    let shapes: [(&str, RoundRate, Option<f64>); 3] = [
        ("outbox", |r| r.outbox, Some(0.80)),
        ("outbox with amqp.channels = 2", |r| r.outbox_two_channels, None),
        ("Twilio-shaped", |r| r.twilio, Some(0.60)),
    ];
    for (shape, herald, bar) in shapes {
        line(
            format!("e2e {shape} / confirms ceiling, median of {rounds}"),
            ratios(s.ratios(herald, |r| r.ceiling)),
            None,
        );
        line(
            format!("e2e {shape} / transactional ceiling, median of {rounds}"),
            ratios(s.ratios(herald, |r| r.tx_ceiling)),
            None,
        );
        line(
            format!("e2e {shape} / transactional ceiling with herald's events, median of {rounds}"),
            ratios(s.ratios(herald, |r| r.tx_events_ceiling)),
            None,
        );
        let best = s.ratios(herald, Round::best_ceiling);
        let verdict = bar.map(|bar| (format!("≥ {bar:.2}"), median(best.clone()) >= bar, windows));
        line(
            format!("e2e {shape} / best ceiling, median of {rounds}"),
            ratios(best),
            verdict,
        );
    }
    line(
        format!("{slow_ms} ms provider / (prefetch / {slow_seconds} s = {slow_ideal:.0}/s)"),
        format!("{slow_ratio:.2}"),
        Some(("≥ 0.90".into(), slow_ratio >= 0.90, windows)),
    );
    for (i, latency) in s.latency.into_iter().enumerate() {
        let Latency {
            rate,
            broker_pace,
            herald_pace,
            broker,
            herald,
            samples,
        } = latency;
        let added = herald.minus(broker);
        let (pace, bar) = if i == 0 {
            let bar = format!("p99 ≤ {ADDED_P99_BAR_MS} ms");
            let judged = (samples, LATENCY_SAMPLES);
            (
                format!("{rate:.0} jobs/s"),
                Some((bar, added.p99 <= ADDED_P99_BAR_MS, judged)),
            )
        } else {
            (format!("{rate:.0} jobs/s (half the best ceiling)"), None)
        };
        line(
            format!("broker alone: publish → consumer p50 / p99 / p99.9 at {pace}, its pace {broker_pace:.0} jobs/s"),
            broker.to_string(),
            None,
        );
        line(
            format!(
                "herald: publish → provider request p50 / p99 / p99.9 at {pace}, herald's pace {herald_pace:.0} jobs/s"
            ),
            herald.to_string(),
            None,
        );
        line(
            format!("added by herald p50 / p99 / p99.9 at {pace}"),
            added_text(added),
            bar,
        );
    }
    line(
        "peak RSS of the herald process".into(),
        format!("{:.1} MiB = {peak_mb:.1} MB", s.peak_rss_mib),
        Some((format!("≤ {PEAK_RSS_BAR_MB} MB"), peak_mb <= PEAK_RSS_BAR_MB, windows)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(ceiling: f64, twilio: f64, outbox: f64) -> Round {
        tx_round(ceiling, ceiling * 0.75, twilio, outbox)
    }

    fn tx_round(ceiling: f64, tx_ceiling: f64, twilio: f64, outbox: f64) -> Round {
        Round {
            ceiling,
            tx_ceiling,
            tx_events_ceiling: tx_ceiling * 0.8,
            twilio,
            outbox,
            outbox_two_channels: outbox,
        }
    }

    fn ms(p50: f64, p99: f64, p999: f64) -> Percentiles {
        Percentiles { p50, p99, p999 }
    }

    fn summary(rounds: Vec<Round>) -> Summary {
        Summary {
            jobs: 20_000,
            rounds,
            prefetch: 256,
            slow_delay: Duration::from_millis(200),
            slow_rate: 1196.0,
            latency: [
                Latency {
                    rate: 1000.0,
                    broker_pace: 999.0,
                    herald_pace: 998.0,
                    broker: ms(0.80, 1.50, 2.10),
                    herald: ms(1.60, 3.00, 9.10),
                    samples: 5_000,
                },
                Latency {
                    rate: 3106.0,
                    broker_pace: 3100.0,
                    herald_pace: 2411.0,
                    broker: ms(1.63, 3.75, 5.00),
                    herald: ms(2.77, 44.69, 60.00),
                    samples: 5_000,
                },
            ],
            peak_rss_mib: 26.0,
        }
    }

    #[test]
    fn median_of_odd_even_and_no_values() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn one_slow_round_moves_the_median_by_nothing() {
        // The reason for rounds: a ceiling that ran at half speed makes one ratio of ~1.0, and the median
        // of three drops it.
        assert_eq!(median(vec![0.63, 1.06, 0.64]), 0.64);
    }

    #[test]
    fn ratios_print_the_median_then_each_round_in_order() {
        assert_eq!(ratios(vec![0.87, 0.54, 0.66]), "0.66 (0.87, 0.54, 0.66)");
        assert_eq!(ratios(vec![0.5, 0.7]), "0.60 (0.50, 0.70)");
        assert_eq!(ratios(vec![0.874]), "0.87");
    }

    #[test]
    fn each_herald_run_is_divided_by_its_own_rounds_ceiling() {
        let s = summary(vec![
            round(10_000.0, 6_000.0, 9_000.0),
            round(20_000.0, 8_000.0, 10_000.0),
        ]);
        assert_eq!(s.ratios(|r| r.twilio, |r| r.ceiling), vec![0.6, 0.4]);
        assert_eq!(s.ratios(|r| r.outbox, |r| r.ceiling), vec![0.9, 0.5]);
    }

    #[test]
    fn the_best_ceiling_is_the_higher_of_the_two_in_each_round() {
        let s = summary(vec![
            tx_round(10_000.0, 16_000.0, 8_000.0, 12_000.0),
            tx_round(20_000.0, 16_000.0, 8_000.0, 12_000.0),
        ]);
        assert_eq!(s.ratios(|r| r.outbox, Round::best_ceiling), vec![0.75, 0.6]);
        assert_eq!(s.ratios(|r| r.outbox, |r| r.tx_ceiling), vec![0.75, 0.75]);
        assert_eq!(s.ratios(|r| r.tx_ceiling, |r| r.ceiling), vec![1.6, 0.8]);
    }

    #[test]
    fn the_latency_step_runs_at_half_the_median_best_ceiling() {
        let rounds = [
            tx_round(12_000.0, 16_000.0, 1.0, 1.0),
            tx_round(18_000.0, 15_000.0, 1.0, 1.0),
            tx_round(11_000.0, 15_000.0, 1.0, 1.0),
        ];
        assert_eq!(half_load(&rounds), 8000.0);
    }

    #[test]
    fn rate_is_jobs_per_second_and_never_divides_by_zero() {
        let row = Row {
            jobs: 500,
            seconds: 0.25,
            ..Row::default()
        };
        assert_eq!(row.rate(), 2000.0);
        let instant = Row {
            jobs: 1,
            ..Row::default()
        };
        assert!(instant.rate().is_finite());
    }

    #[test]
    fn percentiles_match_arrivals_to_publishes_by_code() {
        let t0 = Instant::now();
        // Codes 0..100 published at t0, arriving after code + 1 ms; code 100 never arrives.
        let published: HashMap<u32, Instant> = (0..=100).map(|c| (c, t0)).collect();
        let arrived: HashMap<u32, Instant> = (0..100)
            .map(|c| (c, t0 + Duration::from_millis(u64::from(c) + 1)))
            .collect();
        let p = percentiles(&published, &arrived);
        // 100 matched values 1..=100 ms: index round(99 × 0.5) = 50 → 51 ms, round(99 × 0.99) = 98 → 99 ms,
        // round(99 × 0.999) = 99 → 100 ms.
        assert!((p.p50 - 51.0).abs() < 1e-9, "{p:?}");
        assert!((p.p99 - 99.0).abs() < 1e-9, "{p:?}");
        assert!((p.p999 - 100.0).abs() < 1e-9, "{p:?}");
    }

    #[test]
    fn p99_9_is_the_999th_of_1000_values_and_sees_what_p99_misses() {
        // 1,000 values 1..=1000: p99.9 is the 999th smallest (index round(999 × 0.999) = 998).
        let ascending: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&ascending, 0.999), 999.0);
        assert_eq!(percentile(&ascending, 0.99), 990.0);
        assert_eq!(percentile(&ascending, 0.5), 501.0);
        // Two stalls of 100 ms in 1,000 fast values: p99 does not see them, p99.9 does.
        let mut stalled = vec![1.0; 998];
        stalled.extend([100.0, 100.0]);
        assert_eq!((percentile(&stalled, 0.99), percentile(&stalled, 0.999)), (1.0, 100.0));
        assert!(percentile(&[], 0.999).is_nan());
        assert_eq!(percentile(&[7.0], 0.999), 7.0);
    }

    #[test]
    fn added_latency_is_the_difference_at_each_percentile() {
        let added = ms(2.77, 44.69, 60.0).minus(ms(1.63, 3.75, 5.0));
        assert_eq!(added.to_string(), "1.14 / 40.94 / 55.00 ms");
        // A tail faster through herald than through the broker alone comes out negative, not clamped.
        assert_eq!(
            ms(1.0, 2.0, 3.0).minus(ms(1.5, 2.0, 4.0)).to_string(),
            "-0.50 / 0.00 / -1.00 ms"
        );
    }

    #[test]
    fn percentiles_of_nothing_are_nan_and_early_arrivals_count_as_zero() {
        let t0 = Instant::now();
        let none = percentiles(&HashMap::from([(1, t0)]), &HashMap::new());
        assert!(none.p50.is_nan() && none.p99.is_nan() && none.p999.is_nan());
        // An arrival stamped before its publish (two threads' clocks) is 0 ms, not a panic.
        let later = t0 + Duration::from_millis(5);
        let early = percentiles(&HashMap::from([(1, later)]), &HashMap::from([(1, t0)]));
        assert_eq!(early, ms(0.0, 0.0, 0.0));
    }

    #[test]
    fn the_warm_up_is_not_measured() {
        let t0 = Instant::now();
        let published: HashMap<u32, Instant> = (500_000..500_010).map(|c| (c, t0)).collect();
        let kept = measured(published, 500_004);
        let mut codes: Vec<u32> = kept.into_keys().collect();
        codes.sort_unstable();
        assert_eq!(codes, (500_004..500_010).collect::<Vec<_>>());
    }

    #[test]
    fn mib_are_converted_to_the_bars_mb() {
        assert_eq!(mib_to_mb(1.0), 1.048576);
        // BENCHMARKS.md: 26.0 MiB = 27.3 MB.
        assert_eq!(format!("{:.1}", mib_to_mb(26.0)), "27.3");
    }

    #[test]
    fn the_steps_table_has_one_line_per_row() {
        let rows = [Row {
            what: "broker: publish with confirms".into(),
            jobs: 20000,
            seconds: 0.84,
            note: String::new(),
        }];
        assert_eq!(
            steps_table(&rows),
            "| step | jobs | seconds | jobs/s | |\n|---|---:|---:|---:|---|\n\
             | broker: publish with confirms | 20000 | 0.84 | 23810 |  |\n"
        );
    }

    #[test]
    fn instructions_per_job_are_what_the_jobs_added_over_a_run_without_them() {
        let m = Instructions {
            what: "herald e2e, outbox provider".into(),
            jobs: 2000,
            seconds: 41.34,
            total: 1_900_000_000,
            baseline: 1_100_000_000,
        };
        assert_eq!(m.per_job(), 400_000.0);
        assert_eq!(
            instructions_table(&[m]),
            "| herald under callgrind | jobs | seconds | instructions | without jobs, as long | instructions per job |\n\
             |---|---:|---:|---:|---:|---:|\n\
             | herald e2e, outbox provider | 2000 | 41.3 | 1,900,000,000 | 1,100,000,000 | 400,000 |\n"
        );
    }

    #[test]
    fn thousands_are_separated_by_commas() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(123_456_789), "123,456,789");
        assert_eq!(thousands(1_234_567_890), "1,234,567,890");
    }

    #[test]
    fn the_measures_table_shows_each_figure_next_to_its_bar() {
        let table = measures_table(&summary(vec![
            tx_round(10_000.0, 13_000.0, 6_500.0, 10_400.0),
            tx_round(10_000.0, 8_000.0, 3_900.0, 5_440.0),
            tx_round(10_000.0, 14_000.0, 4_900.0, 7_000.0),
        ]));
        let expected = [
            "| measure | value | bar | met |",
            "| broker: transactional ceiling / confirms ceiling, median of 3 rounds | 1.30 (1.30, 0.80, 1.40) |  |  |",
            "| e2e outbox / confirms ceiling, median of 3 rounds | 0.70 (1.04, 0.54, 0.70) |  |  |",
            "| e2e outbox / transactional ceiling, median of 3 rounds | 0.68 (0.80, 0.68, 0.50) |  |  |",
            "| e2e outbox / best ceiling, median of 3 rounds | 0.54 (0.80, 0.54, 0.50) | ≥ 0.80 | MISS |",
            "| e2e Twilio-shaped / confirms ceiling, median of 3 rounds | 0.49 (0.65, 0.39, 0.49) |  |  |",
            "| e2e Twilio-shaped / best ceiling, median of 3 rounds | 0.39 (0.50, 0.39, 0.35) | ≥ 0.60 | MISS |",
            "| 200 ms provider / (prefetch / 0.2 s = 1280/s) | 0.93 | ≥ 0.90 | PASS |",
            "| broker alone: publish → consumer p50 / p99 / p99.9 at 1000 jobs/s, its pace 999 jobs/s | 0.80 / 1.50 / 2.10 ms |  |  |",
            "| herald: publish → provider request p50 / p99 / p99.9 at 1000 jobs/s, herald's pace 998 jobs/s | 1.60 / 3.00 / 9.10 ms |  |  |",
            "| added by herald p50 / p99 / p99.9 at 1000 jobs/s | 0.80 / 1.50 / 7.00 ms | p99 ≤ 2 ms | PASS |",
            "| broker alone: publish → consumer p50 / p99 / p99.9 at 3106 jobs/s (half the best ceiling), its pace 3100 jobs/s | 1.63 / 3.75 / 5.00 ms |  |  |",
            "| herald: publish → provider request p50 / p99 / p99.9 at 3106 jobs/s (half the best ceiling), herald's pace 2411 jobs/s | 2.77 / 44.69 / 60.00 ms |  |  |",
            "| added by herald p50 / p99 / p99.9 at 3106 jobs/s (half the best ceiling) | 1.14 / 40.94 / 55.00 ms |  |  |",
            "| peak RSS of the herald process | 26.0 MiB = 27.3 MB | ≤ 30 MB | PASS |",
        ];
        for line in expected {
            assert!(table.contains(&format!("{line}\n")), "missing `{line}` in:\n{table}");
        }
        let one = measures_table(&summary(vec![tx_round(1.0, 0.5, 0.6, 0.8)]));
        assert!(
            one.contains("| e2e outbox / best ceiling, median of 1 round | 0.80 | ≥ 0.80 | PASS |"),
            "{one}"
        );
        assert!(
            one.contains("| e2e Twilio-shaped / best ceiling, median of 1 round | 0.60 | ≥ 0.60 | PASS |"),
            "{one}"
        );
    }

    /// Issue 34: `herald bench --jobs 500` printed MISS (and PASS) verdicts from runs too short to judge,
    /// and a negative added latency.
    #[test]
    fn a_sample_too_small_is_not_judged_and_no_latency_prints_negative() {
        let mut small = summary(vec![tx_round(10_000.0, 13_000.0, 6_500.0, 10_400.0)]);
        small.jobs = 500;
        for latency in &mut small.latency {
            latency.samples = 500;
            latency.herald = ms(0.5, 1.6, 1.0);
        }
        let table = measures_table(&small);
        assert!(!table.contains("PASS") && !table.contains("MISS"), "{table}");
        for line in [
            "| ≥ 0.80 | not judged (sample too small: 500 jobs; use --jobs ≥ 5120) |",
            "| ≥ 0.90 | not judged (sample too small: 500 jobs; use --jobs ≥ 5120) |",
            "| p99 ≤ 2 ms | not judged (sample too small: 500 jobs; use --jobs ≥ 1000) |",
            "| ≤ 30 MB | not judged (sample too small: 500 jobs; use --jobs ≥ 5120) |",
            "| added by herald p50 / p99 / p99.9 at 1000 jobs/s | 0.00 / 0.10 / 0.00 ms (a percentile below the broker's own, noise, shows as 0) |",
        ] {
            assert!(table.contains(line), "missing `{line}` in:\n{table}");
        }
        let negative = table
            .as_bytes()
            .windows(2)
            .any(|w| w[0] == b'-' && w[1].is_ascii_digit());
        assert!(!negative, "a negative figure in:\n{table}");
    }
}
