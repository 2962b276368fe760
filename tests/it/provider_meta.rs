//! The WhatsApp Cloud API provider by Meta's own rules, provider-level (`Provider::send`, no broker), against
//! the documentation-built test server of `helpers/meta_api.rs`: the authentication template request field by
//! field, the template language from the job's locale, and one test per row of the error-code table
//! (docs/providers/meta.md); then through the broker, a WhatsApp job's events.

use crate::helpers::meta_api::{self, Answer, MetaApi};
use crate::helpers::{TestApp, assert_event_shape, job, provider_client as client, verdict, verdict_with_id};

use herald::config::{MetaConfig, MetaLanguage, ProviderKind, Secret, Text};
use herald::job::{Job, Locale};
use herald::providers::meta::Meta;
use herald::providers::{Provider, Validity};
use herald::templates::Rendered;
use wiremock::{Mock, MockServer};

const NUMBER_ID: &str = "106540352242922";
const TOKEN: &str = "EAAJB-meta-test-access-token";
const TEMPLATE: &str = "herald_auth_code";
const LANGUAGES: &[&str] = &["en_US", "pt_BR", "es"];

pub fn config(base_url: &str) -> MetaConfig {
    MetaConfig {
        phone_number_id: NUMBER_ID.into(),
        access_token: Secret::new(TOKEN),
        app_secret: Secret::new("meta-app-secret"),
        template: TEMPLATE.into(),
        template_languages: LANGUAGES.iter().map(|l| MetaLanguage::parse(l).unwrap()).collect(),
        api_version: herald::config::ApiVersion::parse_text("v23.0").unwrap(),
        base_url: base_url.parse().unwrap(),
        status_callback_verify_token: Secret::new("meta-verify-token"),
    }
}

/// The documentation-built Cloud API and a server it answers every request on.
pub async fn meta_api() -> (MetaApi, MockServer) {
    let api = MetaApi::new(NUMBER_ID, TOKEN, TEMPLATE, LANGUAGES);
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(api.clone())
        .mount(&server)
        .await;
    (api, server)
}

fn meta(config: &MetaConfig) -> Meta {
    Meta::new(config, &Locale::parse("en").unwrap(), client()).unwrap()
}

fn whatsapp_job(locale: Option<&str>) -> Job {
    let mut body = job("whatsapp");
    if let Some(locale) = locale {
        body["locale"] = locale.into();
    }
    Job::from_json(body.to_string().as_bytes()).unwrap()
}

async fn send(meta: &Meta, job: &Job) -> Result<herald::providers::Receipt, herald::providers::ProviderError> {
    meta.send(job, &Rendered::Whatsapp, Validity::default()).await
}

#[tokio::test]
async fn an_authentication_template_carries_the_code_in_its_body_and_button_with_bearer_auth() {
    let (api, server) = meta_api().await;
    let got = verdict_with_id(send(&meta(&config(&server.uri())), &whatsapp_job(Some("pt-BR"))).await);
    assert_eq!(got, format!("sent {}", meta_api::published_id(&meta_api::wamid(1))));
    assert_eq!(api.violations(), Vec::<String>::new());
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests[0].url.path(), format!("/v23.0/{NUMBER_ID}/messages"));
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    // Field by field, as docs/providers/meta.md writes it (the server checked the shape; this pins the values).
    assert_eq!(
        body,
        serde_json::json!({
            "messaging_product": "whatsapp", "to": "14155550123", "type": "template",
            "template": {"name": TEMPLATE, "language": {"code": "pt_BR"}, "components": [
                {"type": "body", "parameters": [{"type": "text", "text": "482913"}]},
                {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "482913"}]},
            ]},
        })
    );
}

/// The job's locale in the template's languages (`pt-BR` → `pt_BR`, `es-AR` → `es`), else the default
/// locale's (`en` → `en_US`): never a code the template is not approved in, which Meta refuses (132001).
#[tokio::test]
async fn the_language_is_the_jobs_locale_among_the_approved_ones_else_the_default_locales() {
    let (api, server) = meta_api().await;
    let meta = meta(&config(&server.uri()));
    for locale in [
        Some("pt-BR"),
        Some("es-AR"),
        Some("es"),
        Some("de"),
        None,
        Some("en-GB"),
    ] {
        assert_eq!(verdict(send(&meta, &whatsapp_job(locale)).await), "sent", "{locale:?}");
    }
    let languages: Vec<String> = api.sent().into_iter().map(|(l, _)| l).collect();
    assert_eq!(languages, ["pt_BR", "es", "es", "en_US", "en_US", "en_US"]);
    assert_eq!(api.violations(), Vec::<String>::new());
}

