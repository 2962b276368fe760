//! herald's HTTP port as the internet sees it (its status routes are public by design): slow clients cannot
//! take the descriptors the broker and the providers need, nor keep /healthz from answering; the admin
//! token cannot be guessed at speed; start-up says what in the configuration is weak (docs/operations.md,
//! "Public HTTP").

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::{Broker, HeraldProcess, job, metric, process_env};

const CAP: usize = 20;

/// The address a herald process serves HTTP on, from its `http listening` line.
fn http_addr(herald: &HeraldProcess) -> String {
    let logs = herald.logs();
    logs.lines()
        .find(|l| l.contains("http listening"))
        .and_then(|l| l.split("addr=").nth(1))
        .map(|a| a.trim().to_owned())
        .unwrap_or_else(|| panic!("no http address in the log:\n{logs}"))
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// 3 × the cap of connections trickling a byte every 300 ms, half in their head, half in their body (of a
/// public status route): herald holds at most the cap of them, cuts each at the deadline with a 408, keeps
/// answering /healthz and keeps delivering jobs; the cap being reached and the cut bodies are counted.
/// Before, every connection held a descriptor for as long as it trickled.
#[tokio::test]
async fn slow_clients_beyond_the_cap_hold_neither_descriptors_nor_healthz_nor_deliveries() {
    let mut broker = Broker::new(|c| {
        c.http.max_connections = CAP;
        c.http.request_timeout = "1s".parse().unwrap();
        // The webhook status route reads bodies only with receipts on.
        c.webhook.secret = Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap());
    })
    .await;
    let herald = HeraldProcess::start(&process_env(&broker.config));
    let addr = http_addr(&herald);
    let pid = herald.child.id();
    assert!(herald.logs().contains("max_connections=20"), "{}", herald.logs());
    let baseline = open_descriptors(pid);

    let started = Instant::now();
    let mut streams = Vec::new();
    for i in 0..3 * CAP {
        let mut s = TcpStream::connect(&addr).unwrap();
        let head: &[u8] = if i % 2 == 0 {
            b"POST /providers/webhook/status HTTP/1.1\r\nHost: herald\r\nX-Slow: "
        } else {
            b"POST /providers/webhook/status HTTP/1.1\r\nHost: herald\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{"
        };
        s.write_all(head).unwrap();
        streams.push(s);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<TcpStream> = streams.iter().map(|s| s.try_clone().unwrap()).collect();
    let trickle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut writers = writers;
            while !stop.load(Ordering::Relaxed) {
                for w in &mut writers {
                    let _ = w.write_all(b"a");
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    // What each connection got back, and when.
    let answers: Arc<Mutex<Vec<(usize, Duration, String)>>> = Arc::default();
    let readers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            let answers = answers.clone();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                answers.lock().unwrap().push((i, started.elapsed(), text));
            })
        })
        .collect();

    // Meanwhile: the descriptors stay within the cap, jobs are delivered, /healthz answers. The scenario:
    // the flood goes on a while before the count.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let held = open_descriptors(pid);
    assert!(
        held <= baseline + CAP + 4,
        "{held} descriptors open under the flood, {baseline} before it: more than the cap of {CAP} connections"
    );
    let jobs: Vec<_> = (0..5).map(|_| job("sms")).collect();
    broker.publish_many(&jobs).await;
    for event in broker.events(jobs.len()).await {
        assert!(event.get("error").is_none(), "{event}");
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let asked = Instant::now();
    let health = client.get(format!("http://{addr}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // It waited behind at most the whole flood, one deadline per cap of connections.
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "/healthz took {:?}",
        asked.elapsed()
    );

    for reader in readers {
        reader.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    trickle.join().unwrap();
    let answers = answers.lock().unwrap().clone();
    assert_eq!(answers.len(), 3 * CAP);
    for (i, _, text) in answers.iter() {
        assert!(
            text.starts_with("HTTP/1.1 408"),
            "slow connection {i} was answered {text:?}, not 408"
        );
    }
    // The first cap of connections were cut at the deadline (1 s after accept), not later. actix times a head
    // from a clock it refreshes every 500 ms, so its cut may come up to that much early (873 ms seen).
    let first_cut = answers.iter().map(|(_, at, _)| *at).min().unwrap();
    assert!(
        first_cut >= Duration::from_millis(490) && first_cut < Duration::from_millis(2500),
        "first cut after {first_cut:?}"
    );

    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric(&metrics, "herald_http_connection_limit_reached_total") >= 1.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "herald_http_request_timeouts_total") >= CAP as f64 * 1.5,
        "every slow body counts: {metrics}"
    );
    drop(herald);
}

