//! Retry policy as data: the configured schedule (`retry.schedule`, docs/guarantees.md "Retries"), jittered ±20%, with
//! a provider's Retry-After honoured up to the longest step.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    schedule: Vec<Duration>,
    /// `retry.validity`: how long a code without `expires_at` is worth delivering.
    validity: Duration,
}

impl RetryPolicy {
    pub fn new(schedule: Vec<Duration>) -> RetryPolicy {
        RetryPolicy {
            schedule,
            validity: crate::providers::Validity::default().get(),
        }
    }

    pub fn with_validity(mut self, validity: Duration) -> RetryPolicy {
        self.validity = validity;
        self
    }

    pub fn validity(&self) -> Duration {
        self.validity
    }

    /// Attempts a job gets in all: the first plus one per step.
    pub fn max_attempts(&self) -> u32 {
        self.schedule.len() as u32 + 1
    }

    /// How long to wait after failed attempt `attempt` (1-based), or `None` when it was the last.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let step = *self.schedule.get(attempt.checked_sub(1)? as usize)?;
        let jittered = step.mul_f64(0.8 + fastrand::f64() * 0.4);
        let ceiling = self.schedule.iter().copied().max().unwrap_or(step);
        Some(match retry_after {
            Some(asked) => jittered.max(asked).min(ceiling.max(jittered)),
            None => jittered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(vec![
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_secs(30),
        ])
    }

    #[test]
    fn steps_are_jittered_within_20_percent() {
        let p = policy();
        for _ in 0..1000 {
            let d = p.delay(2, None).unwrap();
            assert!(d >= Duration::from_secs(4) && d <= Duration::from_secs(6), "{d:?}");
        }
        assert_eq!(p.delay(4, None), None, "after the last step: exhausted");
        assert_eq!(p.delay(0, None), None);
        assert_eq!(p.max_attempts(), 4);
    }

    #[test]
    fn retry_after_is_honoured_but_clamped() {
        let p = policy();
        let d = p.delay(1, Some(Duration::from_secs(10))).unwrap();
        assert_eq!(d, Duration::from_secs(10));
        let d = p.delay(1, Some(Duration::from_secs(86_400))).unwrap();
        assert_eq!(d, Duration::from_secs(30), "clamped to the longest step");
        let d = p.delay(3, Some(Duration::from_millis(1))).unwrap();
        assert!(
            d >= Duration::from_secs(24),
            "a short Retry-After does not shorten the schedule"
        );
    }
}
