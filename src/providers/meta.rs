//! WhatsApp Cloud API (docs/providers/meta.md): `POST {base_url}/{api_version}/{phone_number_id}/messages`,
//! `Authorization: Bearer {access_token}`, JSON, sending the approved authentication template `meta.template`
//! with the code as its body parameter and as its copy-code / one-tap button's (`url` sub-type) parameter
//! (<https://developers.facebook.com/docs/whatsapp/business-management-api/authentication-templates>).
//! Failures are classified by Meta's error `code` ([`class_of`]), which becomes `error.provider_code`.
//! Templates have no validity field: herald checks `expires_at` before sending, as for every provider.

use http::StatusCode;
use http::header::{AUTHORIZATION, HeaderValue};
use serde::{Deserialize, Serialize};
use url::Url;

use super::http::{HttpClient, authorization, exchange};
use super::{
    Ambiguous, Class, Provider, ProviderCode, ProviderError, ProviderKind, Receipt, SetupError, Validity, phone_of,
};
use crate::config::{MetaConfig, MetaLanguage};
use crate::job::{Job, Locale};
use crate::privacy::{self, scrub};
use crate::templates::Rendered;

/// The id herald records, publishes and matches receipts by for a message Meta took: a hash of its `wamid`,
/// never the `wamid` itself, which is base64 that spells the recipient's number (Meta's own example
/// `wamid.HBgLMTY1MDM4Nzk0MzkV…` holds 16503879439). The same `wamid` in a status webhook hashes to the
/// same id (docs/providers/meta.md "Message ids").
pub fn message_id(wamid: &str) -> String {
    format!("meta-{}", privacy::hashed(wamid))
}

pub struct Meta {
    client: HttpClient,
    url: Url,
    authorization: HeaderValue,
    template: String,
    languages: Vec<MetaLanguage>,
    default_locale: Locale,
}

/// The send (Cloud API "Send template message"). Field order as Meta's examples write it.
#[derive(Serialize)]
struct Send<'a> {
    messaging_product: &'static str,
    /// The number's digits, without `+`, as Meta's examples write `to`.
    to: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    template: Template<'a>,
}

#[derive(Serialize)]
struct Template<'a> {
    name: &'a str,
    language: Language<'a>,
    components: [Component<'a>; 2],
}

#[derive(Serialize)]
struct Language<'a> {
    code: &'a str,
}

#[derive(Serialize)]
struct Component<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<&'static str>,
    parameters: [Parameter<'a>; 1],
}

#[derive(Serialize)]
struct Parameter<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

/// `{"messaging_product", "contacts": [{"input", "wa_id"}], "messages": [{"id": "wamid.…"}]}`.
#[derive(Deserialize)]
struct Sent {
    messages: Vec<SentMessage>,
}

#[derive(Deserialize)]
struct SentMessage {
    id: String,
}

/// Graph API errors: `{"error": {"message", "type", "code", "error_subcode"?, "error_data": {"details"},
/// "fbtrace_id"}}`.
#[derive(Deserialize)]
struct Failure {
    error: FailureError,
}

#[derive(Deserialize)]
struct FailureError {
    code: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
}

/// How Meta's documented error codes are taken
/// (<https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes>), by code first as Meta
/// recommends; a code not listed falls back to its HTTP status. Transient: throughput, pair and app rate
/// limits, Meta's own temporary errors. NextProvider: herald's account, token, permissions, business number
/// or policy standing at Meta, which another provider does not share. Permanent: the recipient (not on
/// WhatsApp, undeliverable) or the request as herald makes it (template and parameter errors).
pub fn class_of(status: StatusCode, code: Option<u64>) -> Class {
    match code {
        // 1 API unknown ("possible server error"), 2 API service (downtime, overload), 4 app call rate
        // limit, 80007 WABA rate limit, 130429 throughput, 131000 something went wrong, 131016 service
        // unavailable, 131056 pair rate limit (too many to this number: later can succeed), 131057
        // account in maintenance mode, 133004 server temporarily unavailable.
        Some(1 | 2 | 4 | 80007 | 130429 | 131000 | 131016 | 131056 | 131057 | 133004) => Class::Transient,
        // 0 AuthException, 3 capability, 10 permission denied, 190 access token expired, 200-299 API
        // permission, 33 business number deleted, 368 blocked for policy violations, 130497 account
        // restricted from this country, 131005 access denied, 131031 account locked, 131037 display name
        // not approved, 131042 payment issue, 131045 certificate, 131048 spam rate limit (the number's
        // quality), 133010 business number not registered.
        Some(
            0
            | 3
            | 10
            | 190
            | 200..=299
            | 33
            | 368
            | 130497
            | 131005
            | 131031
            | 131037
            | 131042
            | 131045
            | 131048
            | 133010,
        ) => Class::NextProvider,
        // 100 invalid parameter, 130472 number in an experiment, 131008 required parameter missing, 131009
        // parameter value invalid, 131021 recipient is the sender, 131026 undeliverable (not on WhatsApp,
        // old app, terms not accepted), 131047 re-engagement, 131051 unsupported type, 132000-132999 the
        // template (parameter count, not found, paused, disabled, format), 135000 generic user error.
        Some(100 | 130472 | 131008 | 131009 | 131021 | 131026 | 131047 | 131051 | 132000..=132999 | 135000) => {
            Class::Permanent
        }
        _ => match status.as_u16() {
            408 | 429 | 500..=599 => Class::Transient,
            401 | 403 => Class::NextProvider,
            _ => Class::Permanent,
        },
    }
}

