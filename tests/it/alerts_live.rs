//! The shipped alert rules in a real Prometheus (Debian's, installed by .ci/run): it scrapes a herald
//! started here every second and evaluates deploy/prometheus/alerts.yml every second. A minute of normal
//! traffic to +1 and +44, then a burst to +882: every rule evaluates without error, the new destination
//! is caught (pending is enough) and the normal ones are not; herald stopped, HeraldDown goes pending.
//! About 75 s. The Grafana dashboard's every panel in the same setting, with mixed SMS and voice traffic,
//! verification feedback and delivery receipts (about 20 s).

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;
use serde_json::Value;

const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");

/// Prometheus as a child process, killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl Prometheus {
    /// Starts Prometheus on a free port, scraping `target` as job `herald` and loading the shipped rules.
    fn start(dir: &Path, target: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {RULES}\n\
                 scrape_configs:\n  - job_name: herald\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        // A port that was free a moment ago (Prometheus cannot be given port 0 and asked which it took).
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the `prometheus` binary is needed (Debian package `prometheus`; .ci/run installs it)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> Option<Value> {
        let response = reqwest::get(format!("{}{path}", self.url)).await.ok()?;
        let body: Value = response.json().await.ok()?;
        (body["status"] == "success").then(|| body["data"].clone())
    }

    async fn query(&self, promql: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", urlencode(promql));
        self.get(&path)
            .await
            .map_or_else(Vec::new, |d| d["result"].as_array().unwrap().clone())
    }

    /// An instant query at `at` (seconds since the epoch): its series, or Prometheus' error.
    async fn query_at(&self, promql: &str, at: f64) -> Result<Vec<Value>, String> {
        let url = format!("{}/api/v1/query?query={}&time={at:.3}", self.url, urlencode(promql));
        let body: Value = reqwest::get(url)
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    async fn alerts(&self) -> Vec<Value> {
        self.get("/api/v1/alerts")
            .await
            .map_or_else(Vec::new, |d| d["alerts"].as_array().unwrap().clone())
    }

    /// Polls `check` every 250 ms until it holds, or fails the test after `secs` with Prometheus' log.
    async fn wait_for<F, Fut>(&self, what: &str, secs: u64, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !check().await {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {secs}s; Prometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn sms(to: &str) -> Value {
    let mut job = job("sms");
    job["to"] = to.into();
    job
}

/// Alerts of `name` with `label` = `value`, in any state.
fn active<'a>(alerts: &'a [Value], name: &str, label: &str, value: &str) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| a["labels"]["alertname"] == name && a["labels"][label] == value)
        .collect()
}

async fn send_normal(app: &mut TestApp) {
    for to in ["+14155550123", "+447700900123"] {
        app.publish(&sms(to)).await;
        let outcome = app.next_outcome(60).await;
        assert_eq!(outcome["type"], "gd_send_sms", "{outcome}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shipped_rules_catch_a_new_destination_in_a_real_prometheus() {
    let started = Instant::now();
    let mut app = TestApp::spawn(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let target = app.http.to_string();
    let target = target.as_str();
    let prometheus = Prometheus::start(dir.path(), target);
    let prometheus = &prometheus;

    prometheus
        .wait_for("Prometheus scrapes herald", 60, || async move {
            !prometheus.query(r#"up{job="herald"} == 1"#).await.is_empty()
        })
        .await;

    // Normal traffic: codes to +1 and +44 every 5 s through the first minute of the deployment's phone
    // traffic (the destinations of that minute are its starting set).
    send_normal(&mut app).await;
    let mut last = Instant::now();
    loop {
        let age = prometheus
            .query("time() - herald:gd_send_phone:first_seen_timestamp_seconds")
            .await
            .first()
            .map_or(0.0, |s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap());
        if age > 62.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the phone traffic never got a minute old"
        );
        if last.elapsed() > Duration::from_secs(5) {
            send_normal(&mut app).await;
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The burst: +882 (International Networks), a calling code herald never sent to.
    let burst: Vec<Value> = (0..30).map(|i| sms(&format!("+8821654{i:05}"))).collect();
    app.publish_many(&burst).await;
    for _ in &burst {
        let outcome = app.next_outcome(60).await;
        assert_eq!(outcome["type"], "gd_send_sms", "{outcome}");
        assert_eq!(outcome["country"], "882", "{outcome}");
    }
    prometheus
        .wait_for(
            "HeraldNewDestinationCountry pending or firing for 882",
            30,
            || async move {
                let alerts = prometheus.alerts().await;
                for known in ["1", "44"] {
                    assert!(
                        active(&alerts, "HeraldNewDestinationCountry", "country", known).is_empty(),
                        "country {known} was sent to from the start, yet: {alerts:?}"
                    );
                }
                active(&alerts, "HeraldNewDestinationCountry", "country", "882")
                    .iter()
                    .any(|a| a["state"] == "pending" || a["state"] == "firing")
            },
        )
        .await;

    // Every rule of every group of alerts.yml has been evaluated, without error.
    let shipped: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(RULES).unwrap()).unwrap();
    let shipped = shipped["groups"].as_sequence().unwrap();
    let mut expected: Vec<(String, usize)> = shipped
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap().to_owned(),
                g["rules"].as_sequence().unwrap().len(),
            )
        })
        .collect();
    let groups = prometheus.get("/api/v1/rules").await.expect("/api/v1/rules answers")["groups"].clone();
    let groups = groups.as_array().unwrap();
    let mut loaded: Vec<(String, usize)> = groups
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap().to_owned(),
                g["rules"].as_array().unwrap().len(),
            )
        })
        .collect();
    expected.sort();
    loaded.sort();
    assert_eq!(loaded, expected, "Prometheus loaded every group and rule of alerts.yml");
    for group in groups {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(
                rule["health"], "ok",
                "rule {} in {}: {rule}",
                rule["name"], group["name"]
            );
            assert!(
                rule["lastError"].as_str().unwrap_or("").is_empty(),
                "rule {}: {}",
                rule["name"],
                rule["lastError"]
            );
        }
    }

    // herald gone: its scrapes fail and HeraldDown goes pending for it.
    app.stop().await;
    prometheus
        .wait_for("HeraldDown pending for the stopped herald", 20, || async move {
            let alerts = prometheus.alerts().await;
            !active(&alerts, "HeraldDown", "instance", target).is_empty()
        })
        .await;
    eprintln!("live alert check took {:.0?}", started.elapsed());
}

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/herald.json");

