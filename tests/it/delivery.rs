//! The core delivery path against the real broker: Twilio SMS and voice (a local server speaking the
//! Twilio REST shapes), the outbox default, failures, expiry and reply_to.

use crate::helpers;
use crate::helpers::twilio_api;

use crate::helpers::{TestApp, assert_event_shape, form, job, twilio};
use serde_json::json;
use wiremock::matchers::{basic_auth, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn twilio_created(sid: &str) -> ResponseTemplate {
    // Trimmed from Twilio's 201 response to POST /Messages.json.
    ResponseTemplate::new(201).set_body_json(json!({
        "sid": sid, "status": "queued", "direction": "outbound-api", "num_segments": "1",
        "account_sid": "AC0123456789abcdef0123456789abcdef", "error_code": null, "error_message": null,
    }))
}

#[tokio::test]
async fn sms_reaches_twilio_with_form_fields_and_basic_auth_and_one_event_per_job() {
    let server = MockServer::start().await;
    let mut sid = "";
    let mut app = TestApp::spawn(|c| sid = twilio(c, &server.uri())).await;
    Mock::given(method("POST"))
        .and(path(format!("/2010-04-01/Accounts/{sid}/Messages.json")))
        .and(basic_auth(sid, "test-auth-token"))
        .respond_with(twilio_created("SM0123456789abcdef0123456789abcdef"))
        .expect(3)
        .mount(&server)
        .await;

    let jobs: Vec<_> = (0..3).map(|_| job("sms")).collect();
    for j in &jobs {
        app.publish(j).await;
    }
    let events = app.events(3).await;

    let mut ids: Vec<_> = events
        .iter()
        .map(|e| e["job_id"].as_str().unwrap().to_owned())
        .collect();
    let mut expected: Vec<_> = jobs.iter().map(|j| j["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected, "exactly one event per job id");
    for e in &events {
        assert_event_shape(e);
        assert_eq!(e["type"], "gd_send_sms");
        assert_eq!(e["description"], "SMS sent");
        assert_eq!(e["provider"], "twilio");
        assert_eq!(e["provider_message_id"], "SM0123456789abcdef0123456789abcdef");
        assert_eq!(e["recipient"], "+1415*****23");
        assert_eq!(e["country"], "1");
        assert_eq!(e["channel"], "sms");
        assert_eq!(e["action"], "second-factor-authentication");
        assert_eq!(e["locale"], "en");
        assert_eq!(e["user_id"], "auth0|5f7c8ec7c33c6c004bbafe82");
        assert_eq!(e["ip"], "203.0.113.7");
        assert_eq!(e["attempt"], 1);
        assert!(e.get("error").is_none());
    }
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 3);
    let fields = form(&requests[0].body);
    assert_eq!(fields["To"], "+14155550123");
    assert_eq!(fields["From"], "+15005550006");
    assert_eq!(fields["Body"], "482913 is your verification code for Acme.");
    // No expires_at: retry.validity (10 min), so that Twilio never delivers the code hours late.
    assert_eq!(fields["ValidityPeriod"], "600");
    assert!(!fields.contains_key("MessagingServiceSid"));
    // No `twilio.status_callback_url`: no receipts asked for (tests/it/receipts.rs has them).
    assert!(!fields.contains_key("StatusCallback"));
    assert_eq!(
        requests[0].headers.get("content-type").unwrap(),
        "application/x-www-form-urlencoded"
    );
    app.stop().await;
}

#[tokio::test]
async fn sms_uses_the_messaging_service_when_configured() {
    let server = MockServer::start().await;
    let mut app = TestApp::spawn(|c| {
        twilio(c, &server.uri());
        c.twilio.from = None;
        c.twilio.messaging_service_sid = "MG0123456789abcdef0123456789abcdef".into();
        // Voice needs a From number; this deployment sends voice elsewhere.
        c.channels.voice = Some(vec![herald::config::ProviderKind::Outbox]);
    })
    .await;
    Mock::given(method("POST"))
        .respond_with(twilio_created("SM1"))
        .mount(&server)
        .await;
    app.publish(&job("sms")).await;
    assert_eq!(app.next_event(20).await["type"], "gd_send_sms");
    let fields = form(&server.received_requests().await.unwrap()[0].body);
    assert_eq!(fields["MessagingServiceSid"], "MG0123456789abcdef0123456789abcdef");
    assert!(!fields.contains_key("From"));
    app.stop().await;
}

#[tokio::test]
async fn voice_calls_say_the_code_digit_by_digit_in_the_job_language() {
    let server = MockServer::start().await;
    let mut sid = "";
    let mut app = TestApp::spawn(|c| sid = twilio(c, &server.uri())).await;
    Mock::given(method("POST"))
        .and(path(format!("/2010-04-01/Accounts/{sid}/Calls.json")))
        .and(basic_auth(sid, "test-auth-token"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"sid": "CA0123456789abcdef0123456789abcdef", "status": "queued"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let mut j = job("voice");
    j["locale"] = "es-AR".into();
    app.publish(&j).await;
    let event = app.next_event(20).await;
    assert_event_shape(&event);
    assert_eq!(event["type"], "gd_send_voice");
    assert_eq!(event["provider_message_id"], "CA0123456789abcdef0123456789abcdef");
    assert_eq!(event["locale"], "es-AR");

    let fields = form(&server.received_requests().await.unwrap()[0].body);
    assert_eq!(fields["To"], "+14155550123");
    assert_eq!(fields["From"], "+15005550006");
    let twiml = &fields["Twiml"];
    assert!(
        twiml.starts_with(
            "<Response><Say voice=\"Polly.Mia\" language=\"es-MX\">Su código de verificación para Acme es:</Say>\
             <Pause length=\"1\"/>"
        ),
        "{twiml}"
    );
    assert!(twiml.contains("4. 8. 2. 9. 1. 3."), "{twiml}");
    assert!(twiml.ends_with("</Response>"));
    app.stop().await;
}

/// Issue #17: a job without a locale gets the default locale's text, and now its voice too (it was
/// spoken as en-US whatever `templates.default_locale` was).
#[tokio::test]
async fn voice_without_a_locale_speaks_the_default_locale() {
    let templates = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    helpers::copy_dir(&shipped, templates.path());
    for action in ["enrollment", "second-factor-authentication"] {
        for part in ["subject", "txt", "html"] {
            std::fs::copy(
                shipped.join(format!("email/{action}.en.{part}.hbs")),
                templates.path().join(format!("email/{action}.es.{part}.hbs")),
            )
            .unwrap();
        }
    }
    let server = MockServer::start().await;
    let dir = templates.path().to_owned();
    let mut app = TestApp::spawn(|c| {
        twilio(c, &server.uri());
        c.templates.dir = dir;
        c.templates.default_locale = herald::job::Locale::parse("es").unwrap();
    })
    .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"sid": "CA1", "status": "queued"})))
        .mount(&server)
        .await;
    let mut j = job("voice");
    j.as_object_mut().unwrap().remove("locale");
    app.publish(&j).await;
    assert_eq!(app.next_event(20).await["type"], "gd_send_voice");
    let twiml = form(&server.received_requests().await.unwrap()[0].body)["Twiml"].clone();
    assert!(
        twiml.starts_with("<Response><Say voice=\"Polly.Mia\" language=\"es-MX\">Su código"),
        "{twiml}"
    );
    assert!(!twiml.contains("en-US"), "{twiml}");
    app.stop().await;
}

