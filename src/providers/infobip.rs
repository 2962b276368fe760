//! Infobip SMS (`POST {base_url}/sms/2/text/advanced`) and voice text-to-speech
//! (`POST {base_url}/tts/3/advanced`), JSON with `Authorization: App <api_key>` (contract §6). Each
//! account has its own base URL.
//!
//! Classification: HTTP 408, 429 and 5xx are transient, other 4xx permanent (Infobip's `serviceException`
//! `messageId`, e.g. `UNAUTHORIZED`, is the provider code). A 200 carries each message's status: groups
//! PENDING, ACCEPTED and DELIVERED are sent; REJECTED, UNDELIVERABLE and EXPIRED are not, and fail
//! permanently except the statuses that another attempt or provider can get past (system error, no
//! credit, no route), which are transient.

use http::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use serde_json::json;
use url::Url;

use super::http::{HttpClient, authorization, exchange};
use super::{
    Ambiguous, Class, Provider, ProviderCode, ProviderError, ProviderKind, Receipt, SetupError, Validity, phone_of,
    sender_without_plus,
};
use crate::config::InfobipConfig;
use crate::events::scrub;
use crate::job::{Job, Locale};
use crate::templates::{PAUSE, Rendered};

pub struct Infobip {
    client: HttpClient,
    sms_url: Url,
    tts_url: Url,
    authorization: HeaderValue,
    from: String,
    /// `notifyUrl` (with `infobip.status_token`) when `infobip.status_callback_url` is set (contract §6.2).
    notify_url: Option<String>,
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

/// Rejections that are no fault of the message: Infobip's own error, the account's credit, a route
/// that is down. Worth another attempt, or the next provider.
const TRANSIENT_REJECTIONS: &[&str] = &[
    "REJECTED_SYSTEM_ERROR",
    "REJECTED_NOT_ENOUGH_CREDITS",
    "REJECTED_ROUTE_NOT_AVAILABLE",
];

impl Infobip {
    pub fn new(config: &InfobipConfig, client: HttpClient) -> Result<Infobip, SetupError> {
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
            notify_url: config
                .status_callback_url
                .as_ref()
                .map(|u| crate::receipts::providers::infobip::notify_url(u.as_url(), config.status_token.expose())),
        })
    }

    /// `body` with each message asking for its delivery report, as JSON, at `notify_url`
    /// (https://www.infobip.com/docs/api/channels/sms/sms-messaging/outbound-sms/send-sms-messages).
    fn with_notify(&self, mut body: serde_json::Value) -> serde_json::Value {
        if let (Some(url), Some(messages)) = (&self.notify_url, body["messages"].as_array_mut()) {
            for message in messages {
                message["notifyUrl"] = url.as_str().into();
                message["notifyContentType"] = "application/json".into();
            }
        }
        body
    }

    async fn post(&self, url: &Url, body: serde_json::Value) -> Result<Receipt, ProviderError> {
        let request = self
            .client
            .post(url)
            .header(AUTHORIZATION, self.authorization.clone())
            .json(&self.with_notify(body));
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
            return Err(exchanged.failure(message, code));
        }
        let Some(message) = serde_json::from_slice::<Answer>(&exchanged.body)
            .ok()
            .and_then(|a| a.messages.into_iter().next())
        else {
            // A 2xx whose verdict cannot be read: Infobip may have taken the message, so it is not sent
            // again (README, "Providers").
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
        let class = if TRANSIENT_REJECTIONS.contains(&name.as_str()) {
            Class::Transient
        } else {
            Class::Permanent
        };
        Err(exchanged.rejection(class, text, provider_code))
    }
}

#[async_trait::async_trait]
impl Provider for Infobip {
    fn name(&self) -> ProviderKind {
        ProviderKind::Infobip
    }

    async fn send(&self, job: &Job, message: &Rendered, _validity: Validity) -> Result<Receipt, ProviderError> {
        let to = phone_of(job, self.name())?.digits();
        match message {
            Rendered::Sms { body } => {
                let body = json!({"messages": [{
                    "destinations": [{"to": to}],
                    "from": self.from,
                    "text": body,
                }]});
                self.post(&self.sms_url, body).await
            }
            Rendered::Voice { text, language } => {
                let body = json!({"messages": [{
                    "destinations": [{"to": to}],
                    "from": self.from,
                    "text": speech(text),
                    "language": tts_language(language),
                }]});
                self.post(&self.tts_url, body).await
            }
            Rendered::Email { .. } => Err(ProviderError::Permanent {
                message: "infobip cannot deliver email".into(),
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

/// Infobip's language code for a locale: the lowercase language subtag (`es-AR` → `es`), as its TTS
/// languages are listed.
pub fn tts_language(locale: &Locale) -> String {
    locale.language().to_ascii_lowercase()
}
