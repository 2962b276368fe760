//! Amazon SNS and Plivo against servers written from their own published specs (botocore's SNS model,
//! plivo-python and Plivo's API docs; tests/it/helpers/{sns,plivo}.rs): each request checked field by field as
//! the provider checks it, each documented answer given with the provider's status and body, and herald's
//! verdict on it. Then through the broker: a refusal tied to the account moves to the next provider.

use crate::helpers::plivo as plivo_spec;
use crate::helpers::sns as sns_spec;

use std::time::Duration;

use crate::helpers::{TestApp, job, phone_job, provider_client as client, sms, verdict};
use herald::config::{HttpUrl, PlivoConfig, ProviderKind, Secret, SnsConfig};
use herald::providers::plivo::Plivo;
use herald::providers::sns::{Sns, class_of};
use herald::providers::{Class, Provider, Receipt, Validity};
use serde_json::json;
use wiremock::ResponseTemplate;

const NUMBER: &str = "+14155550123";
const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

// --- SNS ------------------------------------------------------------------------------------------------

fn sns_expect() -> sns_spec::Expect {
    sns_spec::Expect {
        access_key: "AKIDEXAMPLE".into(),
        secret: AWS_SECRET.into(),
        region: "eu-west-1".into(),
        session_token: None,
        sender_id: None,
    }
}

fn sns_config(base_url: &str) -> SnsConfig {
    SnsConfig {
        region: "eu-west-1".into(),
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: Secret::new(AWS_SECRET),
        session_token: Secret::default(),
        sender_id: String::new(),
        base_url: Some(base_url.parse::<HttpUrl>().unwrap()),
    }
}

/// One send through an SNS spec server answering `answer`: herald's verdict, and what the server refused.
async fn through_sns(answer: sns_spec::Answer) -> (String, Vec<String>) {
    let spec = sns_spec::SnsSpec::new(sns_expect(), answer);
    let server = spec.start().await;
    let sns = Sns::new(&sns_config(&server.uri()), client()).unwrap();
    let got = verdict(sns.send(&phone_job(NUMBER), &sms("482913"), Validity::default()).await);
    (got, spec.problems())
}

