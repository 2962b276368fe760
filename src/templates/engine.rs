//! Renders a job with the templates in use: the registries, the locale lookup, the variables a
//! template sees (voice digits and pauses included).

use std::collections::{BTreeSet, HashMap, HashSet};

use handlebars::Handlebars;
use handlebars::template::Template;
use serde_json::{Map, Value, json};

use super::caps::{self, Cap, Overrun};
use super::twiml::PAUSE;
use super::{Part, Rendered, TemplateError, template_name};
use crate::job::{Channel, Job, Locale};

/// The variables every job has (docs/templates.md); job `vars` add their own keys.
pub(super) const BUILT_IN: &[&str] = &[
    "code",
    "friendly_name",
    "locale",
    "action",
    "channel",
    "message_type",
    "user_id",
    "tenant",
    "vars",
    "pause",
];

/// A registry for one part, in strict mode. Text parts (sms, voice, email subject and text) are not
/// escaped; the HTML part escapes every variable.
pub(super) fn registry(part: Part) -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    // Writes its arguments to the process log. (The crate's own debug logging of helper arguments is
    // compiled out by its `no_logging` feature, see Cargo.toml.)
    hb.unregister_helper("log");
    if part != Part::Html {
        hb.register_escape_fn(handlebars::no_escape);
    }
    hb
}

/// Compiled templates, each checked before it was registered.
pub(super) struct Engine {
    text: Handlebars<'static>,
    html: Handlebars<'static>,
    names: HashSet<String>,
    /// Job variables the templates print (declared in `templates.vars` or found in a template): a job
    /// without one renders it empty instead of failing strict mode.
    vars: BTreeSet<String>,
}

impl Engine {
    /// No templates yet; `declared` are the variables of `templates.vars`.
    pub(super) fn new(declared: BTreeSet<String>) -> Engine {
        Engine {
            text: registry(Part::Body),
            html: registry(Part::Html),
            names: HashSet::new(),
            vars: declared,
        }
    }

