//! Command line (docs/cli.md): `serve` (default), `send`, `templates check`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use serde_json::json;

use crate::app::Application;
use crate::broker::{self, Publisher};
use crate::config::Config;
use crate::job::Job;
use crate::templates::Templates;

#[derive(Parser, Debug)]
#[command(
    name = "herald",
    version,
    about = "Delivers MFA one-time codes from RabbitMQ by SMS, voice, email or webhook"
)]
pub struct Cli {
    /// Configuration file (default: $HERALD_CONFIG, else ./herald.toml when it exists).
    #[arg(long, global = true, env = "HERALD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Consume jobs and deliver them (the default).
    Serve,
    /// Publish one job to the jobs queue and print its id.
    Send(Box<SendArgs>),
    /// Measure herald against the raw broker in the same run (see BENCHMARKS.md).
    Bench {
        /// Jobs per run [default: 20000; 2000 with --callgrind].
        #[arg(long)]
        jobs: Option<usize>,
        /// Rounds of ceiling + herald runs; the ratios are the median over the rounds.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=20))]
        rounds: u16,
        /// Only the delivery-receipts step (its send rate and receipts/s), without the ratios.
        #[arg(long)]
        receipts_only: bool,
        /// Only herald's instructions per job (outbox and Twilio-shaped), counted by valgrind's callgrind:
        /// a figure that does not wander with the machine's load.
        #[arg(long, conflicts_with = "receipts_only")]
        callgrind: bool,
    },
    /// Template tools.
    Templates {
        #[command(subcommand)]
        command: TemplatesCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum TemplatesCommand {
    /// Compile every template and render it with sample variables; non-zero exit on any problem.
    Check,
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// sms, voice, email or whatsapp.
    #[arg(long)]
    pub channel: String,
    /// E.164 number (sms, voice, whatsapp) or email address.
    #[arg(long)]
    pub to: String,
    /// The one-time code (4-10 digits).
    #[arg(long)]
    pub code: String,
    /// User id (key of the per-user limits).
    #[arg(long)]
    pub user: String,
    /// enrollment or second-factor-authentication.
    #[arg(long, default_value = "second-factor-authentication")]
    pub action: String,
    /// BCP 47 tag of the message's language, e.g. es-AR (falls back to es, then templates.default_locale).
    #[arg(long)]
    pub locale: Option<String>,
    /// The end user's IPv4 or IPv6 address: key of the per-IP limit and of the fraud guard's IP budget.
    #[arg(long)]
    pub ip: Option<String>,
    /// The application name shown in messages, e.g. Acme (at most 128 characters).
    #[arg(long)]
    pub friendly_name: Option<String>,
    /// Job id (default: a new ULID).
    #[arg(long)]
    pub id: Option<String>,
    /// Expire the job after this long, e.g. 5m.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub expires_in: Option<Duration>,
    /// Extra template variable, KEY=VALUE (repeatable).
    #[arg(long = "var", value_name = "KEY=VALUE")]
    pub vars: Vec<String>,
    /// Wait for the outcome event (via reply_to) and print it; exit 1 if the delivery failed.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// An error and its causes, each said once: many errors (lapin's, std's) already include their source's text
/// in their own, and `{:#}` then printed it two or three times in one line.
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// `--config`, else `$HERALD_CONFIG` (both via clap), else `./herald.toml` when it exists.
pub fn config_path(cli: &Cli) -> Option<PathBuf> {
    cli.config.clone().or_else(|| {
        let default = Path::new("herald.toml");
        default.exists().then(|| default.to_owned())
    })
}

pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let config = Config::load(config_path(&cli).as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await.map(|()| 0),
        Command::Send(args) => send(&config, *args).await,
        Command::Bench {
            jobs,
            rounds,
            receipts_only,
            callgrind,
        } => crate::bench::run(
            &config,
            crate::bench::BenchArgs {
                jobs,
                rounds: usize::from(rounds),
                receipts_only,
                callgrind,
            },
        )
        .await
        .map(|()| 0),
        Command::Templates {
            command: TemplatesCommand::Check,
        } => Ok(templates_check(&config)),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    let shutdown = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: draining in-flight deliveries");
        shutdown.cancel();
    });
    app.run().await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn templates_check(config: &Config) -> i32 {
    match Templates::load_with_vars(
        &config.templates.dir,
        &config.templates.default_locale,
        &config.templates.vars,
    ) {
        Ok(templates) => {
            for warning in templates.warnings() {
                eprintln!("warning: {warning}");
            }
            println!("templates in {} are valid", config.templates.dir.display());
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

async fn send(config: &Config, args: SendArgs) -> anyhow::Result<i32> {
    let id = args.id.clone().unwrap_or_else(|| ulid::Ulid::generate().to_string());
    let mut vars = serde_json::Map::new();
    for kv in &args.vars {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--var {kv}: expected KEY=VALUE"))?;
        vars.insert(k.to_owned(), v.into());
    }
    let mut job = json!({
        "id": id, "channel": args.channel, "to": args.to, "code": args.code,
        "action": args.action, "user_id": args.user,
    });
    for (key, value) in [
        ("locale", &args.locale),
        ("ip", &args.ip),
        ("friendly_name", &args.friendly_name),
    ] {
        if let Some(v) = value {
            job[key] = v.as_str().into();
        }
    }
    if let Some(ttl) = args.expires_in {
        let at = chrono::Utc::now() + chrono::Duration::from_std(ttl).context("--expires-in is too long")?;
        job["expires_at"] = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true).into();
    }
    if !vars.is_empty() {
        job["vars"] = vars.into();
    }
    let body = serde_json::to_vec(&job)?;
    // Refuse locally what herald would dead-letter.
    if let Err(e) = Job::from_json(&body) {
        bail!("invalid job: {}", e.reason);
    }

    let connection = broker::connect(&config.amqp, "herald-send").await?;
    let channel = connection.create_channel().await?;
    broker::declare_topology(&channel, &config.amqp).await?;
    let mut properties = broker::json_properties();
    if let Some(message_id) = broker::short(&id) {
        properties = properties.with_message_id(message_id);
    }
    let mut replies = None;
    if args.wait {
        let (queue, consumer) = broker::private_queue(&channel, "herald-send", None).await?;
        properties = properties
            .with_reply_to(queue)
            .with_correlation_id(broker::short(&id).context("--wait needs an id of at most 255 bytes")?);
        replies = Some(consumer);
    }
    let publisher = Publisher::new(&connection).await?;
    publisher
        .publish("", &config.amqp.jobs_queue, &body, properties)
        .await?;
    println!("{id}");

    let mut code = 0;
    if let Some(mut replies) = replies {
        let Ok(reply) = tokio::time::timeout(args.timeout, replies.next()).await else {
            bail!(
                "no outcome arrived within {}: is a herald consuming `{}` running? The job stays queued \
                 until one is (docs/cli.md)",
                humantime::format_duration(args.timeout),
                config.amqp.jobs_queue
            );
        };
        let delivery = reply.context("reply queue closed")??;
        let event: serde_json::Value = serde_json::from_slice(&delivery.data)?;
        println!("{event}");
        if event.get("error").is_some() {
            code = 1;
        }
    }
    let _ = connection.close(200, "bye".into()).await;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_says_each_cause_once() {
        let io = std::io::Error::other("Connection refused");
        #[derive(Debug, thiserror::Error)]
        #[error("IO error: {0}")]
        struct Repeats(#[source] std::io::Error);
        let error = anyhow::Error::new(Repeats(io)).context("sending");
        assert_eq!(error_text(&error), "sending: IO error: Connection refused");
        let plain = anyhow::anyhow!("bottom").context("middle").context("top");
        assert_eq!(error_text(&plain), "top: middle: bottom");
    }
}
