//! A Twilio REST API test server built from twilio-oai (`spec/json/twilio_api_v2010.json`: `CreateMessage`
//! and `CreateCall`) and Twilio's error dictionary (https://www.twilio.com/docs/api/errors): it checks each
//! request field by field (method, path, Basic auth, form content type, every field herald sends and nothing
//! else) and answers as Twilio does: 201 with the Message or Call resource, or Twilio's error body
//! `{"code", "message", "more_info", "status"}` with the HTTP status Twilio gives that error.
//!
//! A request that breaks the spec is answered with Twilio's 400 and recorded: a test asserts
//! [`TwilioApi::violations`] is empty, so herald cannot pass by being refused in a way it happens to handle.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::json;
use wiremock::{Request, Respond, ResponseTemplate};

/// How the server answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 201 with the created resource.
    Created,
    /// Twilio's error body for `code`, with the HTTP status Twilio answers it with ([`http_status_of`]).
    Error(u32),
    /// Twilio's error body for `code` with a `Retry-After` header (seconds).
    ErrorRetryAfter(u32, u64),
    /// A bare status with no Twilio body (a proxy or load balancer in front of Twilio).
    Bare(u16),
}

/// What Twilio answers an error with: 401 for authentication, 404 for a resource that does not exist, 429
/// for too many requests, 5xx for its own failures, 400 for everything about the request.
pub fn http_status_of(code: u32) -> u16 {
    match code {
        20003 | 20005 => 401,
        20008 => 403,
        20404 => 404,
        20429 => 429,
        20500 => 500,
        20503 => 503,
        _ => 400,
    }
}

#[derive(Default)]
struct State {
    script: VecDeque<Answer>,
    violations: Vec<String>,
    served: usize,
}

/// A spec-checking Twilio for account `account_sid` and `auth_token`. Clones share their state.
#[derive(Clone)]
pub struct TwilioApi {
    pub account_sid: String,
    pub auth_token: String,
    state: Arc<Mutex<State>>,
}

impl TwilioApi {
    pub fn new(account_sid: &str, auth_token: &str) -> TwilioApi {
        TwilioApi {
            account_sid: account_sid.into(),
            auth_token: auth_token.into(),
            state: Arc::default(),
        }
    }

    /// Answers the next requests with `answers`, in turn; after them, [`Answer::Created`].
    pub fn then(&self, answers: impl IntoIterator<Item = Answer>) -> &Self {
        self.state.lock().unwrap().script.extend(answers);
        self
    }

    /// Where herald's requests broke twilio-oai's CreateMessage / CreateCall.
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    pub fn served(&self) -> usize {
        self.state.lock().unwrap().served
    }

    fn violation(&self, what: String) -> ResponseTemplate {
        self.state.lock().unwrap().violations.push(what);
        // Twilio's answer to a malformed request (e.g. 21604 'To' phone number is required).
        error(21604, None)
    }

    fn check(&self, request: &Request) -> Result<Resource, Box<ResponseTemplate>> {
        if request.method.as_str() != "POST" {
            return Err(Box::new(self.violation(format!("method {}", request.method))));
        }
        let messages = format!("/2010-04-01/Accounts/{}/Messages.json", self.account_sid);
        let calls = format!("/2010-04-01/Accounts/{}/Calls.json", self.account_sid);
        let resource = match request.url.path() {
            p if p == messages => Resource::Message,
            p if p == calls => Resource::Call,
            // Another account's or no resource: Twilio's 404.
            _ => return Err(Box::new(error(20404, None))),
        };
        if request.url.query().is_some() {
            return Err(Box::new(self.violation("a query string".into())));
        }
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.account_sid, self.auth_token))
        );
        let authorization = request.headers.get("authorization").and_then(|v| v.to_str().ok());
        if authorization != Some(expected.as_str()) {
            return Err(Box::new(error(20003, None)));
        }
        let content_type = request.headers.get("content-type").and_then(|v| v.to_str().ok());
        if content_type != Some("application/x-www-form-urlencoded") {
            return Err(Box::new(self.violation(format!("content type {content_type:?}"))));
        }
        let fields: Vec<(String, String)> = url::form_urlencoded::parse(&request.body).into_owned().collect();
        let problems = match resource {
            Resource::Message => check_message(&fields),
            Resource::Call => check_call(&fields),
        };
        if !problems.is_empty() {
            return Err(Box::new(self.violation(problems.join("; "))));
        }
        Ok(resource)
    }
}