#[tokio::test]
async fn outbox_is_the_default_provider_and_gets_the_rendered_message() {
    let mut app = TestApp::spawn(|_| {}).await;
    let sms = job("sms");
    let mut email = job("email");
    email["action"] = "enrollment".into();
    let mut voice = job("voice");
    voice["locale"] = "pt-BR".into();
    for j in [&sms, &email, &voice] {
        app.publish(j).await;
    }
    let events = app.events(3).await;
    for e in &events {
        assert_event_shape(e);
        assert_eq!(e["provider"], "outbox");
        assert!(e.get("error").is_none(), "{e}");
    }
    let email_event = events.iter().find(|e| e["type"] == "gd_send_email").unwrap();
    assert_eq!(email_event["recipient"], "j***@***.com");
    assert_eq!(email_event["country"], "none");

    let lines = app.outbox_lines();
    assert_eq!(lines.len(), 3);
    let line = |id: &serde_json::Value| lines.iter().find(|l| l["job_id"] == *id).unwrap().clone();
    let s = line(&sms["id"]);
    assert_eq!(s["to"], "+14155550123");
    assert_eq!(s["body"], "482913 is your verification code for Acme.");
    let e = line(&email["id"]);
    assert_eq!(e["to"], "jane.doe@example.com");
    assert_eq!(e["subject"], "Verify your enrollment with Acme");
    assert!(
        e["body"]
            .as_str()
            .unwrap()
            .contains("Your verification code is 482913.")
    );
    assert!(e["html"].as_str().unwrap().contains(">482913</p>"));
    let v = line(&voice["id"]);
    assert!(
        v["body"]
            .as_str()
            .unwrap()
            .starts_with("Seu código de verificação para Acme é:"),
        "{v}"
    );
    assert!(v["body"].as_str().unwrap().contains("4. 8. 2. 9. 1. 3"));
    app.stop().await;
}

