//! Twilio Programmable Messaging (SMS) and Voice, over the REST API (docs/providers/README.md).

use std::time::Duration;

use base64::Engine;
use http::StatusCode;
use http::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use url::Url;

use super::http::{HttpClient, basic_authorization, exchange};
use super::{Ambiguous, Class, Provider, ProviderCode, ProviderError, Receipt, SetupError, Validity};
use crate::config::TwilioConfig;
use crate::job::{Job, Locale};
use crate::privacy::scrub;
use crate::templates::Rendered;
use crate::templates::twiml::{SAY_VOICES, SayVoice, say_voice, twiml};

pub struct Twilio {
    client: HttpClient,
    // Parsed and encoded once: per request they were a measurable share of herald's allocations.
    messages_url: Url,
    calls_url: Url,
    authorization: HeaderValue,
    from: String,
    messaging_service_sid: String,
    /// `whatsapp:` and `twilio.whatsapp_from`, empty when unset.
    whatsapp_from: String,
    whatsapp_content_sid: String,
    /// `twilio.status_callback_url`: sent with every message and call when set (docs/receipts.md).
    status_callback: Option<String>,
    /// What `<Say>` speaks when Twilio cannot speak a template's locale: `templates.default_locale`'s voice.
    default_voice: &'static SayVoice,
}

/// Twilio's error body: `{"code": 21211, "message": "...", "more_info": "...", "status": 400}`.
#[derive(Deserialize)]
struct TwilioError {
    code: Option<serde_json::Value>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct Created {
    sid: Option<String>,
}

/// `ValidityPeriod`'s range on the Messages resource, in seconds: "integers from 1 to 36000", default 36000
/// (https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource).
pub const VALIDITY_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(36_000));

impl Twilio {
    /// `client` is shared by every provider call: one connection pool for the process. `default_locale`
    /// is `templates.default_locale`: the voice of a call whose locale Twilio cannot speak.
    ///
    /// Fails at start-up, naming the keys, when `twilio.base_url` and `twilio.account_sid` do not form a URL
    /// (before, every request failed instead).
    pub fn new(config: &TwilioConfig, default_locale: &Locale, client: HttpClient) -> Result<Twilio, SetupError> {
        let base = config.base_url.as_str().trim_end_matches('/');
        let account = &config.account_sid;
        let url = |resource: &str| {
            Url::parse(&format!("{base}/2010-04-01/Accounts/{account}/{resource}.json")).map_err(|source| {
                SetupError::Url {
                    keys: "twilio.base_url / twilio.account_sid",
                    what: "a URL",
                    source,
                }
            })
        };
        let authorization =
            basic_authorization(account, config.auth_token.expose()).map_err(|source| SetupError::Authorization {
                keys: "twilio.account_sid / twilio.auth_token",
                source,
            })?;
        Ok(Twilio {
            client,
            messages_url: url("Messages")?,
            calls_url: url("Calls")?,
            authorization,
            from: config.from.as_ref().map_or_else(String::new, |n| n.expose().to_owned()),
            messaging_service_sid: config.messaging_service_sid.clone(),
            whatsapp_from: config
                .whatsapp_from
                .as_ref()
                .map_or_else(String::new, |n| format!("whatsapp:{}", n.expose())),
            whatsapp_content_sid: config.whatsapp_content_sid.clone(),
            status_callback: config
                .status_callback_url
                .as_ref()
                .map(|u| u.as_url().as_str().to_owned()),
            default_voice: say_voice(default_locale).unwrap_or(&SAY_VOICES[0]),
        })
    }