    /// Adds a checked template, and the job variables it prints.
    pub(super) fn register(&mut self, name: String, part: Part, template: Template, vars: BTreeSet<String>) {
        let hb = if part == Part::Html {
            &mut self.html
        } else {
            &mut self.text
        };
        hb.register_template(&name, template);
        self.vars.extend(vars);
        self.names.insert(name);
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Renders every part the job's channel needs, each from the job's locale, its language or
    /// `default_locale`, whichever has the part first.
    pub(super) fn render(&self, job: &Job, default_locale: &Locale) -> Result<Rendered, TemplateError> {
        CONTEXT.with_borrow_mut(|ctx| {
            fill(ctx.data_mut(), job, default_locale, &self.vars);
            let rendered = self.render_with(ctx, job, default_locale);
            // The code does not stay in the thread's context once the job is rendered.
            if let Some(Value::String(code)) = ctx.data_mut().get_mut("code") {
                code.clear();
            }
            rendered
        })
    }

    fn render_with(
        &self,
        ctx: &mut handlebars::Context,
        job: &Job,
        default_locale: &Locale,
    ) -> Result<Rendered, TemplateError> {
        let locale = job.locale.as_ref().unwrap_or(default_locale);
        let mut texts = HashMap::new();
        let mut names = Vec::with_capacity(3);
        let mut language = locale;
        for &part in Part::of(job.channel) {
            let (name, own) = locale
                .fallbacks()
                .map(|l| (l, true))
                .chain(std::iter::once((default_locale.as_str(), false)))
                .map(|(l, own)| (template_name(job.channel, job.action, l, part), own))
                .find(|(n, _)| self.names.contains(n))
                .ok_or_else(|| TemplateError::Missing(template_name(job.channel, job.action, "*", part)))?;
            // A part is told the language it is written in (`<html lang="{{locale}}">`): the job's locale
            // for its own or its language's template, the default locale's for the one it fell back to.
            let told = if own { locale } else { default_locale };
            if let Some(Value::String(s)) = ctx.data_mut().get_mut("locale") {
                s.clear();
                s.push_str(told.as_str());
            }
            if !own {
                // Voice, the one channel that has a language, has one part.
                language = default_locale;
            }
            let hb = if part == Part::Html { &self.html } else { &self.text };
            // Bounded: a template whose output multiplies with the job's vars stops at the bound.
            let cap = Cap::of(job.channel, part);
            let text = caps::render(hb, &name, ctx, cap).map_err(|e| match e {
                caps::Failed::Stopped => TemplateError::TooLong {
                    name: name.clone(),
                    overrun: Overrun { cap, size: None },
                },
                caps::Failed::Render(e) => TemplateError::render(name.clone(), e),
            })?;
            texts.insert(part, text);
            names.push((part, name));
        }
        let rendered = Rendered::from_parts(
            job.channel,
            |part| texts.remove(&part).unwrap_or_default(),
            language.clone(),
        );
        match caps::oversized(&rendered, default_locale) {
            None => Ok(rendered),
            Some((part, overrun)) => Err(TemplateError::TooLong {
                name: names
                    .into_iter()
                    .find(|(p, _)| *p == part)
                    .map(|(_, name)| name)
                    .unwrap_or_default(),
                overrun,
            }),
        }
    }
}

thread_local! {
    /// Each thread's rendering context, refilled in place for every job by [`fill`]: built afresh (a JSON map
    /// of a dozen keys, an allocation for each key and value) and dropped, it cost 10k of the 134k
    /// instructions of an outbox job (BENCHMARKS.md, sixth session).
    static CONTEXT: std::cell::RefCell<handlebars::Context> = std::cell::RefCell::new(handlebars::Context::null());
}

/// Makes `data` the variables a template sees for this job (docs/templates.md): each job var, under `vars` and at
/// the top level (where a built-in name wins), and the built-ins. Reuses the keys and the strings' room
/// `data` holds from the job before.
fn fill(data: &mut Value, job: &Job, default_locale: &Locale, var_names: &BTreeSet<String>) {
    if !data.is_object() {
        *data = Value::Object(Map::new());
    }
    let Value::Object(map) = data else {
        return;
    };
    // A job's vars are top-level names too: the last job's go, built-in names stay to be overwritten.
    if map.len() > BUILT_IN.len() {
        map.retain(|k, _| BUILT_IN.contains(&k.as_str()));
    }
    let mut vars = match map.remove("vars") {
        Some(Value::Object(vars)) => vars,
        _ => Map::new(),
    };
    vars.clear();
    for name in var_names {
        vars.insert(name.clone(), Value::String(String::new()));
    }
    for (k, v) in &job.vars {
        vars.insert(k.clone(), Value::String(v.clone()));
    }
    for (k, v) in &vars {
        if !BUILT_IN.contains(&k.as_str()) {
            map.insert(k.clone(), v.clone());
        }
    }
    map.insert("vars".into(), Value::Object(vars));
    let set = |map: &mut Map<String, Value>, key: &str, value: &str| match map.get_mut(key) {
        Some(Value::String(s)) => {
            s.clear();
            s.push_str(value);
        }
        _ => {
            map.insert(key.to_owned(), Value::String(value.to_owned()));
        }
    };
    match job.channel {
        Channel::Voice => set(map, "code", &job.code.spoken()),
        _ => set(map, "code", job.code.expose()),
    }
    let friendly_name = job.friendly_name.as_deref().unwrap_or_default();
    set(map, "friendly_name", friendly_name);
    set(map, "locale", job.locale.as_ref().unwrap_or(default_locale).as_str());
    set(map, "action", job.action.as_str());
    set(map, "channel", job.channel.as_str());
    set(map, "message_type", job.channel.as_str());
    set(map, "user_id", &job.user_id);
    match map.get_mut("tenant") {
        Some(Value::Object(tenant)) if tenant.len() == 1 => set(tenant, "friendly_name", friendly_name),
        _ => {
            map.insert("tenant".into(), json!({ "friendly_name": friendly_name }));
        }
    }
    set(map, "pause", if job.channel == Channel::Voice { PAUSE } else { " " });
}

/// The variables a template sees (docs/templates.md), Auth0 names included: [`fill`] on an empty context.
pub(super) fn context(job: &Job, default_locale: &Locale, var_names: &BTreeSet<String>) -> Value {
    let mut data = Value::Null;
    fill(&mut data, job, default_locale, var_names);
    data
}

#[cfg(test)]
mod tests {
    use super::super::Templates;
    use super::super::tests::{job, load_with, shipped, write};
    use super::*;
    use crate::job::Action;

