//! `GET /admin/api/guard` with hostile and hand-typed queries.

use crate::helpers::TestApp;

async fn app() -> TestApp {
    TestApp::spawn(|c| {
        c.fraud.mode = herald::config::FraudMode::Enforce;
        c.admin.token = herald::config::Secret::new("guard-token");
    })
    .await
}

/// Hostile values never get a 5xx, and the token is checked first.
#[tokio::test]
async fn hostile_explain_queries_are_400_never_500() {
    let mut app = app().await;
    let client = reqwest::Client::new();
    let long = "9".repeat(10_000);
    let queries = [
        "",
        "to=",
        "to=%2B",
        "to=%2B0",
        "to=%2B00000000",
        "to=%2B%D9%A3%D9%A4",
        "to=%2B1234567890123456",
        "to=%2B1%00",
        "to=%2B1&to=%2B2",
        "to=%2B44&ip=",
        "to=%2B44&ip=fe80::1%25eth0",
        "to=%2B44&ip=999.1.1.1",
        "to=%2B44&ip=%00",
        "to=a&ip=b&x=%ZZ",
    ];
    for q in queries
        .iter()
        .map(|q| q.to_string())
        .chain([format!("to=%2B{long}"), format!("to=%2B44&ip={long}")])
    {
        let url = app.url(&format!("/admin/api/guard?{q}"));
        assert_eq!(client.get(&url).send().await.unwrap().status(), 401, "{q}: token first");
        let r = client.get(&url).bearer_auth("guard-token").send().await.unwrap();
        let status = r.status().as_u16();
        assert!(status == 400 || status == 200, "{q}: {status}");
    }
    // IPv4-mapped IPv6 and a full 15-digit number are fine.
    for q in ["to=%2B447700900123&ip=::ffff:203.0.113.7", "to=%2B123456789012345"] {
        let r = client
            .get(app.url(&format!("/admin/api/guard?{q}")))
            .bearer_auth("guard-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{q}");
    }
    app.stop().await;
}

/// The route's own documentation (src/http/admin.rs, docs/admin-api.yaml: "E.164: +8821654") shows
/// `?to=+8821654`. Typed like that (curl, a browser), the query's `+` is form-decoded to a space and the
/// operator gets "`to` must be `+` and 1 to 15 digits" for exactly the documented form. A leading space
/// can only be a form-decoded `+`: it should be taken as one.
#[tokio::test]
async fn explain_takes_the_documented_query_with_a_literal_plus() {
    let mut app = app().await;
    let r = reqwest::Client::new()
        .get(app.url("/admin/api/guard?to=+8821654"))
        .bearer_auth("guard-token")
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}
