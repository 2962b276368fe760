//! The HTTP exchange every HTTP provider makes: send with the shared client, read a capped answer, and
//! classify by status what the provider's own answer does not decide. Each provider keeps reading its
//! own answer body and its own documented classification in its own file.

use std::time::Duration;

use base64::Engine;
use reqwest::header::{CONTENT_TYPE, HeaderValue, InvalidHeaderValue, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode};

use super::{ProviderError, ProviderKind};

/// A provider's answer, read whole.
pub struct Answer {
    pub status: StatusCode,
    /// The `Retry-After` header, for a transient failure.
    pub retry_after: Option<Duration>,
    /// Whether the answer says it is an HTML page.
    pub html: bool,
    /// At most 64 KiB of it.
    pub body: Vec<u8>,
}

/// Sends `request` for `provider` and reads its answer. A failed exchange (timeout, refused connection,
/// reset, unreadable body) is a transient failure.
pub async fn exchange(provider: ProviderKind, request: RequestBuilder) -> Result<Answer, ProviderError> {
    let response = request.send().await.map_err(|e| transport_error(provider, &e))?;
    let status = response.status();
    let retry_after = retry_after(&response);
    let html = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("text/html"));
    let body = read_capped(response).await.map_err(|e| transport_error(provider, &e))?;
    Ok(Answer {
        status,
        retry_after,
        html,
        body,
    })
}

impl Answer {
    /// This failed answer classified by its HTTP status alone (see [`http_failure`]).
    pub fn failure(&self, message: String, provider_code: Option<String>) -> ProviderError {
        http_failure(self.status, message, provider_code, self.retry_after)
    }

    /// A failure the provider's own answer classified: transient ones keep the answer's Retry-After.
    pub fn rejection(&self, transient: bool, message: String, provider_code: Option<String>) -> ProviderError {
        ProviderError::classified(transient, message, provider_code, self.retry_after)
    }
}

/// Reads at most 64 KiB of a response body: a provider answering garbage cannot exhaust memory.
pub async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    const CAP: usize = 64 * 1024;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = CAP - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= CAP {
            break;
        }
    }
    Ok(body)
}

/// The `Retry-After` header in seconds, if any.
pub fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// Seconds form of Retry-After, as sent by rate limiters (the HTTP-date form is rare for APIs).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// An HTTP provider's failed answer, classified the way Twilio, Standard Webhooks receivers and most
/// APIs mean it: 408, 429 and 5xx are worth retrying (with the answer's Retry-After), other statuses
/// fail the same way again.
pub fn http_failure(
    status: StatusCode,
    message: String,
    provider_code: Option<String>,
    retry_after: Option<Duration>,
) -> ProviderError {
    let transient =
        status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
    ProviderError::classified(transient, message, provider_code, retry_after)
}

/// A failed HTTP exchange: always transient (timeouts, refused connections, resets).
pub fn transport_error(provider: ProviderKind, e: &reqwest::Error) -> ProviderError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "answer could not be read"
    } else {
        "request failed"
    };
    ProviderError::Transient {
        message: format!("{provider} {what}"),
        provider_code: None,
        retry_after: None,
    }
}

/// `Authorization: <scheme> <credentials>`, marked sensitive so that no log or Debug prints it.
pub fn authorization(scheme: &str, credentials: &str) -> Result<HeaderValue, InvalidHeaderValue> {
    let mut value = HeaderValue::from_str(&format!("{scheme} {credentials}"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// HTTP Basic `Authorization` for `user` and `password`.
pub fn basic_authorization(user: &str, password: &str) -> Result<HeaderValue, InvalidHeaderValue> {
    authorization(
        "Basic",
        &base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_are_classified_once_for_every_provider() {
        let cases = [
            (StatusCode::REQUEST_TIMEOUT, true),
            (StatusCode::TOO_MANY_REQUESTS, true),
            (StatusCode::INTERNAL_SERVER_ERROR, true),
            (StatusCode::SERVICE_UNAVAILABLE, true),
            (StatusCode::BAD_REQUEST, false),
            (StatusCode::UNAUTHORIZED, false),
            (StatusCode::NOT_FOUND, false),
            (StatusCode::UNPROCESSABLE_ENTITY, false),
        ];
        for (status, transient) in cases {
            let e = http_failure(status, "m".into(), Some("1".into()), Some(Duration::from_secs(3)));
            assert_eq!(e.is_transient(), transient, "{status}");
            assert_eq!(e.provider_code(), Some("1"));
        }
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn authorization_is_sensitive() {
        let basic = basic_authorization("AC1", "secret").unwrap();
        assert!(basic.is_sensitive());
        assert_eq!(basic.to_str().unwrap(), "Basic QUMxOnNlY3JldA==");
        assert!(authorization("App", "bad\nkey").is_err());
    }
}