    /// `form` plus `StatusCallback` when receipts are on.
    fn with_status_callback<'a>(&'a self, form: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut fields = form.to_vec();
        if let Some(url) = &self.status_callback {
            fields.push(("StatusCallback", url.as_str()));
        }
        fields
    }

    async fn post(&self, url: &Url, form: &[(&str, &str)]) -> Result<Receipt, ProviderError> {
        let request = self
            .client
            .post(url)
            .header(AUTHORIZATION, self.authorization.clone())
            .form(form);
        let exchanged = match exchange(self.name(), request).await {
            Ok(answer) => answer,
            Err(no_answer) => return no_answer.into_result(),
        };
        let (status, body) = (exchanged.status, &exchanged.body);
        if status.is_success() {
            // Twilio has accepted the message: even an unreadable body must not make us send it twice.
            return Ok(match serde_json::from_slice::<Created>(body).ok().and_then(|c| c.sid) {
                Some(sid) => Receipt::sent(Some(sid)),
                None => Receipt::unconfirmed(Ambiguous::UnreadableAnswer, None),
            });
        }
        let error = serde_json::from_slice::<TwilioError>(body).ok();
        // Only an integer of Twilio's error dictionary: a `code` that echoes the request is dropped.
        let provider_code = error
            .as_ref()
            .and_then(|e| e.code.as_ref())
            .and_then(ProviderCode::twilio);
        let detail = error
            .and_then(|e| e.message)
            .map(|m| scrub(&m))
            .unwrap_or_else(|| "no Twilio error body".into());
        let message = format!("twilio answered {}: {detail}", status.as_u16());
        let code = provider_code.as_ref().and_then(|c| c.as_str().parse::<u32>().ok());
        Err(exchanged.rejection(classify(status, code), message, provider_code))
    }
}

#[async_trait::async_trait]
impl Provider for Twilio {
    fn name(&self) -> super::ProviderKind {
        super::ProviderKind::Twilio
    }

    async fn send(&self, job: &Job, message: &Rendered, validity: Validity) -> Result<Receipt, ProviderError> {
        match message {
            Rendered::Sms { body } => {
                let sender = if self.messaging_service_sid.is_empty() {
                    ("From", self.from.as_str())
                } else {
                    ("MessagingServiceSid", self.messaging_service_sid.as_str())
                };
                // Twilio drops a message still queued after ValidityPeriod: a code never arrives after it
                // expired. Whole seconds, rounded down, within Twilio's range.
                let seconds = validity
                    .clamped(VALIDITY_RANGE.0, VALIDITY_RANGE.1)
                    .as_secs()
                    .to_string();
                let form = [
                    ("To", job.to.expose()),
                    sender,
                    ("Body", body.as_str()),
                    ("ValidityPeriod", seconds.as_str()),
                ];
                self.post(&self.messages_url, &self.with_status_callback(&form)).await
            }
            // Calls have no validity field: Twilio places a call at once or fails it.
            Rendered::Voice { text, language } => {
                let voice = say_voice(language).unwrap_or(self.default_voice);
                let twiml = twiml(text, voice);
                let form = [
                    ("To", job.to.expose()),
                    ("From", self.from.as_str()),
                    ("Twiml", twiml.as_str()),
                ];
                self.post(&self.calls_url, &self.with_status_callback(&form)).await
            }
            // The approved WhatsApp template (Content API) with the code as its variable `1`; a WhatsApp
            // message is a Message, with the same validity and StatusCallback.
            Rendered::Whatsapp => {
                let seconds = validity
                    .clamped(VALIDITY_RANGE.0, VALIDITY_RANGE.1)
                    .as_secs()
                    .to_string();
                let to = format!("whatsapp:{}", job.to.expose());
                let variables = serde_json::json!({ "1": job.code.expose() }).to_string();
                let form = [
                    ("To", to.as_str()),
                    ("From", self.whatsapp_from.as_str()),
                    ("ContentSid", self.whatsapp_content_sid.as_str()),
                    ("ContentVariables", variables.as_str()),
                    ("ValidityPeriod", seconds.as_str()),
                ];
                self.post(&self.messages_url, &self.with_status_callback(&form)).await
            }
            Rendered::Email { .. } => Err(ProviderError::Permanent {
                message: format!("twilio cannot deliver {}", job.channel.as_str()),
                provider_code: None,
            }),
        }
    }
}

