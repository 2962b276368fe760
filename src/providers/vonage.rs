//! Vonage (Nexmo) SMS API: `POST {base_url}/sms/json`, form-encoded, credentials in the form (contract §6).
//! Vonage answers HTTP 200 whether or not it took the message: the verdict is `messages[].status`.

use serde::Deserialize;
use url::Url;

use super::http::{HttpClient, exchange};
use super::{
    Ambiguous, Class, Provider, ProviderCode, ProviderError, ProviderKind, Receipt, SetupError, Validity, phone_of,
    sender_without_plus,
};
use crate::config::VonageConfig;
use crate::events::scrub;
use crate::job::Job;
use crate::sms::{Encoding, segments};
use crate::templates::Rendered;

pub struct Vonage {
    client: HttpClient,
    url: Url,
    api_key: String,
    api_secret: String,
    from: String,
    /// `vonage.status_callback_url`: every message asks for its delivery receipt there (contract §6.2).
    status_callback: Option<String>,
}

/// `{"message-count": "1", "messages": [{"to", "message-id", "status": "0", ...}]}`; a failed message
/// has `status` and `error-text` instead of an id.
#[derive(Deserialize)]
struct Answer {
    messages: Vec<Message>,
}

#[derive(Deserialize)]
struct Message {
    status: String,
    #[serde(rename = "message-id")]
    message_id: Option<String>,
    #[serde(rename = "error-text")]
    error_text: Option<String>,
}

/// A status of Vonage's SMS API error table: its meaning, and whether sending again can succeed.
/// Throttled, internal error, too many binds and an account out of credit (documented as "top-up and
/// retry": another provider of the chain can still send) are worth retrying; every other status means
/// the request, the number or the account is wrong and will fail again.
pub fn classify(status: &str) -> (&'static str, bool) {
    match status {
        "1" => ("throttled", true),
        "2" => ("missing parameters", false),
        "3" => ("invalid parameters", false),
        "4" => ("invalid credentials", false),
        "5" => ("internal error", true),
        "6" => ("invalid message", false),
        "7" => ("number barred", false),
        "8" => ("partner account barred", false),
        "9" => ("partner quota violation", true),
        "10" => ("too many existing binds", true),
        "11" => ("account not enabled for HTTP", false),
        "12" => ("message too long", false),
        "14" => ("invalid signature", false),
        "15" => ("invalid sender address", false),
        "22" => ("invalid network code", false),
        "23" => ("invalid callback url", false),
        "29" => ("non-whitelisted destination", false),
        "32" => ("signature and api secret disallowed", false),
        "33" => ("number de-activated", false),
        _ => ("undocumented status", false),
    }
}

impl Vonage {
    pub fn new(config: &VonageConfig, client: HttpClient) -> Result<Vonage, SetupError> {
        let base = config.base_url.as_url().as_str().trim_end_matches('/');
        Ok(Vonage {
            client,
            // `vonage.base_url` may not take `/sms/json`.
            url: Url::parse(&format!("{base}/sms/json")).map_err(|source| SetupError::Url {
                keys: "vonage.base_url",
                what: "a URL",
                source,
            })?,
            api_key: config.api_key.clone(),
            api_secret: config.api_secret.expose().to_owned(),
            // Vonage writes numbers without `+`; an alphanumeric sender id stays as it is.
            from: sender_without_plus(&config.from),
            status_callback: config.status_callback_url.as_ref().map(|u| u.as_url().to_string()),
        })
    }
}

#[async_trait::async_trait]
impl Provider for Vonage {
    fn name(&self) -> ProviderKind {
        ProviderKind::Vonage
    }

    async fn send(&self, job: &Job, message: &Rendered, _validity: Validity) -> Result<Receipt, ProviderError> {
        let Rendered::Sms { body } = message else {
            return Err(ProviderError::Permanent {
                message: "vonage delivers SMS only".into(),
                provider_code: None,
            });
        };
        let to = phone_of(job, self.name())?.digits();
        let mut form = vec![
            ("api_key", self.api_key.as_str()),
            ("api_secret", self.api_secret.as_str()),
            ("from", self.from.as_str()),
            ("to", to),
            ("text", body.as_str()),
        ];
        if segments(body).encoding == Encoding::Ucs2 {
            form.push(("type", "unicode"));
        }
        // https://developer.vonage.com/en/api/sms#send-an-sms: a receipt for each part, sent to `callback`.
        if let Some(url) = &self.status_callback {
            form.extend([("status-report-req", "1"), ("callback", url.as_str())]);
        }
        let exchanged = match exchange(self.name(), self.client.post(&self.url).form(&form)).await {
            Ok(answer) => answer,
            Err(no_answer) => return no_answer.into_result(),
        };
        let answer = serde_json::from_slice::<Answer>(&exchanged.body).ok();
        if !exchanged.status.is_success() {
            let code = answer
                .and_then(|a| a.messages.into_iter().next())
                .and_then(|m| ProviderCode::vonage(&m.status));
            let message = format!("vonage answered HTTP {}", exchanged.status.as_u16());
            return Err(exchanged.failure(message, code));
        }
        let Some(answer) = answer.filter(|a| !a.messages.is_empty()) else {
            // HTTP 200 without a readable verdict: Vonage may have taken the message, so it is not sent
            // again (README, "Providers").
            return Ok(Receipt::unconfirmed(Ambiguous::UnreadableAnswer, None));
        };
        // A long text is several messages: sent only if every part was taken.
        match answer.messages.iter().find(|m| m.status != "0") {
            None => Ok(Receipt::sent(answer.messages.into_iter().find_map(|m| m.message_id))),
            Some(failed) => {
                let (meaning, transient) = classify(&failed.status);
                let detail = failed.error_text.as_deref().map(scrub).unwrap_or_default();
                let code = ProviderCode::vonage(&failed.status);
                // The status is written only when it is one: what else Vonage put there is not repeated.
                let status = code.as_deref().unwrap_or("-");
                let message = format!("vonage status {status} ({meaning}): {detail}");
                let class = if transient { Class::Transient } else { Class::Permanent };
                Err(exchanged.rejection(class, message, code))
            }
        }
    }
}
