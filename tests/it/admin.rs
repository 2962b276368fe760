//! The template admin API: auth, read/replace/revert with ETags, validation with positions, preview
//! measures, audit events, bad paths, replicas sharing the directory, and every answer checked against
//! docs/admin-api.yaml.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::helpers;
use crate::helpers::{TestApp, job};
use herald::config::Secret;
use reqwest::StatusCode;
use serde_json::{Value, json};

const TOKEN: &str = "t0ps3cret-admin-token";

/// A private copy of the shipped templates, so edits stay in the test.
fn templates_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    helpers::copy_dir(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("templates"), dir.path());
    dir
}

async fn admin_app(dir: &Path) -> TestApp {
    let dir = dir.to_owned();
    TestApp::spawn(move |c| {
        c.templates.dir = dir;
        c.admin.token = Secret::new(TOKEN);
        c.admin.token_name = "ops-team".into();
    })
    .await
}

/// Validates `value` against a schema of docs/admin-api.yaml.
fn conforms(value: &Value, schema: &str) {
    let doc: Value = serde_yaml::from_str(include_str!("../../docs/admin-api.yaml")).unwrap();
    let mut components = doc["components"].clone();
    nullable_to_json_schema(&mut components);
    let schema = json!({ "$ref": format!("#/components/schemas/{schema}"), "components": components });
    let validator = jsonschema::validator_for(&schema).expect("docs/admin-api.yaml schemas compile");
    let errors: Vec<String> = validator.iter_errors(value).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "answer does not match {schema}: {errors:?}\n{value}");
}

/// OpenAPI 3.0's `nullable: true` is `type: [T, "null"]` in JSON Schema.
fn nullable_to_json_schema(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.remove("nullable") == Some(Value::Bool(true))
                && let Some(Value::String(t)) = map.get("type").cloned()
            {
                map.insert("type".into(), json!([t, "null"]));
            }
            map.values_mut().for_each(nullable_to_json_schema);
        }
        Value::Array(items) => items.iter_mut().for_each(nullable_to_json_schema),
        _ => {}
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(app: &TestApp) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: app.url(""),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> (StatusCode, Option<String>, Value) {
        let r = rb.send().await.unwrap();
        let status = r.status();
        let etag = r.headers().get("etag").map(|v| v.to_str().unwrap().to_owned());
        let body = r.json::<Value>().await.unwrap_or(Value::Null);
        (status, etag, body)
    }
}

