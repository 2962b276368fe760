//! What operators and integrators run without reading the source: the Kubernetes manifests, the compose
//! stack and the AsyncAPI description of the queue interface. Checked here without a container engine:
//! the YAML parses and says what it must, herald accepts the configuration each of them gives it, the
//! compose file validates (`docker compose config`), and the AsyncAPI schemas accept the job and events of
//! docs/jobs-and-events.md and real events captured from herald, and refuse broken ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::{TestApp, job, twilio};
use herald::config::ProviderKind;
use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every YAML document of a file, as JSON values.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let value: serde_yaml::Value =
                serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            serde_json::to_value(value).unwrap()
        })
        .collect()
}

/// Kubernetes objects by kind, from every manifest in deploy/kubernetes.
fn kubernetes() -> BTreeMap<String, Vec<Value>> {
    let mut kinds: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let dir = repo("deploy/kubernetes");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml"),
            "{}",
            path.display()
        );
        for doc in yaml_docs(&path) {
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no kind", path.display()));
            assert!(
                doc["apiVersion"].is_string(),
                "{}: {kind} without apiVersion",
                path.display()
            );
            if kind != "Kustomization" {
                assert!(
                    doc["metadata"]["name"].is_string(),
                    "{}: {kind} without a name",
                    path.display()
                );
            }
            kinds.entry(kind.to_owned()).or_default().push(doc);
        }
    }
    kinds
}

