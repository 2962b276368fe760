//! Configuration: the built-in defaults ([`DEFAULTS`]) ← `herald.toml` ← `HERALD_<SECTION>__<KEY>`
//! variables (contract §5), parsed once into the types the rest of herald uses (a [`Locale`], URLs, the
//! webhook key, an E.164 sender, the SMTP target). Anything wrong stops start-up with a message naming the
//! key, never its value.

mod env;
mod error;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Toml};
use lettre::message::Mailbox;
use serde::{Deserialize, Serialize};

pub use env::var_name;
pub use error::{ConfigError, Problem};
pub use values::{
    DurationError, HttpUrl, HttpUrlError, HumanDuration, Rate, RateError, Secret, SmtpUrl, Text, WebhookKey,
    WebhookKeyError,
};

use crate::job::{Channel, Locale, PhoneNumber};
use crate::providers::smtp::Target;
use values::{blank_is_none, text};

/// Every key with its default value: the base layer of [`Config::load`] and the whole of
/// [`Config::default`].
pub const DEFAULTS: &str = include_str!("config/defaults.toml");

/// herald's configuration. Its `Serialize` writes every value back as the text an operator writes, secrets
/// included: it exists for [`Config::to_env`].
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
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

impl Default for Config {
    /// [`DEFAULTS`] alone (a test keeps them loadable).
    fn default() -> Self {
        toml::from_str(DEFAULTS).expect("the built-in defaults load")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Quorum,
    Classic,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
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

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub token: Secret,
    /// Who the token stands for in audit events (the token itself is never shown).
    pub token_name: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TemplatesConfig {
    pub dir: PathBuf,
    #[serde(with = "text")]
    pub default_locale: Locale,
    /// Names of job `vars` the templates print as `{{name}}`: checked without a warning, and empty for a
    /// job that does not carry them.
    pub vars: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelsConfig {
    pub sms: Option<Vec<ProviderKind>>,
    pub voice: Option<Vec<ProviderKind>>,
    pub email: Option<Vec<ProviderKind>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    pub account_sid: String,
    pub auth_token: Secret,
    /// E.164 sender; `""` = unset.
    #[serde(with = "blank_is_none", default)]
    pub from: Option<PhoneNumber>,
    pub messaging_service_sid: String,
    #[serde(with = "text")]
    pub base_url: reqwest::Url,
    /// herald's public URL of `POST /providers/twilio/status` (contract §13): sent as `StatusCallback`
    /// with every message and call, and the URL Twilio's signatures are checked against. `""` = unset:
    /// no receipts.
    #[serde(with = "blank_is_none", default)]
    pub status_callback_url: Option<HttpUrl>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// `None` = not configured ([`SmtpConfig::target`] is `smtp://127.0.0.1:25` if a chain names smtp
    /// anyway). Unlike the `""`-is-unset keys, an empty `smtp.url` is an error.
    #[serde(default)]
    pub url: Option<SmtpUrl>,
    #[serde(with = "text")]
    pub from: Mailbox,
}

impl SmtpConfig {
    /// Where the smtp provider connects: `smtp.url`, else `smtp://127.0.0.1:25`.
    pub fn target(&self) -> Target {
        self.url.as_ref().map_or_else(Target::local, |url| url.target().clone())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `""` = unset.
    #[serde(with = "blank_is_none", default)]
    pub url: Option<HttpUrl>,
    /// `""` = unset.
    #[serde(with = "blank_is_none", default)]
    pub secret: Option<WebhookKey>,
}

impl WebhookConfig {
    /// Where and with which key a chain that uses webhook delivers: both keys are required then.
    /// `chain` names that chain's key (`channels.sms`).
    pub fn endpoint(&self, chain: &str) -> Result<(&HttpUrl, &WebhookKey), ConfigError> {
        let url = self.url.as_ref().ok_or_else(|| {
            ConfigError::key(
                "webhook.url",
                format!("required because {chain} uses webhook: an http(s) URL"),
            )
        })?;
        let key = self.secret.as_ref().ok_or_else(|| {
            ConfigError::key(
                "webhook.secret",
                format!("required because {chain} uses webhook: a Standard Webhooks secret, whsec_…"),
            )
        })?;
        Ok((url, key))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: Secret,
}

/// Each limit is `None` when written `""` (no limit).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    #[serde(with = "blank_is_none")]
    pub user_phone: Option<Rate>,
    #[serde(with = "blank_is_none")]
    pub user_voice: Option<Rate>,
    #[serde(with = "blank_is_none")]
    pub user_email: Option<Rate>,
    #[serde(with = "blank_is_none")]
    pub ip: Option<Rate>,
    #[serde(with = "blank_is_none")]
    pub recipient: Option<Rate>,
    #[serde(with = "blank_is_none")]
    pub prefix: Option<Rate>,
    pub prefix_digits: u8,
    /// The per-IP limit keys an IPv6 address by its first `ipv6_prefix` bits: one host gets a whole /64.
    pub ipv6_prefix: u8,
    #[serde(with = "blank_is_none")]
    pub global_phone: Option<Rate>,
    pub countries_allow: Vec<u16>,
    pub countries_deny: Vec<u16>,
}

impl Default for ThrottleConfig {
    /// `[throttle]` of [`DEFAULTS`].
    fn default() -> Self {
        Config::default().throttle
    }
}

impl ThrottleConfig {
    /// Every limit off, country lists and `prefix_digits` as by default: what tests and the bench start from.
    pub fn unlimited() -> ThrottleConfig {
        ThrottleConfig {
            user_phone: None,
            user_voice: None,
            user_email: None,
            ip: None,
            recipient: None,
            prefix: None,
            global_phone: None,
            ..ThrottleConfig::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    pub schedule: Vec<HumanDuration>,
    pub provider_timeout: HumanDuration,
}

impl Config {
    /// Loads [`DEFAULTS`] ← `path` (when given) ← `HERALD_*` environment, then validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_from(path, std::env::vars())
    }

    /// [`Config::load`] with `vars` in place of the process environment (only `HERALD_*` ones count).
    pub fn load_from(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::NoFile(path.to_owned()));
            }
            error::check_toml_syntax(path)?;
            figment = figment.merge(Toml::file_exact(path));
        }
        for var in env::EnvVar::all(vars) {
            figment = figment.merge(var);
        }
        // Lossy: environment values are text, so "512" must be able to become a number.
        let config: Config = figment.extract_lossy()?;
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
        if self.retry.provider_timeout.0.is_zero() {
            return Err(ConfigError::key("retry.provider_timeout", "must be greater than zero"));
        }
        if !(1..=15).contains(&self.throttle.prefix_digits) {
            return Err(ConfigError::key("throttle.prefix_digits", "must be between 1 and 15"));
        }
        if !(1..=128).contains(&self.throttle.ipv6_prefix) {
            return Err(ConfigError::key("throttle.ipv6_prefix", "must be between 1 and 128"));
        }
        // Callbacks are signed with the auth token: with none, anyone could sign them.
        if self.twilio.status_callback_url.is_some() && self.twilio.auth_token.is_empty() {
            return Err(ConfigError::key(
                "twilio.auth_token",
                "required because twilio.status_callback_url is set (Twilio signs status callbacks with it)",
            ));
        }
        for channel in Channel::ALL {
            let key = chain_key(channel);
            let kinds = self.chain(channel);
            if kinds.is_empty() {
                return Err(ConfigError::key(&key, "needs at least one provider"));
            }
            for kind in kinds {
                self.check_provider(&key, channel, kind)?;
            }
        }
        Ok(())
    }

    fn check_provider(&self, key: &str, channel: Channel, kind: ProviderKind) -> Result<(), ConfigError> {
        match kind {
            ProviderKind::Outbox => Ok(()),
            ProviderKind::Twilio => {
                if channel == Channel::Email {
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
                if channel == Channel::Voice && self.twilio.from.is_none() {
                    return Err(ConfigError::key(
                        "twilio.from",
                        "required for voice calls through twilio",
                    ));
                }
                if channel == Channel::Sms && self.twilio.from.is_none() && self.twilio.messaging_service_sid.is_empty()
                {
                    return Err(ConfigError::key(
                        "twilio.from",
                        "twilio SMS needs `twilio.from` or `twilio.messaging_service_sid`",
                    ));
                }
                Ok(())
            }
            ProviderKind::Smtp if channel != Channel::Email => Err(ConfigError::key(key, "smtp delivers email only")),
            ProviderKind::Smtp => Ok(()),
            ProviderKind::Webhook => self.webhook.endpoint(key).map(|_| ()),
        }
    }

    /// The provider chain of a channel, with the defaults of [`ChannelsConfig`] applied.
    pub fn chain(&self, channel: Channel) -> Vec<ProviderKind> {
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

/// `channels.sms`: the key of a channel's provider chain.
pub fn chain_key(channel: Channel) -> String {
    format!("channels.{}", channel.as_str())
}

#[cfg(test)]
mod tests;
