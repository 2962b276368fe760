//! What a wrong admin token costs the one presenting it: each failure takes a try from a bucket of the
//! client's address, and an empty bucket answers 429 before the token is looked at, so a guesser gets a few
//! tries a minute instead of thousands a second. A bucket of the whole server counts the failures of every
//! address together, but never refuses: guessers from many addresses would otherwise lock the real admin
//! out; while it is empty, wrong tokens are answered later (docs/operations.md, "Admin token").

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::lock;

/// Failed tries a client address has before it is slowed, and how fast they come back (10 a minute).
pub const PEER_BURST: f64 = 10.0;
pub const PEER_PER_SECOND: f64 = 1.0 / 6.0;
/// Failed tries of every address together past which the server is under a distributed guess (60 a
/// minute): wrong tokens are then answered after [`BUSY_FAILURE_DELAY`].
pub const GLOBAL_BURST: f64 = 30.0;
pub const GLOBAL_PER_SECOND: f64 = 1.0;
/// Client addresses remembered at most; past it, new addresses are not throttled (only slowed while the
/// global bucket is empty): refusing them would refuse the admin too.
pub const MAX_PEERS: usize = 10_000;
/// Every wrong token is answered this late, so that even the tries allowed come slowly.
pub const FAILURE_DELAY: Duration = Duration::from_millis(250);
/// How late while the global bucket is empty.
pub const BUSY_FAILURE_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tries: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket { tries: burst, at: now }
    }

    fn refill(&mut self, now: Instant, per_second: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tries = (self.tries + elapsed * per_second).min(burst);
        self.at = now;
    }

    /// How long until one try is back (zero: one is there).
    fn wait(&self, per_second: f64) -> Duration {
        if self.tries >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tries) / per_second)
        }
    }
}

/// An address as its bucket is keyed: IPv4 (an IPv4-mapped IPv6 address is its IPv4 address), or an
/// IPv6 address's /64, which one host usually has whole.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

struct Buckets {
    global: Bucket,
    peers: HashMap<IpAddr, Bucket>,
}

pub struct AuthLimiter {
    buckets: Mutex<Buckets>,
    /// Failures not logged yet: one warning per burst (10 s) says how many.
    pub warning: crate::receipts::RateLimitedWarning,
}

impl Default for AuthLimiter {
    fn default() -> Self {
        AuthLimiter {
            buckets: Mutex::new(Buckets {
                global: Bucket::full(GLOBAL_BURST, Instant::now()),
                peers: HashMap::new(),
            }),
            warning: crate::receipts::RateLimitedWarning::default(),
        }
    }
}

impl AuthLimiter {
    /// `Ok` when a token may be checked now for `peer`; else how long until one may. Only `peer`'s own
    /// failures refuse it.
    pub fn check(&self, peer: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let mut b = lock(&self.buckets);
        let wait = match peer.and_then(|ip| b.peers.get_mut(&peer_key(ip))) {
            Some(bucket) => {
                bucket.refill(now, PEER_PER_SECOND, PEER_BURST);
                bucket.wait(PEER_PER_SECOND)
            }
            None => Duration::ZERO,
        };
        if wait.is_zero() { Ok(()) } else { Err(wait) }
    }

    /// Whether every address together is past its budget: a guess from many addresses.
    pub fn busy(&self, now: Instant) -> bool {
        let mut b = lock(&self.buckets);
        b.global.refill(now, GLOBAL_PER_SECOND, GLOBAL_BURST);
        b.global.tries < 1.0
    }

    /// A check failed: one try less for `peer` and for everyone. How late to answer it.
    pub fn failed(&self, peer: Option<IpAddr>, now: Instant) -> Duration {
        let mut b = lock(&self.buckets);
        b.global.refill(now, GLOBAL_PER_SECOND, GLOBAL_BURST);
        let delay = if b.global.tries >= 1.0 {
            FAILURE_DELAY
        } else {
            BUSY_FAILURE_DELAY
        };
        b.global.tries = (b.global.tries - 1.0).max(0.0);
        let Some(ip) = peer else {
            return delay;
        };
        let key = peer_key(ip);
        if !b.peers.contains_key(&key) && b.peers.len() >= MAX_PEERS {
            // Forget the addresses whose tries are all back: they are as good as new.
            b.peers.retain(|_, bucket| {
                bucket.refill(now, PEER_PER_SECOND, PEER_BURST);
                bucket.tries < PEER_BURST
            });
            if b.peers.len() >= MAX_PEERS {
                return delay;
            }
        }
        let bucket = b.peers.entry(key).or_insert_with(|| Bucket::full(PEER_BURST, now));
        bucket.refill(now, PEER_PER_SECOND, PEER_BURST);
        bucket.tries = (bucket.tries - 1.0).max(0.0);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7)));
    const B: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 8)));

    #[test]
    fn a_guesser_gets_its_burst_then_one_try_per_refill() {
        let limiter = AuthLimiter::default();
        let t = Instant::now();
        for _ in 0..PEER_BURST as usize {
            assert_eq!(limiter.check(A, t), Ok(()));
            limiter.failed(A, t);
        }
        let wait = limiter.check(A, t).unwrap_err();
        assert!((5..=6).contains(&wait.as_secs()), "{wait:?}");
        // Another address is not held by A's failures.
        assert_eq!(limiter.check(B, t), Ok(()));
        let later = t + Duration::from_secs(6);
        assert_eq!(limiter.check(A, later), Ok(()));
        limiter.failed(A, later);
        assert!(limiter.check(A, later).is_err());
    }

    #[test]
    fn many_addresses_slow_the_wrong_answers_but_refuse_no_other_address() {
        let limiter = AuthLimiter::default();
        let t = Instant::now();
        for i in 0..GLOBAL_BURST as u32 {
            let peer = Some(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
            assert_eq!(limiter.check(peer, t), Ok(()));
            assert_eq!(limiter.failed(peer, t), FAILURE_DELAY);
        }
        assert_eq!(limiter.check(B, t), Ok(()));
        assert!(limiter.busy(t));
        assert_eq!(limiter.failed(B, t), BUSY_FAILURE_DELAY);
        assert_eq!(limiter.check(B, t), Ok(()));
        assert_eq!(limiter.failed(B, t + Duration::from_secs(2)), FAILURE_DELAY);
    }

    #[test]
    fn ipv6_hosts_are_keyed_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b));
        assert_ne!(peer_key(a), peer_key("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(peer_key("::ffff:198.51.100.7".parse().unwrap()), A.unwrap());
    }

    #[test]
    fn the_addresses_remembered_are_bounded() {
        let limiter = AuthLimiter::default();
        let t = Instant::now();
        for i in 0..(MAX_PEERS as u32 + 50) {
            limiter.failed(Some(IpAddr::V4(std::net::Ipv4Addr::from(i))), t);
        }
        assert_eq!(limiter.buckets.lock().unwrap().peers.len(), MAX_PEERS);
        // Once their tries are back, they make room.
        limiter.failed(B, t + Duration::from_secs(60));
        assert_eq!(limiter.buckets.lock().unwrap().peers.len(), 1);
    }
}
