//! The HTTP exchange every HTTP provider makes: send with the shared client, read a capped answer, and
//! classify by status what the provider's own answer does not decide. Each provider keeps reading its
//! own answer body and its own documented classification in its own file.
//!
//! The client is hyper-util's pooled client with rustls, not reqwest: reqwest parsed every request's URL
//! twice more (its redirect layer and the response's URL, whatever the policy) and ran its tower layers,
//! which were a fifth of a Twilio-shaped job's instructions (BENCHMARKS.md, "#23 profile").

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, InvalidHeaderValue, PROXY_AUTHORIZATION, RETRY_AFTER,
    USER_AGENT,
};
use http::{HeaderMap, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use url::Url;

use super::connector::Connector;
use super::{Ambiguous, Class, ProviderCode, ProviderError, ProviderKind, Receipt};

/// The one HTTP client of the process: one connection pool, TLS set up once. Cloning shares both.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<Connector, Tracked>,
    /// The client's own, for what a request to a proxy carries.
    connector: Connector,
    /// For the whole exchange, answer body included; also the connect timeout.
    timeout: Duration,
}

/// The HTTP client could not be set up (the platform's certificate verifier).
#[derive(Debug, thiserror::Error)]
#[error("setting up TLS for the HTTP providers")]
pub struct ClientError(#[source] rustls::Error);

impl HttpClient {
    /// `timeout` bounds each exchange and each connect; at most `idle_per_host` kept-alive connections
    /// per provider host. Certificates are checked by the platform's verifier (system roots; on Linux
    /// `SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured). Providers are reached through the proxy the
    /// environment names, if any (see [`super::connector`]).
    pub fn new(timeout: Duration, idle_per_host: usize) -> Result<HttpClient, ClientError> {
        HttpClient::with_proxies(timeout, idle_per_host, Matcher::from_env())
    }

    /// [`HttpClient::new`] with the proxies `proxies` names instead of the environment's.
    pub fn with_proxies(timeout: Duration, idle_per_host: usize, proxies: Matcher) -> Result<HttpClient, ClientError> {
        let crypto = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        let verifier = rustls_platform_verifier::Verifier::new(crypto.clone()).map_err(ClientError)?;
        let tls = rustls::ClientConfig::builder_with_provider(crypto)
            .with_safe_default_protocol_versions()
            .map_err(ClientError)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let connector = Connector::new(http, tls, proxies);
        let inner = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(idle_per_host)
            .build(connector.clone());
        Ok(HttpClient {
            inner,
            connector,
            timeout,
        })
    }

    /// A `POST` to `url`, with herald's `User-Agent`. Credentials in the URL (`https://user:pass@host/…`,
    /// percent-encoded) are sent as Basic `Authorization`, as reqwest sent them, never in the request
    /// line; an `Authorization` the provider sets replaces them.
    pub fn post(&self, url: &Url) -> Request<'_> {
        let mut headers = HeaderMap::new();
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("herald/", env!("CARGO_PKG_VERSION"))),
        );
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        let uri = if url.username().is_empty() && url.password().is_none() {
            url.as_str().parse::<Uri>().map_err(|_| ())
        } else {
            let decode = |part: &str| {
                percent_encoding::percent_decode_str(part)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let password = url.password().map(decode).unwrap_or_default();
            let mut bare = url.clone();
            // Both succeed on an http(s) URL, the only kind that has credentials here.
            let stripped = bare.set_username("").and_then(|()| bare.set_password(None));
            match (stripped, basic_authorization(&decode(url.username()), &password)) {
                (Ok(()), Ok(value)) => {
                    headers.insert(AUTHORIZATION, value);
                    bare.as_str().parse::<Uri>().map_err(|_| ())
                }
                _ => Err(()),
            }
        };
        Request {
            client: self,
            uri,
            headers,
            body: Bytes::new(),
            idempotent: false,
        }
    }
}

/// A request being put together, sent by [`exchange`]. A header that is not a valid header fails the
/// exchange (`request failed`), as it would fail the same way again.
pub struct Request<'a> {
    client: &'a HttpClient,
    /// `Err` once any part was invalid.
    uri: Result<Uri, ()>,
    headers: HeaderMap,
    body: Bytes,
    /// The receiver drops a second copy of this request (the webhook's `webhook-id`), so a request
    /// written whole and left unanswered may be sent again.
    idempotent: bool,
}

