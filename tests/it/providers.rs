//! The native SMS/voice providers, each against a local server that checks the request as the provider's
//! API documentation specifies it (method, path, auth, content type, every field), and each answer class of
//! that documentation: provider-level, calling `Provider::send` directly (no broker). Then through the
//! broker: failover between providers and routing by destination country.

// The SigV4 verifier of the SNS test server (tests/it/provider_sns_plivo.rs tests SNS and Plivo themselves).
use crate::helpers;
use crate::helpers::sns as sns_spec;

use std::time::Duration;

use crate::helpers::{TestApp, form, job, phone_job, sms, verdict};
use base64::Engine;
use herald::config::{HttpUrl, InfobipConfig, PlivoConfig, ProviderKind, Secret, SnsConfig, VonageConfig};
use herald::destinations::Destination;
use herald::job::Locale;
use herald::providers::http::HttpClient;
use herald::providers::infobip::Infobip;
use herald::providers::plivo::Plivo;
use herald::providers::sns::Sns;
use herald::providers::vonage::Vonage;
use herald::providers::{Ambiguous, Provider, ProviderError, Receipt, Validity};
use hyper_util::client::proxy::matcher::Matcher;
use serde_json::{Value, json};
use sns_spec::verify_sigv4;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const NUMBER: &str = "+14155550123";

fn client() -> HttpClient {
    HttpClient::new(Duration::from_secs(2), 4).unwrap()
}

/// A server answering every POST with `response`.
async fn server(response: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(response).mount(&server).await;
    server
}

async fn only_request(server: &MockServer) -> wiremock::Request {
    let mut requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1, "one request per send");
    requests.remove(0)
}

// --- Vonage ---------------------------------------------------------------------------------------------
// Vonage's and Infobip's own tests are in provider_vonage_infobip.rs; these helpers serve the tests below.

fn vonage_config(base_url: &str) -> VonageConfig {
    VonageConfig {
        api_key: "a1b2c3d4".into(),
        api_secret: Secret::new("vonage-secret"),
        from: "Acme".into(),
        base_url: base_url.parse::<HttpUrl>().unwrap(),
        ..herald::config::Config::default().vonage
    }
}

fn vonage_answer(messages: Value) -> ResponseTemplate {
    let count = messages.as_array().map_or(0, Vec::len).to_string();
    ResponseTemplate::new(200).set_body_json(json!({"message-count": count, "messages": messages}))
}

fn vonage_failure(status: &str) -> ResponseTemplate {
    vonage_answer(json!([{"status": status, "error-text": format!("Failed for {NUMBER}")}]))
}

// --- Plivo ----------------------------------------------------------------------------------------------

fn plivo_config(base_url: &str) -> PlivoConfig {
    PlivoConfig {
        auth_id: "MAXXXXXXXXXXXXXXXXXX".into(),
        auth_token: Secret::new("plivo-token"),
        from: "+14155550100".into(),
        base_url: base_url.parse::<HttpUrl>().unwrap(),
        ..herald::config::Config::default().plivo
    }
}

fn plivo_error(status: u16, error: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({"api_id": "97ceeb52-58b6-11e1-86da-77300b68f8bb", "error": error}))
}

// --- Infobip --------------------------------------------------------------------------------------------

/// `templates.default_locale`'s default, for Infobip's voice.
fn english() -> Locale {
    Locale::parse("en").unwrap()
}

fn infobip_config(base_url: &str) -> InfobipConfig {
    InfobipConfig {
        api_key: Secret::new("infobip-key"),
        from: "+447491163443".into(),
        base_url: Some(base_url.parse::<HttpUrl>().unwrap()),
        ..herald::config::Config::default().infobip
    }
}

fn infobip_status(group_id: u8, group: &str, id: u16, name: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "bulkId": "2034072219640523072",
        "messages": [{
            "to": "14155550123",
            "messageId": "2250be2d4219-3af1-78856-aabe-1362af1edfd2",
            "status": {"groupId": group_id, "groupName": group, "id": id, "name": name,
                       "description": format!("status for {NUMBER}")}
        }]
    }))
}

fn infobip_error(status: u16, id: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({"requestError": {"serviceException": {"messageId": id, "text": "Request failed"}}}))
}

// --- Amazon SNS -----------------------------------------------------------------------------------------

const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

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

fn sns_published(id: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(
        format!(
            "<PublishResponse xmlns=\"https://sns.amazonaws.com/doc/2010-03-31/\"><PublishResult>\
             <MessageId>{id}</MessageId></PublishResult><ResponseMetadata><RequestId>r-1</RequestId>\
             </ResponseMetadata></PublishResponse>"
        ),
        "text/xml",
    )
}

fn sns_error(status: u16, kind: &str, code: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(
        format!(
            "<ErrorResponse xmlns=\"https://sns.amazonaws.com/doc/2010-03-31/\"><Error><Type>{kind}</Type>\
             <Code>{code}</Code><Message>Invalid parameter: PhoneNumber Reason: {NUMBER} is not valid</Message>\
             </Error><RequestId>r-2</RequestId></ErrorResponse>"
        ),
        "text/xml",
    )
}