    /// The variables as built afresh, key by key, before [`fill`] reused them: the oracle `fill` is held to.
    fn fresh_context(job: &Job, default_locale: &Locale, var_names: &BTreeSet<String>) -> Value {
        let mut map = Map::new();
        let mut vars = Map::new();
        // Job vars first, so that the built-in names below win on a collision.
        for name in var_names {
            vars.insert(name.clone(), Value::String(String::new()));
        }
        for (k, v) in &job.vars {
            vars.insert(k.clone(), Value::String(v.clone()));
        }
        for (k, v) in &vars {
            map.insert(k.clone(), v.clone());
        }
        let friendly_name = job.friendly_name.clone().unwrap_or_default();
        let code = match job.channel {
            Channel::Voice => job.code.spoken(),
            _ => job.code.expose().to_owned(),
        };
        map.insert("code".into(), code.into());
        map.insert("friendly_name".into(), friendly_name.clone().into());
        map.insert(
            "locale".into(),
            job.locale.as_ref().unwrap_or(default_locale).as_str().into(),
        );
        map.insert("action".into(), job.action.as_str().into());
        map.insert("channel".into(), job.channel.as_str().into());
        map.insert("message_type".into(), job.channel.as_str().into());
        map.insert("user_id".into(), job.user_id.clone().into());
        map.insert("tenant".into(), json!({ "friendly_name": friendly_name }));
        map.insert("vars".into(), Value::Object(vars));
        map.insert(
            "pause".into(),
            if job.channel == Channel::Voice { PAUSE } else { " " }.into(),
        );
        Value::Object(map)
    }

    /// A job on `channel` with `code` and `locale`, and `extra`'s fields set over the rest.
    fn job_with(channel: &str, code: &str, locale: &str, extra: serde_json::Value) -> Job {
        let to = if channel == "email" {
            "a@b.example"
        } else {
            "+14155550123"
        };
        let mut body =
            json!({"id": "j", "channel": channel, "to": to, "code": code, "user_id": "u1", "locale": locale});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        Job::from_json(body.to_string().as_bytes()).unwrap()
    }

    /// The context refilled in place is, job after job, the context built afresh: whatever the last job
    /// left (its vars, a var named like a built-in, a voice code, no friendly name, declared names).
    #[test]
    fn a_refilled_context_is_the_context_of_its_job() {
        let en = Locale::parse("en").unwrap();
        let with = |channel: &str, extra: serde_json::Value| job_with(channel, "482913", "de", extra);
        let jobs = [
            with(
                "sms",
                json!({"friendly_name": "Acme", "vars": {"team": "blue", "brand": "x"}}),
            ),
            with(
                "voice",
                json!({"vars": {"code": "forged", "tenant": "t", "vars": "v", "pause": "p"}}),
            ),
            with("email", json!({"friendly_name": "Other", "locale": "fr-CA"})),
            with("sms", json!({})),
            with("voice", json!({"friendly_name": "Acme", "vars": {"team": "red"}})),
        ];
        let declared: [BTreeSet<String>; 2] = [BTreeSet::new(), ["team".to_owned(), "zone".to_owned()].into()];
        let mut data = Value::Null;
        for names in &declared {
            for (i, job) in jobs.iter().chain(jobs.iter().rev()).enumerate() {
                fill(&mut data, job, &en, names);
                assert_eq!(data, fresh_context(job, &en, names), "job {i}, declared {names:?}");
                assert_eq!(context(job, &en, names), data, "job {i}, declared {names:?}");
            }
        }
    }

