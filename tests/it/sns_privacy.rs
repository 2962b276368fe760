//! Privacy at `RUST_LOG=trace` for the new providers.

use crate::helpers::{Broker, HeraldProcess, job, process_env};
use herald::config::{HttpUrl, ProviderKind, Secret, SnsConfig};
use sha2::{Digest, Sha256};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// aws-sigv4 logs, at trace, the (redacted) canonical request: its last line is the hex SHA-256 of the
/// request body, i.e. of `PhoneNumber=…&Message=Your code is 482913…`. With the number and template
/// known, a 4-10 digit code is recovered from that hash offline in well under a second. docs/jobs-and-events.md
/// "Events": never a code "at any log level"; `aws_sigv4` is not among logging::CAPS.
#[tokio::test]
async fn rust_log_trace_with_sns_never_logs_a_hash_of_the_body_holding_the_code() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            "<PublishResponse xmlns=\"https://sns.amazonaws.com/doc/2010-03-31/\"><PublishResult>\
             <MessageId>m-1</MessageId></PublishResult></PublishResponse>",
            "text/xml",
        ))
        .mount(&server)
        .await;
    let uri = server.uri();
    let mut broker = Broker::new(|c| {
        c.sns = SnsConfig {
            region: "eu-west-1".into(),
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: Secret::default(),
            sender_id: String::new(),
            base_url: Some(uri.parse::<HttpUrl>().unwrap()),
        };
        c.channels.sms = Some(vec![ProviderKind::Sns]);
    })
    .await;
    let mut env = process_env(&broker.config);
    env.push(("RUST_LOG".into(), "trace".into()));
    let mut herald = HeraldProcess::start(&env);
    broker.publish(&job("sms")).await;
    let e = broker.next_outcome(30).await;
    assert_eq!(e["provider"], "sns", "{e}\n{}", herald.logs());
    assert_eq!(herald.terminate(), Some(0));
    let logs = herald.logs();
    assert!(logs.contains(" TRACE "), "RUST_LOG=trace was in effect");

    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let body = &requests[0].body;
    assert!(
        String::from_utf8_lossy(body).contains("482913"),
        "the body holds the code"
    );
    let digest: String = Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect();
    if let Some(at) = logs.find(&digest) {
        let start = logs[..at].rfind(" TRACE ").unwrap_or(0);
        panic!(
            "the SHA-256 of the SNS body (number + code, brute-forceable) is in the log: {}",
            &logs[start..at + digest.len()]
        );
    }
}
