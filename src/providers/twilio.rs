//! Twilio Programmable Messaging (SMS) and Voice, over the REST API (contract §6).

use base64::Engine;
use http::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use url::Url;

use super::http::{HttpClient, basic_authorization, exchange};
use super::{Ambiguous, Provider, ProviderCode, ProviderError, Receipt, SetupError, Validity};
use crate::config::TwilioConfig;
use crate::events::scrub;
use crate::job::{Job, Locale};
use crate::templates::{PAUSE, Rendered};

pub struct Twilio {
    client: HttpClient,
    // Parsed and encoded once: per request they were a measurable share of herald's allocations.
    messages_url: Url,
    calls_url: Url,
    authorization: HeaderValue,
    from: String,
    messaging_service_sid: String,
    /// `twilio.status_callback_url`: sent with every message and call when set (contract §13).
    status_callback: Option<String>,
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

impl Twilio {
    /// `client` is shared by every provider call: one connection pool for the process.
    ///
    /// Fails at start-up, naming the keys, when `twilio.base_url` and `twilio.account_sid` do not form a URL
    /// (before, every request failed instead).
    pub fn new(config: &TwilioConfig, client: HttpClient) -> Result<Twilio, SetupError> {
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
            status_callback: config
                .status_callback_url
                .as_ref()
                .map(|u| u.as_url().as_str().to_owned()),
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
        Err(exchanged.failure(message, provider_code))
    }
}

#[async_trait::async_trait]
impl Provider for Twilio {
    fn name(&self) -> super::ProviderKind {
        super::ProviderKind::Twilio
    }

    async fn send(&self, job: &Job, message: &Rendered, _validity: Validity) -> Result<Receipt, ProviderError> {
        match message {
            Rendered::Sms { body } => {
                let sender = if self.messaging_service_sid.is_empty() {
                    ("From", self.from.as_str())
                } else {
                    ("MessagingServiceSid", self.messaging_service_sid.as_str())
                };
                let form = [("To", job.to.expose()), sender, ("Body", body.as_str())];
                self.post(&self.messages_url, &self.with_status_callback(&form)).await
            }
            Rendered::Voice { text, language } => {
                let twiml = twiml(text, language);
                let form = [
                    ("To", job.to.expose()),
                    ("From", self.from.as_str()),
                    ("Twiml", twiml.as_str()),
                ];
                self.post(&self.calls_url, &self.with_status_callback(&form)).await
            }
            Rendered::Email { .. } => Err(ProviderError::Permanent {
                message: "twilio cannot deliver email".into(),
                provider_code: None,
            }),
        }
    }
}

/// `X-Twilio-Signature` as Twilio computes it: base64 of HMAC-SHA1, keyed with the auth token, over the
/// URL Twilio was given followed by each form parameter's name and value, sorted by name.
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
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    // Stable: repeated names keep their order, as Twilio's own validators do.
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(auth_token).expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// `<Response><Say language="es-MX">…</Say><Pause length="1"/>…</Response>`, said twice so that a
/// listener who missed the start hears the code again.
/// `language` is the locale of the template the text came from (see [`Rendered::Voice`]).
pub fn twiml(text: &str, language: &Locale) -> String {
    let language = say_language(language);
    let mut says = String::new();
    for (i, piece) in text.split(PAUSE).enumerate() {
        if i > 0 {
            says.push_str("<Pause length=\"1\"/>");
        }
        let piece = piece.trim();
        if !piece.is_empty() {
            says.push_str(&format!("<Say language=\"{language}\">{}</Say>", xml_escape(piece)));
        }
    }
    format!("<Response>{says}<Pause length=\"1\"/>{says}</Response>")
}

/// Maps a job locale onto a language `<Say>` supports, preferring the exact region.
fn say_language(locale: &Locale) -> &'static str {
    const SUPPORTED: &[&str] = &[
        // The first entry of a language is its default.
        "en-US", "en-GB", "en-AU", "en-CA", "en-IN", "da-DK", "de-DE", "ca-ES", "es-MX", "es-ES", "fi-FI", "fr-FR",
        "fr-CA", "it-IT", "ja-JP", "ko-KR", "nb-NO", "nl-NL", "pl-PL", "pt-BR", "pt-PT", "ru-RU", "sv-SE", "zh-CN",
        "zh-HK", "zh-TW",
    ];
    if let Some(exact) = SUPPORTED.iter().find(|s| s.eq_ignore_ascii_case(locale.as_str())) {
        return exact;
    }
    let lang = match locale.language() {
        "no" => "nb",
        lang => lang,
    };
    SUPPORTED
        .iter()
        .find(|s| s.split('-').next() == Some(lang))
        .copied()
        .unwrap_or("en-US")
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Twilio's published example of request validation.
    #[test]
    fn signature_matches_twilios_published_example() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
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

    #[test]
    fn twiml_says_in_the_job_language_with_pauses() {
        let es = Locale::parse("es-AR").unwrap();
        let t = twiml(&format!("Su código <es>{PAUSE}4. 8"), &es);
        assert_eq!(
            t,
            "<Response><Say language=\"es-MX\">Su código &lt;es&gt;</Say><Pause length=\"1\"/><Say language=\"es-MX\">4. 8</Say>\
             <Pause length=\"1\"/><Say language=\"es-MX\">Su código &lt;es&gt;</Say><Pause length=\"1\"/><Say language=\"es-MX\">4. 8</Say></Response>"
        );
        assert_eq!(say_language(&Locale::parse("fr").unwrap()), "fr-FR");
        assert_eq!(say_language(&Locale::parse("pt-BR").unwrap()), "pt-BR");
        assert_eq!(say_language(&Locale::parse("xx").unwrap()), "en-US");
    }
}
