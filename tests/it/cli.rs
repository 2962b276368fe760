//! The `herald` binary as an operator uses it: config errors, `templates check`, and the README flow
//! (`herald serve`, `herald send`, outbox, events on stdout, SIGTERM).

use std::path::Path;
use std::process::Command;

use crate::helpers;

fn herald() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    // Only what a test sets: no HERALD_* from the developer's shell.
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info");
    cmd
}

fn run_with_config(toml: &str, envs: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, toml).unwrap();
    let out = herald()
        .arg("--config")
        .arg(&path)
        .args(["templates", "check"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_errors_name_the_key_and_never_print_secrets() {
    let secret = "[twilio]\nauth_token = \"s3cr3t-token-value\"\n";
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("[amqp]\nprefetc = 10\n", &[], "amqp.prefetc"),
        ("[nope]\nx = 1\n", &[], "nope"),
        (
            "[retry]\nprovider_timeout = \"10 parsecs\"\n",
            &[],
            "retry.provider_timeout",
        ),
        ("[retry]\nschedule = [\"1s\", \"soon\"]\n", &[], "retry.schedule"),
        ("[throttle]\nip = \"fifty a minute\"\n", &[], "throttle.ip"),
        ("[amqp]\nprefetch = 0\n", &[], "amqp.prefetch"),
        ("[amqp]\nqueue_type = \"stream\"\n", &[], "amqp.queue_type"),
        ("[http]\naddr = \"localhost\"\n", &[], "http.addr"),
        ("[channels]\nsms = [\"twilio\"]\n", &[], "twilio.account_sid"),
        ("[channels]\nsms = [\"carrier-pigeon\"]\n", &[], "channels.sms"),
        (
            "[twilio]\naccount_sid = \"AC1\"\nauth_token = \"s3cr3t-token-value\"\n[channels]\nvoice = [\"twilio\"]\n",
            &[],
            "twilio.from",
        ),
        (
            "[templates]\ndefault_locale = \"english!\"\n",
            &[],
            "templates.default_locale",
        ),
        (secret, &[("HERALD_AMQP__PREFETCH", "lots")], "amqp.prefetch"),
        (secret, &[("HERALD_AMQP_URL", "amqp://x")], "amqp_url"),
    ];
    for (toml, envs, key) in cases {
        let (code, stderr) = run_with_config(toml, envs);
        assert_ne!(code, 0, "{toml} should be refused");
        assert!(
            stderr.contains(key),
            "error for {toml:?} {envs:?} should name `{key}`: {stderr}"
        );
        assert!(!stderr.contains("s3cr3t"), "a secret was printed: {stderr}");
    }
    let (code, stderr) = run_with_config("[amqp]\nprefetch = 64\n", &[]);
    assert_eq!(code, 0, "a valid config passes: {stderr}");
}

/// What is never right stops start-up with exit code 2 and the key's name, never the value: a whitespace
/// or published admin token, a webhook key of zero bytes or spaces, a whitespace credential a chain needs.
/// Before, each started (the whitespace token could never be presented; the published one let anyone in).
#[test]
fn settings_that_are_never_right_are_refused_naming_the_key() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("", &[("HERALD_ADMIN__TOKEN", "   ")], "admin.token"),
        (
            "",
            &[("HERALD_ADMIN__TOKEN", " s3cr3t-padded-0123456789 ")],
            "admin.token",
        ),
        ("", &[("HERALD_ADMIN__TOKEN", "change-me-admin-token")], "admin.token"),
        ("[admin]\ntoken = \"Change-Me\"\n", &[], "admin.token"),
        // base64 of three zero bytes, and of three spaces.
        ("[webhook]\nsecret = \"whsec_AAAA\"\n", &[], "webhook.secret"),
        (
            "",
            &[("HERALD_WEBHOOK__STATUS_SECRET", "whsec_ICAg")],
            "webhook.status_secret",
        ),
        (
            "[twilio]\naccount_sid = \"AC1\"\nfrom = \"+15005550006\"\n",
            &[("HERALD_TWILIO__AUTH_TOKEN", " \t ")],
            "twilio.auth_token",
        ),
        ("[http]\nmax_connections = 0\n", &[], "http.max_connections"),
        ("[http]\nrequest_timeout = \"0s\"\n", &[], "http.request_timeout"),
    ];
    for (toml, envs, key) in cases {
        let (code, stderr) = run_with_config(toml, envs);
        assert_eq!(code, 2, "{toml:?} {envs:?} should be refused: {stderr}");
        assert!(
            stderr.contains(key),
            "error for {toml:?} {envs:?} should name `{key}`: {stderr}"
        );
        assert!(!stderr.contains("s3cr3t"), "a secret was printed: {stderr}");
        assert!(!stderr.contains("change-me"), "the token was printed: {stderr}");
    }
    // Environment values are text: a number-like phone or token stays a string, arrays are TOML.
    let env = [
        ("HERALD_TWILIO__ACCOUNT_SID", "AC1"),
        ("HERALD_TWILIO__AUTH_TOKEN", "123456"),
        ("HERALD_TWILIO__FROM", "+15005550006"),
        ("HERALD_CHANNELS__SMS", "[\"twilio\", \"outbox\"]"),
        ("HERALD_AMQP__PREFETCH", "512"),
        ("HERALD_RETRY__SCHEDULE", "[\"1s\", \"2s\"]"),
        ("HERALD_THROTTLE__COUNTRIES_DENY", "[44, 225]"),
    ];
    let (code, stderr) = run_with_config("", &env);
    assert_eq!(code, 0, "env overrides of every kind are accepted: {stderr}");
}

