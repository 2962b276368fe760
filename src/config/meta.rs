//! `[meta]`: the WhatsApp Cloud API (docs/providers/meta.md).

use serde::{Deserialize, Serialize};

use super::values::{HttpUrl, Secret, text};

/// WhatsApp Cloud API: `POST {base_url}/{api_version}/{phone_number_id}/messages` with the approved
/// authentication template `template`, in one of `template_languages`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetaConfig {
    /// The business phone number's id (WhatsApp Manager), not the number.
    pub phone_number_id: String,
    /// A system user's access token with `whatsapp_business_messaging`.
    pub access_token: Secret,
    /// The app's secret: Meta signs its webhooks with it (`X-Hub-Signature-256`). `""` = no receipts.
    pub app_secret: Secret,
    /// The name of the approved template of the authentication category.
    pub template: String,
    /// The languages the template is approved in, as Meta writes them (`en_US`, `pt_BR`, `es`).
    pub template_languages: Vec<MetaLanguage>,
    /// The Graph API version of the path (`v23.0`).
    #[serde(with = "text")]
    pub api_version: ApiVersion,
    pub base_url: HttpUrl,
    /// What Meta's subscription handshake must present as `hub.verify_token`. `""` = handshake refused.
    pub status_callback_verify_token: Secret,
}

/// A language code of Meta's template list: a language (`en`, `fil`), optionally `_` and a region or a
/// script (`en_US`, `pt_BR`, `zh_HK`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct MetaLanguage(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("every entry must be a language code as Meta lists it: `en`, `pt_BR`, `es_AR`")]
pub struct NotAMetaLanguage;

impl MetaLanguage {
    pub fn parse(s: &str) -> Result<MetaLanguage, NotAMetaLanguage> {
        let (language, rest) = s.split_once('_').map_or((s, None), |(l, r)| (l, Some(r)));
        let language_ok = (2..=3).contains(&language.len()) && language.bytes().all(|b| b.is_ascii_lowercase());
        let rest_ok = rest.is_none_or(|r| {
            (r.len() == 2 && r.bytes().all(|b| b.is_ascii_uppercase()))
                || (r.len() == 4 && r.bytes().all(|b| b.is_ascii_alphabetic()))
        });
        if language_ok && rest_ok {
            Ok(MetaLanguage(s.to_owned()))
        } else {
            Err(NotAMetaLanguage)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The language alone: `pt` of `pt_BR`.
    pub fn language(&self) -> &str {
        self.0.split('_').next().unwrap_or(&self.0)
    }
}

impl<'de> Deserialize<'de> for MetaLanguage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        MetaLanguage::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A Graph API version, `v` and `major.minor` (`v23.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiVersion(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be a Graph API version like \"v23.0\"")]
pub struct NotAnApiVersion;

impl ApiVersion {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl super::Text for ApiVersion {
    type Err = NotAnApiVersion;
    fn parse_text(text: &str) -> Result<Self, NotAnApiVersion> {
        let digits = |s: &str| (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
        match text.strip_prefix('v').and_then(|v| v.split_once('.')) {
            Some((major, minor)) if digits(major) && digits(minor) => Ok(ApiVersion(text.to_owned())),
            _ => Err(NotAnApiVersion),
        }
    }
    fn to_text(&self) -> String {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiVersion, Config, ProviderKind, Text};
    use crate::job::{Channel, PhoneNumber};

    #[test]
    fn languages_and_versions_have_metas_shape() {
        for ok in ["en", "en_US", "pt_BR", "es", "fil", "zh_HK", "sr_Latn"] {
            assert_eq!(MetaLanguage::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "EN", "en-US", "en_us", "english", "pt_", "e"] {
            assert!(MetaLanguage::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(MetaLanguage::parse("pt_BR").unwrap().language(), "pt");
        assert!(ApiVersion::parse_text("v23.0").is_ok());
        for bad in ["23.0", "v23", "v.0", "v23.x", "latest"] {
            assert!(ApiVersion::parse_text(bad).is_err(), "{bad}");
        }
    }
    /// A whatsapp chain takes only providers that send WhatsApp templates (and the outbox); without one, the
    /// channel uses the outbox (docs/providers/meta.md).
    #[test]
    fn whatsapp_chains_take_only_whatsapp_providers_and_default_to_the_outbox() {
        let config = Config::load_from(None, Vec::<(String, String)>::new()).unwrap();
        assert_eq!(config.chain(Channel::Whatsapp), [ProviderKind::Outbox]);
        for provider in ["smtp", "vonage", "plivo", "sns", "infobip", "webhook"] {
            for (var, key) in [
                ("HERALD_CHANNELS__WHATSAPP", "channels.whatsapp"),
                ("HERALD_ROUTING__WHATSAPP", "routing.whatsapp.44"),
            ] {
                let value = if var.starts_with("HERALD_ROUTING") {
                    format!(r#"{{"44" = ["{provider}"]}}"#)
                } else {
                    format!(r#"["{provider}"]"#)
                };
                let err = Config::load_from(None, [(var.to_owned(), value)])
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.contains(&format!("`{key}`: {provider} does not deliver whatsapp")),
                    "{var}: {err}"
                );
            }
        }
        let routed = Config::load_from(
            None,
            [(
                "HERALD_ROUTING__WHATSAPP".to_owned(),
                r#"{"44" = ["outbox"]}"#.to_owned(),
            )],
        )
        .unwrap();
        assert!(routed.routing.routes(Channel::Whatsapp).unwrap().len() == 1);
    }

    /// `[meta]` and Twilio's WhatsApp keys through `to_env` and back; a Meta-shaped language list from the
    /// environment.
    #[test]
    fn meta_and_twilio_whatsapp_keys_round_trip_through_the_environment() {
        let mut config = Config::default();
        config.meta.phone_number_id = "106540352242922".into();
        config.meta.access_token = Secret::new("EAAJB-token");
        config.meta.app_secret = Secret::new("app-secret");
        config.meta.template = "acme_auth".into();
        config.meta.template_languages = ["en_US", "pt_BR", "es"].map(|l| MetaLanguage::parse(l).unwrap()).into();
        config.meta.api_version = ApiVersion::parse_text("v21.0").unwrap();
        config.meta.status_callback_verify_token = Secret::new("verify");
        config.twilio.whatsapp_from = Some(PhoneNumber::parse("+15005550007").unwrap());
        config.twilio.whatsapp_content_sid = "HX0123456789abcdef0123456789abcdef".into();
        config.channels.whatsapp = Some(vec![ProviderKind::Meta]);
        let env = config.to_env().unwrap();
        assert_eq!(Config::load_from(None, env).unwrap(), config);
        let err = Config::load_from(None, [("HERALD_META__API_VERSION".to_owned(), "latest".to_owned())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("meta.api_version"), "{err}");
    }
}
