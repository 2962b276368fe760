//! Configuration: the built-in defaults ([`DEFAULTS`]) ← `herald.toml` ← `HERALD_<SECTION>__<KEY>`
//! variables (docs/configuration.md), parsed once into the types the rest of herald uses (a [`Locale`], URLs, the
//! webhook key, an E.164 sender, the SMTP target). Anything wrong stops start-up with a message naming the
//! key, never its value.

mod env;
mod error;
mod meta;
pub mod smtp;
mod values;
mod warnings;
pub mod workflows;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use lettre::message::Mailbox;
use serde::{Deserialize, Serialize};

pub use env::var_name;
pub use error::{ConfigError, Problem};
pub use meta::{ApiVersion, MetaConfig, MetaLanguage, NotAMetaLanguage, NotAnApiVersion};
pub use values::{
    AmqpUrl, AmqpUrlError, DurationError, HttpUrl, HttpUrlError, HumanDuration, ProviderKind, Rate, RateError,
    RetrySchedule, Secret, SmtpUrl, Text, WebhookKey, WebhookKeyError,
};
pub use warnings::{KNOWN_ADMIN_TOKENS, Warning};

use crate::destinations::Destination;
use crate::job::{Channel, Locale, PhoneNumber};
use smtp::Target;
use values::{blank_is_none, text};

/// Every key with its default value: the base layer of [`Config::load`] and the whole of
/// [`Config::default`].
pub const DEFAULTS: &str = include_str!("config/defaults.toml");
/// The most consuming channels `amqp.channels` may ask for. When herald dies, the quorum queue can hand
/// a job in flight on one of its channels to another of them before it sees that one die too, and each
/// return counts in `x-delivery-count`: a crash counts up to once per channel. herald makes a provider
/// call only while at most `delivery_limit - 2` earlier deliveries are counted (its own rule,
/// `decision::before_delivery`), and the queue dead-letters a job only once its count is above
/// `delivery_limit`. So with two channels a crash leaves a poison job within the limit, for herald to
/// dead-letter with its event (docs/guarantees.md "Poison"); with three, the queue could dead-letter it first, without
/// one.
pub const MAX_CHANNELS: u16 = 2;

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
    /// Chains by destination country; empty by default.
    #[serde(default)]
    pub routing: RoutingConfig,
    pub twilio: TwilioConfig,
    pub vonage: VonageConfig,
    pub plivo: PlivoConfig,
    pub infobip: InfobipConfig,
    pub sns: SnsConfig,
    /// WhatsApp Cloud API (docs/providers/meta.md).
    pub meta: MetaConfig,
    pub smtp: SmtpConfig,
    pub webhook: WebhookConfig,
    pub outbox: OutboxConfig,
    pub redis: RedisConfig,
    pub throttle: ThrottleConfig,
    pub fraud: FraudConfig,
    pub retry: RetryConfig,
    /// Channels tried in turn for a job that names one (docs/workflows.md); none by default.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workflows: workflows::Workflows,
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
    /// May carry a password: `Debug` hides it.
    pub url: AmqpUrl,
    /// Jobs in flight at most: 0 would be AMQP's "no limit", so it is refused.
    #[serde(deserialize_with = "values::at_least_one")]
    pub prefetch: NonZeroU16,
    /// Transactional channels consuming `jobs_queue`, each with its share of `prefetch`.
    pub channels: u16,
    pub queue_type: QueueType,
    pub delivery_limit: u32,
    pub jobs_queue: String,
    pub retry_queue: String,
    pub dead_queue: String,
    pub events_exchange: String,
    /// Verification feedback from the MFA server (docs/fraud-and-limits.md "Adaptive guard").
    pub feedback_queue: String,
}

