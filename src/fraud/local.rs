//! The guard's counts in this process (no `[redis] url`). Bounded: destinations and jobs older than every
//! window are swept every minute, and past [`MAX_DESTINATIONS`] / [`MAX_JOBS`] the least useful go first,
//! at once (a flood does not wait for the sweep). `cargo bench --bench guard_memory` measures it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::budget::{HOURS_KEPT, Tally};
use super::{Assessment, Destinations, Feedback, FeedbackState, Level, Refusals, Settings};
use crate::job::Channel;
use crate::privacy;
use crate::sync::lock;

/// Destinations held, all levels together: a flood of fresh IPs or ranges cannot grow memory past this
/// (about 130 bytes each). When full, destinations without verified history that were seen least
/// recently are dropped first: they only ever had their floors.
pub const MAX_DESTINATIONS: usize = 250_000;
/// Phone jobs remembered for their feedback (about 40 bytes each): a day of 5.8 jobs a second. Past it the
/// oldest go first, and their feedback counts as unknown. Larger deployments keep them in Redis.
pub const MAX_JOBS: usize = 500_000;

/// One job the guard let through, by the hash of its id: 24 bytes, as one is kept for every phone job sent
/// in the last day (the hash map of 20,000 jobs is about 1 MiB).
#[derive(Debug, Clone, Copy)]
struct SentJob {
    /// Tally keys of its range and IP ([`NO_IP`]: none).
    range: u64,
    ip: u64,
    hour: u32,
    /// Its country level ([`super::country_of_region`] gives the calling code back).
    region: u16,
    channel: Channel,
    verified: bool,
}

/// An IP whose key hashes to 0 (one in 2^64) then goes uncounted at verification, which is harmless.
const NO_IP: u64 = 0;

#[derive(Default)]
struct State {
    tallies: HashMap<u64, Tally>,
    jobs: HashMap<u64, SentJob>,
    feedback: FeedbackState,
}

impl State {
    /// Back under the caps, to 90% of each, dropping the least useful first.
    fn shed(&mut self) {
        if self.tallies.len() > MAX_DESTINATIONS {
            // Keep destinations with verified history, then the most recently seen.
            let mut order: Vec<(bool, u32, u64)> = self
                .tallies
                .iter()
                .map(|(k, t)| {
                    (
                        !t.days.is_empty(),
                        t.hours.iter().map(|h| h.hour).max().unwrap_or(0),
                        *k,
                    )
                })
                .collect();
            order.sort_unstable();
            let excess = self.tallies.len() - MAX_DESTINATIONS * 9 / 10;
            for (_, _, k) in order.into_iter().take(excess) {
                self.tallies.remove(&k);
            }
        }
        if self.jobs.len() >= MAX_JOBS {
            let mut order: Vec<(u32, u64)> = self.jobs.iter().map(|(k, j)| (j.hour, *k)).collect();
            order.sort_unstable();
            let excess = self.jobs.len() - MAX_JOBS * 9 / 10;
            for (_, k) in order.into_iter().take(excess) {
                self.jobs.remove(&k);
            }
        }
    }
}

/// Gives pages freed by a large sweep back to the system: the guard's many small allocations otherwise
/// stay in glibc's free lists (70 MiB of them after a million-destination flood had passed).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the kernel; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The guard's tallies in this process alone.
#[derive(Default)]
pub struct Local {
    state: Mutex<State>,
    /// When the first verified code was counted; 0 = never.
    since: AtomicU64,
}

fn job_key(job_id: &str) -> u64 {
    privacy::local_key('j', job_id)
}

fn key(level: Level, id: &str) -> u64 {
    privacy::local_key(level.tag(), id)
}