/// How Twilio's documented error codes for creating a Message or a Call are taken, each as its page in
/// Twilio's error dictionary (https://www.twilio.com/docs/api/errors/<code>) describes it. Transient: Twilio
/// says later can succeed. NextProvider: the refusal is about herald's sender, account, credentials,
/// permissions or route at Twilio, which another provider does not share. Permanent: about the recipient
/// or the message, which fails the same way anywhere.
pub const ERROR_CLASSES: &[(u32, Class)] = &[
    // Account, credentials, API.
    (20003, Class::NextProvider), // Authentication error (401)
    (20005, Class::NextProvider), // Account not active
    (20008, Class::NextProvider), // Resource not accessible with test account credentials
    (20404, Class::NextProvider), // Requested resource not found: the account sid or base URL is wrong
    (20429, Class::Transient),    // Too many requests
    (20500, Class::Transient),    // Internal server error
    (20503, Class::Transient),    // Service unavailable
    (14107, Class::Transient),    // SMS send rate limit exceeded
    // Numbers, senders, permissions (Messages and Calls).
    (21201, Class::Permanent),    // No 'To' number is specified
    (21210, Class::NextProvider), // 'From' phone number not verified
    (21211, Class::Permanent),    // Invalid 'To' phone number
    (21212, Class::NextProvider), // Invalid 'From' phone number
    (21213, Class::NextProvider), // 'From' phone number is required
    (21214, Class::Permanent),    // 'To' phone number cannot be reached
    (21215, Class::NextProvider), // Geo permission configuration is not permitting the call
    (21216, Class::NextProvider), // Account not allowed to call this number
    (21217, Class::Permanent),    // Phone number does not appear to be valid
    (21219, Class::NextProvider), // 'To' phone number not verified (trial account)
    (21265, Class::Permanent),    // 'To' number cannot be a short code
    (21266, Class::NextProvider), // 'To' and 'From' numbers cannot be the same: another sender can
    (21267, Class::NextProvider), // Alphanumeric sender id cannot be used on a trial account
    (21268, Class::Permanent),    // Premium or information service numbers are not permitted
    (21401, Class::Permanent),    // Invalid phone number
    (21402, Class::NextProvider), // Invalid URL (herald's StatusCallback)
    (21408, Class::NextProvider), // Permission to send an SMS has not been enabled for the region
    (21421, Class::Permanent),    // Phone number is invalid
    (21601, Class::Permanent),    // Phone number is not a valid SMS-capable inbound phone number
    (21602, Class::Permanent),    // Message body is required
    (21603, Class::NextProvider), // 'From' phone number is required
    (21604, Class::Permanent),    // 'To' phone number is required
    (21606, Class::NextProvider), // 'From' is not a valid message-capable Twilio number for this destination
    (21607, Class::NextProvider), // 'From' number is not a verified number for this trial account
    (21608, Class::NextProvider), // 'To' number is not verified for this trial account
    (21609, Class::NextProvider), // Invalid StatusCallback URL
    (21610, Class::Permanent),    // The recipient replied STOP: unsubscribed
    (21611, Class::Transient),    // 'From' number has exceeded the maximum number of queued messages
    (21612, Class::NextProvider), // Twilio cannot route this 'To' / 'From' combination
    (21614, Class::Permanent),    // 'To' number is not a valid mobile number
    (21617, Class::Permanent),    // Concatenated message body exceeds the 1600 character limit
    (21618, Class::Permanent),    // The message body cannot be sent
    (21619, Class::Permanent),    // A text message body or media URL must be specified
    (21621, Class::NextProvider), // 'From' number has not been enabled for MMS
    (21635, Class::Permanent),    // 'To' number cannot be a landline
    (21659, Class::NextProvider), // 'From' is not a Twilio phone number or short code
    (21660, Class::NextProvider), // 'From' number does not belong to the account
    (21701, Class::NextProvider), // Messaging Service does not exist
    (21703, Class::NextProvider), // Messaging Service has no phone number available to send
    (21704, Class::NextProvider), // Messaging Service contains no phone numbers
    (21705, Class::NextProvider), // Messaging Service is invalid
    (21714, Class::NextProvider), // 'From' number does not belong to the Messaging Service
    (21910, Class::NextProvider), // 'From' and 'To' are not of the same channel
    // Calls (Dial errors Twilio also returns on Call creation).
    (13223, Class::Permanent),    // Invalid phone number format
    (13224, Class::Permanent),    // Twilio does not support calling this number, or it is invalid
    (13225, Class::Permanent),    // Forbidden phone number
    (13226, Class::Permanent),    // Invalid country code
    (13227, Class::NextProvider), // No international authorization (geo permissions)
    // Delivery errors (30xxx), as Twilio may return them on creation too.
    (30001, Class::Transient),    // Queue overflow
    (30002, Class::NextProvider), // Account suspended
    (30003, Class::Permanent),    // Unreachable destination handset
    (30004, Class::Permanent),    // Message blocked (by the recipient or their carrier)
    (30005, Class::Permanent),    // Unknown destination handset
    (30006, Class::Permanent),    // Landline or unreachable carrier
    (30007, Class::NextProvider), // Carrier filtered this sender's traffic
    (30008, Class::Transient),    // Unknown error
    (30010, Class::NextProvider), // Message price exceeds the account's max price
    (30022, Class::Transient),    // US A2P 10DLC: rate limit exceeded
    (30023, Class::NextProvider), // US A2P 10DLC: daily cap reached for this sender
    (30024, Class::NextProvider), // Numeric sender id not provisioned
    (30027, Class::NextProvider), // US A2P 10DLC: T-Mobile daily limit reached
    (30032, Class::NextProvider), // Toll-free number has not been verified
    (30034, Class::NextProvider), // US A2P 10DLC: message from an unregistered number
    (30410, Class::Transient),    // Provider timeout
    // WhatsApp (63xxx, https://www.twilio.com/docs/whatsapp/api/error-codes).
    (63003, Class::Permanent),    // Channel could not find the To address: not on WhatsApp
    (63005, Class::NextProvider), // Channel did not accept the content (the sender's template)
    (63007, Class::NextProvider), // No Channel with the From address: herald's sender
    (63018, Class::Transient),    // Rate limit exceeded for the channel
    (63024, Class::Permanent),    // Invalid message recipient
    (63027, Class::NextProvider), // Template does not exist for a language and locale
    (63112, Class::NextProvider), // Meta disabled the business account
];