/// A config error names the key (and, for a TOML syntax error, the line) but never prints the value:
/// the value on a broken line, or pasted into the wrong key, is often a secret.
#[test]
fn config_errors_name_key_and_line_but_never_the_value() {
    const SECRET: &str = "s3cr3t-Zq9";
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            "[twilio]\naccount_sid = \"AC1\"\nauth_token = \"s3cr3t-Zq9\n",
            &[],
            &["line 3", "twilio.auth_token"],
        ),
        (
            "[twilio]\nauth_token = s3cr3t-Zq9\n",
            &[],
            &["line 2", "twilio.auth_token"],
        ),
        ("[amqp]\nprefetch = \"s3cr3t-Zq9\"\n", &[], &["amqp.prefetch"]),
        (
            "[retry]\nprovider_timeout = \"s3cr3t-Zq9\"\n",
            &[],
            &["retry.provider_timeout"],
        ),
        ("[throttle]\nip = \"s3cr3t-Zq9\"\n", &[], &["throttle.ip"]),
        ("[channels]\nsms = [\"s3cr3t-Zq9\"]\n", &[], &["channels.sms"]),
        (
            "[templates]\ndefault_locale = \"s3cr3t-Zq9!\"\n",
            &[],
            &["templates.default_locale"],
        ),
        (
            "",
            &[("HERALD_AMQP__PREFETCH", SECRET)],
            &["amqp.prefetch", "HERALD_AMQP__PREFETCH"],
        ),
        ("", &[("HERALD_AMQP__QUEUE_TYPE", SECRET)], &["amqp.queue_type"]),
        (
            "",
            &[("HERALD_RETRY__SCHEDULE", "[\"1s\", \"s3cr3t-Zq9\"]")],
            &["retry.schedule"],
        ),
        ("[throttle]\nipv6_prefix = 129\n", &[], &["throttle.ipv6_prefix"]),
        ("", &[("HERALD_THROTTLE__IPV6_PREFIX", "0")], &["throttle.ipv6_prefix"]),
    ];
    for (toml, envs, names) in cases {
        let (code, stderr) = run_with_config(toml, envs);
        assert_eq!(code, 2, "{toml:?} {envs:?} should stop start-up: {stderr}");
        for name in *names {
            assert!(stderr.contains(name), "{toml:?} {envs:?} should name {name}: {stderr}");
        }
        assert!(
            !stderr.contains("s3cr3t"),
            "{toml:?} {envs:?}: the value was printed: {stderr}"
        );
    }
}

