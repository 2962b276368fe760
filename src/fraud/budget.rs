//! The guard's arithmetic, pure: how one destination's sends and verifications, bucketed by hour, turn
//! into a budget of unverified codes (docs/fraud-and-limits.md "Adaptive guard"). The same rules run in Rust for the
//! local guard and in Lua for the shared one (`shared.rs`); a test holds the two to each other.
//!
//! Budgets start from Authgear's published formula (fraud-protection spec), per destination:
//! - a day: `floor_day + ratio × max(the 14-day peak of daily verified, verified in the last 24 h)`
//! - an hour: `max(floor_hour + ratio × verified in the last hour, day budget / 3)`
//!
//! Authgear takes the larger of the floor and the earned budget; here the floor comes on top, and an hour
//! may spend a third of the day (Authgear: a sixth). Both so that a market that launches with no history
//! is served from its first verified codes, while a destination that never verifies stays at its floor
//! (`tests/it/fraud_guard.rs` holds the defaults to both).
//!
//! and a job is allowed while the destination's unverified codes (sent, not verified; a code sent a
//! second ago counts until it is verified) stay within both once this job is added. Verifications count
//! in the hour their code was *sent*, so "sent − verified" over a window is exactly the codes of that
//! window that nobody used.

use serde::{Deserialize, Serialize};

/// Hours of per-hour counts kept: the day window plus the hour being filled.
pub const HOURS_KEPT: u32 = 25;
/// Days of per-day verified counts kept: the 14-day peak plus today.
pub const DAYS_KEPT: u32 = 15;

/// One hour of one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourCount {
    pub hour: u32,
    pub sent: u32,
    pub verified: u32,
}

/// One day's verified codes of one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayCount {
    pub day: u32,
    pub verified: u32,
}

/// A destination's history: sparse, so that the millions of IPs and ranges seen once cost a few bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub hours: Vec<HourCount>,
    pub days: Vec<DayCount>,
}

impl Tally {
    pub fn sent(&mut self, hour: u32) {
        self.hour(hour).sent += 1;
    }

    /// A code sent in `hour` was verified. Hours already dropped change nothing; the day still counts
    /// toward the peak.
    pub fn verified(&mut self, hour: u32) {
        if let Some(h) = self.hours.iter_mut().find(|h| h.hour == hour) {
            h.verified += 1;
        }
        let day = hour / 24;
        match self.days.iter_mut().find(|d| d.day == day) {
            Some(d) => d.verified += 1,
            None => self.days.push(DayCount { day, verified: 1 }),
        }
    }

    fn hour(&mut self, hour: u32) -> &mut HourCount {
        let i = match self.hours.iter().position(|h| h.hour == hour) {
            Some(i) => i,
            None => {
                self.hours.push(HourCount {
                    hour,
                    sent: 0,
                    verified: 0,
                });
                self.hours.len() - 1
            }
        };
        &mut self.hours[i]
    }

    /// Drops what no window looks at any more; true when nothing is left.
    pub fn prune(&mut self, now_hour: u32) -> bool {
        self.hours.retain(|h| h.hour + HOURS_KEPT > now_hour);
        self.days.retain(|d| d.day + DAYS_KEPT > now_hour / 24);
        self.hours.is_empty() && self.days.is_empty()
    }

    /// The windows at `now` (seconds since the epoch).
    pub fn window(&self, now: u64) -> Window {
        let hour = (now / 3600) as u32;
        // The hour window slides: the current hour, plus the previous one weighted by how much of it is
        // still less than an hour ago.
        let previous_weight = 1.0 - (now % 3600) as f64 / 3600.0;
        let mut w = Window::default();
        for h in &self.hours {
            let unverified = h.sent.saturating_sub(h.verified);
            if h.hour + 24 > hour && h.hour <= hour {
                w.unverified_day += unverified;
                w.verified_day += h.verified;
            }
            if h.hour == hour {
                w.unverified_hour += f64::from(unverified);
                w.verified_hour += f64::from(h.verified);
            } else if h.hour + 1 == hour {
                w.unverified_hour += f64::from(unverified) * previous_weight;
                w.verified_hour += f64::from(h.verified) * previous_weight;
            }
        }
        let today = hour / 24;
        w.peak_day = self
            .days
            .iter()
            .filter(|d| d.day < today && d.day + 14 >= today)
            .map(|d| d.verified)
            .max()
            .unwrap_or(0);
        w
    }
}

/// What the budget looks at, for one destination at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Window {
    pub unverified_hour: f64,
    pub verified_hour: f64,
    pub unverified_day: u32,
    pub verified_day: u32,
    /// The highest number of verified codes in one of the 14 days before today.
    pub peak_day: u32,
}

