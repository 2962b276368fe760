//! Email over a real SMTP server process (aiosmtpd): the delivered MIME, failure classes, STARTTLS,
//! implicit TLS and AUTH.

use std::time::Duration;

use crate::helpers::{Broker, HeraldProcess, SmtpServer, TestApp, job, process_env};
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
    // Issue 34: the sender's domain, not the machine's host name (`<…@vm>`).
    assert!(
        header("Message-ID").ends_with("@acme.test>"),
        "{}",
        header("Message-ID")
    );
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
    let message = smtp.next_message();
    assert_mime(&message, "jane.doe@example.com", "Your verification code for Acme");
    // Issue 34: EHLO gave the bare host name; by default it is the domain of `smtp.from`.
    assert_eq!(message["helo"], "acme.test");
    app.stop().await;
}

/// `smtp.hello_name` names the client in EHLO; the Message-ID keeps the sender's domain.
#[tokio::test]
async fn smtp_hello_name_is_the_ehlo_name() {
    let smtp = SmtpServer::start("plain", None);
    let mut app = TestApp::spawn(|c| {
        c.smtp.url = Some(format!("smtp://127.0.0.1:{}", smtp.port).parse().unwrap());
        c.smtp.hello_name = Some("mail.acme.test".parse().unwrap());
    })
    .await;
    app.publish(&email("jane.doe@example.com")).await;
    let event = app.next_event(20).await;
    assert_eq!(event["type"], "gd_send_email", "{event}");
    assert!(
        event["provider_message_id"].as_str().unwrap().ends_with("@acme.test"),
        "{event}"
    );
    let message = smtp.next_message();
    assert_eq!(message["helo"], "mail.acme.test");
    assert_mime(&message, "jane.doe@example.com", "Your verification code for Acme");
    app.stop().await;
}