impl AmqpConfig {
    /// The delay queue of each retry wait, `{retry_queue}.{wait}` (`herald.retry.30s`), shortest first. One
    /// queue per wait because a queue releases expired messages only from its head: in one shared queue a
    /// retry due in 1 s waited behind one due in 10 minutes.
    pub fn delay_queues(&self, schedule: &RetrySchedule) -> Vec<(Duration, String)> {
        let mut waits: Vec<Duration> = schedule.waits().iter().copied().filter(|w| !w.is_zero()).collect();
        waits.sort_unstable();
        waits.dedup();
        waits
            .into_iter()
            .map(|w| (w, format!("{}.{}", self.retry_queue, wait_name(w))))
            .collect()
    }

    /// A new commit-marker queue's name for a process consuming `jobs_queue`: unique per process (a ULID).
    pub fn marker_queue(&self) -> String {
        format!(
            "{}.commits.{}",
            self.jobs_queue,
            ulid::Ulid::generate().to_string().to_ascii_lowercase()
        )
    }
}

/// `1s`, `2m`, `1h`, `1500ms`: the largest unit that says the wait exactly.
fn wait_name(wait: Duration) -> String {
    let ms = wait.as_millis();
    match ms {
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
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
    /// Open connections at most; lowered at start-up to what the descriptor limit leaves after the broker's
    /// and the providers' share (docs/operations.md, "HTTP limits").
    pub max_connections: usize,
    /// From a connection's accept to the last byte of its request (head and body): a slower one gets 408.
    #[serde(with = "text")]
    pub request_timeout: HumanDuration,
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

/// Provider chain per channel. `None` means "not configured": sms and voice then use twilio when its
/// credentials are set, email uses smtp when `[smtp] url` is set, and everything else falls back to outbox.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelsConfig {
    pub sms: Option<Vec<ProviderKind>>,
    pub voice: Option<Vec<ProviderKind>>,
    pub email: Option<Vec<ProviderKind>>,
    /// WhatsApp authentication messages (docs/providers/meta.md): `meta`, `twilio` or both as a chain.
    pub whatsapp: Option<Vec<ProviderKind>>,
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
    pub base_url: url::Url,
    /// herald's public URL of `POST /providers/twilio/status` (docs/receipts.md): sent as `StatusCallback`
    /// with every message and call, and the URL Twilio's signatures are checked against. `""` = unset:
    /// no receipts.
    #[serde(with = "blank_is_none", default)]
    pub status_callback_url: Option<HttpUrl>,
    /// The WhatsApp sender (E.164, registered with Twilio), sent as `From=whatsapp:…`; `""` = unset.
    #[serde(with = "blank_is_none", default)]
    pub whatsapp_from: Option<PhoneNumber>,
    /// The Content SID (`HX…`) of the approved WhatsApp authentication template; `""` = unset.
    #[serde(default)]
    pub whatsapp_content_sid: String,
}

/// `[routing.sms]` / `[routing.voice]`: a destination (calling code `"44"`, longer prefix `"1876"` or region
/// `"JM"`) → the provider chain for numbers in it, the most specific key winning (docs/providers/README.md). A phone
/// job no key names uses `[channels]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "unique_destinations"
    )]
    pub sms: BTreeMap<Destination, Vec<ProviderKind>>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "unique_destinations"
    )]
    pub voice: BTreeMap<Destination, Vec<ProviderKind>>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "unique_destinations"
    )]
    pub whatsapp: BTreeMap<Destination, Vec<ProviderKind>>,
}

/// A routing table whose keys name each destination once: `JM` and `jm` (or `"44"` and `44`) are one
/// destination, and keeping one chain of the two silently would drop the other.
fn unique_destinations<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<Destination, Vec<ProviderKind>>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = BTreeMap<Destination, Vec<ProviderKind>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a table of destinations (like \"44\", \"1876\" or \"JM\") to provider chains")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut routes = BTreeMap::new();
            while let Some((key, chain)) = map.next_entry::<Destination, Vec<ProviderKind>>()? {
                let named = key.to_string();
                if routes.insert(key, chain).is_some() {
                    return Err(serde::de::Error::custom(format!(
                        "two keys name the destination {named}: give it one chain"
                    )));
                }
            }
            Ok(routes)
        }
    }
    d.deserialize_map(Visitor)
}

