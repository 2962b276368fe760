//! Plivo Messages API: `POST {base_url}/v1/Account/{auth_id}/Message/`, JSON, HTTP Basic auth (contract §6).
//! 202 is success; the other statuses are Plivo's documented HTTP statuses (400 invalid parameter, 401
//! authentication failed, 404, 405 permanent; 429 rate limited, 5xx server error worth retrying).

use http::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use serde_json::json;
use url::Url;

use super::http::{HttpClient, basic_authorization, exchange};
use super::{
    Ambiguous, Provider, ProviderCode, ProviderError, ProviderKind, Receipt, SetupError, Validity, phone_of,
    sender_without_plus,
};
use crate::config::PlivoConfig;
use crate::events::scrub;
use crate::job::Job;
use crate::templates::Rendered;

pub struct Plivo {
    client: HttpClient,
    url: Url,
    authorization: HeaderValue,
    from: String,
    /// `plivo.status_callback_url`: every message asks for its status callbacks there (contract §6.2).
    status_callback: Option<String>,
}

/// `{"api_id", "message": "message(s) queued", "message_uuid": ["…"]}`, or `{"api_id", "error": "…"}`.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    message_uuid: Vec<String>,
    error: Option<serde_json::Value>,
}

impl Plivo {
    pub fn new(config: &PlivoConfig, client: HttpClient) -> Result<Plivo, SetupError> {
        let base = config.base_url.as_url().as_str().trim_end_matches('/');
        let auth_id = &config.auth_id;
        let url = Url::parse(&format!("{base}/v1/Account/{auth_id}/Message/")).map_err(|source| SetupError::Url {
            keys: "plivo.base_url / plivo.auth_id",
            what: "a URL",
            source,
        })?;
        let authorization =
            basic_authorization(auth_id, config.auth_token.expose()).map_err(|source| SetupError::Authorization {
                keys: "plivo.auth_id / plivo.auth_token",
                source,
            })?;
        Ok(Plivo {
            client,
            url,
            authorization,
            // Plivo writes numbers with the country code and without `+`.
            from: sender_without_plus(&config.from),
            status_callback: config.status_callback_url.as_ref().map(|u| u.as_url().to_string()),
        })
    }
}

#[async_trait::async_trait]
impl Provider for Plivo {
    fn name(&self) -> ProviderKind {
        ProviderKind::Plivo
    }

    async fn send(&self, job: &Job, message: &Rendered, _validity: Validity) -> Result<Receipt, ProviderError> {
        let Rendered::Sms { body } = message else {
            return Err(ProviderError::Permanent {
                message: "plivo delivers SMS only".into(),
                provider_code: None,
            });
        };
        let dst = phone_of(job, self.name())?.digits();
        let mut message = json!({"src": self.from, "dst": dst, "text": body});
        // https://www.plivo.com/docs/messaging/api/message/send-a-message: status callbacks to `url`.
        if let Some(url) = &self.status_callback {
            message["url"] = url.as_str().into();
            message["method"] = "POST".into();
        }
        let request = self
            .client
            .post(&self.url)
            .header(AUTHORIZATION, self.authorization.clone())
            .json(&message);
        let exchanged = match exchange(self.name(), request).await {
            Ok(answer) => answer,
            Err(no_answer) => return no_answer.into_result(),
        };
        let status = exchanged.status;
        let answer = serde_json::from_slice::<Answer>(&exchanged.body).ok();
        if status.is_success() {
            // Plivo has queued the message: an unreadable body must not make us send it twice.
            return Ok(match answer.and_then(|a| a.message_uuid.into_iter().next()) {
                Some(uuid) => Receipt::sent(Some(uuid)),
                None => Receipt::unconfirmed(Ambiguous::UnreadableAnswer, None),
            });
        }
        let detail = answer
            .and_then(|a| a.error)
            .map(|e| match e {
                serde_json::Value::String(s) => scrub(&s),
                other => scrub(&other.to_string()),
            })
            .unwrap_or_else(|| "no Plivo error body".into());
        let message = format!("plivo answered {}: {detail}", status.as_u16());
        Err(exchanged.failure(message, Some(ProviderCode::http_status(status))))
    }
}
