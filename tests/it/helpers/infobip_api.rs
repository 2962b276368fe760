//! An Infobip server for `POST /sms/2/text/advanced` and `POST /tts/3/advanced`, written from Infobip's
//! SDK models (infobip-api-python-sdk `SMSMessageBody` / `CoreMessage`, infobip-api-python-client
//! `CallsAdvancedBody` / `CallsAdvancedMessage` and its `CallsLanguage` list) and the status table of
//! <https://www.infobip.com/docs/essentials/response-status-and-error-codes>. It checks `Authorization: App
//! <key>`, the content type and the JSON body field by field (documented fields only, `destinations[].to`
//! without `+`, `validityPeriod` 1..2880 minutes, `language` from Infobip's list), and answers as Infobip
//! does: per destination (`bulkId`, `messages[]` with `to`, `messageId`, `status {groupId, groupName, id,
//! name, description}`), or its error body (`requestError.serviceException {messageId, text}`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const SMS_BODY: &[&str] = &[
    "bulkId",
    "messages",
    "sendingSpeedLimit",
    "urlOptions",
    "tracking",
    "includeSmsCountInResponse",
];
const SMS_MESSAGE: &[&str] = &[
    "callbackData",
    "deliveryTimeWindow",
    "destinations",
    "flash",
    "from",
    "intermediateReport",
    "notifyContentType",
    "notifyUrl",
    "regional",
    "sendAt",
    "validityPeriod",
    "text",
    "language",
    "transliteration",
    "entityId",
    "applicationId",
];
const TTS_BODY: &[&str] = &["bulkId", "messages"];
const TTS_MESSAGE: &[&str] = &[
    "audioFileUrl",
    "callTimeout",
    "callTransfers",
    "callbackData",
    "deliveryTimeWindow",
    "destinations",
    "dtmfTimeout",
    "from",
    "language",
    "machineDetection",
    "maxDtmf",
    "notifyContentType",
    "notifyContentVersion",
    "notifyUrl",
    "pause",
    "repeatDtmf",
    "retry",
    "ringTimeout",
    "sendAt",
    "sendingSpeed",
    "speechRate",
    "text",
    "validityPeriod",
    "voice",
];

/// `CallsLanguage`, as Infobip's client lists it.
pub const LANGUAGES: &[&str] = &[
    "ar",
    "bn",
    "bg",
    "ca",
    "zh-cn",
    "zh-tw",
    "hr",
    "cs",
    "da",
    "nl",
    "en",
    "en-au",
    "en-gb",
    "en-ca",
    "en-in",
    "en-ie",
    "en-gb-wls",
    "epo",
    "fil-ph",
    "fi",
    "fr",
    "fr-ca",
    "fr-ch",
    "de",
    "de-at",
    "de-ch",
    "el",
    "gu",
    "he",
    "hi",
    "hu",
    "is",
    "id",
    "it",
    "ja",
    "kn",
    "ko",
    "ms",
    "ml",
    "no",
    "pl",
    "pt-pt",
    "pt-br",
    "ro",
    "ru",
    "sk",
    "sl",
    "es",
    "es-gl",
    "es-mx",
    "sv",
    "ta",
    "te",
    "th",
    "tr",
    "uk",
    "vi",
    "wls",
    "ar-ma",
    "ur-pk",
    "mr-in",
];