#[tokio::test]
async fn template_locale_falls_back_to_the_language_then_the_default() {
    let mut app = TestApp::spawn(|_| {}).await;
    let mut fr_ca = job("sms");
    fr_ca["locale"] = "fr-CA".into();
    let mut ja = job("sms");
    ja["locale"] = "ja-JP".into();
    app.publish(&fr_ca).await;
    app.publish(&ja).await;
    let events = app.events(2).await;
    assert!(events.iter().any(|e| e["locale"] == "fr-CA"));
    let lines = app.outbox_lines();
    let body = |id: &serde_json::Value| lines.iter().find(|l| l["job_id"] == *id).unwrap()["body"].clone();
    assert_eq!(body(&fr_ca["id"]), "482913 est votre code de vérification pour Acme.");
    assert_eq!(body(&ja["id"]), "482913 is your verification code for Acme.");
    app.stop().await;
}

#[tokio::test]
async fn twilio_errors_become_failure_events_with_the_provider_code() {
    let server = MockServer::start().await;
    let mut app = TestApp::spawn(|c| {
        twilio(c, &server.uri());
        // No retries: a transient failure ends the job at once.
        c.retry.schedule = vec![].into();
    })
    .await;
    // Twilio's real error body for an invalid "To" number (it quotes the number: it must not leak).
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "code": 21211, "message": "The 'To' number +14155550123 is not a valid phone number.",
            "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400})))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_string("upstream down"))
        .mount(&server)
        .await;

    let rejected = job("sms");
    app.publish(&rejected).await;
    let e = app.next_event(20).await;
    assert_event_shape(&e);
    assert_eq!(e["type"], "gd_send_sms_failure");
    assert_eq!(e["error"]["code"], "provider_rejected");
    assert_eq!(e["error"]["provider_code"], "21211");
    assert_eq!(e["provider"], "twilio");

    let unavailable = job("sms");
    app.publish(&unavailable).await;
    let e = app.next_event(20).await;
    assert_eq!(e["type"], "gd_send_sms_failure");
    assert_eq!(e["error"]["code"], "provider_unavailable");

    // Both ended without a delivery: they are kept in the dead-letter queue with the reason.
    let dead = app.dead_letters(2).await;
    assert_eq!(dead.len(), 2);
    assert!(dead[0].1.starts_with("provider_rejected: "), "{}", dead[0].1);
    assert!(!dead[0].1.contains("4155550123"), "{}", dead[0].1);
    app.stop().await;
}

/// The spec-built Twilio (helpers/twilio_api.rs) in front of herald: the SMS herald sends is CreateMessage
/// as twilio-oai defines it, with the job's validity.
async fn spec_twilio(
    customize: impl FnOnce(&mut herald::config::Config),
) -> (TestApp, twilio_api::TwilioApi, MockServer) {
    let server = MockServer::start().await;
    let api = twilio_api::TwilioApi::new("AC0123456789abcdef0123456789abcdef", "test-auth-token");
    Mock::given(wiremock::matchers::any())
        .respond_with(api.clone())
        .mount(&server)
        .await;
    let app = TestApp::spawn(|c| {
        twilio(c, &server.uri());
        customize(c);
    })
    .await;
    (app, api, server)
}

/// Issue 32's first finding: Twilio 21611 ("From queue full": send later) ended the job as permanent. It is
/// transient: retried, then sent.
#[tokio::test]
async fn twilio_21611_queue_full_is_retried_and_then_sent() {
    let (mut app, api, server) = spec_twilio(|c| {
        c.retry.schedule = vec![herald::config::HumanDuration(std::time::Duration::from_millis(50)); 2].into();
    })
    .await;
    api.then([twilio_api::Answer::Error(21611)]);
    app.publish(&job("sms")).await;
    let e = app.next_event(20).await;
    assert_event_shape(&e);
    assert_eq!(e["type"], "gd_send_sms", "{e}");
    assert_eq!(e["provider"], "twilio");
    assert_eq!(e["attempt"], 2);
    assert_eq!(api.violations(), Vec::<String>::new());
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    // retry.validity (10 min) for a job without expires_at.
    assert_eq!(form(&requests[1].body)["ValidityPeriod"], "600");
    app.stop().await;
}

