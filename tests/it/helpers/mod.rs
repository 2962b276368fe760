//! Test harness: herald in-process against the real RabbitMQ, with queue names of its own so tests run
//! in parallel. Tests observe only what leaves herald: events, dead letters, provider requests, metrics.

// Provider test servers, each speaking one provider's API.
pub mod infobip_api;
pub mod meta_api;
pub mod plivo;
pub mod sns;
pub mod twilio_api;
pub mod vonage_api;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use herald::app::Application;
use herald::config::Config;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// herald in-process on its own namespace, with the test's [`Broker`] view of that namespace.
pub struct TestApp {
    pub broker: Broker,
    pub http: SocketAddr,
    pub outbox: PathBuf,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl std::ops::Deref for TestApp {
    type Target = Broker;
    fn deref(&self) -> &Broker {
        &self.broker
    }
}

impl std::ops::DerefMut for TestApp {
    fn deref_mut(&mut self) -> &mut Broker {
        &mut self.broker
    }
}

/// A config with a unique namespace, port 0 and a private outbox; `customize` adjusts it.
pub fn test_config(dir: &std::path::Path) -> Config {
    let ns = format!("test.{}", uuid::Uuid::new_v4().simple());
    let mut config = Config::default();
    config.amqp.url = AMQP_URL.parse().unwrap();
    config.amqp.jobs_queue = format!("{ns}.jobs");
    config.amqp.retry_queue = format!("{ns}.retry");
    config.amqp.dead_queue = format!("{ns}.dead");
    config.amqp.events_exchange = format!("{ns}.events");
    config.amqp.feedback_queue = format!("{ns}.feedback");
    config.http.addr = "127.0.0.1:0".parse().unwrap();
    config.templates.dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("templates");
    config.outbox.path = dir.join("outbox.jsonl");
    config.state.path = dir.join("state");
    // Tests send many jobs for one user and number; the throttle tests turn limits back on.
    config.throttle = no_limits();
    config
}

/// Polls `condition` every 20 ms until it holds, and panics naming `what` after `timeout`: a wait on
/// something observable, where a sleep would be a guess at how long it takes on a loaded machine.
pub async fn eventually<F>(timeout: Duration, what: &str, mut condition: impl FnMut() -> F)
where
    F: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `[throttle]` with every limit off.
pub fn no_limits() -> herald::config::ThrottleConfig {
    herald::config::ThrottleConfig::unlimited()
}

/// Connects to the test broker. A broker that is down fails the test: it never skips.
pub async fn broker() -> Connection {
    Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be running on 127.0.0.1:5672 (guest/guest) for the integration tests")
}

impl TestApp {
    pub async fn spawn(customize: impl FnOnce(&mut Config)) -> TestApp {
        // The event queue is bound before herald starts, so no event can be missed.
        let broker = Broker::new(customize).await;
        broker.config.validate().expect("test config is valid");
        let app = Application::build(broker.config.clone()).await.expect("herald builds");
        let http = app.http_addr();
        let shutdown = app.shutdown_token();
        let task = tokio::spawn(app.run());
        let test = TestApp {
            outbox: broker.config.outbox.path.clone(),
            broker,
            http,
            shutdown,
            task: Some(task),
        };
        test.wait_ready(true).await;
        test
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub async fn ready(&self) -> bool {
        match reqwest::get(self.url("/readyz")).await {
            Ok(r) => r.status() == 200,
            Err(_) => false,
        }
    }

    /// Polls `/readyz` until it says `ready` (up to 20 s).
    pub async fn wait_ready(&self, ready: bool) {
        for _ in 0..200 {
            if self.ready().await == ready {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("/readyz never became {ready}");
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics")).await.unwrap().text().await.unwrap()
    }

    /// Polls the metrics until `series` reaches `want` (what is counted asynchronously, like feedback).
    pub async fn wait_metric(&self, series: &str, want: f64) -> String {
        for _ in 0..200 {
            let m = self.metrics().await;
            if metric(&m, series) >= want {
                return m;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("{series} never reached {want}:\n{}", self.metrics().await);
    }

    /// Metrics once no job is in flight. An event reaches a test as soon as the broker commits it, a
    /// moment before herald hears the commit-ok and counts it; counts are read after that.
    pub async fn settled_metrics(&self) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let m = self.metrics().await;
            if m.lines().any(|l| l == "herald_jobs_in_flight 0") || std::time::Instant::now() > deadline {
                return m;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub fn outbox_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.outbox)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Stops herald gracefully and waits for it to finish.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("herald stops within 30s")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A valid job for `channel`, with a fresh id.
pub fn job(channel: &str) -> Value {
    let to = if channel == "email" {
        "jane.doe@example.com"
    } else {
        "+14155550123"
    };
    json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "channel": channel,
        "to": to,
        "code": "482913",
        "user_id": "auth0|5f7c8ec7c33c6c004bbafe82",
        "ip": "203.0.113.7",
        "friendly_name": "Acme",
    })
}

/// Configures Twilio against a local server and returns the account sid used.
pub fn twilio(config: &mut Config, base_url: &str) -> &'static str {
    config.twilio.account_sid = "AC0123456789abcdef0123456789abcdef".into();
    config.twilio.auth_token = herald::config::Secret::new("test-auth-token");
    config.twilio.from = Some(herald::job::PhoneNumber::parse("+15005550006").unwrap());
    config.twilio.base_url = base_url.parse().unwrap();
    "AC0123456789abcdef0123456789abcdef"
}

/// Form fields of a `application/x-www-form-urlencoded` body.
pub fn form(body: &[u8]) -> std::collections::HashMap<String, String> {
    let url = reqwest::Url::parse(&format!("http://x/?{}", String::from_utf8_lossy(body))).unwrap();
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Asserts the fields every outcome event has (docs/jobs-and-events.md "Events").
pub fn assert_event_shape(event: &Value) {
    for field in ["date", "type", "description", "channel", "attempt", "duration_ms"] {
        assert!(event.get(field).is_some(), "event lacks `{field}`: {event}");
    }
    let text = event.to_string();
    assert!(!text.contains("482913"), "event leaks the code: {text}");
    assert!(!text.contains("+14155550123"), "event leaks the number: {text}");
    assert!(
        !text.contains("jane.doe@example.com"),
        "event leaks the address: {text}"
    );
    chrono::DateTime::parse_from_rfc3339(event["date"].as_str().unwrap()).expect("date is RFC 3339");
}

/// A Twilio-shaped server whose answers wait at a gate the test opens: shows how many provider calls
/// herald has under way at once, without timing anything.
pub struct GatedTwilio {
    pub url: String,
    pub in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub received: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    gate: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    handle: actix_web::dev::ServerHandle,
}

impl GatedTwilio {
    pub async fn start() -> GatedTwilio {
        use actix_web::{App, HttpResponse, HttpServer, web};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let in_flight = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::watch::channel(false).0);
        let state = (in_flight.clone(), received.clone(), gate.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = HttpServer::new(move || {
            let (in_flight, received, gate) = state.clone();
            App::new().default_service(web::to(move || {
                let (in_flight, received, gate) = (in_flight.clone(), received.clone(), gate.clone());
                async move {
                    received.fetch_add(1, Ordering::SeqCst);
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    let mut open = gate.subscribe();
                    let _ = open.wait_for(|open| *open).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    HttpResponse::Created().json(serde_json::json!({"sid": "SMgated", "status": "queued"}))
                }
            }))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        GatedTwilio {
            url,
            in_flight,
            received,
            gate,
            handle,
        }
    }

    pub fn open(&self) {
        self.gate.send_replace(true);
    }

    /// Waits (up to 20 s) until `n` calls are held at the gate at the same time.
    pub async fn wait_in_flight(&self, n: usize) {
        for _ in 0..200 {
            if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "expected {n} concurrent provider calls, saw {}",
            self.in_flight.load(std::sync::atomic::Ordering::SeqCst)
        );
    }
}

impl Drop for GatedTwilio {
    fn drop(&mut self) {
        self.gate.send_replace(true);
        // The stop command is sent at once; the returned future only waits for it.
        drop(self.handle.stop(false));
    }
}

/// A TCP proxy in front of RabbitMQ (or, with [`TcpProxy::to`], another local service such as Redis)
/// that the test can cut and restore, to take the service away from one herald without disturbing the
/// tests running beside it. It can also swallow what the broker says
/// while still passing on what herald says: a commit then reaches the broker, its `commit-ok` never
/// reaches herald.
pub struct TcpProxy {
    pub port: u16,
    enabled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    deaf: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: std::sync::Arc<tokio::sync::Notify>,
}

impl TcpProxy {
    /// In front of the test broker.
    pub async fn start() -> TcpProxy {
        TcpProxy::to(5672).await
    }

    /// In front of `127.0.0.1:upstream`.
    pub async fn to(upstream: u16) -> TcpProxy {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let enabled = Arc::new(AtomicBool::new(true));
        let deaf = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (en, de, cu) = (enabled.clone(), deaf.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if !en.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let (cut, deaf) = (cu.clone(), de.clone());
                tokio::spawn(async move {
                    let Ok(upstream) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (mut client_rx, mut client_tx) = client.into_split();
                    let (mut upstream_rx, mut upstream_tx) = upstream.into_split();
                    let up = tokio::io::copy(&mut client_rx, &mut upstream_tx);
                    let down = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = upstream_rx.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            if !deaf.load(Ordering::SeqCst) {
                                client_tx.write_all(&buf[..n]).await?;
                            }
                        }
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        TcpProxy {
            port,
            enabled,
            deaf,
            cut,
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Refuses new connections, leaving the proxied ones as they are.
    pub fn refuse_new(&self) {
        self.enabled.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.enabled.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    pub fn restore(&self) {
        self.deaf.store(false, std::sync::atomic::Ordering::SeqCst);
        self.enabled.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on, what the broker sends is dropped; what herald sends still reaches the broker.
    pub fn swallow_replies(&self) {
        self.deaf.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The value of one sample in Prometheus text, or 0 when absent.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

/// One of the Python servers in `tests/support`: it prints `{"ready": <port>}` once listening, then one
/// JSON object per message or request it received.
pub struct SupportServer {
    pub port: u16,
    /// The throwaway CA that signed the server's certificate, for servers speaking TLS.
    pub ca: Option<PathBuf>,
    child: std::process::Child,
    messages: std::sync::Mutex<std::sync::mpsc::Receiver<Value>>,
    _dir: tempfile::TempDir,
}

/// A real SMTP server process (aiosmtpd, `tests/support/smtp_server.py`); messages arrive as JSON.
pub type SmtpServer = SupportServer;

impl SupportServer {
    /// The SMTP server: `mode` plain, starttls or smtps; `auth` as `user:pass`.
    pub fn start(mode: &str, auth: Option<&str>) -> SupportServer {
        let mut args = vec!["--mode", mode];
        if let Some(auth) = auth {
            args.extend(["--auth", auth]);
        }
        let mut server = SupportServer::spawn("smtp_server.py", &args, "aiosmtpd");
        if mode == "plain" {
            server.ca = None;
        }
        server
    }

    /// A Twilio-shaped HTTPS server (`tests/support/https_server.py`) answering 201 with a sid; each
    /// request arrives as `{"path", "authorization", "body"}`.
    pub fn https_twilio() -> SupportServer {
        SupportServer::spawn("https_server.py", &[], "trustme")
    }

    fn spawn(script: &str, args: &[&str], needs: &str) -> SupportServer {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let mut child = std::process::Command::new("python3")
            .arg(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/support")
                    .join(script),
            )
            .args(args)
            .arg("--ca-out")
            .arg(&ca)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("python3 with {needs} is needed for this test (.ci/run installs it): {e}"));
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let mut lines = stdout.lines();
        let first = lines.next().unwrap_or_else(|| panic!("{script} started")).unwrap();
        let ready: Value = serde_json::from_str(&first).unwrap_or_else(|_| panic!("{script} printed its port"));
        let port = ready["ready"].as_u64().expect("ready line") as u16;
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                    return;
                }
            }
        });
        SupportServer {
            port,
            ca: Some(ca),
            child,
            messages: std::sync::Mutex::new(rx),
            _dir: dir,
        }
    }

    /// The next message (or request) received, or a panic after 20 s.
    pub fn next_message(&self) -> Value {
        self.messages
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(20))
            .expect("nothing reached the test server")
    }

    pub fn received_nothing(&self) -> bool {
        self.messages.lock().unwrap().try_recv().is_err()
    }
}

impl Drop for SupportServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// herald as a separate process (`herald serve`) on a test namespace, for what needs its own process:
/// environment (SSL_CERT_FILE), signals, SIGKILL.
pub struct HeraldProcess {
    pub child: std::process::Child,
    pub logs: std::sync::Arc<std::sync::Mutex<String>>,
    pub stdout: std::sync::Arc<std::sync::Mutex<String>>,
}

/// Sends (outbox lines) per job id. A line cut by a kill does not count.
pub fn outbox_counts(path: &std::path::Path) -> std::collections::HashMap<String, usize> {
    per_job_id(&std::fs::read_to_string(path).unwrap_or_default(), |_| true)
}

/// Outcome events (`gd_send_*` lines) a herald process printed on stdout, per job id.
pub fn printed_counts(stdout: &str) -> std::collections::HashMap<String, usize> {
    per_job_id(stdout, |v| {
        v["type"].as_str().is_some_and(|t| t.starts_with("gd_send_"))
    })
}

fn per_job_id(lines: &str, keep: impl Fn(&Value) -> bool) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for line in lines.lines() {
        if let Ok(v) = serde_json::from_str::<Value>(line)
            && keep(&v)
            && let Some(id) = v["job_id"].as_str()
        {
            *counts.entry(id.to_owned()).or_default() += 1;
        }
    }
    counts
}

/// Starts herald `kills` times and SIGKILLs it each time the outbox holds `every` more jobs (or after
/// `polls` × 5 ms): kills in the middle of a stream of jobs.
pub async fn kill_as_the_outbox_grows(
    env: &[(String, String)],
    outbox: &std::path::Path,
    kills: usize,
    every: usize,
    polls: usize,
) {
    for round in 1..=kills {
        let mut herald = HeraldProcess::start(env);
        for _ in 0..polls {
            if outbox_counts(outbox).len() >= round * every {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        herald.kill();
    }
}

/// The text of `/metrics` of a herald process serving HTTP on `port`.
pub async fn metrics_at(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A port free at the moment, for a herald process whose `/metrics` a test reads.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `HERALD_*` variables giving a herald process `config` (its queues, templates, files, providers and
/// limits). `test_config` has `http.addr` on port 0, so processes of one test never collide.
pub fn process_env(config: &Config) -> Vec<(String, String)> {
    config.to_env().expect("the test config as HERALD_* variables")
}

/// Everything `output` gives from now on, read on a thread of its own.
pub fn collect_output(mut output: impl std::io::Read + Send + 'static) -> std::sync::Arc<std::sync::Mutex<String>> {
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let t = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = output.read(&mut buf) {
            if n == 0 {
                break;
            }
            t.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// `herald serve` with exactly `envs` of the `HERALD_*` variables, info logs, stdout and stderr piped.
pub fn spawn_herald(envs: &[(String, String)]) -> std::process::Child {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info")
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

impl HeraldProcess {
    /// Starts `herald serve` and waits until it consumes.
    pub fn start(envs: &[(String, String)]) -> HeraldProcess {
        use std::io::BufRead;
        let mut child = spawn_herald(envs);
        let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let l = logs.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while err.read_line(&mut line).unwrap_or(0) > 0 {
                if line.contains("consuming") {
                    let _ = ready_tx.send(());
                }
                l.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let stdout = collect_output(child.stdout.take().unwrap());
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            panic!("herald did not start consuming:\n{}", logs.lock().unwrap());
        }
        HeraldProcess { child, logs, stdout }
    }

    /// SIGKILL: no drain, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit code (None if it did not exit within 30 s).
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal_term();
        self.wait_exit()
    }

    /// SIGTERM, without waiting.
    pub fn signal_term(&self) {
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    /// The exit code once the process has exited (None if it did not within 30 s).
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader threads take the last output and drop their handles at EOF (bounded: a
                // child of herald's holding the pipes open would delay EOF).
                let reading =
                    || std::sync::Arc::strong_count(&self.logs) > 1 || std::sync::Arc::strong_count(&self.stdout) > 1;
                let eof_by = std::time::Instant::now() + Duration::from_secs(5);
                while reading() && std::time::Instant::now() < eof_by {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for HeraldProcess {
    /// Killed (a test may have meant a crash), then its commit-marker queues, named in its "consuming"
    /// lines, are deleted: a killed herald cannot, and left to expire they piled up by the hundred over a
    /// run of the suite.
    fn drop(&mut self) {
        self.kill();
        delete_queues(marker_queues(&self.logs()));
    }
}

/// The commit-marker queues (`<jobs queue>.commits.<id>`) that `logs` name, once each.
pub fn marker_queues(logs: &str) -> Vec<String> {
    let named = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let mut queues: Vec<String> = Vec::new();
    let mut rest = logs;
    while let Some(at) = rest.find(".commits.") {
        let start = rest[..at].rfind(|c: char| !named(c)).map_or(0, |i| i + 1);
        let end = at + rest[at..].find(|c: char| !named(c)).unwrap_or(rest.len() - at);
        let queue = &rest[start..end];
        if !queue.starts_with('.') && !queues.iter().any(|q| q == queue) {
            queues.push(queue.to_owned());
        }
        rest = &rest[end..];
    }
    queues
}

/// Deletes `queues` on a connection of its own, from a thread of its own: callable from `Drop`, inside or
/// outside a runtime.
pub fn delete_queues(queues: Vec<String>) {
    if !queues.is_empty() {
        delete(queues, None);
    }
}

/// Deletes `queues` and `exchange` as [`delete_queues`] does.
fn delete(queues: Vec<String>, exchange: Option<String>) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let Ok(conn) = Connection::connect(AMQP_URL, ConnectionProperties::default()).await else {
                return;
            };
            let Ok(ch) = conn.create_channel().await else { return };
            for q in &queues {
                let _ = ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await;
            }
            if let Some(exchange) = exchange {
                let _ = ch.exchange_delete(exchange.as_str().into(), Default::default()).await;
            }
        });
    })
    .join();
}

/// Test-owned view of a namespace's broker side: publishes jobs and collects events and dead letters,
/// without a herald of its own (for tests that run herald as a process).
pub struct Broker {
    pub config: Config,
    pub channel: Channel,
    _connection: Connection,
    events: lapin::Consumer,
    _dir: tempfile::TempDir,
}

impl Broker {
    pub async fn new(customize: impl FnOnce(&mut Config)) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        customize(&mut config);
        let connection = broker().await;
        let channel = connection.create_channel().await.unwrap();
        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        herald::broker::declare_topology(&channel, &config.amqp).await.unwrap();
        let (_, events) = herald::broker::private_queue(&channel, "test-events", Some(&config.amqp.events_exchange))
            .await
            .unwrap();
        Broker {
            config,
            channel,
            _connection: connection,
            events,
            _dir: dir,
        }
    }

    pub async fn publish_raw(&self, body: &[u8], props: BasicProperties) {
        self.publish_to(&self.config.amqp.jobs_queue, body, props).await;
    }

    /// Publishes `body` to `herald.feedback` (docs/fraud-and-limits.md "Adaptive guard"), with `content_type` if given.
    pub async fn publish_feedback(&self, body: &[u8], content_type: Option<&str>) {
        let mut props = BasicProperties::default();
        if let Some(ct) = content_type {
            props = props.with_content_type(ct.into());
        }
        self.publish_to(&self.config.amqp.feedback_queue, body, props).await;
    }

    /// Publishes `body` to `queue` through the default exchange and waits for the broker's ack.
    pub async fn publish_to(&self, queue: &str, body: &[u8], props: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, props)
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }

    /// Publishes many jobs, then waits for all their confirms.
    pub async fn publish_many(&self, jobs: &[Value]) {
        let mut confirms = Vec::with_capacity(jobs.len());
        for job in jobs {
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            confirms.push(
                self.channel
                    .basic_publish(
                        "".into(),
                        self.config.amqp.jobs_queue.as_str().into(),
                        BasicPublishOptions::default(),
                        job.to_string().as_bytes(),
                        props,
                    )
                    .await
                    .unwrap(),
            );
        }
        for confirm in confirms {
            assert!(confirm.await.unwrap().is_ack());
        }
    }

    /// Publishes `job` with a reply_to queue of its own and returns the reply (the outcome event, or a
    /// `duplicate`), checking the correlation id.
    pub async fn publish_and_wait(&self, job: &Value) -> Value {
        let (replies, mut consumer) = self.reply_queue().await;
        let correlation = uuid::Uuid::new_v4().to_string();
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_reply_to(replies.clone())
            .with_correlation_id(correlation.as_str().into());
        self.publish_raw(job.to_string().as_bytes(), props).await;
        let reply = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .expect("a reply within 20s")
            .unwrap()
            .unwrap();
        assert_eq!(
            reply.properties.correlation_id().as_ref().unwrap().as_str(),
            correlation
        );
        serde_json::from_slice(&reply.data).unwrap()
    }

    /// A private queue for replies (exclusive, gone with the test's connection), and its consumer.
    pub async fn reply_queue(&self) -> (lapin::types::ShortString, lapin::Consumer) {
        let replies = self
            .channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let consumer = self
            .channel
            .basic_consume(
                replies.name().clone(),
                "replies".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        (replies.name().clone(), consumer)
    }

    pub async fn publish(&self, job: &Value) {
        let props = BasicProperties::default().with_content_type("application/json".into());
        self.publish_raw(job.to_string().as_bytes(), props).await;
    }

    /// The next event from the events exchange, or a panic after `secs`.
    pub async fn next_event(&mut self, secs: u64) -> Value {
        let delivery = tokio::time::timeout(Duration::from_secs(secs), self.events.next())
            .await
            .unwrap_or_else(|_| panic!("no event within {secs}s"))
            .expect("event stream open")
            .expect("event delivery");
        serde_json::from_slice(&delivery.data).expect("event is JSON")
    }

    /// The next outcome event (`gd_send_*`), skipping audit events.
    pub async fn next_outcome(&mut self, secs: u64) -> Value {
        loop {
            let e = self.next_event(secs).await;
            if e["type"].as_str().is_some_and(|t| t.starts_with("gd_send_")) {
                return e;
            }
        }
    }

    /// Exactly `n` events: waits for them, then checks that no extra one follows.
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next_event(30).await);
        }
        if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_millis(500), self.events.next()).await {
            let extra: Value = serde_json::from_slice(&extra.unwrap().data).unwrap();
            panic!("more events than jobs: {extra}");
        }
        out
    }

    /// Takes up to `n` messages from the dead-letter queue: (body, x-herald-error).
    pub async fn dead_letters(&self, n: usize) -> Vec<(Vec<u8>, String)> {
        self.dead_messages(n)
            .await
            .into_iter()
            .map(|(body, properties)| {
                let reason = properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get("x-herald-error").cloned())
                    .map(|v| match v {
                        AMQPValue::LongString(s) => s.to_string(),
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default();
                (body, reason)
            })
            .collect()
    }

    /// Takes up to `n` messages from the dead-letter queue: (body, properties).
    pub async fn dead_messages(&self, n: usize) -> Vec<(Vec<u8>, BasicProperties)> {
        let mut out = Vec::new();
        for _ in 0..100 {
            while out.len() < n {
                let got = self
                    .channel
                    .basic_get(
                        self.config.amqp.dead_queue.as_str().into(),
                        BasicGetOptions { no_ack: true },
                    )
                    .await
                    .unwrap();
                let Some(message) = got else { break };
                out.push((message.data.clone(), message.properties.clone()));
            }
            if out.len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        out
    }

    /// Messages ready in a queue (passive declare).
    pub async fn queue_len(&self, queue: &str) -> u32 {
        self.inspect(queue).await.message_count()
    }

    /// Makes the consuming session of `herald` (a process on this namespace) fail `n` times, one after the
    /// other: the events exchange is deleted and an invalid job published, whose event then closes its
    /// channel (404); herald reconnects and declares the exchange again. Returns once it consumes again.
    pub async fn fail_sessions(&self, herald: &HeraldProcess, n: usize) {
        let exchange = self.config.amqp.events_exchange.as_str();
        let sessions = || herald.logs().matches("consuming broker").count();
        let first = sessions();
        for failure in 1..=n {
            self.channel
                .exchange_delete(exchange.into(), Default::default())
                .await
                .unwrap();
            self.publish_raw(b"not a job", BasicProperties::default()).await;
            for _ in 0..500 {
                if sessions() >= first + failure {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // At least: an invalid job left over from an earlier failure can fail one more session.
            assert!(sessions() >= first + failure, "{}", herald.logs());
        }
    }

    /// Consumers of a queue (passive declare).
    pub async fn consumer_count(&self, queue: &str) -> u32 {
        self.inspect(queue).await.consumer_count()
    }

    async fn inspect(&self, queue: &str) -> lapin::Queue {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
    }

    /// The name of the test's own queue bound to the events exchange (to bind it again after the
    /// exchange was deleted).
    pub fn events_queue(&self) -> lapin::types::ShortString {
        self.events.queue()
    }

    /// Events per job id until every one of `n` jobs has one, then any more within 2 s.
    pub async fn event_counts(&mut self, n: usize) -> std::collections::HashMap<String, usize> {
        let mut events = std::collections::HashMap::new();
        while events.len() < n {
            let Some(e) = self.try_next_event(30).await else {
                panic!("only {} of {n} jobs got an event: {events:?}", events.len());
            };
            *events.entry(e["job_id"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        while let Some(e) = self.try_next_event(2).await {
            *events.entry(e["job_id"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        events
    }

    /// The next event, or `None` after `secs`.
    pub async fn try_next_event(&mut self, secs: u64) -> Option<Value> {
        match tokio::time::timeout(Duration::from_secs(secs), self.events.next()).await {
            Ok(Some(Ok(d))) => Some(serde_json::from_slice(&d.data).unwrap()),
            _ => None,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let amqp = &self.config.amqp;
        let delays = amqp
            .delay_queues(&self.config.delay_schedule())
            .into_iter()
            .map(|(_, q)| q);
        let queues = herald::broker::topology_queues(amqp)
            .into_iter()
            .map(str::to_owned)
            .chain(delays)
            .collect();
        delete(queues, Some(amqp.events_exchange.clone()));
    }
}

/// Copies a directory tree (the shipped templates, for tests that edit them).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A second herald on the same config (queues, Redis), with a local state directory of its own: what
/// another replica of the deployment is. Stop it with [`Replica::stop`].
pub struct Replica {
    /// Its HTTP address (`http.addr` port 0 becomes a port of its own).
    pub http: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _state: tempfile::TempDir,
}

impl Replica {
    pub async fn spawn(config: &Config) -> Replica {
        let mut config = config.clone();
        let state = tempfile::tempdir().unwrap();
        config.state.path = state.path().to_owned();
        let app = Application::build(config).await.expect("the replica builds");
        let shutdown = app.shutdown_token();
        Replica {
            http: app.http_addr(),
            shutdown,
            task: tokio::spawn(app.run()),
            _state: state,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

// --- Provider calls without a broker (tests/provider*.rs) ------------------------------------------------

/// The provider client of the provider-level tests: a short timeout, a small pool.
pub fn provider_client() -> herald::providers::http::HttpClient {
    herald::providers::http::HttpClient::new(Duration::from_millis(500), 8).unwrap()
}

/// [`job`] on the SMS channel to `to`, checked as herald checks a job.
pub fn phone_job(to: &str) -> herald::job::Job {
    let mut body = job("sms");
    body["to"] = to.into();
    herald::job::Job::from_json(body.to_string().as_bytes()).unwrap()
}

pub fn sms(text: &str) -> herald::templates::Rendered {
    herald::templates::Rendered::Sms { body: text.into() }
}

/// What a send came to, in a word: `sent`, `unclear <reason>`, `transient <code> <retry-after>`,
/// `permanent <code>`, `next provider <code>`. Also checks that a failure never carries the number of
/// [`job`] (`+14155550123`).
pub fn verdict(result: Result<herald::providers::Receipt, herald::providers::ProviderError>) -> String {
    use herald::providers::ProviderError;
    let e = match result {
        Ok(herald::providers::Receipt {
            ambiguous: Some(reason),
            ..
        }) => return format!("unclear {}", reason.as_str()),
        Ok(_) => return "sent".into(),
        Err(e) => e,
    };
    assert!(!e.message().contains("4155550123"), "{e}");
    let code = e.provider_code().map_or("-".to_owned(), |c| c.to_string());
    match &e {
        ProviderError::Transient { retry_after, .. } => format!(
            "transient {code} {}",
            retry_after.map_or("-".into(), |d| d.as_secs().to_string())
        ),
        ProviderError::Permanent { .. } => format!("permanent {code}"),
        ProviderError::Refused { .. } => format!("next provider {code}"),
    }
}

/// [`verdict`] with the provider's message id after `sent` and `unclear <reason>` (`-` when none).
pub fn verdict_with_id(result: Result<herald::providers::Receipt, herald::providers::ProviderError>) -> String {
    match result {
        Ok(receipt) => {
            let id = receipt.message_id.clone().unwrap_or_else(|| "-".into());
            format!("{} {id}", verdict(Ok(receipt)))
        }
        Err(e) => verdict(Err(e)),
    }
}
