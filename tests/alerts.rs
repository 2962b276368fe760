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
    assert!(checked.contains("SUCCESS: 20 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
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
