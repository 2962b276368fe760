//! Plivo Messages API: `POST {base_url}/v1/Account/{auth_id}/Message/`, JSON, HTTP Basic auth (contract §6).
//! 202 is success; the other statuses are Plivo's documented HTTP statuses (400 invalid parameter, 401
//! authentication failed, 404, 405 permanent; 429 rate limited, 5xx server error worth retrying).

use base64::Engine;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use serde_json::json;

use super::{
    Provider, ProviderError, ProviderKind, Receipt, http_failure, phone_of, read_capped, retry_after, transport_error,
};
use crate::config::PlivoConfig;
use crate::events::scrub;
use crate::job::Job;
use crate::templates::Rendered;

pub struct Plivo {
    client: reqwest::Client,
    url: Url,
    authorization: HeaderValue,
    from: String,
}

/// `{"api_id", "message": "message(s) queued", "message_uuid": ["…"]}`, or `{"api_id", "error": "…"}`.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    message_uuid: Vec<String>,
    error: Option<serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("plivo.base_url / plivo.auth_id do not form a URL")]
    Url(#[source] url::ParseError),
    #[error("plivo.auth_id / plivo.auth_token cannot form an Authorization header")]
    Authorization(#[source] reqwest::header::InvalidHeaderValue),
}

impl Plivo {
    pub fn new(config: &PlivoConfig, client: reqwest::Client) -> Result<Plivo, SetupError> {
        let base = config.base_url.as_url().as_str().trim_end_matches('/');
        let auth_id = &config.auth_id;
        let url = Url::parse(&format!("{base}/v1/Account/{auth_id}/Message/")).map_err(SetupError::Url)?;
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{auth_id}:{}", config.auth_token.expose()));
        let mut authorization =
            HeaderValue::from_str(&format!("Basic {credentials}")).map_err(SetupError::Authorization)?;
        authorization.set_sensitive(true);
        Ok(Plivo {
            client,
            url,
            authorization,
            // Plivo writes numbers with the country code and without `+`.
            from: config
                .from
                .strip_prefix('+')
                .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
                .unwrap_or(&config.from)
                .to_owned(),
        })
    }
}

#[async_trait::async_trait]
impl Provider for Plivo {
    fn name(&self) -> ProviderKind {
        ProviderKind::Plivo
    }

    async fn send(&self, job: &Job, message: &Rendered) -> Result<Receipt, ProviderError> {
        let Rendered::Sms { body } = message else {
            return Err(ProviderError::Permanent {
                message: "plivo delivers SMS only".into(),
                provider_code: None,
            });
        };
        let dst = phone_of(job, self.name())?.digits();
        let response = self
            .client
            .post(self.url.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .json(&json!({"src": self.from, "dst": dst, "text": body}))
            .send()
            .await
            .map_err(|e| transport_error(self.name(), &e))?;
        let status = response.status();
        let retry_after = retry_after(&response);
        let answer = read_capped(response)
            .await
            .map_err(|e| transport_error(self.name(), &e))?;
        let answer = serde_json::from_slice::<Answer>(&answer).ok();
        if status.is_success() {
            // Plivo has queued the message: an unreadable body must not make us send it twice.
            return Ok(Receipt {
                message_id: answer.and_then(|a| a.message_uuid.into_iter().next()),
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
        Err(http_failure(
            status,
            message,
            Some(status.as_u16().to_string()),
            retry_after,
        ))
    }
}