impl Request<'_> {
    /// Marks a request its receiver deduplicates (see [`Request::idempotent`] field).
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        V: TryInto<HeaderValue>,
    {
        match (name.try_into(), value.try_into()) {
            (Ok(name), Ok(value)) if name == AUTHORIZATION => {
                self.headers.insert(name, value);
            }
            (Ok(name), Ok(value)) => {
                self.headers.append(name, value);
            }
            _ => self.uri = Err(()),
        }
        self
    }

    /// `body` as `application/x-www-form-urlencoded`.
    pub fn form<T: serde::Serialize + ?Sized>(self, body: &T) -> Self {
        match serde_urlencoded::to_string(body) {
            Ok(text) => self.typed("application/x-www-form-urlencoded", text.into_bytes()),
            Err(_) => self.invalid(),
        }
    }

    /// `body` as `application/json`.
    pub fn json<T: serde::Serialize + ?Sized>(self, body: &T) -> Self {
        match serde_json::to_vec(body) {
            Ok(bytes) => self.typed("application/json", bytes),
            Err(_) => self.invalid(),
        }
    }

    /// `body` as it is, with whatever `Content-Type` was set.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    fn typed(mut self, content_type: &'static str, body: Vec<u8>) -> Self {
        if !self.headers.contains_key(CONTENT_TYPE) {
            self.headers
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
        self.body(body)
    }

    fn invalid(mut self) -> Self {
        self.uri = Err(());
        self
    }
}

/// A provider's answer, read whole.
pub struct Answer {
    pub status: StatusCode,
    /// The `Retry-After` header, for a transient failure.
    pub retry_after: Option<Duration>,
    /// Whether the answer says it is an HTML page.
    pub html: bool,
    /// At most 64 KiB of it; empty when a 2xx body could not be read whole (the provider took the
    /// request, and each provider reads a 2xx it cannot understand as sent).
    pub body: Vec<u8>,
}

/// An exchange that brought no answer to read.
pub enum NoAnswer {
    /// The provider did not get the request, or got it and may be asked again: worth trying again.
    Failed(ProviderError),
    /// The request was written whole and no answer came: the provider may have taken the message, so it
    /// is not sent again (docs/providers/README.md).
    Unknown(Ambiguous),
}

impl NoAnswer {
    /// As a provider's result: a failure, or a send of unknown outcome.
    pub fn into_result(self) -> Result<Receipt, ProviderError> {
        match self {
            NoAnswer::Failed(e) => Err(e),
            NoAnswer::Unknown(reason) => Ok(Receipt::unconfirmed(reason, None)),
        }
    }
}

/// Why an exchange failed before there was an answer's head: the connection, or anything else (an
/// invalid request included).
enum Failed {
    Connect,
    Other,
}

/// Sends `request` for `provider` and reads its answer.
///
/// Before the request was written whole (no connection, refused, reset while writing, an invalid
/// request) it is a transient failure. After it, a timeout or a connection closed without an answer is
/// [`NoAnswer::Unknown`], unless the request is [`Request::idempotent`]. A 2xx answer's body that cannot
/// be read whole (cut, malformed, or still arriving at the timeout) is given as an answer with no body:
/// the provider has taken the request, and each provider reads such a 2xx as sent.
pub async fn exchange(provider: ProviderKind, request: Request<'_>) -> Result<Answer, NoAnswer> {
    let deadline = tokio::time::Instant::now() + request.client.timeout;
    let failed = |what: &str| {
        NoAnswer::Failed(ProviderError::Transient {
            message: format!("{provider} {what}"),
            provider_code: None,
            retry_after: None,
        })
    };
    let idempotent = request.idempotent;
    let written = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let unanswered = |reason: Ambiguous, what: &str| {
        if idempotent || !written.load(std::sync::atomic::Ordering::Acquire) {
            failed(what)
        } else {
            NoAnswer::Unknown(reason)
        }
    };
    let response = match tokio::time::timeout_at(deadline, send(request, written.clone())).await {
        Ok(Ok(response)) => response,
        Err(_) => return Err(unanswered(Ambiguous::Timeout, "timed out")),
        Ok(Err(Failed::Connect)) => return Err(failed("connection failed")),
        Ok(Err(Failed::Other)) => return Err(unanswered(Ambiguous::ConnectionClosed, "request failed")),
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
    let html = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("text/html"));
    let mut body = Vec::new();
    match tokio::time::timeout_at(deadline, read_capped(response.into_body(), &mut body)).await {
        Ok(Ok(())) => {}
        _ if status.is_success() => {
            tracing::warn!(
                provider = %provider,
                status = status.as_u16(),
                "the answer's body could not be read whole; read as an answer without a body"
            );
            body.clear();
        }
        // A failed answer cut short: the provider said it did not take the request.
        Ok(Err(_)) => return Err(failed("answer could not be read")),
        Err(_) => return Err(failed("timed out")),
    }
    Ok(Answer {
        status,
        retry_after,
        html,
        body,
    })
}

/// Sends `request`, up to the answer's head; `written` is set once hyper has taken the whole body.
async fn send(
    request: Request<'_>,
    written: Arc<std::sync::atomic::AtomicBool>,
) -> Result<hyper::Response<hyper::body::Incoming>, Failed> {
    let Request {
        client,
        uri,
        mut headers,
        body,
        idempotent: _,
    } = request;
    let mut outgoing = http::Request::new(Tracked {
        body: Full::new(body),
        written,
    });
    *outgoing.method_mut() = Method::POST;
    let uri = uri.map_err(|()| Failed::Other)?;
    if let Some(auth) = client.connector.proxy_authorization(&uri) {
        headers.insert(PROXY_AUTHORIZATION, auth);
    }
    *outgoing.uri_mut() = uri;
    *outgoing.headers_mut() = headers;
    client
        .inner
        .request(outgoing)
        .await
        .map_err(|e| if e.is_connect() { Failed::Connect } else { Failed::Other })
}

