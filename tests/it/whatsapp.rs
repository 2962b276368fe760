//! The `whatsapp` channel through the whole path (docs/providers/meta.md): with no chain configured it
//! goes to the outbox with the code as its body, its events and metrics are WhatsApp's own, and it counts
//! against the phone limits like SMS.

use std::path::Path;
use std::process::Command;

use crate::helpers::{self, TestApp, assert_event_shape, job, metric};
use herald::config::{Rate, Text, ThrottleConfig};

#[tokio::test]
async fn a_whatsapp_job_without_a_chain_reaches_the_outbox_with_its_code_and_its_own_event_and_metric() {
    let mut app = TestApp::spawn(|_| {}).await;
    let mut j = job("whatsapp");
    j["locale"] = "pt-BR".into();
    app.publish(&j).await;
    let e = app.next_event(20).await;
    assert_event_shape(&e);
    assert_eq!(e["type"], "gd_send_whatsapp", "{e}");
    assert_eq!(e["description"], "WhatsApp message sent");
    assert_eq!(e["channel"], "whatsapp");
    assert_eq!(e["provider"], "outbox");
    assert_eq!(e["recipient"], "+1415*****23");
    assert_eq!(e["country"], "1");
    let lines = app.outbox_lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["channel"], "whatsapp");
    assert_eq!(lines[0]["to"], "+14155550123");
    // No template: the line carries what the approved template would, the code.
    assert_eq!(lines[0]["body"], "482913");
    let m = app.settled_metrics().await;
    assert_eq!(
        metric(
            &m,
            "gd_send_whatsapp_total{action=\"second-factor-authentication\",country=\"1\",provider=\"outbox\"}"
        ),
        1.0,
        "{m}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_whatsapp_job_to_an_email_address_is_invalid() {
    let mut app = TestApp::spawn(|_| {}).await;
    let mut j = job("whatsapp");
    j["to"] = "jane.doe@example.com".into();
    app.publish(&j).await;
    let e = app.next_event(20).await;
    assert_eq!(e["type"], "gd_send_whatsapp_failure", "{e}");
    assert_eq!(e["error"]["code"], "invalid_job");
    assert!(app.outbox_lines().is_empty());
    let m = app.settled_metrics().await;
    assert_eq!(
        metric(
            &m,
            "gd_send_whatsapp_failure_total{country=\"none\",provider=\"none\",reason=\"invalid_job\"}"
        )
        .max(metric(
            &m,
            "gd_send_whatsapp_failure_total{country=\"unknown\",provider=\"none\",reason=\"invalid_job\"}"
        )),
        1.0,
        "{m}"
    );
    app.stop().await;
}

/// A user's SMS and WhatsApp codes share `user_phone`, and one number's share `recipient`.
#[tokio::test]
async fn whatsapp_counts_against_the_phone_limits_with_sms() {
    let mut app = TestApp::spawn(|c| {
        c.throttle = ThrottleConfig {
            user_phone: Some(<Rate as Text>::parse_text("2/h").unwrap()),
            ..ThrottleConfig::unlimited()
        }
    })
    .await;
    app.publish(&job("sms")).await;
    assert_eq!(app.next_event(20).await["type"], "gd_send_sms");
    app.publish(&job("whatsapp")).await;
    assert_eq!(app.next_event(20).await["type"], "gd_send_whatsapp");
    app.publish(&job("whatsapp")).await;
    let e = app.next_event(20).await;
    assert_eq!(e["type"], "gd_send_whatsapp_failure", "{e}");
    assert_eq!(e["error"]["code"], "throttled");
    assert_eq!(e["scope"], "user");
    let m = app.settled_metrics().await;
    assert_eq!(
        metric(&m, "gd_send_throttled_total{channel=\"whatsapp\",scope=\"user\"}"),
        1.0
    );
    app.stop().await;

    let mut app = TestApp::spawn(|c| {
        c.throttle = ThrottleConfig {
            recipient: Some(<Rate as Text>::parse_text("1/h").unwrap()),
            ..ThrottleConfig::unlimited()
        }
    })
    .await;
    app.publish(&job("sms")).await;
    assert_eq!(app.next_event(20).await["type"], "gd_send_sms");
    app.publish(&job("whatsapp")).await;
    let e = app.next_event(20).await;
    assert_eq!(e["error"]["code"], "throttled", "{e}");
    assert_eq!(e["scope"], "recipient");
    app.stop().await;
}