impl Local {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Counts stay usable after a panic elsewhere: every update is a few additions.
        lock(&self.state)
    }

    pub fn check(&self, job_id: &str, dest: &Destinations, s: &Settings, now: u64, refusals: Refusals) -> Assessment {
        let enforcing = refusals != Refusals::None
            && self
                .since()
                .is_some_and(|since| now.saturating_sub(since) >= s.learning_period.as_secs());
        let hour = (now / 3600) as u32;
        let keys: Vec<(Level, u64)> = dest.keys().into_iter().map(|(l, id)| (l, key(l, &id))).collect();
        let mut state = self.state();
        let mut over = None;
        let mut range_known = false;
        for (level, k) in &keys {
            let window = state.tallies.get(k).map(|t| t.window(now)).unwrap_or_default();
            if *level == Level::Range {
                range_known = window.has_history();
            }
            // A range whose users verify is judged on its own history: a pump spread over many other
            // ranges of its country must not lock its real users out.
            let judged = !(*level == Level::Country && range_known);
            if judged && over.is_none() && !window.allows(level.floors(s), s.ratio) {
                over = Some(*level);
            }
        }
        if over.is_some() && enforcing && refusals.refuse(range_known) {
            return Assessment {
                over,
                counted: false,
                range_known,
                enforcing,
                feedback_state: state.feedback,
            };
        }
        for (_, k) in &keys {
            state.tallies.entry(*k).or_default().sent(hour);
        }
        if state.tallies.len() > MAX_DESTINATIONS || state.jobs.len() >= MAX_JOBS {
            state.shed();
        }
        let ip = keys.iter().find(|(l, _)| *l == Level::Ip).map_or(NO_IP, |(_, k)| *k);
        state.jobs.insert(
            job_key(job_id),
            SentJob {
                range: keys[0].1,
                ip,
                hour,
                region: dest.region,
                channel: dest.channel,
                verified: false,
            },
        );
        if range_known {
            state.feedback.known_send(now, s.outage_window());
        }
        Assessment {
            over,
            counted: true,
            range_known,
            enforcing,
            feedback_state: state.feedback,
        }
    }

    /// A code was verified; `window` is `outage_after` in seconds (the outage detector's).
    pub fn verified(&self, job_id: &str, now: u64, window: u64) -> Feedback {
        let mut state = self.state();
        let Some(job) = state.jobs.get_mut(&job_key(job_id)) else {
            // Any feedback proves the MFA server's publisher works.
            state.feedback.feedback(now, false, window);
            return Feedback::Unknown;
        };
        if job.verified {
            state.feedback.feedback(now, false, window);
            return Feedback::Duplicate;
        }
        job.verified = true;
        let job = *job;
        let region = key(Level::Country, &job.region.to_string());
        for k in [job.range, region, job.ip].into_iter().filter(|k| *k != NO_IP) {
            state.tallies.entry(k).or_default().verified(job.hour);
        }
        state.feedback.feedback(now, true, window);
        drop(state);
        let _ = self
            .since
            .compare_exchange(0, now.max(1), Ordering::Relaxed, Ordering::Relaxed);
        Feedback::Counted {
            channel: job.channel,
            country: super::country_of_region(job.region),
        }
    }

    /// Settles a job as never verified: later feedback for it is a duplicate.
    pub fn close(&self, job_id: &str) {
        if let Some(job) = self.state().jobs.get_mut(&job_key(job_id)) {
            job.verified = true;
        }
    }

    /// The outage detector's inputs.
    pub fn feedback_state(&self) -> FeedbackState {
        self.state().feedback
    }

    pub fn since(&self) -> Option<u64> {
        match self.since.load(Ordering::Relaxed) {
            0 => None,
            s => Some(s),
        }
    }

    pub fn tally(&self, level: Level, id: &str) -> Tally {
        self.state().tallies.get(&key(level, id)).cloned().unwrap_or_default()
    }

    pub fn sweep(&self, now: u64) {
        let hour = (now / 3600) as u32;
        let mut state = self.state();
        let before = state.tallies.len() + state.jobs.len();
        state.tallies.retain(|_, t| !t.prune(hour));
        state.jobs.retain(|_, j| j.hour + HOURS_KEPT > hour);
        state.shed();
        state.tallies.shrink_to_fit();
        state.jobs.shrink_to_fit();
        let dropped = before - (state.tallies.len() + state.jobs.len());
        drop(state);
        if dropped > 10_000 {
            release_freed_memory();
        }
    }

    pub fn held(&self) -> (usize, usize) {
        let state = self.state();
        (state.tallies.len(), state.jobs.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_job_is_kept_in_24_bytes() {
        assert_eq!(std::mem::size_of::<SentJob>(), 24);
    }

    #[test]
    fn feedback_for_unknown_jobs_holds_nothing() {
        let local = Local::default();
        for i in 0..100_000 {
            assert_eq!(
                local.verified(&format!("never-sent-{i}"), 1_800_000_000, 600),
                Feedback::Unknown
            );
        }
        assert_eq!(local.held(), (0, 0), "a burst of unknown ids grows no state");
        assert_eq!(local.since(), None, "and starts no learning period");
    }
}