/// Twilio 21408 (SMS not enabled for the region) is about this account, not the message: the next
/// provider of the chain sends it in the same attempt (was permanent: the job failed).
#[tokio::test]
async fn twilio_21408_region_not_permitted_moves_to_the_next_provider() {
    let (mut app, api, _server) = spec_twilio(|c| {
        c.channels.sms = Some(vec![
            herald::config::ProviderKind::Twilio,
            herald::config::ProviderKind::Outbox,
        ]);
        c.retry.schedule = vec![].into();
    })
    .await;
    api.then([twilio_api::Answer::Error(21408)]);
    let j = job("sms");
    app.publish(&j).await;
    let e = app.next_event(20).await;
    assert_eq!(e["type"], "gd_send_sms", "{e}");
    assert_eq!(e["provider"], "outbox");
    assert_eq!(e["attempt"], 1);
    assert_eq!(app.outbox_lines().len(), 1);
    assert_eq!(api.violations(), Vec::<String>::new());
    app.stop().await;
}

/// Issue 31: a message longer than its channel takes (Twilio: 1,600 characters of SMS body, 4,000 of
/// TwiML) is not sent: the job fails for good (`invalid_job`, dead-lettered with why, no retry), and the
/// event and the reason say how long, never what.
#[tokio::test]
async fn a_message_over_its_channels_cap_is_not_sent_and_fails_for_good() {
    let templates = tempfile::tempdir().unwrap();
    helpers::copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"),
        templates.path(),
    );
    // Each prints the vars it names: accepted at load (a job with short vars fits).
    std::fs::write(
        templates.path().join("sms/second-factor-authentication.en.hbs"),
        "{{a}}{{b}} {{code}}",
    )
    .unwrap();
    std::fs::write(
        templates.path().join("voice/second-factor-authentication.en.hbs"),
        "{{a}} {{b}}{{pause}}{{code}}",
    )
    .unwrap();
    let server = MockServer::start().await;
    let dir = templates.path().to_owned();
    let mut app = TestApp::spawn(|c| {
        twilio(c, &server.uri());
        c.templates.dir = dir;
    })
    .await;
    Mock::given(method("POST"))
        .respond_with(twilio_created("SM0123456789abcdef0123456789abcdef"))
        .mount(&server)
        .await;
    let with_vars = |channel: &str, a: usize, b: usize| {
        let mut j = job(channel);
        j["vars"] = json!({"a": "A".repeat(a), "b": "B".repeat(b)});
        j
    };
    let too_long = [with_vars("sms", 900, 900), with_vars("voice", 1000, 1000)];
    for j in &too_long {
        app.publish(j).await;
        let e = app.next_event(20).await;
        assert_event_shape(&e);
        assert_eq!(e["job_id"], j["id"]);
        assert_eq!(e["type"], format!("gd_send_{}_failure", j["channel"].as_str().unwrap()));
        assert_eq!(e["error"]["code"], "invalid_job", "{e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains("characters, more than the"), "{message}");
        assert!(!message.contains("AAAA") && !message.contains("482913"), "{message}");
    }
    assert!(server.received_requests().await.unwrap().is_empty(), "nothing was sent");
    let dead = app.dead_letters(2).await;
    assert_eq!(dead.len(), 2);
    assert_eq!(
        dead[0].1,
        "invalid_job: template sms/second-factor-authentication.en: renders 1807 characters, more than the \
         1600 characters an SMS may have (Twilio's limit)"
    );
    assert!(
        dead[1]
            .1
            .contains("more than the 4000 characters a call's TwiML may have"),
        "{}",
        dead[1].1
    );
    // The same templates with vars that fit: sent, one request each.
    let fits = [with_vars("sms", 793, 800), with_vars("voice", 900, 900)];
    for j in &fits {
        app.publish(j).await;
        assert_eq!(app.next_event(20).await["job_id"], j["id"]);
    }
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    assert_eq!(form(&requests[0].body)["Body"].chars().count(), 1600);
    let m = app.settled_metrics().await;
    assert_eq!(
        helpers::metric(&m, "herald_retries_total"),
        0.0,
        "a permanent failure: never retried"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_expired_job_is_not_sent() {
    let mut app = TestApp::spawn(|_| {}).await;
    let mut j = job("sms");
    j["expires_at"] = "2020-01-01T00:00:00Z".into();
    app.publish(&j).await;
    let e = app.next_event(20).await;
    assert_eq!(e["type"], "gd_send_sms_failure");
    assert_eq!(e["error"]["code"], "expired");
    assert!(app.outbox_lines().is_empty());
    app.stop().await;
}

/// The outside attack's second finding: a Twilio 400 whose `code` echoed the number and the code
/// (`"21211 +14155550400 735162"`) came out verbatim in `error.provider_code`: in the event, on stdout and in
/// the outcome store. A code not of Twilio's shape (an integer of its error dictionary) is dropped; the
/// job fails as before.
#[tokio::test]
async fn a_twilio_code_that_echoes_the_number_and_code_leaves_neither_anywhere() {
    const NUMBER: &str = "4155550400";
    const CODE: &str = "735162";
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "code": format!("21211 +1{NUMBER} {CODE}"),
            "message": format!("The 'To' number +1{NUMBER} is not a valid phone number ({CODE})."),
            "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400})))
        .mount(&server)
        .await;
    let mut broker = helpers::Broker::new(|c| {
        twilio(c, &server.uri());
    })
    .await;
    let mut herald = helpers::HeraldProcess::start(&helpers::process_env(&broker.config));
    let mut j = job("sms");
    j["to"] = format!("+1{NUMBER}").into();
    j["code"] = CODE.into();
    broker.publish(&j).await;
    let e = broker
        .try_next_event(20)
        .await
        .unwrap_or_else(|| panic!("no event\n{}", herald.logs()));
    assert_eq!(e["job_id"], j["id"]);
    assert_eq!(e["type"], "gd_send_sms_failure", "{e}");
    assert_eq!(e["error"]["code"], "provider_rejected", "{e}");
    assert!(e["error"].get("provider_code").is_none(), "{e}");
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    assert_eq!(herald.terminate(), Some(0));

    let state = std::fs::read_dir(&broker.config.state.path).unwrap();
    let mut stored = Vec::new();
    for file in state {
        stored.extend(std::fs::read(file.unwrap().path()).unwrap());
    }
    let stored = String::from_utf8_lossy(&stored);
    let job_id = j["id"].as_str().unwrap();
    assert!(stored.contains(job_id), "the outcome store holds no record of the job");
    let stdout = herald.stdout();
    assert!(stdout.contains(job_id), "no event on stdout:\n{stdout}");
    for (place, text) in [
        ("the event", e.to_string()),
        ("stdout", stdout),
        ("the outcome store", stored.into_owned()),
        ("the log", herald.logs()),
    ] {
        for secret in [NUMBER, CODE] {
            assert!(!text.contains(secret), "{secret} in {place}");
        }
    }
}

/// A provider message that echoes a 4-digit code (below the 6 digits free text is masked from) and the
/// number written with spaces and dashes: neither reaches the event, the dead letter, stdout or the log.
/// Before, both went out verbatim in `error.message` and `x-herald-error`.
#[tokio::test]
async fn a_short_code_or_a_formatted_number_in_a_providers_message_leaves_herald_masked() {
    const CODE: &str = "4829";
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "code": 21211,
            "message": format!("Invalid 'To' (415) 555-0400 for body 'Your code is {CODE}'"),
            "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400})))
        .mount(&server)
        .await;
    let mut broker = helpers::Broker::new(|c| {
        twilio(c, &server.uri());
    })
    .await;
    let mut envs = helpers::process_env(&broker.config);
    envs.push(("RUST_LOG".into(), "trace".into()));
    let mut herald = helpers::HeraldProcess::start(&envs);
    let mut j = job("sms");
    j["to"] = "+14155550400".into();
    j["code"] = CODE.into();
    broker.publish(&j).await;
    let e = broker
        .try_next_event(20)
        .await
        .unwrap_or_else(|| panic!("no event\n{}", herald.logs()));
    assert_eq!(e["error"]["code"], "provider_rejected", "{e}");
    assert_eq!(e["error"]["provider_code"], "21211", "{e}");
    let dead = broker.dead_letters(1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(herald.terminate(), Some(0));
    for (place, text) in [
        ("the event", e.to_string()),
        ("the dead letter's reason", dead[0].1.clone()),
        ("stdout", herald.stdout()),
        ("the log", herald.logs()),
    ] {
        for secret in [CODE, "555-0400", "5550400"] {
            assert!(!text.contains(secret), "{secret} in {place}: {text}");
        }
    }
}

#[tokio::test]
async fn the_outcome_goes_to_reply_to_with_the_correlation_id() {
    let mut app = TestApp::spawn(|_| {}).await;
    let j = job("sms");
    let event = app.publish_and_wait(&j).await;
    assert_eq!(event["job_id"], j["id"]);
    assert_eq!(event["type"], "gd_send_sms");
    // ...and still once on the events exchange.
    assert_eq!(app.events(1).await[0]["job_id"], j["id"]);
    app.stop().await;
}

/// Twilio over HTTPS: herald runs as a process trusting a throwaway CA through SSL_CERT_FILE (as an
/// operator with a private CA or a TLS-intercepting proxy would run it), and the request arrives intact.
#[tokio::test]
async fn sms_reaches_twilio_over_https() {
    let server = helpers::SupportServer::https_twilio();

    let mut sid = "";
    let mut broker = helpers::Broker::new(|c| sid = twilio(c, &format!("https://localhost:{}", server.port))).await;
    let mut env = helpers::process_env(&broker.config);
    env.push((
        "SSL_CERT_FILE".into(),
        server.ca.as_ref().unwrap().display().to_string(),
    ));
    let herald = helpers::HeraldProcess::start(&env);
    broker.publish(&job("sms")).await;
    let event = broker
        .try_next_event(20)
        .await
        .unwrap_or_else(|| panic!("no event\n{}", herald.logs()));
    assert_eq!(event["type"], "gd_send_sms", "{event}\n{}", herald.logs());
    assert_eq!(event["provider"], "twilio");
    assert_eq!(event["provider_message_id"], "SMtls0123456789abcdef0123456789ab");

    let request = server.next_message();
    assert_eq!(request["path"], format!("/2010-04-01/Accounts/{sid}/Messages.json"));
    // Basic base64("AC…:test-auth-token")
    assert_eq!(
        request["authorization"],
        "Basic QUMwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjp0ZXN0LWF1dGgtdG9rZW4="
    );
    let fields = form(request["body"].as_str().unwrap().as_bytes());
    assert_eq!(fields["To"], job("sms")["to"].as_str().unwrap());
    assert_eq!(fields["From"], "+15005550006");
}

/// A CONNECT proxy in front of the local HTTPS Twilio on `target`: it sends the head of each CONNECT it is
/// asked (request line and headers) on the channel, answers 200 and tunnels to `target`.
async fn tunnelling_proxy(target: u16) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = proxy.local_addr().unwrap().port();
    let (asked_tx, asked) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = proxy.accept().await {
            let asked_tx = asked_tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    if conn.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = asked_tx.send(String::from_utf8_lossy(&head).into_owned());
                let Ok(mut upstream) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                if conn
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_ok()
                {
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                }
            });
        }
    });
    (port, asked)
}

