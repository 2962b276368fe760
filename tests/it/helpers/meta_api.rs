//! A WhatsApp Cloud API test server built from Meta's documentation: "Send template message"
//! (`POST /{Version}/{Phone-Number-ID}/messages`, Bearer token, JSON), authentication templates with a
//! copy-code / one-tap button (the code as the body parameter and as the `url` button's parameter,
//! <https://developers.facebook.com/docs/whatsapp/business-management-api/authentication-templates>), and
//! the Cloud API error codes (<https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes>)
//! with the HTTP status Meta gives each. It checks each request field by field and answers as Meta does:
//! 200 with `{"messaging_product", "contacts": [{"input", "wa_id"}], "messages": [{"id": "wamid.…"}]}`, or
//! Graph API's error body `{"error": {"message", "type", "code", "error_subcode"?, "error_data":
//! {"messaging_product", "details"}, "fbtrace_id"}}`.
//!
//! A request that breaks the documentation is answered with Meta's 400 (`100` invalid parameter) and
//! recorded: a test asserts [`MetaApi::violations`] is empty.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use wiremock::{Request, Respond, ResponseTemplate};

/// How the server answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 200 with the message's `wamid`.
    Sent,
    /// Meta's error body for `code`, with the HTTP status Meta gives it ([`http_status_of`]).
    Error(u64),
    /// Meta's error body for `code` with a `Retry-After` header (seconds).
    ErrorRetryAfter(u64, u64),
    /// A 200 whose body is not Meta's (cut off by a proxy).
    Garbled,
    /// A bare status with no Graph API body (a load balancer in front of Meta).
    Bare(u16),
}

/// The HTTP status Meta's error-code table gives each code.
pub fn http_status_of(code: u64) -> u16 {
    match code {
        0 | 190 => 401,
        10 | 200..=299 | 368 | 130497 | 131005 | 131031 => 403,
        3 | 131000 | 131057 => 500,
        2 | 131016 | 133004 => 503,
        132001 => 404,
        _ => 400,
    }
}

/// The title Meta puts in `message` (`(#131026) Message Undeliverable`).
fn title_of(code: u64) -> &'static str {
    match code {
        100 => "Invalid parameter",
        190 => "Access token has expired",
        10 => "Permission denied",
        200 => "Requires whatsapp_business_messaging permission",
        368 => "Temporarily blocked for policies violations",
        130429 => "Rate limit hit",
        131000 => "Something went wrong",
        131008 => "Required parameter is missing",
        131009 => "Parameter value is not valid",
        131016 => "Service unavailable",
        131026 => "Message Undeliverable",
        131031 => "Account has been locked",
        131042 => "Business eligibility payment issue",
        131048 => "Spam rate limit hit",
        131056 => "(Business Account, Consumer Account) pair rate limit hit",
        132000 => "Number of parameters does not match the expected number of params",
        132001 => "Template name does not exist in the translation",
        _ => "Error",
    }
}

#[derive(Default)]
struct State {
    script: VecDeque<Answer>,
    violations: Vec<String>,
    served: usize,
    /// Each well-formed request's `template.language.code` and parameter text.
    sent: Vec<(String, String)>,
}

/// A documentation-checking Cloud API for one business number. Clones share their state.
#[derive(Clone)]
pub struct MetaApi {
    pub api_version: String,
    pub phone_number_id: String,
    pub access_token: String,
    pub template: String,
    /// The languages the template is approved in: another is Meta's 132001.
    pub languages: Vec<String>,
    state: Arc<Mutex<State>>,
}

impl MetaApi {
    pub fn new(phone_number_id: &str, access_token: &str, template: &str, languages: &[&str]) -> MetaApi {
        MetaApi {
            api_version: "v23.0".into(),
            phone_number_id: phone_number_id.into(),
            access_token: access_token.into(),
            template: template.into(),
            languages: languages.iter().map(|l| (*l).to_owned()).collect(),
            state: Arc::default(),
        }
    }

