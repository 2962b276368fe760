//! The defaults are written once (`defaults.toml`); the example config and the docs' tables
//! (docs/configuration.md, docs/fraud-and-limits.md) are held to them here. The env mapping gives back the configuration it was made from.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::destinations::Destination;

fn repo_file(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `section.key` → value of a TOML document of sections.
fn keys(toml_text: &str) -> BTreeMap<String, toml::Value> {
    let table: toml::Table = toml_text.parse().unwrap();
    let mut keys = BTreeMap::new();
    for (section, values) in table {
        let toml::Value::Table(values) = values else {
            panic!("`{section}` is not a section")
        };
        for (key, value) in values {
            keys.insert(format!("{section}.{key}"), value);
        }
    }
    keys
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

#[test]
fn the_defaults_load_and_are_valid() {
    let loaded = Config::load_from(None, no_env()).unwrap();
    assert_eq!(loaded, Config::default());
    assert_eq!(loaded.templates.default_locale.as_str(), "en");
    assert_eq!(loaded.twilio.from, None);
    assert_eq!(loaded.webhook.url, None);
    assert_eq!(loaded.twilio.status_callback_url, None);
    assert_eq!(loaded.smtp.url, None);
    assert_eq!(loaded.smtp.target(), Target::local());
    assert_eq!(loaded.throttle.global_phone, None);
    assert_eq!(loaded.throttle.user_voice.map(|r| r.burst), Some(10));
}

#[test]
fn the_example_config_sets_every_key_to_its_default() {
    let defaults = keys(DEFAULTS);
    let example = keys(&repo_file("deploy/herald.example.toml"));
    let mut drift = Vec::new();
    for key in defaults
        .keys()
        .chain(example.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        match (defaults.get(key), example.get(key)) {
            (Some(d), Some(e)) if d == e => {}
            (d, e) => drift.push(format!("{key}: default {d:?}, example {e:?}")),
        }
    }
    assert!(
        drift.is_empty(),
        "deploy/herald.example.toml differs from src/config/defaults.toml:\n{}",
        drift.join("\n")
    );
}

/// The backticked words of a table cell.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// The rows of the markdown table of `doc` (named `path`) whose header line starts with `header`, as cells.
fn table_rows<'a>(doc: &'a str, path: &str, header: &str) -> Vec<Vec<&'a str>> {
    let start = doc
        .find(&format!("\n{header}"))
        .unwrap_or_else(|| panic!("{path} has no table `{header}`"));
    doc[start + 1..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect()
}

/// Whether a doc's `shown` default is `value`: a string as is, `—`/`off` for `""`, a list of durations
/// space-separated, any value as TOML (`[]`).
fn shows(shown: &str, value: &toml::Value) -> bool {
    match value {
        toml::Value::String(s) if s.is_empty() => matches!(shown, "—" | "off"),
        toml::Value::String(s) => shown == s,
        // As a config file or a HERALD_* variable takes it: `1s 5s 30s` is refused (issue 34).
        toml::Value::Array(_) => shown == value.to_string(),
        other => shown == other.to_string(),
    }
}

/// The configuration table of docs/configuration.md and the `[throttle]` table of docs/fraud-and-limits.md
/// show each key's default as `defaults.toml` has it, name only keys that exist, and together leave no key
/// out.
#[test]
fn docs_tables_show_the_defaults() {
    const CONFIGURATION: &str = "docs/configuration.md";
    const LIMITS: &str = "docs/fraud-and-limits.md";
    let configuration = repo_file(CONFIGURATION);
    let limits = repo_file(LIMITS);
    let defaults = keys(DEFAULTS);
    let mut named = std::collections::BTreeSet::new();
    let mut wrong = Vec::new();
    let config_rows = table_rows(&configuration, CONFIGURATION, "| key | default | meaning |");
    let throttle_rows = table_rows(&limits, LIMITS, "| limit (`[throttle]`) | default |");
    let rows = config_rows
        .iter()
        .map(|r| (r, ""))
        .chain(throttle_rows.iter().map(|r| (r, "throttle.")));
    for (row, section) in rows {
        let [key_cell, default_cell, ..] = row[..] else {
            panic!("docs table row {row:?}")
        };
        // `amqp.jobs_queue`, `retry_queue` and `channels.sms`, `.voice`: later keys are in the first's section.
        let spans = code_spans(key_cell);
        let first = format!("{section}{}", spans[0]);
        let section = first
            .rsplit_once('.')
            .map_or(section.to_owned(), |(s, _)| format!("{s}."));
        let row_keys: Vec<String> = std::iter::once(first.clone())
            .chain(spans[1..].iter().map(|k| match k.strip_prefix('.') {
                Some(key) => format!("{section}{key}"),
                None if k.contains('.') => (*k).to_owned(),
                None => format!("{section}{k}"),
            }))
            .collect();
        if first.ends_with(".*") {
            named.extend(defaults.keys().filter(|k| k.starts_with(&section)).cloned());
            continue;
        }
        named.extend(row_keys.iter().cloned());
        if default_cell.starts_with("see ") {
            continue;
        }
        if default_cell.starts_with("unset") {
            for key in &row_keys {
                if defaults.contains_key(key) {
                    wrong.push(format!("{key}: the docs say unset, defaults.toml sets it"));
                }
            }
            continue;
        }
        let shown: Vec<&str> = match code_spans(default_cell) {
            spans if spans.is_empty() => vec![default_cell; row_keys.len()],
            spans if spans.len() == 1 => vec![spans[0]; row_keys.len()],
            spans => spans,
        };
        if shown.len() != row_keys.len() {
            wrong.push(format!("{key_cell}: {} keys, {} defaults", row_keys.len(), shown.len()));
            continue;
        }
        for (key, shown) in row_keys.iter().zip(shown) {
            // What the docs show, set as it is shown, loads (`—` and `off` stand for an empty value).
            if !matches!(shown, "—" | "off") {
                let (section, name) = key.split_once('.').unwrap();
                let var = (env::var_name(section, name), shown.to_owned());
                if let Err(e) = Config::load_from(None, vec![var]) {
                    wrong.push(format!("{key}: the documented `{shown}` does not load: {e}"));
                }
            }
            match defaults.get(key) {
                None => wrong.push(format!("{key}: in the docs, not in defaults.toml")),
                Some(value) if !shows(shown, value) => {
                    wrong.push(format!("{key}: the docs show `{shown}`, defaults.toml has {value}"))
                }
                Some(_) => {}
            }
        }
    }
    for key in defaults.keys().filter(|k| !named.contains(*k)) {
        wrong.push(format!("{key}: in defaults.toml, not in {CONFIGURATION}'s table"));
    }
    assert!(
        wrong.is_empty(),
        "{CONFIGURATION} and {LIMITS} drifted from defaults.toml:\n{}",
        wrong.join("\n")
    );
}

/// A configuration far from the defaults, through `to_env` and back.
#[test]
fn to_env_gives_the_configuration_back() {
    let mut config = Config::default();
    config.amqp.url = "amqp://u:p@broker:5672/vhost".parse().unwrap();
    config.amqp.prefetch = std::num::NonZeroU16::new(512).unwrap();
    config.amqp.channels = 2;
    config.amqp.queue_type = QueueType::Classic;
    config.amqp.jobs_queue = "ns.jobs".into();
    config.admin.token = Secret::new("123456");
    config.templates.dir = "/srv/templates".into();
    config.templates.default_locale = Locale::parse("pt-BR").unwrap();
    config.templates.vars = vec!["team".into(), "app".into()];
    config.channels.sms = Some(vec![ProviderKind::Twilio, ProviderKind::Webhook]);
    config.channels.email = Some(vec![ProviderKind::Smtp, ProviderKind::Outbox]);
    config.twilio.account_sid = "AC1".into();
    config.twilio.auth_token = Secret::new("0042");
    config.twilio.from = Some(PhoneNumber::parse("+15005550006").unwrap());
    config.twilio.base_url = "http://127.0.0.1:9/twilio".parse().unwrap();
    config.twilio.status_callback_url = Some("https://herald.acme.test/providers/twilio/status#rc=3".parse().unwrap());
    config.smtp.url = Some("smtp://u%40x:p%3Aw@mail.test?tls=required".parse().unwrap());
    config.smtp.from = "Ops <ops@acme.test>".parse().unwrap();
    config.smtp.hello_name = Some("mail.acme.test".parse().unwrap());
    config.webhook.url = Some("https://hooks.test/send?x=1".parse().unwrap());
    config.webhook.secret = Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap());
    config.redis.url = Secret::new("redis://127.0.0.1:6379");
    config.throttle.user_phone = None;
    config.throttle.ip = Some("3/90s burst 7".parse().unwrap());
    config.throttle.global_phone = Some("2000/m".parse().unwrap());
    config.throttle.countries_deny = ["44", "225", "1876", "JM"]
        .map(|d| Destination::parse(d).unwrap())
        .into();
    config.retry.schedule = vec![HumanDuration(std::time::Duration::from_millis(50)); 2].into();
    config.retry.provider_timeout = HumanDuration(std::time::Duration::from_secs(90));

    let env = config.to_env().unwrap();
    assert!(
        env.iter()
            .all(|(name, _)| name.starts_with("HERALD_") && name.contains("__"))
    );
    assert!(env.contains(&("HERALD_AMQP__PREFETCH".into(), "512".into())));
    assert!(env.contains(&("HERALD_THROTTLE__USER_PHONE".into(), String::new())));
    assert!(env.contains(&("HERALD_CHANNELS__SMS".into(), r#"["twilio", "webhook"]"#.into())));
    assert!(
        !env.iter().any(|(name, _)| name == "HERALD_CHANNELS__VOICE"),
        "unset stays unset"
    );
    assert_eq!(Config::load_from(None, env).unwrap(), config);
    assert_eq!(
        Config::load_from(None, Config::default().to_env().unwrap()).unwrap(),
        Config::default()
    );
}

#[test]
fn typed_values_are_checked_at_load_and_name_their_key() {
    let load = |vars: &[(&str, &str)]| {
        Config::load_from(None, vars.iter().map(|(k, v)| (k.to_string(), v.to_string()))).map_err(|e| e.to_string())
    };
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("HERALD_TEMPLATES__DEFAULT_LOCALE", "s3cr3t!")],
            "templates.default_locale",
        ),
        (&[("HERALD_TWILIO__FROM", "s3cr3t")], "twilio.from"),
        (&[("HERALD_TWILIO__BASE_URL", "s3cr3t")], "twilio.base_url"),
        (
            &[("HERALD_TWILIO__STATUS_CALLBACK_URL", "s3cr3t")],
            "twilio.status_callback_url",
        ),
        (
            &[("HERALD_TWILIO__STATUS_CALLBACK_URL", "ftp://s3cr3t")],
            "twilio.status_callback_url",
        ),
        (&[("HERALD_WEBHOOK__URL", "ftp://s3cr3t")], "webhook.url"),
        (&[("HERALD_WEBHOOK__SECRET", "whsec_s3cr3t!")], "webhook.secret"),
        (&[("HERALD_SMTP__URL", "smtp://u:s3cr3t@")], "smtp.url"),
        (&[("HERALD_SMTP__URL", "")], "smtp.url"),
        (&[("HERALD_SMTP__FROM", "s3cr3t")], "smtp.from"),
        (&[("HERALD_SMTP__HELLO_NAME", "s3cr3t host")], "smtp.hello_name"),
        (&[("HERALD_CHANNELS__SMS", r#"["webhook"]"#)], "webhook.url"),
        (
            &[
                ("HERALD_CHANNELS__SMS", r#"["webhook"]"#),
                ("HERALD_WEBHOOK__URL", "https://hooks.test"),
            ],
            "webhook.secret",
        ),
        (&[("HERALD_CHANNELS__VOICE", r#"["smtp"]"#)], "channels.voice"),
        (
            &[(
                "HERALD_TWILIO__STATUS_CALLBACK_URL",
                "https://herald.test/providers/twilio/status",
            )],
            "twilio.auth_token",
        ),
        (
            &[(
                "HERALD_VONAGE__STATUS_CALLBACK_URL",
                "https://herald.test/providers/vonage/status",
            )],
            "vonage.signature_secret",
        ),
        (
            &[(
                "HERALD_PLIVO__STATUS_CALLBACK_URL",
                "https://herald.test/providers/plivo/status",
            )],
            "plivo.auth_token",
        ),
        (
            &[
                (
                    "HERALD_INFOBIP__STATUS_CALLBACK_URL",
                    "https://herald.test/providers/infobip/status",
                ),
                ("HERALD_INFOBIP__STATUS_TOKEN", " "),
            ],
            "infobip.status_token",
        ),
        (
            &[("HERALD_VONAGE__SIGNATURE_METHOD", "sha384")],
            "vonage.signature_method",
        ),
        // Failed before: accepted, and every report refused for its two tokens (outside attack F5).
        (
            &[
                (
                    "HERALD_INFOBIP__STATUS_CALLBACK_URL",
                    "https://herald.test/providers/infobip/status?tenant=7&token=s3cr3t",
                ),
                ("HERALD_INFOBIP__STATUS_TOKEN", "its3cr3t"),
            ],
            "infobip.status_callback_url",
        ),
    ];
    for (vars, key) in cases {
        let err = load(vars).expect_err(key);
        assert!(err.contains(key), "{vars:?}: {err}");
        assert!(!err.contains("s3cr3t"), "{vars:?}: {err}");
    }
    let config = load(&[
        ("HERALD_CHANNELS__SMS", r#"["webhook"]"#),
        ("HERALD_WEBHOOK__URL", "https://hooks.test/send"),
        ("HERALD_WEBHOOK__SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ("HERALD_SMTP__URL", "smtps://mail.test"),
    ])
    .unwrap();
    let (url, key) = config.webhook.endpoint("channels.sms").unwrap();
    assert_eq!(url.as_url().as_str(), "https://hooks.test/send");
    assert_eq!(key.as_bytes().len(), 24);
    assert_eq!(config.chain(Channel::Email), [ProviderKind::Smtp]);
    assert_eq!(
        config.smtp.target(),
        "smtps://mail.test".parse::<SmtpUrl>().unwrap().target().clone()
    );
    // EHLO names the sender's domain unless `smtp.hello_name` says otherwise (issue 34).
    assert_eq!(config.smtp.hello().unwrap().as_str(), "acme.test");
    let config = load(&[("HERALD_SMTP__HELLO_NAME", "[192.0.2.1]")]).unwrap();
    assert_eq!(config.smtp.hello().unwrap().as_str(), "[192.0.2.1]");
}

/// New providers' sections and `[routing]` survive `to_env`, and chains are checked where they are
/// written: `routing.sms.44` names itself.
#[test]
fn routing_and_provider_sections_round_trip_and_name_their_keys() {
    let mut config = Config::default();
    config.vonage.api_key = "k".into();
    config.vonage.api_secret = Secret::new("vs3cr3t");
    config.vonage.from = "Acme".into();
    config.vonage.base_url = "http://127.0.0.1:9/vonage".parse().unwrap();
    config.plivo.auth_id = "MA1".into();
    config.plivo.auth_token = Secret::new("ps3cr3t");
    config.plivo.from = "+14155550100".into();
    config.infobip.api_key = Secret::new("is3cr3t");
    config.infobip.from = "+447491163443".into();
    config.infobip.base_url = Some("https://x.api.infobip.com".parse().unwrap());
    config.sns.region = "eu-west-1".into();
    config.sns.access_key_id = "AKID".into();
    config.sns.secret_access_key = Secret::new("ss3cr3t");
    config.sns.sender_id = "Acme".into();
    config.channels.sms = Some(vec![ProviderKind::Vonage]);
    let code = |c: &str| Destination::parse(c).unwrap();
    config.routing.sms = [
        (code("44"), vec![ProviderKind::Infobip, ProviderKind::Plivo]),
        (code("1"), vec![ProviderKind::Sns]),
    ]
    .into();
    config.routing.voice = [(code("44"), vec![ProviderKind::Infobip])].into();
    config.sns.session_token = Secret::new("ts3cr3t");
    config.vonage.status_callback_url = Some("https://h.test/providers/vonage/status".parse().unwrap());
    config.vonage.signature_secret = Secret::new("vss3cr3t");
    config.vonage.signature_method = crate::config::VonageSignatureMethod::Sha256;
    config.plivo.status_callback_url = Some("https://h.test/providers/plivo/status".parse().unwrap());
    config.infobip.status_callback_url = Some("https://h.test/providers/infobip/status".parse().unwrap());
    config.infobip.status_token = Secret::new("its3cr3t");
    config.validate().unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains("s3cr3t"), "a provider secret in Debug: {shown}");
    let env = config.to_env().unwrap();
    assert!(env.iter().any(|(k, _)| k == "HERALD_ROUTING__SMS"), "{env:?}");
    assert_eq!(Config::load_from(None, env).unwrap(), config);
    let keys: Vec<String> = config.chains().into_iter().map(|(k, _, _)| k).collect();
    assert!(keys.contains(&"routing.sms.44".to_owned()) && keys.contains(&"routing.voice.44".to_owned()));

    let load = |vars: &[(&str, &str)]| {
        Config::load_from(None, vars.iter().map(|(k, v)| (k.to_string(), v.to_string()))).map_err(|e| e.to_string())
    };
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("HERALD_ROUTING__SMS", r#"{"44" = ["carrier-pigeon"]}"#)],
            "routing.sms.44",
        ),
        (&[("HERALD_ROUTING__SMS", r#"{"4x" = ["outbox"]}"#)], "routing.sms.4x"),
        (&[("HERALD_ROUTING__SMS", r#"{"999" = ["outbox"]}"#)], "routing.sms.999"),
        (&[("HERALD_ROUTING__SMS", r#"{"+44" = ["outbox"]}"#)], "routing.sms.+44"),
        (&[("HERALD_ROUTING__SMS", r#"{"44" = []}"#)], "routing.sms.44"),
        (&[("HERALD_ROUTING__SMS", r#"{"44" = ["vonage"]}"#)], "vonage.api_key"),
        (
            &[("HERALD_ROUTING__VOICE", r#"{"44" = ["vonage"]}"#)],
            "routing.voice.44",
        ),
        (&[("HERALD_ROUTING__EMAIL", r#"{"44" = ["outbox"]}"#)], "routing"),
        (&[("HERALD_CHANNELS__VOICE", r#"["plivo"]"#)], "channels.voice"),
        (&[("HERALD_CHANNELS__SMS", r#"["plivo"]"#)], "plivo.auth_id"),
        (
            &[
                ("HERALD_CHANNELS__SMS", r#"["infobip"]"#),
                ("HERALD_INFOBIP__API_KEY", "s3cr3t"),
                ("HERALD_INFOBIP__FROM", "Acme"),
            ],
            "infobip.base_url",
        ),
        (&[("HERALD_CHANNELS__SMS", r#"["sns"]"#)], "sns.region"),
        (
            &[
                ("HERALD_CHANNELS__SMS", r#"["sns"]"#),
                ("HERALD_SNS__REGION", "evil.test/x"),
                ("HERALD_SNS__ACCESS_KEY_ID", "AKID"),
                ("HERALD_SNS__SECRET_ACCESS_KEY", "s3cr3t"),
            ],
            "sns.region",
        ),
        (&[("HERALD_VONAGE__BASE_URL", "ftp://s3cr3t")], "vonage.base_url"),
    ];
    for (vars, key) in cases {
        let err = load(vars).expect_err(key);
        assert!(err.contains(key), "{vars:?}: {err}");
        assert!(!err.contains("s3cr3t"), "{vars:?}: {err}");
    }
}

/// Empty `[sns]` credentials come from the standard AWS variables; herald's own keys win.
#[test]
fn sns_credentials_fall_back_to_the_aws_variables() {
    let vars = |extra: &[(&str, &str)]| {
        let mut v: Vec<(String, String)> = [
            ("HERALD_CHANNELS__SMS", r#"["sns"]"#),
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ("AWS_SESSION_TOKEN", "env-token"),
            ("AWS_DEFAULT_REGION", "us-east-2"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        v.sort();
        v
    };
    fn keys(c: &Config) -> (&str, &str, &str) {
        (
            c.sns.region.as_str(),
            c.sns.access_key_id.as_str(),
            c.sns.secret_access_key.expose(),
        )
    }
    let c = Config::load_from(None, vars(&[])).unwrap();
    assert_eq!(keys(&c), ("us-east-2", "AKIDENV", "env-secret"));
    assert_eq!(c.sns.session_token.expose(), "env-token");
    assert_eq!(
        c.sns.endpoint().unwrap().as_str(),
        "https://sns.us-east-2.amazonaws.com/"
    );
    let c = Config::load_from(
        None,
        vars(&[
            ("AWS_REGION", "eu-west-1"),
            ("HERALD_SNS__ACCESS_KEY_ID", "AKIDOWN"),
            ("HERALD_SNS__SECRET_ACCESS_KEY", "own-secret"),
        ]),
    )
    .unwrap();
    assert_eq!(keys(&c), ("eu-west-1", "AKIDOWN", "own-secret"));
    assert!(c.sns.session_token.is_empty(), "the env token belongs to the env key");
}

/// `amqp.url` is parsed at load, so that connecting cannot fail on it; the error names the key only.
#[test]
fn a_bad_amqp_url_is_refused_at_load_naming_the_key() {
    for url in ["amqp://u:s3cr3t@broker:notaport/vhost", "http://u:s3cr3t@broker/vhost"] {
        let vars = [("HERALD_AMQP__URL".to_owned(), url.to_owned())];
        let message = Config::load_from(None, vars).unwrap_err().to_string();
        assert!(message.contains("amqp.url"), "{message}");
        assert!(!message.contains("s3cr3t"), "{message}");
    }
}

/// Queue names herald derives from configured ones must fit AMQP's 255 bytes too: a commit-marker queue
/// per process (`<amqp.jobs_queue>.commits.<ulid>`) and a delay queue per retry wait
/// (`<amqp.retry_queue>.<wait>`). Before, such a name loaded fine and declaring it panicked after start-up.
#[test]
fn derived_queue_names_that_do_not_fit_are_refused_naming_the_key() {
    let mut config = Config::default();
    config.amqp.jobs_queue = "j".repeat(221);
    let message = config.validate().unwrap_err().to_string();
    assert!(message.contains("amqp.jobs_queue"), "{message}");
    config.amqp.jobs_queue = "j".repeat(220);
    config.validate().unwrap();

    config.retry.schedule = vec![HumanDuration(std::time::Duration::from_millis(1500))].into();
    config.amqp.retry_queue = "r".repeat(249);
    let message = config.validate().unwrap_err().to_string();
    assert!(message.contains("amqp.retry_queue"), "{message}");
    assert!(message.contains("retry.schedule"), "{message}");
    config.amqp.retry_queue = "r".repeat(248);
    config.validate().unwrap();
}

/// `amqp.channels` 0 would consume nothing; with 3 a crash could count a job in flight past the quorum
/// queue's delivery limit (see `MAX_CHANNELS`).
#[test]
fn consuming_channels_out_of_range_are_refused_naming_the_key() {
    let mut config = Config::default();
    for channels in [0, crate::config::MAX_CHANNELS + 1, u16::MAX] {
        config.amqp.channels = channels;
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("amqp.channels"), "{channels}: {message}");
    }
    for channels in [1, crate::config::MAX_CHANNELS] {
        config.amqp.channels = channels;
        config.validate().unwrap();
    }
    // More channels than the prefetch window loads: herald opens one channel per job of the window.
    config.amqp.prefetch = std::num::NonZeroU16::new(1).unwrap();
    config.validate().unwrap();
}

/// Routing, allow and deny keys take a calling code, a longer prefix or a region (docs/providers/README.md); garbage is
/// refused at load naming the key. `countries_deny = [225]` (integers, as before regions) still loads.
#[test]
fn destination_keys_take_three_forms_and_name_their_key() {
    let load = |vars: &[(&str, &str)]| {
        Config::load_from(None, vars.iter().map(|(k, v)| (k.to_string(), v.to_string()))).map_err(|e| e.to_string())
    };
    let c = load(&[
        (
            "HERALD_ROUTING__SMS",
            r#"{"1" = ["outbox"], "JM" = ["outbox"], "1876" = ["outbox"], "gg" = ["outbox"]}"#,
        ),
        ("HERALD_THROTTLE__COUNTRIES_ALLOW", r#"[1, "44", "KZ", "1876"]"#),
        ("HERALD_THROTTLE__COUNTRIES_DENY", r#"["JM", 225]"#),
        ("HERALD_FRAUD__ALLOW_COUNTRIES", r#"["GG", "4478", 33]"#),
    ])
    .unwrap();
    let shown = |list: &[Destination]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(
        c.routing.sms.keys().map(ToString::to_string).collect::<Vec<_>>(),
        ["1", "GG", "JM", "1876"]
    );
    assert_eq!(shown(&c.throttle.countries_allow), ["1", "44", "KZ", "1876"]);
    assert_eq!(shown(&c.throttle.countries_deny), ["JM", "225"]);
    assert_eq!(shown(&c.fraud.allow_countries), ["GG", "4478", "33"]);
    let keys: Vec<String> = c.chains().into_iter().map(|(k, _, _)| k).collect();
    assert!(keys.contains(&"routing.sms.JM".to_owned()) && keys.contains(&"routing.sms.1876".to_owned()));
    // Written back the way it was read.
    assert_eq!(Config::load_from(None, c.to_env().unwrap()).unwrap(), c);

    let cases: &[(&str, &str, &str)] = &[
        ("HERALD_ROUTING__SMS", r#"{"ZZ" = ["outbox"]}"#, "routing.sms.ZZ"),
        ("HERALD_ROUTING__VOICE", r#"{"UK" = ["outbox"]}"#, "routing.voice.UK"),
        ("HERALD_ROUTING__SMS", r#"{"9991" = ["outbox"]}"#, "routing.sms.9991"),
        ("HERALD_ROUTING__SMS", r#"{"1-876" = ["outbox"]}"#, "routing.sms.1-876"),
        (
            "HERALD_THROTTLE__COUNTRIES_DENY",
            r#"["XX"]"#,
            "throttle.countries_deny",
        ),
        (
            "HERALD_THROTTLE__COUNTRIES_ALLOW",
            r#"[999]"#,
            "throttle.countries_allow",
        ),
        ("HERALD_FRAUD__ALLOW_COUNTRIES", r#"["+44"]"#, "fraud.allow_countries"),
    ];
    for (var, value, key) in cases {
        let err = load(&[(var, value)]).expect_err(key);
        assert!(err.contains(key), "{var}={value}: {err}");
        assert!(
            err.contains("not a calling code, prefix or region"),
            "{var}={value}: {err}"
        );
    }
    // Two spellings of one destination: refused, not merged into one of the chains (failed before: `JM`'s
    // chain dropped without a word; outside attack F4).
    for routes in [
        r#"{JM = ["vonage"], jm = ["outbox"]}"#,
        r#"{gg = ["outbox"], Gg = ["outbox"]}"#,
    ] {
        let Err(err) = load(&[("HERALD_ROUTING__SMS", routes)]) else {
            panic!("{routes} accepted");
        };
        assert!(err.contains("routing.sms"), "{routes}: {err}");
    }
    let err = load(&[("HERALD_ROUTING__VOICE", r#"{JM = ["outbox"], jm = ["outbox"]}"#)]).unwrap_err();
    assert!(err.contains("two keys name the destination JM"), "{err}");
}

/// `notifyUrl` is the callback URL with the status token added to its query, percent-encoded.
#[test]
fn the_infobip_notify_url_carries_the_status_token() {
    let mut infobip = Config::default().infobip;
    assert_eq!(infobip.notify_url(), None);
    infobip.status_callback_url = Some("https://h.test/providers/infobip/status?a=1".parse().unwrap());
    infobip.status_token = Secret::new("t0k/en+");
    assert_eq!(
        infobip.notify_url().as_deref(),
        Some("https://h.test/providers/infobip/status?a=1&token=t0k%2Fen%2B")
    );
}

/// vonage, plivo and sns deliver SMS only: a chain naming one for voice or email stops start-up, naming the
/// chain's key, so the providers are never handed another message (`providers::sms_of`).
#[test]
fn sms_only_providers_in_a_voice_or_email_chain_are_refused_at_load_naming_the_chain() {
    for provider in ["vonage", "plivo", "sns"] {
        for (var, key) in [
            ("HERALD_CHANNELS__VOICE", "channels.voice"),
            ("HERALD_CHANNELS__EMAIL", "channels.email"),
            ("HERALD_ROUTING__VOICE", "routing.voice.44"),
        ] {
            let value = if var.starts_with("HERALD_ROUTING") {
                format!(r#"{{"44" = ["{provider}"]}}"#)
            } else {
                format!(r#"["{provider}"]"#)
            };
            let err = Config::load_from(None, [(var.to_owned(), value)])
                .unwrap_err()
                .to_string();
            let channel = key.split('.').nth(1).unwrap();
            assert!(
                err.contains(&format!("`{key}`: {provider} does not deliver {channel}")),
                "{var}: {err}"
            );
        }
    }
}

/// `amqp.prefetch` 0 would be AMQP's "no limit": refused at load in the words it always had.
#[test]
fn a_prefetch_of_zero_is_refused_at_load_naming_the_key() {
    let err = Config::load_from(None, [("HERALD_AMQP__PREFETCH".to_owned(), "0".to_owned())])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("invalid configuration: `amqp.prefetch`: must be at least 1"),
        "{err}"
    );
}

/// Issue 34: values that do not fit said it in Rust's words (`expected u16`), and the unknown-section list
/// nested backticks (``expected `one of `amqp`, …` ``). Still never the value.
#[test]
fn a_value_that_does_not_fit_is_said_in_an_operators_words() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[amqp]\nprefetch = \"abc\"\n",
            "`amqp.prefetch`: expected a whole number from 1 to 65535, got text (from TOML file)",
        ),
        (
            "[amqp]\nprefetch = 70000\n",
            "`amqp.prefetch`: expected a whole number from 1 to 65535, got a number outside that range",
        ),
        (
            "[throttle]\nipv6_prefix = \"abc\"\n",
            "`throttle.ipv6_prefix`: expected a whole number from 0 to 255, got text",
        ),
        (
            "[retry]\nschedule = \"1s 5s\"\n",
            "`retry.schedule`: expected a list, like [\"a\", \"b\"], got text",
        ),
        (
            "[nope]\nx = 1\n",
            "`nope`: unknown section, expected one of `amqp`, `state`, `http`,",
        ),
        (
            "[amqp]\nprefetc = 1\n",
            "`amqp.prefetc`: unknown key, expected one of `url`, `prefetch`,",
        ),
    ];
    for (toml, said) in cases {
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, toml).unwrap();
        let message = Config::load_from(Some(&path), no_env()).unwrap_err().to_string();
        assert!(message.contains(said), "{toml:?}: no `{said}` in: {message}");
        assert!(!message.contains("``") && !message.contains("`one of"), "{message}");
        assert!(!message.contains("abc"), "the value was printed: {message}");
    }
    let vars = [("HERALD_AMQP__PREFETCH".to_owned(), "512".to_owned())];
    assert_eq!(Config::load_from(None, vars).unwrap().amqp.prefetch.get(), 512);
}

/// `[workflows.<name>]` (docs/workflows.md): parsed into channels and waits, its env form round-trips, and
/// every bad table stops start-up naming its key, never the value.
#[test]
fn workflows_parse_and_a_bad_table_names_its_key() {
    use workflows::Until;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    std::fs::write(
        &path,
        "[workflows.otp]\nsteps = [{ channel = \"whatsapp\", wait = \"30s\" }, { channel = \"sms\", wait = \"45s\" }, \
         { channel = \"voice\" }]\nuntil = \"verified\"\n[workflows.mail]\nsteps = [{ channel = \"email\" }]\n",
    )
    .unwrap();
    let config = Config::load_from(Some(&path), no_env()).unwrap();
    let otp = &config.workflows["otp"];
    assert_eq!(otp.until, Until::Verified);
    assert_eq!(otp.len(), 3);
    let step = |n| otp.step(n).map(|s| (s.channel, s.wait()));
    assert_eq!(
        step(1),
        Some((Channel::Whatsapp, Some(std::time::Duration::from_secs(30))))
    );
    assert_eq!(step(3), Some((Channel::Voice, None)));
    assert_eq!((step(0), step(4)), (None, None));
    assert_eq!(config.workflows["mail"].until, Until::Delivered, "the default");
    let env = config.to_env().unwrap();
    assert_eq!(Config::load_from(None, env).unwrap(), config, "to_env round-trips");
    assert!(Config::default().workflows.is_empty());
    // As deploy/herald.example.toml writes it in the environment.
    let vars = [(
        "HERALD_WORKFLOWS__OTP".to_owned(),
        r#"{steps = [{channel = "whatsapp", wait = "30s"}, {channel = "sms"}]}"#.to_owned(),
    )];
    let from_env = Config::load_from(None, vars).unwrap();
    assert_eq!(from_env.workflows["otp"].len(), 2);

    let steps = |s: &str| format!("[workflows.otp]\nsteps = [{s}]\n");
    let cases = [
        (steps(""), "`workflows.otp.steps`: needs at least one step"),
        (
            steps("{ channel = \"fax\", wait = \"1s\" }, { channel = \"sms\" }"),
            "unknown value, expected one of `sms`, `voice`, `email`, `whatsapp`",
        ),
        (
            steps("{ channel = \"sms\", wait = \"abc\" }, { channel = \"voice\" }"),
            "is not a duration",
        ),
        (
            steps("{ channel = \"sms\", wait = \"10s\" }, { channel = \"voice\", wait = \"10s\" }"),
            "`workflows.otp.steps[1].wait`: the last step has no wait",
        ),
        (
            steps("{ channel = \"sms\", wait = \"10s\" }, { channel = \"sms\" }, { channel = \"voice\" }"),
            "`workflows.otp.steps[1].wait`: required on every step but the last",
        ),
        (
            steps("{ channel = \"sms\", wait = \"2h\" }, { channel = \"voice\" }"),
            "`workflows.otp.steps[0].wait`: must be between 1s and 1h",
        ),
        (
            "[workflows.otp]\nsteps = [{ channel = \"sms\" }]\nuntil = \"abc\"\n".into(),
            "unknown value, expected one of `delivered`, `verified`",
        ),
        (
            "[workflows.\"o t p\"]\nsteps = [{ channel = \"sms\" }]\n".into(),
            "`workflows`: a workflow name must be",
        ),
    ];
    for (toml, said) in cases {
        std::fs::write(&path, &toml).unwrap();
        let message = Config::load_from(Some(&path), no_env()).unwrap_err().to_string();
        assert!(message.contains(said), "{toml:?}: no `{said}` in: {message}");
        assert!(
            !message.contains("abc") && !message.contains("fax"),
            "the value was printed: {message}"
        );
    }
    // A bad value names where it is too (figment's path of the table).
    std::fs::write(
        &path,
        steps("{ channel = \"sms\", wait = \"abc\" }, { channel = \"voice\" }"),
    )
    .unwrap();
    let message = Config::load_from(Some(&path), no_env()).unwrap_err().to_string();
    assert!(message.contains("workflows.otp"), "{message}");
}