#[test]
fn the_test_verifier_reproduces_aws_published_sigv4_vectors() {
    use sns_spec::sigv4;
    // aws-sig-v4-test-suite: get-vanilla and post-vanilla (AKIDEXAMPLE, us-east-1, service "service").
    let headers = [
        ("host".to_owned(), "example.amazonaws.com".to_owned()),
        ("x-amz-date".to_owned(), "20150830T123600Z".to_owned()),
    ];
    for (method, expected_sts, expected) in [
        (
            "GET",
            Some("bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ),
        (
            "POST",
            None,
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        ),
    ] {
        let creq = sigv4::canonical_request(method, "/", "", &headers, b"");
        let sts = sigv4::string_to_sign("20150830T123600Z", "us-east-1", "service", &creq);
        if let Some(hash) = expected_sts {
            assert!(sts.ends_with(hash), "{sts}");
        }
        assert_eq!(
            sigv4::signature(AWS_SECRET, "20150830T123600Z", "us-east-1", "service", &sts),
            expected,
            "{method}"
        );
    }
}

#[tokio::test]
async fn sns_publishes_the_signed_query_request_aws_documents() {
    // With a sender id and temporary credentials.
    let expect = sns_spec::Expect {
        session_token: Some("session-token-example".into()),
        sender_id: Some("Acme".into()),
        ..sns_expect()
    };
    let spec = sns_spec::SnsSpec::new(expect, sns_spec::Answer::Published);
    let server = spec.start().await;
    let mut config = sns_config(&server.uri());
    config.sender_id = "Acme".into();
    config.session_token = Secret::new("session-token-example");
    let sns = Sns::new(&config, client()).unwrap();
    assert_eq!(sns.name(), ProviderKind::Sns);
    let receipt = sns
        .send(
            &phone_job(NUMBER),
            &sms("482913 is your code for Acme."),
            Validity::default(),
        )
        .await
        .unwrap();
    assert_eq!(spec.problems(), Vec::<String>::new());
    let published = spec.published();
    assert_eq!(published.len(), 1);
    assert_eq!(receipt, Receipt::sent(Some(published[0].message_id.clone())));
    assert_eq!(
        (published[0].phone.as_str(), published[0].message.as_str()),
        (NUMBER, "482913 is your code for Acme.")
    );
    let requests = server.received_requests().await.unwrap();
    let signed = sns_spec::verify_sigv4(&requests[0], "AKIDEXAMPLE", AWS_SECRET, "eu-west-1");
    for name in ["content-type", "host", "x-amz-date", "x-amz-security-token"] {
        assert!(signed.iter().any(|s| s == name), "{name} is not signed: {signed:?}");
    }

    // Without either: neither is sent (the server refuses a SenderID or a token it was not given).
    let spec = sns_spec::SnsSpec::new(sns_expect(), sns_spec::Answer::Published);
    let server = spec.start().await;
    let sns = Sns::new(&sns_config(&server.uri()), client()).unwrap();
    let got = verdict(sns.send(&phone_job(NUMBER), &sms("482913"), Validity::default()).await);
    assert_eq!((got.as_str(), spec.problems()), ("sent", vec![]));

    // SNS has no validity field: a short validity adds nothing the server would refuse.
    let spec = sns_spec::SnsSpec::new(sns_expect(), sns_spec::Answer::Published);
    let server = spec.start().await;
    let sns = Sns::new(&sns_config(&server.uri()), client()).unwrap();
    sns.send(&phone_job(NUMBER), &sms("482913"), validity_of(30))
        .await
        .unwrap();
    assert_eq!(spec.problems(), Vec::<String>::new());
}

/// Every documented error code, answered by the spec server with its own status: herald's verdict is the
/// table's (docs/providers/sns.md). Before, `AuthorizationError`, `InvalidClientTokenId`,
/// `SignatureDoesNotMatch` and the KMS errors ended the job as permanent though another provider could
/// send it, `RequestExpired` was retried with the same skewed clock, and the table named
/// `InvalidParameterValue` where the model's Publish code is `ParameterValueInvalid`.
#[tokio::test]
async fn every_documented_sns_error_is_classified_through_the_spec_server() {
    let spelled = |code: &str| match class_of(code) {
        Some(Class::Transient) => format!("transient {code} -"),
        Some(Class::Permanent) => format!("permanent {code}"),
        Some(Class::NextProvider) => format!("next provider {code}"),
        None => panic!("{code} has no class"),
    };
    for (code, _) in sns_spec::ERRORS {
        let (got, problems) = through_sns(sns_spec::Answer::Error(code)).await;
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(got, spelled(code), "{code}");
    }
    // The rows that changed, spelled out.
    for (code, expected) in [
        ("ParameterValueInvalid", "permanent ParameterValueInvalid"),
        ("OptedOut", "permanent OptedOut"),
        ("AuthorizationError", "next provider AuthorizationError"),
        ("InvalidClientTokenId", "next provider InvalidClientTokenId"),
        ("SignatureDoesNotMatch", "next provider SignatureDoesNotMatch"),
        ("KMSAccessDenied", "next provider KMSAccessDenied"),
        ("RequestExpired", "next provider RequestExpired"),
        ("KMSThrottling", "transient KMSThrottling -"),
        ("Throttling", "transient Throttling -"),
        ("Throttled", "transient Throttled -"),
    ] {
        assert_eq!(through_sns(sns_spec::Answer::Error(code)).await.0, expected);
    }
}

#[tokio::test]
async fn sns_answers_outside_the_table_go_by_status_and_a_taken_publish_is_never_sent_again() {
    let raw = |r: ResponseTemplate| sns_spec::Answer::Raw(r);
    let unknown = |status: u16| {
        ResponseTemplate::new(status).set_body_raw(
            "<ErrorResponse><Error><Type>Sender</Type><Code>SomethingNew</Code><Message>m</Message></Error>\
             <RequestId>r</RequestId></ErrorResponse>",
            "text/xml",
        )
    };
    let cases = [
        (raw(unknown(400)), "permanent SomethingNew"),
        (raw(unknown(502)), "transient SomethingNew -"),
        (
            raw(sns_spec::error_response("ServiceUnavailable", "busy").insert_header("Retry-After", "4")),
            "transient ServiceUnavailable 4",
        ),
        (
            raw(ResponseTemplate::new(502).set_body_string("<html>bad gateway")),
            "transient - -",
        ),
        // Accepted, then: the publish is SNS's, sending it again would repeat it.
        (
            raw(ResponseTemplate::new(200).set_body_string("garbage")),
            "unclear unreadable_answer",
        ),
        (
            raw(sns_spec::publish_response("m-1").set_delay(Duration::from_secs(5))),
            "unclear timeout",
        ),
    ];
    for (answer, expected) in cases {
        let (got, problems) = through_sns(answer).await;
        assert_eq!(problems, Vec::<String>::new());
        assert_eq!(got, expected);
    }
    // SNS's error text quotes the number: it is scrubbed.
    let spec = sns_spec::SnsSpec::new(sns_expect(), sns_spec::Answer::Error("InvalidParameter"));
    let server = spec.start().await;
    let sns = Sns::new(&sns_config(&server.uri()), client()).unwrap();
    let e = sns
        .send(&phone_job(NUMBER), &sms("482913"), Validity::default())
        .await
        .unwrap_err();
    assert!(e.message().starts_with("sns answered 400 InvalidParameter: "), "{e}");
    assert!(!e.message().contains("4155550123"), "{e}");
}

/// The spec server refuses what AWS refuses: a wrong secret is `SignatureDoesNotMatch` (403), which herald
/// takes to the next provider.
#[tokio::test]
async fn a_signature_aws_would_refuse_is_refused_and_moves_to_the_next_provider() {
    let spec = sns_spec::SnsSpec::new(sns_expect(), sns_spec::Answer::Published);
    let server = spec.start().await;
    let mut config = sns_config(&server.uri());
    config.secret_access_key = Secret::new("not-the-secret");
    let sns = Sns::new(&config, client()).unwrap();
    let got = verdict(sns.send(&phone_job(NUMBER), &sms("482913"), Validity::default()).await);
    assert_eq!(got, "next provider SignatureDoesNotMatch");
    assert_eq!(spec.problems().len(), 1);
    assert!(spec.problems()[0].starts_with("SignatureDoesNotMatch"));
}

// --- Plivo ----------------------------------------------------------------------------------------------

fn plivo_expect() -> plivo_spec::Expect {
    plivo_spec::Expect {
        auth_id: "MAXXXXXXXXXXXXXXXXXX".into(),
        auth_token: "plivo-token".into(),
        src: "14155550100".into(),
    }
}

fn plivo_config(base_url: &str) -> PlivoConfig {
    // From the defaults, so that a key added to `[plivo]` keeps its default here.
    let mut config = herald::config::Config::default().plivo;
    config.auth_id = "MAXXXXXXXXXXXXXXXXXX".into();
    config.auth_token = Secret::new("plivo-token");
    config.from = "+14155550100".into();
    config.base_url = base_url.parse::<HttpUrl>().unwrap();
    config
}

async fn through_plivo(answer: plivo_spec::Answer, validity: Validity) -> (String, plivo_spec::PlivoSpec) {
    let spec = plivo_spec::PlivoSpec::new(plivo_expect(), answer);
    let server = spec.start().await;
    let plivo = Plivo::new(&plivo_config(&server.uri()), client()).unwrap();
    let got = verdict(plivo.send(&phone_job(NUMBER), &sms("482913"), validity).await);
    (got, spec)
}

fn validity_of(seconds: u64) -> Validity {
    let mut job = phone_job(NUMBER);
    let now = chrono::Utc::now();
    job.expires_at = Some(now + chrono::Duration::seconds(seconds as i64));
    Validity::for_job(&job, Duration::from_secs(600), now)
}

/// `message_expiry` is the job's validity clamped to Plivo's 5–10 799 s. Before, no validity was sent:
/// Plivo kept trying a code for its default three hours.
#[tokio::test]
async fn plivo_sends_the_json_plivo_documents_with_the_jobs_validity() {
    let spec = plivo_spec::PlivoSpec::new(plivo_expect(), plivo_spec::Answer::Queued);
    let server = spec.start().await;
    let plivo = Plivo::new(&plivo_config(&server.uri()), client()).unwrap();
    assert_eq!(plivo.name(), ProviderKind::Plivo);
    let receipt = plivo
        .send(
            &phone_job(NUMBER),
            &sms("482913 is your code for Acme."),
            Validity::default(),
        )
        .await
        .unwrap();
    assert_eq!(spec.problems(), Vec::<String>::new());
    let queued = spec.queued();
    assert_eq!(receipt, Receipt::sent(Some(queued[0].message_uuid.clone())));
    assert_eq!(
        queued[0].body,
        json!({"src": "14155550100", "dst": "14155550123", "text": "482913 is your code for Acme.",
               "message_expiry": 600})
    );
    for (seconds, sent) in [(2, 5), (300, 300), (5 * 3600, 10_799)] {
        let (got, spec) = through_plivo(plivo_spec::Answer::Queued, validity_of(seconds)).await;
        assert_eq!((got.as_str(), spec.problems()), ("sent", vec![]));
        let expiry = spec.queued()[0].body["message_expiry"].as_u64().unwrap();
        // The job's time left shrinks by a second or so between its computation and the send.
        assert!(
            expiry == sent || (sent > 5 && sent < 10_799 && expiry + 2 >= sent),
            "{seconds}: {expiry}"
        );
    }
}

/// Plivo's statuses and error texts (docs/providers/plivo.md): 401 and 403 (geo permissions) and a 400
/// about the sender move to the next provider; before, each ended the job as permanent.
#[tokio::test]
async fn plivo_answers_are_classified_as_documented_through_the_spec_server() {
    use plivo_spec::Answer::{Error, Raw};
    let cases = [
        (Error(400, "invalid_parameter".into()), "permanent 400"),
        (Error(400, "Invalid dst number".into()), "permanent 400"),
        (Error(400, "src parameter not present".into()), "next provider 400"),
        (
            Error(400, "Alphanumeric sender id not enabled for your account".into()),
            "next provider 400",
        ),
        (Error(401, "authentication_failed".into()), "next provider 401"),
        (
            Error(
                403,
                "Geo permissions are not enabled for this destination country".into(),
            ),
            "next provider 403",
        ),
        (Error(404, "not found".into()), "permanent 404"),
        (Error(405, "method not allowed".into()), "permanent 405"),
        (Error(409, "conflict".into()), "permanent 409"),
        (Error(422, "unprocessable entity".into()), "permanent 422"),
        (Error(500, "server error".into()), "transient 500 -"),
        (
            Raw(plivo_spec::error_response(429, "rate_limit_exceeded").insert_header("Retry-After", "3")),
            "transient 429 3",
        ),
        (
            Raw(ResponseTemplate::new(503).set_body_string("<html>")),
            "transient 503 -",
        ),
        (
            Raw(plivo_spec::queued_response("u-1").set_delay(Duration::from_secs(5))),
            "unclear timeout",
        ),
        // A 202 with garbage is still queued at Plivo: sent, without an id.
        (
            Raw(ResponseTemplate::new(202).set_body_string("garbage")),
            "unclear unreadable_answer",
        ),
    ];
    for (answer, expected) in cases {
        let (got, spec) = through_plivo(answer.clone(), Validity::default()).await;
        assert_eq!(spec.problems(), Vec::<String>::new());
        assert_eq!(got, expected, "{answer:?}");
    }
    // A wrong token: the server refuses it as Plivo does (401), herald moves on.
    let spec = plivo_spec::PlivoSpec::new(plivo_expect(), plivo_spec::Answer::Queued);
    let server = spec.start().await;
    let mut config = plivo_config(&server.uri());
    config.auth_token = Secret::new("wrong");
    let plivo = Plivo::new(&config, client()).unwrap();
    let got = verdict(
        plivo
            .send(&phone_job(NUMBER), &sms("482913"), Validity::default())
            .await,
    );
    assert_eq!((got.as_str(), spec.problems().len()), ("next provider 401", 1));
    // The error text is Plivo's, scrubbed of the number it may quote.
    let spec = plivo_spec::PlivoSpec::new(plivo_expect(), Error(400, format!("{NUMBER} is not a valid dst")));
    let server = spec.start().await;
    let plivo = Plivo::new(&plivo_config(&server.uri()), client()).unwrap();
    let e = plivo
        .send(&phone_job(NUMBER), &sms("482913"), Validity::default())
        .await
        .unwrap_err();
    assert_eq!(e.message(), "plivo answered 400: +[number] is not a valid dst");
}

// --- Through the broker ---------------------------------------------------------------------------------

/// SNS refusing the account (`AuthorizationError`, 403) and Plivo refusing the destination country (403)
/// each hand the job to the next provider in the same attempt; before, each ended it as permanent.
#[tokio::test]
async fn an_account_refusal_moves_the_job_to_the_next_provider() {
    let sns = sns_spec::SnsSpec::new(sns_expect(), sns_spec::Answer::Error("AuthorizationError"));
    let sns_server = sns.start().await;
    let plivo = plivo_spec::PlivoSpec::new(plivo_expect(), plivo_spec::Answer::Queued);
    let plivo_server = plivo.start().await;
    let (sns_uri, plivo_uri) = (sns_server.uri(), plivo_server.uri());
    let mut app = TestApp::spawn(|c| {
        c.sns = sns_config(&sns_uri);
        c.plivo = plivo_config(&plivo_uri);
        c.channels.sms = Some(vec![ProviderKind::Sns, ProviderKind::Plivo]);
    })
    .await;
    app.publish(&job("sms")).await;
    let e = app.next_outcome(15).await;
    assert_eq!(
        (e["type"].as_str(), e["provider"].as_str(), e["attempt"].as_u64()),
        (Some("gd_send_sms"), Some("plivo"), Some(1)),
        "{e}"
    );
    assert_eq!((sns.problems(), plivo.problems()), (vec![], vec![]));
    assert_eq!(plivo.queued().len(), 1);
    app.stop().await;

    let plivo = plivo_spec::PlivoSpec::new(
        plivo_expect(),
        plivo_spec::Answer::Error(
            403,
            "Geo permissions are not enabled for this destination country".into(),
        ),
    );
    let plivo_server = plivo.start().await;
    let sns = sns_spec::SnsSpec::new(sns_expect(), sns_spec::Answer::Published);
    let sns_server = sns.start().await;
    let (sns_uri, plivo_uri) = (sns_server.uri(), plivo_server.uri());
    let mut app = TestApp::spawn(|c| {
        c.sns = sns_config(&sns_uri);
        c.plivo = plivo_config(&plivo_uri);
        c.channels.sms = Some(vec![ProviderKind::Plivo, ProviderKind::Sns]);
    })
    .await;
    app.publish(&job("sms")).await;
    let e = app.next_outcome(15).await;
    assert_eq!(
        (e["type"].as_str(), e["provider"].as_str()),
        (Some("gd_send_sms"), Some("sns")),
        "{e}"
    );
    assert_eq!((sns.problems(), plivo.problems()), (vec![], vec![]));
    assert_eq!(sns.published().len(), 1);
    app.stop().await;
}
