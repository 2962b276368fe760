//! The shipped alert rules in a real Prometheus (Debian's, installed by .ci/run): it scrapes a herald
//! started here every second and evaluates deploy/prometheus/alerts.yml every second. A minute of normal
//! traffic to +1 and +44, then a burst to +882: every rule evaluates without error, the new destination
//! is caught (pending is enough) and the normal ones are not; herald stopped, HeraldDown goes pending.
//! About 75 s.

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