// --- Provider codes -------------------------------------------------------------------------------------

/// What the outside attack saw a Twilio 400 carry in `code`: the number it was asked to reach and the
/// code it was asked to send, echoed.
const ECHOED: &str = "21211 +14155550123 482913";

/// The outside attack's second finding: `error.provider_code` was whatever the provider put in its code
/// field, and reached events, stdout and the outcome store verbatim. Each provider's code now has its
/// documented shape or is dropped; the failure is classified as before, and the message says nothing of it.
#[tokio::test]
async fn a_provider_code_that_echoes_the_request_is_dropped() {
    let twilio_error = |code: Value| {
        ResponseTemplate::new(400).set_body_json(json!({
            "code": code, "message": format!("The 'To' number {NUMBER} is not valid"),
            "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}))
    };
    let mut config = herald::config::Config::default();
    let twilio_with = |c: &mut herald::config::Config, url: &str| {
        helpers::twilio(c, url);
        herald::providers::twilio::Twilio::new(&c.twilio, &c.templates.default_locale, client()).unwrap()
    };
    let cases: Vec<(&str, Box<dyn Provider>, MockServer, &str)> = vec![
        {
            let s = server(twilio_error(json!(ECHOED))).await;
            (
                "twilio echo",
                Box::new(twilio_with(&mut config, &s.uri())),
                s,
                "permanent -",
            )
        },
        {
            let s = server(twilio_error(json!(14155550123u64))).await;
            (
                "twilio number",
                Box::new(twilio_with(&mut config, &s.uri())),
                s,
                "permanent -",
            )
        },
        {
            let s = server(twilio_error(json!(21211))).await;
            (
                "twilio code",
                Box::new(twilio_with(&mut config, &s.uri())),
                s,
                "permanent 21211",
            )
        },
        {
            let s = server(vonage_failure(ECHOED)).await;
            let p = Vonage::new(&vonage_config(&s.uri()), client()).unwrap();
            ("vonage status", Box::new(p), s, "permanent -")
        },
        {
            let s = server(
                ResponseTemplate::new(500)
                    .set_body_json(json!({"messages": [{"status": "1 14155550123 482913", "error-text": "x"}]})),
            )
            .await;
            let p = Vonage::new(&vonage_config(&s.uri()), client()).unwrap();
            ("vonage http", Box::new(p), s, "transient - -")
        },
        {
            let s = server(infobip_status(5, "REJECTED", 52, "REJECTED_14155550123_482913")).await;
            let p = Infobip::new(&infobip_config(&s.uri()), &english(), client()).unwrap();
            ("infobip status", Box::new(p), s, "permanent -")
        },
        {
            let s = server(infobip_status(5, "REJECTED", 52, "")).await;
            let p = Infobip::new(&infobip_config(&s.uri()), &english(), client()).unwrap();
            ("infobip group", Box::new(p), s, "permanent REJECTED")
        },
        {
            let s = server(infobip_error(400, ECHOED)).await;
            let p = Infobip::new(&infobip_config(&s.uri()), &english(), client()).unwrap();
            ("infobip error", Box::new(p), s, "permanent -")
        },
        {
            let s = server(sns_error(400, "Sender", "InvalidParameter 14155550123 482913")).await;
            let p = Sns::new(&sns_config(&s.uri()), client()).unwrap();
            ("sns", Box::new(p), s, "permanent -")
        },
        {
            let s = server(sns_error(400, "Sender", "Throttling482913")).await;
            let p = Sns::new(&sns_config(&s.uri()), client()).unwrap();
            ("sns glued", Box::new(p), s, "permanent -")
        },
    ];
    for (name, provider, _server, expected) in cases {
        let result = provider
            .send(&phone_job(NUMBER), &sms("482913 is your code"), Validity::default())
            .await;
        let e = result.as_ref().expect_err("a failure").clone();
        assert_eq!(verdict(result), expected, "{name}");
        for secret in ["4155550123", "482913"] {
            assert!(!e.message().contains(secret), "{name}: {secret} in {e}");
            assert!(
                !e.provider_code().is_some_and(|c| c.contains(secret)),
                "{name}: {secret} in the code"
            );
        }
    }
}

// --- Through the broker ---------------------------------------------------------------------------------

fn with_vonage(c: &mut herald::config::Config, url: &str) {
    c.vonage = vonage_config(url);
}

fn with_plivo(c: &mut herald::config::Config, url: &str) {
    c.plivo = plivo_config(url);
}

#[tokio::test]
async fn vonage_throttled_fails_over_to_plivo() {
    let vonage = server(vonage_failure("1")).await;
    let plivo = server(
        ResponseTemplate::new(202).set_body_json(json!({"message": "message(s) queued", "message_uuid": ["p-1"]})),
    )
    .await;
    let mut app = TestApp::spawn(|c| {
        with_vonage(c, &vonage.uri());
        with_plivo(c, &plivo.uri());
        c.channels.sms = Some(vec![ProviderKind::Vonage, ProviderKind::Plivo]);
    })
    .await;
    app.publish(&job("sms")).await;
    let e = app.next_outcome(20).await;
    helpers::assert_event_shape(&e);
    assert_eq!(
        (
            e["type"].as_str(),
            e["provider"].as_str(),
            e["provider_message_id"].as_str()
        ),
        (Some("gd_send_sms"), Some("plivo"), Some("p-1")),
        "{e}"
    );
    assert_eq!(vonage.received_requests().await.unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_permanent_vonage_status_ends_the_job_with_its_code() {
    let vonage = server(vonage_failure("7")).await;
    let plivo = server(ResponseTemplate::new(202)).await;
    let mut app = TestApp::spawn(|c| {
        with_vonage(c, &vonage.uri());
        with_plivo(c, &plivo.uri());
        c.channels.sms = Some(vec![ProviderKind::Vonage, ProviderKind::Plivo]);
    })
    .await;
    app.publish(&job("sms")).await;
    let e = app.next_outcome(20).await;
    helpers::assert_event_shape(&e);
    assert_eq!(e["error"]["code"], "provider_rejected", "{e}");
    assert_eq!(e["error"]["provider_code"], "7", "{e}");
    assert_eq!(e["provider"], "vonage", "{e}");
    assert!(
        plivo.received_requests().await.unwrap().is_empty(),
        "no failover on a permanent failure"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_job_goes_to_its_countrys_chain_else_to_the_channel_chain() {
    let vonage = server(vonage_answer(json!([{"message-id": "v-1", "status": "0"}]))).await;
    let plivo = server(
        ResponseTemplate::new(202).set_body_json(json!({"message": "message(s) queued", "message_uuid": ["p-1"]})),
    )
    .await;
    let mut app = TestApp::spawn(|c| {
        with_vonage(c, &vonage.uri());
        with_plivo(c, &plivo.uri());
        c.channels.sms = Some(vec![ProviderKind::Vonage]);
        c.routing.sms = [(Destination::parse("44").unwrap(), vec![ProviderKind::Plivo])].into();
    })
    .await;
    let mut uk = job("sms");
    uk["to"] = "+447700900123".into();
    let us = job("sms");
    app.publish(&uk).await;
    app.publish(&us).await;
    let events = app.events(2).await;
    let provider_of = |j: &Value| {
        events
            .iter()
            .find(|e| e["job_id"] == j["id"])
            .map(|e| (e["country"].clone(), e["provider"].clone()))
            .unwrap()
    };
    assert_eq!(provider_of(&uk), (json!("44"), json!("plivo")));
    assert_eq!(provider_of(&us), (json!("1"), json!("vonage")));
    let to_plivo: Value = serde_json::from_slice(&only_request(&plivo).await.body).unwrap();
    assert_eq!(to_plivo["dst"], "447700900123");
    assert_eq!(form(&only_request(&vonage).await.body)["to"], "14155550123");
    app.stop().await;
}

#[tokio::test]
async fn a_voice_call_fails_over_from_infobip_to_twilio_and_routes_by_country() {
    let infobip = server(infobip_error(503, "GENERAL_ERROR")).await;
    let twilio = server(ResponseTemplate::new(201).set_body_json(json!({"sid": "CA1"}))).await;
    let mut app = TestApp::spawn(|c| {
        c.infobip = infobip_config(&infobip.uri());
        helpers::twilio(c, &twilio.uri());
        c.channels.voice = Some(vec![ProviderKind::Twilio]);
        c.routing.voice = [(
            Destination::parse("44").unwrap(),
            vec![ProviderKind::Infobip, ProviderKind::Twilio],
        )]
        .into();
    })
    .await;
    let mut call = job("voice");
    call["to"] = "+447700900123".into();
    app.publish(&call).await;
    let e = app.next_outcome(20).await;
    assert_eq!(
        (
            e["type"].as_str(),
            e["provider"].as_str(),
            e["provider_message_id"].as_str()
        ),
        (Some("gd_send_voice"), Some("twilio"), Some("CA1")),
        "{e}"
    );
    let tried: Value = serde_json::from_slice(&only_request(&infobip).await.body).unwrap();
    assert_eq!(tried["messages"][0]["destinations"][0]["to"], "447700900123");
    app.stop().await;
}

#[tokio::test]
async fn sns_throttled_fails_over_to_infobip_and_plivo_down_fails_over_to_sns() {
    let sns = server(sns_error(400, "Sender", "Throttling")).await;
    let infobip = server(infobip_status(1, "PENDING", 26, "PENDING_ACCEPTED")).await;
    let plivo = server(plivo_error(503, "server error")).await;
    let sns_ok = server(sns_published("sns-1")).await;
    let mut app = TestApp::spawn(|c| {
        c.sns = sns_config(&sns.uri());
        c.infobip = infobip_config(&infobip.uri());
        c.channels.sms = Some(vec![ProviderKind::Sns, ProviderKind::Infobip]);
    })
    .await;
    app.publish(&job("sms")).await;
    let e = app.next_outcome(20).await;
    assert_eq!(
        (e["provider"].as_str(), e["provider_message_id"].as_str()),
        (Some("infobip"), Some("2250be2d4219-3af1-78856-aabe-1362af1edfd2")),
        "{e}"
    );
    verify_sigv4(&only_request(&sns).await, "AKIDEXAMPLE", AWS_SECRET, "eu-west-1");
    app.stop().await;

    let mut app = TestApp::spawn(|c| {
        c.sns = sns_config(&sns_ok.uri());
        with_plivo(c, &plivo.uri());
        c.channels.sms = Some(vec![ProviderKind::Plivo, ProviderKind::Sns]);
    })
    .await;
    app.publish(&job("sms")).await;
    let e = app.next_outcome(20).await;
    assert_eq!(
        (e["provider"].as_str(), e["provider_message_id"].as_str()),
        (Some("sns"), Some("sns-1")),
        "{e}"
    );
    verify_sigv4(&only_request(&sns_ok).await, "AKIDEXAMPLE", AWS_SECRET, "eu-west-1");
    app.stop().await;
}

// --- The HTTP exchange against hostile answers ------------------------------------------------------------
// A raw TCP server writes each answer byte for byte, so that answers no well-behaved server library would
// send (trickled, endless, cut, malformed) reach `providers::http::exchange`. The custom webhook stands in
// for every HTTP provider: they all exchange through it.

/// What a raw server writes for each request it reads.
#[derive(Clone)]
enum Raw {
    /// These bytes; the connection stays open for the next request.
    Answer(Vec<u8>),
    /// These bytes, then the server closes the connection.
    AnswerAndClose(Vec<u8>),
    /// These bytes, then the second ones again and again, every so often, until the client goes.
    AnswerThenForever(Vec<u8>, Vec<u8>, Duration),
    /// These bytes after a wait (past the client's timeout in the tests that use it).
    AnswerLate(Vec<u8>, Duration),
}

struct RawServer {
    url: url::Url,
    /// The head (request line and headers) of each request read, in order.
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl RawServer {
    async fn start(raw: Raw) -> RawServer {
        RawServer::with_userinfo("", raw).await
    }

    /// `userinfo` (`user:password@`, percent-encoded) goes in the server's URL.
    async fn with_userinfo(userinfo: &str, raw: Raw) -> RawServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let raw = raw.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // One request: its head, then Content-Length bytes of body.
                        let end = loop {
                            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break at + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        let length = head
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse().ok())?
                            })
                            .unwrap_or(0usize);
                        while buf.len() < end + length {
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..end + length);
                        seen.lock().unwrap().push(head);
                        match &raw {
                            Raw::Answer(bytes) => {
                                if stream.write_all(bytes).await.is_err() {
                                    return;
                                }
                            }
                            Raw::AnswerAndClose(bytes) => {
                                let _ = stream.write_all(bytes).await;
                                return;
                            }
                            Raw::AnswerLate(bytes, wait) => {
                                tokio::time::sleep(*wait).await;
                                if stream.write_all(bytes).await.is_err() {
                                    return;
                                }
                            }
                            Raw::AnswerThenForever(bytes, again, every) => {
                                if stream.write_all(bytes).await.is_err() {
                                    return;
                                }
                                loop {
                                    if stream.write_all(again).await.is_err() {
                                        return;
                                    }
                                    tokio::time::sleep(*every).await;
                                }
                            }
                        }
                    }
                });
            }
        });
        let url = format!("http://{userinfo}127.0.0.1:{port}/hook").parse().unwrap();
        RawServer { url, heads }
    }

    fn requests(&self) -> usize {
        self.heads.lock().unwrap().len()
    }
}

