//! Configuration: `herald.toml` plus `HERALD_<SECTION>__<KEY>` overrides (contract §5), parsed into
//! checked types at start-up. Anything wrong stops start-up with a message naming the key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};
use serde::{Deserialize, Deserializer};

/// A configuration error, already phrased for an operator: every message names the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    fn key(key: &str, msg: impl fmt::Display) -> Self {
        ConfigError(format!("`{key}`: {msg}"))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub amqp: AmqpConfig,
    pub state: StateConfig,
    pub http: HttpConfig,
    pub admin: AdminConfig,
    pub templates: TemplatesConfig,
    pub channels: ChannelsConfig,
    pub twilio: TwilioConfig,
    pub smtp: SmtpConfig,
    pub webhook: WebhookConfig,
    pub outbox: OutboxConfig,
    pub redis: RedisConfig,
    pub throttle: ThrottleConfig,
    pub retry: RetryConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Quorum,
    Classic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// May carry a password, hence a `Secret`.
    pub url: Secret,
    pub prefetch: u16,
    pub queue_type: QueueType,
    pub delivery_limit: u32,
    pub jobs_queue: String,
    pub retry_queue: String,
    pub dead_queue: String,
    pub events_exchange: String,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            prefetch: 256,
            queue_type: QueueType::Quorum,
            delivery_limit: 5,
            jobs_queue: "herald.jobs".into(),
            retry_queue: "herald.retry".into(),
            dead_queue: "herald.dead".into(),
            events_exchange: "herald.events".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub path: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            path: "herald-state".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub addr: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub token: Secret,
    /// Who the token stands for in audit events (the token itself is never shown).
    pub token_name: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            token: Secret::default(),
            token_name: "admin".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplatesConfig {
    pub dir: PathBuf,
    pub default_locale: String,
    /// Names of job `vars` the templates print as `{{name}}`: checked without a warning, and empty for a
    /// job that does not carry them.
    pub vars: Vec<String>,
}

impl Default for TemplatesConfig {
    fn default() -> Self {
        TemplatesConfig {
            dir: "templates".into(),
            default_locale: "en".into(),
            vars: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Twilio,
    Smtp,
    Webhook,
    Outbox,
}

impl ProviderKind {
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Twilio => "twilio",
            ProviderKind::Smtp => "smtp",
            ProviderKind::Webhook => "webhook",
            ProviderKind::Outbox => "outbox",
        }
    }
}

/// Provider chain per channel. `None` means "not configured": sms and voice then use twilio when its
/// credentials are set, email uses smtp when `[smtp] url` is set, and everything else falls back to outbox.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    pub sms: Option<Vec<ProviderKind>>,
    pub voice: Option<Vec<ProviderKind>>,
    pub email: Option<Vec<ProviderKind>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwilioConfig {
    pub account_sid: String,
    pub auth_token: Secret,
    pub from: String,
    pub messaging_service_sid: String,
    pub base_url: String,
}

impl Default for TwilioConfig {
    fn default() -> Self {
        TwilioConfig {
            account_sid: String::new(),
            auth_token: Secret::default(),
            from: String::new(),
            messaging_service_sid: String::new(),
            base_url: "https://api.twilio.com".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// `None` = not configured (`smtp://127.0.0.1:25` is used if a chain names smtp anyway).
    pub url: Option<Secret>,
    pub from: String,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            url: None,
            from: "Acme <no-reply@acme.test>".into(),
        }
    }
}

