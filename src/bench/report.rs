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

/// The rates (jobs/s) of one round: the broker's ceiling and the two herald runs measured right after it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Round {
    pub ceiling: f64,
    pub twilio: f64,
    pub outbox: f64,
}

/// p50 and p99 of publish → arrival, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Percentiles {
    pub p50: f64,
    pub p99: f64,
}

/// The latency step: the broker alone and through herald, at the same `rate` (jobs/s).
#[derive(Debug, Clone, Copy)]
pub(super) struct Latency {
    pub rate: f64,
    pub broker: Percentiles,
    pub herald: Percentiles,
}

/// Everything the measures table is computed from.
#[derive(Debug)]
pub(super) struct Summary {
    pub rounds: Vec<Round>,
    pub prefetch: u16,
    /// The slow provider's answer time and the rate herald reached against it.
    pub slow_delay: Duration,
    pub slow_rate: f64,
    pub latency: Latency,
    /// Of all herald children, in MiB as /proc counts.
    pub peak_rss_mib: f64,
}

impl Summary {
    /// Each herald run is divided by the ceiling of its own round: on a shared machine the speed of
    /// everything wanders by tens of percent within a minute, and a ceiling measured next to the run it
    /// judges shares most of that drift.
    fn ratios(&self, herald: impl Fn(&Round) -> f64) -> Vec<f64> {
        self.rounds.iter().map(|r| herald(r) / r.ceiling).collect()
    }

    /// What prefetch allows against the slow provider: every slot busy for one answer time.
    fn slow_ideal(&self) -> f64 {
        f64::from(self.prefetch) / self.slow_delay.as_secs_f64()
    }
}

