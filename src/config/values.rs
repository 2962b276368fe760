//! The value types of the configuration: each is written as one string in `herald.toml` (or a `HERALD_*`
//! variable), parsed once at load, and written back as the same text by [`Config::to_env`].
//!
//! A parse error names what is wrong, never the text: a secret pasted on the wrong line must not reach
//! the terminal. figment adds the key.
//!
//! [`Config::to_env`]: super::Config::to_env

use std::error::Error;
use std::fmt;
use std::num::NonZeroU16;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use lapin::uri::AMQPUri;
use lettre::message::Mailbox;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;

use super::smtp::{self, Target};
use crate::job::{Channel, Locale, PhoneNumber};

/// A value written as one string: parsed at load, written back by `to_env`.
pub trait Text: Sized {
    /// What is wrong with a text, in words that never include it (nor do its sources).
    type Err: Into<Box<dyn Error + Send + Sync>>;
    fn parse_text(text: &str) -> Result<Self, Self::Err>;
    /// The text that parses back to this value (secrets included: it is for `to_env`).
    fn to_text(&self) -> String;
}

/// `e` with its sources, `: `-separated.
fn with_sources(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `#[serde(with = "text")]` for a field of a [`Text`] type.
pub mod text {
    use super::*;

    pub fn serialize<T: Text, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&value.to_text())
    }

    pub fn deserialize<'de, T: Text, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let text = String::deserialize(d)?;
        T::parse_text(&text).map_err(|e| serde::de::Error::custom(with_sources(&*e.into())))
    }
}

/// `#[serde(with = "blank_is_none")]` for an optional [`Text`] field whose unset value is `""`.
pub mod blank_is_none {
    use super::*;

    pub fn serialize<T: Text, S: Serializer>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&value.as_ref().map(Text::to_text).unwrap_or_default())
    }

    pub fn deserialize<'de, T: Text, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        T::parse_text(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(with_sources(&*e.into())))
    }
}

/// Serde and `FromStr` for herald's own [`Text`] types, so they also work in lists and in tests.
macro_rules! text_traits {
    ($($t:ty),* $(,)?) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                text::serialize(self, s)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                text::deserialize(d)
            }
        }
        impl std::str::FromStr for $t {
            type Err = <$t as Text>::Err;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$t>::parse_text(s)
            }
        }
    )*};
}

text_traits!(
    HumanDuration,
    Rate,
    HttpUrl,
    WebhookKey,
    SmtpUrl,
    AmqpUrl,
    smtp::HelloName
);

/// Every provider herald has: one closed vocabulary for config (`channels.sms = ["twilio"]`), dispatch,
/// events and metric labels. The text form appears only where a name is written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Twilio,
    Smtp,
    Webhook,
    Outbox,
    Vonage,
    Sns,
    Infobip,
    Plivo,
    /// WhatsApp Cloud API.
    Meta,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 9] = [
        ProviderKind::Twilio,
        ProviderKind::Smtp,
        ProviderKind::Webhook,
        ProviderKind::Outbox,
        ProviderKind::Vonage,
        ProviderKind::Sns,
        ProviderKind::Infobip,
        ProviderKind::Plivo,
        ProviderKind::Meta,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Twilio => "twilio",
            ProviderKind::Smtp => "smtp",
            ProviderKind::Webhook => "webhook",
            ProviderKind::Outbox => "outbox",
            ProviderKind::Vonage => "vonage",
            ProviderKind::Sns => "sns",
            ProviderKind::Infobip => "infobip",
            ProviderKind::Plivo => "plivo",
            ProviderKind::Meta => "meta",
        }
    }

    /// Whether this provider can deliver on `channel` at all (a chain naming it elsewhere is a config error).
    pub fn delivers(self, channel: Channel) -> bool {
        match self {
            ProviderKind::Outbox => true,
            // The custom provider's body mirrors Auth0's sms/voice/email message: no WhatsApp form.
            ProviderKind::Webhook => channel != Channel::Whatsapp,
            ProviderKind::Smtp => channel == Channel::Email,
            ProviderKind::Twilio => channel != Channel::Email,
            ProviderKind::Infobip => matches!(channel, Channel::Sms | Channel::Voice),
            ProviderKind::Vonage | ProviderKind::Sns | ProviderKind::Plivo => channel == Channel::Sms,
            ProviderKind::Meta => channel == Channel::Whatsapp,
        }
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A string that never shows itself in `Debug` or `Display` output. Its `Serialize` does show it: that
/// is for [`Config::to_env`](super::Config::to_env) only.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Empty or only whitespace: as good as unset, and never a real credential.
    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"***\"")
        }
    }
}

