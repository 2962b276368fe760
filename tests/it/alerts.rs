//! The Prometheus rules in deploy/prometheus: valid, and each alert firing on its pattern and quiet on
//! normal traffic (`promtool test rules`), against traffic models that gen_alerts_test.py writes into
//! alerts.test.yml. promtool comes with Debian's `prometheus` package. (alerts_live.rs runs the rules in
//! a real Prometheus scraping herald.)

use std::process::Command;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(DIR)
        .output()
        .expect("promtool is needed (Debian package `prometheus`; .ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_are_valid_and_their_tests_pass() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    // 20 toll-fraud and operations rules (recording rules included), 2 delivery-receipt rules, 4 fraud-guard rules.
    assert!(checked.contains("SUCCESS: 26 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// The delivery-receipt and fraud-guard rules (their own groups in alerts.yml) have test files of their own.
#[test]
fn delivery_receipt_and_guard_alerts_fire_on_their_patterns_only() {
    for file in ["receipts.test.yml", "guard.test.yml"] {
        let tested = promtool(&["test", "rules", file]);
        assert!(tested.contains("SUCCESS"), "{file}: {tested}");
    }
}

/// WhatsApp jobs count in the operations rules like the other channels': a Meta outage (whatsapp failures
/// only) raises HeraldHighFailureRatio. Fails while herald:gd_send:rate5m and
/// herald:gd_send_provider_failure:rate5m sum sms, voice and email only (deploy/prometheus/whatsapp.test.yml).
#[test]
fn whatsapp_failures_raise_the_provider_failure_alert() {
    let out = Command::new("promtool")
        .args(["test", "rules", "whatsapp.test.yml"])
        .current_dir(DIR)
        .output()
        .expect("promtool is needed (Debian package `prometheus`; .ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("SUCCESS"), "{text}");
}

/// The committed tests are what the script writes (edit the script, then regenerate).
#[test]
fn alert_tests_are_generated_by_their_script() {
    let out = Command::new("python3")
        .arg("gen_alerts_test.py")
        .current_dir(DIR)
        .output()
        .expect("python3 runs deploy/prometheus/gen_alerts_test.py");
    assert!(
        out.status.success(),
        "gen_alerts_test.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = std::fs::read_to_string(format!("{DIR}/alerts.test.yml")).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout) == committed,
        "deploy/prometheus/alerts.test.yml is not gen_alerts_test.py's output; regenerate it: \
         (cd deploy/prometheus && python3 gen_alerts_test.py > alerts.test.yml)"
    );
}

fn yaml(path: &str) -> serde_yaml::Value {
    let path = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The shipped Prometheus setups load these rules, and scrape herald as job `herald`, which HeraldDown
/// watches (`up{job="herald"}`).
#[test]
fn shipped_prometheus_setups_load_the_rules_and_name_the_job_herald() {
    let compose = yaml("deploy/compose/prometheus.yml");
    assert_eq!(compose["scrape_configs"][0]["job_name"].as_str(), Some("herald"));
    assert_eq!(compose["rule_files"][0].as_str(), Some("/etc/prometheus/alerts.yml"));
    let stack = yaml("deploy/docker-compose.yml");
    let mounts = stack["services"]["prometheus"]["volumes"].as_sequence().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m.as_str() == Some("./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro")),
        "the compose Prometheus does not mount deploy/prometheus/alerts.yml: {mounts:?}"
    );
    // The Prometheus Operator names a ServiceMonitor's job after the Service, unless `jobLabel` says.
    assert_eq!(
        yaml("deploy/kubernetes/service.yaml")["metadata"]["name"].as_str(),
        Some("herald")
    );
    assert!(yaml("deploy/kubernetes/servicemonitor.yaml")["spec"]["jobLabel"].is_null());
    assert!(
        std::fs::read_to_string(format!("{DIR}/alerts.yml"))
            .unwrap()
            .contains(r#"up{job="herald"} == 0"#)
    );
}
