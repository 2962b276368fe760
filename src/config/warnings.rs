//! What a configuration may hold but an operator of a public-facing gateway should hear about at start-up
//! (short keys, every interface, clear-text URLs), and the admin tokens that are never right. Each warning
//! names its key, never its value (docs/operations.md, "Start-up warnings").

use std::net::IpAddr;

use super::{Config, ConfigError, HttpUrl, ProviderKind, Secret};

/// Placeholders that herald's own files once shipped, and the words a token is first set to: published, so
/// never a secret. Compared without regard to case.
pub const KNOWN_ADMIN_TOKENS: &[&str] = &[
    "change-me-admin-token",
    "change-me",
    "changeme",
    "admin",
    "password",
    "secret",
    "token",
];

/// Shorter keys and tokens get a warning: 16 random bytes (128 bits) are out of reach of guessing.
pub const MIN_KEY_BYTES: usize = 16;

/// One start-up warning: the key it is about and what is wrong, without the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub key: String,
    pub message: String,
}

impl Warning {
    fn new(key: &str, message: impl Into<String>) -> Warning {
        Warning {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// `admin.token`, when set: refused if it can never be right (whitespace only, whitespace around it,
/// which a presented token is trimmed of, or a published placeholder).
pub(super) fn check_admin_token(token: &Secret) -> Result<(), ConfigError> {
    let text = token.expose();
    if text.is_empty() {
        return Ok(());
    }
    if text.trim().is_empty() {
        return Err(ConfigError::key(
            "admin.token",
            "is only whitespace: set a random token (e.g. `openssl rand -hex 32`) or leave it empty to disable the admin API",
        ));
    }
    if text.trim() != text {
        return Err(ConfigError::key(
            "admin.token",
            "starts or ends with whitespace, which no bearer token can carry: remove it",
        ));
    }
    if KNOWN_ADMIN_TOKENS.iter().any(|known| known.eq_ignore_ascii_case(text)) {
        return Err(ConfigError::key(
            "admin.token",
            "is a published placeholder, so anyone can use it: set a random token (e.g. `openssl rand -hex 32`)",
        ));
    }
    Ok(())
}

/// Loopback hosts: a clear-text URL to one never leaves the machine.
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        None => false,
    }
}

fn clear_text(url: &url::Url) -> bool {
    url.scheme() == "http" && !is_loopback(url)
}

impl Config {
    /// Everything start-up warns about, one entry per key.
    pub fn warnings(&self) -> Vec<Warning> {
        let mut warnings = Vec::new();
        let token = self.admin.token.expose();
        if !token.is_empty() && token.chars().count() < MIN_KEY_BYTES {
            warnings.push(Warning::new(
                "admin.token",
                format!(
                    "is shorter than {MIN_KEY_BYTES} characters: a short token can be guessed; use a random one \
                     (e.g. `openssl rand -hex 32`)"
                ),
            ));
        }
        for (key, secret) in [
            ("webhook.secret", &self.webhook.secret),
            ("webhook.status_secret", &self.webhook.status_secret),
        ] {
            if secret.as_ref().is_some_and(|k| k.as_bytes().len() < MIN_KEY_BYTES) {
                warnings.push(Warning::new(
                    key,
                    format!(
                        "is shorter than {MIN_KEY_BYTES} bytes: a short key can be guessed; Standard Webhooks \
                         secrets are 24 to 64 random bytes"
                    ),
                ));
            }
        }
        if self.webhook.status_accepts_secret && self.webhook.secret.is_some() {
            warnings.push(Warning::new(
                "webhook.status_accepts_secret",
                "is on: status callbacks signed with webhook.secret, the key herald signs its own requests with, \
                 are taken too (the older form); switch the receiver to the status key and turn it off",
            ));
        }
        let ip = self.http.addr.ip();
        if ip.is_unspecified() {
            let every = match ip {
                IpAddr::V4(_) => "every IPv4 interface",
                IpAddr::V6(_) => "every interface",
            };
            warnings.push(Warning::new(
                "http.addr",
                format!(
                    "listens on {every}: /metrics and /admin are reachable from every network that reaches this \
                     host; publish only /providers/*/status (docs/operations.md)"
                ),
            ));
        }
        // Base URLs of the providers a chain uses, then the callback URLs herald hands out.
        let used: std::collections::BTreeSet<ProviderKind> =
            self.chains().into_iter().flat_map(|(_, _, kinds)| kinds).collect();
        let http_url = |url: &Option<HttpUrl>| url.as_ref().map(|u| u.as_url().clone());
        let urls: [(&str, ProviderKind, Option<url::Url>); 7] = [
            (
                "twilio.base_url",
                ProviderKind::Twilio,
                Some(self.twilio.base_url.clone()),
            ),
            (
                "vonage.base_url",
                ProviderKind::Vonage,
                Some(self.vonage.base_url.as_url().clone()),
            ),
            (
                "plivo.base_url",
                ProviderKind::Plivo,
                Some(self.plivo.base_url.as_url().clone()),
            ),
            (
                "infobip.base_url",
                ProviderKind::Infobip,
                http_url(&self.infobip.base_url),
            ),
            ("sns.base_url", ProviderKind::Sns, http_url(&self.sns.base_url)),
            (
                "meta.base_url",
                ProviderKind::Meta,
                Some(self.meta.base_url.as_url().clone()),
            ),
            ("webhook.url", ProviderKind::Webhook, http_url(&self.webhook.url)),
        ];
        for (key, kind, url) in urls {
            if used.contains(&kind) && url.as_ref().is_some_and(clear_text) {
                warnings.push(Warning::new(
                    key,
                    "is http://: codes and credentials cross the network in clear text; use https://",
                ));
            }
        }
        if http_url(&self.twilio.status_callback_url)
            .as_ref()
            .is_some_and(clear_text)
        {
            warnings.push(Warning::new(
                "twilio.status_callback_url",
                "is http://: status callbacks and their signatures cross the network in clear text, where they \
                 can be read and replayed; use https://",
            ));
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(config: &Config) -> Vec<String> {
        config.warnings().into_iter().map(|w| w.key).collect()
    }

    #[test]
    fn the_defaults_warn_about_nothing() {
        assert_eq!(keys(&Config::default()), Vec::<String>::new());
    }

    #[test]
    fn weak_settings_are_named_by_key_never_by_value() {
        let mut c = Config::default();
        c.admin.token = Secret::new("x");
        c.webhook.secret = Some("whsec_eA==".parse().unwrap());
        c.webhook.url = Some("http://hooks.example.test/send".parse().unwrap());
        c.channels.sms = Some(vec![ProviderKind::Webhook]);
        c.http.addr = "0.0.0.0:8080".parse().unwrap();
        c.twilio.status_callback_url = Some("http://herald.example.test/providers/twilio/status".parse().unwrap());
        // Not used by a chain: its base URL does not matter.
        c.vonage.base_url = "http://vonage.example.test".parse().unwrap();
        let warnings = c.warnings();
        assert_eq!(
            keys(&c),
            [
                "admin.token",
                "webhook.secret",
                "http.addr",
                "webhook.url",
                "twilio.status_callback_url"
            ]
        );
        for w in &warnings {
            assert!(!w.message.contains("hooks.example.test"), "{w:?}");
            assert!(!w.message.contains("herald.example.test"), "{w:?}");
        }
        c.http.addr = "[::]:8080".parse().unwrap();
        assert!(keys(&c).contains(&"http.addr".to_owned()));
    }

    #[test]
    fn clear_text_to_this_machine_is_no_warning() {
        for url in [
            "http://127.0.0.1:9000/",
            "http://[::1]:9000/",
            "http://localhost:9000/",
            "http://api.localhost/",
        ] {
            assert!(!clear_text(&url.parse().unwrap()), "{url}");
        }
        for url in [
            "http://10.0.0.5/",
            "http://api.example.test/",
            "http://127.example.test/",
        ] {
            assert!(clear_text(&url.parse().unwrap()), "{url}");
        }
        assert!(!clear_text(&"https://api.example.test/".parse().unwrap()));
    }

    #[test]
    fn admin_tokens_that_are_never_right_are_refused() {
        for token in [
            " ",
            "\t \n",
            " padded-token-0123456789",
            "change-me-admin-token",
            "CHANGE-ME",
        ] {
            let err = check_admin_token(&Secret::new(token)).unwrap_err().to_string();
            assert!(err.contains("admin.token"), "{err}");
            if !token.trim().is_empty() {
                assert!(!err.contains(token.trim()), "{err}");
            }
        }
        for token in ["", "0123456789abcdef0123456789abcdef", "x"] {
            assert!(check_admin_token(&Secret::new(token)).is_ok(), "{token:?}");
        }
    }
}