fn herald() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs `herald templates check`, which loads and validates the whole configuration first (exit 2 and
/// the key's name on a bad one), with the shipped templates.
fn herald_accepts(envs: &[(String, String)], what: &str) {
    let out = herald()
        .arg("templates")
        .arg("check")
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("HERALD_TEMPLATES__DIR", repo("templates"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "herald refuses the configuration of {what}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kubernetes_manifests_parse_and_hold_what_operators_need() {
    let k = kubernetes();
    let kustomization = &k["Kustomization"][0];
    for resource in kustomization["resources"].as_array().unwrap() {
        let file = repo("deploy/kubernetes").join(resource.as_str().unwrap());
        assert!(file.exists(), "kustomization lists a missing {}", file.display());
    }
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
        "ScaledObject",
        "Ingress",
    ] {
        assert!(k.contains_key(kind), "deploy/kubernetes has no {kind}");
    }

    let pod = &k["Deployment"][0]["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    // The drain waits for deliveries under way, each bounded by the provider timeout (10 s by default,
    // a failover chain can take two): the grace period must be well beyond it.
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 30);
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(mounts.contains(&"/etc/herald/templates"), "{mounts:?}");

    // Every secret herald needs comes from the Secret, never from the ConfigMap.
    let env = container["env"].as_array().unwrap();
    let from_secret: Vec<&str> = env
        .iter()
        .filter(|e| e["valueFrom"]["secretKeyRef"].is_object())
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for name in [
        "HERALD_AMQP__URL",
        "HERALD_TWILIO__AUTH_TOKEN",
        "HERALD_SMTP__URL",
        "HERALD_WEBHOOK__SECRET",
        "HERALD_ADMIN__TOKEN",
    ] {
        assert!(from_secret.contains(&name), "{name} is not taken from the Secret");
    }
    // The Secret example says which keys the Deployment requires (a reference without `optional: true`
    // keeps the pod from starting), and they are exactly those.
    let mut required: Vec<&str> = env
        .iter()
        .map(|e| &e["valueFrom"]["secretKeyRef"])
        .filter(|r| r.is_object() && r["optional"] != true)
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    required.sort_unstable();
    let example = std::fs::read_to_string(repo("deploy/kubernetes/secret.example.yaml")).unwrap();
    let said = example
        .lines()
        .find_map(|l| l.strip_prefix("# Required: "))
        .expect("secret.example.yaml has a `# Required: ` line");
    // "amqp-url, redis-url (why)"
    let mut said: Vec<&str> = said.split(" (").next().unwrap().split(", ").collect();
    said.sort_unstable();
    assert_eq!(
        said, required,
        "secret.example.yaml's `Required:` line and the Deployment disagree"
    );
    assert!(!example.contains("Every key is optional"));
    let toml = k["ConfigMap"][0]["data"]["herald.toml"].as_str().unwrap();
    for secret_key in ["auth_token", "token", "secret", "url ="] {
        assert!(
            !toml.lines().any(|l| l.trim_start().starts_with(secret_key)),
            "the ConfigMap sets `{secret_key}`"
        );
    }

    // The public Ingress carries the providers' status callbacks and nothing else.
    let ingress = &k["Ingress"][0]["spec"];
    for rule in ingress["rules"].as_array().unwrap() {
        for path in rule["http"]["paths"].as_array().unwrap() {
            assert!(
                path["path"].as_str().unwrap().starts_with("/providers/"),
                "the Ingress exposes {}",
                path["path"]
            );
            assert_eq!(path["backend"]["service"]["name"], "herald");
        }
    }

    // The same alert rules as deploy/prometheus/alerts.yml (promtool tests those).
    let alerts = &yaml_docs(&repo("deploy/prometheus/alerts.yml"))[0]["groups"];
    assert_eq!(
        &k["PrometheusRule"][0]["spec"]["groups"], alerts,
        "deploy/kubernetes/prometheusrule.yaml differs from deploy/prometheus/alerts.yml; regenerate it (command in its header)"
    );
}

#[test]
fn herald_accepts_the_kubernetes_configuration() {
    let k = kubernetes();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(&config, k["ConfigMap"][0]["data"]["herald.toml"].as_str().unwrap()).unwrap();
    let secret = &k["Secret"][0]["stringData"];
    let container = &k["Deployment"][0]["spec"]["template"]["spec"]["containers"][0];
    let mut envs = Vec::new();
    for e in container["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_owned();
        let value = match (&e["value"], &e["valueFrom"]["secretKeyRef"]["key"]) {
            (Value::String(v), _) => v.clone(),
            (_, Value::String(key)) => secret[key.as_str()]
                .as_str()
                .unwrap_or_else(|| panic!("secret.example.yaml has no key `{key}`"))
                .to_owned(),
            _ => panic!("env {name} has neither value nor secretKeyRef"),
        };
        envs.push((name, value));
    }
    for (name, value) in &mut envs {
        if name == "HERALD_CONFIG" {
            *value = config.display().to_string();
        }
    }
    herald_accepts(&envs, "deploy/kubernetes");
}

#[test]
fn compose_stack_validates_and_herald_accepts_its_configuration() {
    let file = repo("deploy/docker-compose.yml");
    // `docker compose` (v2 plugin) when present, else Debian's docker-compose; neither needs an engine
    // for `config`. Missing both is a failure: .ci/run installs docker-compose.
    let v2 = Command::new("docker").args(["compose", "version"]).output();
    let compose_config = |token: Option<&str>| {
        let mut cmd = if v2.as_ref().is_ok_and(|o| o.status.success()) {
            let mut c = Command::new("docker");
            c.arg("compose");
            c
        } else {
            Command::new("docker-compose")
        };
        cmd.env_remove("HERALD_ADMIN_TOKEN");
        if let Some(token) = token {
            cmd.env("HERALD_ADMIN_TOKEN", token);
        }
        cmd.arg("-f")
            .arg(&file)
            .arg("config")
            .output()
            .expect("`docker compose` or `docker-compose` is needed (.ci/run installs docker-compose)")
    };
    // The stack ships no admin token: without one, compose refuses to start it, naming the variable.
    let refused = compose_config(None);
    assert!(
        !refused.status.success(),
        "the compose stack starts without HERALD_ADMIN_TOKEN: its admin token would be one anybody can read"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("HERALD_ADMIN_TOKEN"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let token = uuid::Uuid::new_v4().simple().to_string();
    let out = compose_config(Some(&token));
    assert!(
        out.status.success(),
        "compose file invalid:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The resolved file (anchors and merge keys applied), as compose prints it.
    let compose: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let compose = serde_json::to_value(compose).unwrap();
    let services = compose["services"].as_object().unwrap();
    for s in ["rabbitmq", "redis", "herald-1", "herald-2", "prometheus", "mailpit"] {
        assert!(services.contains_key(s), "compose has no {s}");
    }
    for replica in ["herald-1", "herald-2"] {
        let service = &services[replica];
        assert!(
            service["volumes"]
                .as_array()
                .unwrap()
                .iter()
                // Short syntax (docker-compose 1.x) or long syntax (compose v2) once resolved.
                .any(|v| v
                    .as_str()
                    .is_some_and(|v| v.starts_with("templates:/etc/herald/templates"))
                    || (v["source"] == "templates" && v["target"] == "/etc/herald/templates")),
            "{replica} does not share the templates volume"
        );
        let envs: Vec<(String, String)> = service["environment"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        assert!(
            envs.iter().any(|(k, _)| k == "HERALD_REDIS__URL"),
            "{replica} without Redis"
        );
        assert!(
            envs.contains(&("HERALD_ADMIN__TOKEN".to_owned(), token.clone())),
            "{replica}'s admin token is not the one the operator gave"
        );
        herald_accepts(&envs, replica);
    }
    // Nothing is published on every interface (RabbitMQ keeps guest/guest in this stack; /admin and
    // /metrics are not for other machines), and no admin token is written in the file.
    let raw: Value = serde_json::to_value(
        serde_yaml::from_str::<serde_yaml::Value>(&std::fs::read_to_string(&file).unwrap()).unwrap(),
    )
    .unwrap();
    for (name, service) in raw["services"].as_object().unwrap() {
        for port in service["ports"].as_array().into_iter().flatten() {
            let port = port
                .as_str()
                .unwrap_or_else(|| panic!("{name}: ports in the short syntax"));
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name} publishes {port} on every interface"
            );
        }
    }
    let written = raw["x-herald"]["environment"]["HERALD_ADMIN__TOKEN"].as_str().unwrap();
    assert!(
        written.starts_with("${HERALD_ADMIN_TOKEN:?"),
        "the compose file writes an admin token instead of requiring one"
    );
    // And herald itself refuses the placeholder the file used to ship.
    let mut old = vec![("HERALD_ADMIN__TOKEN".to_owned(), "change-me-admin-token".to_owned())];
    old.push(("HERALD_TEMPLATES__DIR".into(), repo("templates").display().to_string()));
    let out = herald()
        .args(["templates", "check"])
        .envs(old.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin.token"));
    let prometheus = std::fs::read_to_string(repo("deploy/compose/prometheus.yml")).unwrap();
    let prometheus: Value =
        serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&prometheus).unwrap()).unwrap();
    assert_eq!(
        prometheus["scrape_configs"][0]["static_configs"][0]["targets"],
        json!(["herald-1:8080", "herald-2:8080"])
    );
}

/// The Job and Event schemas of docs/asyncapi.yaml, with formats checked.
fn asyncapi_validator(schema: &str) -> jsonschema::Validator {
    let doc = &yaml_docs(&repo("docs/asyncapi.yaml"))[0];
    assert_eq!(doc["asyncapi"], "2.6.0");
    let schema = json!({ "$ref": format!("#/components/schemas/{schema}"), "components": doc["components"] });
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("docs/asyncapi.yaml schemas compile")
}

fn assert_valid(validator: &jsonschema::Validator, value: &Value, what: &str) {
    let errors: Vec<String> = validator.iter_errors(value).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{what} does not match docs/asyncapi.yaml: {errors:?}\n{value}"
    );
}

/// Where the job and event examples are written up.
const JOBS_AND_EVENTS: &str = "docs/jobs-and-events.md";

/// The JSON blocks of a section of docs/jobs-and-events.md.
fn doc_json(section: &str) -> Vec<Value> {
    let doc = std::fs::read_to_string(repo(JOBS_AND_EVENTS)).unwrap();
    let start = doc
        .find(&format!("\n## {section}\n"))
        .unwrap_or_else(|| panic!("{JOBS_AND_EVENTS} has no section {section}"));
    let body = &doc[start + 1..];
    let body = &body[..body[3..].find("\n## ").map_or(body.len(), |i| i + 3)];
    body.split("```json\n")
        .skip(1)
        .filter_map(|block| serde_json::from_str(&block[..block.find("```").unwrap()]).ok())
        .collect()
}

#[test]
fn asyncapi_describes_every_channel_and_its_refs_resolve() {
    let doc = &yaml_docs(&repo("docs/asyncapi.yaml"))[0];
    for channel in ["herald.jobs", "herald.events", "herald.dead", "{replyTo}"] {
        assert!(doc["channels"][channel].is_object(), "no channel {channel}");
    }
    assert_eq!(
        doc["channels"]["herald.events"]["bindings"]["amqp"]["exchange"]["type"],
        "topic"
    );
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r.clone());
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(doc, &mut found);
    assert!(found.len() >= 6);
    for r in found {
        let pointer = r.strip_prefix('#').expect("local ref");
        assert!(doc.pointer(pointer).is_some(), "unresolved $ref {r}");
    }
    // The document's own examples conform to their messages' schemas.
    let mut checked = Vec::new();
    for (message, m) in doc["components"]["messages"].as_object().unwrap() {
        let Some(examples) = m["examples"].as_array() else {
            continue;
        };
        let schema = m["payload"]["$ref"].as_str().expect("a payload $ref");
        let validator = asyncapi_validator(schema.rsplit('/').next().unwrap());
        for example in examples {
            assert_valid(&validator, &example["payload"], &format!("{message} example"));
        }
        checked.push(message.as_str());
    }
    checked.sort_unstable();
    assert_eq!(
        checked,
        [
            "Event",
            "Feedback",
            "Job",
            "StatusEvent",
            "TemplateChanged",
            "WorkflowEvent"
        ],
        "messages with examples"
    );
}

#[test]
fn asyncapi_job_schema_accepts_the_documented_example_and_refuses_broken_jobs() {
    let validator = asyncapi_validator("Job");
    let documented = doc_json("Jobs");
    assert!(
        !documented.is_empty(),
        "{JOBS_AND_EVENTS}'s Jobs section has no JSON example"
    );
    assert_valid(&validator, &documented[0], "documented example job");
    assert_valid(&validator, &job("email"), "an email job");

    let good = documented[0].clone();
    let broken = [
        ("no code", {
            let mut j = good.clone();
            j.as_object_mut().unwrap().remove("code");
            j
        }),
        ("short code", json!({"code": "12"})),
        ("sms to an address", json!({"to": "jane@example.com"})),
        ("email to a number", json!({"channel": "email"})),
        ("unknown channel", json!({"channel": "fax"})),
        ("unknown action", json!({"action": "login"})),
        ("bad date", json!({"expires_at": "tomorrow"})),
        ("bad ip", json!({"ip": "300.1.2.3"})),
        ("vars not strings", json!({"vars": {"n": 1}})),
        ("empty id", json!({"id": ""})),
        ("an id with a bidi control", json!({"id": "job\u{202e}1"})),
        ("an id with a space", json!({"id": "job 1"})),
    ];
    for (what, patch) in broken {
        let mut j = good.clone();
        if what != "no code" {
            for (k, v) in patch.as_object().unwrap() {
                j[k] = v.clone();
            }
        } else {
            j = patch;
        }
        assert!(!validator.is_valid(&j), "the Job schema accepts a job with {what}: {j}");
    }
}

#[tokio::test]
async fn asyncapi_event_schema_matches_events_captured_from_herald() {
    let validator = asyncapi_validator("Event");
    for event in doc_json("Events").iter().filter(|e| e["date"] != "…") {
        assert_valid(&validator, event, "documented example event");
    }

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "code": 21211, "message": "The 'To' number +14155550123 is not a valid phone number.",
            "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400})))
        .mount(&server)
        .await;
    let mut app = TestApp::spawn(|c| {
        twilio(c, &server.uri());
        c.channels.sms = Some(vec![ProviderKind::Outbox]);
        c.channels.email = Some(vec![ProviderKind::Outbox]);
        c.channels.voice = Some(vec![ProviderKind::Twilio]);
        c.throttle.user_email = Some("1/h".parse().unwrap());
    })
    .await;

    let mut captured = Vec::new();
    let sms = job("sms");
    app.publish(&sms).await;
    captured.push(app.next_event(20).await);
    // A replay of a finished id: the duplicate reply.
    captured.push(app.publish_and_wait(&sms).await);
    let mut voice = job("voice");
    voice["locale"] = json!("es-AR");
    voice["action"] = json!("enrollment");
    app.publish(&voice).await; // Twilio answers 400: provider_rejected with provider_code
    captured.push(app.next_event(20).await);
    for _ in 0..2 {
        let mut email = job("email");
        email["user_id"] = json!("schema-user");
        app.publish(&email).await; // the second is throttled (user_email 1/h)
        captured.push(app.next_event(20).await);
    }
    app.publish_raw(
        b"{\"id\": \"broken\", \"channel\": \"sms\"}",
        herald::broker::json_properties(),
    )
    .await;
    captured.push(app.next_event(20).await);
    let mut expired = job("sms");
    expired["expires_at"] = json!("2020-01-01T00:00:00Z");
    app.publish(&expired).await;
    captured.push(app.next_event(20).await);

    let codes: Vec<&str> = captured
        .iter()
        .map(|e| e["error"]["code"].as_str().unwrap_or("sent"))
        .collect();
    assert_eq!(
        codes,
        [
            "sent",
            "duplicate",
            "provider_rejected",
            "sent",
            "throttled",
            "invalid_job",
            "expired"
        ],
        "{captured:#?}"
    );
    for event in &captured {
        assert_valid(&validator, event, "an event from herald");
    }
    let mut bad = captured[0].clone();
    bad["recipient"] = json!("+14155550123");
    assert!(!validator.is_valid(&bad), "the Event schema accepts an unmasked number");
    let mut bad = captured[0].clone();
    bad["code"] = json!("482913");
    assert!(
        !validator.is_valid(&bad),
        "the Event schema accepts extra fields such as a code"
    );
}

/// The Grafana dashboard is valid JSON, every query names only metrics herald exports, and the compose
/// stack provisions it against its Prometheus. (alerts_live.rs runs every query in a real Prometheus.)
#[test]
fn grafana_dashboard_queries_only_what_herald_exports() {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(repo("deploy/grafana/herald.json")).unwrap())
        .expect("deploy/grafana/herald.json is JSON");
    let metrics = herald::metrics::Metrics::new();
    let mut exported: Vec<String> = metrics.names().to_vec();
    exported.extend(herald::receipts::ReceiptMetrics::new(metrics.registry()).names());
    let known = |name: &str| {
        exported.iter().any(|e| {
            name == e
                || [e.clone() + "_bucket", e.clone() + "_sum", e.clone() + "_count"]
                    .iter()
                    .any(|h| h == name)
        })
    };
    let mut queries = 0;
    let mut unknown = Vec::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(
        panels.len() >= 6,
        "sends, failures, throttles, guard, conversion, duration"
    );
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            assert_eq!(target["datasource"]["uid"], "prometheus", "{expr}");
            queries += 1;
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("gd_send_") || w.starts_with("herald_"))
                .collect();
            assert!(!names.is_empty(), "{expr} queries no herald metric");
            unknown.extend(names.into_iter().filter(|n| !known(n)).map(str::to_owned));
        }
    }
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics herald does not export: {unknown:?}"
    );
    for name in [
        "gd_send_fraud_suspected_total",
        "gd_send_verified_total",
        "gd_send_throttled_total",
        "gd_send_delivery_total",
        "gd_send_delivery_seconds_bucket",
    ] {
        assert!(dashboard.to_string().contains(name), "the dashboard shows {name}");
    }
    assert!(queries >= 10);

    let datasource: Value = serde_json::to_value(
        serde_yaml::from_str::<serde_yaml::Value>(
            &std::fs::read_to_string(repo("deploy/grafana/provisioning/datasources/prometheus.yml")).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(datasource["datasources"][0]["uid"], "prometheus");
    assert_eq!(datasource["datasources"][0]["url"], "http://prometheus:9090");
    let compose = std::fs::read_to_string(repo("deploy/docker-compose.yml")).unwrap();
    let compose: Value = serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&compose).unwrap()).unwrap();
    let volumes = compose["services"]["grafana"]["volumes"].to_string();
    assert!(
        volumes.contains("./grafana/provisioning:/etc/grafana/provisioning"),
        "{volumes}"
    );
    assert!(
        volumes.contains("./grafana/herald.json:/var/lib/grafana/dashboards/herald.json"),
        "{volumes}"
    );
}
