//! How many connections the HTTP server may hold: `http.max_connections`, lowered to what the descriptor
//! limit leaves once the rest of herald has its share (docs/operations.md, "HTTP limits").

use std::time::Duration;

/// What the HTTP server runs within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub request_timeout: Duration,
}

/// Fewest connections the server is given whatever the descriptor limit: /healthz and /metrics must fit.
pub const MIN_CONNECTIONS: usize = 16;

/// Descriptors kept out of the HTTP server's reach: one provider connection per job in flight
/// (`amqp.prefetch`), the SMTP pool (64 at most), and 128 for the broker and Redis connections, the state
/// files, the outbox, template files being read and the process's own.
pub fn reserved_descriptors(prefetch: u16) -> u64 {
    u64::from(prefetch) + 64 + 128
}

/// The descriptor limit, `(soft, hard)`, after raising the soft one to the hard one (a soft limit of
/// 1024 is common and costs nothing to lift). `None` where it cannot be read.
pub fn raise_descriptor_limit() -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return None;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit.rlim_cur = limit.rlim_max;
                }
            }
        }
        // `rlim_t` is u64 on Linux but not on every unix.
        #[allow(clippy::unnecessary_cast)]
        Some((limit.rlim_cur as u64, limit.rlim_max as u64))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The connection cap: `configured`, but no more than the descriptors left after `reserved` of `soft`
/// (each connection holds one); a descriptor limit never lowers it below [`MIN_CONNECTIONS`].
pub fn connection_cap(configured: usize, soft: Option<u64>, reserved: u64) -> usize {
    let left = soft.map_or(u64::MAX, |soft| soft.saturating_sub(reserved));
    let left = usize::try_from(left).unwrap_or(usize::MAX);
    configured.min(left.max(MIN_CONNECTIONS))
}

/// Raises the descriptor limit, sizes the cap and logs the figures (a warning when the cap had to be
/// lowered, or the limit leaves too little).
pub fn at_start(config: &crate::config::Config) -> Limits {
    let descriptors = raise_descriptor_limit();
    let reserved = reserved_descriptors(config.amqp.prefetch.get());
    let configured = config.http.max_connections;
    let max_connections = connection_cap(configured, descriptors.map(|(soft, _)| soft), reserved);
    let (soft, hard) = descriptors.map_or((None, None), |(s, h)| (Some(s), Some(h)));
    let request_timeout = config.http.request_timeout.0;
    if max_connections < configured {
        tracing::warn!(
            max_connections,
            configured,
            descriptor_limit = soft,
            reserved,
            "http.max_connections lowered to fit the descriptor limit (RLIMIT_NOFILE); raise the hard limit to \
             allow more"
        );
    } else {
        tracing::info!(
            max_connections,
            request_timeout = ?request_timeout,
            descriptor_limit = soft,
            descriptor_hard_limit = hard,
            reserved,
            "http limits"
        );
    }
    if soft.is_some_and(|soft| soft < reserved + MIN_CONNECTIONS as u64) {
        tracing::warn!(
            descriptor_limit = soft,
            reserved,
            "the descriptor limit (RLIMIT_NOFILE) leaves too few descriptors for amqp.prefetch provider calls \
             and the HTTP server; raise it (ulimit -n) or lower amqp.prefetch"
        );
    }
    Limits {
        max_connections,
        request_timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_the_reserved_descriptors_alone() {
        let reserved = reserved_descriptors(256);
        assert_eq!(reserved, 448);
        // `ulimit -n 1024`: the attack of the outside report held 1,539 descriptors.
        assert_eq!(connection_cap(1024, Some(1024), reserved), 576);
        assert_eq!(connection_cap(1024, Some(1 << 20), reserved), 1024);
        assert_eq!(connection_cap(1024, None, reserved), 1024);
        assert_eq!(connection_cap(1024, Some(100), reserved), MIN_CONNECTIONS);
        assert_eq!(connection_cap(20, Some(u64::MAX), reserved), 20);
        assert_eq!(connection_cap(3, Some(100), reserved), 3);
    }

    #[test]
    fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
        let (soft, hard) = raise_descriptor_limit().expect("RLIMIT_NOFILE is readable");
        assert_eq!(soft, hard);
    }
}