/// A Twilio-shaped server that answers each message and call with a sid of its own, as Twilio does.
async fn twilio_answering_fresh_sids() -> wiremock::MockServer {
    use wiremock::matchers::{method, path_regex};
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(method("POST"))
        .and(path_regex(r"^/2010-04-01/Accounts/AC[0-9a-f]+/(Messages|Calls)\.json$"))
        .respond_with(|request: &wiremock::Request| {
            let prefix = if request.url.path().ends_with("/Calls.json") {
                "CA"
            } else {
                "SM"
            };
            let sid = format!("{prefix}{}", uuid::Uuid::new_v4().simple());
            wiremock::ResponseTemplate::new(201).set_body_json(serde_json::json!({"sid": sid, "status": "queued"}))
        })
        .mount(&server)
        .await;
    server
}

/// Sends `channel` to `to` through the Twilio server; returns the job id and the provider's sid.
async fn send_phone(app: &mut TestApp, channel: &str, to: &str) -> (String, String) {
    let mut j = job(channel);
    j["to"] = to.into();
    app.publish(&j).await;
    // The receipt events of earlier messages may come first.
    let outcome = loop {
        let event = app.next_outcome(30).await;
        if !event["type"].as_str().unwrap().ends_with("_status") {
            break event;
        }
    };
    assert_eq!(outcome["type"], format!("gd_send_{channel}"), "{outcome}");
    (
        j["id"].as_str().unwrap().to_owned(),
        outcome["provider_message_id"].as_str().unwrap().to_owned(),
    )
}

async fn verified(app: &TestApp, job_id: &str) {
    let body = serde_json::json!({"job_id": job_id, "verified": true}).to_string();
    app.publish_feedback(body.as_bytes(), Some("application/json")).await;
}

/// The one value of the series of `result` whose `label` is `value`.
fn value_of(result: &[Value], label: &str, value: &str) -> Option<f64> {
    result
        .iter()
        .find(|s| s["metric"][label] == value)
        .map(|s| s["value"][1].as_str().unwrap().parse().unwrap())
}

