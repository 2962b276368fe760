//! The example MFA server (examples/mfa_server) end to end through herald and the real broker: enroll a
//! phone by SMS and confirm it with the code herald delivered, challenge it by voice, enroll an email; and
//! what goes wrong: wrong codes, reuse, lockout, a throttled delivery.

#[path = "../../examples/mfa_server/app.rs"]
#[allow(dead_code)]
mod mfa_app;

use std::time::Duration;

use crate::helpers;
use crate::helpers::TestApp;
use serde_json::{Value, json};

const MFA_OOB: &str = "http://auth0.com/oauth/grant-type/mfa-oob";

struct Mfa {
    base: String,
    client: reqwest::Client,
}

impl Mfa {
    async fn start(herald: &TestApp) -> Mfa {
        Mfa::start_with(herald, None).await
    }

    async fn start_with(herald: &TestApp, sms_workflow: Option<&str>) -> Mfa {
        let server = mfa_app::start(mfa_app::Settings {
            addr: "127.0.0.1:0".parse().unwrap(),
            amqp_url: helpers::AMQP_URL.into(),
            jobs_queue: herald.config.amqp.jobs_queue.clone(),
            feedback_queue: herald.config.amqp.feedback_queue.clone(),
            client_id: "example-client".into(),
            client_secret: "example-secret".into(),
            friendly_name: "Acme".into(),
            reply_timeout: Duration::from_secs(20),
            sms_workflow: sms_workflow.map(str::to_owned),
        })
        .await
        .expect("the example starts");
        let base = format!("http://{}", server.addr);
        tokio::spawn(server.run());
        Mfa {
            base,
            client: reqwest::Client::new(),
        }
    }