#[derive(Clone, Copy)]
enum Resource {
    Message,
    Call,
}

/// One value per name, and only the names in `allowed`.
fn single<'a>(fields: &'a [(String, String)], allowed: &[&str], problems: &mut Vec<String>) -> Vec<(&'a str, &'a str)> {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for (name, value) in fields {
        if !allowed.contains(&name.as_str()) {
            problems.push(format!("field {name} is not one herald sends"));
        }
        if seen.iter().any(|(n, _)| n == name) {
            problems.push(format!("field {name} twice"));
        }
        seen.push((name, value));
    }
    seen
}

fn get<'a>(fields: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

fn is_e164(s: &str) -> bool {
    s.strip_prefix('+')
        .is_some_and(|d| (2..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0'))
}

/// `format: uri`, and Twilio's "URL must contain a valid hostname and underscores are not allowed".
fn check_callback(fields: &[(&str, &str)], problems: &mut Vec<String>) {
    if let Some(callback) = get(fields, "StatusCallback") {
        match url::Url::parse(callback) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.contains('_')) => {}
            _ => problems.push("StatusCallback is not an http(s) URL with a valid hostname".into()),
        }
    }
}

/// CreateMessage: `To` required (E.164 for SMS); `From` or `MessagingServiceSid` (`^MG[0-9a-fA-F]{32}$`);
/// `Body` (herald sends no media or content template), at most 1,600 characters; `ValidityPeriod` an integer
/// of 1..=36000; `StatusCallback` a URL.
fn check_message(fields: &[(String, String)]) -> Vec<String> {
    if fields.iter().any(|(k, v)| k == "To" && v.starts_with("whatsapp:")) {
        return check_whatsapp_message(fields);
    }
    let mut problems = Vec::new();
    let fields = single(
        fields,
        &[
            "To",
            "From",
            "MessagingServiceSid",
            "Body",
            "ValidityPeriod",
            "StatusCallback",
        ],
        &mut problems,
    );
    match get(&fields, "To") {
        Some(to) if is_e164(to) => {}
        other => problems.push(format!("To {other:?} is not E.164")),
    }
    match (get(&fields, "From"), get(&fields, "MessagingServiceSid")) {
        (None, None) => problems.push("neither From nor MessagingServiceSid".into()),
        (Some(""), _) => problems.push("From is empty".into()),
        (_, Some(sid))
            if !(sid.len() == 34 && sid.starts_with("MG") && sid[2..].bytes().all(|b| b.is_ascii_hexdigit())) =>
        {
            problems.push("MessagingServiceSid is not ^MG[0-9a-fA-F]{32}$".into())
        }
        _ => {}
    }
    match get(&fields, "Body") {
        Some(body) if !body.is_empty() && body.chars().count() <= 1600 => {}
        _ => problems.push("Body missing, empty or over 1,600 characters".into()),
    }
    if let Some(validity) = get(&fields, "ValidityPeriod")
        && !validity.parse::<u32>().is_ok_and(|v| (1..=36_000).contains(&v))
    {
        problems.push(format!("ValidityPeriod {validity:?} is not an integer of 1..=36000"));
    }
    check_callback(&fields, &mut problems);
    problems
}

/// CreateMessage for WhatsApp (https://www.twilio.com/docs/whatsapp/api, Content API
/// https://www.twilio.com/docs/content/send-templates-created-with-the-content-editor): `To` and `From` are
/// `whatsapp:` and an E.164 number; a template is `ContentSid` (`^HX[0-9a-fA-F]{32}$`) with
/// `ContentVariables`, a JSON object of string values as a string, and then no `Body`; `ValidityPeriod` and
/// `StatusCallback` as for SMS.
fn check_whatsapp_message(fields: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    let fields = single(
        fields,
        &[
            "To",
            "From",
            "ContentSid",
            "ContentVariables",
            "ValidityPeriod",
            "StatusCallback",
        ],
        &mut problems,
    );
    for name in ["To", "From"] {
        match get(&fields, name).and_then(|v| v.strip_prefix("whatsapp:")) {
            Some(n) if is_e164(n) => {}
            _ => problems.push(format!("{name} is not whatsapp:+E.164")),
        }
    }
    match get(&fields, "ContentSid") {
        Some(sid) if sid.len() == 34 && sid.starts_with("HX") && sid[2..].bytes().all(|b| b.is_ascii_hexdigit()) => {}
        _ => problems.push("ContentSid missing or not ^HX[0-9a-fA-F]{32}$".into()),
    }
    let variables = get(&fields, "ContentVariables").and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok());
    match variables.as_ref().and_then(|v| v.as_object()) {
        Some(map) if !map.is_empty() && map.values().all(serde_json::Value::is_string) => {}
        _ => problems.push("ContentVariables is not a JSON object of strings".into()),
    }
    if let Some(validity) = get(&fields, "ValidityPeriod")
        && !validity.parse::<u32>().is_ok_and(|v| (1..=36_000).contains(&v))
    {
        problems.push(format!("ValidityPeriod {validity:?} is not an integer of 1..=36000"));
    }
    check_callback(&fields, &mut problems);
    problems
}