impl RoutingConfig {
    /// The routes of a channel (email has none: an address has no country).
    pub fn routes(&self, channel: Channel) -> Option<&BTreeMap<Destination, Vec<ProviderKind>>> {
        match channel {
            Channel::Sms => Some(&self.sms),
            Channel::Voice => Some(&self.voice),
            Channel::Whatsapp => Some(&self.whatsapp),
            Channel::Email => None,
        }
    }
}

/// Vonage SMS API (`POST {base_url}/sms/json`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VonageConfig {
    pub api_key: String,
    pub api_secret: Secret,
    /// Sender: a number (E.164) or an alphanumeric sender id where the country allows one.
    pub from: String,
    pub base_url: HttpUrl,
    /// herald's public URL of `/providers/vonage/status` (docs/receipts.md "Vonage, Plivo and Infobip"): sent as
    /// `callback` with `status-report-req=1` on every message. `""` = unset: no receipts.
    #[serde(with = "blank_is_none", default)]
    pub status_callback_url: Option<HttpUrl>,
    /// The account's signature secret: delivery receipts are taken only signed with it.
    #[serde(default)]
    pub signature_secret: Secret,
    /// The signature method set for the account in Vonage's dashboard.
    #[serde(default)]
    pub signature_method: VonageSignatureMethod,
}

/// How Vonage signs its requests (https://developer.vonage.com/en/getting-started/concepts/signing-messages):
/// the MD5 hash of the parameters followed by the secret, or an HMAC keyed with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VonageSignatureMethod {
    /// `md5(&k=v…` + secret`)`, Vonage's default.
    #[default]
    Md5hash,
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

/// Plivo Messages API (`POST {base_url}/v1/Account/{auth_id}/Message/`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlivoConfig {
    pub auth_id: String,
    pub auth_token: Secret,
    /// Sender: a Plivo number (E.164) or an alphanumeric sender id.
    pub from: String,
    pub base_url: HttpUrl,
    /// herald's public URL of `/providers/plivo/status` (docs/receipts.md "Vonage, Plivo and Infobip"): sent as `url`
    /// (with `method=POST`) on every message, and the URL Plivo's V3 signatures are checked against. `""` = unset.
    #[serde(with = "blank_is_none", default)]
    pub status_callback_url: Option<HttpUrl>,
}

/// Infobip SMS and text-to-speech voice. Each Infobip account has its own base URL
/// (`https://xxxxx.api.infobip.com`), so there is no default.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InfobipConfig {
    pub api_key: Secret,
    /// Sender: a number or an alphanumeric sender id (SMS); a number for voice.
    pub from: String,
    /// `""` = unset (required once a chain uses infobip).
    #[serde(with = "blank_is_none", default)]
    pub base_url: Option<HttpUrl>,
    /// herald's public URL of `/providers/infobip/status` (docs/receipts.md "Vonage, Plivo and Infobip"): sent as
    /// `notifyUrl`, with `token=<status_token>` added to its query, on every message. `""` = unset: no receipts.
    #[serde(with = "blank_is_none", default)]
    pub status_callback_url: Option<HttpUrl>,
    /// Infobip does not sign its reports: a report is taken only when its URL carries this token back.
    #[serde(default)]
    pub status_token: Secret,
}

impl InfobipConfig {
    /// The query parameter of `notifyUrl` that carries `status_token`.
    pub const TOKEN_PARAM: &str = "token";

    /// `notifyUrl`: `status_callback_url` with `status_token` added to its query as [`Self::TOKEN_PARAM`].
    pub fn notify_url(&self) -> Option<String> {
        let mut url = self.status_callback_url.as_ref()?.as_url().clone();
        url.query_pairs_mut()
            .append_pair(Self::TOKEN_PARAM, self.status_token.expose());
        Some(url.to_string())
    }
}