/// One row of docs/providers/meta.md's table per case: Meta's error body with its HTTP status, the
/// class herald takes it as, and the code in `error.provider_code`.
#[tokio::test]
async fn every_documented_error_code_has_its_class() {
    let (api, server) = meta_api().await;
    let meta = meta(&config(&server.uri()));
    for (code, expected) in [
        // Transient: rate limits and Meta's temporary errors.
        (130429, "transient 130429 -"),
        (131056, "transient 131056 -"),
        (131000, "transient 131000 -"),
        (131016, "transient 131016 -"),
        (4, "transient 4 -"),
        (80007, "transient 80007 -"),
        // Permanent: the recipient, the template, the parameters.
        (131026, "permanent 131026"),
        (132000, "permanent 132000"),
        (132001, "permanent 132001"),
        (132015, "permanent 132015"),
        (131008, "permanent 131008"),
        (131009, "permanent 131009"),
        (100, "permanent 100"),
        (131047, "permanent 131047"),
        // The account's own limits and standing: the next provider of the chain.
        (131031, "next provider 131031"),
        (131042, "next provider 131042"),
        (368, "next provider 368"),
        (131048, "next provider 131048"),
        (190, "next provider 190"),
        (10, "next provider 10"),
        (200, "next provider 200"),
        (130497, "next provider 130497"),
    ] {
        api.then([Answer::Error(code)]);
        assert_eq!(verdict(send(&meta, &whatsapp_job(None)).await), expected, "{code}");
    }
    assert_eq!(api.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn retry_after_is_honoured_and_bodiless_answers_are_read_by_status() {
    let (api, server) = meta_api().await;
    let meta = meta(&config(&server.uri()));
    api.then([
        Answer::ErrorRetryAfter(130429, 30),
        Answer::Bare(502),
        Answer::Bare(401),
        Answer::Bare(400),
    ]);
    for expected in ["transient 130429 30", "transient - -", "next provider -", "permanent -"] {
        assert_eq!(verdict(send(&meta, &whatsapp_job(None)).await), expected);
    }
    assert_eq!(api.violations(), Vec::<String>::new());
}

/// A 200 whose body cannot be read: Meta took the message, so it is never sent again.
#[tokio::test]
async fn an_unreadable_success_ends_as_sent_and_is_not_sent_again() {
    let (api, server) = meta_api().await;
    api.then([Answer::Garbled]);
    let got = verdict(send(&meta(&config(&server.uri())), &whatsapp_job(None)).await);
    assert_eq!(got, "unclear unreadable_answer");
    assert_eq!(api.served(), 1);
}

/// A wrong token is Meta's 190 (the next provider), and the error says nothing of the token.
#[tokio::test]
async fn a_wrong_token_is_the_next_provider_and_never_shown() {
    let (_api, server) = meta_api().await;
    let mut config = config(&server.uri());
    config.access_token = Secret::new("EAAJB-wrong-token");
    let err = send(&meta(&config), &whatsapp_job(None)).await.unwrap_err();
    assert_eq!(verdict(Err(err.clone())), "next provider 190");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("wrong-token") && !text.contains(TOKEN), "{text}");
    assert!(!text.contains("482913"), "{text}");
}

/// Through the broker: a WhatsApp job sent by meta, and one Meta refuses, each with one event; the
/// refusal's Meta code is `error.provider_code`.
#[tokio::test]
async fn whatsapp_jobs_through_meta_end_in_whatsapp_events_with_metas_id_or_code() {
    let (api, server) = meta_api().await;
    let mut app = TestApp::spawn(|c| {
        c.meta = config(&server.uri());
        c.channels.whatsapp = Some(vec![ProviderKind::Meta]);
    })
    .await;
    let mut j = job("whatsapp");
    j["locale"] = "es-AR".into();
    app.publish(&j).await;
    let e = app.next_event(20).await;
    assert_event_shape(&e);
    assert_eq!(e["type"], "gd_send_whatsapp", "{e}");
    assert_eq!(e["provider"], "meta");
    assert_eq!(e["provider_message_id"], meta_api::published_id(&meta_api::wamid(1)));
    crate::receipts_meta::assert_documented_as(&e, "Event");
    api.then([Answer::Error(131026)]);
    app.publish(&job("whatsapp")).await;
    let e = app.next_event(20).await;
    assert_event_shape(&e);
    assert_eq!(e["type"], "gd_send_whatsapp_failure", "{e}");
    assert_eq!(e["error"]["code"], "provider_rejected");
    assert_eq!(e["error"]["provider_code"], "131026");
    crate::receipts_meta::assert_documented_as(&e, "Event");
    assert_eq!(api.sent()[0], ("es".to_owned(), "482913".to_owned()));
    assert_eq!(api.violations(), Vec::<String>::new());
    let m = app.settled_metrics().await;
    assert_eq!(
        crate::helpers::metric(
            &m,
            "gd_send_whatsapp_total{action=\"second-factor-authentication\",country=\"1\",provider=\"meta\"}"
        ),
        1.0,
        "{m}"
    );
    app.stop().await;
}

/// With only `[meta]` configured, whatsapp uses meta; a chain naming meta without its keys stops start-up
/// naming the key, never a secret's value.
#[tokio::test]
async fn meta_is_the_whatsapp_default_once_configured_and_its_keys_are_required() {
    let mut c = herald::config::Config::default();
    assert_eq!(c.chain(herald::job::Channel::Whatsapp), [ProviderKind::Outbox]);
    c.meta = config("http://127.0.0.1:9");
    assert_eq!(c.chain(herald::job::Channel::Whatsapp), [ProviderKind::Meta]);
    c.validate().unwrap();
    for (blank, key) in [
        (
            Box::new(|c: &mut MetaConfig| c.phone_number_id.clear()) as Box<dyn Fn(&mut MetaConfig)>,
            "meta.phone_number_id",
        ),
        (Box::new(|c| c.access_token = Secret::new("")), "meta.access_token"),
        (Box::new(|c| c.template.clear()), "meta.template"),
        (Box::new(|c| c.template_languages.clear()), "meta.template_languages"),
    ] {
        let mut c = herald::config::Config {
            meta: config("http://127.0.0.1:9"),
            ..Default::default()
        };
        c.channels.whatsapp = Some(vec![ProviderKind::Meta]);
        blank(&mut c.meta);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains(&format!("`{key}`")), "{err}");
        assert!(!err.contains(TOKEN) && !err.contains("meta-app-secret"), "{err}");
    }
    let err = herald::config::Config::load_from(
        None,
        [("HERALD_META__TEMPLATE_LANGUAGES".to_owned(), r#"["pt-BR"]"#.to_owned())],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("meta.template_languages"), "{err}");
}

/// `whatsapp = ["meta", "twilio"]`: Meta refusing for herald's account (131031, locked) moves the job to
/// Twilio in the same attempt.
#[tokio::test]
async fn the_accounts_own_refusal_moves_to_twilio_in_the_same_attempt() {
    use crate::helpers::twilio_api::TwilioApi;
    let (api, server) = meta_api().await;
    let twilio = TwilioApi::new("AC0123456789abcdef0123456789abcdef", "test-auth-token");
    let twilio_server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(twilio.clone())
        .mount(&twilio_server)
        .await;
    let mut app = TestApp::spawn(|c| {
        c.meta = config(&server.uri());
        crate::helpers::twilio(c, &twilio_server.uri());
        c.twilio.whatsapp_from = Some(herald::job::PhoneNumber::parse("+15005550007").unwrap());
        c.twilio.whatsapp_content_sid = "HX0123456789abcdef0123456789abcdef".into();
        c.channels.whatsapp = Some(vec![ProviderKind::Meta, ProviderKind::Twilio]);
    })
    .await;
    api.then([Answer::Error(131031)]);
    app.publish(&job("whatsapp")).await;
    let e = app.next_event(20).await;
    assert_eq!(e["type"], "gd_send_whatsapp", "{e}");
    assert_eq!(e["provider"], "twilio");
    assert_eq!(e["attempt"], 1);
    assert_eq!((api.served(), twilio.served()), (1, 1));
    assert_eq!(twilio.violations(), Vec::<String>::new());
    assert_eq!(api.violations(), Vec::<String>::new());
    app.stop().await;
}