/// An operator behind an egress proxy sets HTTPS_PROXY (reqwest, the client before hyper-util, honoured
/// HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY, and so does providers::connector): Twilio's request goes
/// through it as a CONNECT to Twilio's host, with TLS to Twilio inside the tunnel. The proxy here records
/// what it is asked, then tunnels to the local HTTPS Twilio.
#[tokio::test]
async fn an_https_provider_goes_through_https_proxy() {
    let server = helpers::SupportServer::https_twilio();
    let target = server.port;
    let (port, mut asked) = tunnelling_proxy(target).await;
    let mut sid = "";
    let mut broker = helpers::Broker::new(|c| sid = twilio(c, &format!("https://localhost:{target}"))).await;
    let mut env = helpers::process_env(&broker.config);
    env.push(("HTTPS_PROXY".into(), format!("http://127.0.0.1:{port}")));
    env.push((
        "SSL_CERT_FILE".into(),
        server.ca.as_ref().unwrap().display().to_string(),
    ));
    let herald = helpers::HeraldProcess::start(&env);
    broker.publish(&job("sms")).await;
    let head = tokio::time::timeout(std::time::Duration::from_secs(5), asked.recv())
        .await
        .unwrap_or_else(|_| panic!("nothing reached the proxy\n{}", herald.logs()))
        .unwrap();
    assert_eq!(
        head.lines().next(),
        Some(format!("CONNECT localhost:{target} HTTP/1.1").as_str())
    );
    let event = broker
        .try_next_event(20)
        .await
        .unwrap_or_else(|| panic!("no event\n{}", herald.logs()));
    assert_eq!(event["type"], "gd_send_sms", "{event}\n{}", herald.logs());
    assert_eq!(event["provider_message_id"], "SMtls0123456789abcdef0123456789ab");
    let request = server.next_message();
    assert_eq!(request["path"], format!("/2010-04-01/Accounts/{sid}/Messages.json"));
}