/// Amazon SNS `Publish` to a phone number. At load, an empty `region` is taken from `AWS_REGION` (else
/// `AWS_DEFAULT_REGION`), and when `access_key_id` and `secret_access_key` are both empty, they and
/// `session_token` come from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`: herald's own
/// keys win.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnsConfig {
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    /// For temporary credentials (STS); `""` = none.
    pub session_token: Secret,
    /// `AWS.SNS.SMS.SenderID`; `""` = none.
    pub sender_id: String,
    /// `""` = `https://sns.{region}.amazonaws.com`.
    #[serde(with = "blank_is_none", default)]
    pub base_url: Option<HttpUrl>,
}

impl SnsConfig {
    /// Fills the empty credential keys from the standard `AWS_*` variables among `vars`.
    fn fill_from_aws_env(&mut self, vars: &[(String, String)]) {
        let var = |name: &str| {
            vars.iter()
                .find(|(k, v)| k == name && !v.is_empty())
                .map(|(_, v)| v.clone())
        };
        if self.region.is_empty() {
            self.region = var("AWS_REGION")
                .or_else(|| var("AWS_DEFAULT_REGION"))
                .unwrap_or_default();
        }
        if self.access_key_id.is_empty() && self.secret_access_key.is_empty() {
            // Key and secret come as a pair: never one from the file and the other from the environment.
            if let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
                self.access_key_id = id;
                self.secret_access_key = Secret::new(secret);
                self.session_token = Secret::new(var("AWS_SESSION_TOKEN").unwrap_or_default());
            }
        }
    }

    /// `base_url`, else the regional endpoint.
    pub fn endpoint(&self) -> Result<url::Url, url::ParseError> {
        match &self.base_url {
            Some(url) => Ok(url.as_url().clone()),
            None => url::Url::parse(&format!("https://sns.{}.amazonaws.com/", self.region)),
        }
    }
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
    /// The name given in EHLO. `""` = the domain of `from`: the bare host name (`vm`) that lettre
    /// gives by default is scored down by receiving servers.
    #[serde(with = "blank_is_none", default)]
    pub hello_name: Option<smtp::HelloName>,
}

impl SmtpConfig {
    /// The name given in EHLO: `smtp.hello_name`, else the domain of `smtp.from` when it is one (not
    /// an internationalised name), else `None` (lettre's default, the host name).
    pub fn hello(&self) -> Option<smtp::HelloName> {
        self.hello_name
            .clone()
            .or_else(|| smtp::parse_hello_name(self.from.email.domain()).ok())
    }

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
    /// The key of the status callbacks herald takes (`POST /providers/webhook/status`); `""` = derived from
    /// `secret` ([`WebhookKey::status_key`]), so that herald's own signed
    /// requests are never taken as status callbacks.
    #[serde(with = "blank_is_none", default)]
    pub status_secret: Option<WebhookKey>,
    /// Also take status callbacks signed with `secret` itself (the older form, for receivers not yet
    /// updated).
    pub status_accepts_secret: bool,
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

    /// The keys status callbacks may be signed with: `status_secret` (else the key derived from `secret`),
    /// then `secret` itself when `status_accepts_secret` is on. Empty without `secret`: no webhook
    /// messages, no receipts.
    pub fn status_keys(&self) -> Vec<WebhookKey> {
        let Some(secret) = &self.secret else {
            return Vec::new();
        };
        let mut keys = vec![self.status_secret.clone().unwrap_or_else(|| secret.status_key())];
        if self.status_accepts_secret {
            keys.push(secret.clone());
        }
        keys
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
    /// Destinations (calling code, prefix or region) phone jobs may go to; empty = all.
    pub countries_allow: Vec<Destination>,
    /// Destinations refused; the most specific entry of either list decides, deny winning a tie.
    pub countries_deny: Vec<Destination>,
}

/// `[fraud]`: the adaptive toll-fraud guard (docs/fraud-and-limits.md "Adaptive guard"); [`FraudConfig::settings`] is
/// what the guard runs on.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FraudConfig {
    pub mode: FraudMode,
    /// E.164 prefixes (`+1415`) the guard never refuses.
    pub allow_prefixes: Vec<String>,
    /// Destinations (calling code, prefix or region) the guard never refuses.
    pub allow_countries: Vec<Destination>,
    /// Unverified codes each verified code earns a destination.
    pub ratio: f64,
    pub country_hourly_floor: u32,
    pub country_daily_floor: u32,
    pub range_hourly_floor: u32,
    pub range_daily_floor: u32,
    pub ip_daily_floor: u32,
    #[serde(with = "text")]
    pub learning_period: HumanDuration,
    #[serde(with = "text")]
    pub outage_after: HumanDuration,
}