impl SmtpConfig {
    pub fn url_or_default(&self) -> &str {
        self.url.as_ref().map_or("smtp://127.0.0.1:25", |u| u.expose())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: Secret,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    pub path: PathBuf,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            path: "outbox.jsonl".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: Secret,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    #[serde(deserialize_with = "empty_is_none")]
    pub user_phone: Option<Rate>,
    #[serde(deserialize_with = "empty_is_none")]
    pub user_voice: Option<Rate>,
    #[serde(deserialize_with = "empty_is_none")]
    pub user_email: Option<Rate>,
    #[serde(deserialize_with = "empty_is_none")]
    pub ip: Option<Rate>,
    #[serde(deserialize_with = "empty_is_none")]
    pub recipient: Option<Rate>,
    #[serde(deserialize_with = "empty_is_none")]
    pub prefix: Option<Rate>,
    pub prefix_digits: u8,
    /// The per-IP limit keys an IPv6 address by its first `ipv6_prefix` bits: one host gets a whole /64.
    pub ipv6_prefix: u8,
    #[serde(deserialize_with = "empty_is_none")]
    pub global_phone: Option<Rate>,
    pub countries_allow: Vec<u16>,
    pub countries_deny: Vec<u16>,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        let rate = |s: &str| Some(s.parse::<Rate>().expect("built-in rate parses"));
        ThrottleConfig {
            user_phone: rate("10/h"),
            user_voice: rate("1/h burst 10"),
            user_email: rate("5/5m"),
            ip: rate("50/m"),
            recipient: rate("10/h"),
            prefix: rate("30/h"),
            prefix_digits: 7,
            ipv6_prefix: 64,
            global_phone: None,
            countries_allow: Vec::new(),
            countries_deny: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub schedule: Vec<HumanDuration>,
    pub provider_timeout: HumanDuration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let d = |s: u64| HumanDuration(Duration::from_secs(s));
        RetryConfig {
            schedule: vec![d(1), d(5), d(30), d(120), d(600)],
            provider_timeout: d(10),
        }
    }
}

/// A string that never shows itself in `Debug` or `Display` output.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
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

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Neither the value nor humantime's message (which quotes it): a secret pasted on the wrong line
        // must not reach the terminal.
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|_| serde::de::Error::custom("is not a duration like \"10s\" or \"2m\""))
    }
}