/// A failed answer, by its Twilio error code when [`ERROR_CLASSES`] has it, else by its HTTP status:
/// 408, 429, 5xx (and 407 from herald's egress proxy) are transient, 401/403 (this account's credentials or
/// permissions) and 404 (its account sid or base URL) move to the next provider, other 4xx are permanent.
pub fn classify(status: StatusCode, code: Option<u32>) -> Class {
    if let Some(class) = code.and_then(|c| {
        ERROR_CLASSES
            .iter()
            .find(|(known, _)| *known == c)
            .map(|(_, class)| *class)
    }) {
        return class;
    }
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => Class::NextProvider,
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS | StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
            Class::Transient
        }
        s if s.is_server_error() => Class::Transient,
        _ => Class::Permanent,
    }
}

/// `X-Twilio-Signature` as twilio-python's `RequestValidator.compute_signature` computes it
/// (https://www.twilio.com/docs/usage/webhooks/webhooks-security): base64 of HMAC-SHA1, keyed with the auth
/// token, over the URL followed by each form parameter's name and value, names sorted, and under a repeated
/// name its distinct values sorted (`sorted(set(values))`: a name and value sent twice count once).
pub fn signature(auth_token: &[u8], url: &str, params: &[(String, String)]) -> String {
    use hmac::Mac;
    base64::engine::general_purpose::STANDARD.encode(signature_mac(auth_token, url, params).finalize().into_bytes())
}