fn webhook_to(url: &url::Url) -> herald::providers::webhook::Webhook {
    webhook_with(url, client())
}

fn webhook_with(url: &url::Url, client: HttpClient) -> herald::providers::webhook::Webhook {
    herald::providers::webhook::Webhook::new(url.clone(), b"raw-server-key".to_vec(), "en", client)
}

/// An `http` provider behind the proxy that HTTP_PROXY would name: the request goes to the proxy in
/// absolute form, with the proxy's credentials in Proxy-Authorization (never the provider's Authorization);
/// a host NO_PROXY names is reached directly.
#[tokio::test]
async fn an_http_provider_is_reached_through_the_proxy_with_its_credentials() {
    let proxy = RawServer::start(Raw::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec())).await;
    let port = proxy.url.port().unwrap();
    let proxies = |no: &str| {
        Matcher::builder()
            .http(format!("http://proxy-user:proxy%20pass@127.0.0.1:{port}"))
            .no(no)
            .build()
    };
    let through = HttpClient::with_proxies(Duration::from_millis(500), 8, proxies("")).unwrap();
    let provider: url::Url = "http://provider.invalid/hook".parse().unwrap();
    let result = webhook_with(&provider, through)
        .send(&phone_job(NUMBER), &sms("482913 is your code"), Validity::default())
        .await;
    assert!(result.is_ok(), "{}", failure_message(&result));
    let head = proxy.heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(
        head.starts_with("post http://provider.invalid/hook http/1.1\r\n"),
        "{head}"
    );
    // base64("proxy-user:proxy pass")
    assert!(
        head.contains("proxy-authorization: basic chjvehktdxnlcjpwcm94esbwyxnz\r\n"),
        "{head}"
    );

    let direct = RawServer::start(Raw::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec())).await;
    let bypassing = HttpClient::with_proxies(Duration::from_millis(500), 8, proxies("127.0.0.1")).unwrap();
    let result = webhook_with(&direct.url, bypassing)
        .send(&phone_job(NUMBER), &sms("482913 is your code"), Validity::default())
        .await;
    assert!(result.is_ok(), "{}", failure_message(&result));
    let head = direct.heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(head.starts_with("post /hook http/1.1\r\n"), "{head}");
    assert!(!head.contains("proxy-authorization"), "{head}");
    assert_eq!(proxy.requests(), 1);
}