    async fn login(&self, user: &str) -> String {
        let r = self
            .client
            .post(format!("{}/oauth/token", self.base))
            .form(&[("grant_type", "password"), ("username", user), ("password", "pw")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "mfa_required");
        body["mfa_token"].as_str().unwrap().to_owned()
    }

    async fn associate(&self, mfa_token: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}/mfa/associate", self.base))
            .bearer_auth(mfa_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn authenticators(&self, mfa_token: &str) -> Vec<Value> {
        let r = self
            .client
            .get(format!("{}/mfa/authenticators", self.base))
            .bearer_auth(mfa_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    async fn challenge(&self, mfa_token: &str, authenticator_id: &str) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}/mfa/challenge", self.base))
            .json(
                &json!({"client_id": "example-client", "client_secret": "example-secret",
                "challenge_type": "oob", "authenticator_id": authenticator_id, "mfa_token": mfa_token}),
            )
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn confirm(&self, mfa_token: &str, oob_code: &str, binding_code: &str) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}/oauth/token", self.base))
            .form(&[
                ("grant_type", MFA_OOB),
                ("client_id", "example-client"),
                ("client_secret", "example-secret"),
                ("mfa_token", mfa_token),
                ("oob_code", oob_code),
                ("binding_code", binding_code),
            ])
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}

/// The code in the last message herald wrote to its outbox for `to`, and that message's channel. Voice
/// speaks it digit by digit ("4. 8. 2. 9. 1. 3"); the digits are the only ones in the text.
fn last_code(app: &TestApp, to: &str) -> (String, String) {
    let line = app
        .outbox_lines()
        .into_iter()
        .rev()
        .find(|l| l["to"] == to)
        .unwrap_or_else(|| panic!("nothing delivered to {to}"));
    let text = line["body"].as_str().unwrap();
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    assert_eq!(digits.len(), 6, "one 6-digit code in {text:?}");
    (digits, line["channel"].as_str().unwrap().to_owned())
}

fn wrong(code: &str) -> String {
    let d = (code.as_bytes()[0] - b'0' + 1) % 10;
    format!("{d}{}", &code[1..])
}

#[tokio::test]
async fn enroll_by_sms_challenge_by_voice_then_enroll_email() {
    let mut app = TestApp::spawn(|_| {}).await;
    let mfa = Mfa::start(&app).await;
    let token = mfa.login("alice").await;

    // Enroll a phone by SMS: the code arrives through herald, the answer carries the recovery code.
    let (status, enrolled) = mfa
        .associate(
            &token,
            json!({"authenticator_types": ["oob"], "oob_channels": ["sms"], "phone_number": "+14155550123"}),
        )
        .await;
    assert_eq!(status, 200, "{enrolled}");
    assert_eq!(enrolled["authenticator_type"], "oob");
    assert_eq!(enrolled["binding_method"], "prompt");
    assert_eq!(enrolled["oob_channels"], json!(["sms"]));
    assert_eq!(enrolled["recovery_codes"].as_array().unwrap().len(), 1);
    let (code, channel) = last_code(&app, "+14155550123");
    assert_eq!(channel, "sms");
    let event = app.next_event(20).await;
    assert_eq!(
        (event["type"].as_str(), event["action"].as_str()),
        (Some("gd_send_sms"), Some("enrollment"))
    );

    // Not active until confirmed; a second login cannot enroll over it once it is.
    let list = mfa.authenticators(&token).await;
    assert!(
        list.iter().any(|a| a["oob_channel"] == "sms" && a["active"] == false),
        "{list:?}"
    );
    let oob = enrolled["oob_code"].as_str().unwrap();
    let (status, body) = mfa.confirm(&token, oob, &wrong(&code)).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("invalid_grant")), "{body}");
    let (status, body) = mfa.confirm(&token, oob, &code).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    let (status, body) = mfa.confirm(&token, oob, &code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("invalid_grant")),
        "single use: {body}"
    );

    // One number, two authenticators (sms and voice), masked, plus the recovery code.
    let list = mfa.authenticators(&token).await;
    let ids: Vec<&str> = list.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert!(ids.iter().any(|i| i.starts_with("recovery-code|")), "{ids:?}");
    let sms = list.iter().find(|a| a["oob_channel"] == "sms").unwrap();
    let voice = list.iter().find(|a| a["oob_channel"] == "voice").unwrap();
    assert_eq!(sms["active"], true);
    assert_eq!(sms["name"], "+1415*****23");
    assert_eq!(voice["name"], sms["name"]);
    assert_eq!(
        sms["id"].as_str().unwrap().split('|').nth(1),
        voice["id"].as_str().unwrap().split('|').nth(1)
    );
    assert!(!serde_json::to_string(&list).unwrap().contains("+14155550123"));

    // A new login: enrolling again is refused until it passed a challenge.
    let token = mfa.login("alice").await;
    let (status, body) = mfa
        .associate(
            &token,
            json!({"authenticator_types": ["oob"], "oob_channels": ["email"], "email": "alice@example.com"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error_description"], "User is already enrolled.");

    // Challenge by voice: herald places the call with the code spoken digit by digit.
    let (status, challenged) = mfa.challenge(&token, voice["id"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{challenged}");
    assert_eq!(challenged["challenge_type"], "oob");
    assert_eq!(challenged["binding_method"], "prompt");
    let (code, channel) = last_code(&app, "+14155550123");
    assert_eq!(channel, "voice");
    let (status, body) = mfa
        .confirm(&token, challenged["oob_code"].as_str().unwrap(), &code)
        .await;
    assert_eq!(status, 200, "{body}");

    // Now an email authenticator can be added; no recovery codes for a second authenticator.
    let (status, enrolled) = mfa
        .associate(
            &token,
            json!({"authenticator_types": ["oob"], "oob_channels": ["email"], "email": "alice@example.com"}),
        )
        .await;
    assert_eq!(status, 200, "{enrolled}");
    assert!(enrolled.get("recovery_codes").is_none());
    let (code, channel) = last_code(&app, "alice@example.com");
    assert_eq!(channel, "email");
    let (status, _) = mfa.confirm(&token, enrolled["oob_code"].as_str().unwrap(), &code).await;
    assert_eq!(status, 200);
    let list = mfa.authenticators(&token).await;
    let email = list.iter().find(|a| a["oob_channel"] == "email").unwrap();
    assert_eq!(email["active"], true);
    assert_eq!(email["name"], "a***@***.com");
}

#[tokio::test]
async fn wrong_codes_lock_the_challenge_and_throttled_delivery_is_an_error() {
    let app = TestApp::spawn(|c| {
        c.throttle.user_phone = Some("2/h".parse().unwrap());
    })
    .await;
    let mfa = Mfa::start(&app).await;
    let token = mfa.login("bob").await;
    let (status, enrolled) = mfa
        .associate(
            &token,
            json!({"authenticator_types": ["oob"], "oob_channels": ["sms"], "phone_number": "+447700900123"}),
        )
        .await;
    assert_eq!(status, 200, "{enrolled}");
    let (code, _) = last_code(&app, "+447700900123");
    let oob = enrolled["oob_code"].as_str().unwrap();
    for _ in 0..5 {
        let (status, _) = mfa.confirm(&token, oob, &wrong(&code)).await;
        assert_eq!(status, 403);
    }
    let (status, body) = mfa.confirm(&token, oob, &code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("too_many_attempts")),
        "locked: {body}"
    );

    // Enrolling again sends a second SMS (limit 2/h); the third is throttled by herald and the MFA server
    // says so instead of answering as if a code were on its way.
    let (status, _) = mfa
        .associate(
            &token,
            json!({"authenticator_types": ["oob"], "oob_channels": ["sms"], "phone_number": "+447700900123"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = mfa
        .associate(
            &token,
            json!({"authenticator_types": ["oob"], "oob_channels": ["voice"], "phone_number": "+447700900123"}),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "too_many_requests");
    assert!(body.get("oob_code").is_none());

    // Bad requests get OAuth-style errors.
    let (status, body) = mfa
        .associate(
            &token,
            json!({"authenticator_types": ["oob"], "oob_channels": ["sms"], "phone_number": "0800 123"}),
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));
    let (status, _) = mfa
        .associate(
            "not-a-token",
            json!({"authenticator_types": ["oob"], "oob_channels": ["sms"], "phone_number": "+447700900123"}),
        )
        .await;
    assert_eq!(status, 401);
    let (status, body) = mfa.challenge(&token, "sms|dev_unknown").await;
    assert_eq!(status, 404, "{body}");
}

/// Verification feedback (docs/fraud-and-limits.md "Adaptive guard") end to end: the example server reports the codes
/// its users verify on herald.feedback, herald counts them for the number's country, and in enforce mode a pumping run
/// into a country with no verified history is refused after its floor. Bad feedback is dead-lettered, duplicates count
/// once.
#[tokio::test]
async fn verified_codes_reach_the_fraud_guard_and_pumping_is_refused() {
    let mut app = TestApp::spawn(|c| {
        c.fraud.mode = herald::config::FraudMode::Enforce;
        c.fraud.learning_period = herald::config::HumanDuration(Duration::ZERO);
        c.admin.token = herald::config::Secret::new("guard-token");
    })
    .await;
    let mfa = Mfa::start(&app).await;

    // A real user enrolls a +44 phone and types the code in: one verified code for country 44.
    let token = mfa.login("bob").await;
    let (status, enrolled) = mfa
        .associate(
            &token,
            json!({"authenticator_types": ["oob"], "oob_channels": ["sms"], "phone_number": "+447700900123"}),
        )
        .await;
    assert_eq!(status, 200, "{enrolled}");
    let (code, _) = last_code(&app, "+447700900123");
    let (status, body) = mfa.confirm(&token, enrolled["oob_code"].as_str().unwrap(), &code).await;
    assert_eq!(status, 200, "{body}");
    let first = app.next_event(20).await;
    assert_eq!(first["type"], "gd_send_sms");
    app.wait_metric(r#"gd_send_verified_total{channel="sms",country="44"}"#, 1.0)
        .await;

    // Pumping: five codes to a premium range in a country nobody verified in, from five users and IPs.
    let jobs: Vec<Value> = (0..5)
        .map(|i| {
            json!({"id": format!("pump-{i}"), "channel": "sms", "to": format!("+88216540000{i}"),
                   "code": "123456", "user_id": format!("bot{i}"), "ip": format!("203.0.113.{i}")})
        })
        .collect();
    for job in &jobs {
        // One at a time, so that which one is sent does not depend on the order of deliveries.
        app.publish(job).await;
        let event = app.next_event(20).await;
        assert_eq!(event["job_id"], job["id"]);
        if job["id"] == "pump-0" {
            assert_eq!(
                event["type"], "gd_send_sms",
                "the floor lets a new country's first code out: {event}"
            );
        } else {
            assert_eq!(event["type"], "gd_send_sms_failure", "{event}");
            assert_eq!(event["error"]["code"], "suspected_fraud");
            assert_eq!(event["scope"], "country");
        }
    }
    let m = app.settled_metrics().await;
    assert_eq!(
        helpers::metric(
            &m,
            r#"gd_send_fraud_suspected_total{channel="sms",mode="enforce",scope="country"}"#
        ),
        4.0,
        "{m}"
    );
    assert_eq!(helpers::metric(&m, "herald_fraud_enforcing"), 1.0);
    assert_eq!(
        app.outbox_lines().len(),
        2,
        "the real user's code and the pumped floor, nothing else"
    );

    // Operators can see why: the admin API explains the range and the country (token required).
    let client = reqwest::Client::new();
    let explain = |query: &'static str| client.get(app.url(&format!("/admin/api/guard?{query}")));
    assert_eq!(explain("to=%2B8821654").send().await.unwrap().status(), 401);
    let r = explain("to=%2B8821654&ip=203.0.113.1")
        .bearer_auth("guard-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let why: Value = r.json().await.unwrap();
    assert_eq!(
        (why["mode"].as_str(), why["enforcing"].as_bool()),
        (Some("enforce"), Some(true)),
        "{why}"
    );
    let levels = why["levels"].as_array().unwrap();
    let country = levels.iter().find(|l| l["scope"] == "country").unwrap();
    assert_eq!(country["destination"], "882");
    assert_eq!(
        (country["unverified_day"].as_u64(), country["allows"].as_bool()),
        (Some(1), Some(false)),
        "{why}"
    );
    let range = levels.iter().find(|l| l["scope"] == "prefix").unwrap();
    assert_eq!(
        (range["destination"].as_str(), range["unverified_day"].as_u64()),
        (Some("+8821654"), Some(1))
    );
    let ip = levels.iter().find(|l| l["scope"] == "ip").unwrap();
    assert_eq!(
        ip["unverified_day"], 0,
        "pump-1 from this IP was refused, not sent: {why}"
    );
    let uk = explain("to=%2B447700900123")
        .bearer_auth("guard-token")
        .send()
        .await
        .unwrap();
    let uk: Value = uk.json().await.unwrap();
    let country = uk["levels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["scope"] == "country")
        .unwrap()
        .clone();
    assert_eq!(
        (country["verified_day"].as_u64(), country["allows"].as_bool()),
        (Some(1), Some(true)),
        "{uk}"
    );
    for bad in ["to=882", "to=%2B", "to=%2B0123", "to=%2B44&ip=nope"] {
        let r = explain(bad).bearer_auth("guard-token").send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }

    // Feedback: the same job again counts once; an unknown id is counted and dropped; garbage goes to
    // herald.dead with its reason and the consumer goes on.
    let json = Some("application/json");
    let verified = format!(
        r#"{{"job_id":"{}","verified":true}}"#,
        first["job_id"].as_str().unwrap()
    );
    app.publish_feedback(verified.as_bytes(), json).await;
    app.publish_feedback(br#"{"job_id":"never-sent","verified":true}"#, json)
        .await;
    app.publish_feedback(b"not json", json).await;
    app.publish_feedback(br#"{"job_id":"pump-1","verified":"yes"}"#, json)
        .await;
    let m = app
        .wait_metric(r#"herald_feedback_total{result="malformed"}"#, 2.0)
        .await;
    let m = app.wait_metric(r#"herald_feedback_total{result="unknown"}"#, 1.0).await + &m;
    assert_eq!(
        helpers::metric(&m, r#"herald_feedback_total{result="duplicate"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(
        helpers::metric(&m, r#"herald_feedback_total{result="counted"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(
        helpers::metric(&m, r#"gd_send_verified_total{channel="sms",country="44"}"#),
        1.0
    );
    let dead = app.dead_letters(2).await;
    let reasons: Vec<&str> = dead.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "feedback body is not a JSON object",
            "feedback field `verified` must be true or false"
        ]
    );
    assert_eq!(dead[0].0, b"not json", "the message itself is kept");
}

/// With `sms_workflow` the example's SMS codes go out through a herald workflow (WhatsApp, then SMS): the
/// WhatsApp message goes unanswered (no receipt within its wait), the SMS step delivers the same code, and
/// the person enrolls with it.
#[tokio::test]
async fn a_code_reaches_the_person_by_the_second_step_after_the_first_went_unanswered() {
    use herald::config::workflows::{Step, Until, Workflow};
    let mut app = TestApp::spawn(|c| {
        let step = |channel, wait: Option<u64>| Step {
            channel,
            wait: wait.map(|ms| herald::config::HumanDuration(Duration::from_millis(ms))),
        };
        c.workflows.insert(
            "otp".into(),
            Workflow {
                steps: vec![
                    step(herald::job::Channel::Whatsapp, Some(1000)),
                    step(herald::job::Channel::Sms, None),
                ],
                until: Until::Delivered,
            },
        );
    })
    .await;
    let mfa = Mfa::start_with(&app, Some("otp")).await;
    let token = mfa.login("carol").await;
    let (status, enrolled) = mfa
        .associate(
            &token,
            json!({"authenticator_types": ["oob"], "oob_channels": ["sms"], "phone_number": "+14155550123"}),
        )
        .await;
    assert_eq!(status, 200, "{enrolled}");
    let first = app.next_outcome(20).await;
    assert_eq!(
        (&first["type"], &first["step"]),
        (&json!("gd_send_whatsapp"), &json!(1)),
        "{first}"
    );
    let second = app.next_outcome(20).await;
    assert_eq!(
        (&second["type"], &second["step"]),
        (&json!("gd_send_sms"), &json!(2)),
        "{second}"
    );
    assert_eq!(second["job_id"], first["job_id"]);
    let (code, channel) = last_code(&app, "+14155550123");
    assert_eq!(channel, "sms");
    let (status, body) = mfa.confirm(&token, enrolled["oob_code"].as_str().unwrap(), &code).await;
    assert_eq!(status, 200, "{body}");
    let end = app.next_outcome(20).await;
    assert_eq!(
        (&end["type"], &end["result"], &end["steps"]),
        (&json!("gd_send_workflow"), &json!("sent"), &json!(2))
    );
}
