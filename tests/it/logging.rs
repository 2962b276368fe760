//! What `herald serve` writes on stderr, whatever `RUST_LOG` asks for: never a code, a number, an address
//! or the broker credentials (docs/jobs-and-events.md "Events"), and no ERROR line per malformed HTTP request.

use std::io::{Read, Write};
use std::time::Duration;

use crate::helpers;
use crate::helpers::{Broker, HeraldProcess, SmtpServer, job, metric, process_env};

/// Every job of the run: sms and voice through the outbox, email through a real SMTP server.
fn jobs() -> Vec<serde_json::Value> {
    let mut voice = job("voice");
    voice["code"] = "739146".into();
    voice["to"] = "+14155550177".into();
    vec![job("sms"), voice, job("email")]
}

#[tokio::test]
async fn rust_log_trace_never_logs_codes_numbers_addresses_or_broker_credentials() {
    let smtp = SmtpServer::start("plain", None);
    let mut broker = Broker::new(|_| {}).await;
    let mut env = process_env(&broker.config);
    env.push(("HERALD_SMTP__URL".into(), format!("smtp://127.0.0.1:{}", smtp.port)));
    env.push(("RUST_LOG".into(), "trace".into()));
    let mut herald = HeraldProcess::start(&env);

    let jobs = jobs();
    broker.publish_many(&jobs).await;
    for e in broker.events(jobs.len()).await {
        assert!(e.get("error").is_none(), "{e}\n{}", herald.logs());
    }
    smtp.next_message();
    assert_eq!(herald.terminate(), Some(0));
    let logs = herald.logs();

    assert!(
        logs.contains(" TRACE "),
        "RUST_LOG=trace was in effect: {} bytes",
        logs.len()
    );
    let mut secrets = vec![
        // The PLAIN response (\0user\0password) in lapin's connection.start-ok frame, and the URI.
        "guest\\0guest".to_owned(),
        "\\u{0}guest".to_owned(),
        "guest:guest".to_owned(),
        "password".to_owned(),
        // Job bodies in lapin's frames.
        "\"code\"".to_owned(),
    ];
    for j in &jobs {
        for field in ["code", "to"] {
            secrets.push(j[field].as_str().unwrap().to_owned());
        }
    }
    // The number without its `+`, as a template or an SMTP line could show it.
    secrets.push("4155550123".into());
    for secret in &secrets {
        if let Some(at) = logs.find(secret.as_str()) {
            let line = logs[..at].rsplit('\n').next().unwrap_or_default();
            panic!("`{secret}` is in the log: {line}…");
        }
    }
}

