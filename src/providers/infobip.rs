//! Infobip SMS (`POST {base_url}/sms/2/text/advanced`,
//! <https://www.infobip.com/docs/api/channels/sms/sms-messaging/outbound-sms/send-sms-message>) and voice
//! text-to-speech (`POST {base_url}/tts/3/advanced`,
//! <https://www.infobip.com/docs/api/channels/voice/voice-message/send-advanced-voice-tts>), JSON with
//! `Authorization: App <api_key>`. Each account has its own base URL.
//!
//! Classification: a 2xx carries each destination's `status` (<https://www.infobip.com/docs/essentials/response-status-and-error-codes>):
//! groups PENDING, ACCEPTED and DELIVERED are sent; any other status is looked up in [`STATUSES`]. A failed
//! HTTP answer is classified by its status: 401 and 403 (the account's key) move to the next provider, 408,
//! 429 and 5xx are transient, other 4xx permanent; Infobip's `serviceException.messageId` (`UNAUTHORIZED`) is
//! the provider code.

use std::time::Duration;

use http::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::http::{HttpClient, authorization, exchange};
use super::{
    Ambiguous, Class, Provider, ProviderCode, ProviderError, ProviderKind, Receipt, SetupError, Validity, phone_of,
    sender_without_plus,
};
use crate::config::InfobipConfig;
use crate::job::{Job, Locale};
use crate::privacy::scrub;
use crate::templates::{PAUSE, Rendered};

/// `validityPeriod`, in minutes, of both APIs: at most 48 hours (the SMS model's `le=2880`; the voice API
/// sets anything longer to 48 h), at least one minute.
pub const VALIDITY_MIN: Duration = Duration::from_secs(60);
pub const VALIDITY_MAX: Duration = Duration::from_secs(2880 * 60);

pub struct Infobip {
    client: HttpClient,
    sms_url: Url,
    tts_url: Url,
    authorization: HeaderValue,
    from: String,
    /// `notifyUrl` (with `infobip.status_token`) when `infobip.status_callback_url` is set (docs/receipts.md
    /// "Vonage, Plivo and Infobip").
    notify_url: Option<String>,
    /// The text-to-speech language of `templates.default_locale`, for a locale Infobip cannot speak.
    default_language: &'static str,
}

