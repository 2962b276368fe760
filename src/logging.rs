//! Log set-up for the binary. `RUST_LOG` chooses what is logged, within two limits:
//!
//! - crates that log payloads stay capped at a level where they do not, whatever `RUST_LOG` says
//!   (docs/jobs-and-events.md "Events": never a code, a number, an address or a secret, at any level);
//! - actix-http's ERROR line for each malformed or broken HTTP/1 connection is counted in
//!   `herald_http_connection_errors_total` instead: a scanner would otherwise write hundreds a second;
//! - lapin's ERROR lines for a connection or channel error are dropped: lapin returns the same error to
//!   herald, which says it once in its own words ("cannot connect to the broker at …; retrying in 1s").

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets, filter_fn};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// Used when `RUST_LOG` is unset or does not parse.
pub const DEFAULT_FILTER: &str = "info,lapin=warn,actix_server=warn";

/// The most each payload-logging crate may log, and what it logs beyond that. A prefix covers the
/// crate's modules (`lapin` covers `lapin::channels`), so a more specific `RUST_LOG` directive cannot
/// lift a cap.
pub const CAPS: &[(&str, LevelFilter)] = &[
    // trace: every frame, i.e. job bodies (codes, numbers) and connection.start-ok with the PLAIN
    // user and password.
    ("lapin", LevelFilter::INFO),
    // trace: the AMQP URI with its password.
    ("amq_protocol", LevelFilter::INFO),
    // debug: values passed to helpers while rendering (codes, numbers, friendly names).
    ("handlebars", LevelFilter::INFO),
    // debug: every SMTP line written (AUTH PLAIN credentials, RCPT TO addresses, the message).
    ("lettre", LevelFilter::INFO),
    // debug/trace: connections and, verbose, raw bytes (Twilio's Authorization header, form bodies).
    ("reqwest", LevelFilter::INFO),
    ("hyper", LevelFilter::INFO),
    ("hyper_util", LevelFilter::INFO),
    ("h2", LevelFilter::INFO),
    // debug/trace: request parsing details (header values of a malformed request).
    ("actix_http", LevelFilter::INFO),
    // debug: commands on reconnection and authentication.
    ("redis", LevelFilter::INFO),
    // debug/trace: the canonical request and string to sign of every SNS call (the SHA-256 of a body that
    // holds the number and the code: a code is six digits, its hash is not a secret).
    ("aws_sigv4", LevelFilter::INFO),
    ("aws_smithy_runtime_api", LevelFilter::INFO),
];

/// HTTP/1 connections actix-http closed on an error, counted instead of logged.
pub static HTTP_CONNECTION_ERRORS: AtomicU64 = AtomicU64::new(0);

fn is_http_connection_error(meta: &Metadata<'_>) -> bool {
    *meta.level() == Level::ERROR && meta.target().starts_with("actix_http::h1")
}

/// lapin's modules that log at ERROR an error they also return (a refused login, a closed connection, a
/// missed heartbeat, a consumer's error).
const LAPIN_RETURNED: &[&str] = &[
    "lapin::channel",
    "lapin::channels",
    "lapin::io_loop",
    "lapin::heartbeat",
    "lapin::consumer",
];

fn is_lapin_returned_error(meta: &Metadata<'_>) -> bool {
    *meta.level() == Level::ERROR && LAPIN_RETURNED.iter().any(|target| meta.target() == *target)
}

struct CountHttpConnectionErrors;

impl<S: tracing::Subscriber> Layer<S> for CountHttpConnectionErrors {
    fn on_event(&self, _event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        HTTP_CONNECTION_ERRORS.fetch_add(1, Ordering::Relaxed);
    }
}

/// `RUST_LOG` (or [`DEFAULT_FILTER`]) under the [`CAPS`].
fn caps() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(CAPS.iter().copied())
}

/// The subscriber herald logs through, writing to `writer` (stderr in the binary).
pub fn subscriber<W>(env_filter: EnvFilter, writer: W, ansi: bool) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let logged = env_filter.and(caps()).and(filter_fn(|meta| {
        !is_http_connection_error(meta) && !is_lapin_returned_error(meta)
    }));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(ansi)
                .with_filter(logged),
        )
        .with(CountHttpConnectionErrors.with_filter(filter_fn(is_http_connection_error)))
}

/// Installs the subscriber for the process: logs on stderr (stdout carries only outcome events), and
/// `log` records of crates that use `log` (handlebars, reqwest) go through the same filters.
pub fn init() {
    let env_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    subscriber(env_filter, std::io::stderr, ansi).init();
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    #[test]
    fn rust_log_cannot_lift_the_caps() {
        let out = Buffer::default();
        let filter = EnvFilter::new("trace,lapin::channels=trace,handlebars=trace,lettre=debug");
        tracing::subscriber::with_default(subscriber(filter, out.clone(), false), || {
            tracing::trace!(target: "lapin::channels", "frame with 482913");
            tracing::trace!(target: "amq_protocol_tcp", "uri with guest:guest");
            tracing::debug!(target: "handlebars::render", "helper param 482913");
            tracing::debug!(target: "lettre::transport::smtp", "Wrote: RCPT TO:<jane@example.com>");
            tracing::debug!(target: "redis::aio", "AUTH s3cret");
            tracing::info!(target: "lapin::channels", "lapin info passes");
            tracing::trace!(target: "herald::consumer", "herald trace passes");
        });
        let logged = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        for leak in ["482913", "guest", "jane@", "s3cret"] {
            assert!(!logged.contains(leak), "{leak} logged:\n{logged}");
        }
        assert!(logged.contains("lapin info passes"), "{logged}");
        assert!(logged.contains("herald trace passes"), "{logged}");
    }

    /// Issue 34: a refused login printed lapin's three ERROR lines before herald's own, on every attempt.
    #[test]
    fn lapin_errors_it_also_returns_are_not_logged() {
        let out = Buffer::default();
        tracing::subscriber::with_default(subscriber(EnvFilter::new("info"), out.clone(), false), || {
            tracing::error!(target: "lapin::channels", "Connection error");
            tracing::error!(target: "lapin::io_loop", "Exponential backoff attempts exhausted");
            tracing::warn!(target: "lapin::channels", "lapin warnings pass");
        });
        let logged = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(!logged.contains("Connection error"), "{logged}");
        assert!(!logged.contains("backoff"), "{logged}");
        assert!(logged.contains("lapin warnings pass"), "{logged}");
    }

    #[test]
    fn actix_connection_errors_are_counted_not_logged() {
        let out = Buffer::default();
        let before = HTTP_CONNECTION_ERRORS.load(Ordering::Relaxed);
        tracing::subscriber::with_default(subscriber(EnvFilter::new("info"), out.clone(), false), || {
            tracing::error!(target: "actix_http::h1::dispatcher", "stream error: parse error");
            tracing::error!(target: "herald::app", "herald errors are logged");
        });
        let logged = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(!logged.contains("stream error"), "{logged}");
        assert!(logged.contains("herald errors are logged"), "{logged}");
        assert!(HTTP_CONNECTION_ERRORS.load(Ordering::Relaxed) > before);
    }
}