#[test]
fn a_missing_config_file_is_an_error() {
    let out = herald()
        .args(["--config", "/nonexistent/herald.toml", "templates", "check"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/herald.toml"));
}

#[test]
fn templates_check_reports_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    helpers::copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"), dir.path());
    let ok = herald()
        .args(["templates", "check"])
        .env("HERALD_TEMPLATES__DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));

    std::fs::write(
        dir.path().join("sms/enrollment.en.hbs"),
        "Your code\nis {{#if code}}{{code}}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("voice/enrollment.fr.hbs"), "{{codee}}").unwrap();
    let bad = herald()
        .args(["templates", "check"])
        .env("HERALD_TEMPLATES__DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    let position = stderr.split("sms/enrollment.en.hbs:").nth(1).expect("file named");
    let mut numbers = position.split(':').take(2).map(|n| n.parse::<usize>());
    assert!(
        matches!((numbers.next(), numbers.next()), (Some(Ok(line)), Some(Ok(_))) if line >= 2),
        "{stderr}"
    );
    assert!(
        stderr.contains("voice/enrollment.fr.hbs:1:1: unknown variable `codee`"),
        "{stderr}"
    );
}

fn check_dir(dir: &Path, envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = herald()
        .args(["templates", "check"])
        .env("HERALD_TEMPLATES__DIR", dir)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Issue #17: these aborted `templates check` (and `serve`) with a stack overflow, exit 134.
#[test]
fn templates_check_refuses_hostile_templates_with_file_and_line_instead_of_crashing() {
    let dir = tempfile::tempdir().unwrap();
    helpers::copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"), dir.path());
    std::fs::write(
        dir.path().join("sms/enrollment.fr.hbs"),
        "{{code}}\n{{#*inline \"a\"}}{{> a}}{{/inline}}{{> a}}",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("voice/enrollment.fr.hbs"),
        format!("{}{{{{code}}}}{}", "{{#if code}}".repeat(2000), "{{/if}}".repeat(2000)),
    )
    .unwrap();
    std::fs::write(dir.path().join("sms/enrollment.de.hbs"), "Welcome!").unwrap();
    let (code, stderr) = check_dir(dir.path(), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("sms/enrollment.fr.hbs:2:1: decorators and inline partials"),
        "{stderr}"
    );
    assert!(
        stderr.contains("voice/enrollment.fr.hbs: 4001 `{{` expressions"),
        "{stderr}"
    );
    assert!(
        stderr.contains("sms/enrollment.de.hbs: an sms template must print `{{code}}`"),
        "{stderr}"
    );
}

/// Issue #17: `{{log code}}` printed the code, and handlebars' debug log printed helper arguments.
#[test]
fn templates_check_never_logs_the_code_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    helpers::copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"), dir.path());
    let trace = [("RUST_LOG", "trace")];
    std::fs::write(
        dir.path().join("sms/enrollment.fr.hbs"),
        "{{#if code}}{{code}}{{/if}} {{lookup this \"code\"}}",
    )
    .unwrap();
    let (code, stderr) = check_dir(dir.path(), &trace);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("123456"), "the sample code was logged:\n{stderr}");
    std::fs::write(dir.path().join("sms/enrollment.fr.hbs"), "{{log code}} {{code}}").unwrap();
    let (code, stderr) = check_dir(dir.path(), &trace);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("helper `log` is not available"), "{stderr}");
    assert!(!stderr.contains("123456"), "the sample code was logged:\n{stderr}");
}

/// docs/templates.md: `{{brand}}` prints a job's `vars.brand`. Undeclared, it is a warning (exit 0);
/// declared in `templates.vars`, not even that.
#[test]
fn templates_check_warns_about_undeclared_job_vars() {
    let dir = tempfile::tempdir().unwrap();
    helpers::copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"), dir.path());
    std::fs::write(dir.path().join("sms/enrollment.fr.hbs"), "{{brand}}: {{code}}").unwrap();
    let (code, stderr) = check_dir(dir.path(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: sms/enrollment.fr.hbs:1:1: `brand` is not a built-in variable"),
        "{stderr}"
    );
    let (code, stderr) = check_dir(dir.path(), &[("HERALD_TEMPLATES__VARS", "[\"brand\"]")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// The README's first steps, with the real binary: serve, send, outbox, event on stdout, SIGTERM.
#[tokio::test]
async fn serve_and_send_like_the_readme_and_nothing_private_reaches_stdout_or_logs() {
    let broker = helpers::Broker::new(|_| {}).await;
    let env = helpers::process_env(&broker.config);
    let mut serve = helpers::HeraldProcess::start(&env);

    let mut ids = Vec::new();
    for (channel, to) in [
        ("sms", "+14155550123"),
        ("voice", "+14155550123"),
        ("email", "jane.doe@example.com"),
    ] {
        let out = herald()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args([
                "send",
                "--channel",
                channel,
                "--to",
                to,
                "--code",
                "482913",
                "--user",
                "u1",
                "--wait",
            ])
            .args(["--friendly-name", "Acme", "--timeout", "20s"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "send {channel}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut lines = stdout.lines();
        let id = lines.next().unwrap().to_owned();
        let event: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(event["job_id"], id.as_str());
        ids.push(id);
    }
    // An invalid job is refused by `send` itself, before it reaches the broker.
    let refused = herald()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args([
            "send",
            "--channel",
            "sms",
            "--to",
            "4155550123",
            "--code",
            "482913",
            "--user",
            "u1",
        ])
        .output()
        .unwrap();
    assert_ne!(refused.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("field `to`"));

    assert_eq!(serve.terminate(), Some(0), "SIGTERM is a clean shutdown");
    let (stdout, logs) = (serve.stdout(), serve.logs());
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("stdout is JSON lines"))
        .collect();
    assert_eq!(events.len(), 3, "{stdout}");
    for (event, id) in events.iter().zip(&ids) {
        assert_eq!(event["job_id"], id.as_str());
        assert!(event.get("error").is_none(), "{event}");
    }
    assert!(logs.contains("consumer drained and closed"), "{logs}");
    for (what, text) in [("stdout", &stdout), ("logs", &logs)] {
        assert!(!text.contains("482913"), "{what} leaks the code:\n{text}");
        assert!(!text.contains("4155550123"), "{what} leaks the number:\n{text}");
        assert!(!text.contains("jane.doe"), "{what} leaks the address:\n{text}");
        assert!(
            !text.contains("guest:guest"),
            "{what} leaks the broker password:\n{text}"
        );
    }
    let outbox = std::fs::read_to_string(&broker.config.outbox.path).unwrap();
    assert_eq!(outbox.lines().count(), 3);
    assert!(outbox.contains("482913 is your verification code for Acme."));
}

/// Not a timed test: `herald bench` runs end to end on its own queues and prints its table.
#[test]
fn bench_runs_and_prints_the_table() {
    let out = herald().args(["bench", "--jobs", "500"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "| broker ceiling: consume + ack + one small publish (topic exchange), round 1 | 500 |",
        "| herald e2e, Twilio-shaped server (0 ms), round 1 | 500 |",
        "| herald e2e, outbox provider, round 1 | 500 |",
        "| herald e2e, outbox provider, round 3 | 500 |",
        "| herald e2e, outbox provider, amqp.channels = 2, round 3 | 500 |",
        "| broker ceiling, transactional: ready batch + one small publish each (topic exchange) + multiple ack + commit, round 3 | 500 |",
        "bytes, its properties) for each, round 3 | 500 |",
        "| herald e2e, provider answering in 200 ms |",
        "| latency run at 1000 jobs/s |",
        "| broker: transactional ceiling / confirms ceiling, median of 3 rounds |",
        "| e2e outbox / confirms ceiling, median of 3 rounds |",
        "| e2e outbox / transactional ceiling, median of 3 rounds |",
        "| e2e outbox / transactional ceiling with herald's events, median of 3 rounds |",
        "| broker: transactional ceiling with herald's events / transactional ceiling, median of 3 rounds |",
        "| e2e outbox / best ceiling, median of 3 rounds |",
        "| e2e outbox with amqp.channels = 2 / best ceiling, median of 3 rounds |",
        "| e2e Twilio-shaped / best ceiling, median of 3 rounds |",
        "| 200 ms provider / (prefetch / 0.2 s = 1280/s) |",
        "| broker alone: publish → consumer p50 / p99 / p99.9 at 1000 jobs/s, its pace",
        "| added by herald p50 / p99 / p99.9 at 1000 jobs/s |",
        "jobs/s (half the best ceiling) |",
        "| peak RSS of the herald process |",
        "| herald e2e, Twilio-shaped server (0 ms), receipts on | 500 |",
        "| receipts: signed Twilio status callbacks (delivered) → events | 500 |",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    assert!(!stdout.contains("failed"), "{stdout}");
    assert!(!stdout.contains("not 200"), "{stdout}");
    // Its herald children stop cleanly (SIGTERM), deleting their commit-marker queues, and the bench deletes
    // the rest: nothing of the run is left on the broker (before, every child's marker queue was left to
    // expire, 16 a run).
    let stderr = String::from_utf8_lossy(&out.stderr);
    let prefix = stderr
        .lines()
        .find_map(|l| l.split_once(", queues ")?.1.strip_suffix('*'))
        .unwrap_or_else(|| panic!("no queue prefix in:\n{stderr}"));
    let listed = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "name", "--no-table-headers", "--quiet"])
        .output()
        .expect("rabbitmqctl is installed with RabbitMQ");
    let left: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|q| q.starts_with(prefix))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "left on the broker: {left:?}");
}
