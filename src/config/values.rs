//! The value types of the configuration: each is written as one string in `herald.toml` (or a `HERALD_*`
//! variable), parsed once at load, and written back as the same text by [`Config::to_env`].
//!
//! A parse error names what is wrong, never the text: a secret pasted on the wrong line must not reach
//! the terminal. figment adds the key.
//!
//! [`Config::to_env`]: super::Config::to_env

use std::error::Error;
use std::fmt;
use std::time::Duration;

use lettre::message::Mailbox;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::job::{Locale, PhoneNumber};
use crate::providers::smtp::{self, Target};
use crate::providers::webhook::{self, SecretError};

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

text_traits!(HumanDuration, Rate, HttpUrl, WebhookKey, SmtpUrl);

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
/// one and goes to the delay queue of that wait (README, "Retries and delivery guarantees").
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
    /// A key herald derived itself (the status key); a configured one is parsed from its `whsec_…` text.
    pub fn from_bytes(key: Vec<u8>) -> WebhookKey {
        WebhookKey(key)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookKey(***)")
    }
}

/// Says what a Standard Webhooks secret looks like after what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0} (a Standard Webhooks secret, whsec_…)")]
pub struct WebhookKeyError(SecretError);

impl Text for WebhookKey {
    type Err = WebhookKeyError;
    fn parse_text(text: &str) -> Result<Self, WebhookKeyError> {
        webhook::decode_secret(text).map(WebhookKey).map_err(WebhookKeyError)
    }
    fn to_text(&self) -> String {
        webhook::encode_secret(&self.0)
    }
}

/// `smtp.url`, parsed into the provider's [`Target`]; the text is kept for `to_env` (re-encoding
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