/// A throttle limit: `"N/period"` with an optional `"burst M"`; period is `s`, `m`, `h` or e.g. `5m`.
/// An empty string in the config means "no limit" and deserializes as `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || "is not a limit like \"10/h\", \"5/5m\" or \"1/h burst 10\"".to_string();
        let mut words = s.split_whitespace();
        let rate = words.next().ok_or_else(bad)?;
        let burst = match (words.next(), words.next(), words.next()) {
            (None, _, _) => None,
            (Some("burst"), Some(n), None) => Some(n.parse::<u32>().map_err(|_| bad())?),
            _ => return Err(bad()),
        };
        let (count, period) = rate.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.parse().map_err(|_| bad())?;
        let unit_at = period.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (n, unit) = period.split_at(unit_at);
        let n: u64 = if n.is_empty() { 1 } else { n.parse().map_err(|_| bad())? };
        let secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return Err(bad()),
        };
        let burst = burst.unwrap_or(count);
        if count == 0 || n == 0 || burst == 0 {
            return Err(bad());
        }
        Ok(Rate {
            count,
            period: Duration::from_secs(n * secs),
            burst,
        })
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `Option<Rate>` where `""` means `None` (an unset optional limit).
fn empty_is_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Rate>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        Ok(None)
    } else {
        s.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

impl Config {
    /// Loads defaults ← `path` (when given) ← `HERALD_*` environment, then validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        // Every section has `#[serde(default)]`, so the built-in defaults need no provider of their own.
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError(format!("config file {} does not exist", path.display())));
            }
            check_toml_syntax(path)?;
            figment = figment.merge(Toml::file_exact(path));
        }
        for var in EnvVar::all() {
            figment = figment.merge(var);
        }
        // Lossy: environment values are text, so "512" must be able to become a number.
        let config: Config = figment.extract_lossy().map_err(figment_error)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot: cross-key requirements and value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.amqp.prefetch == 0 {
            return Err(ConfigError::key("amqp.prefetch", "must be at least 1"));
        }
        if self.amqp.delivery_limit == 0 {
            return Err(ConfigError::key("amqp.delivery_limit", "must be at least 1"));
        }
        if !self.amqp.url.expose().starts_with("amqp://") && !self.amqp.url.expose().starts_with("amqps://") {
            return Err(ConfigError::key("amqp.url", "must start with amqp:// or amqps://"));
        }
        for (key, name) in [
            ("amqp.jobs_queue", &self.amqp.jobs_queue),
            ("amqp.retry_queue", &self.amqp.retry_queue),
            ("amqp.dead_queue", &self.amqp.dead_queue),
            ("amqp.events_exchange", &self.amqp.events_exchange),
        ] {
            if name.is_empty() || name.len() > 255 {
                return Err(ConfigError::key(key, "must be 1-255 characters"));
            }
        }
        if crate::job::Locale::parse(&self.templates.default_locale).is_err() {
            return Err(ConfigError::key(
                "templates.default_locale",
                "is not a BCP 47 language tag",
            ));
        }
        if self.retry.provider_timeout.0.is_zero() {
            return Err(ConfigError::key("retry.provider_timeout", "must be greater than zero"));
        }
        if !(1..=15).contains(&self.throttle.prefix_digits) {
            return Err(ConfigError::key("throttle.prefix_digits", "must be between 1 and 15"));
        }
        if !(1..=128).contains(&self.throttle.ipv6_prefix) {
            return Err(ConfigError::key("throttle.ipv6_prefix", "must be between 1 and 128"));
        }
        for (channel, kinds) in [
            ("sms", self.chain(crate::job::Channel::Sms)),
            ("voice", self.chain(crate::job::Channel::Voice)),
            ("email", self.chain(crate::job::Channel::Email)),
        ] {
            let key = format!("channels.{channel}");
            if kinds.is_empty() {
                return Err(ConfigError::key(&key, "needs at least one provider"));
            }
            for kind in kinds {
                self.check_provider(&key, channel, kind)?;
            }
        }
        Ok(())
    }

    fn check_provider(&self, key: &str, channel: &str, kind: ProviderKind) -> Result<(), ConfigError> {
        match kind {
            ProviderKind::Outbox => Ok(()),
            ProviderKind::Twilio => {
                if channel == "email" {
                    return Err(ConfigError::key(key, "twilio cannot deliver email"));
                }
                if self.twilio.account_sid.is_empty() {
                    return Err(ConfigError::key(
                        "twilio.account_sid",
                        format!("required because {key} uses twilio"),
                    ));
                }
                if self.twilio.auth_token.is_empty() {
                    return Err(ConfigError::key(
                        "twilio.auth_token",
                        format!("required because {key} uses twilio"),
                    ));
                }
                if channel == "voice" && self.twilio.from.is_empty() {
                    return Err(ConfigError::key(
                        "twilio.from",
                        "required for voice calls through twilio",
                    ));
                }
                if channel == "sms" && self.twilio.from.is_empty() && self.twilio.messaging_service_sid.is_empty() {
                    return Err(ConfigError::key(
                        "twilio.from",
                        "twilio SMS needs `twilio.from` or `twilio.messaging_service_sid`",
                    ));
                }
                if !self.twilio.from.is_empty() && crate::job::PhoneNumber::parse(&self.twilio.from).is_err() {
                    return Err(ConfigError::key(
                        "twilio.from",
                        "must be an E.164 number like +14155550123",
                    ));
                }
                if reqwest::Url::parse(&self.twilio.base_url).is_err() {
                    return Err(ConfigError::key("twilio.base_url", "is not a URL"));
                }
                Ok(())
            }
            ProviderKind::Smtp => {
                if channel != "email" {
                    return Err(ConfigError::key(key, "smtp delivers email only"));
                }
                crate::providers::smtp::parse_url(self.smtp.url_or_default())
                    .map_err(|e| ConfigError::key("smtp.url", e))?;
                crate::providers::smtp::parse_from(&self.smtp.from)
                    .map(|_| ())
                    .map_err(|e| ConfigError::key("smtp.from", e))
            }
            ProviderKind::Webhook => {
                let url = reqwest::Url::parse(&self.webhook.url).map_err(|_| {
                    ConfigError::key(
                        "webhook.url",
                        format!("required because {key} uses webhook: an http(s) URL"),
                    )
                })?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(ConfigError::key("webhook.url", "must be an http:// or https:// URL"));
                }
                crate::providers::webhook::decode_secret(self.webhook.secret.expose())
                    .map(|_| ())
                    .map_err(|e| {
                        ConfigError::key("webhook.secret", format!("{e} (a Standard Webhooks secret, whsec_…)"))
                    })
            }
        }
    }

    /// The provider chain of a channel, with the defaults of [`ChannelsConfig`] applied.
    pub fn chain(&self, channel: crate::job::Channel) -> Vec<ProviderKind> {
        use crate::job::Channel;
        let (explicit, configured) = match channel {
            Channel::Sms => (
                &self.channels.sms,
                (!self.twilio.account_sid.is_empty()).then_some(ProviderKind::Twilio),
            ),
            Channel::Voice => (
                &self.channels.voice,
                (!self.twilio.account_sid.is_empty()).then_some(ProviderKind::Twilio),
            ),
            Channel::Email => (&self.channels.email, self.smtp.url.as_ref().map(|_| ProviderKind::Smtp)),
        };
        match explicit {
            Some(chain) => chain.clone(),
            None => vec![configured.unwrap_or(ProviderKind::Outbox)],
        }
    }
}

