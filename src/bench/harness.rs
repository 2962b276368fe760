//! What the steps run against besides the broker: herald itself as a child `herald serve`, its outcome
//! events counted on its stdout, and a Twilio-shaped HTTP server standing in for the provider.

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::config::{Config, RetrySchedule, ThrottleConfig};
use crate::job::PhoneNumber;
use crate::sync::lock;

use super::{Bench, procfs};

/// A Twilio-shaped server answering `201 {"sid": …}` after `delay`, recording when each code arrived.
pub(super) struct Provider {
    url: String,
    arrivals: Arc<Mutex<HashMap<u32, Instant>>>,
    handle: actix_web::dev::ServerHandle,
}

impl Provider {
    pub fn start(delay: Duration) -> anyhow::Result<Provider> {
        Provider::serve(delay, false)
    }

    /// Like [`Provider::start`], but each message gets a sid of its own, `SMbench<code>` (see
    /// [`sid_of`]), so that delivery receipts can name it.
    pub fn start_with_sids(delay: Duration) -> anyhow::Result<Provider> {
        Provider::serve(delay, true)
    }

    fn serve(delay: Duration, sids: bool) -> anyhow::Result<Provider> {
        use actix_web::{App, HttpResponse, HttpServer, web};
        let arrivals = Arc::new(Mutex::new(HashMap::new()));
        let seen = arrivals.clone();
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = HttpServer::new(move || {
            let seen = seen.clone();
            // As little work as a server can do per request, so that its own cost stays out of herald's row:
            // the code is read from the raw form body, the answer is a constant.
            App::new().default_service(web::to(move |body: web::Bytes| {
                let now = Instant::now();
                let seen = seen.clone();
                async move {
                    let code = form_code(&body);
                    if let Some(code) = code {
                        lock(&seen).insert(code, now);
                    }
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let mut answer = HttpResponse::Created();
                    answer.content_type("application/json");
                    match code.filter(|_| sids) {
                        Some(code) => answer.body(format!(r#"{{"sid":"{}","status":"queued"}}"#, sid_of(code))),
                        None => answer.body(r#"{"sid":"SMbench","status":"queued"}"#),
                    }
                }
            }))
        })
        .workers(1)
        .disable_signals()
        .backlog(4096)
        .max_connections(100_000)
        .listen(listener)?
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Provider { url, arrivals, handle })
    }

    /// Forgets the arrivals so far: the next step matches only its own codes.
    pub fn clear_arrivals(&self) {
        lock(&self.arrivals).clear();
    }

    /// When each code reached the server.
    pub fn arrivals(&self) -> HashMap<u32, Instant> {
        lock(&self.arrivals).clone()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

/// The sid [`Provider::start_with_sids`] gives the message carrying `code`.
pub(super) fn sid_of(code: u32) -> String {
    format!("SMbench{code:06}")
}

/// The code at the start of the form's `Body` field ("123456 is your code…", URL-encoded).
fn form_code(form: &[u8]) -> Option<u32> {
    let at = form.windows(5).position(|w| w == b"Body=")? + 5;
    let digits = form[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&form[at..at + digits]).ok()?.parse().ok()
}

/// A running `herald serve`, killed when dropped (a stopped or failed run leaves no process behind).
pub(super) struct Herald {
    process: std::process::Child,
    pub events: EventLines,
    /// Its HTTP port (metrics, probes, status callbacks).
    pub port: u16,
}

impl Herald {
    /// Starts `herald serve` on the bench's queues, with Twilio at `provider` or the outbox; returns once
    /// it reports ready, and the instant it did (it consumes from then on).
    pub async fn start(bench: &Bench, provider: Option<&Provider>) -> anyhow::Result<(Herald, Instant)> {
        Herald::spawn(bench, provider, |_| {}, None).await
    }

    /// [`Herald::start`] with the child's configuration changed by `customize`.
    pub async fn start_with(
        bench: &Bench,
        provider: Option<&Provider>,
        customize: impl FnOnce(&mut Config),
    ) -> anyhow::Result<(Herald, Instant)> {
        Herald::spawn(bench, provider, customize, None).await
    }

    /// [`Herald::start`] under valgrind's callgrind, which counts every instruction herald executes
    /// (`--collect-atstart=yes`, or from [`Herald::zero_instructions`] on) and writes the total to `out`
    /// when it exits: stop it with [`Herald::stop`], then read it with [`instructions`]. Some 50 times
    /// slower than herald alone.
    pub async fn start_counted(
        bench: &Bench,
        provider: Option<&Provider>,
        out: &Path,
    ) -> anyhow::Result<(Herald, Instant)> {
        Herald::spawn(bench, provider, |_| {}, Some(out)).await
    }

    async fn spawn(
        bench: &Bench,
        provider: Option<&Provider>,
        customize: impl FnOnce(&mut Config),
        callgrind_out: Option<&Path>,
    ) -> anyhow::Result<(Herald, Instant)> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut config = child_config(bench, port, provider)?;
        customize(&mut config);
        let mut cmd = serve_command(&config, callgrind_out)?;
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut process = cmd.spawn().context(match callgrind_out {
            Some(_) => "starting herald serve under valgrind (is valgrind installed?)",
            None => "starting herald serve",
        })?;
        let events = EventLines::read(process.stdout.take().context("herald's stdout")?);
        let mut herald = Herald { process, events, port };
        let ready = format!("http://127.0.0.1:{port}/readyz");
        // Under callgrind, start-up takes seconds instead of milliseconds.
        let limit = Duration::from_secs(if callgrind_out.is_some() { 300 } else { 15 });
        let deadline = Instant::now() + limit;
        // Polled tightly: with jobs already queued, the clock starts here.
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            if client.get(&ready).send().await.is_ok_and(|r| r.status() == 200) {
                return Ok((herald, Instant::now()));
            }
            if let Some(status) = herald.process.try_wait()? {
                bail!("herald exited before it was ready ({status})");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bail!("herald did not become ready")
    }

    /// Under callgrind (see [`Herald::start_counted`]): forgets the instructions counted so far, so that
    /// the total leaves out start-up, whose count depends on time (a clock calibration loops for a while).
    pub async fn zero_instructions(&self) -> anyhow::Result<()> {
        let zeroed = tokio::process::Command::new("callgrind_control")
            .arg("-z")
            .arg(self.pid().to_string())
            .output()
            .await
            .context("running callgrind_control (valgrind's)")?;
        anyhow::ensure!(
            zeroed.status.success(),
            "callgrind_control -z {}: {}",
            self.pid(),
            String::from_utf8_lossy(&zeroed.stdout)
        );
        Ok(())
    }

    /// Stops herald as a deployment does (SIGTERM: it drains and exits) and waits until it has exited,
    /// so that what it writes at exit is written.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.pid())?;
        // SAFETY: kill only sends a signal, to our own child, which has not been waited for yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(300);
        while Instant::now() < deadline {
            if let Some(status) = self.process.try_wait()? {
                anyhow::ensure!(status.success(), "herald stopped with {status}");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("herald did not stop within 300 s of SIGTERM")
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    pub fn peak_rss_mib(&self) -> f64 {
        procfs::peak_rss_mib(self.pid())
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The configuration of a child `herald serve`: the defaults, but for the bench's broker and queues, the
/// templates the bench was configured with, its own HTTP port, state and outbox under the bench's
/// directory, no retries, no throttles, and Twilio at `provider` if any.
fn child_config(bench: &Bench, port: u16, provider: Option<&Provider>) -> anyhow::Result<Config> {
    let mut config = Config {
        amqp: bench.amqp.clone(),
        throttle: ThrottleConfig::unlimited(),
        ..Config::default()
    };
    config.templates.dir = bench.templates_dir.clone();
    config.http.addr = ([127, 0, 0, 1], port).into();
    config.state.path = bench.dir.join(format!("state-{}", ulid::Ulid::generate()));
    config.outbox.path = bench.dir.join("outbox.jsonl");
    config.retry.schedule = RetrySchedule::default();
    if let Some(p) = provider {
        config.twilio.account_sid = "ACbench".into();
        config.twilio.auth_token = crate::config::Secret::new("bench");
        config.twilio.from = Some(PhoneNumber::parse("+15005550006")?);
        config.twilio.base_url = p.url.parse().context("the bench provider's URL")?;
        config.retry.provider_timeout = crate::config::HumanDuration(Duration::from_secs(30));
    }
    Ok(config)
}

/// This executable as `herald serve` on exactly `config`, given as `HERALD_*` variables: the inherited
/// ones are removed, so that none mixes in. With `callgrind_out`, run by callgrind writing to that file.
fn serve_command(config: &Config, callgrind_out: Option<&Path>) -> anyhow::Result<Command> {
    let exe = std::env::current_exe()?;
    let mut cmd = match callgrind_out {
        None => Command::new(exe),
        Some(out) => {
            let mut valgrind = Command::new("valgrind");
            valgrind
                // Fair scheduling hands valgrind's one running thread round from thread to thread in
                // turn: how herald's jobs fall into commit batches then varies less between runs (four
                // runs within 0.8%, against 1.9-2.9% with the default lock).
                .args(["-q", "--tool=callgrind", "--collect-atstart=yes", "--fair-sched=yes"])
                .arg(format!("--callgrind-out-file={}", out.display()))
                .arg(exe);
            valgrind
        }
    };
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD_") {
            cmd.env_remove(key);
        }
    }
    cmd.arg("serve")
        .env("RUST_LOG", "warn")
        .envs(config.to_env().context("the child's configuration as variables")?);
    Ok(cmd)
}

/// The instructions a herald run under callgrind executed in all, read from its output file.
pub(super) fn instructions(callgrind_out: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(callgrind_out)
        .with_context(|| format!("reading callgrind's output {}", callgrind_out.display()))?;
    callgrind_total(&text).with_context(|| format!("no total in {}", callgrind_out.display()))
}

/// The event total of a callgrind output file (its `totals:` line, else its `summary:` line): with
/// callgrind's default events, instructions executed (Ir).
fn callgrind_total(text: &str) -> Option<u64> {
    let total = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
    };
    total("totals:").or_else(|| total("summary:"))
}

/// Herald's outcome events as it prints them on stdout: one JSON line each, written once the broker
/// committed the job's event and ack. A thread counts them, so that reading them costs the bench (which
/// shares the machine with herald and the broker) next to nothing; consuming them from the broker cost
/// it about 10 µs of CPU per job, and the broker a delivery each.
pub(super) struct EventLines {
    /// Lines so far, and how many of them carry an `error`.
    seen: tokio::sync::watch::Receiver<(usize, usize)>,
}

impl EventLines {
    fn read(mut stdout: std::process::ChildStdout) -> EventLines {
        let (tx, seen) = tokio::sync::watch::channel((0, 0));
        std::thread::spawn(move || {
            let mut count = LineCount::default();
            let mut buf = vec![0; 1 << 16];
            while let Ok(read @ 1..) = stdout.read(&mut buf) {
                count.feed(&buf[..read]);
                // One wake-up per read, not per line.
                tx.send_replace((count.lines, count.failed));
            }
        });
        EventLines { seen }
    }

    /// Waits for `n` events in all; returns how many of them are failures.
    pub async fn wait(&mut self, n: usize) -> anyhow::Result<usize> {
        loop {
            let (lines, failed) = *self.seen.borrow_and_update();
            if lines >= n {
                return Ok(failed);
            }
            tokio::time::timeout(Duration::from_secs(120), self.seen.changed())
                .await
                .with_context(|| format!("no event for 120 s ({lines} of {n})"))?
                .context("herald's stdout closed")?;
        }
    }
}

/// Complete lines in a byte stream read in arbitrary pieces, and how many of them are failure events.
#[derive(Default)]
struct LineCount {
    lines: usize,
    failed: usize,
    /// The unfinished last line of a read, carried to the next.
    partial: Vec<u8>,
}

impl LineCount {
    fn feed(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        let complete = self.partial.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in self.partial[..complete]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            self.lines += 1;
            // A byte search, not a JSON parse: only failure events have an `error` object.
            if line.windows(8).any(|w| w == b"\"error\":") {
                self.failed += 1;
            }
        }
        self.partial.drain(..complete);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_is_read_from_the_start_of_the_forms_body() {
        let form = b"To=%2B14155550001&From=%2B15005550006&Body=000042+is+your+verification+code";
        assert_eq!(form_code(form), Some(42));
        assert_eq!(form_code(b"To=%2B14155550001&Body=Your+code"), None);
        assert_eq!(form_code(b"To=%2B14155550001"), None);
    }

    #[test]
    fn the_instruction_total_is_read_from_callgrinds_output() {
        let out = "# callgrind format\nversion: 1\ncmd: herald serve\nevents: Ir\n\
                   summary: 1234567890\n\nfn=(1) main\n0 5\n\ntotals: 1234567899\n";
        assert_eq!(callgrind_total(out), Some(1_234_567_899));
        assert_eq!(callgrind_total("events: Ir\nsummary: 42\n"), Some(42));
        assert_eq!(callgrind_total("events: Ir\n"), None);
    }

    #[test]
    fn lines_are_counted_only_once_complete_across_reads() {
        let mut count = LineCount::default();
        count.feed(b"{\"type\":\"gd_send_sms\"}\n{\"type\":\"gd_se");
        assert_eq!((count.lines, count.failed), (1, 0));
        count.feed(b"nd_sms_failure\",\"error\":{\"code\":\"expired\"}}\n\n");
        assert_eq!((count.lines, count.failed), (2, 1));
        count.feed(b"{\"type\":\"gd_send_sms\"}");
        assert_eq!((count.lines, count.failed), (2, 1));
        count.feed(b"\n");
        assert_eq!((count.lines, count.failed), (3, 1));
        assert!(count.partial.is_empty());
    }
}