/// `{"bulkId", "messages": [{"to", "messageId", "status": {"groupId", "groupName", "id", "name",
/// "description"}}]}`.
#[derive(Deserialize)]
struct Answer {
    messages: Vec<Message>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message {
    to: Option<String>,
    message_id: Option<String>,
    status: Status,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    group_name: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
}

/// `{"requestError": {"serviceException": {"messageId": "UNAUTHORIZED", "text": "Invalid login details"}}}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody {
    request_error: RequestError,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestError {
    service_exception: ServiceException,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceException {
    message_id: Option<String>,
    text: Option<String>,
}

/// Infobip's general statuses that are not a send (<https://www.infobip.com/docs/essentials/response-status-and-error-codes>,
/// groups UNDELIVERABLE, EXPIRED and REJECTED), and how herald takes each.
///
/// - Next provider: what the page ties to the account, its sender or its routes — a network not set up on
///   the account or out of coverage, an unregistered or blocklisted sender id, no credit or expired credit,
///   a test account limited to its own number, no route.
/// - Transient: Infobip's own error ("please retry submission"), its anti-flooding limit per hour, the
///   platform refusing it.
/// - Permanent: the number, the recipient's choice or the message.
pub const STATUSES: &[(&str, Class)] = &[
    ("UNDELIVERABLE_REJECTED_OPERATOR", Class::Permanent),
    ("UNDELIVERABLE_NOT_DELIVERED", Class::Permanent),
    ("UNDELIVERABLE_REJECTED_PLATFORM", Class::Transient),
    ("EXPIRED_EXPIRED", Class::Permanent),
    ("EXPIRED_DLR_UNKNOWN", Class::Permanent),
    ("EXPIRED_UNKNOWN", Class::Permanent),
    ("REJECTED_NETWORK", Class::NextProvider),
    ("REJECTED_PREFIX_MISSING", Class::Permanent),
    ("REJECTED_DND", Class::Permanent),
    ("REJECTED_SOURCE", Class::NextProvider),
    ("REJECTED_NOT_ENOUGH_CREDITS", Class::NextProvider),
    ("REJECTED_SENDER", Class::NextProvider),
    ("REJECTED_DESTINATION", Class::Permanent),
    ("REJECTED_NOT_REACHABLE", Class::NextProvider),
    ("REJECTED_PREPAID_PACKAGE_EXPIRED", Class::NextProvider),
    ("REJECTED_DESTINATION_NOT_REGISTERED", Class::NextProvider),
    ("REJECTED_ROUTE_NOT_AVAILABLE", Class::NextProvider),
    ("REJECTED_FLOODING_FILTER", Class::Transient),
    ("REJECTED_SYSTEM_ERROR", Class::Transient),
    ("REJECTED_DUPLICATE_MESSAGE_ID", Class::Permanent),
    ("REJECTED_INVALID_UDH", Class::Permanent),
    ("REJECTED_MESSAGE_TOO_LONG", Class::Permanent),
    ("MISSING_TO", Class::Permanent),
    ("REJECTED_INVALID_DESTINATION", Class::Permanent),
];

/// The class of a status name; one the table does not list is permanent.
pub fn classify(name: &str) -> Class {
    STATUSES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(Class::Permanent, |&(_, class)| class)
}

/// A failed HTTP answer's class: the API key refused (401, 403) moves to the next provider; 408, 429 and
/// 5xx are transient, and 407 (herald's egress proxy, see [`super::http::http_failure`]); any other status
/// is permanent.
pub fn http_class(status: u16) -> Class {
    match status {
        401 | 403 => Class::NextProvider,
        407 | 408 | 429 | 500..=599 => Class::Transient,
        _ => Class::Permanent,
    }
}

/// `validityPeriod` in whole minutes, never past the time left (rounded down), within Infobip's range.
pub fn validity_minutes(validity: Validity) -> u64 {
    validity.clamped(VALIDITY_MIN, VALIDITY_MAX).as_secs() / 60
}

impl Infobip {
    /// `default_locale` is `templates.default_locale`: the voice of a locale Infobip does not list.
    pub fn new(config: &InfobipConfig, default_locale: &Locale, client: HttpClient) -> Result<Infobip, SetupError> {
        let base = config.base_url.as_ref().ok_or(SetupError::Missing {
            keys: "infobip.base_url",
            provider: ProviderKind::Infobip,
        })?;
        let base = base.as_url().as_str().trim_end_matches('/');
        let url = |path: &str| {
            Url::parse(&format!("{base}{path}")).map_err(|source| SetupError::Url {
                keys: "infobip.base_url",
                what: "a URL",
                source,
            })
        };
        let authorization =
            authorization("App", config.api_key.expose()).map_err(|source| SetupError::Authorization {
                keys: "infobip.api_key",
                source,
            })?;
        Ok(Infobip {
            client,
            sms_url: url("/sms/2/text/advanced")?,
            tts_url: url("/tts/3/advanced")?,
            authorization,
            // Infobip writes numbers in international form without `+`.
            from: sender_without_plus(&config.from),
            // Infobip's own default when it is told none (the voice API's `language` field).
            default_language: tts_language(default_locale).unwrap_or("en"),
            notify_url: config.notify_url(),
        })
    }

    /// One message to `to`, as both APIs take it: `destinations`, `from`, `text`, `validityPeriod`. The
    /// caller adds the fields of its API.
    fn message(&self, to: &str, text: String, validity: Validity) -> serde_json::Map<String, Value> {
        let mut message = serde_json::Map::new();
        message.insert("destinations".into(), json!([{ "to": to }]));
        message.insert("from".into(), json!(self.from));
        message.insert("text".into(), json!(text));
        message.insert("validityPeriod".into(), json!(validity_minutes(validity)));
        // Each message asks for its delivery report, as JSON, at `notifyUrl` when receipts are on
        // (https://www.infobip.com/docs/api/channels/sms/sms-messaging/outbound-sms/send-sms-messages).
        if let Some(url) = &self.notify_url {
            message.insert("notifyUrl".into(), json!(url));
            message.insert("notifyContentType".into(), json!("application/json"));
        }
        message
    }

    async fn post(
        &self,
        url: &Url,
        to: &str,
        message: serde_json::Map<String, Value>,
    ) -> Result<Receipt, ProviderError> {
        let body = json!({ "messages": [message] });
        let request = self
            .client
            .post(url)
            .header(AUTHORIZATION, self.authorization.clone())
            .json(&body);
        let exchanged = match exchange(self.name(), request).await {
            Ok(answer) => answer,
            Err(no_answer) => return no_answer.into_result(),
        };
        let status = exchanged.status;
        if !status.is_success() {
            let error = serde_json::from_slice::<ErrorBody>(&exchanged.body)
                .ok()
                .map(|e| e.request_error.service_exception);
            let code = error
                .as_ref()
                .and_then(|e| e.message_id.as_deref())
                .and_then(ProviderCode::infobip);
            let detail = error
                .and_then(|e| e.text)
                .map(|t| scrub(&t))
                .unwrap_or_else(|| "no Infobip error body".into());
            let message = format!("infobip answered {}: {detail}", status.as_u16());
            return Err(exchanged.rejection(http_class(status.as_u16()), message, code));
        }
        // The answer has a message per destination, each with its `to`; herald sends one destination.
        let message = serde_json::from_slice::<Answer>(&exchanged.body).ok().and_then(|a| {
            let mut messages = a.messages;
            let ours = messages.iter().position(|m| m.to.as_deref() == Some(to));
            match ours {
                Some(i) => Some(messages.swap_remove(i)),
                None if messages.len() == 1 => messages.pop(),
                None => None,
            }
        });
        let Some(message) = message else {
            // A 2xx whose verdict cannot be read: Infobip may have taken the message, so it is not sent
            // again (docs/providers/README.md).
            return Ok(Receipt::unconfirmed(Ambiguous::UnreadableAnswer, None));
        };
        let Status {
            group_name,
            name,
            description,
        } = message.status;
        if matches!(group_name.as_str(), "PENDING" | "ACCEPTED" | "DELIVERED") {
            return Ok(Receipt::sent(message.message_id));
        }
        // Names are written only when they have Infobip's shape: what else it put there is not repeated.
        let shown = |n: &str| ProviderCode::infobip(n).map_or_else(|| "-".to_owned(), |c| c.to_string());
        let text = format!(
            "infobip status {}/{}: {}",
            shown(&group_name),
            shown(&name),
            scrub(&description)
        );
        let provider_code = ProviderCode::infobip(if name.is_empty() { &group_name } else { &name });
        Err(exchanged.rejection(classify(&name), text, provider_code))
    }
}

#[async_trait::async_trait]
impl Provider for Infobip {
    fn name(&self) -> ProviderKind {
        ProviderKind::Infobip
    }

    async fn send(&self, job: &Job, message: &Rendered, validity: Validity) -> Result<Receipt, ProviderError> {
        let to = phone_of(job, self.name())?.digits();
        match message {
            Rendered::Sms { body } => {
                let message = self.message(to, body.clone(), validity);
                self.post(&self.sms_url, to, message).await
            }
            Rendered::Voice { text, language } => {
                let mut message = self.message(to, speech(text), validity);
                let language = tts_language(language).unwrap_or(self.default_language);
                message.insert("language".into(), json!(language));
                self.post(&self.tts_url, to, message).await
            }
            Rendered::Email { .. } | Rendered::Whatsapp => Err(ProviderError::Permanent {
                message: format!("infobip cannot deliver {}", job.channel.as_str()),
                provider_code: None,
            }),
        }
    }
}

/// The voice text with each `{{pause}}` as a one-second `<break/>`, which Infobip's text-to-speech honours.
pub fn speech(text: &str) -> String {
    text.split(PAUSE)
        .map(str::trim)
        .filter(|piece| !piece.is_empty())
        .collect::<Vec<_>>()
        .join(" <break time=\"1s\"/> ")
}

/// The text-to-speech languages Infobip lists
/// (<https://www.infobip.com/docs/voice-and-video/outbound-calls#text-to-speech-voice-over-broadcast>; the
/// `language` enum of Infobip's API client).
pub const TTS_LANGUAGES: &[&str] = &[
    "ar",
    "ar-ma",
    "bg",
    "bn",
    "ca",
    "cs",
    "da",
    "de",
    "de-at",
    "de-ch",
    "el",
    "en",
    "en-au",
    "en-ca",
    "en-gb",
    "en-gb-wls",
    "en-ie",
    "en-in",
    "epo",
    "es",
    "es-gl",
    "es-mx",
    "fi",
    "fil-ph",
    "fr",
    "fr-ca",
    "fr-ch",
    "gu",
    "he",
    "hi",
    "hr",
    "hu",
    "id",
    "is",
    "it",
    "ja",
    "kn",
    "ko",
    "ml",
    "mr-in",
    "ms",
    "nl",
    "no",
    "pl",
    "pt-br",
    "pt-pt",
    "ro",
    "ru",
    "sk",
    "sl",
    "sv",
    "ta",
    "te",
    "th",
    "tr",
    "uk",
    "ur-pk",
    "vi",
    "wls",
    "zh-cn",
    "zh-tw",
];

/// Infobip's text-to-speech language for a locale, looked up as templates are (language and region, then
/// the language), or `None` when Infobip lists none for it.
///
/// Infobip's own codes for some languages: Norwegian `no` (`nb`, `nn`), Welsh `wls` (`cy`), Esperanto `epo`
/// (`eo`), Filipino `fil-ph` (`fil`, `tl`), and the old codes `iw` (Hebrew) and `in` (Indonesian). Infobip
/// lists Portuguese and Chinese only with a region: Portuguese is `pt-br` for `pt` and `pt-BR` (the likely
/// region of `pt`, and herald ships `pt-BR` templates) and `pt-pt` for any other region (`pt-PT`, `pt-AO`,
/// `pt-MZ`, whose Portuguese is European); Chinese is `zh-tw` for Traditional script (`zh-Hant`) or Taiwan,
/// Hong Kong and Macao, `zh-cn` otherwise. `ur`, `mr` go to the one region Infobip lists.
pub fn tts_language(locale: &Locale) -> Option<&'static str> {
    let tag = locale.as_str().to_ascii_lowercase();
    let mut subtags = tag.split('-');
    let language = subtags.next()?;
    let (mut script, mut region) = (None, None);
    for subtag in subtags {
        let alpha = subtag.bytes().all(|b| b.is_ascii_alphabetic());
        match subtag.len() {
            // A singleton starts an extension or private use: nothing after it is a script or region.
            1 => break,
            4 if alpha && script.is_none() && region.is_none() => script = Some(subtag),
            2 if alpha && region.is_none() => region = Some(subtag),
            3 if region.is_none() && subtag.bytes().all(|b| b.is_ascii_digit()) => region = Some(subtag),
            _ => {}
        }
    }
    let listed = |code: &str| TTS_LANGUAGES.iter().copied().find(|l| *l == code);
    let language = match language {
        "nb" | "nn" => "no",
        "cy" => "wls",
        "eo" => "epo",
        "tl" => "fil",
        "iw" => "he",
        "in" => "id",
        other => other,
    };
    match language {
        "pt" => {
            return listed(if region.is_none_or(|r| r == "br") {
                "pt-br"
            } else {
                "pt-pt"
            });
        }
        "zh" => {
            let traditional = script == Some("hant") || region.is_some_and(|r| matches!(r, "tw" | "hk" | "mo"));
            let simplified = script == Some("hans");
            return listed(if traditional && !simplified { "zh-tw" } else { "zh-cn" });
        }
        _ => {}
    }
    if let Some(found) = region.and_then(|r| listed(&format!("{language}-{r}"))) {
        return Some(found);
    }
    listed(language).or(match language {
        "fil" => listed("fil-ph"),
        "ur" => listed("ur-pk"),
        "mr" => listed("mr-in"),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every status name on <https://www.infobip.com/docs/essentials/response-status-and-error-codes> that
    /// is not a send, row by row.
    #[test]
    fn every_documented_status_has_its_class() {
        use Class::{NextProvider, Permanent, Transient};
        let expected = [
            ("UNDELIVERABLE_REJECTED_OPERATOR", Permanent),
            ("UNDELIVERABLE_NOT_DELIVERED", Permanent),
            ("UNDELIVERABLE_REJECTED_PLATFORM", Transient),
            ("EXPIRED_EXPIRED", Permanent),
            ("EXPIRED_DLR_UNKNOWN", Permanent),
            ("EXPIRED_UNKNOWN", Permanent),
            ("REJECTED_NETWORK", NextProvider),
            ("REJECTED_PREFIX_MISSING", Permanent),
            ("REJECTED_DND", Permanent),
            ("REJECTED_SOURCE", NextProvider),
            ("REJECTED_NOT_ENOUGH_CREDITS", NextProvider),
            ("REJECTED_SENDER", NextProvider),
            ("REJECTED_DESTINATION", Permanent),
            ("REJECTED_NOT_REACHABLE", NextProvider),
            ("REJECTED_PREPAID_PACKAGE_EXPIRED", NextProvider),
            ("REJECTED_DESTINATION_NOT_REGISTERED", NextProvider),
            ("REJECTED_ROUTE_NOT_AVAILABLE", NextProvider),
            ("REJECTED_FLOODING_FILTER", Transient),
            ("REJECTED_SYSTEM_ERROR", Transient),
            ("REJECTED_DUPLICATE_MESSAGE_ID", Permanent),
            ("REJECTED_INVALID_UDH", Permanent),
            ("REJECTED_MESSAGE_TOO_LONG", Permanent),
            ("MISSING_TO", Permanent),
            ("REJECTED_INVALID_DESTINATION", Permanent),
        ];
        assert_eq!(STATUSES.len(), expected.len(), "a row per documented status");
        for (name, class) in expected {
            assert_eq!(classify(name), class, "{name}");
        }
        for unknown in ["REJECTED_SOMETHING_NEW", "", "rejected_network"] {
            assert_eq!(classify(unknown), Permanent, "{unknown:?}");
        }
    }

    #[test]
    fn http_statuses_have_their_class() {
        use Class::{NextProvider, Permanent, Transient};
        for (status, class) in [
            (400, Permanent),
            (401, NextProvider),
            (403, NextProvider),
            (404, Permanent),
            (407, Transient),
            (408, Transient),
            (429, Transient),
            (500, Transient),
            (502, Transient),
            (503, Transient),
        ] {
            assert_eq!(http_class(status), class, "{status}");
        }
    }

    #[test]
    fn validity_is_whole_minutes_within_infobips_range() {
        let v = |secs: u64| {
            let mut job = crate::job::Job::from_json(
                br#"{"id":"7d9f0a52-7a0e-4a43-a6d4-0f4ac5a3e0b1","channel":"sms","to":"+14155550123","code":"482913","user_id":"u"}"#,
            )
            .unwrap();
            let now = chrono::Utc::now();
            job.expires_at = Some(now + chrono::Duration::seconds(secs as i64));
            validity_minutes(Validity::for_job(&job, Duration::from_secs(600), now))
        };
        assert_eq!(validity_minutes(Validity::default()), 10);
        assert_eq!(v(330), 5, "rounded down: never past the code's expiry");
        assert_eq!(v(20), 1, "at least a minute");
        assert_eq!(v(0), 1);
        assert_eq!(v(5 * 86_400), 2880, "at most 48 hours");
    }

    #[test]
    fn locales_map_to_infobips_own_languages() {
        let cases = [
            ("pt-BR", Some("pt-br")),
            ("pt", Some("pt-br")),
            ("pt-PT", Some("pt-pt")),
            ("pt-AO", Some("pt-pt")),
            ("zh", Some("zh-cn")),
            ("zh-CN", Some("zh-cn")),
            ("zh-Hans", Some("zh-cn")),
            ("zh-TW", Some("zh-tw")),
            ("zh-Hant", Some("zh-tw")),
            ("zh-Hant-TW", Some("zh-tw")),
            ("zh-HK", Some("zh-tw")),
            ("zh-Hans-HK", Some("zh-cn")),
            ("nb", Some("no")),
            ("nb-NO", Some("no")),
            ("nn", Some("no")),
            ("no", Some("no")),
            ("cy", Some("wls")),
            ("cy-GB", Some("wls")),
            ("eo", Some("epo")),
            ("fil", Some("fil-ph")),
            ("fil-PH", Some("fil-ph")),
            ("tl", Some("fil-ph")),
            ("en", Some("en")),
            ("en-US", Some("en")),
            ("en-GB", Some("en-gb")),
            ("en-AU", Some("en-au")),
            ("en-NZ", Some("en")),
            ("es", Some("es")),
            ("es-AR", Some("es")),
            ("es-419", Some("es")),
            ("es-MX", Some("es-mx")),
            ("fr-CA", Some("fr-ca")),
            ("fr-BE", Some("fr")),
            ("de-AT", Some("de-at")),
            ("de", Some("de")),
            ("ar-MA", Some("ar-ma")),
            ("ar-EG", Some("ar")),
            ("ur", Some("ur-pk")),
            ("mr", Some("mr-in")),
            ("he", Some("he")),
            ("iw", Some("he")),
            ("ja-JP", Some("ja")),
            ("sr", None),
            ("sw-KE", None),
            ("x-klingon", None),
        ];
        for (tag, expected) in cases {
            let Ok(locale) = Locale::parse(tag) else {
                continue;
            };
            assert_eq!(tts_language(&locale), expected, "{tag}");
        }
        // Nothing outside the list ever comes out.
        for tag in ["pt-BR", "zh-Hant-TW", "nb", "en-GB", "sr-Latn-RS", "es-419"] {
            let got = tts_language(&Locale::parse(tag).unwrap());
            assert!(got.is_none_or(|l| TTS_LANGUAGES.contains(&l)), "{tag}");
        }
    }
}