#[tokio::test]
async fn with_no_token_configured_every_admin_route_is_401() {
    let app = TestApp::spawn(|_| {}).await;
    let http = reqwest::Client::new();
    for (method, path) in [
        ("GET", "/admin/"),
        ("GET", "/admin/api/templates"),
        ("GET", "/admin/api/templates/sms/enrollment/en"),
        ("PUT", "/admin/api/templates/sms/enrollment/en"),
        ("DELETE", "/admin/api/templates/sms/enrollment/en"),
        ("POST", "/admin/api/preview"),
    ] {
        let r = http
            .request(method.parse().unwrap(), app.url(path))
            .bearer_auth("")
            .json(&json!({"parts": {"body": "x"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path}");
    }
}

#[tokio::test]
async fn tokens_are_checked() {
    let dir = templates_copy();
    let app = admin_app(dir.path()).await;
    let http = reqwest::Client::new();
    let list = app.url("/admin/api/templates");
    assert_eq!(http.get(&list).send().await.unwrap().status(), 401);
    assert_eq!(http.get(&list).bearer_auth("wrong").send().await.unwrap().status(), 401);
    let r = http.get(&list).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    conforms(&body, "TemplateList");
    let templates = body["templates"].as_array().unwrap();
    assert_eq!(
        templates.len(),
        22,
        "2 email + 10 sms + 10 voice shipped templates: {body}"
    );
    assert!(
        templates
            .iter()
            .all(|t| t["is_default"] == true && t["has_default"] == true)
    );
    let page = http.get(app.url("/admin/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<title>herald · templates</title>"));
}

#[tokio::test]
async fn replace_is_validated_atomic_live_and_audited() {
    let dir = templates_copy();
    let mut app = admin_app(dir.path()).await;
    let c = Client::new(&app);
    let path = "/admin/api/templates/sms/second-factor-authentication/en";

    let (status, etag, body) = c.send(c.req(reqwest::Method::GET, path)).await;
    assert_eq!(status, 200);
    conforms(&body, "Template");
    let etag = etag.unwrap();
    assert_eq!(body["etag"], etag.as_str());

    // A syntax error: 400 with its line and column, nothing written.
    let before = std::fs::read_to_string(dir.path().join("sms/second-factor-authentication.en.hbs")).unwrap();
    let (status, _, body) = c
        .send(
            c.req(reqwest::Method::PUT, path)
                .json(&json!({"parts": {"body": "Your code:\n{{#if code}}{{code}}"}})),
        )
        .await;
    assert_eq!(status, 400);
    conforms(&body, "Error");
    assert!(body["problems"][0]["line"].as_u64().unwrap() >= 2, "{body}");
    assert!(body["problems"][0]["column"].is_u64(), "{body}");
    // A misspelt built-in variable: 400 as well.
    let (status, _, body) = c
        .send(
            c.req(reqwest::Method::PUT, path)
                .json(&json!({"parts": {"body": "Hi {{frendly_name}}: {{code}}"}})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unknown variable `frendly_name` (did you mean `friendly_name`?)"),
        "{body}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("sms/second-factor-authentication.en.hbs")).unwrap(),
        before
    );

    // A good edit with the right If-Match.
    let new_text = "Acme code: {{code}}. Do not share it.";
    let (status, new_etag, body) = c
        .send(
            c.req(reqwest::Method::PUT, path)
                .header("If-Match", &etag)
                .json(&json!({"parts": {"body": new_text}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    conforms(&body, "Saved");
    assert_eq!(body["is_default"], false);
    let new_etag = new_etag.unwrap();
    assert_ne!(new_etag, etag);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("sms/second-factor-authentication.en.hbs")).unwrap(),
        new_text
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sms"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());

    // The audit event: who, what, when, and no token.
    let audit = app.next_event(10).await;
    assert_eq!(audit["type"], "herald_template_changed");
    assert_eq!(audit["who"], "ops-team");
    assert_eq!(audit["change"], "replace");
    assert_eq!(
        (audit["channel"].as_str(), audit["locale"].as_str()),
        (Some("sms"), Some("en"))
    );
    assert_eq!(audit["etag"], new_etag.as_str());
    chrono::DateTime::parse_from_rfc3339(audit["date"].as_str().unwrap()).unwrap();
    assert!(!audit.to_string().contains(TOKEN));
    assert_audit_documented(&audit);

    // The next job uses it, without a restart.
    app.publish(&job("sms")).await;
    app.next_outcome(20).await;
    assert_eq!(app.outbox_lines()[0]["body"], "Acme code: 482913. Do not share it.");

    // A stale edit (the old ETag) is refused.
    let (status, _, body) = c
        .send(
            c.req(reqwest::Method::PUT, path)
                .header("If-Match", &etag)
                .json(&json!({"parts": {"body": "{{code}}"}})),
        )
        .await;
    assert_eq!(status, 412);
    conforms(&body, "Stale");

    // Revert: back to the shipped text.
    let (status, _, body) = c
        .send(c.req(reqwest::Method::DELETE, path).header("If-Match", &new_etag))
        .await;
    assert_eq!(status, 200);
    conforms(&body, "Template");
    assert_eq!(body["is_default"], true);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("sms/second-factor-authentication.en.hbs")).unwrap(),
        before
    );
    let audit = app.next_event(10).await;
    assert_eq!(audit["change"], "revert");
    assert_audit_documented(&audit);
}

/// An audit event matches the TemplateChangedEvent schema of docs/asyncapi.yaml.
fn assert_audit_documented(event: &Value) {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/asyncapi.yaml")).unwrap();
    let doc: Value = serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&doc).unwrap()).unwrap();
    let schema = json!({"$ref": "#/components/schemas/TemplateChangedEvent", "components": doc["components"]});
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let errors: Vec<String> = validator.iter_errors(event).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{event}");
}

#[tokio::test]
async fn a_new_locale_can_be_added_and_removed() {
    let dir = templates_copy();
    let mut app = admin_app(dir.path()).await;
    let c = Client::new(&app);
    let path = "/admin/api/templates/sms/second-factor-authentication/it";
    let (status, _, _) = c.send(c.req(reqwest::Method::GET, path)).await;
    assert_eq!(status, 404);
    let (status, _, body) = c
        .send(
            c.req(reqwest::Method::PUT, path)
                .json(&json!({"parts": {"body": "Il tuo codice è {{code}}"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["has_default"], false);
    let added = app.next_event(10).await;
    assert_eq!(
        (added["change"].as_str(), added["locale"].as_str()),
        (Some("replace"), Some("it"))
    );
    assert_audit_documented(&added);
    let mut j = job("sms");
    j["locale"] = "it-IT".into();
    app.publish(&j).await;
    app.next_outcome(20).await;
    assert_eq!(app.outbox_lines()[0]["body"], "Il tuo codice è 482913");
    let (status, _, body) = c.send(c.req(reqwest::Method::DELETE, path)).await;
    assert_eq!(status, 200);
    conforms(&body, "Removed");
    assert!(!dir.path().join("sms/second-factor-authentication.it.hbs").exists());
    // The revert removed it: no ETag left.
    let removed = app.next_event(10).await;
    assert_eq!(removed["change"], "revert");
    assert!(removed.get("etag").is_none(), "{removed}");
    assert_audit_documented(&removed);
}

#[tokio::test]
async fn preview_measures_sms_voice_and_email() {
    let dir = templates_copy();
    let app = admin_app(dir.path()).await;
    let c = Client::new(&app);
    let preview = |body: Value| c.send(c.req(reqwest::Method::POST, "/admin/api/preview").json(&body));

    let (status, _, body) = preview(json!({"channel": "sms", "parts": {"body": "{{code}} is your code"}})).await;
    assert_eq!(status, 200);
    conforms(&body, "Preview");
    assert_eq!(body["text"], "123456 is your code");
    assert_eq!(
        body["sms"],
        json!({"encoding": "GSM-7", "characters": 19, "units": 19, "segments": 1})
    );
    assert_eq!(body["warnings"], json!([]));

    let long = format!("{{{{code}}}} {}", "código ".repeat(12));
    let (_, _, body) = preview(json!({"channel": "sms", "locale": "es", "parts": {"body": long}})).await;
    conforms(&body, "Preview");
    assert_eq!(body["sms"]["encoding"], "UCS-2");
    assert_eq!(body["sms"]["segments"], 2);
    assert!(body["warnings"][0].as_str().unwrap().contains("2 segments"), "{body}");

    let (_, _, body) =
        preview(json!({"channel": "voice", "locale": "fr", "parts": {"body": "Code {{pause}}{{code}}"}})).await;
    conforms(&body, "Preview");
    assert!(
        body["voice"]["twiml"]
            .as_str()
            .unwrap()
            .contains("<Say voice=\"Polly.Celine\" language=\"fr-FR\">1. 2. 3. 4. 5. 6</Say>"),
        "{body}"
    );
    assert_eq!(body["voice"]["twiml_limit"], 4000);
    let (_, _, body) = preview(json!({"channel": "voice", "parts": {"body": "{{code}} ".repeat(100)}})).await;
    assert!(body["voice"]["twiml_length"].as_u64().unwrap() > 3000, "{body}");
    // Twilio refuses longer TwiML: such a template is refused, not warned about.
    let (status, _, body) = preview(json!({"channel": "voice", "parts": {"body": "{{code}} ".repeat(200)}})).await;
    assert_eq!(status, 400, "{body}");
    conforms(&body, "Error");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("more than the 4000 characters a call's TwiML may have"),
        "{body}"
    );

    let (_, _, body) = preview(json!({"channel": "email", "action": "enrollment", "parts": {
        "subject": "Code for {{friendly_name}}", "text": "Code {{code}}", "html": "<b>{{code}}</b> {{friendly_name}}"}}))
    .await;
    conforms(&body, "Preview");
    assert_eq!(
        body["email"],
        json!({"subject": "Code for Acme", "text": "Code 123456", "html": "<b>123456</b> Acme"})
    );

    let (status, _, body) = preview(json!({"channel": "email", "parts": {"subject": "x"}})).await;
    assert_eq!(status, 400, "every part of an email is needed");
    conforms(&body, "Error");
}

#[tokio::test]
async fn bad_paths_and_bodies_are_400_and_nothing_is_written_outside() {
    let dir = templates_copy();
    let app = admin_app(dir.path()).await;
    let c = Client::new(&app);
    let body = json!({"parts": {"body": "{{code}}"}});
    for path in [
        "/admin/api/templates/sms/enrollment/..%2F..%2Fetc",
        "/admin/api/templates/sms/enrollment/%2Ftmp%2Fx",
        "/admin/api/templates/sms/enrollment/en%00",
        "/admin/api/templates/sms/enrollment/not_a_locale!",
        "/admin/api/templates/fax/enrollment/en",
        "/admin/api/templates/sms/login/en",
        "/admin/api/templates/..%2Fsms/enrollment/en",
    ] {
        let (status, _, answer) = c.send(c.req(reqwest::Method::PUT, path).json(&body)).await;
        assert_eq!(status, 400, "{path}: {answer}");
        conforms(&answer, "Error");
    }
    let huge = json!({"parts": {"body": "x".repeat(100 * 1024)}});
    let (status, _, answer) = c
        .send(
            c.req(reqwest::Method::PUT, "/admin/api/templates/sms/enrollment/en")
                .json(&huge),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("larger than allowed"),
        "{answer}"
    );
    let (status, _, _) = c
        .send(
            c.req(reqwest::Method::PUT, "/admin/api/templates/sms/enrollment/en")
                .body("{not json")
                .header("content-type", "application/json"),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _, _) = c
        .send(
            c.req(reqwest::Method::PUT, "/admin/api/templates/sms/enrollment/en")
                .json(&json!({"parts": {"subject": "x"}})),
        )
        .await;
    assert_eq!(status, 400, "sms has no subject part");
    // Only the shipped files are in the directory and its parent is untouched.
    let mut found = Vec::new();
    for sub in ["sms", "voice", "email"] {
        found.extend(
            std::fs::read_dir(dir.path().join(sub))
                .unwrap()
                .map(|e| e.unwrap().file_name()),
        );
    }
    assert_eq!(found.len(), 26);
    // Besides the channel directories, at most herald's own lock file.
    let entries: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".herald.lock")
        .collect();
    assert_eq!(entries.len(), 3, "{entries:?}");
}

#[tokio::test]
async fn replicas_sharing_the_directory_pick_up_each_others_edits() {
    let dir = templates_copy();
    let first = admin_app(dir.path()).await;
    let mut second = admin_app(dir.path()).await;
    let c = Client::new(&first);
    let (status, _, _) = c
        .send(
            c.req(
                reqwest::Method::PUT,
                "/admin/api/templates/sms/second-factor-authentication/en",
            )
            .json(&json!({"parts": {"body": "Edited elsewhere: {{code}}"}})),
        )
        .await;
    assert_eq!(status, 200);
    // The other replica polls the directory: within seconds its jobs use the new text.
    for _ in 0..40 {
        second.publish(&job("sms")).await;
        second.next_outcome(20).await;
        if second.outbox_lines().last().unwrap()["body"] == "Edited elsewhere: 482913" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the second replica never used the edited template");
}

/// Issue #17: a recursive partial or thousands of nested blocks aborted the process with a stack
/// overflow. Now they are a 400 naming the construct, and herald goes on serving.
#[tokio::test]
async fn hostile_templates_are_a_400_and_herald_keeps_running() {
    let dir = templates_copy();
    let mut app = admin_app(dir.path()).await;
    let c = Client::new(&app);
    let path = "/admin/api/templates/sms/second-factor-authentication/en";
    let recursive = r#"{{#*inline "a"}}{{> a}}{{/inline}}{{> a}}"#;
    let deep = format!("{}{{{{code}}}}{}", "{{#if code}}".repeat(2000), "{{/if}}".repeat(2000));
    let deep_sub = format!(
        "{{{{code}}}}{{{{len {}code{}}}}}",
        "(len ".repeat(5000),
        ")".repeat(5000)
    );
    for (source, needle) in [
        (recursive, "inline partials"),
        ("{{> sms/enrollment.en}}{{code}}", "partials"),
        (deep.as_str(), "more than the 512 allowed"),
        (deep_sub.as_str(), "levels deep"),
        ("{{log code}}", "helper `log` is not available"),
    ] {
        let (status, _, body) = c
            .send(
                c.req(reqwest::Method::PUT, path)
                    .json(&json!({"parts": {"body": source}})),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        conforms(&body, "Error");
        assert!(body["error"].as_str().unwrap().contains(needle), "{body}");
        let (status, _, body) = c
            .send(
                c.req(reqwest::Method::POST, "/admin/api/preview")
                    .json(&json!({"channel": "sms", "parts": {"body": source}})),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains(needle), "{body}");
    }
    let health = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    app.publish(&job("sms")).await;
    app.next_outcome(20).await;
    assert_eq!(
        app.outbox_lines()[0]["body"],
        "482913 is your verification code for Acme."
    );
}

/// Issue 31: `{{#each ../vars}}` nested four deep passed preview and save (the sample job had no vars),
/// then a job with 32 vars sent a 1 MB Twilio request. A template whose output grows with the vars a job
/// carries is refused at save and preview, with why; nothing is written and the template in use stays.
#[tokio::test]
async fn a_template_whose_output_grows_with_the_jobs_vars_is_refused_at_save() {
    let dir = templates_copy();
    let mut app = admin_app(dir.path()).await;
    let c = Client::new(&app);
    let path = "/admin/api/templates/sms/second-factor-authentication/en";
    let file = dir.path().join("sms/second-factor-authentication.en.hbs");
    let before = std::fs::read_to_string(&file).unwrap();
    let four_deep = "{{code}} {{#each vars}}{{#each ../vars}}{{#each ../../vars}}{{#each ../../../vars}}{{this}}\
                     {{/each}}{{/each}}{{/each}}{{/each}}";
    for (channel, source, needle) in [
        ("sms", four_deep, "nested in more than 2 levels of `{{#each}}`"),
        (
            "sms",
            "{{code}} {{#each vars}}{{#each ../vars}}{{this}}{{/each}}{{/each}}",
            "its output grows with the vars a job carries: with 32 more vars of 480 bytes",
        ),
        (
            "sms",
            "{{code}} {{#each vars}}{{@key}}={{this}} {{/each}}",
            "more than the 1600 characters an SMS may have",
        ),
        (
            "voice",
            "{{pause}}{{code}} {{#each this}}{{this}}{{/each}}",
            "more than the 4000 characters a call's TwiML may have",
        ),
    ] {
        let (status, _, body) = c
            .send(
                c.req(
                    reqwest::Method::PUT,
                    &format!("/admin/api/templates/{channel}/second-factor-authentication/en"),
                )
                .json(&json!({"parts": {"body": source}})),
            )
            .await;
        assert_eq!(status, 400, "{source}: {body}");
        conforms(&body, "Error");
        assert!(body["error"].as_str().unwrap().contains(needle), "{body}");
        let (status, _, body) = c
            .send(
                c.req(reqwest::Method::POST, "/admin/api/preview")
                    .json(&json!({"channel": channel, "parts": {"body": source}})),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains(needle), "{body}");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before, "nothing was written");
    // Printing the vars it names, or only the names of all: saved.
    let (status, _, body) = c
        .send(
            c.req(reqwest::Method::PUT, path)
                .json(&json!({"parts": {"body": "{{code}} {{brand}} {{#each vars}}{{@key}} {{/each}}"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // The job of the attack, 32 vars as long as a job can carry, with the template saved.
    let mut j = job("sms");
    j["vars"] = (0..31).map(|i| (format!("v{i}"), json!("x".repeat(480)))).collect();
    j["vars"]["brand"] = json!("Acme");
    app.publish(&j).await;
    assert_eq!(app.next_outcome(20).await["type"], "gd_send_sms");
    let body = app.outbox_lines()[0]["body"].as_str().unwrap().to_owned();
    assert!(
        body.starts_with("482913 Acme ") && body.contains(" v30") && body.len() < 300,
        "{body}"
    );
}

/// Issue #17: `{{log code}}` printed the code; an sms or voice template without the code was accepted;
/// a URL in an SMS and a job var that is not declared are warnings.
#[tokio::test]
async fn templates_must_print_the_code_and_preview_warns_about_urls_and_job_vars() {
    let dir = templates_copy();
    let app = admin_app(dir.path()).await;
    let c = Client::new(&app);
    for channel in ["sms", "voice"] {
        let (status, _, body) = c
            .send(
                c.req(
                    reqwest::Method::PUT,
                    &format!("/admin/api/templates/{channel}/enrollment/en"),
                )
                .json(&json!({"parts": {"body": "Welcome to {{friendly_name}}!"}})),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("must print `{{code}}`"),
            "{body}"
        );
    }
    let (status, _, body) = c
        .send(
            c.req(reqwest::Method::POST, "/admin/api/preview").json(
                &json!({"channel": "sms", "parts": {"body": "{{code}} for {{brand}}: https://acme.test/verify"}}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    conforms(&body, "Preview");
    let warnings = body["warnings"].to_string();
    assert!(warnings.contains("contains a URL"), "{body}");
    assert!(warnings.contains("`brand` is not a built-in variable"), "{body}");
}

/// docs/templates.md: each key of `vars` is a variable, at the top level.
#[tokio::test]
async fn a_job_var_prints_at_the_top_level() {
    let dir = templates_copy();
    let mut app = admin_app(dir.path()).await;
    let c = Client::new(&app);
    let (status, _, body) = c
        .send(
            c.req(
                reqwest::Method::PUT,
                "/admin/api/templates/sms/second-factor-authentication/en",
            )
            .json(&json!({"parts": {"body": "{{brand}}: {{code}}"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    conforms(&body, "Saved");
    assert!(body["warnings"][0].as_str().unwrap().contains("`brand`"), "{body}");
    let mut j = job("sms");
    j["vars"] = json!({"brand": "Acme"});
    app.publish(&j).await;
    app.next_outcome(20).await;
    app.publish(&job("sms")).await;
    app.next_outcome(20).await;
    let bodies: Vec<Value> = app.outbox_lines().iter().map(|l| l["body"].clone()).collect();
    assert_eq!(bodies, [json!("Acme: 482913"), json!(": 482913")]);
}

/// Issue #17, admin API: PUT takes what GET returns and text/plain for one part; other content types
/// are 415; `bearer` in any case; the page cannot be framed.
#[tokio::test]
async fn put_takes_the_get_representation_or_text_and_names_the_content_types() {
    let dir = templates_copy();
    let app = admin_app(dir.path()).await;
    let c = Client::new(&app);
    let path = "/admin/api/templates/sms/enrollment/en";
    let (_, _, mut read) = c.send(c.req(reqwest::Method::GET, path)).await;
    read["parts"]["body"] = "Round trip {{code}}".into();
    let (status, etag, body) = c.send(c.req(reqwest::Method::PUT, path).json(&read)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["parts"]["body"], "Round trip {{code}}");
    // Sent again, its etag is stale now.
    let (status, _, body) = c.send(c.req(reqwest::Method::PUT, path).json(&read)).await;
    assert_eq!(status, 412, "{body}");
    read["etag"] = etag.unwrap().into();
    read["locale"] = "fr".into();
    let (status, _, body) = c.send(c.req(reqwest::Method::PUT, path).json(&read)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("`locale`"), "{body}");

    let (status, _, body) = c
        .send(
            c.req(reqwest::Method::PUT, path)
                .header("content-type", "text/plain; charset=utf-8")
                .body("Plain {{code}}"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("sms/enrollment.en.hbs")).unwrap(),
        "Plain {{code}}"
    );
    let (status, _, body) = c
        .send(
            c.req(reqwest::Method::PUT, "/admin/api/templates/email/enrollment/en")
                .header("content-type", "text/plain")
                .body("{{code}}"),
        )
        .await;
    assert_eq!(status, 415, "{body}");
    assert!(body["error"].as_str().unwrap().contains("application/json"), "{body}");
    for (route, method) in [
        (path, reqwest::Method::PUT),
        ("/admin/api/preview", reqwest::Method::POST),
    ] {
        let (status, _, body) = c
            .send(
                c.req(method, route)
                    .header("content-type", "application/xml")
                    .body("<parts/>"),
            )
            .await;
        assert_eq!(status, 415, "{route}: {body}");
        conforms(&body, "Error");
        assert!(body["error"].as_str().unwrap().contains("application/json"), "{body}");
    }

    let http = reqwest::Client::new();
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let r = http
            .get(app.url("/admin/api/templates"))
            .header("authorization", format!("{scheme} {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scheme}");
    }
    let page = http.get(app.url("/admin/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
}

/// Issue #17: a save is checked with the whole directory first (a broken file elsewhere is a 409 and
/// nothing is written, not "500 after writing"), and a disk that cannot be written is a 500, not 400.
#[tokio::test]
async fn a_save_beside_a_broken_file_is_409_and_a_write_error_is_500() {
    let dir = templates_copy();
    let app = admin_app(dir.path()).await;
    let c = Client::new(&app);
    std::fs::write(dir.path().join("sms/enrollment.de.hbs"), "{{#if code}}").unwrap();
    let path = "/admin/api/templates/sms/second-factor-authentication/it";
    let (status, _, body) = c
        .send(
            c.req(reqwest::Method::PUT, path)
                .json(&json!({"parts": {"body": "Codice {{code}}"}})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    conforms(&body, "Error");
    assert_eq!(body["problems"][0]["file"], "sms/enrollment.de.hbs", "{body}");
    assert!(!dir.path().join("sms/second-factor-authentication.it.hbs").exists());
    std::fs::remove_file(dir.path().join("sms/enrollment.de.hbs")).unwrap();

    // Root ignores permissions: a directory where herald writes its journal makes the write fail.
    std::fs::create_dir(dir.path().join(".herald.journal.tmp")).unwrap();
    let (status, _, body) = c
        .send(
            c.req(reqwest::Method::PUT, path)
                .json(&json!({"parts": {"body": "Codice {{code}}"}})),
        )
        .await;
    assert_eq!(status, 500, "{body}");
    conforms(&body, "Error");
    let (status, _, body) = c
        .send(c.req(
            reqwest::Method::DELETE,
            "/admin/api/templates/sms/second-factor-authentication/en",
        ))
        .await;
    assert_eq!(status, 500, "{body}");
}

/// Issue #17: a preview without a locale renders (and speaks) in templates.default_locale.
#[tokio::test]
async fn preview_without_a_locale_uses_the_default_locale() {
    let dir = templates_copy();
    for action in ["enrollment", "second-factor-authentication"] {
        for part in ["subject", "txt", "html"] {
            std::fs::copy(
                dir.path().join(format!("email/{action}.en.{part}.hbs")),
                dir.path().join(format!("email/{action}.fr.{part}.hbs")),
            )
            .unwrap();
        }
    }
    let path = dir.path().to_owned();
    let app = TestApp::spawn(move |c| {
        c.templates.dir = path;
        c.templates.default_locale = herald::job::Locale::parse("fr").unwrap();
        c.admin.token = Secret::new(TOKEN);
    })
    .await;
    let c = Client::new(&app);
    let (status, _, body) = c
        .send(
            c.req(reqwest::Method::POST, "/admin/api/preview")
                .json(&json!({"channel": "voice", "parts": {"body": "Code {{code}}"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    conforms(&body, "Preview");
    assert_eq!(body["locale"], "fr");
    assert!(
        body["voice"]["twiml"]
            .as_str()
            .unwrap()
            .contains("<Say voice=\"Polly.Celine\" language=\"fr-FR\">"),
        "{body}"
    );
}

/// WhatsApp has no templates in herald (docs/providers/meta.md): the list says so and shows the approved
/// templates the configuration names, the page has a read-only section for them, and a whatsapp template
/// cannot be read, written or previewed.
#[tokio::test]
async fn whatsapp_templates_are_metas_shown_read_only_and_not_editable() {
    let dir = templates_copy();
    let path = dir.path().to_owned();
    let app = TestApp::spawn(move |c| {
        c.templates.dir = path;
        c.admin.token = Secret::new(TOKEN);
        c.meta.template = "acme_auth_code".into();
        c.meta.template_languages = ["en_US", "pt_BR"]
            .map(|l| herald::config::MetaLanguage::parse(l).unwrap())
            .into();
    })
    .await;
    let client = Client::new(&app);
    let (status, _, body) = client
        .send(client.req(reqwest::Method::GET, "/admin/api/templates"))
        .await;
    assert_eq!(status, 200);
    conforms(&body, "TemplateList");
    assert_eq!(body["whatsapp"]["editable"], false);
    assert_eq!(body["whatsapp"]["meta"]["template"], "acme_auth_code");
    assert_eq!(body["whatsapp"]["meta"]["languages"], json!(["en_US", "pt_BR"]));
    assert!(
        body["templates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["channel"] != "whatsapp")
    );
    let path = "/admin/api/templates/whatsapp/second-factor-authentication/en";
    for method in [reqwest::Method::GET, reqwest::Method::PUT, reqwest::Method::DELETE] {
        let rb = client
            .req(method.clone(), path)
            .json(&json!({"parts": {"body": "{{code}}"}}));
        let (status, _, body) = client.send(rb).await;
        assert_eq!(status, 400, "{method} {body}");
        assert!(body.to_string().contains("Meta approved"), "{body}");
    }
    let preview = json!({"channel": "whatsapp", "action": "second-factor-authentication", "parts": {"body": "x"}});
    let (status, _, _) = client
        .send(client.req(reqwest::Method::POST, "/admin/api/preview").json(&preview))
        .await;
    assert_eq!(status, 400);
    let page = reqwest::get(app.url("/admin/")).await.unwrap().text().await.unwrap();
    assert!(
        page.contains("WhatsApp messages are templates Meta approved"),
        "the page says so"
    );
}