    /// End to end on one thread: each job renders what it renders on a fresh thread, whatever the thread
    /// rendered before (other vars, vars named like built-ins, a render error, a reload with other declared
    /// names, voice then sms), with templates that print every variable there is (`{{#each this}}`,
    /// `{{#each vars}}`, `lookup`); and once rendered, the thread's context holds no code. SMS and voice print
    /// the lengths of the values their `each` walks: all of them at once would be over their caps.
    #[test]
    fn a_jobs_message_does_not_depend_on_what_its_thread_rendered_before() {
        let named = "{{#if vars.code}}{{vars.code}}{{/if}}|{{lookup this \"team\"}}|{{#each tenant}}{{@key}}={{this}}{{/each}}|";
        let everything = format!(
            "{{{{#each this}}}}{{{{@key}}}}={{{{this}}}};{{{{/each}}}}|{{{{#each vars}}}}{{{{@key}}}}={{{{this}}}};{{{{/each}}}}|{named}"
        );
        let lengths = format!(
            "{{{{#each this}}}}{{{{@key}}}}={{{{len this}}}};{{{{/each}}}}|{{{{#each vars}}}}{{{{@key}}}}={{{{len this}}}};{{{{/each}}}}|{named}"
        );
        // A runtime error that the check's sample job does not reach: strict mode, key missing.
        let boom = "{{#if (eq team \"boom\")}}{{lookup tenant \"nothere\"}}{{/if}}";
        let dir = shipped();
        for action in ["second-factor-authentication", "enrollment"] {
            write(
                dir.path(),
                &format!("sms/{action}.en.hbs"),
                &format!("{lengths}{boom}{{{{code}}}}"),
            );
            write(
                dir.path(),
                &format!("voice/{action}.en.hbs"),
                &format!("{lengths}{{{{pause}}}}{{{{code}}}}"),
            );
            write(
                dir.path(),
                &format!("email/{action}.en.txt.hbs"),
                &format!("{everything}{{{{code}}}}"),
            );
            write(
                dir.path(),
                &format!("email/{action}.en.html.hbs"),
                &format!("{everything}{{{{code}}}}"),
            );
        }
        let en = Locale::parse("en").unwrap();
        let before = Templates::load_with_vars(dir.path(), &en, &["team".to_owned()]).unwrap();
        let names = ["team", "zone", "code"].map(str::to_owned);
        let after = Templates::load_with_vars(dir.path(), &en, &names).unwrap();
        let with = |channel: &str, code: &str, extra: serde_json::Value| job_with(channel, code, "en", extra);
        let jobs = [
            with(
                "sms",
                "482913",
                json!({"friendly_name": "Acme", "vars": {"team": "red", "brand": "x", "code": "f"}}),
            ),
            with(
                "voice",
                "739146",
                json!({"vars": {"tenant": "t", "vars": "v", "pause": "p", "zone": "z"}}),
            ),
            with(
                "sms",
                "555111",
                json!({"friendly_name": "Boom", "vars": {"team": "boom"}}),
            ),
            with(
                "email",
                "902211",
                json!({"friendly_name": "Other", "action": "enrollment"}),
            ),
            with("sms", "118822", json!({})),
        ];
        let fresh = |t: &Templates, job: &Job| {
            std::thread::scope(|s| s.spawn(|| t.render(job).map_err(|e| e.to_string())).join()).unwrap()
        };
        let mut errors = 0;
        for round in 0..3 {
            for (i, job) in jobs.iter().enumerate() {
                for (name, t) in [("before", &before), ("after", &after)] {
                    let here = t.render(job).map_err(|e| e.to_string());
                    errors += usize::from(here.is_err());
                    // Not assert_eq: a rendered message holds the code.
                    assert!(here == fresh(t, job), "round {round}, job {i}, templates {name}");
                    CONTEXT.with_borrow(|ctx| {
                        assert_eq!(ctx.data()["code"], "", "job {i}: the code stays in the context");
                    });
                }
            }
        }
        assert_eq!(errors, 6, "the boom job fails to render, each round, with each set");
    }