/// A request body that says when its last frame was taken to be written: from then on the provider may
/// have the whole request.
pub struct Tracked {
    body: Full<Bytes>,
    written: Arc<std::sync::atomic::AtomicBool>,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if polled.is_ready() && self.body.is_end_stream() {
            self.written.store(true, std::sync::atomic::Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Answer {
    /// This failed answer classified by its HTTP status alone (see [`http_failure`]).
    pub fn failure(&self, message: String, provider_code: Option<ProviderCode>) -> ProviderError {
        http_failure(self.status, message, provider_code, self.retry_after)
    }

    /// A failure the provider's own answer classified: transient ones keep the answer's Retry-After.
    pub fn rejection(&self, class: Class, message: String, provider_code: Option<ProviderCode>) -> ProviderError {
        ProviderError::of(class, message, provider_code, self.retry_after)
    }
}

/// Reads at most 64 KiB of an answer into `read`: a provider answering garbage cannot exhaust memory.
/// What was read stays in `read` when the body fails.
async fn read_capped<B>(mut body: B, read: &mut Vec<u8>) -> Result<(), B::Error>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    const CAP: usize = 64 * 1024;
    while let Some(frame) = body.frame().await {
        if let Ok(chunk) = frame?.into_data() {
            let room = CAP - read.len();
            read.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if read.len() >= CAP {
                break;
            }
        }
    }
    Ok(())
}

/// `Retry-After` in both of its forms (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date, read as the
/// time from `now` until it (zero when it has passed).
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An HTTP provider's failed answer, classified the way Twilio, Standard Webhooks receivers and most
/// APIs mean it: 408, 429 and 5xx (and 407, from an egress proxy) are worth retrying (with the answer's
/// Retry-After), other statuses fail the same way again.
pub fn http_failure(
    status: StatusCode,
    message: String,
    provider_code: Option<ProviderCode>,
    retry_after: Option<Duration>,
) -> ProviderError {
    // 407 is herald's egress proxy refusing herald's credentials (providers::connector), not the provider
    // refusing the message: retried, as a refused CONNECT tunnel is, while the operator fixes it.
    let transient = matches!(
        status,
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS | StatusCode::PROXY_AUTHENTICATION_REQUIRED
    ) || status.is_server_error();
    let class = if transient { Class::Transient } else { Class::Permanent };
    ProviderError::of(class, message, provider_code, retry_after)
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
            (StatusCode::PROXY_AUTHENTICATION_REQUIRED, true),
            (StatusCode::TOO_MANY_REQUESTS, true),
            (StatusCode::INTERNAL_SERVER_ERROR, true),
            (StatusCode::SERVICE_UNAVAILABLE, true),
            (StatusCode::BAD_REQUEST, false),
            (StatusCode::UNAUTHORIZED, false),
            (StatusCode::NOT_FOUND, false),
            (StatusCode::UNPROCESSABLE_ENTITY, false),
        ];
        for (status, transient) in cases {
            let code = ProviderCode::http_status(status);
            let e = http_failure(status, "m".into(), Some(code.clone()), Some(Duration::from_secs(3)));
            assert_eq!(e.is_transient(), transient, "{status}");
            assert_eq!(e.provider_code(), Some(&code));
        }
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // The obsolete forms RFC 9110 says a recipient must accept.
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed Oct 21 07:28:05 2015", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn credentials_in_the_url_become_basic_authorization_unless_the_provider_sets_its_own() {
        let client = HttpClient::new(Duration::from_secs(1), 1).unwrap();
        let url = Url::parse("https://us%20er:p%40ss@hooks.example:8443/in?x=1").unwrap();
        let request = client.post(&url);
        assert_eq!(request.uri.as_ref().unwrap(), "https://hooks.example:8443/in?x=1");
        let sent = request.headers.get(AUTHORIZATION).unwrap();
        assert!(sent.is_sensitive());
        assert_eq!(sent, basic_authorization("us er", "p@ss").unwrap());
        let own = authorization("Bearer", "t").unwrap();
        let request = client.post(&url).header(AUTHORIZATION, own.clone());
        assert_eq!(
            request.headers.get_all(AUTHORIZATION).iter().collect::<Vec<_>>(),
            [&own]
        );
        let user_only = client.post(&Url::parse("http://user@h/").unwrap());
        assert_eq!(
            user_only.headers.get(AUTHORIZATION).unwrap(),
            basic_authorization("user", "").unwrap()
        );
        let plain = client.post(&Url::parse("http://h/").unwrap());
        assert!(plain.headers.get(AUTHORIZATION).is_none());
    }

    #[test]
    fn authorization_is_sensitive() {
        let basic = basic_authorization("AC1", "secret").unwrap();
        assert!(basic.is_sensitive());
        assert_eq!(basic.to_str().unwrap(), "Basic QUMxOnNlY3JldA==");
        assert!(authorization("App", "bad\nkey").is_err());
    }
}