/// A duration written as `"10s"`, `"2m"`, `"1h 30m"` (humantime syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// Neither the value nor humantime's message (which quotes it).
#[derive(Debug, thiserror::Error)]
#[error("is not a duration like \"10s\" or \"2m\"")]
pub struct DurationError;

impl Text for HumanDuration {
    type Err = DurationError;
    fn parse_text(text: &str) -> Result<Self, DurationError> {
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|_| DurationError)
    }
    fn to_text(&self) -> String {
        humantime::format_duration(self.0).to_string()
    }
}

/// `retry.schedule`: the wait before each retry, parsed once at load. A failed attempt waits the next
/// one and goes to the delay queue of that wait (docs/guarantees.md, "Retries and delivery guarantees").
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(from = "Vec<HumanDuration>", into = "Vec<HumanDuration>")]
pub struct RetrySchedule(Vec<Duration>);

impl RetrySchedule {
    pub fn new(waits: Vec<Duration>) -> RetrySchedule {
        RetrySchedule(waits)
    }

    /// The waits in the order written, the first after the first failed attempt.
    pub fn waits(&self) -> &[Duration] {
        &self.0
    }
}

impl From<Vec<HumanDuration>> for RetrySchedule {
    fn from(waits: Vec<HumanDuration>) -> RetrySchedule {
        RetrySchedule(waits.into_iter().map(|w| w.0).collect())
    }
}

impl From<RetrySchedule> for Vec<HumanDuration> {
    fn from(schedule: RetrySchedule) -> Vec<HumanDuration> {
        schedule.0.into_iter().map(HumanDuration).collect()
    }
}

/// A throttle limit: `"N/period"` with an optional `"burst M"`; period is `s`, `m`, `h` or e.g. `5m`.
/// An empty string in the config means "no limit" (see [`blank_is_none`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("is not a limit like \"10/h\", \"5/5m\" or \"1/h burst 10\"")]
pub struct RateError;

impl Text for Rate {
    type Err = RateError;
    fn parse_text(s: &str) -> Result<Self, RateError> {
        let mut words = s.split_whitespace();
        let rate = words.next().ok_or(RateError)?;
        let burst = match (words.next(), words.next(), words.next()) {
            (None, _, _) => None,
            (Some("burst"), Some(n), None) => Some(n.parse::<u32>().map_err(|_| RateError)?),
            _ => return Err(RateError),
        };
        let (count, period) = rate.split_once('/').ok_or(RateError)?;
        let count: u32 = count.parse().map_err(|_| RateError)?;
        let unit_at = period.find(|c: char| !c.is_ascii_digit()).ok_or(RateError)?;
        let (n, unit) = period.split_at(unit_at);
        let n: u64 = if n.is_empty() {
            1
        } else {
            n.parse().map_err(|_| RateError)?
        };
        let secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return Err(RateError),
        };
        let burst = burst.unwrap_or(count);
        if count == 0 || n == 0 || burst == 0 {
            return Err(RateError);
        }
        let period = n.checked_mul(secs).map(Duration::from_secs).ok_or(RateError)?;
        // The limiters keep time in u64 nanoseconds: a burst's worth of intervals must fit (584 years).
        let window = (period / count).checked_mul(burst).ok_or(RateError)?;
        if window.as_nanos() > u128::from(u64::MAX) {
            return Err(RateError);
        }
        Ok(Rate { count, period, burst })
    }

    fn to_text(&self) -> String {
        let secs = self.period.as_secs();
        let (n, unit) = match secs {
            s if s % 3600 == 0 => (s / 3600, "h"),
            s if s % 60 == 0 => (s / 60, "m"),
            s => (s, "s"),
        };
        let n = if n == 1 { String::new() } else { n.to_string() };
        let burst = if self.burst == self.count {
            String::new()
        } else {
            format!(" burst {}", self.burst)
        };
        format!("{}/{n}{unit}{burst}", self.count)
    }
}