    /// Answers the next requests with `answers`, in turn; after them, [`Answer::Sent`].
    pub fn then(&self, answers: impl IntoIterator<Item = Answer>) -> &Self {
        self.state.lock().unwrap().script.extend(answers);
        self
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    pub fn served(&self) -> usize {
        self.state.lock().unwrap().served
    }

    /// `(language code, code)` of each well-formed request.
    pub fn sent(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().sent.clone()
    }

    fn violation(&self, what: String) -> ResponseTemplate {
        self.state.lock().unwrap().violations.push(what.clone());
        error(100, None, Some(&what))
    }

    fn check(&self, request: &Request) -> Result<(String, String, String), Box<ResponseTemplate>> {
        if request.method.as_str() != "POST" {
            return Err(Box::new(self.violation(format!("method {}", request.method))));
        }
        let path = format!("/{}/{}/messages", self.api_version, self.phone_number_id);
        if request.url.path() != path {
            return Err(Box::new(
                self.violation(format!("path {} is not {path}", request.url.path())),
            ));
        }
        if request.url.query().is_some() {
            return Err(Box::new(self.violation("a query string".into())));
        }
        let authorization = request.headers.get("authorization").and_then(|v| v.to_str().ok());
        if authorization != Some(format!("Bearer {}", self.access_token).as_str()) {
            return Err(Box::new(error(190, None, None)));
        }
        let content_type = request.headers.get("content-type").and_then(|v| v.to_str().ok());
        if content_type != Some("application/json") {
            return Err(Box::new(self.violation(format!("content type {content_type:?}"))));
        }
        let body: Value = match serde_json::from_slice(&request.body) {
            Ok(body) => body,
            Err(_) => return Err(Box::new(self.violation("body is not JSON".into()))),
        };
        let problems = check_send(&body, &self.template);
        if !problems.is_empty() {
            return Err(Box::new(self.violation(problems.join("; "))));
        }
        let language = body["template"]["language"]["code"].as_str().unwrap_or("").to_owned();
        let code = body["template"]["components"][0]["parameters"][0]["text"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let to = body["to"].as_str().unwrap_or("").to_owned();
        Ok((language, code, to))
    }
}

/// Exactly these keys, no other.
fn keys(value: &Value, what: &str, expected: &[&str], problems: &mut Vec<String>) {
    let Some(object) = value.as_object() else {
        problems.push(format!("{what} is not an object"));
        return;
    };
    let mut got: Vec<&str> = object.keys().map(String::as_str).collect();
    got.sort_unstable();
    let mut want = expected.to_vec();
    want.sort_unstable();
    if got != want {
        problems.push(format!("{what} has keys {got:?}, not {want:?}"));
    }
}

fn one_text_parameter(component: &Value, what: &str, problems: &mut Vec<String>) -> Option<String> {
    let parameters = component["parameters"].as_array();
    match parameters.map(Vec::as_slice) {
        Some([p]) => {
            keys(p, &format!("{what} parameter"), &["type", "text"], problems);
            if p["type"] != "text" {
                problems.push(format!("{what} parameter type {} is not text", p["type"]));
            }
            p["text"].as_str().map(str::to_owned)
        }
        _ => {
            problems.push(format!("{what} does not have exactly one parameter"));
            None
        }
    }
}

/// The authentication template message as Meta documents it.
fn check_send(body: &Value, template: &str) -> Vec<String> {
    let mut problems = Vec::new();
    keys(
        body,
        "body",
        &["messaging_product", "to", "type", "template"],
        &mut problems,
    );
    if body["messaging_product"] != "whatsapp" {
        problems.push("messaging_product is not whatsapp".into());
    }
    if body["type"] != "template" {
        problems.push("type is not template".into());
    }
    match body["to"].as_str() {
        Some(to) if (8..=15).contains(&to.len()) && to.bytes().all(|b| b.is_ascii_digit()) => {}
        other => problems.push(format!("to {other:?} is not the number's digits")),
    }
    let t = &body["template"];
    keys(t, "template", &["name", "language", "components"], &mut problems);
    if t["name"] != template {
        problems.push(format!("template name {} is not the approved {template}", t["name"]));
    }
    keys(&t["language"], "template.language", &["code"], &mut problems);
    let Some([body_component, button]) = t["components"].as_array().map(Vec::as_slice) else {
        problems.push("components are not [body, button]".into());
        return problems;
    };
    keys(body_component, "body component", &["type", "parameters"], &mut problems);
    if body_component["type"] != "body" {
        problems.push("the first component is not the body".into());
    }
    keys(
        button,
        "button component",
        &["type", "sub_type", "index", "parameters"],
        &mut problems,
    );
    if button["type"] != "button" || button["sub_type"] != "url" {
        problems.push("the second component is not the url button".into());
    }
    // `index` is a string in Meta's reference ("0"), the button's position.
    if button["index"] != "0" {
        problems.push(format!("button index {} is not \"0\"", button["index"]));
    }
    let code = one_text_parameter(body_component, "body", &mut problems);
    let again = one_text_parameter(button, "button", &mut problems);
    match (&code, &again) {
        (Some(a), Some(b)) if a == b && (4..=10).contains(&a.len()) && a.bytes().all(|c| c.is_ascii_digit()) => {}
        _ => problems.push("the body and button parameters are not the same code".into()),
    }
    problems
}

/// Meta's error answer for `code`.
pub fn error(code: u64, retry_after: Option<u64>, details: Option<&str>) -> ResponseTemplate {
    let status = http_status_of(code);
    let mut inner = json!({
        "message": format!("(#{code}) {}", title_of(code)),
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": details.unwrap_or(title_of(code))},
        "fbtrace_id": "AazAfYq8lJsbqy2H2c8r4Zg",
    });
    if code == 190 {
        // The expired-session subcode Meta adds to 190.
        inner["error_subcode"] = 463.into();
    }
    let mut answer = ResponseTemplate::new(status).set_body_json(json!({ "error": inner }));
    if let Some(seconds) = retry_after {
        answer = answer.insert_header("Retry-After", seconds.to_string().as_str());
    }
    answer
}

/// The wamid of the `n`th message.
pub fn wamid(n: usize) -> String {
    format!("wamid.HBgLMTQxNTU1NTAxMjMVAgARGBI{n:020X}AA==")
}

/// What herald publishes as `provider_message_id` for a `wamid` (docs/providers/meta.md, "Answers"): `meta-`
/// and the first 12 bytes of its SHA-256 in hex, never the `wamid`, which spells the recipient's number.
pub fn published_id(wamid: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(wamid.as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("meta-{hex}")
}

/// The test server's `wamid` (one of its first 100) that an event's `provider_message_id` stands for.
pub fn wamid_of(event: &serde_json::Value) -> String {
    (1..=100)
        .map(wamid)
        .find(|w| event["provider_message_id"] == published_id(w).as_str())
        .unwrap_or_else(|| panic!("provider_message_id is no hash of a wamid the server gave: {event}"))
}

impl Respond for MetaApi {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let (language, code, to) = match self.check(request) {
            Ok(checked) => checked,
            Err(refusal) => return *refusal,
        };
        let (answer, n) = {
            let mut state = self.state.lock().unwrap();
            state.served += 1;
            state.sent.push((language.clone(), code));
            (state.script.pop_front().unwrap_or(Answer::Sent), state.served)
        };
        if !matches!(answer, Answer::Error(_) | Answer::ErrorRetryAfter(..) | Answer::Bare(_))
            && !self.languages.contains(&language)
        {
            return error(132001, None, Some("template name does not exist in the translation"));
        }
        match answer {
            Answer::Sent => ResponseTemplate::new(200).set_body_json(json!({
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to}],
                "messages": [{"id": wamid(n), "message_status": "accepted"}],
            })),
            Answer::Error(code) => error(code, None, None),
            Answer::ErrorRetryAfter(code, seconds) => error(code, Some(seconds), None),
            Answer::Garbled => ResponseTemplate::new(200).set_body_string("{\"messaging_prod"),
            Answer::Bare(status) => ResponseTemplate::new(status),
        }
    }
}