/// Whether `claimed` (the header's base64) is the signature of `url` and `params`, compared in constant
/// time.
pub fn signature_matches(auth_token: &[u8], url: &str, params: &[(String, String)], claimed: &str) -> bool {
    use hmac::Mac;
    let Ok(claimed) = base64::engine::general_purpose::STANDARD.decode(claimed.trim()) else {
        return false;
    };
    signature_mac(auth_token, url, params).verify_slice(&claimed).is_ok()
}

fn signature_mac(auth_token: &[u8], url: &str, params: &[(String, String)]) -> hmac::Hmac<sha1::Sha1> {
    use hmac::{KeyInit, Mac};
    // By name, then value (Rust compares strings by UTF-8 bytes, the same order as Python's code points),
    // each pair once.
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(auth_token).expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// The URLs a status callback's signature is checked against, as twilio-python's `RequestValidator.validate`
/// does: the configured URL without its port and with it (the scheme's default port added when it has none,
/// `remove_port` / `add_port`), since Twilio signs either way. Each also without its fragment: connection
/// overrides such as `#rc=3` are instructions to Twilio, not part of the request
/// (https://www.twilio.com/docs/usage/webhooks/webhooks-connection-overrides).
pub fn signed_urls(configured: &str) -> Vec<String> {
    let mut bases = vec![configured.to_owned()];
    if let Some((bare, _)) = configured.split_once('#') {
        bases.push(bare.to_owned());
    }
    let mut urls: Vec<String> = Vec::new();
    for base in &bases {
        let Ok(parsed) = Url::parse(base) else {
            urls.push(base.clone());
            continue;
        };
        let mut without_port = parsed.clone();
        let _ = without_port.set_port(None);
        let with_port = match (parsed.port(), parsed.port_or_known_default()) {
            (Some(_), _) | (None, None) => parsed.as_str().to_owned(),
            // `Url` drops a scheme's default port, so it is written in by hand, where the port goes.
            (None, Some(port)) => format!(
                "{}:{port}{}",
                &parsed[..url::Position::AfterHost],
                &parsed[url::Position::AfterPort..]
            ),
        };
        for url in [without_port.as_str().to_owned(), with_port] {
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
    }
    urls
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::templates::PAUSE;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Twilio's published example of request validation.
    #[test]
    fn signature_matches_twilios_published_example() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        let expected = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";
        assert_eq!(signature(b"12345", url, &params), expected);
        // Order of the form does not matter: Twilio sorts the names.
        let mut reversed = params.clone();
        reversed.reverse();
        assert!(signature_matches(b"12345", url, &reversed, expected));
        assert!(!signature_matches(b"12346", url, &params, expected));
        assert!(!signature_matches(
            b"12345",
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &params,
            expected
        ));
        let mut tampered = params.clone();
        tampered[2].1 = "1235".into();
        assert!(!signature_matches(b"12345", url, &tampered, expected));
        assert!(!signature_matches(b"12345", url, &params, "not base64!"));
        assert!(!signature_matches(b"12345", url, &params, ""));
    }

    /// twilio-python sorts a repeated name's values and counts a repeated pair once
    /// (`sorted(set(values))`); herald kept them in the order sent, twice (failed before).
    #[test]
    fn repeated_names_are_signed_with_their_distinct_values_sorted() {
        let url = "https://h.test/status";
        let sent = pairs(&[("B", "2"), ("A", "z"), ("A", "a"), ("A", "z")]);
        let canonical = pairs(&[("A", "a"), ("A", "z"), ("B", "2")]);
        assert_eq!(signature(b"t", url, &sent), signature(b"t", url, &canonical));
        // What herald signed before: values in the order sent, the repeated pair twice.
        let raw = |text: String| {
            use hmac::{KeyInit, Mac};
            let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(b"t").unwrap();
            mac.update(text.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        };
        assert_ne!(signature(b"t", url, &sent), raw(format!("{url}AzAaAzB2")));
        assert_eq!(signature(b"t", url, &sent), raw(format!("{url}AaAzB2")));
    }

    /// twilio-python's `validate` checks the URL without its port and with it; herald checked a URL with a
    /// port only as written (failed before: `http://h.test:8080/p` without `http://h.test/p`).
    #[test]
    fn signed_urls_are_twilio_pythons_with_and_without_port() {
        assert_eq!(
            signed_urls("https://h.test/p?a=1#rc=3"),
            [
                "https://h.test/p?a=1#rc=3",
                "https://h.test:443/p?a=1#rc=3",
                "https://h.test/p?a=1",
                "https://h.test:443/p?a=1"
            ]
        );
        assert_eq!(
            signed_urls("http://h.test:8080/p"),
            ["http://h.test/p", "http://h.test:8080/p"]
        );
        assert_eq!(signed_urls("http://h.test/"), ["http://h.test/", "http://h.test:80/"]);
        assert_eq!(
            signed_urls("https://u:p@h.test:8443/s?x=1"),
            ["https://u:p@h.test/s?x=1", "https://u:p@h.test:8443/s?x=1"]
        );
    }

    /// Every documented code, row by row, and the HTTP statuses of answers without one.
    #[test]
    fn twilio_error_codes_are_classified_as_its_dictionary_says() {
        use Class::*;
        let expected: &[(u32, Class)] = &[
            (20003, NextProvider),
            (20005, NextProvider),
            (20008, NextProvider),
            (20404, NextProvider),
            (20429, Transient),
            (20500, Transient),
            (20503, Transient),
            (14107, Transient),
            (21201, Permanent),
            (21210, NextProvider),
            (21211, Permanent),
            (21212, NextProvider),
            (21213, NextProvider),
            (21214, Permanent),
            (21215, NextProvider),
            (21216, NextProvider),
            (21217, Permanent),
            (21219, NextProvider),
            (21265, Permanent),
            (21266, NextProvider),
            (21267, NextProvider),
            (21268, Permanent),
            (21401, Permanent),
            (21402, NextProvider),
            (21408, NextProvider),
            (21421, Permanent),
            (21601, Permanent),
            (21602, Permanent),
            (21603, NextProvider),
            (21604, Permanent),
            (21606, NextProvider),
            (21607, NextProvider),
            (21608, NextProvider),
            (21609, NextProvider),
            (21610, Permanent),
            (21611, Transient),
            (21612, NextProvider),
            (21614, Permanent),
            (21617, Permanent),
            (21618, Permanent),
            (21619, Permanent),
            (21621, NextProvider),
            (21635, Permanent),
            (21659, NextProvider),
            (21660, NextProvider),
            (21701, NextProvider),
            (21703, NextProvider),
            (21704, NextProvider),
            (21705, NextProvider),
            (21714, NextProvider),
            (21910, NextProvider),
            (13223, Permanent),
            (13224, Permanent),
            (13225, Permanent),
            (13226, Permanent),
            (13227, NextProvider),
            (30001, Transient),
            (30002, NextProvider),
            (30003, Permanent),
            (30004, Permanent),
            (30005, Permanent),
            (30006, Permanent),
            (30007, NextProvider),
            (30008, Transient),
            (30010, NextProvider),
            (30022, Transient),
            (30023, NextProvider),
            (30024, NextProvider),
            (30027, NextProvider),
            (30032, NextProvider),
            (30034, NextProvider),
            (30410, Transient),
            (63003, Permanent),
            (63005, NextProvider),
            (63007, NextProvider),
            (63018, Transient),
            (63024, Permanent),
            (63027, NextProvider),
            (63112, NextProvider),
        ];
        assert_eq!(expected.len(), ERROR_CLASSES.len(), "every row of the table is checked");
        for (code, class) in expected {
            // The code decides whatever the status (Twilio answers 400 for most, 429 for 20429).
            assert_eq!(classify(StatusCode::BAD_REQUEST, Some(*code)), *class, "{code}");
            assert_eq!(classify(StatusCode::TOO_MANY_REQUESTS, Some(*code)), *class, "{code}");
        }
        let by_status = [
            (StatusCode::UNAUTHORIZED, NextProvider),
            (StatusCode::FORBIDDEN, NextProvider),
            (StatusCode::NOT_FOUND, NextProvider),
            (StatusCode::REQUEST_TIMEOUT, Transient),
            (StatusCode::PROXY_AUTHENTICATION_REQUIRED, Transient),
            (StatusCode::TOO_MANY_REQUESTS, Transient),
            (StatusCode::INTERNAL_SERVER_ERROR, Transient),
            (StatusCode::BAD_GATEWAY, Transient),
            (StatusCode::SERVICE_UNAVAILABLE, Transient),
            (StatusCode::BAD_REQUEST, Permanent),
            (StatusCode::UNPROCESSABLE_ENTITY, Permanent),
        ];
        for (status, class) in by_status {
            assert_eq!(classify(status, None), class, "{status}");
            // A code Twilio's dictionary has and herald's table does not: the status decides.
            assert_eq!(classify(status, Some(99_999)), class, "{status}");
        }
    }

    fn voice_of(tag: &str) -> Option<&'static str> {
        say_voice(&Locale::parse(tag).unwrap()).map(|v| v.language)
    }

    #[test]
    fn say_languages_fall_back_as_templates_do_within_twilios_list() {
        for (tag, language) in [
            ("es-AR", Some("es-MX")),
            ("es", Some("es-MX")),
            ("es-ES", Some("es-ES")),
            ("fr", Some("fr-FR")),
            ("fr-CA", Some("fr-CA")),
            ("fr-BE", Some("fr-FR")),
            ("pt", Some("pt-BR")),
            ("pt-BR", Some("pt-BR")),
            ("pt-PT", Some("pt-PT")),
            ("en", Some("en-US")),
            ("en-CA", Some("en-US")),
            ("en-GB", Some("en-GB")),
            ("de-AT", Some("de-DE")),
            ("zh", Some("cmn-CN")),
            ("zh-TW", Some("cmn-TW")),
            ("zh-Hant-TW", Some("cmn-TW")),
            ("zh-HK", Some("yue-HK")),
            ("nb", Some("nb-NO")),
            ("no-NO", Some("nb-NO")),
            ("ar-EG", Some("arb")),
            ("ca", Some("ca-ES")),
            ("fi-FI", Some("fi-FI")),
            ("ja", Some("ja-JP")),
            ("el", Some("el-GR")),
            ("en-IE", Some("en-US")),
            ("uk", Some("uk-UA")),
            // Languages Twilio has no voice for: the caller speaks the default locale's.
            ("sw", None),
            ("xx", None),
            ("ga-IE", None),
        ] {
            assert_eq!(voice_of(tag), language, "{tag}");
        }
        // Every language has one voice, and each voice is of its language's kind.
        for (i, v) in SAY_VOICES.iter().enumerate() {
            assert!(
                SAY_VOICES[..i].iter().all(|w| w.language != v.language),
                "{}",
                v.language
            );
            assert!(
                v.voice.starts_with("Polly.") || v.voice.starts_with(&format!("Google.{}-", v.language)),
                "{v:?}"
            );
        }
    }

    #[test]
    fn twiml_says_in_the_job_language_with_its_voice_and_pauses() {
        let es = say_voice(&Locale::parse("es-AR").unwrap()).unwrap();
        let t = twiml(&format!("Su código <es>{PAUSE}4. 8"), es);
        let say = "<Say voice=\"Polly.Mia\" language=\"es-MX\">";
        assert_eq!(
            t,
            format!(
                "<Response>{say}Su código &lt;es&gt;</Say><Pause length=\"1\"/>{say}4. 8</Say>\
                 <Pause length=\"1\"/>{say}Su código &lt;es&gt;</Say><Pause length=\"1\"/>{say}4. 8</Say></Response>"
            )
        );
    }
}