/// One `HERALD_<SECTION>__<KEY>` variable as a configuration source. Values stay text (a phone number
/// like `+15005550006` must not become an integer); only `[...]` is read as a TOML array.
struct EnvVar {
    name: String,
    path: String,
    value: Value,
}

impl EnvVar {
    fn all() -> Vec<EnvVar> {
        let mut vars: Vec<EnvVar> = std::env::vars()
            .filter_map(|(name, raw)| {
                let rest = name.strip_prefix("HERALD_")?;
                // HERALD_CONFIG names the file, it is not a key.
                if rest == "CONFIG" || rest.is_empty() {
                    return None;
                }
                let path = rest.to_ascii_lowercase().replace("__", ".");
                let value = if raw.trim_start().starts_with('[') {
                    toml::from_str::<std::collections::BTreeMap<String, Value>>(&format!("v = {raw}"))
                        .ok()
                        .and_then(|mut m| m.remove("v"))
                        .unwrap_or_else(|| Value::from(raw.clone()))
                } else {
                    Value::from(raw)
                };
                Some(EnvVar { name, path, value })
            })
            .collect();
        vars.sort_by(|a, b| a.name.cmp(&b.name));
        vars
    }
}

impl Provider for EnvVar {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("environment variable {}", self.name))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict = figment::util::nest(&self.path, self.value.clone())
            .into_dict()
            .ok_or_else(|| figment::Error::from(format!("{}: not a key", self.name)))?;
        Ok(Map::from([(Profile::Default, dict)]))
    }
}

/// Reports a TOML syntax error by line, column and (when the line shows it) key. The toml crate's own
/// message quotes the offending line, which is where a secret usually is.
fn check_toml_syntax(path: &Path) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
    let Err(e) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    let at = e.span().map_or(0, |span| span.start).min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let key = key_on_line(&text, line - 1)
        .map(|k| format!(" (`{k}`)"))
        .unwrap_or_default();
    // The message says what the parser expected ("invalid basic string", "duplicate key `x`"), not
    // what it found.
    let message = e.message().lines().collect::<Vec<_>>().join("; ");
    Err(ConfigError(format!(
        "{} line {line}, column {column}{key}: {message}",
        path.display()
    )))
}

/// `section.key` of a `key = …` line (0-based index), when the line and its table header are plain.
fn key_on_line(text: &str, index: usize) -> Option<String> {
    let plain = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    let lines: Vec<&str> = text.lines().collect();
    let (key, _) = lines.get(index)?.split_once('=')?;
    let key = key.trim();
    if !plain(key) {
        return None;
    }
    let table = lines[..index].iter().rev().find_map(|l| {
        let l = l.trim();
        let name = l.strip_prefix('[')?.split(']').next()?.trim_matches(['[', ' ']);
        Some(name)
    });
    match table {
        Some(t) if plain(t) => Some(format!("{t}.{key}")),
        Some(_) => None,
        None => Some(key.to_owned()),
    }
}

/// What went wrong with a value, in words that never include the value: figment's own wording quotes it
/// (`found string "…"`), and it may be a secret pasted into the wrong key.
fn describe(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) => format!("expected {expected}"),
        Kind::InvalidLength(_, expected) => format!("wrong number of items, expected {expected}"),
        Kind::UnknownVariant(_, expected) => format!(
            "unknown value, expected one of {}",
            expected.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ")
        ),
        Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => "number out of range".into(),
        Kind::Unsupported(_) | Kind::UnsupportedKey(..) => "unsupported value".into(),
        // Key names and herald's own value-free messages.
        Kind::Message(_) | Kind::UnknownField(..) | Kind::MissingField(_) | Kind::DuplicateField(_) => kind.to_string(),
    }
}

/// Turns figment's error list into one message per key, without the profile prefix.
fn figment_error(err: figment::Error) -> ConfigError {
    let lines: Vec<String> = err
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            let msg = describe(&e.kind);
            if key.is_empty() {
                format!("{msg}{source}")
            } else {
                format!("`{key}`: {msg}{source}")
            }
        })
        .collect();
    ConfigError(lines.join("; "))
}