/// Infobip's general statuses: name → group id, group name, id, description.
const STATUSES: &[(&str, u8, &str, u16, &str)] = &[
    (
        "PENDING_WAITING_DELIVERY",
        1,
        "PENDING",
        3,
        "Message sent, waiting for delivery report",
    ),
    ("PENDING_ENROUTE", 1, "PENDING", 7, "Message sent to next instance"),
    ("PENDING_ACCEPTED", 1, "PENDING", 26, "Message sent to next instance"),
    (
        "UNDELIVERABLE_REJECTED_OPERATOR",
        2,
        "UNDELIVERABLE",
        4,
        "Message rejected by operator",
    ),
    (
        "UNDELIVERABLE_NOT_DELIVERED",
        2,
        "UNDELIVERABLE",
        9,
        "Message sent not delivered",
    ),
    (
        "DELIVERED_TO_OPERATOR",
        3,
        "DELIVERED",
        2,
        "Message delivered to operator",
    ),
    (
        "DELIVERED_TO_HANDSET",
        3,
        "DELIVERED",
        5,
        "Message delivered to handset",
    ),
    ("EXPIRED_EXPIRED", 4, "EXPIRED", 15, "Message expired"),
    ("EXPIRED_DLR_UNKNOWN", 4, "EXPIRED", 29, "Unknown delivery report"),
    ("REJECTED_NETWORK", 5, "REJECTED", 6, "Network is forbidden"),
    ("REJECTED_PREFIX_MISSING", 5, "REJECTED", 8, "Number prefix missing"),
    ("REJECTED_DND", 5, "REJECTED", 10, "Destination on DND list"),
    ("REJECTED_SOURCE", 5, "REJECTED", 11, "Invalid Source address"),
    ("REJECTED_NOT_ENOUGH_CREDITS", 5, "REJECTED", 12, "Not enough credits"),
    ("REJECTED_SENDER", 5, "REJECTED", 13, "By Sender"),
    ("REJECTED_DESTINATION", 5, "REJECTED", 14, "By Destination"),
    (
        "REJECTED_PREPAID_PACKAGE_EXPIRED",
        5,
        "REJECTED",
        17,
        "Prepaid package expired",
    ),
    (
        "REJECTED_DESTINATION_NOT_REGISTERED",
        5,
        "REJECTED",
        18,
        "Destination not registered",
    ),
    ("REJECTED_ROUTE_NOT_AVAILABLE", 5, "REJECTED", 19, "Route not available"),
    ("REJECTED_FLOODING_FILTER", 5, "REJECTED", 20, "Rejected flooding"),
    ("REJECTED_SYSTEM_ERROR", 5, "REJECTED", 21, "System error"),
    (
        "REJECTED_MESSAGE_TOO_LONG",
        5,
        "REJECTED",
        25,
        "Rejected message too long",
    ),
    ("MISSING_TO", 5, "REJECTED", 51, "Missing destination"),
    (
        "REJECTED_INVALID_DESTINATION",
        5,
        "REJECTED",
        52,
        "Invalid destination address",
    ),
];

/// Infobip's error body.
pub fn error(status: u16, message_id: &str, text: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({"requestError": {"serviceException": {"messageId": message_id, "text": text}}}))
}

#[derive(Clone)]
pub struct InfobipApi {
    api_key: String,
    /// The status every destination gets.
    status: Arc<Mutex<&'static str>>,
    problems: Arc<Mutex<Vec<String>>>,
    /// Each accepted request: path and body.
    accepted: Arc<Mutex<Vec<(String, Value)>>>,
    ids: Arc<AtomicU64>,
}

