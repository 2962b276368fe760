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
    // The shipped templates have nothing to warn about (issue 34: two of them were two segments).
    assert!(
        !String::from_utf8_lossy(&ok.stderr).contains("warning"),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

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
    // Issue 34: in words, not the parser's list of expected tokens.
    assert!(
        stderr.contains("sms/enrollment.en.hbs:2:4: `{{#if code}}` is never closed: add `{{/if}}`"),
        "{stderr}"
    );
}

/// Issue 34: `templates check` said nothing of an SMS billed twice; the admin preview did. A warning, exit 0.
#[test]
fn templates_check_warns_on_an_sms_of_two_segments() {
    let dir = tempfile::tempdir().unwrap();
    helpers::copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"), dir.path());
    std::fs::write(
        dir.path().join("sms/enrollment.es.hbs"),
        "{{code}} es su código de verificación{{#if friendly_name}} para {{friendly_name}}{{/if}}. Ingrese este \
         código para confirmar su inscripción.\n",
    )
    .unwrap();
    let (code, stderr) = check_dir(dir.path(), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "warning: sms/enrollment.es.hbs: with a 10-digit code and a 20-character friendly_name the SMS takes 2 \
             segments (UCS-2, 117 units; one segment holds 70"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.matches("warning").count(), 1, "{stderr}");
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
    // With no provider configured, start-up says where the messages go (issue 34).
    let outbox_line = format!(
        "channels.sms, channels.voice, channels.email, channels.whatsapp use the outbox: messages are appended to {}",
        broker.config.outbox.path.display()
    );
    assert!(logs.contains(&outbox_line), "no `{outbox_line}` in:\n{logs}");
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

/// Not a timed test: `herald bench` runs end to end on its own queues and prints its table. Issue 34: from
/// a directory without the checkout's `templates` it stopped at once; it carries the shipped templates. A
/// run of 500 jobs printed MISS verdicts and negative latencies; it judges no bar at that size.
#[test]
fn bench_runs_and_prints_the_table() {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = herald()
        .args(["bench", "--jobs", "500"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
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
    assert!(
        !stdout.contains("PASS") && !stdout.contains("MISS"),
        "a bar judged on 500 jobs:\n{stdout}"
    );
    assert_eq!(
        stdout
            .matches("| not judged (sample too small: 500 jobs; use --jobs ≥")
            .count(),
        5,
        "{stdout}"
    );
    let measures = stdout.split("| measure |").nth(1).expect("the measures table");
    let negative = measures
        .as_bytes()
        .windows(2)
        .any(|w| w[0] == b'-' && w[1].is_ascii_digit());
    assert!(!negative, "a negative figure in:\n{measures}");
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

fn send_args(extra: &[&str]) -> Vec<String> {
    let job = [
        "send",
        "--channel",
        "sms",
        "--to",
        "+14155550123",
        "--code",
        "482913",
        "--user",
        "u1",
    ];
    job.iter().chain(extra).map(|s| s.to_string()).collect()
}

/// Issue 34: a refused login printed lapin's ERROR lines, then the same text three times in one line; a
/// broker that is down said "IO error: …" three times. Now one line naming where herald connects, never
/// the password, and `serve` says when it retries.
#[test]
fn a_broker_that_is_down_or_refuses_the_login_is_one_clear_line_without_the_password() {
    for (port, why) in [
        (5672, "the broker refused the user name or password (ACCESS_REFUSED"),
        (helpers::free_port(), "Connection refused"),
    ] {
        let url = format!("amqp://guest:s3cr3t-Zq9@127.0.0.1:{port}/%2f");
        let at = format!("cannot connect to the broker at amqp://127.0.0.1:{port}/%2f (user guest): {why}");
        let out = herald()
            .env("HERALD_AMQP__URL", &url)
            .args(send_args(&[]))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&at), "no `{at}` in:\n{stderr}");
        assert_eq!(stderr.matches(why).count(), 1, "said more than once:\n{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line:\n{stderr}");
        assert!(!stderr.contains("s3cr3t"), "the password was printed:\n{stderr}");

        let dir = tempfile::tempdir().unwrap();
        let mut config = helpers::test_config(dir.path());
        config.amqp.url = url.parse().unwrap();
        let mut serve = helpers::spawn_herald(&helpers::process_env(&config));
        let logs = helpers::collect_output(serve.stderr.take().unwrap());
        let retrying = |logs: &str| logs.matches("; retrying in ").count();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while retrying(&logs.lock().unwrap()) < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = serve.kill();
        let _ = serve.wait();
        let logs = logs.lock().unwrap().clone();
        assert!(retrying(&logs) >= 3, "{logs}");
        for line in logs.lines().filter(|l| l.contains("retrying in")) {
            assert!(line.contains(&at), "{line}");
            assert_eq!(line.matches(why).count(), 1, "{line}");
        }
        assert!(!logs.contains("lapin"), "lapin's own lines:\n{logs}");
        assert!(!logs.contains("s3cr3t"), "the password was logged:\n{logs}");
    }
}

/// Issue 34: changing only `amqp.jobs_queue` failed with lapin's PRECONDITION_FAILED on `herald.retry`,
/// which dead-letters to the old jobs queue. Now the error names the queue and the settings that go
/// together.
#[tokio::test]
async fn a_renamed_jobs_queue_alone_names_the_queue_and_the_settings_that_go_together() {
    let broker = helpers::Broker::new(|_| {}).await;
    let renamed = format!("{}.renamed", broker.config.amqp.jobs_queue);
    let out = herald()
        .envs(helpers::process_env(&broker.config))
        .env("HERALD_AMQP__JOBS_QUEUE", &renamed)
        .args(send_args(&[]))
        .output()
        .unwrap();
    helpers::delete_queues(vec![renamed.clone()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let queue = format!(
        "queue `{}` exists with other arguments than herald declares for it",
        broker.config.amqp.retry_queue
    );
    assert!(stderr.contains(&queue), "no `{queue}` in:\n{stderr}");
    assert!(
        stderr.contains("change `amqp.jobs_queue`, `retry_queue`, `dead_queue` and `feedback_queue` together"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("PRECONDITION_FAILED").count(), 1, "{stderr}");

    // `serve` logs the same, as itself (not as a lost connection), and keeps trying.
    let mut env = helpers::process_env(&broker.config);
    env.retain(|(k, _)| k != "HERALD_AMQP__JOBS_QUEUE");
    env.push(("HERALD_AMQP__JOBS_QUEUE".into(), renamed.clone()));
    let mut serve = helpers::spawn_herald(&env);
    let logs = helpers::collect_output(serve.stderr.take().unwrap());
    let said = |logs: &str| logs.lines().any(|l| l.contains(&queue) && l.contains("; retrying in "));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !said(&logs.lock().unwrap()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = serve.kill();
    let _ = serve.wait();
    helpers::delete_queues(vec![renamed]);
    let logs = logs.lock().unwrap().clone();
    assert!(said(&logs), "{logs}");
    assert!(!logs.contains("connection lost"), "{logs}");
}

/// Issue 34: `send --wait` with no herald running said "deadline has elapsed". Now it says what is
/// missing, and the job is still queued for the herald that starts later.
#[tokio::test]
async fn send_wait_without_a_herald_says_which_queue_needs_one_and_the_job_stays_queued() {
    let broker = helpers::Broker::new(|_| {}).await;
    let out = herald()
        .envs(helpers::process_env(&broker.config))
        .args(send_args(&["--wait", "--timeout", "1s"]))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let hint = format!(
        "no outcome arrived within 1s: is a herald consuming `{}` running? The job stays queued",
        broker.config.amqp.jobs_queue
    );
    assert!(stderr.contains(&hint), "no `{hint}` in:\n{stderr}");
    assert!(!stderr.contains("deadline has elapsed"), "{stderr}");
    let queue = broker
        .channel
        .queue_declare(
            broker.config.amqp.jobs_queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(queue.message_count(), 1, "the job stays queued");
}

/// Issue 34: `--locale`, `--ip` and `--friendly-name` had no description in `herald send --help`. Every
/// option of every subcommand has one.
#[test]
fn every_option_in_help_has_a_description() {
    for command in [
        &["--help"][..],
        &["serve", "--help"],
        &["send", "--help"],
        &["bench", "--help"],
        &["templates", "--help"],
        &["templates", "check", "--help"],
    ] {
        let out = herald().args(command).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{command:?}: {help}");
        let options: Vec<&str> = help
            .lines()
            .skip_while(|l| *l != "Options:")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .filter(|l| l.trim_start().starts_with('-'))
            .collect();
        assert!(options.len() >= 2, "{command:?}: no options in:\n{help}");
        for line in options {
            // `      --locale <LOCALE>  BCP 47 tag …`: the flag, two spaces or more, its description.
            let described = line.trim().split_once("  ").is_some_and(|(_, d)| !d.trim().is_empty());
            assert!(described, "{command:?}: `{}` has no description", line.trim());
        }
    }
}
