//! The feedback-outage detector, pure: when may the guard believe that the MFA server's feedback publisher
//! broke (docs/fraud-and-limits.md "Adaptive guard", docs/operations.md "The adaptive guard at start-up"), rather than
//! that its users are quiet or that someone is pumping?
//!
//! Whoever publishes jobs chooses every send: its destination, user id and IP. So no count of sends can
//! make an outage (an attacker with a quiet spell and a few numbers in ranges that verify used to switch
//! the guard off that way, issue 31). What a job publisher cannot produce is the feedback stream, a separate
//! input only the MFA server writes. An outage is therefore:
//!
//! 1. **busy feedback**: at least [`MIN_VERIFIED`] verified codes in the `outage_after` before the last
//!    feedback (a count decayed with that time constant), so that a silence as long is not chance (with
//!    20 expected, the odds of none are e^-20); a deployment quieter than that never falls back;
//! 2. **then silence**: no feedback of any kind for `outage_after`;
//! 3. **while the traffic that verified went on**: at least [`MIN_EARLY_SENDS`] codes sent to number ranges
//!    with verified history within `outage_after` *after* the last feedback (a genuine outage cuts the
//!    feedback of codes that keep going out; sends that start after a quiet spell are not an outage, and
//!    sends to ranges that never verified never count). This gate only keeps "the MFA server is down
//!    altogether, no jobs" from reading as a feedback outage: it is necessary, never sufficient.
//!
//! And what an outage relaxes is bounded: only jobs to number ranges with verified history are let
//! through; every other destination is judged exactly as without it (see `Refusals`).
//!
//! The same rules run in Lua for the shared guard (`shared.rs`); `tests/it/fraud_guard.rs` holds the two to
//! each other.

/// Verified codes that must have arrived in the `outage_after` before the silence.
pub const MIN_VERIFIED: f64 = 20.0;
/// Codes to ranges with verified history that must have gone out in the first `outage_after` of it.
pub const MIN_EARLY_SENDS: u64 = 10;

/// The detector's inputs, deployment-wide (in Redis with `[redis] url`). Times in seconds since the epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FeedbackState {
    /// When feedback of any kind (counted, duplicate, unknown job) last arrived; 0 = never.
    pub last_feedback: u64,
    /// Verified codes, decayed with the time constant `outage_after`, as of `verified_at`.
    pub verified: f64,
    pub verified_at: u64,
    /// Codes sent to ranges with verified history within `outage_after` after `last_feedback`.
    pub early_sends: u64,
}

impl FeedbackState {
    /// A feedback message arrived at `now`; `counted`: it verified a code the guard had sent.
    pub fn feedback(&mut self, now: u64, counted: bool, window: u64) {
        self.last_feedback = now.max(1);
        self.early_sends = 0;
        if counted {
            self.verified = decayed(self.verified, now.saturating_sub(self.verified_at), window) + 1.0;
            self.verified_at = now;
        }
    }

    /// A code was sent at `now` to a number range with verified history.
    pub fn known_send(&mut self, now: u64, window: u64) {
        if self.last_feedback > 0 && now.saturating_sub(self.last_feedback) <= window {
            self.early_sends += 1;
        }
    }

    /// The verified codes of the `window` before the last feedback.
    pub fn busy(&self, window: u64) -> f64 {
        decayed(
            self.verified,
            self.last_feedback.saturating_sub(self.verified_at),
            window,
        )
    }

    /// Whether feedback is out at `now`; `window` is `outage_after` in seconds, 0 = the fallback is off.
    pub fn outage(&self, now: u64, window: u64) -> bool {
        window > 0
            && self.last_feedback > 0
            && now.saturating_sub(self.last_feedback) >= window
            && self.busy(window) >= MIN_VERIFIED
            && self.early_sends >= MIN_EARLY_SENDS
    }
}