/// Guessing the admin token: each client address has 10 failed tries, then 429 before the token is looked
/// at (even the right one); every refusal is counted, failures come slowly, and the burst makes one
/// warning line. Before, 10,000 tries a second went uncounted and unlogged.
#[tokio::test]
async fn guessing_the_admin_token_is_slowed_counted_and_warned_about_once() {
    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    let broker = Broker::new(|c| c.admin.token = herald::config::Secret::new(TOKEN)).await;
    let mut herald = HeraldProcess::start(&process_env(&broker.config));
    let addr = http_addr(&herald);
    let list = format!("http://{addr}/admin/api/templates");
    let http = reqwest::Client::new();
    let started = Instant::now();
    let guesses = (0..15).map(|i| http.get(&list).bearer_auth(format!("guess-{i}")).send());
    let mut statuses: Vec<u16> = futures_util::future::join_all(guesses)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [[401; 10].as_slice(), &[429; 5]].concat());
    // The failures were answered late.
    assert!(started.elapsed() >= Duration::from_millis(250));
    let right = http.get(&list).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(right.status(), 429, "a locked-out address is not told the right token");
    assert!(right.headers().contains_key("retry-after"));
    let missing = http.get(&list).send().await.unwrap();
    assert_eq!(missing.status(), 429);

    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&metrics, r#"herald_admin_auth_failures_total{reason="wrong"}"#),
        10.0
    );
    assert_eq!(
        metric(&metrics, r#"herald_admin_auth_failures_total{reason="throttled"}"#),
        7.0
    );
    assert_eq!(herald.terminate(), Some(0));
    let logs = herald.logs();
    let warnings = logs.lines().filter(|l| l.contains("bearer token refused")).count();
    assert_eq!(warnings, 1, "one warning for the burst:\n{logs}");
    assert!(!logs.contains("guess-"), "a presented token reached the log");
}

/// Start-up names each weak setting's key in one warning line, never its value.
#[tokio::test]
async fn start_up_warns_about_weak_settings_by_key_never_by_value() {
    let broker = Broker::new(|_| {}).await;
    let mut env = process_env(&broker.config);
    for (key, value) in [
        ("HERALD_ADMIN__TOKEN", "Zq9Zq9"),
        // One byte: `x`.
        ("HERALD_WEBHOOK__SECRET", "whsec_eA=="),
        ("HERALD_WEBHOOK__URL", "http://hooks.example.test/send"),
        ("HERALD_CHANNELS__EMAIL", "[\"webhook\"]"),
        ("HERALD_HTTP__ADDR", "0.0.0.0:0"),
        ("HERALD_TWILIO__AUTH_TOKEN", "t0k3n-of-twilio"),
        (
            "HERALD_TWILIO__STATUS_CALLBACK_URL",
            "http://callbacks.example.test/providers/twilio/status",
        ),
    ] {
        env.retain(|(k, _)| k != key);
        env.push((key.into(), value.into()));
    }
    let mut herald = HeraldProcess::start(&env);
    assert_eq!(herald.terminate(), Some(0));
    let logs = herald.logs();
    for key in [
        "admin.token",
        "webhook.secret",
        "webhook.url",
        "http.addr",
        "twilio.status_callback_url",
    ] {
        let lines: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(" WARN ") && l.split_whitespace().any(|w| w == format!("key={key}")))
            .collect();
        assert_eq!(lines.len(), 1, "one warning naming `{key}`:\n{logs}");
    }
    for value in [
        "Zq9Zq9",
        "whsec_eA==",
        "hooks.example.test",
        "callbacks.example.test",
        "t0k3n-of-twilio",
    ] {
        assert!(!logs.contains(value), "`{value}` is in the log:\n{logs}");
    }
}

/// Reads `s` until the server closes it: what it answered, and whether it closed (EOF or reset) before the
/// read timeout.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> (String, bool) {
    s.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return (String::from_utf8_lossy(&got).into_owned(), false);
            }
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), true),
        }
    }
}