/// An `http://` or `https://` URL (`webhook.url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(url::Url);

#[derive(Debug, thiserror::Error)]
pub enum HttpUrlError {
    #[error("is not an http(s) URL")]
    NotAUrl(#[source] url::ParseError),
    #[error("must be an http:// or https:// URL")]
    Scheme,
}

impl HttpUrl {
    pub fn as_url(&self) -> &url::Url {
        &self.0
    }
}

impl Text for HttpUrl {
    type Err = HttpUrlError;
    fn parse_text(text: &str) -> Result<Self, HttpUrlError> {
        let url = url::Url::parse(text).map_err(HttpUrlError::NotAUrl)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HttpUrlError::Scheme);
        }
        Ok(HttpUrl(url))
    }
    fn to_text(&self) -> String {
        self.0.as_str().to_owned()
    }
}

/// The HMAC key of `webhook.secret` (`whsec_` + base64), decoded. `Debug` is masked.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookKey(Vec<u8>);

impl WebhookKey {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key of status callbacks derived from this one (`webhook.status_secret` unset): see
    /// [`status_key`].
    pub fn status_key(&self) -> WebhookKey {
        WebhookKey(status_key(&self.0))
    }
}

impl fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookKey(***)")
    }
}

/// What is wrong with a `whsec_…` secret, never quoting it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum SecretError {
    #[error("must start with `whsec_`")]
    Prefix,
    // No `#[source]`: base64's message names the offending byte of the secret.
    #[error("the part after `whsec_` is not base64")]
    NotBase64,
    #[error("the key is empty")]
    Empty,
    /// Zero bytes or spaces only: an empty value that went through an encoder, never a real key.
    #[error("the key is only zero bytes or whitespace")]
    Blank,
}

/// `whsec_<base64>` → the HMAC key bytes.
fn decode_secret(secret: &str) -> Result<Vec<u8>, SecretError> {
    let encoded = secret.strip_prefix("whsec_").ok_or(SecretError::Prefix)?;
    let key = BASE64.decode(encoded).map_err(|_| SecretError::NotBase64)?;
    if key.is_empty() {
        return Err(SecretError::Empty);
    }
    if key.iter().all(|b| *b == 0 || b.is_ascii_whitespace()) {
        return Err(SecretError::Blank);
    }
    Ok(key)
}

/// What the key of the status callbacks is derived from when `webhook.status_secret` is unset.
const STATUS_KEY_LABEL: &[u8] = b"herald webhook status v1";

/// The status-callback key derived from the outbound key: HMAC-SHA256(key, "herald webhook status v1"),
/// 32 bytes (docs/receipts.md). A different key for each direction: a request herald signed
/// can never pass as a status callback.
fn status_key(key: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(STATUS_KEY_LABEL);
    mac.finalize().into_bytes().to_vec()
}

/// The key as a `whsec_…` secret again: the inverse of [`decode_secret`].
fn encode_secret(key: &[u8]) -> String {
    format!("whsec_{}", BASE64.encode(key))
}

/// Says what a Standard Webhooks secret looks like after what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0} (a Standard Webhooks secret, whsec_…)")]
pub struct WebhookKeyError(SecretError);

impl Text for WebhookKey {
    type Err = WebhookKeyError;
    fn parse_text(text: &str) -> Result<Self, WebhookKeyError> {
        decode_secret(text).map(WebhookKey).map_err(WebhookKeyError)
    }
    fn to_text(&self) -> String {
        encode_secret(&self.0)
    }
}

/// `amqp.url`, parsed once at load into the URI lapin connects with, so that connecting (at start and on
/// every reconnect) cannot fail on it; the text is kept for `to_env` and for the address shown in logs.
/// `Debug` is masked: it may hold a password.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    text: Secret,
    uri: AMQPUri,
}

impl AmqpUrl {
    pub fn uri(&self) -> &AMQPUri {
        &self.uri
    }