/// `count`, `elapsed` seconds later, with time constant `window` (0: nothing is left).
fn decayed(count: f64, elapsed: u64, window: u64) -> f64 {
    if window == 0 {
        return 0.0;
    }
    count * (-(elapsed as f64) / window as f64).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 600;
    const T: u64 = 1_800_000_000;

    /// One step of a scenario: at `t` seconds after [`T`].
    #[derive(Clone, Copy)]
    enum Step {
        /// `n` verified codes, one a second from `t`.
        Verified(u64, u64),
        /// Feedback for a job the guard does not know (still proof that the publisher works).
        Unknown(u64),
        /// `n` codes to ranges with verified history, one a second from `t`.
        KnownSends(u64, u64),
    }

    fn run(steps: &[Step]) -> FeedbackState {
        let mut s = FeedbackState::default();
        for step in steps {
            match *step {
                Step::Verified(t, n) => (0..n).for_each(|i| s.feedback(T + t + i, true, W)),
                Step::Unknown(t) => s.feedback(T + t, false, W),
                Step::KnownSends(t, n) => (0..n).for_each(|i| s.known_send(T + t + i, W)),
            }
        }
        s
    }

    #[test]
    fn only_busy_feedback_that_stops_while_its_traffic_goes_on_is_an_outage() {
        use Step::*;
        // One verified code every `every` seconds for an hour, and the same traffic after the last.
        let steady = |every: u64| {
            let mut steps: Vec<Step> = (0..3600 / every).map(|i| Verified(i * every, 1)).collect();
            steps.push(KnownSends(3600 - every + 1, 12));
            steps
        };
        let (steady_30, steady_10) = (steady(20), steady(60));
        // (what happened, when it is judged (seconds after T), outage?)
        let cases: &[(&str, &[Step], u64, bool)] = &[
            ("nothing ever happened", &[], 10 * W, false),
            (
                "busy feedback, then silence while the same traffic goes on: an outage",
                &[Verified(0, 30), KnownSends(30, 20)],
                30 + W,
                true,
            ),
            (
                "the same, judged a second before outage_after of silence",
                &[Verified(0, 30), KnownSends(30, 20)],
                29 + W - 1,
                false,
            ),
            (
                "the attack of issue 31: history, quiet for outage_after, then sends into its ranges",
                &[Verified(0, 30), KnownSends(30 + W, 40)],
                30 + 3 * W,
                false,
            ),
            (
                "any number of sends with no feedback ever",
                &[KnownSends(0, 10_000)],
                20_000,
                false,
            ),
            (
                "sends alone after feedback too slow to be missed (10 verified in the window)",
                &[Verified(0, 10), KnownSends(10, 1000)],
                10 + 2 * W,
                false,
            ),
            (
                "busy feedback that stops with its traffic (the users went quiet)",
                &[Verified(0, 30), KnownSends(30, 3)],
                30 + 5 * W,
                false,
            ),
            (
                "busy once, but an hour before the last feedback: the window before the silence was quiet",
                &[Verified(0, 30), Verified(3600, 1), KnownSends(3601, 50)],
                3601 + W,
                false,
            ),
            (
                "a steady 30 verified per outage_after for an hour, then silence with traffic on",
                &steady_30,
                3600 + W,
                true,
            ),
            (
                "a steady 10 verified per outage_after, then silence with traffic on: too slow to tell",
                &steady_10,
                3600 + W,
                false,
            ),
            (
                "an outage ends with any feedback, even for a job the guard does not know",
                &[Verified(0, 30), KnownSends(30, 20), Unknown(30 + W)],
                30 + W + 1,
                false,
            ),
        ];
        for (what, steps, at, want) in cases {
            let s = run(steps);
            assert_eq!(s.outage(T + at, W), *want, "{what}: {s:?}");
        }
    }

    #[test]
    fn outage_after_of_zero_turns_the_fallback_off() {
        let mut s = FeedbackState::default();
        for i in 0..100 {
            s.feedback(T + i, true, 0);
        }
        for i in 0..100 {
            s.known_send(T + 100 + i, 0);
        }
        assert!(!s.outage(T + 100_000, 0));
    }

    #[test]
    fn the_verified_count_decays_with_outage_after() {
        let mut s = FeedbackState::default();
        s.feedback(T, true, W);
        s.feedback(T, true, W);
        assert_eq!(s.busy(W), 2.0);
        s.feedback(T + W, false, W);
        assert!((s.busy(W) - 2.0 / std::f64::consts::E).abs() < 1e-12, "{s:?}");
        // A clock behind the last update (another replica's) decays nothing and counts normally.
        s.feedback(T - 5, true, W);
        assert!((s.verified - 3.0).abs() < 1e-12, "{s:?}");
    }
}