/// One webhook send to `server`: its result, and how long it took.
async fn send_to(server: &RawServer) -> (Result<Receipt, ProviderError>, Duration) {
    let started = std::time::Instant::now();
    let result = webhook_to(&server.url)
        .send(&phone_job(NUMBER), &sms("482913 is your code"), Validity::default())
        .await;
    (result, started.elapsed())
}

fn failure_message(result: &Result<Receipt, ProviderError>) -> String {
    match result {
        Ok(_) => "no failure".into(),
        Err(e) => format!(
            "{} {}",
            if e.is_transient() { "transient" } else { "permanent" },
            e.message()
        ),
    }
}

/// client()'s timeout is 500 ms: every exchange that does not end by itself ends there. The bound leaves
/// room for a loaded CI machine; a hang would never end.
const ENDED_IN_TIME: Duration = Duration::from_secs(3);

#[tokio::test]
async fn an_answer_whose_body_trickles_forever_ends_at_the_timeout() {
    let server = RawServer::start(Raw::AnswerThenForever(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
            .to_vec(),
        b" ".to_vec(),
        Duration::from_millis(20),
    ))
    .await;
    let (result, took) = send_to(&server).await;
    assert_eq!(failure_message(&result), "transient webhook timed out");
    assert!(took < ENDED_IN_TIME, "{took:?}");
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn endless_informational_answers_end_at_the_timeout() {
    let server = RawServer::start(Raw::AnswerThenForever(
        Vec::new(),
        b"HTTP/1.1 102 Processing\r\n\r\n".to_vec(),
        Duration::from_millis(20),
    ))
    .await;
    let (result, took) = send_to(&server).await;
    assert_eq!(failure_message(&result), "transient webhook timed out");
    assert!(took < ENDED_IN_TIME, "{took:?}");
}

#[tokio::test]
async fn an_endless_header_ends_without_exhausting_memory() {
    let server = RawServer::start(Raw::AnswerThenForever(
        b"HTTP/1.1 200 OK\r\nX-Padding: ".to_vec(),
        vec![b'a'; 64 * 1024],
        Duration::ZERO,
    ))
    .await;
    let (result, took) = send_to(&server).await;
    let failure = failure_message(&result);
    assert!(failure.starts_with("transient webhook "), "{failure}");
    assert!(took < ENDED_IN_TIME, "{took:?}");
}

#[tokio::test]
async fn endless_and_oversized_bodies_are_read_only_to_the_cap() {
    // A client with a long timeout: ending well before it can only be the cap's doing.
    let patient = HttpClient::new(Duration::from_secs(10), 8).unwrap();
    let send_to = |server: &RawServer| {
        let webhook = webhook_with(&server.url, patient.clone());
        async move {
            let started = std::time::Instant::now();
            let result = webhook
                .send(&phone_job(NUMBER), &sms("482913 is your code"), Validity::default())
                .await;
            (result, started.elapsed())
        }
    };
    // 16 KiB chunks, as fast as the client takes them: the read stops at 64 KiB, well before the timeout.
    let mut chunk = b"4000\r\n".to_vec();
    chunk.extend(std::iter::repeat_n(b' ', 0x4000));
    chunk.extend_from_slice(b"\r\n");
    let endless = RawServer::start(Raw::AnswerThenForever(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
        chunk,
        Duration::ZERO,
    ))
    .await;
    let (result, took) = send_to(&endless).await;
    assert!(result.is_ok(), "{}", failure_message(&result));
    assert!(took < Duration::from_secs(5), "{took:?}");

    // 16 MiB announced and sent.
    let mut big = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16777216\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b' ', 16 << 20));
    let oversized = RawServer::start(Raw::Answer(big)).await;
    let (result, took) = send_to(&oversized).await;
    assert!(result.is_ok(), "{}", failure_message(&result));
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn a_broken_or_cut_answer_body_is_transient() {
    let invalid_chunks = RawServer::start(Raw::AnswerAndClose(
        b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n".to_vec(),
    ))
    .await;
    let cut = RawServer::start(Raw::AnswerAndClose(
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 100\r\n\r\n{\"id\":".to_vec(),
    ))
    .await;
    let garbage = RawServer::start(Raw::AnswerAndClose(b"\x16\x03\x01 not http at all\r\n\r\n".to_vec())).await;
    for (server, expected) in [
        (&invalid_chunks, "transient webhook answer could not be read"),
        (&cut, "transient webhook answer could not be read"),
        (&garbage, "transient webhook request failed"),
    ] {
        let (result, took) = send_to(server).await;
        assert_eq!(failure_message(&result), expected);
        assert!(took < ENDED_IN_TIME, "{took:?}");
        assert_eq!(server.requests(), 1, "{expected}: sent once");
    }
}

/// A 2xx head says the provider took the message: a body that is cut, malformed or still trickling at the
/// timeout is read as no body: the provider took the request, so it is sent and never sent again, counted
/// as unclear where the provider's verdict was in the body (Twilio's sid, Vonage's and Infobip's status).
/// Vonage and Infobip sent it again before.
#[tokio::test]
async fn a_2xx_answer_whose_body_cannot_be_read_is_left_to_the_provider() {
    let answers: [(&str, Raw); 3] = [
        (
            "cut",
            Raw::AnswerAndClose(b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n{\"sid\":".to_vec()),
        ),
        (
            "malformed",
            Raw::AnswerAndClose(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec()),
        ),
        (
            "trickling",
            Raw::AnswerThenForever(
                b"HTTP/1.1 201 Created\r\nContent-Length: 100000\r\n\r\n".to_vec(),
                b" ".to_vec(),
                Duration::from_millis(20),
            ),
        ),
    ];
    for (what, raw) in answers {
        let server = RawServer::start(raw).await;
        let mut config = herald::config::Config::default();
        helpers::twilio(&mut config, server.url.as_str().trim_end_matches("/hook"));
        let twilio =
            herald::providers::twilio::Twilio::new(&config.twilio, &config.templates.default_locale, client()).unwrap();
        let started = std::time::Instant::now();
        let result = twilio
            .send(&phone_job(NUMBER), &sms("482913 is your code"), Validity::default())
            .await;
        assert!(started.elapsed() < ENDED_IN_TIME, "{what}");
        let unclear = Ok(Receipt::unconfirmed(Ambiguous::UnreadableAnswer, None));
        assert_eq!(result, unclear, "twilio, {what}");
        let (result, _) = send_to(&server).await;
        assert_eq!(result.map(|r| r.message_id), Ok(None), "webhook, {what}");
        let base = format!("http://{}", server.url.authority());
        let vonage = Vonage::new(&vonage_config(&base), client()).unwrap();
        let result = vonage
            .send(&phone_job(NUMBER), &sms("482913"), Validity::default())
            .await;
        assert_eq!(result, unclear, "vonage, {what}");
        let infobip = Infobip::new(&infobip_config(&base), &english(), client()).unwrap();
        let result = infobip
            .send(&phone_job(NUMBER), &sms("482913"), Validity::default())
            .await;
        assert_eq!(result, unclear, "infobip, {what}");
    }
}

/// Every HTTP provider of a phone channel, pointed at `base` (the raw server's origin).
fn phone_providers(base: &str) -> Vec<Box<dyn Provider>> {
    let mut config = herald::config::Config::default();
    helpers::twilio(&mut config, base);
    vec![
        Box::new(
            herald::providers::twilio::Twilio::new(&config.twilio, &config.templates.default_locale, client()).unwrap(),
        ),
        Box::new(Vonage::new(&vonage_config(base), client()).unwrap()),
        Box::new(Plivo::new(&plivo_config(base), client()).unwrap()),
        Box::new(Infobip::new(&infobip_config(base), &english(), client()).unwrap()),
        Box::new(Sns::new(&sns_config(base), client()).unwrap()),
    ]
}

/// A provider that read the whole request and then closed without answering, or answered after the
/// timeout, may have taken the message: it is sent, unclear, never sent again. (Before, each was a
/// transient failure and the job was sent again: 20 of 20 reached the provider twice in a probe.) The
/// webhook's receivers drop a repeated `webhook-id`, so it alone is retried. Nothing written: transient.
#[tokio::test]
async fn a_request_written_whole_and_left_unanswered_is_not_sent_again() {
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".to_vec();
    let cases = [
        ("closed", Raw::AnswerAndClose(Vec::new()), Ambiguous::ConnectionClosed),
        ("late", Raw::AnswerLate(ok, Duration::from_secs(2)), Ambiguous::Timeout),
    ];
    for (what, raw, reason) in cases {
        let server = RawServer::start(raw).await;
        let base = format!("http://{}", server.url.authority());
        for provider in phone_providers(&base) {
            let result = provider
                .send(&phone_job(NUMBER), &sms("482913 is your code"), Validity::default())
                .await;
            assert_eq!(
                result,
                Ok(Receipt::unconfirmed(reason, None)),
                "{} {what}",
                provider.name()
            );
        }
        assert_eq!(
            server.heads.lock().unwrap().len(),
            5,
            "{what}: each read one whole request"
        );
        let (result, _) = send_to(&server).await;
        assert!(
            matches!(result, Err(ProviderError::Transient { .. })),
            "webhook {what}: {result:?}"
        );
    }
    // Nothing listening: the request never left, so it is worth sending again.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for provider in phone_providers(&format!("http://127.0.0.1:{port}")) {
        let result = provider
            .send(&phone_job(NUMBER), &sms("482913 is your code"), Validity::default())
            .await;
        assert!(
            matches!(result, Err(ProviderError::Transient { .. })),
            "{}: {result:?}",
            provider.name()
        );
    }
}

/// Through the broker: the unclear send ends as sent, once, and is counted.
#[tokio::test]
async fn an_unanswered_send_ends_as_sent_once_and_is_counted() {
    let server = RawServer::start(Raw::AnswerAndClose(Vec::new())).await;
    let base = format!("http://{}", server.url.authority());
    let mut app = TestApp::spawn(|c| {
        with_vonage(c, &base);
        c.channels.sms = Some(vec![ProviderKind::Vonage]);
    })
    .await;
    app.publish(&job("sms")).await;
    let e = app.next_outcome(20).await;
    assert_eq!(
        (e["type"].as_str(), e["provider"].as_str(), e.get("provider_message_id")),
        (Some("gd_send_sms"), Some("vonage"), None),
        "{e}"
    );
    // Not a wait for something: the window in which a second send, which must not happen, would.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.heads.lock().unwrap().len(), 1, "sent once");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("herald_provider_ambiguous_total{provider=\"vonage\",reason=\"connection_closed\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_http_1_0_answer_without_length_is_read_to_the_close() {
    let server = RawServer::start(Raw::AnswerAndClose(
        b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"id\":\"m-10\"}".to_vec(),
    ))
    .await;
    let (result, _) = send_to(&server).await;
    assert_eq!(result.unwrap().message_id.as_deref(), Some("m-10"));
}

#[tokio::test]
async fn a_100_continue_before_the_answer_is_skipped() {
    let server = RawServer::start(Raw::Answer(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"id\":\"m-1\"}"
            .to_vec(),
    ))
    .await;
    let (result, _) = send_to(&server).await;
    assert_eq!(result.unwrap().message_id.as_deref(), Some("m-1"));
}

#[tokio::test]
async fn closed_connections_are_not_reused_and_nothing_is_sent_twice() {
    let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"id\":\"m-1\"}";
    // Says it closes; closes without saying (straight after the answer, and after the client's next
    // request has had every chance to pick the pooled connection).
    let said = RawServer::start(Raw::AnswerAndClose(
        [&b"HTTP/1.1 200 OK\r\nConnection: close\r\n"[..], &ok[17..]].concat(),
    ))
    .await;
    let unsaid = RawServer::start(Raw::AnswerAndClose(ok.to_vec())).await;
    for server in [&said, &unsaid] {
        let webhook = webhook_to(&server.url);
        let mut failures = Vec::new();
        for i in 0..20 {
            let result = webhook
                .send(&phone_job(NUMBER), &sms("482913 is your code"), Validity::default())
                .await;
            if result.is_err() {
                failures.push(failure_message(&result));
            }
            if i % 2 == 1 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(server.requests(), 20, "one request per send, none repeated");
        assert_eq!(failures, Vec::<String>::new());
    }
}

#[tokio::test]
async fn credentials_in_the_webhook_url_are_sent_as_basic_authorization() {
    // reqwest sent `https://user:pass@host/…` as Authorization: Basic, and not in the request line.
    let server = RawServer::with_userinfo(
        "hook%20user:p%40ss@",
        Raw::Answer(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
    )
    .await;
    let (result, _) = send_to(&server).await;
    assert!(result.is_ok(), "{}", failure_message(&result));
    let head = server.heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(
        head.starts_with("post /hook http/1.1\r\n"),
        "{}",
        head.lines().next().unwrap()
    );
    let expected = base64::engine::general_purpose::STANDARD.encode("hook user:p@ss");
    assert!(
        head.contains(&format!(
            "\r\nauthorization: basic {}\r\n",
            expected.to_ascii_lowercase()
        )),
        "no Basic authorization from the URL's credentials"
    );
    assert!(
        !head.contains("p%40ss") && !head.contains("p@ss"),
        "the password is not in the head"
    );
}

#[tokio::test]
async fn a_server_with_an_untrusted_certificate_gets_no_request() {
    let server = helpers::SupportServer::https_twilio();
    let url: url::Url = format!("https://localhost:{}/hook", server.port).parse().unwrap();
    let result = webhook_to(&url)
        .send(&phone_job(NUMBER), &sms("482913 is your code"), Validity::default())
        .await;
    assert_eq!(failure_message(&result), "transient webhook connection failed");
    // Not a wait for something: the window in which a request, which must not come, would.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(server.received_nothing(), "nothing reached the server");
}

/// A client whose `https` (or `http`) destinations go through `proxy`.
fn through(proxy: &str, https: bool) -> HttpClient {
    let proxies = if https {
        Matcher::builder().https(proxy).build()
    } else {
        Matcher::builder().http(proxy).build()
    };
    HttpClient::with_proxies(Duration::from_millis(500), 8, proxies).unwrap()
}

/// Whatever an egress proxy answers a CONNECT with (refusals, garbage, silence, a 200 and then no TLS, an
/// endless head), the send is one CONNECT, ends by the timeout, and is transient, with the proxy's
/// credentials (percent-decoded) in the CONNECT.
#[tokio::test]
async fn every_failed_connect_tunnel_is_one_transient_attempt_ended_in_time() {
    let established = b"HTTP/1.1 200 Connection established\r\n\r\n";
    let cases = [
        Raw::Answer(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n".to_vec()),
        Raw::Answer(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_vec()),
        Raw::AnswerAndClose(b"HTTP/1.1 502 Bad Gateway\r\n\r\n".to_vec()),
        Raw::AnswerAndClose(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec()),
        Raw::Answer([&established[..], b"not tls at all\r\n"].concat()),
        Raw::Answer(established.to_vec()),
        Raw::AnswerAndClose(established.to_vec()),
        Raw::Answer(Vec::new()),
        Raw::AnswerAndClose(Vec::new()),
        Raw::AnswerThenForever(b"HTTP/1.1 200 OK\r\nX: ".to_vec(), vec![b'a'; 4096], Duration::ZERO),
    ];
    let basic = base64::engine::general_purpose::STANDARD.encode("proxy user:p@ss:word");
    for (i, raw) in cases.into_iter().enumerate() {
        let proxy = RawServer::start(raw).await;
        let port = proxy.url.port().unwrap();
        let client = through(&format!("http://proxy%20user:p%40ss:word@127.0.0.1:{port}"), true);
        let url: url::Url = "https://provider.invalid/hook".parse().unwrap();
        let started = std::time::Instant::now();
        let result = webhook_with(&url, client)
            .send(&phone_job(NUMBER), &sms("482913 is your code"), Validity::default())
            .await;
        let took = started.elapsed();
        let failure = failure_message(&result);
        assert!(failure.starts_with("transient webhook "), "case {i}: {failure}");
        assert!(took < ENDED_IN_TIME, "case {i}: {took:?}");
        let heads = proxy.heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 1, "case {i}: one CONNECT");
        assert!(
            heads[0].starts_with("CONNECT provider.invalid:443 HTTP/1.1\r\n")
                && heads[0].contains(&format!("\r\nProxy-Authorization: Basic {basic}\r\n")),
            "case {i}: {}",
            heads[0].lines().next().unwrap_or_default()
        );
    }
}

/// A proxy named `https://` is spoken TLS to, and a SOCKS proxy (which herald does not speak) gets nothing:
/// neither sees the request, nor the provider's credentials, in clear. Both fail transiently.
#[tokio::test]
async fn a_proxy_herald_cannot_speak_to_in_clear_gets_nothing_in_clear() {
    for scheme in ["https", "socks5", "socks5h", "socks4"] {
        let proxy = RawServer::start(Raw::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec())).await;
        let port = proxy.url.port().unwrap();
        for provider in ["http://u:secret@provider.invalid/hook", "https://provider.invalid/hook"] {
            let proxies = Matcher::builder()
                .all(format!("{scheme}://pu:pp@127.0.0.1:{port}"))
                .build();
            let client = HttpClient::with_proxies(Duration::from_millis(500), 8, proxies).unwrap();
            let result = webhook_with(&provider.parse().unwrap(), client)
                .send(&phone_job(NUMBER), &sms("482913 is your code"), Validity::default())
                .await;
            let failure = failure_message(&result);
            assert!(
                failure.starts_with("transient webhook "),
                "{scheme} {provider}: {failure}"
            );
            assert_eq!(
                proxy.requests(),
                0,
                "{scheme} {provider}: the proxy read a request in clear"
            );
        }
    }
}