/// `fraud.mode`: whether the guard refuses (`enforce`), only counts what it would refuse (`monitor`), or
/// budgets nothing (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FraudMode {
    Off,
    Monitor,
    Enforce,
}

impl FraudMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FraudMode::Off => "off",
            FraudMode::Monitor => "monitor",
            FraudMode::Enforce => "enforce",
        }
    }
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
    pub schedule: RetrySchedule,
    pub provider_timeout: HumanDuration,
    /// How long a code without `expires_at` is worth delivering (docs/providers/README.md: validity).
    pub validity: HumanDuration,
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
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        for var in env::EnvVar::all(vars.iter().cloned()) {
            figment = figment.merge(var);
        }
        // Lossy: environment values are text, so "512" must be able to become a number.
        let mut config: Config = figment.extract_lossy()?;
        config.sns.fill_from_aws_env(&vars);
        config.validate()?;
        Ok(config)
    }

    /// The waits herald's delay queues are made for: `retry.schedule`'s and every workflow step's, so that
    /// no workflow check waits behind a longer wait (docs/workflows.md).
    pub fn delay_schedule(&self) -> RetrySchedule {
        let steps = self
            .workflows
            .values()
            .flat_map(|w| w.steps.iter().filter_map(|s| s.wait()).map(workflows::hop));
        RetrySchedule::new(self.retry.schedule.waits().iter().copied().chain(steps).collect())
    }

    /// Checks what types alone cannot: cross-key requirements and value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_CHANNELS).contains(&self.amqp.channels) {
            return Err(ConfigError::key(
                "amqp.channels",
                format!("must be between 1 and {MAX_CHANNELS}"),
            ));
        }
        if self.amqp.delivery_limit == 0 {
            return Err(ConfigError::key("amqp.delivery_limit", "must be at least 1"));
        }
        for (key, name) in [
            ("amqp.jobs_queue", &self.amqp.jobs_queue),
            ("amqp.retry_queue", &self.amqp.retry_queue),
            ("amqp.dead_queue", &self.amqp.dead_queue),
            ("amqp.events_exchange", &self.amqp.events_exchange),
            ("amqp.feedback_queue", &self.amqp.feedback_queue),
        ] {
            if name.is_empty() || name.len() > 255 {
                return Err(ConfigError::key(key, "must be 1-255 characters"));
            }
        }
        // The names herald derives from these must fit too: declaring a longer one fails after start-up.
        if self.amqp.marker_queue().len() > 255 {
            return Err(ConfigError::key(
                "amqp.jobs_queue",
                "must leave room for its commit-marker queues (`.commits.` and 26 characters): at most 220 characters",
            ));
        }
        if self
            .amqp
            .delay_queues(&self.delay_schedule())
            .iter()
            .any(|(_, name)| name.len() > 255)
        {
            return Err(ConfigError::key(
                "amqp.retry_queue",
                "with the suffix of each retry.schedule wait (`.30s`, `.1500ms`), its delay queues' names must fit \
                 255 characters",
            ));
        }
        if self.http.max_connections == 0 {
            return Err(ConfigError::key("http.max_connections", "must be at least 1"));
        }
        if self.http.request_timeout.0.is_zero() {
            return Err(ConfigError::key("http.request_timeout", "must be greater than zero"));
        }
        warnings::check_admin_token(&self.admin.token)?;
        if self.retry.provider_timeout.0.is_zero() {
            return Err(ConfigError::key("retry.provider_timeout", "must be greater than zero"));
        }
        if self.retry.validity.0.is_zero() {
            return Err(ConfigError::key("retry.validity", "must be greater than zero"));
        }
        if !(1..=15).contains(&self.throttle.prefix_digits) {
            return Err(ConfigError::key("throttle.prefix_digits", "must be between 1 and 15"));
        }
        if !(1..=128).contains(&self.throttle.ipv6_prefix) {
            return Err(ConfigError::key("throttle.ipv6_prefix", "must be between 1 and 128"));
        }
        // Callbacks are signed with the auth token: with none, anyone could sign them.
        if self.twilio.status_callback_url.is_some() && self.twilio.auth_token.is_blank() {
            return Err(ConfigError::key(
                "twilio.auth_token",
                "required because twilio.status_callback_url is set (Twilio signs status callbacks with it)",
            ));
        }
        // The other providers' reports: without their key, anyone could send them.
        for (set, blank, key, why) in [
            (
                self.vonage.status_callback_url.is_some(),
                self.vonage.signature_secret.is_blank(),
                "vonage.signature_secret",
                "vonage.status_callback_url is set (delivery receipts are taken only signed with it)",
            ),
            (
                self.plivo.status_callback_url.is_some(),
                self.plivo.auth_token.is_blank(),
                "plivo.auth_token",
                "plivo.status_callback_url is set (Plivo signs its callbacks with it)",
            ),
            (
                self.infobip.status_callback_url.is_some(),
                self.infobip.status_token.is_blank(),
                "infobip.status_token",
                "infobip.status_callback_url is set (reports are taken only with it in their URL)",
            ),
        ] {
            if set && blank {
                return Err(ConfigError::key(key, format!("required because {why}")));
            }
        }
        // herald adds its own `token` to the URL: a second one would make every report's token ambiguous,
        // refused forever.
        let token = InfobipConfig::TOKEN_PARAM;
        if let Some(url) = &self.infobip.status_callback_url
            && url.as_url().query_pairs().any(|(name, _)| name == token)
        {
            return Err(ConfigError::key(
                "infobip.status_callback_url",
                format!("must not have a `{token}` query parameter: herald adds infobip.status_token as `{token}`"),
            ));
        }
        if !(self.fraud.ratio.is_finite() && self.fraud.ratio > 0.0) {
            return Err(ConfigError::key("fraud.ratio", "must be a number greater than 0"));
        }
        for p in &self.fraud.allow_prefixes {
            let digits = p.strip_prefix('+').unwrap_or("");
            if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ConfigError::key(
                    "fraud.allow_prefixes",
                    "every entry must be `+` and 1 to 15 digits, like \"+1415\"",
                ));
            }
        }
        for (key, floor) in [
            ("fraud.country_hourly_floor", self.fraud.country_hourly_floor),
            ("fraud.country_daily_floor", self.fraud.country_daily_floor),
            ("fraud.range_hourly_floor", self.fraud.range_hourly_floor),
            ("fraud.range_daily_floor", self.fraud.range_daily_floor),
            ("fraud.ip_daily_floor", self.fraud.ip_daily_floor),
        ] {
            if floor == 0 {
                return Err(ConfigError::key(
                    key,
                    "must be at least 1, or a new user's first code is refused",
                ));
            }
        }
        workflows::check(&self.workflows)?;
        for (key, channel, kinds) in self.chains() {
            if kinds.is_empty() {
                return Err(ConfigError::key(&key, "needs at least one provider"));
            }
            for kind in kinds {
                self.check_provider(&key, channel, kind)?;
            }
        }
        Ok(())
    }

    /// Every provider chain with its key: `channels.<channel>` (defaults applied), then each
    /// `routing.<channel>.<calling code>`.
    pub fn chains(&self) -> Vec<(String, Channel, Vec<ProviderKind>)> {
        let mut chains: Vec<_> = Channel::ALL
            .into_iter()
            .map(|channel| (chain_key(channel), channel, self.chain(channel)))
            .collect();
        for channel in Channel::ALL {
            for (code, chain) in self.routing.routes(channel).into_iter().flatten() {
                chains.push((route_key(channel, code), channel, chain.clone()));
            }
        }
        chains
    }

    fn check_provider(&self, key: &str, channel: Channel, kind: ProviderKind) -> Result<(), ConfigError> {
        if !kind.delivers(channel) {
            return Err(ConfigError::key(
                key,
                format!("{kind} does not deliver {}", channel.as_str()),
            ));
        }
        // `section.key` must be set because the chain at `key` uses the provider.
        let required = |set: bool, what: &str| {
            if set {
                Ok(())
            } else {
                Err(ConfigError::key(
                    &format!("{kind}.{what}"),
                    format!("required because {key} uses {kind}"),
                ))
            }
        };
        match kind {
            ProviderKind::Outbox | ProviderKind::Smtp => Ok(()),
            ProviderKind::Twilio => {
                required(!self.twilio.account_sid.is_empty(), "account_sid")?;
                required(!self.twilio.auth_token.is_blank(), "auth_token")?;
                if channel == Channel::Voice && self.twilio.from.is_none() {
                    return Err(ConfigError::key(
                        "twilio.from",
                        "required for voice calls through twilio",
                    ));
                }
                if channel == Channel::Whatsapp {
                    required(self.twilio.whatsapp_from.is_some(), "whatsapp_from")?;
                    let sid = &self.twilio.whatsapp_content_sid;
                    required(!sid.is_empty(), "whatsapp_content_sid")?;
                    if !(sid.len() == 34 && sid.starts_with("HX") && sid[2..].bytes().all(|b| b.is_ascii_hexdigit())) {
                        return Err(ConfigError::key(
                            "twilio.whatsapp_content_sid",
                            "must be a Content SID: HX and 32 hex digits",
                        ));
                    }
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
            ProviderKind::Webhook => self.webhook.endpoint(key).map(|_| ()),
            ProviderKind::Vonage => {
                required(!self.vonage.api_key.is_empty(), "api_key")?;
                required(!self.vonage.api_secret.is_blank(), "api_secret")?;
                required(!self.vonage.from.is_empty(), "from")
            }
            ProviderKind::Plivo => {
                required(!self.plivo.auth_id.is_empty(), "auth_id")?;
                required(!self.plivo.auth_token.is_blank(), "auth_token")?;
                required(!self.plivo.from.is_empty(), "from")
            }
            ProviderKind::Infobip => {
                required(!self.infobip.api_key.is_blank(), "api_key")?;
                required(!self.infobip.from.is_empty(), "from")?;
                required(self.infobip.base_url.is_some(), "base_url")
            }
            ProviderKind::Meta => {
                required(!self.meta.phone_number_id.is_empty(), "phone_number_id")?;
                required(!self.meta.access_token.is_blank(), "access_token")?;
                required(!self.meta.template.trim().is_empty(), "template")?;
                required(!self.meta.template_languages.is_empty(), "template_languages")
            }
            ProviderKind::Sns => {
                required(!self.sns.region.is_empty(), "region")?;
                required(!self.sns.access_key_id.is_empty(), "access_key_id")?;
                required(!self.sns.secret_access_key.is_blank(), "secret_access_key")?;
                // The region becomes part of the endpoint's host name.
                if !self
                    .sns
                    .region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                {
                    return Err(ConfigError::key("sns.region", "is not an AWS region like `eu-west-1`"));
                }
                self.sns
                    .endpoint()
                    .map(|_| ())
                    .map_err(|_| ConfigError::key("sns.region", "does not form an endpoint URL"))
            }
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
            // Twilio's credentials alone do not make a WhatsApp sender (it needs an approved Content
            // template); Meta's number does.
            Channel::Whatsapp => (
                &self.channels.whatsapp,
                (!self.meta.phone_number_id.is_empty()).then_some(ProviderKind::Meta),
            ),
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

/// `routing.sms.44`, `routing.sms.JM`: the key of a destination's provider chain.
pub fn route_key(channel: Channel, destination: &Destination) -> String {
    format!("routing.{}.{destination}", channel.as_str())
}

#[cfg(test)]
mod tests;