/// The egress proxy's credentials (HTTPS_PROXY=http://user:pass@proxy) go in the CONNECT's
/// Proxy-Authorization and nowhere else: not to Twilio inside the tunnel, and not in the log at
/// RUST_LOG=trace, in any form (the password, the encoded user, the Basic value).
#[tokio::test]
async fn the_proxys_credentials_reach_the_proxy_only_and_are_never_logged() {
    let server = helpers::SupportServer::https_twilio();
    let target = server.port;
    let (port, mut asked) = tunnelling_proxy(target).await;
    let mut broker = helpers::Broker::new(|c| {
        twilio(c, &format!("https://localhost:{target}"));
    })
    .await;
    let mut env = helpers::process_env(&broker.config);
    env.push((
        "HTTPS_PROXY".into(),
        format!("http://egress%20user:pr0xy%40s3cret@127.0.0.1:{port}"),
    ));
    env.push((
        "SSL_CERT_FILE".into(),
        server.ca.as_ref().unwrap().display().to_string(),
    ));
    env.push(("RUST_LOG".into(), "trace".into()));
    let mut herald = helpers::HeraldProcess::start(&env);
    broker.publish(&job("sms")).await;
    let head = tokio::time::timeout(std::time::Duration::from_secs(5), asked.recv())
        .await
        .unwrap_or_else(|_| panic!("nothing reached the proxy\n{}", herald.logs()))
        .unwrap();
    let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "egress user:pr0xy@s3cret");
    assert!(
        head.contains(&format!("\r\nProxy-Authorization: Basic {basic}\r\n")),
        "the CONNECT carries the proxy's credentials"
    );
    let event = broker
        .try_next_event(20)
        .await
        .unwrap_or_else(|| panic!("no event\n{}", herald.logs()));
    assert_eq!(event["type"], "gd_send_sms", "{event}\n{}", herald.logs());
    let request = server.next_message();
    assert!(
        request["proxy_authorization"].is_null(),
        "Twilio got the proxy's credentials"
    );
    assert!(
        request["authorization"]
            .as_str()
            .is_some_and(|a| a.starts_with("Basic ")),
        "{request}"
    );
    assert_eq!(herald.terminate(), Some(0));
    let logs = herald.logs();
    assert!(logs.contains(" TRACE "), "RUST_LOG=trace was in effect");
    // The start-up line names the proxy in use, without its credentials.
    let told = logs
        .lines()
        .find(|l| l.contains("HTTP providers go through a proxy"))
        .unwrap_or_else(|| panic!("no proxy line in:\n{logs}"));
    assert!(told.contains(&format!("http://127.0.0.1:{port}")), "{told}");
    assert!(told.contains("HTTPS_PROXY"), "{told}");
    for secret in [
        "s3cret",
        "egress%20user",
        "egress user",
        basic.as_str(),
        &basic[..basic.len() - 4],
    ] {
        if let Some(at) = logs.find(secret) {
            let line = logs[..at].rsplit('\n').next().unwrap_or_default();
            panic!("the proxy's credentials are in the log: {line}…");
        }
    }
}

/// A publisher keying its users by phone number: `user_id` is the recipient's number, which the event
/// carried in full beside the masked `recipient` (outside attack F6).
#[tokio::test]
async fn a_user_id_that_is_the_recipients_number_is_masked_in_the_event() {
    let mut app = TestApp::spawn(|_| {}).await;
    let mut j = job("sms");
    j["to"] = "+14155550199".into();
    j["user_id"] = "+14155550199".into();
    app.publish(&j).await;
    let event = app.next_outcome(20).await;
    assert_eq!(event["user_id"], "+1415*****99", "{event}");
    assert!(!event.to_string().contains("4155550199"), "{event}");
    app.stop().await;
}