/// One level's tuning: the floors a destination with no history gets (so a new real user's first codes
/// go out), and how many unverified codes each verified one earns.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Floors {
    pub hour: u32,
    pub day: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Budget {
    pub hour: f64,
    pub day: f64,
}

impl Window {
    pub fn budget(&self, floors: Floors, ratio: f64) -> Budget {
        let day = f64::from(floors.day) + ratio * f64::from(self.peak_day.max(self.verified_day));
        let hour = (f64::from(floors.hour) + ratio * self.verified_hour).max(day / 3.0);
        Budget { hour, day }
    }

    /// Whether one more unverified code fits.
    pub fn allows(&self, floors: Floors, ratio: f64) -> bool {
        let budget = self.budget(floors, ratio);
        self.unverified_hour + 1.0 <= budget.hour && f64::from(self.unverified_day) + 1.0 <= budget.day
    }

    /// Whether the destination has any verified history the budget could be earned from.
    pub fn has_history(&self) -> bool {
        self.verified_day > 0 || self.peak_day > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600;
    const FLOORS: Floors = Floors { hour: 1, day: 3 };

    fn at(day: u64, hour: u64, second: u64) -> u64 {
        (day * 24 + hour) * HOUR + second
    }

    #[test]
    fn a_destination_without_history_gets_its_floors() {
        let mut t = Tally::default();
        let now = at(100, 10, 0);
        assert!(
            t.window(now).allows(FLOORS, 0.5),
            "the first code of a new destination goes out"
        );
        t.sent((now / HOUR) as u32);
        assert!(
            !t.window(now).allows(FLOORS, 0.5),
            "one unverified code fills the hourly floor of 1"
        );
        // Two hours later the hour window has slid past it; the day still has room for two more.
        let later = now + 2 * HOUR;
        assert!(t.window(later).allows(FLOORS, 0.5));
        t.sent((later / HOUR) as u32);
        let later = later + 2 * HOUR;
        t.sent((later / HOUR) as u32);
        let later = later + 2 * HOUR;
        assert_eq!(t.window(later).unverified_day, 3);
        assert!(!t.window(later).allows(FLOORS, 0.5), "the daily floor of 3 is used up");
        // A day after the first code, it no longer counts.
        assert!(t.window(now + 24 * HOUR + 1).allows(FLOORS, 0.5));
    }

    #[test]
    fn verified_codes_earn_budget_and_stop_counting_as_unverified() {
        let mut t = Tally::default();
        let now = at(100, 10, 1800);
        let hour = (now / HOUR) as u32;
        for _ in 0..40 {
            t.sent(hour);
            t.verified(hour);
        }
        for _ in 0..5 {
            t.sent(hour);
        }
        let w = t.window(now);
        assert_eq!((w.unverified_day, w.verified_day), (5, 40));
        assert_eq!(w.budget(FLOORS, 0.2), Budget { hour: 9.0, day: 11.0 });
        assert!(w.allows(FLOORS, 0.2));
        for _ in 0..4 {
            t.sent(hour);
        }
        assert!(
            !t.window(now).allows(FLOORS, 0.2),
            "9 unverified is the floor of 1 and the 8 that 40 verified earn at 0.2"
        );
    }

    #[test]
    fn the_fourteen_day_peak_keeps_a_quiet_day_open() {
        let mut t = Tally::default();
        // 100 verified two days ago, nothing since.
        let then = at(98, 12, 0);
        for _ in 0..100 {
            t.sent((then / HOUR) as u32);
            t.verified((then / HOUR) as u32);
        }
        let now = at(100, 9, 0);
        let w = t.window(now);
        assert_eq!((w.peak_day, w.verified_day), (100, 0));
        let b = w.budget(FLOORS, 0.2);
        assert_eq!(b.day, 23.0);
        assert!((b.hour - 23.0 / 3.0).abs() < 1e-9, "{b:?}");
        // Fifteen days later the peak has aged out.
        assert_eq!(t.window(at(113, 13, 0)).peak_day, 0);
        assert!(t.prune((at(114, 0, 0) / HOUR) as u32));
    }

    #[test]
    fn the_previous_hour_fades_out_of_the_hour_window() {
        let mut t = Tally::default();
        let hour = (at(100, 10, 0) / HOUR) as u32;
        for _ in 0..4 {
            t.sent(hour);
        }
        assert_eq!(t.window(at(100, 10, 3599)).unverified_hour, 4.0);
        assert_eq!(t.window(at(100, 11, 0)).unverified_hour, 4.0);
        assert_eq!(t.window(at(100, 11, 2700)).unverified_hour, 1.0);
        assert_eq!(t.window(at(100, 12, 0)).unverified_hour, 0.0);
        assert_eq!(t.window(at(100, 12, 0)).unverified_day, 4);
    }
}
