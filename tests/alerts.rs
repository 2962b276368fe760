//! The Prometheus rules in deploy/prometheus: valid, and each alert firing on its pattern and quiet on
//! normal traffic (`promtool test rules`). promtool comes with Debian's `prometheus` package.

use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus"))
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
    // 10 toll-fraud and operations rules, 2 delivery-receipt rules.
    assert!(checked.contains("SUCCESS: 12 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// The delivery-receipt rules (their own group in alerts.yml) have a test file of their own.
#[test]
fn delivery_receipt_alerts_fire_on_their_patterns_only() {
    let tested = promtool(&["test", "rules", "receipts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}