impl InfobipApi {
    pub fn new(api_key: &str) -> InfobipApi {
        InfobipApi {
            api_key: api_key.into(),
            status: Arc::new(Mutex::new("PENDING_ACCEPTED")),
            problems: Arc::default(),
            accepted: Arc::default(),
            ids: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Every destination gets the status named `name` (one of Infobip's, see [`STATUSES`]).
    pub fn answering(self, name: &'static str) -> InfobipApi {
        assert!(STATUSES.iter().any(|s| s.0 == name), "{name} is not an Infobip status");
        *self.status.lock().unwrap() = name;
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

    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> Vec<(String, Value)> {
        self.accepted.lock().unwrap().clone()
    }

    fn problem(&self, text: String) {
        self.problems.lock().unwrap().push(text);
    }

    fn bad_request(&self, what: String) -> ResponseTemplate {
        self.problem(what.clone());
        ResponseTemplate::new(400).set_body_json(json!({"requestError": {"serviceException": {
            "messageId": "BAD_REQUEST", "text": "Bad request", "validationErrors": {"request": [what]}}}}))
    }

    /// Only documented keys, as `place` documents them.
    fn only(object: &Map<String, Value>, documented: &[&str], place: &str) -> Result<(), String> {
        match object.keys().find(|k| !documented.contains(&k.as_str())) {
            Some(key) => Err(format!("undocumented `{key}` in {place}")),
            None => Ok(()),
        }
    }

    /// What is wrong with a message, else its destinations.
    fn check_message(message: &Value, tts: bool) -> Result<Vec<String>, String> {
        let Some(message) = message.as_object() else {
            return Err("a message is not an object".into());
        };
        Self::only(message, if tts { TTS_MESSAGE } else { SMS_MESSAGE }, "a message")?;
        let Some(destinations) = message.get("destinations").and_then(Value::as_array) else {
            return Err("no `destinations`".into());
        };
        let mut to = Vec::new();
        for destination in destinations {
            let Some(destination) = destination.as_object() else {
                return Err("a destination is not an object".into());
            };
            Self::only(destination, &["to", "messageId"], "a destination")?;
            match destination.get("to").and_then(Value::as_str) {
                Some(number) if (1..=50).contains(&number.len()) && number.bytes().all(|b| b.is_ascii_digit()) => {
                    to.push(number.to_owned())
                }
                _ => return Err("`to` is not a number in international form without +".into()),
            }
        }
        if to.is_empty() {
            return Err("empty `destinations`".into());
        }
        match message.get("from") {
            None => {}
            Some(Value::String(from)) if !from.is_empty() && !from.starts_with('+') => {}
            Some(_) => return Err("`from` is not a number without + or a sender id".into()),
        }
        match message.get("text").and_then(Value::as_str) {
            Some(text) if !text.trim().is_empty() && (!tts || text.chars().count() <= 1400) => {}
            _ => return Err("`text` missing, empty or too long".into()),
        }
        match message.get("validityPeriod") {
            None => {}
            Some(v) if v.as_u64().is_some_and(|m| (1..=2880).contains(&m)) => {}
            Some(v) => return Err(format!("`validityPeriod` {v} is not 1..2880 minutes")),
        }
        if tts {
            match message.get("language") {
                None => {}
                Some(Value::String(l)) if LANGUAGES.contains(&l.as_str()) => {}
                Some(l) => return Err(format!("`language` {l} is not one Infobip lists")),
            }
        } else if message.contains_key("language") {
            return Err("herald sends no SMS `language`".into());
        }
        Ok(to)
    }
}

impl Respond for InfobipApi {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let tts = match (request.method.as_str(), request.url.path()) {
            ("POST", "/sms/2/text/advanced") => false,
            ("POST", "/tts/3/advanced") => true,
            (method, path) => {
                self.problem(format!("{method} {path}"));
                return error(404, "NOT_FOUND", "Requested URL not found");
            }
        };
        let header = |name: &str| {
            request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        };
        if header("authorization") != format!("App {}", self.api_key) {
            return error(401, "UNAUTHORIZED", "Invalid login details");
        }
        if header("content-type") != "application/json" {
            self.problem(format!("content-type {}", header("content-type")));
            return error(415, "UNSUPPORTED_MEDIA_TYPE", "Unsupported media type");
        }
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&request.body) else {
            return self.bad_request("the body is not a JSON object".into());
        };
        if let Err(what) = Self::only(&body, if tts { TTS_BODY } else { SMS_BODY }, "the body") {
            return self.bad_request(what);
        }
        let Some(messages) = body.get("messages").and_then(Value::as_array).filter(|m| !m.is_empty()) else {
            return self.bad_request("no `messages`".into());
        };
        let mut destinations = Vec::new();
        for message in messages {
            match Self::check_message(message, tts) {
                Ok(to) => destinations.extend(to),
                Err(what) => return self.bad_request(what),
            }
        }
        self.accepted
            .lock()
            .unwrap()
            .push((request.url.path().to_owned(), Value::Object(body.clone())));
        let name = *self.status.lock().unwrap();
        let Some(&(_, group_id, group_name, id, description)) = STATUSES.iter().find(|s| s.0 == name) else {
            return error(500, "GENERAL_ERROR", "Something went wrong");
        };
        let bulk = self.ids.fetch_add(1, Ordering::Relaxed);
        let messages: Vec<Value> = destinations
            .into_iter()
            .enumerate()
            .map(|(i, to)| {
                json!({
                    "to": to,
                    "messageId": format!("{bulk:04x}be2d4219-3af1-78856-aabe-{i:012x}"),
                    "status": {"groupId": group_id, "groupName": group_name, "id": id, "name": name,
                               "description": description}
                })
            })
            .collect();
        ResponseTemplate::new(200)
            .set_body_json(json!({"bulkId": format!("2034072219640523{bulk:03}"), "messages": messages}))
    }
}