/// The cap of connections trickling a chunked body, a chunk every 300 ms, to routes that never read it (an
/// unknown one, /healthz, the disabled Twilio status route): each is answered, then shut down at the deadline
/// and its 1 s grace and counted as a timeout, and /healthz answers once they are; two pipelined requests get
/// one answer. Before, actix drained each unread body for as long as it came, so the connections outlived the
/// deadline, filled the cap and kept /healthz out, and the second pipelined request was served too.
#[tokio::test]
async fn trickled_bodies_no_route_reads_and_pipelined_requests_end_by_the_deadline() {
    let broker = Broker::new(|c| {
        c.http.max_connections = CAP;
        c.http.request_timeout = "1s".parse().unwrap();
    })
    .await;
    let herald = HeraldProcess::start(&process_env(&broker.config));
    let addr = http_addr(&herald);
    let heads = [
        ("POST /nope", "404"),
        ("GET /healthz", "200"),
        ("POST /providers/twilio/status", "404"),
    ];
    let started = Instant::now();
    let mut streams = Vec::new();
    for i in 0..CAP {
        let mut s = TcpStream::connect(&addr).unwrap();
        let (line, _) = heads[i % heads.len()];
        s.write_all(format!("{line} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n").as_bytes())
            .unwrap();
        streams.push(s);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<TcpStream> = streams.iter().map(|s| s.try_clone().unwrap()).collect();
    let trickle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut writers = writers;
            while !stop.load(Ordering::Relaxed) {
                for w in &mut writers {
                    let _ = w.write_all(b"1\r\na\r\n");
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(6));
                (answer, closed, started.elapsed())
            })
        })
        .collect();

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    // The scenario: the trickle goes on a while before /healthz is asked.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = client.get(format!("http://{addr}/healthz")).send().await;
    assert!(
        health.as_ref().is_ok_and(|r| r.status() == 200),
        "/healthz behind the trickle: {health:?}"
    );

    for (i, reader) in readers.into_iter().enumerate() {
        let (answer, closed, at) = reader.join().unwrap();
        let (line, status) = heads[i % heads.len()];
        assert!(
            closed,
            "`{line}` trickling its body was still open after {at:?}: {answer:?}"
        );
        // By the deadline (1 s) and its grace for the answer (1 s).
        assert!(at < Duration::from_millis(2500), "`{line}` closed after {at:?}");
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "`{line}` was answered {answer:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    trickle.join().unwrap();

    let mut pipelined = TcpStream::connect(&addr).unwrap();
    pipelined
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (answer, closed) = read_until_closed(&mut pipelined, Duration::from_secs(4));
    assert!(closed, "{answer:?}");
    assert_eq!(
        answer.matches("HTTP/1.1 200").count(),
        1,
        "one request per connection: {answer:?}"
    );

    // Each trickling connection was cut by the deadline.
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&metrics, "herald_http_request_timeouts_total"),
        CAP as f64,
        "{metrics}"
    );
    drop(herald);
}

/// Connections whose request head trickles in (a header line every 300 ms, never the blank line) and
/// connections that send nothing: actix answers the first 408 at the deadline and drops both, and each is
/// counted in `herald_http_request_timeouts_total`, as slow bodies are. Before, only a request a handler saw
/// was counted, so a slowloris on the head did not show in the counter at all (outside attack, finding 2).
#[tokio::test]
async fn slow_heads_and_silent_connections_are_counted_as_timeouts() {
    const SLOW: usize = 6;
    const SILENT: usize = 4;
    let broker = Broker::new(|c| c.http.request_timeout = "1s".parse().unwrap()).await;
    let herald = HeraldProcess::start(&process_env(&broker.config));
    let addr = http_addr(&herald);
    let mut slow: Vec<TcpStream> = (0..SLOW)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    let mut silent: Vec<TcpStream> = (0..SILENT).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        for s in &mut slow {
            let _ = s.write_all(b"X-Slow: 1\r\n");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    for s in &mut slow {
        let (answer, closed) = read_until_closed(s, Duration::from_secs(3));
        assert!(closed, "a trickled head still open: {answer:?}");
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "a trickled head was answered {answer:?}"
        );
    }
    for s in &mut silent {
        let (answer, closed) = read_until_closed(s, Duration::from_secs(3));
        assert!(closed, "a silent connection still open: {answer:?}");
    }
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&metrics, "herald_http_request_timeouts_total"),
        (SLOW + SILENT) as f64,
        "{metrics}"
    );
    drop(herald);
}

/// Wrong tokens from 40 addresses (127.0.1.1 … 127.0.1.40), 3 each, four times what all addresses together
/// were allowed: each is a 401, and the real admin, from another address, still gets in every time. Before,
/// one bucket of the whole server was checked before the token, so the admin got 429.
#[tokio::test]
async fn guessers_from_many_addresses_do_not_lock_the_admin_out() {
    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    let broker = Broker::new(|c| c.admin.token = herald::config::Secret::new(TOKEN)).await;
    let herald = HeraldProcess::start(&process_env(&broker.config));
    let addr = http_addr(&herald);
    let list = format!("http://{addr}/admin/api/templates");
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(Some(std::net::IpAddr::from(ip)))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let guessers: Vec<reqwest::Client> = (1..=40).map(|i| from([127, 0, 1, i])).collect();
    let guesses = guessers
        .iter()
        .flat_map(|c| (0..3).map(|i| c.get(&list).bearer_auth(format!("guess-{i}")).send()));
    let statuses: Vec<u16> = futures_util::future::join_all(guesses)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(statuses, vec![401; 120], "each address is within its own 10 tries");

    let admin = from([127, 0, 2, 1]);
    for _ in 0..5 {
        let right = admin.get(&list).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(
            right.status(),
            200,
            "the real admin is not locked out by other addresses' guesses"
        );
    }
    // An address of the guessers is held by its own failures only.
    let right = guessers[0].get(&list).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(right.status(), 200);

    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&metrics, r#"herald_admin_auth_failures_total{reason="wrong"}"#),
        120.0
    );
    drop(herald);
}