/// The latency step's pace: half of herald's median Twilio-shaped throughput, so that it measures latency
/// under load rather than queueing.
pub(super) fn half_load(rounds: &[Round]) -> f64 {
    median(rounds.iter().map(|r| r.twilio).collect()) / 2.0
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

/// p50 and p99 of `arrived - published`, matched by code; a code that never arrived is left out.
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
    // Nearest rank on 0..len-1: of 100 values, p99 is the 99th smallest.
    let pct = |p: f64| {
        ms.get(((ms.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Percentiles {
        p50: pct(0.5),
        p99: pct(0.99),
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

/// The measures table: each figure next to its bar.
pub(super) fn measures_table(s: &Summary) -> String {
    let rounds = match s.rounds.len() {
        1 => "1 round".to_owned(),
        n => format!("{n} rounds"),
    };
    let slow_ms = s.slow_delay.as_millis();
    let slow_seconds = s.slow_delay.as_secs_f64();
    let (slow_ideal, slow_ratio) = (s.slow_ideal(), s.slow_rate / s.slow_ideal());
    let Latency { rate, broker, herald } = s.latency;
    let peak = s.peak_rss_mib;
    let mut out = String::from("| measure | value | bar |\n|---|---:|---|\n");
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!(
        "| e2e outbox / broker ceiling, median of {rounds} | {} | ≥ 0.80 |",
        ratios(s.ratios(|r| r.outbox))
    ));
    line(format!(
        "| e2e Twilio-shaped / broker ceiling, median of {rounds} | {} | ≥ 0.60 |",
        ratios(s.ratios(|r| r.twilio))
    ));
    line(format!(
        "| {slow_ms} ms provider / (prefetch / {slow_seconds} s = {slow_ideal:.0}/s) | {slow_ratio:.2} | ≥ 0.90 |"
    ));
    line(format!(
        "| broker alone: publish → consumer p50 / p99 at {rate:.0} jobs/s | {:.2} / {:.2} ms | |",
        broker.p50, broker.p99
    ));
    line(format!(
        "| herald: publish → provider request p50 / p99 | {:.2} / {:.2} ms | |",
        herald.p50, herald.p99
    ));
    // A difference of two tail values: noisy, and can come out negative.
    line(format!(
        "| added by herald p50 / p99 | {:.2} / {:.2} ms | p99 ≤ 2 ms |",
        herald.p50 - broker.p50,
        herald.p99 - broker.p99
    ));
    line(format!(
        "| peak RSS of the herald process | {peak:.1} MiB = {:.1} MB | ≤ 30 MB |",
        mib_to_mb(peak)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(ceiling: f64, twilio: f64, outbox: f64) -> Round {
        Round {
            ceiling,
            twilio,
            outbox,
        }
    }

    fn summary(rounds: Vec<Round>) -> Summary {
        Summary {
            rounds,
            prefetch: 256,
            slow_delay: Duration::from_millis(200),
            slow_rate: 1196.0,
            latency: Latency {
                rate: 3106.0,
                broker: Percentiles { p50: 1.63, p99: 3.75 },
                herald: Percentiles { p50: 2.77, p99: 44.69 },
            },
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
        assert_eq!(s.ratios(|r| r.twilio), vec![0.6, 0.4]);
        assert_eq!(s.ratios(|r| r.outbox), vec![0.9, 0.5]);
    }

    #[test]
    fn the_latency_step_runs_at_half_the_median_twilio_rate() {
        let rounds = [
            round(1.0, 6000.0, 1.0),
            round(1.0, 9000.0, 1.0),
            round(1.0, 7000.0, 1.0),
        ];
        assert_eq!(half_load(&rounds), 3500.0);
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
        // 100 matched values 1..=100 ms: index round(99 × 0.5) = 50 → 51 ms, round(99 × 0.99) = 98 → 99 ms.
        assert!((p.p50 - 51.0).abs() < 1e-9, "{p:?}");
        assert!((p.p99 - 99.0).abs() < 1e-9, "{p:?}");
    }

    #[test]
    fn percentiles_of_nothing_are_nan_and_early_arrivals_count_as_zero() {
        let t0 = Instant::now();
        let none = percentiles(&HashMap::from([(1, t0)]), &HashMap::new());
        assert!(none.p50.is_nan() && none.p99.is_nan());
        // An arrival stamped before its publish (two threads' clocks) is 0 ms, not a panic.
        let later = t0 + Duration::from_millis(5);
        let early = percentiles(&HashMap::from([(1, later)]), &HashMap::from([(1, t0)]));
        assert_eq!(early, Percentiles { p50: 0.0, p99: 0.0 });
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
    fn the_measures_table_shows_each_figure_next_to_its_bar() {
        let table = measures_table(&summary(vec![
            round(10_000.0, 6_600.0, 8_700.0),
            round(10_000.0, 3_900.0, 5_400.0),
            round(10_000.0, 4_700.0, 6_600.0),
        ]));
        let expected = [
            "| e2e outbox / broker ceiling, median of 3 rounds | 0.66 (0.87, 0.54, 0.66) | ≥ 0.80 |",
            "| e2e Twilio-shaped / broker ceiling, median of 3 rounds | 0.47 (0.66, 0.39, 0.47) | ≥ 0.60 |",
            "| 200 ms provider / (prefetch / 0.2 s = 1280/s) | 0.93 | ≥ 0.90 |",
            "| broker alone: publish → consumer p50 / p99 at 3106 jobs/s | 1.63 / 3.75 ms | |",
            "| herald: publish → provider request p50 / p99 | 2.77 / 44.69 ms | |",
            "| added by herald p50 / p99 | 1.14 / 40.94 ms | p99 ≤ 2 ms |",
            "| peak RSS of the herald process | 26.0 MiB = 27.3 MB | ≤ 30 MB |",
        ];
        for line in expected {
            assert!(table.contains(&format!("{line}\n")), "missing `{line}` in:\n{table}");
        }
        assert!(measures_table(&summary(vec![round(1.0, 0.5, 0.8)])).contains("median of 1 round | 0.80 |"));
    }
}