impl Meta {
    pub fn new(config: &MetaConfig, default_locale: &Locale, client: HttpClient) -> Result<Meta, SetupError> {
        let base = config.base_url.as_url().as_str().trim_end_matches('/');
        let url = Url::parse(&format!(
            "{base}/{}/{}/messages",
            config.api_version.as_str(),
            config.phone_number_id
        ))
        .map_err(|source| SetupError::Url {
            keys: "meta.base_url / meta.api_version / meta.phone_number_id",
            what: "a URL",
            source,
        })?;
        let authorization =
            authorization("Bearer", config.access_token.expose()).map_err(|source| SetupError::Authorization {
                keys: "meta.access_token",
                source,
            })?;
        Ok(Meta {
            client,
            url,
            authorization,
            template: config.template.clone(),
            languages: config.template_languages.clone(),
            default_locale: default_locale.clone(),
        })
    }

    /// The template language for `job`: its locale in Meta's list, else the default locale's.
    pub fn language_for(&self, job: &Job) -> &str {
        language(job.locale.as_ref(), &self.default_locale, &self.languages)
    }
}

/// `locale` among `languages` (Meta's spelling, `pt_BR`), falling back as templates do (`es-AR` → `es`),
/// then to a listed region of its language (`en` → `en_US` when only that is listed), then the same for
/// `default_locale`, then the first listed: never a code the template is not approved in.
pub fn language<'l>(locale: Option<&Locale>, default_locale: &Locale, languages: &'l [MetaLanguage]) -> &'l str {
    let find = |locale: &Locale| -> Option<&'l MetaLanguage> {
        locale
            .fallbacks()
            .find_map(|tag| {
                let meta = tag.replace('-', "_");
                languages.iter().find(|l| l.as_str().eq_ignore_ascii_case(&meta))
            })
            .or_else(|| script_or_region(locale, languages))
            .or_else(|| {
                languages
                    .iter()
                    .find(|l| l.language().eq_ignore_ascii_case(locale.language()))
            })
    };
    locale
        .and_then(find)
        .or_else(|| find(default_locale))
        .or(languages.first())
        .map_or("", MetaLanguage::as_str)
}

/// A locale with a script subtag, which Meta's codes never carry: its language with its region
/// (`zh-Hant-TW` → `zh_TW`), or for Chinese without a region the regions of its script (`zh-Hant` → `zh_TW`,
/// else `zh_HK`; `zh-Hans` → `zh_CN`), so Traditional Chinese never falls to the Simplified template.
fn script_or_region<'l>(locale: &Locale, languages: &'l [MetaLanguage]) -> Option<&'l MetaLanguage> {
    let tag = locale.to_string();
    let mut parts = tag.split('-');
    let language = parts.next()?;
    let script = parts.next().filter(|p| p.len() == 4)?;
    let listed = |code: String| languages.iter().find(|l| l.as_str().eq_ignore_ascii_case(&code));
    if let Some(region) = parts.next().filter(|p| p.len() == 2) {
        return listed(format!("{language}_{region}"));
    }
    let regions: &[&str] = match (
        language.to_ascii_lowercase().as_str(),
        script.to_ascii_lowercase().as_str(),
    ) {
        ("zh", "hant") => &["TW", "HK"],
        ("zh", "hans") => &["CN"],
        _ => &[],
    };
    regions.iter().find_map(|r| listed(format!("{language}_{r}")))
}

#[async_trait::async_trait]
impl Provider for Meta {
    fn name(&self) -> ProviderKind {
        ProviderKind::Meta
    }