    /// At send, a message over its channel's cap is a `TooLong` error naming the template and the size,
    /// never the text; a render that passes its bound is stopped there, not built whole.
    #[test]
    fn a_message_over_its_channels_cap_is_refused_at_send() {
        let (_dir, t) = load_with(&[
            ("sms/second-factor-authentication.en.hbs", "{{a}}{{b}} {{code}}"),
            // Passes the checks (their jobs have no var or 32), and walks the vars of a job with 29 (and the
            // other templates' `a` and `b`).
            (
                "sms/enrollment.en.hbs",
                "{{code}}{{#if (eq (len vars) 31)}}{{#each vars}}{{this}}{{/each}}{{/if}}",
            ),
            (
                "voice/second-factor-authentication.en.hbs",
                "{{a}}{{pause}}{{b}}{{pause}}{{code}}",
            ),
            ("email/second-factor-authentication.en.subject.hbs", "{{a}}"),
        ]);
        let sms = |action: Action, vars: &[(&str, usize)]| {
            let mut j = job("sms", "+14155550123", "en");
            j.action = action;
            j.vars = vars.iter().map(|(k, n)| ((*k).to_owned(), "y".repeat(*n))).collect();
            j
        };
        let sfa = Action::SecondFactorAuthentication;
        // 793 + 800 + " 482913": 1600 characters, then 1601.
        assert!(
            matches!(t.render(&sms(sfa, &[("a", 793), ("b", 800)])), Ok(Rendered::Sms { body }) if body.len() == 1600)
        );
        let too_long = t.render(&sms(sfa, &[("a", 794), ("b", 800)])).unwrap_err();
        assert_eq!(
            too_long.to_string(),
            "template sms/second-factor-authentication.en: renders 1601 characters, more than the 1600 \
             characters an SMS may have (Twilio's limit)"
        );
        assert!(matches!(too_long, TemplateError::TooLong { .. }));
        let many: Vec<(String, usize)> = (0..29).map(|i| (format!("v{i}"), 1024)).collect();
        let many: Vec<(&str, usize)> = many.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        let stopped = t.render(&sms(Action::Enrollment, &many)).unwrap_err().to_string();
        assert_eq!(
            stopped,
            "template sms/enrollment.en: renders more than the 1600 characters an SMS may have (Twilio's \
             limit) (the render was stopped at 6400 bytes)"
        );
        assert!(t.render(&sms(Action::Enrollment, &many[..28])).is_ok());
        // Voice: the TwiML, which says the text twice.
        let mut voice = job("voice", "+14155550123", "en");
        voice.action = sfa;
        voice.vars = [("a".to_owned(), "z".repeat(1024)), ("b".to_owned(), "z".repeat(1024))].into();
        let e = t.render(&voice).unwrap_err().to_string();
        assert!(
            e.starts_with("template voice/second-factor-authentication.en: renders 4"),
            "{e}"
        );
        assert!(e.ends_with("characters, more than the 4000 characters a call's TwiML may have (Twilio's limit)"));
        // Each <Say> names its voice and language (providers::twilio): a little less room for the text.
        voice.vars.insert("b".to_owned(), "z".repeat(700));
        assert!(t.render(&voice).is_ok());
        let mut email = job("email", "a@b.example", "en");
        email.action = sfa;
        email.vars = [("a".to_owned(), "s".repeat(999))].into();
        let e = t.render(&email).unwrap_err().to_string();
        assert_eq!(
            e,
            "template email/second-factor-authentication.en.subject: renders 999 characters, more than the 998 \
             characters an email subject may have"
        );
        for e in [too_long.to_string(), stopped, e] {
            assert!(!e.contains("482913") && !e.contains("yyy") && !e.contains("sss"), "{e}");
        }
    }

    #[test]
    fn locale_falls_back_to_language_then_default() {
        let (_dir, t) = load_with(&[
            ("sms/second-factor-authentication.es.hbs", "ES {{code}}"),
            ("sms/second-factor-authentication.es-AR.hbs", "AR {{code}}"),
        ]);
        let body = |locale: &str| match t.render(&job("sms", "+14155550123", locale)).unwrap() {
            Rendered::Sms { body } => body,
            _ => unreachable!(),
        };
        assert_eq!(body("es-AR"), "AR 482913");
        assert_eq!(body("es-MX"), "ES 482913");
        assert_eq!(body("ja"), "482913 is your verification code for Acme.");
    }

    #[test]
    fn voice_reads_digits_and_pauses() {
        let (_dir, t) = load_with(&[("voice/second-factor-authentication.en.hbs", "Code {{pause}}{{code}}")]);
        let Rendered::Voice { text, .. } = t.render(&job("voice", "+14155550123", "en")).unwrap() else {
            panic!()
        };
        assert_eq!(text, format!("Code {PAUSE}4. 8. 2. 9. 1. 3"));
    }