#[tokio::test]
async fn smtp_replies_are_classified_4xx_retried_5xx_rejected() {
    let smtp = SmtpServer::start("plain", None);
    let mut app = TestApp::spawn(|c| {
        c.smtp.url = Some(format!("smtp://127.0.0.1:{}", smtp.port).parse().unwrap());
        c.retry.schedule = vec![HumanDuration(Duration::from_millis(50))].into();
    })
    .await;
    app.publish(&email("reject@example.com")).await;
    let e = app.next_event(20).await;
    assert_eq!(e["error"]["code"], "provider_rejected", "{e}");
    assert_eq!(e["error"]["provider_code"], "550 5.1.1");
    assert_eq!(e["attempt"], 1);

    app.publish(&email("tempfail@example.com")).await;
    let e = app.next_event(20).await;
    assert_eq!(e["error"]["code"], "attempts_exhausted", "{e}");
    assert_eq!(e["error"]["provider_code"], "451 4.3.0");
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
        c.retry.schedule = vec![].into();
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
        c.retry.schedule = vec![HumanDuration(Duration::from_millis(50)); 3].into();
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

/// A few rows of docs/providers/smtp.md's table through the real server: a refusal about the sender
/// (relaying denied 5.7.1, SPF/DMARC 5.7.26, the sender's address 5.1.7) hands the job to the next
/// provider of the chain; a recipient's (5.1.1, 5.2.2 mailbox full, a bare 550) ends it; 452 4.2.2 is
/// retried, and with no next provider a sender refusal ends the job without a retry. Before, every 5xx ended the job as permanent and the enhanced code was not in
/// `error.provider_code`.
#[tokio::test]
async fn smtp_refusals_about_the_sender_move_to_the_next_provider() {
    let smtp = SmtpServer::start("plain", None);
    let mut app = TestApp::spawn(|c| {
        c.smtp.url = Some(format!("smtp://127.0.0.1:{}", smtp.port).parse().unwrap());
        c.retry.schedule = vec![HumanDuration(Duration::from_millis(50))].into();
        c.channels.email = Some(vec![ProviderKind::Smtp, ProviderKind::Outbox]);
    })
    .await;
    for local in [
        "reply-550-5.7.1",
        "reply-550-5.7.26",
        "reply-553-5.1.7",
        "reply-554-5.7.1",
    ] {
        app.publish(&email(&format!("{local}@example.com"))).await;
        let e = app.next_event(20).await;
        assert_eq!(
            (e["type"].as_str(), e["provider"].as_str()),
            (Some("gd_send_email"), Some("outbox")),
            "{local}: {e}"
        );
        assert_eq!(e["attempt"], 1, "{local}: {e}");
    }
    for (local, code) in [
        ("reply-550-5.1.1", "550 5.1.1"),
        ("reply-552-5.2.2", "552 5.2.2"),
        ("reply-550", "550"),
    ] {
        app.publish(&email(&format!("{local}@example.com"))).await;
        let e = app.next_event(20).await;
        assert_eq!(e["error"]["code"], "provider_rejected", "{local}: {e}");
        assert_eq!(e["error"]["provider_code"], code, "{local}: {e}");
        assert_eq!(e["attempt"], 1, "{local}: {e}");
        assert!(!e.to_string().contains(local), "the address leaked: {e}");
    }
    assert!(smtp.received_nothing());
    app.stop().await;

    // With no next provider: a refusal about the sender is not retried (it would be refused again), a
    // full mailbox's 452 is.
    let mut app = TestApp::spawn(|c| {
        c.smtp.url = Some(format!("smtp://127.0.0.1:{}", smtp.port).parse().unwrap());
        c.retry.schedule = vec![HumanDuration(Duration::from_millis(50))].into();
    })
    .await;
    app.publish(&email("reply-550-5.7.1@example.com")).await;
    let e = app.next_event(20).await;
    assert_eq!(e["error"]["code"], "provider_rejected", "{e}");
    assert_eq!(e["error"]["provider_code"], "550 5.7.1");
    assert_eq!(e["attempt"], 1);
    app.publish(&email("reply-452-4.2.2@example.com")).await;
    let e = app.next_event(20).await;
    assert_eq!(e["error"]["code"], "attempts_exhausted", "{e}");
    assert_eq!(e["error"]["provider_code"], "452 4.2.2");
    assert_eq!(e["attempt"], 2);
    assert!(smtp.received_nothing());
    app.stop().await;
}

/// AUTH refused (535 5.7.8, a wrong password) is the account's, not the message's: the next provider
/// sends it in the same attempt. Before, it ended the job as permanent. (Over implicit TLS: lettre
/// offers no AUTH on a plain connection.)
#[tokio::test]
async fn refused_smtp_credentials_move_to_the_next_provider() {
    let smtp = SmtpServer::start("smtps", Some("herald:s3cret"));
    let mut broker = Broker::new(|c| {
        c.channels.email = Some(vec![ProviderKind::Smtp, ProviderKind::Outbox]);
    })
    .await;
    let mut env = process_env(&broker.config);
    env.push((
        "HERALD_SMTP__URL".into(),
        format!("smtps://herald:wrong@127.0.0.1:{}", smtp.port),
    ));
    env.push(("SSL_CERT_FILE".into(), smtp.ca.as_ref().unwrap().display().to_string()));
    let herald = HeraldProcess::start(&env);
    broker.publish(&email("jane.doe@example.com")).await;
    let event = broker.try_next_event(20).await;
    let event = event.unwrap_or_else(|| panic!("no event\n{}", herald.logs()));
    assert_eq!(
        (
            event["type"].as_str(),
            event["provider"].as_str(),
            event["attempt"].as_u64()
        ),
        (Some("gd_send_email"), Some("outbox"), Some(1)),
        "{event}\n{}",
        herald.logs()
    );
    let logs = herald.logs();
    assert!(logs.contains("provider cannot send it"), "{logs}");
    assert!(logs.contains("535 5.7.8"), "{logs}");
    assert!(smtp.received_nothing());
    assert!(!logs.contains("wrong@"), "the SMTP URL leaked");
}