    async fn send(&self, job: &Job, message: &Rendered, _validity: Validity) -> Result<Receipt, ProviderError> {
        if !matches!(message, Rendered::Whatsapp) {
            return Err(ProviderError::Permanent {
                message: format!("meta delivers whatsapp only, not {}", job.channel.as_str()),
                provider_code: None,
            });
        }
        let to = phone_of(job, self.name())?.digits();
        let code = job.code.expose();
        let parameter = || {
            [Parameter {
                kind: "text",
                text: code,
            }]
        };
        let send = Send {
            messaging_product: "whatsapp",
            to,
            kind: "template",
            template: Template {
                name: &self.template,
                language: Language {
                    code: self.language_for(job),
                },
                components: [
                    Component {
                        kind: "body",
                        sub_type: None,
                        index: None,
                        parameters: parameter(),
                    },
                    Component {
                        kind: "button",
                        sub_type: Some("url"),
                        index: Some("0"),
                        parameters: parameter(),
                    },
                ],
            },
        };
        let request = self
            .client
            .post(&self.url)
            .header(AUTHORIZATION, self.authorization.clone())
            .json(&send);
        let exchanged = match exchange(self.name(), request).await {
            Ok(answer) => answer,
            Err(no_answer) => return no_answer.into_result(),
        };
        let status = exchanged.status;
        if status.is_success() {
            // Meta has taken the message: an unreadable body must not make us send it twice.
            let id = serde_json::from_slice::<Sent>(&exchanged.body)
                .ok()
                .and_then(|s| s.messages.into_iter().next())
                .map(|m| message_id(&m.id));
            return Ok(match id {
                Some(id) => Receipt::sent(Some(id)),
                None => Receipt::unconfirmed(Ambiguous::UnreadableAnswer, None),
            });
        }
        let failure = serde_json::from_slice::<Failure>(&exchanged.body).ok().map(|f| f.error);
        let code = failure
            .as_ref()
            .and_then(|e| e.code.as_ref())
            .and_then(serde_json::Value::as_u64)
            .filter(|c| *c <= 999_999);
        let detail = failure
            .and_then(|e| e.message)
            .map_or_else(|| "no Graph API error body".into(), |m| scrub(&m));
        let message = format!("meta answered {}: {detail}", status.as_u16());
        let provider_code = code.map(ProviderCode::meta);
        Err(exchanged.rejection(class_of(status, code), message, provider_code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn languages(list: &[&str]) -> Vec<MetaLanguage> {
        list.iter().map(|l| MetaLanguage::parse(l).unwrap()).collect()
    }

    #[test]
    fn the_template_language_is_the_jobs_locale_in_metas_list_else_the_default_locales() {
        let en = Locale::parse("en").unwrap();
        let listed = languages(&["en_US", "pt_BR", "es", "fr"]);
        let pick = |locale: Option<&str>| language(locale.map(|l| Locale::parse(l).unwrap()).as_ref(), &en, &listed);
        assert_eq!(pick(Some("pt-BR")), "pt_BR");
        assert_eq!(pick(Some("es-AR")), "es");
        assert_eq!(pick(Some("fr-CA")), "fr");
        assert_eq!(pick(Some("en")), "en_US");
        // Its language in another region: `pt-PT` reads pt_BR rather than English.
        assert_eq!(pick(Some("pt-PT")), "pt_BR");
        assert_eq!(pick(Some("de")), "en_US");
        assert_eq!(pick(None), "en_US");
        // Neither the job's nor the default locale listed: the first listed, never an unlisted code.
        // A script subtag: Traditional Chinese reads a Traditional template, never zh_CN (outside attack).
        let zh = languages(&["zh_CN", "zh_HK", "zh_TW"]);
        let zh_pick = |l: &str| language(Some(&Locale::parse(l).unwrap()), &en, &zh);
        assert_eq!(zh_pick("zh-Hant-TW"), "zh_TW");
        assert_eq!(zh_pick("zh-Hant-HK"), "zh_HK");
        assert_eq!(zh_pick("zh-Hant"), "zh_TW");
        assert_eq!(zh_pick("zh-Hans"), "zh_CN");
        assert_eq!(zh_pick("zh-TW"), "zh_TW");
        assert_eq!(zh_pick("zh"), "zh_CN");
        let only = languages(&["it"]);
        assert_eq!(language(Some(&Locale::parse("de").unwrap()), &en, &only), "it");
    }

    #[test]
    fn error_codes_have_their_class() {
        use Class::{NextProvider as Next, Permanent as Perm, Transient as Tran};
        let bad = StatusCode::BAD_REQUEST;
        for (status, code, class) in [
            (bad, Some(130429), Tran),
            (bad, Some(131056), Tran),
            (StatusCode::INTERNAL_SERVER_ERROR, Some(131000), Tran),
            (StatusCode::SERVICE_UNAVAILABLE, Some(131016), Tran),
            (bad, Some(131026), Perm),
            (bad, Some(132000), Perm),
            (StatusCode::NOT_FOUND, Some(132001), Perm),
            (bad, Some(131008), Perm),
            (bad, Some(131009), Perm),
            (bad, Some(100), Perm),
            (StatusCode::FORBIDDEN, Some(131031), Next),
            (bad, Some(131042), Next),
            (StatusCode::FORBIDDEN, Some(368), Next),
            (bad, Some(131048), Next),
            (StatusCode::UNAUTHORIZED, Some(190), Next),
            (StatusCode::FORBIDDEN, Some(10), Next),
            (StatusCode::FORBIDDEN, Some(200), Next),
            (StatusCode::BAD_GATEWAY, None, Tran),
            (StatusCode::TOO_MANY_REQUESTS, Some(999_999), Tran),
            (StatusCode::UNAUTHORIZED, None, Next),
            (bad, None, Perm),
        ] {
            assert_eq!(class_of(status, code), class, "{status} {code:?}");
        }
    }
}