/// CreateCall: `To` and `From` required (phone numbers); `Twiml` (herald gives no `Url`), at most 4,000
/// characters, a `<Response>` document; `StatusCallback` a URL. Calls have no validity field.
fn check_call(fields: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    let fields = single(fields, &["To", "From", "Twiml", "StatusCallback"], &mut problems);
    for name in ["To", "From"] {
        match get(&fields, name) {
            Some(n) if is_e164(n) => {}
            other => problems.push(format!("{name} {other:?} is not E.164")),
        }
    }
    match get(&fields, "Twiml") {
        Some(t) if t.starts_with("<Response>") && t.ends_with("</Response>") && t.chars().count() <= 4000 => {}
        _ => problems.push("Twiml missing, not a <Response> or over 4,000 characters".into()),
    }
    check_callback(&fields, &mut problems);
    problems
}

/// Twilio's error answer for `code`.
pub fn error(code: u32, retry_after: Option<u64>) -> ResponseTemplate {
    let status = http_status_of(code);
    let mut answer = ResponseTemplate::new(status).set_body_json(json!({
        "code": code,
        "message": format!("Twilio error {code}"),
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    }));
    if let Some(seconds) = retry_after {
        answer = answer.insert_header("Retry-After", seconds.to_string().as_str());
    }
    answer
}

fn created(resource: Resource, account_sid: &str, n: usize, fields: &[(String, String)]) -> ResponseTemplate {
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let body = match resource {
        // Trimmed from twilio-oai's CreateMessage 201 example.
        Resource::Message => json!({
            "account_sid": account_sid, "api_version": "2010-04-01", "body": field("Body"),
            "date_created": "Thu, 24 Aug 2023 05:01:45 +0000", "date_sent": null, "date_updated": "Thu, 24 Aug 2023 05:01:45 +0000",
            "direction": "outbound-api", "error_code": null, "error_message": null, "from": field("From"),
            "messaging_service_sid": field("MessagingServiceSid"), "num_media": "0", "num_segments": "1", "price": null,
            "price_unit": "USD", "sid": format!("SM{n:032x}"), "status": "queued", "to": field("To"),
            "uri": format!("/2010-04-01/Accounts/{account_sid}/Messages/SM{n:032x}.json"),
        }),
        Resource::Call => json!({
            "account_sid": account_sid, "api_version": "2010-04-01", "direction": "outbound-api",
            "from": field("From"), "to": field("To"), "sid": format!("CA{n:032x}"), "status": "queued",
            "start_time": null, "end_time": null, "duration": null, "price": null,
            "uri": format!("/2010-04-01/Accounts/{account_sid}/Calls/CA{n:032x}.json"),
        }),
    };
    ResponseTemplate::new(201).set_body_json(body)
}

impl Respond for TwilioApi {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let resource = match self.check(request) {
            Ok(resource) => resource,
            Err(refusal) => return *refusal,
        };
        let (answer, n) = {
            let mut state = self.state.lock().unwrap();
            state.served += 1;
            (state.script.pop_front().unwrap_or(Answer::Created), state.served)
        };
        match answer {
            Answer::Created => {
                let fields: Vec<(String, String)> = url::form_urlencoded::parse(&request.body).into_owned().collect();
                created(resource, &self.account_sid, n, &fields)
            }
            Answer::Error(code) => error(code, None),
            Answer::ErrorRetryAfter(code, seconds) => error(code, Some(seconds)),
            Answer::Bare(status) => ResponseTemplate::new(status),
        }
    }
}