/// The toll-fraud guard (docs/fraud-and-limits.md) budgets WhatsApp codes like SMS: unverified codes into one range go over its floor and
/// are counted as suspected (monitor mode, the default: still sent).
#[tokio::test]
async fn the_fraud_guard_budgets_whatsapp_like_sms() {
    let mut app = TestApp::spawn(|_| {}).await;
    let jobs: Vec<_> = (0..12)
        .map(|n| {
            let mut j = job("whatsapp");
            j["to"] = format!("+1415555{n:04}").into();
            j["user_id"] = format!("user-{n}").into();
            j
        })
        .collect();
    app.publish_many(&jobs).await;
    let events = app.events(jobs.len()).await;
    assert!(events.iter().all(|e| e["type"] == "gd_send_whatsapp"), "{events:?}");
    let m = app.settled_metrics().await;
    let suspected: f64 = ["prefix", "country", "ip"]
        .iter()
        .map(|scope| {
            metric(
                &m,
                &format!("gd_send_fraud_suspected_total{{channel=\"whatsapp\",mode=\"monitor\",scope=\"{scope}\"}}"),
            )
        })
        .sum();
    assert!(suspected >= 1.0, "{m}");
    app.stop().await;
}

/// `[routing.whatsapp]` picks a chain by destination as for SMS; an expired WhatsApp job is never sent.
#[tokio::test]
async fn whatsapp_routes_by_destination_and_an_expired_job_is_not_sent() {
    let (api, server) = crate::provider_meta::meta_api().await;
    let mut app = TestApp::spawn(|c| {
        c.meta = crate::provider_meta::config(&server.uri());
        c.channels.whatsapp = Some(vec![herald::config::ProviderKind::Outbox]);
        // As an operator writes it (`[routing.whatsapp] "44" = ["meta"]`).
        c.routing.whatsapp = serde_json::from_value(serde_json::json!({"44": ["meta"]})).unwrap();
    })
    .await;
    let mut uk = job("whatsapp");
    uk["to"] = "+447700900123".into();
    app.publish(&uk).await;
    assert_eq!(app.next_event(20).await["provider"], "meta");
    app.publish(&job("whatsapp")).await;
    assert_eq!(app.next_event(20).await["provider"], "outbox");
    let mut expired = uk.clone();
    expired["id"] = uuid::Uuid::new_v4().to_string().into();
    expired["expires_at"] = (chrono::Utc::now() - chrono::Duration::seconds(5)).to_rfc3339().into();
    app.publish(&expired).await;
    let e = app.next_event(20).await;
    assert_eq!(e["error"]["code"], "expired", "{e}");
    assert_eq!(api.served(), 1, "the expired code never reached Meta");
    app.stop().await;
}

fn herald_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    // Only what a test sets: no HERALD_* from the developer's shell.
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// `herald templates check` on `dir`: its exit code and stderr.
fn templates_check(dir: &Path, envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = herald_command()
        .args(["templates", "check"])
        .env("HERALD_TEMPLATES__DIR", dir)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `herald send --channel whatsapp` publishes a WhatsApp job (the outbox takes it with nothing configured);
/// `herald templates check` asks for no whatsapp template and refuses a file that claims to be one.
#[tokio::test]
async fn send_takes_the_whatsapp_channel_and_templates_check_asks_for_no_whatsapp_template() {
    let broker = helpers::Broker::new(|_| {}).await;
    let env = helpers::process_env(&broker.config);
    let mut serve = helpers::HeraldProcess::start(&env);
    let out = herald_command()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args([
            "send",
            "--channel",
            "whatsapp",
            "--to",
            "+14155550123",
            "--code",
            "482913",
            "--user",
            "u1",
            "--wait",
            "--timeout",
            "20s",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let event: serde_json::Value = serde_json::from_str(stdout.lines().nth(1).unwrap()).unwrap();
    assert_eq!(event["type"], "gd_send_whatsapp", "{event}");
    assert_eq!(serve.terminate(), Some(0));

    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let (code, stderr) = templates_check(&shipped, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("whatsapp"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    helpers::copy_dir(&shipped, dir.path());
    std::fs::create_dir_all(dir.path().join("whatsapp")).unwrap();
    std::fs::write(
        dir.path().join("whatsapp/second-factor-authentication.en.hbs"),
        "{{code}}",
    )
    .unwrap();
    let (code, stderr) = templates_check(dir.path(), &[]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("whatsapp/second-factor-authentication.en.hbs"),
        "{stderr}"
    );
    assert!(stderr.contains("Meta approved"), "{stderr}");
}