    /// The URL as written, password included.
    pub fn expose(&self) -> &str {
        self.text.expose()
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AmqpUrl(***)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AmqpUrlError {
    #[error("must start with amqp:// or amqps://")]
    Scheme,
    /// No source: the parser's words can quote the URL.
    #[error("is not an AMQP URI")]
    NotAnAmqpUri,
}

impl Text for AmqpUrl {
    type Err = AmqpUrlError;
    fn parse_text(text: &str) -> Result<Self, AmqpUrlError> {
        if !text.starts_with("amqp://") && !text.starts_with("amqps://") {
            return Err(AmqpUrlError::Scheme);
        }
        let uri = text.parse::<AMQPUri>().map_err(|_| AmqpUrlError::NotAnAmqpUri)?;
        Ok(AmqpUrl {
            text: Secret::new(text),
            uri,
        })
    }
    fn to_text(&self) -> String {
        self.text.expose().to_owned()
    }
}

/// `#[serde(deserialize_with = "at_least_one")]` for a count that 0 would leave meaningless. Its visitor
/// says the range in an operator's words ("a whole number from 1 to 65535"), where `u16` said "expected u16".
pub fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroU16, D::Error> {
    use serde::de::{Unexpected, Visitor};
    struct AtLeastOne;
    impl Visitor<'_> for AtLeastOne {
        type Value = NonZeroU16;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a whole number from 1 to 65535")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<NonZeroU16, E> {
            if v == 0 {
                return Err(E::custom("must be at least 1"));
            }
            u16::try_from(v)
                .ok()
                .and_then(NonZeroU16::new)
                .ok_or_else(|| E::invalid_value(Unexpected::Unsigned(v), &self))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<NonZeroU16, E> {
            let v = u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))?;
            self.visit_u64(v)
        }
        // A HERALD_* variable is text.
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<NonZeroU16, E> {
            match v.trim().parse::<u64>() {
                Ok(n) => self.visit_u64(n),
                Err(_) => Err(E::invalid_type(Unexpected::Str(v), &self)),
            }
        }
    }
    d.deserialize_u16(AtLeastOne)
}

/// `smtp.url`, parsed into the [`Target`] the smtp provider connects to; the text is kept for `to_env` (re-encoding
/// credentials could change it). `Debug` is masked: it may hold a password.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpUrl {
    text: Secret,
    target: Target,
}

impl SmtpUrl {
    pub fn target(&self) -> &Target {
        &self.target
    }
}

impl fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SmtpUrl(***)")
    }
}

impl Text for SmtpUrl {
    type Err = smtp::UrlError;
    fn parse_text(text: &str) -> Result<Self, smtp::UrlError> {
        Ok(SmtpUrl {
            target: smtp::parse_url(text)?,
            text: Secret::new(text),
        })
    }
    fn to_text(&self) -> String {
        self.text.expose().to_owned()
    }
}

impl Text for Mailbox {
    type Err = smtp::FromError;
    fn parse_text(text: &str) -> Result<Self, smtp::FromError> {
        smtp::parse_from(text)
    }
    fn to_text(&self) -> String {
        self.to_string()
    }
}

impl Text for smtp::HelloName {
    type Err = smtp::HelloNameError;
    fn parse_text(text: &str) -> Result<Self, smtp::HelloNameError> {
        smtp::parse_hello_name(text)
    }
    fn to_text(&self) -> String {
        self.as_str().to_owned()
    }
}

impl Text for Locale {
    type Err = crate::job::NotALocale;
    fn parse_text(text: &str) -> Result<Self, Self::Err> {
        Locale::parse(text)
    }
    fn to_text(&self) -> String {
        self.as_str().to_owned()
    }
}

impl Text for PhoneNumber {
    type Err = String;
    fn parse_text(text: &str) -> Result<Self, String> {
        PhoneNumber::parse(text).map_err(|e| format!("{e}, like +14155550123"))
    }
    fn to_text(&self) -> String {
        self.expose().to_owned()
    }
}