/// A scanner sending garbage used to write one ERROR line per request (actix-http's "stream error"); it
/// is counted in `herald_http_connection_errors_total` instead.
#[tokio::test]
async fn malformed_http_requests_are_counted_not_logged_as_errors() {
    let broker = Broker::new(|_| {}).await;
    let mut herald = HeraldProcess::start(&process_env(&broker.config));
    let logs = herald.logs();
    let addr = logs
        .lines()
        .find(|l| l.contains("http listening"))
        .and_then(|l| l.split("addr=").nth(1))
        .map(|a| a.trim().to_owned())
        .unwrap_or_else(|| panic!("no http address in the log:\n{logs}"));

    let garbage: [&[u8]; 4] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\n\r\n",
        b"POST /admin/api/templates HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    ];
    let sent = 40;
    for i in 0..sent {
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(garbage[i % garbage.len()]).unwrap();
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer);
        assert!(
            answer.starts_with(b"HTTP/1.1 400"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(herald.terminate(), Some(0));
    let logs = herald.logs();
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "{} ERROR lines, e.g. {}", errors.len(), errors[0]);
    assert!(
        metric(&metrics, "herald_http_connection_errors_total") >= sent as f64,
        "{metrics}"
    );
}

/// The HTTP providers' client (hyper-util, hyper-rustls, rustls, the platform verifier) at trace level:
/// Twilio over HTTPS, two jobs (the second on the pooled connection), and none of the Authorization
/// header, the auth token, the number or the code is in the log.
#[tokio::test]
async fn rust_log_trace_never_logs_what_an_https_provider_is_sent() {
    let server = helpers::SupportServer::https_twilio();
    let mut broker = Broker::new(|c| {
        helpers::twilio(c, &format!("https://localhost:{}", server.port));
    })
    .await;
    let mut env = process_env(&broker.config);
    env.push((
        "SSL_CERT_FILE".into(),
        server.ca.as_ref().unwrap().display().to_string(),
    ));
    env.push(("RUST_LOG".into(), "trace".into()));
    let mut herald = HeraldProcess::start(&env);
    let mut second = job("sms");
    second["code"] = "739146".into();
    second["to"] = "+14155550177".into();
    let jobs = [job("sms"), second];
    for j in &jobs {
        broker.publish(j).await;
        let e = broker
            .try_next_event(20)
            .await
            .unwrap_or_else(|| panic!("no event\n{}", herald.logs()));
        assert_eq!(e["provider"], "twilio", "{e}\n{}", herald.logs());
        let request = server.next_message();
        assert!(
            request["authorization"]
                .as_str()
                .is_some_and(|a| a.starts_with("Basic "))
        );
    }
    assert_eq!(herald.terminate(), Some(0));
    let logs = herald.logs();
    assert!(logs.contains(" TRACE "), "RUST_LOG=trace was in effect");
    let mut secrets = vec![
        // Basic base64("AC…:test-auth-token"), the token, and the form's fields.
        "QUMwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjp0ZXN0LWF1dGgtdG9rZW4".to_owned(),
        "test-auth-token".to_owned(),
        "4155550123".to_owned(),
        "4155550177".to_owned(),
        "Body=".to_owned(),
    ];
    for j in &jobs {
        secrets.push(j["code"].as_str().unwrap().to_owned());
    }
    for secret in &secrets {
        if let Some(at) = logs.find(secret.as_str()) {
            let line = logs[..at].rsplit('\n').next().unwrap_or_default();
            panic!("a secret is in the log: {line}…");
        }
    }
}

/// The meta provider at trace level (docs/providers/meta.md): a WhatsApp code sent and one Meta refuses,
/// and none of the access token, the app secret, the Bearer header, the number or the code is in the log.
#[tokio::test]
async fn rust_log_trace_never_logs_metas_token_secret_number_or_code() {
    use crate::helpers::meta_api::Answer;
    let (api, server) = crate::provider_meta::meta_api().await;
    api.then([Answer::Sent, Answer::Error(131026)]);
    let mut broker = Broker::new(|c| {
        c.meta = crate::provider_meta::config(&server.uri());
        c.channels.whatsapp = Some(vec![herald::config::ProviderKind::Meta]);
    })
    .await;
    let mut env = process_env(&broker.config);
    env.push(("RUST_LOG".into(), "trace".into()));
    let mut herald = HeraldProcess::start(&env);
    let mut second = job("whatsapp");
    second["code"] = "739146".into();
    second["to"] = "+14155550177".into();
    let jobs = [job("whatsapp"), second];
    for (j, kind) in jobs.iter().zip(["gd_send_whatsapp", "gd_send_whatsapp_failure"]) {
        broker.publish(j).await;
        let e = broker
            .try_next_event(20)
            .await
            .unwrap_or_else(|| panic!("no event\n{}", herald.logs()));
        assert_eq!(e["type"], kind, "{e}\n{}", herald.logs());
    }
    assert_eq!(api.violations(), Vec::<String>::new());
    // A signed status webhook and a refused one: the route logs neither body nor secret.
    let logs = herald.logs();
    let addr = logs
        .lines()
        .find(|l| l.contains("http listening"))
        .and_then(|l| l.split("addr=").nth(1))
        .map(|a| a.trim().to_owned())
        .unwrap_or_else(|| panic!("no http address in the log:\n{logs}"));
    let body = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "messages", "value": {"messaging_product": "whatsapp", "statuses": [
            {"id": crate::helpers::meta_api::wamid(1), "status": "read", "recipient_id": "14155550123"}]}}]}]})
    .to_string();
    let signature = herald::receipts::meta::signature(b"meta-app-secret", body.as_bytes());
    for signature in [signature.as_str(), "sha256=00"] {
        let status = reqwest::Client::new()
            .post(format!("http://{addr}/providers/meta/status"))
            .header("X-Hub-Signature-256", signature)
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .status();
        assert!(matches!(status.as_u16(), 200 | 401), "{status}");
    }
    let event = broker
        .try_next_event(20)
        .await
        .unwrap_or_else(|| panic!("no receipt event\n{}", herald.logs()));
    assert_eq!(event["type"], "gd_send_whatsapp_status", "{event}");
    assert_eq!(herald.terminate(), Some(0));
    let logs = herald.logs();
    assert!(logs.contains(" TRACE "), "RUST_LOG=trace was in effect");
    let config = crate::provider_meta::config(&server.uri());
    let mut secrets = vec![
        config.access_token.expose().to_owned(),
        config.app_secret.expose().to_owned(),
        config.status_callback_verify_token.expose().to_owned(),
        "Bearer".to_owned(),
        "4155550123".to_owned(),
        "4155550177".to_owned(),
    ];
    for j in &jobs {
        secrets.push(j["code"].as_str().unwrap().to_owned());
    }
    for secret in &secrets {
        if let Some(at) = logs.find(secret.as_str()) {
            let line = logs[..at].rsplit('\n').next().unwrap_or_default();
            panic!("a secret is in the log: {line}…");
        }
    }
}