/// Every query of deploy/grafana/herald.json (a new panel is included as it comes) runs in a real
/// Prometheus scraping herald; after mixed traffic the phone panels count SMS, voice and WhatsApp together
/// (the dashboard's `rate(sms) or rate(voice)` dropped voice series whose labels equal an SMS series':
/// undercounted sends, overstated conversion; WhatsApp, through the outbox, was on no panel), and the
/// receipt panels show the statuses. The same traffic
/// in the default `monitor` mode is over the fraud guard's floors: nothing is refused, and no alert
/// named "refusing" goes pending.
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_panels_count_sms_and_voice_in_a_real_prometheus() {
    use crate::receipts::{CALLBACK, call_status, callback, message_status};
    let started = Instant::now();
    let twilio_server = twilio_answering_fresh_sids().await;
    let mut app = TestApp::spawn(|c| {
        twilio(c, &twilio_server.uri());
        c.twilio.status_callback_url = Some(CALLBACK.parse().unwrap());
        c.channels.whatsapp = Some(vec![herald::config::ProviderKind::Outbox]);
    })
    .await;
    assert_eq!(
        app.config.fraud.mode,
        herald::config::FraudMode::Monitor,
        "the default mode"
    );
    let dir = tempfile::tempdir().unwrap();
    let target = app.http.to_string();
    let prometheus = Prometheus::start(dir.path(), &target);
    let prometheus = &prometheus;
    let http = target.as_str();

    // +44 gets SMS, voice and WhatsApp, +1 SMS only, +33 voice only, +49 WhatsApp only (each phone
    // query's cases).
    const UK: &str = "+447700900123";
    const US: &str = "+14155550123";
    const FR: &str = "+33612345678";
    const DE: &str = "+4915123456789";
    // A first message of each series: a counter's first sample is invisible to rate() and increase().
    let (uk_sms, uk_sms_sid) = send_phone(&mut app, "sms", UK).await;
    let (uk_call, uk_call_sid) = send_phone(&mut app, "voice", UK).await;
    let (_, uk_lost_sid) = send_phone(&mut app, "sms", UK).await;
    send_phone(&mut app, "sms", US).await;
    send_phone(&mut app, "voice", FR).await;
    let (uk_whatsapp, _) = send_phone(&mut app, "whatsapp", UK).await;
    send_phone(&mut app, "whatsapp", DE).await;
    // An invalid WhatsApp job: a failure of the channel (invalid_job) for the failures panel.
    let mut bad = job("whatsapp");
    bad["to"] = "4915123456789".into();
    app.publish(&bad).await;
    assert_eq!(app.next_outcome(30).await["type"], "gd_send_whatsapp_failure");
    verified(&app, &uk_sms).await;
    verified(&app, &uk_call).await;
    verified(&app, &uk_whatsapp).await;
    assert_eq!(
        callback(http, &message_status(&uk_sms_sid, "delivered", None)).await,
        200
    );
    assert_eq!(callback(http, &call_status(&uk_call_sid, "completed")).await, 200);
    assert_eq!(
        callback(http, &message_status(&uk_lost_sid, "undelivered", Some("30003"))).await,
        200
    );
    app.wait_metric(r#"gd_send_verified_total{channel="voice",country="44"}"#, 1.0)
        .await;
    app.wait_metric(r#"gd_send_verified_total{channel="whatsapp",country="44"}"#, 1.0)
        .await;
    prometheus
        .wait_for("Prometheus scrapes the first messages", 60, || async move {
            let seen = |q: &'static str| async move { prometheus.query(q).await.len() };
            seen("gd_send_verified_total").await == 3
                && seen("gd_send_whatsapp_total").await == 2
                && seen("gd_send_whatsapp_failure_total").await == 1
                && seen("gd_send_delivery_total > 0").await == 3
                && seen("gd_send_voice_total").await == 2
                && seen("gd_send_sms_total").await == 2
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // What the panels must show: +44 3 SMS, 2 calls and 2 WhatsApp messages, 3 of them verified, receipts
    // for three; +1 six SMS (over the guard's floors for an unverified destination), +33 one call, +49 two
    // WhatsApp messages.
    let mut uk = Vec::new();
    for channel in ["sms", "sms", "sms", "voice", "voice", "whatsapp", "whatsapp"] {
        uk.push(send_phone(&mut app, channel, UK).await);
    }
    for _ in 0..2 {
        send_phone(&mut app, "whatsapp", DE).await;
    }
    for _ in 0..6 {
        send_phone(&mut app, "sms", US).await;
    }
    send_phone(&mut app, "voice", FR).await;
    verified(&app, &uk[0].0).await;
    verified(&app, &uk[3].0).await;
    verified(&app, &uk[5].0).await;
    for (sid, status) in [
        (&uk[0].1, "delivered"),
        (&uk[1].1, "delivered"),
        (&uk[2].1, "undelivered"),
    ] {
        assert_eq!(
            callback(
                http,
                &message_status(sid, status, Some("30003").filter(|_| status == "undelivered"))
            )
            .await,
            200
        );
    }
    assert_eq!(callback(http, &call_status(&uk[3].1, "completed")).await, 200);
    app.wait_metric(r#"gd_send_verified_total{channel="voice",country="44"}"#, 2.0)
        .await;
    app.wait_metric(r#"gd_send_verified_total{channel="whatsapp",country="44"}"#, 2.0)
        .await;
    prometheus
        .wait_for("Prometheus scrapes the traffic", 60, || async move {
            let total = |q: &'static str| async move {
                prometheus
                    .query(q)
                    .await
                    .first()
                    .map_or(0.0, |s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap())
            };
            total(r#"sum(gd_send_sms_total{country="44"}) + sum(gd_send_voice_total{country="44"})"#).await == 8.0
                && total(r#"sum(gd_send_sms_total{country="1"})"#).await == 7.0
                && total(r#"sum(gd_send_voice_total{country="33"})"#).await == 2.0
                && total(r#"sum(gd_send_whatsapp_total{country="44"})"#).await == 3.0
                && total(r#"sum(gd_send_whatsapp_total{country="49"})"#).await == 3.0
                && total("sum(gd_send_verified_total)").await == 6.0
                && total("sum(gd_send_delivery_total)").await == 7.0
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - 1.0;

    // Every query of every panel runs without error.
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut panels = std::collections::BTreeMap::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap().to_owned();
        let mut results = Vec::new();
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let result = prometheus
                .query_at(expr, at)
                .await
                .unwrap_or_else(|e| panic!("panel {title:?}: {expr}: {e}"));
            results.push(result);
        }
        panels.insert(title, results);
    }
    let panel = |title: &str| -> &Vec<Vec<Value>> {
        panels
            .get(title)
            .unwrap_or_else(|| panic!("no panel {title:?}: {:?}", panels.keys()))
    };
    let one = |q: &str| {
        let q = q.to_owned();
        async move {
            let r = prometheus.query_at(&q, at).await.unwrap();
            assert_eq!(r.len(), 1, "{q}: {r:?}");
            r[0]["value"][1].as_str().unwrap().parse::<f64>().unwrap()
        }
    };

    // Sends by country: SMS, voice and WhatsApp added where a country has them, each alone where it has
    // only that one.
    let by_country = &panel("Phone sends per second by country")[0];
    let uk_sms_rate = one(r#"sum(rate(gd_send_sms_total{country="44"}[5m]))"#).await;
    let uk_voice_rate = one(r#"sum(rate(gd_send_voice_total{country="44"}[5m]))"#).await;
    let uk_whatsapp_rate = one(r#"sum(rate(gd_send_whatsapp_total{country="44"}[5m]))"#).await;
    let shown = value_of(by_country, "country", "44").expect("+44 on the by-country panel");
    assert!(
        (shown - (uk_sms_rate + uk_voice_rate + uk_whatsapp_rate)).abs() < 1e-9,
        "+44: {shown} shown, SMS {uk_sms_rate} + voice {uk_voice_rate} + WhatsApp {uk_whatsapp_rate}"
    );
    // 3 SMS, 2 calls and 2 WhatsApp messages: 7/3 of the SMS rate (rate() extrapolates each series a
    // little differently).
    assert!(
        (2.1..2.6).contains(&(shown / uk_sms_rate)),
        "+44: {shown} against SMS {uk_sms_rate}"
    );
    let us = value_of(by_country, "country", "1").expect("+1 (SMS only) on the by-country panel");
    assert!((us - one(r#"sum(rate(gd_send_sms_total{country="1"}[5m]))"#).await).abs() < 1e-9);
    let fr = value_of(by_country, "country", "33").expect("+33 (voice only) on the by-country panel");
    assert!((fr - one(r#"sum(rate(gd_send_voice_total{country="33"}[5m]))"#).await).abs() < 1e-9);
    let de = value_of(by_country, "country", "49").expect("+49 (WhatsApp only) on the by-country panel");
    assert!((de - one(r#"sum(rate(gd_send_whatsapp_total{country="49"}[5m]))"#).await).abs() < 1e-9);
    assert_eq!(by_country.len(), 4, "{by_country:?}");

    // Sends and failures by channel: WhatsApp's series beside the others'.
    let sends = panel("Sends per second by channel");
    assert!(
        sends
            .iter()
            .any(|r| value_of(r, "provider", "outbox").is_some_and(|v| v > 0.0)),
        "no WhatsApp (outbox) sends on the sends panel: {sends:?}"
    );
    let failures = panel("Failures per second by reason");
    assert!(
        failures.iter().any(|r| value_of(r, "reason", "invalid_job").is_some()),
        "no WhatsApp failure on the failures panel: {failures:?}"
    );

    // Conversion: verified over SMS, voice and WhatsApp sent; 3 of 7 for +44, and 0 where nothing was
    // verified.
    let conversion = &panel("Conversion per country (verified / sent, 1h)")[0];
    let uk_conversion = value_of(conversion, "country", "44").expect("+44 on the conversion panel");
    assert!(
        (0.37..0.49).contains(&uk_conversion),
        "+44 conversion {uk_conversion}, 3 of 7 verified"
    );
    assert_eq!(value_of(conversion, "country", "1"), Some(0.0), "{conversion:?}");
    assert_eq!(value_of(conversion, "country", "33"), Some(0.0), "{conversion:?}");
    assert_eq!(value_of(conversion, "country", "49"), Some(0.0), "{conversion:?}");

    // Receipts by status, and their latency.
    let receipts = &panel("Delivery receipts per second by status")[0];
    for (channel, status) in [("sms", "delivered"), ("sms", "undelivered"), ("voice", "completed")] {
        assert!(
            receipts
                .iter()
                .any(|s| s["metric"]["channel"] == channel && s["metric"]["status"] == status && s["value"][1] != "0"),
            "no {channel} {status} on the receipts panel: {receipts:?}"
        );
    }
    let latency = panel("Delivery receipt latency");
    assert!(
        latency
            .iter()
            .all(|r| value_of(r, "channel", "sms").is_some_and(f64::is_finite)),
        "{latency:?}"
    );

    // The guard counted jobs over their floors (monitor: all of them sent), enough for the alert as it
    // was (any mode) to go pending; named "refusing", it does not, for nothing was refused.
    let monitor = &panel("Fraud guard decisions per second")[0];
    assert!(monitor.iter().any(|s| s["metric"]["mode"] == "monitor"), "{monitor:?}");
    assert!(monitor.iter().all(|s| s["metric"]["mode"] != "enforce"), "{monitor:?}");
    let old_rule = "sum by (channel, scope, mode) (rate(gd_send_fraud_suspected_total[5m])) * 300 >= 3";
    assert!(
        !prometheus.query_at(old_rule, at).await.unwrap().is_empty(),
        "the traffic would not have raised it"
    );
    let evaluated = |at: f64| async move {
        let groups = prometheus.get("/api/v1/rules").await.unwrap()["groups"].clone();
        groups
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["name"] == "herald-fraud-guard")
            .all(|g| {
                chrono::DateTime::parse_from_rfc3339(g["lastEvaluation"].as_str().unwrap())
                    .is_ok_and(|t| t.timestamp_millis() as f64 / 1000.0 > at + 1.0)
            })
    };
    prometheus
        .wait_for("the guard's rules evaluated after the traffic", 30, || evaluated(at))
        .await;
    let alerts = prometheus.alerts().await;
    assert!(
        alerts.iter().all(|a| !a["labels"]["alertname"]
            .as_str()
            .unwrap()
            .starts_with("HeraldFraudGuard")),
        "{alerts:?}"
    );
    app.stop().await;
    eprintln!("live dashboard check took {:.0?}", started.elapsed());
}