impl Text for url::Url {
    type Err = url::ParseError;
    fn parse_text(text: &str) -> Result<Self, url::ParseError> {
        url::Url::parse(text)
    }
    fn to_text(&self) -> String {
        self.as_str().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_has_one_name_in_config_events_and_metrics() {
        for kind in ProviderKind::ALL {
            let written = serde_json::to_string(&kind).unwrap();
            assert_eq!(written, format!("\"{}\"", kind.name()));
            assert_eq!(serde_json::from_str::<ProviderKind>(&written).unwrap(), kind);
            assert_eq!(kind.to_string(), kind.name());
        }
        let voice: Vec<&str> = ProviderKind::ALL
            .into_iter()
            .filter(|k| k.delivers(Channel::Voice))
            .map(ProviderKind::name)
            .collect();
        assert_eq!(voice, ["twilio", "webhook", "outbox", "infobip"]);
    }

    #[test]
    fn rates_and_durations_are_written_back_as_they_parse() {
        for text in [
            "10/h",
            "1/h burst 10",
            "5/5m",
            "50/m",
            "2000/m",
            "3/90s",
            "7/2h burst 1",
        ] {
            let rate: Rate = text.parse().unwrap();
            assert_eq!(rate.to_text(), text);
        }
        for text in [
            "fifty a minute",
            "0/h",
            "1/h burst 0",
            "1/d",
            "1/h burst",
            "",
            // Beyond what the limiters can count: refused here rather than a panic at every check.
            "1/10000000000h burst 4000000000",
            "1/18446744073709551615h",
        ] {
            assert!(text.parse::<Rate>().is_err(), "{text}");
        }
        for text in ["1s", "2m", "10m", "50ms", "1h 30m"] {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.to_text(), text);
        }
    }

    #[test]
    fn webhook_secrets_decode_and_encode_back() {
        // The Standard Webhooks specification's test vector key.
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert!(decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(decode_secret("whsec_!!!").is_err());
        assert_eq!(encode_secret(&key), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        // base64 of "\0\0\0" and of three spaces: empty values an encoder made look set.
        assert_eq!(decode_secret("whsec_AAAA"), Err(SecretError::Blank));
        assert_eq!(decode_secret("whsec_ICAg"), Err(SecretError::Blank));
        assert_eq!(decode_secret("whsec_"), Err(SecretError::Empty));
    }

    /// The derivation docs/receipts.md gives the receivers of herald's webhooks, with a fixed vector they can check
    /// their own code against (computed independently with `openssl dgst -sha256 -mac HMAC`).
    const STATUS_KEY_VECTOR: &str = "whsec_rLjHTJf4Rdxczsvyjk6H6/fWcJJbpIVr27b6Z36M9gw=";

    #[test]
    fn the_status_key_is_the_documented_hmac_of_the_secret() {
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let derived = status_key(&key);
        assert_eq!(derived.len(), 32);
        assert_ne!(derived, key);
        assert_eq!(encode_secret(&derived), STATUS_KEY_VECTOR);
    }

    #[test]
    fn errors_never_quote_the_text() {
        let secret = "s3cr3t-Zq9";
        let messages = [
            with_sources(&*Box::<dyn Error + Send + Sync>::from(
                secret.parse::<HttpUrl>().unwrap_err(),
            )),
            with_sources(&*Box::<dyn Error + Send + Sync>::from(
                secret.parse::<WebhookKey>().unwrap_err(),
            )),
            with_sources(&*Box::<dyn Error + Send + Sync>::from(
                format!("smtp://{secret}:{secret}@[x").parse::<SmtpUrl>().unwrap_err(),
            )),
            with_sources(&*Box::<dyn Error + Send + Sync>::from(
                Mailbox::parse_text(secret).unwrap_err(),
            )),
            PhoneNumber::parse_text(secret).unwrap_err(),
            Locale::parse_text(secret).unwrap_err().to_string(),
        ];
        for message in messages {
            assert!(!message.contains("s3cr3t"), "{message}");
        }
        let key: WebhookKey = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        assert_eq!(format!("{key:?}"), "WebhookKey(***)");
        let url: SmtpUrl = "smtp://u:hunter2@mail.test".parse().unwrap();
        assert!(!format!("{url:?} {:?}", url.target()).contains("hunter2"));
    }
}
