//! Email over a real SMTP server process (aiosmtpd): the delivered MIME, failure classes, STARTTLS,
//! implicit TLS and AUTH.

mod helpers;

use std::time::Duration;

use helpers::{Broker, HeraldProcess, SmtpServer, TestApp, job, process_env};
use herald::config::{HumanDuration, ProviderKind};

fn email(to: &str) -> serde_json::Value {
    let mut j = job("email");
    j["to"] = to.into();
    j
}

/// Checks the MIME of a delivered message: headers, both alternatives, the code in each.
fn assert_mime(message: &serde_json::Value, to: &str, subject: &str) {
    assert_eq!(message["rcpt_tos"], serde_json::json!([to]));
    assert_eq!(message["mail_from"], "no-reply@acme.test");
    let raw = message["data"].as_str().unwrap();
    let mail = mailparse::parse_mail(raw.as_bytes()).unwrap();
    let header = |name: &str| {
        mail.headers
            .iter()
            .find(|h| h.get_key().eq_ignore_ascii_case(name))
            .map(|h| h.get_value())
            .unwrap_or_default()
    };
    assert_eq!(header("Subject"), subject);
    assert_eq!(header("To"), to);
    assert_eq!(header("From"), "Acme <no-reply@acme.test>");
    assert!(!header("Message-ID").is_empty());
    assert_eq!(mail.ctype.mimetype, "multipart/alternative");
    let parts: Vec<_> = mail
        .subparts
        .iter()
        .map(|p| (p.ctype.mimetype.clone(), p.get_body().unwrap()))
        .collect();
    assert_eq!(parts.len(), 2, "{parts:?}");
    let text = &parts.iter().find(|(t, _)| t == "text/plain").expect("a text part").1;
    let html = &parts.iter().find(|(t, _)| t == "text/html").expect("an html part").1;
    assert!(text.contains("Your verification code is 482913."), "{text}");
    assert!(html.contains(">482913</p>"), "{html}");
}

#[tokio::test]
async fn email_is_delivered_as_multipart_text_and_html() {
    let smtp = SmtpServer::start("plain", None);
    let mut app = TestApp::spawn(|c| {
        c.smtp.url = Some(format!("smtp://127.0.0.1:{}", smtp.port).parse().unwrap());
    })
    .await;
    app.publish(&email("jane.doe@example.com")).await;
    let event = app.next_event(20).await;
    assert_eq!(event["type"], "gd_send_email", "{event}");
    assert_eq!(event["provider"], "smtp");
    assert_eq!(event["recipient"], "j***@***.com");
    assert_eq!(event["country"], "none");
    assert!(event["provider_message_id"].as_str().unwrap().contains('@'));
    assert_mime(
        &smtp.next_message(),
        "jane.doe@example.com",
        "Your verification code for Acme",
    );
    app.stop().await;
}

#[tokio::test]
async fn smtp_replies_are_classified_4xx_retried_5xx_rejected() {
    let smtp = SmtpServer::start("plain", None);
    let mut app = TestApp::spawn(|c| {
        c.smtp.url = Some(format!("smtp://127.0.0.1:{}", smtp.port).parse().unwrap());
        c.retry.schedule = vec![HumanDuration(Duration::from_millis(50))];
    })
    .await;
    app.publish(&email("reject@example.com")).await;
    let e = app.next_event(20).await;
    assert_eq!(e["error"]["code"], "provider_rejected", "{e}");
    assert_eq!(e["error"]["provider_code"], "550");
    assert_eq!(e["attempt"], 1);

    app.publish(&email("tempfail@example.com")).await;
    let e = app.next_event(20).await;
    assert_eq!(e["error"]["code"], "attempts_exhausted", "{e}");
    assert_eq!(e["error"]["provider_code"], "451");
    assert_eq!(e["attempt"], 2);
    assert!(!e.to_string().contains("tempfail@"), "the address leaked: {e}");
    assert!(smtp.received_nothing());
    app.stop().await;
}

#[tokio::test]
async fn a_hanging_smtp_server_is_bounded_by_the_timeout() {
    let smtp = SmtpServer::start("plain", None);
    let mut app = TestApp::spawn(|c| {
        c.smtp.url = Some(format!("smtp://127.0.0.1:{}", smtp.port).parse().unwrap());
        c.retry.schedule = vec![];
        c.retry.provider_timeout = HumanDuration(Duration::from_millis(500));
        // Failover: the job still reaches the user through the next provider.
        c.channels.email = Some(vec![ProviderKind::Smtp, ProviderKind::Outbox]);
    })
    .await;
    app.publish(&email("hang@example.com")).await;
    let e = app.next_event(20).await;
    assert_eq!(e["type"], "gd_send_email", "{e}");
    assert_eq!(e["provider"], "outbox");
    app.stop().await;
}

/// STARTTLS with AUTH, and implicit TLS: herald runs as a process trusting the test CA through
/// SSL_CERT_FILE, as an operator with a private CA would run it.
#[tokio::test]
async fn starttls_with_auth_and_implicit_tls() {
    for (mode, url) in [
        ("starttls", "smtp://herald:s3cret@127.0.0.1:{port}?tls=required"),
        ("smtps", "smtps://herald:s3cret@127.0.0.1:{port}"),
    ] {
        let smtp = SmtpServer::start(mode, Some("herald:s3cret"));
        let mut broker = Broker::new(|_| {}).await;
        let mut env = process_env(&broker.config);
        env.push(("HERALD_SMTP__URL".into(), url.replace("{port}", &smtp.port.to_string())));
        env.push(("SSL_CERT_FILE".into(), smtp.ca.as_ref().unwrap().display().to_string()));
        let herald = HeraldProcess::start(&env);
        broker.publish(&email("jane.doe@example.com")).await;
        let event = broker.try_next_event(20).await;
        let event = event.unwrap_or_else(|| panic!("{mode}: no event\n{}", herald.logs()));
        assert_eq!(event["type"], "gd_send_email", "{mode}: {event}\n{}", herald.logs());
        let message = smtp.next_message();
        assert_eq!(message["auth"], true, "{mode}: AUTH was used");
        assert_mime(&message, "jane.doe@example.com", "Your verification code for Acme");
        assert!(!herald.logs().contains("s3cret"), "{mode}: the SMTP password leaked");
    }
}

/// An address the SMTP server cannot take will not become takeable: a non-ASCII address to a server
/// without SMTPUTF8 (lettre refuses it before RCPT), or one lettre or the server finds malformed, ends
/// the job as rejected on the first attempt, instead of being retried until `attempts_exhausted`.
#[tokio::test]
async fn an_address_the_smtp_server_cannot_take_is_rejected_not_retried() {
    let smtp = SmtpServer::start("ascii", None);
    let mut app = TestApp::spawn(|c| {
        c.smtp.url = Some(format!("smtp://127.0.0.1:{}", smtp.port).parse().unwrap());
        c.retry.schedule = vec![HumanDuration(Duration::from_millis(50)); 3];
    })
    .await;
    for to in ["jöhn.doe@example.com", "jane@exämple.com", "jane..doe@example.com"] {
        app.publish(&email(to)).await;
        let e = app.next_event(20).await;
        assert_eq!(e["error"]["code"], "provider_rejected", "{to}: {e}");
        assert_eq!(e["attempt"], 1, "{to}: {e}");
        assert!(!e.to_string().contains(to), "the address leaked: {e}");
    }
    assert!(smtp.received_nothing());
    app.stop().await;
}
