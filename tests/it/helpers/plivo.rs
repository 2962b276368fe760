//! Plivo's Send Message endpoint written from plivo-python (`plivo/rest/client.py`: the URL, Basic auth with
//! auth_id and auth_token, a JSON body, `process_response`'s statuses; `plivo/resources/messages.py`:
//! `Messages.create`'s parameters) and Plivo's API documentation
//! (<https://www.plivo.com/docs/messaging/api/message/send-a-message>,
//! <https://www.plivo.com/docs/messaging/api/response>).
//!
//! It checks every request field by field — `POST /v1/Account/{auth_id}/Message/`, `Authorization: Basic`,
//! `Content-Type: application/json`, `src`, `dst`, `text`, `message_expiry`, and nothing Plivo does not
//! document — and answers as Plivo does: 202 `{"api_id","message","message_uuid":[…]}`, or
//! `{"api_id","error"}` with Plivo's status. A request Plivo would refuse is answered with Plivo's refusal
//! and recorded in [`PlivoSpec::problems`], which each test asserts empty.

use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::{Value, json};
use wiremock::{MockServer, Request, Respond, ResponseTemplate};

/// `Messages.create`'s parameters (plivo-python); anything else is not Plivo's.
pub const PARAMETERS: &[&str] = &[
    "src",
    "dst",
    "text",
    "type",
    "url",
    "method",
    "log",
    "trackable",
    "powerpack_uuid",
    "media_urls",
    "media_ids",
    "message_expiry",
    "template",
    "dlt_entity_id",
    "dlt_template_id",
    "dlt_template_category",
];

/// `message_expiry`'s documented range, seconds.
pub const EXPIRY: std::ops::RangeInclusive<u64> = 5..=10_799;

/// Plivo's error body.
pub fn error_response(status: u16, error: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({"api_id": uuid::Uuid::new_v4().to_string(), "error": error}))
}

/// Plivo's 202.
pub fn queued_response(message_uuid: &str) -> ResponseTemplate {
    ResponseTemplate::new(202).set_body_json(json!({
        "api_id": uuid::Uuid::new_v4().to_string(),
        "message": "message(s) queued",
        "message_uuid": [message_uuid],
    }))
}

#[derive(Clone, Debug)]
pub struct Expect {
    pub auth_id: String,
    pub auth_token: String,
    /// `src` as Plivo takes it (country code, no `+`; or an alphanumeric id).
    pub src: String,
}

#[derive(Clone, Debug)]
pub enum Answer {
    Queued,
    /// Plivo's status and `error` text.
    Error(u16, String),
    Raw(ResponseTemplate),
}

/// One message the endpoint queued.
#[derive(Clone, Debug)]
pub struct Queued {
    pub body: Value,
    pub message_uuid: String,
}

#[derive(Clone)]
pub struct PlivoSpec {
    expect: Expect,
    answer: Answer,
    problems: Arc<Mutex<Vec<String>>>,
    queued: Arc<Mutex<Vec<Queued>>>,
}

type Refusal = (u16, String);

impl PlivoSpec {
    pub fn new(expect: Expect, answer: Answer) -> PlivoSpec {
        PlivoSpec {
            expect,
            answer,
            problems: Arc::default(),
            queued: Arc::default(),
        }
    }

    pub async fn start(&self) -> MockServer {
        let server = MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::any())
            .respond_with(self.clone())
            .mount(&server)
            .await;
        server
    }

    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap().clone()
    }

    pub fn queued(&self) -> Vec<Queued> {
        self.queued.lock().unwrap().clone()
    }

    fn check(&self, r: &Request) -> Result<Value, Refusal> {
        let e = &self.expect;
        let path = format!("/v1/Account/{}/Message/", e.auth_id);
        if r.url.path() != path {
            return Err((404, "not found".into()));
        }
        if r.method.as_str() != "POST" {
            return Err((405, format!("HTTP method \"{}\" not allowed", r.method)));
        }
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", e.auth_id, e.auth_token));
        if r.headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Basic {basic}")) {
            return Err((401, "Authentication failed".into()));
        }
        let content_type = r
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if content_type.split(';').next().map(str::trim) != Some("application/json") {
            return Err((400, format!("content type {content_type:?} is not application/json")));
        }
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&r.body) else {
            return Err((400, "body is not a JSON object".into()));
        };
        if let Some(extra) = body.keys().find(|k| !PARAMETERS.contains(&k.as_str())) {
            return Err((400, format!("{extra} is not a parameter")));
        }
        let string = |name: &str| body.get(name).and_then(Value::as_str);
        match string("src") {
            Some(src) if src == e.src => {}
            other => return Err((400, format!("src: wanted {:?}, got {other:?}", e.src))),
        }
        let Some(dst) = string("dst") else {
            return Err((400, "dst parameter is missing".into()));
        };
        // Plivo's numbers: country code first, digits only (herald sends one destination, no `<`).
        if dst.is_empty() || dst.len() > 15 || !dst.bytes().all(|b| b.is_ascii_digit()) || dst == e.src {
            return Err((400, format!("invalid dst {dst}")));
        }
        if string("text").is_none_or(str::is_empty) {
            return Err((400, "text parameter is missing".into()));
        }
        if let Some(t) = body.get("type")
            && !matches!(t.as_str(), Some("sms"))
        {
            return Err((400, format!("type {t} is not sms")));
        }
        match body.get("message_expiry") {
            None => return Err((400, "herald sends message_expiry (the job's validity)".into())),
            Some(v) if v.as_u64().is_some_and(|s| EXPIRY.contains(&s)) => {}
            Some(v) => return Err((400, format!("message_expiry {v} is not an integer of 5 to 10799"))),
        }
        if let Some(url) = body.get("url") {
            let ok = url
                .as_str()
                .and_then(|u| url::Url::parse(u).ok())
                .is_some_and(|u| u.scheme().starts_with("http"));
            if !ok {
                return Err((400, format!("url {url} is not a URL")));
            }
        }
        if let Some(m) = body.get("method")
            && !matches!(m.as_str(), Some("GET" | "POST"))
        {
            return Err((400, format!("method {m} is not GET or POST")));
        }
        Ok(Value::Object(body))
    }
}

impl Respond for PlivoSpec {
    fn respond(&self, r: &Request) -> ResponseTemplate {
        match self.check(r) {
            Err((status, error)) => {
                self.problems.lock().unwrap().push(format!("{status}: {error}"));
                error_response(status, &error)
            }
            Ok(body) => match &self.answer {
                Answer::Queued => {
                    let message_uuid = uuid::Uuid::new_v4().to_string();
                    let response = queued_response(&message_uuid);
                    self.queued.lock().unwrap().push(Queued { body, message_uuid });
                    response
                }
                Answer::Error(status, error) => error_response(*status, error),
                Answer::Raw(response) => response.clone(),
            },
        }
    }
}