    #[test]
    fn html_escapes_and_text_does_not() {
        let (_dir, t) = load_with(&[
            ("email/enrollment.en.html.hbs", "<p>{{friendly_name}}</p>"),
            ("email/enrollment.en.txt.hbs", "{{friendly_name}}"),
        ]);
        let mut j = job("email", "a@b.co", "en");
        j.action = Action::Enrollment;
        j.friendly_name = Some("A&B <x>".into());
        let Rendered::Email { html, text, .. } = t.render(&j).unwrap() else {
            panic!()
        };
        assert_eq!(html, "<p>A&amp;B &lt;x&gt;</p>");
        assert_eq!(text, "A&B <x>");
    }

    /// Voice says the text in the language of the template it came from: a job without a locale (or
    /// with one that has no template) gets the default locale's text, so the default locale's voice.
    #[test]
    fn voice_language_is_the_templates_locale() {
        let dir = shipped();
        write(
            dir.path(),
            "voice/second-factor-authentication.fr.hbs",
            "Votre code {{code}}",
        );
        write(dir.path(), "voice/enrollment.fr.hbs", "Votre code {{code}}");
        write(dir.path(), "sms/second-factor-authentication.fr.hbs", "{{code}}");
        write(dir.path(), "sms/enrollment.fr.hbs", "{{code}}");
        for action in ["second-factor-authentication", "enrollment"] {
            for part in [".subject", ".txt", ".html"] {
                write(dir.path(), &format!("email/{action}.fr{part}.hbs"), "{{code}}");
            }
        }
        let t = Templates::load(dir.path(), &Locale::parse("fr").unwrap()).unwrap();
        let language = |locale: Option<&str>| {
            let mut j = job("voice", "+14155550123", "en");
            j.locale = locale.map(|l| Locale::parse(l).unwrap());
            match t.render(&j).unwrap() {
                Rendered::Voice { language, .. } => language.as_str().to_owned(),
                _ => unreachable!(),
            }
        };
        assert_eq!(language(None), "fr");
        assert_eq!(language(Some("ja")), "fr", "no ja template: French text");
        assert_eq!(language(Some("fr-CA")), "fr-CA");
        assert_eq!(language(Some("en-GB")), "en-GB");
    }

    /// An email with `locale = "fr"` rendered the English template as `<html lang="fr">` (issue 34): each part
    /// is told the locale of the template it uses, as a call's language is.
    #[test]
    fn each_part_is_told_the_locale_of_the_template_it_uses() {
        let html = |t: &Templates, locale: &str| match t.render(&job("email", "jane@example.com", locale)).unwrap() {
            Rendered::Email { html, text, .. } => (html, text),
            _ => unreachable!(),
        };
        let (_dir, t) = load_with(&[]);
        let (fr, _) = html(&t, "fr");
        assert!(fr.contains(r#"<html lang="en">"#), "{fr:.80}");
        let (_dir, t) = load_with(&[
            ("email/second-factor-authentication.fr.subject.hbs", "Code {{locale}}"),
            ("email/second-factor-authentication.fr.txt.hbs", "{{locale}} {{code}}"),
            (
                "email/second-factor-authentication.fr.html.hbs",
                r#"<html lang="{{locale}}">{{code}}</html>"#,
            ),
        ]);
        assert_eq!(html(&t, "fr").0, r#"<html lang="fr">482913</html>"#);
        // A regional locale rendered by its language's template keeps its region, as a call does.
        assert_eq!(
            html(&t, "fr-CA"),
            (r#"<html lang="fr-CA">482913</html>"#.into(), "fr-CA 482913".into())
        );
        assert!(html(&t, "de").0.contains(r#"<html lang="en">"#));
        // The next job on this thread is told its own again.
        let (_dir, t) = load_with(&[("sms/second-factor-authentication.fr.hbs", "{{locale}} {{code}}")]);
        for (locale, told) in [("ja", None), ("fr-BE", Some("fr-BE 482913")), ("fr", Some("fr 482913"))] {
            let Rendered::Sms { body } = t.render(&job("sms", "+14155550123", locale)).unwrap() else {
                unreachable!()
            };
            if let Some(told) = told {
                assert_eq!(body, told);
            } else {
                assert!(!body.contains("ja"), "{body}");
            }
        }
    }
}
