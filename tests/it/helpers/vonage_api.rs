//! A Vonage SMS API server written from Vonage's API specification (`POST /sms/json`,
//! <https://developer.vonage.com/en/api/sms#send-an-sms>) and its status table
//! (<https://developer.vonage.com/en/api-errors/sms>). It checks each request field by field (method, path,
//! content type, credentials in the form, each documented field's range, nothing undocumented), splits the
//! text into parts as an SMS carries it, and answers per part as Vonage does: HTTP 200 with `message-count`
//! and one `messages[]` entry per part, a chosen part failing with a chosen status and `error-text`.
//!
//! What the server finds wrong in a request is also kept in [`VonageApi::problems`], so that a test asserts
//! herald sent nothing Vonage would refuse or misread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// The fields of the spec's `NewMessage`: anything else is undocumented.
const DOCUMENTED: &[&str] = &[
    "account-ref",
    "api_key",
    "api_secret",
    "body",
    "callback",
    "client-ref",
    "content-id",
    "entity-id",
    "from",
    "message-class",
    "protocol-id",
    "sig",
    "status-report-req",
    "text",
    "to",
    "ttl",
    "type",
    "udh",
];

/// GSM 03.38: the basic table (one septet) and the extension table (escape + one septet).
const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM_EXTENSION: &str = "^{}\\[~]|€\u{c}";

#[derive(Clone)]
pub struct VonageApi {
    api_key: String,
    api_secret: String,
    /// Part (0-based) → `status`, `error-text`.
    failures: Arc<Mutex<HashMap<usize, (String, String)>>>,
    problems: Arc<Mutex<Vec<String>>>,
    /// Parts taken, over every request.
    taken: Arc<Mutex<Vec<String>>>,
    ids: Arc<AtomicU64>,
}

impl VonageApi {
    pub fn new(api_key: &str, api_secret: &str) -> VonageApi {
        VonageApi {
            api_key: api_key.into(),
            api_secret: api_secret.into(),
            failures: Arc::default(),
            problems: Arc::default(),
            taken: Arc::default(),
            ids: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Part `part` (0-based) of every text fails with `status` and `error_text`.
    pub fn failing(self, part: usize, status: &str, error_text: &str) -> VonageApi {
        self.failures
            .lock()
            .unwrap()
            .insert(part, (status.into(), error_text.into()));
        self
    }

    pub async fn start(self) -> MockServer {
        let server = MockServer::start().await;
        Mock::given(wiremock::matchers::any())
            .respond_with(self)
            .mount(&server)
            .await;
        server
    }

    /// What the server found wrong in the requests it got.
    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap().clone()
    }

    /// The text of each part Vonage took, in order.
    pub fn taken(&self) -> Vec<String> {
        self.taken.lock().unwrap().clone()
    }

    fn problem(&self, text: String) {
        self.problems.lock().unwrap().push(text);
    }
}

/// Vonage's answer to a request it refuses whole: HTTP 200, one message with the status.
fn refused(status: &str, error_text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "message-count": "1",
        "messages": [{"status": status, "error-text": error_text}]
    }))
}

