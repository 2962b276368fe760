//! A small reference MFA server that hands code delivery to herald. See `app.rs` and
//! docs/mfa-server.md.
//!
//!     cargo build --bin herald --example mfa_server        # one profile: dependencies built once
//!     ./target/debug/herald serve                          # herald, in one terminal
//!     ./target/debug/examples/mfa_server                   # this server, on 127.0.0.1:3000
//!
//! A curl walkthrough of associate → challenge → token: docs/mfa-server.md.
//! Settings (environment): MFA_ADDR (127.0.0.1:3000), MFA_AMQP_URL (amqp://guest:guest@127.0.0.1:5672/%2f),
//! MFA_JOBS_QUEUE (herald.jobs), MFA_FEEDBACK_QUEUE (herald.feedback), MFA_CLIENT_ID / MFA_CLIENT_SECRET (example-client / example-secret),
//! MFA_FRIENDLY_NAME (Acme), MFA_REPLY_TIMEOUT_SECS (15), MFA_SMS_WORKFLOW (unset: SMS codes go out through
//! that herald workflow instead, docs/workflows.md).

mod app;

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let settings = app::Settings {
        addr: env_or("MFA_ADDR", "127.0.0.1:3000").parse()?,
        amqp_url: env_or("MFA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        jobs_queue: env_or("MFA_JOBS_QUEUE", "herald.jobs"),
        feedback_queue: env_or("MFA_FEEDBACK_QUEUE", "herald.feedback"),
        client_id: env_or("MFA_CLIENT_ID", "example-client"),
        client_secret: env_or("MFA_CLIENT_SECRET", "example-secret"),
        friendly_name: env_or("MFA_FRIENDLY_NAME", "Acme"),
        reply_timeout: std::time::Duration::from_secs(env_or("MFA_REPLY_TIMEOUT_SECS", "15").parse()?),
        sms_workflow: std::env::var("MFA_SMS_WORKFLOW").ok().filter(|w| !w.is_empty()),
    };
    let server = app::start(settings).await?;
    eprintln!("example MFA server on http://{}", server.addr);
    server.run().await?;
    Ok(())
}