fn gsm_septets(c: char) -> Option<usize> {
    if GSM_BASIC.contains(c) {
        Some(1)
    } else if GSM_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// The text cut into SMS parts: 160 septets (GSM-7) or 70 UTF-16 units (UCS-2) fit one message; a longer
/// text is cut into parts of 153 / 67 (the rest of each carries the concatenation header), never inside
/// an escape sequence or a surrogate pair.
pub fn parts(text: &str, unicode: bool) -> Vec<String> {
    let cost = |c: char| {
        if unicode {
            c.len_utf16()
        } else {
            gsm_septets(c).unwrap_or(1)
        }
    };
    let (single, multi) = if unicode { (70, 67) } else { (160, 153) };
    let total: usize = text.chars().map(cost).sum();
    if total <= single {
        return vec![text.to_owned()];
    }
    let mut parts = vec![String::new()];
    let mut used = 0;
    for c in text.chars() {
        if used + cost(c) > multi {
            parts.push(String::new());
            used = 0;
        }
        used += cost(c);
        if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

impl Respond for VonageApi {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if request.method.as_str() != "POST" || request.url.path() != "/sms/json" {
            self.problem(format!("{} {}", request.method, request.url.path()));
            return ResponseTemplate::new(404);
        }
        let content_type = request
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if content_type != "application/x-www-form-urlencoded" {
            self.problem(format!("content-type {content_type}"));
        }
        if request.headers.contains_key("authorization") {
            self.problem("an Authorization header: the SMS API takes credentials in the form".into());
        }
        let mut form: HashMap<String, String> = HashMap::new();
        for (name, value) in url::form_urlencoded::parse(&request.body) {
            if form.insert(name.to_string(), value.to_string()).is_some() {
                self.problem(format!("`{name}` twice"));
            }
        }
        for name in form.keys() {
            if !DOCUMENTED.contains(&name.as_str()) {
                self.problem(format!("undocumented field `{name}`"));
                return refused("3", &format!("Invalid parameter: {name}"));
            }
        }
        for required in ["api_key", "api_secret", "from", "to", "text"] {
            if !form.contains_key(required) {
                self.problem(format!("missing `{required}`"));
                return refused("2", &format!("Missing {required}"));
            }
        }
        let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
        let key = field("api_key");
        let secret = field("api_secret");
        if key.len() != 8 || !(6..=32).contains(&secret.len()) {
            self.problem("api_key / api_secret outside the spec's lengths".into());
        }
        if key != self.api_key || secret != self.api_secret {
            return refused("4", "Bad Credentials");
        }
        let to = field("to");
        if !(7..=15).contains(&to.len()) || !to.bytes().all(|b| b.is_ascii_digit()) {
            self.problem(format!("`to` is not \\d{{7,15}} ({} characters)", to.len()));
            return refused("3", "Invalid to param");
        }
        let from = field("from");
        let numeric = from.bytes().all(|b| b.is_ascii_digit());
        if from.is_empty() || from.starts_with('+') || (!numeric && from.chars().count() > 11) {
            self.problem(format!("`from` {from:?} is neither a number without + nor a sender id"));
            return refused("15", "Illegal Sender Address - rejected");
        }
        if let Some(ttl) = form.get("ttl") {
            match ttl.parse::<u64>() {
                Ok(ms) if (20_000..=604_800_000).contains(&ms) => {}
                _ => {
                    self.problem(format!("`ttl` {ttl} outside 20000..604800000"));
                    return refused("3", "Invalid ttl");
                }
            }
        }
        let kind = form.get("type").map_or("text", String::as_str);
        let text = field("text");
        let unicode = match kind {
            "text" => {
                if text.chars().any(|c| gsm_septets(c).is_none()) {
                    // Vonage would send it in the GSM alphabet, losing what is not in it.
                    self.problem("type=text for a text outside GSM-7".into());
                }
                false
            }
            "unicode" => true,
            other => {
                self.problem(format!("type {other}"));
                return refused("3", "Invalid type");
            }
        };
        if text.is_empty() {
            self.problem("empty text".into());
            return refused("2", "Missing text");
        }
        let parts = parts(text, unicode);
        let failures = self.failures.lock().unwrap().clone();
        let messages: Vec<Value> = parts
            .iter()
            .enumerate()
            .map(|(i, part)| match failures.get(&i) {
                Some((status, error_text)) => json!({"status": status, "error-text": error_text}),
                None => {
                    self.taken.lock().unwrap().push(part.clone());
                    let id = self.ids.fetch_add(1, Ordering::Relaxed);
                    json!({
                        "to": to,
                        "message-id": format!("1A000000{id:08X}"),
                        "status": "0",
                        "remaining-balance": "3.14159265",
                        "message-price": "0.03330000",
                        "network": "12345"
                    })
                }
            })
            .collect();
        ResponseTemplate::new(200).set_body_json(json!({
            "message-count": messages.len().to_string(),
            "messages": messages
        }))
    }
}
