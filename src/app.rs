//! Wiring: builds every part from a [`Config`] and runs them until shutdown.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::audit::Audit;
use crate::config::{Config, ProviderKind, chain_key, route_key};
use crate::consumer::Consumer;
use crate::destinations::Destination;
use crate::dispatch::Dispatcher;
use crate::feedback::FeedbackConsumer;
use crate::fraud::{self, Guard};
use crate::job::{Channel, PerChannel};
use crate::metrics::Metrics;
use crate::providers::Provider;
use crate::providers::http::HttpClient;
use crate::providers::infobip::Infobip;
use crate::providers::outbox::Outbox;
use crate::providers::plivo::Plivo;
use crate::providers::smtp::Smtp;
use crate::providers::sns::Sns;
use crate::providers::twilio::Twilio;
use crate::providers::vonage::Vonage;
use crate::providers::webhook::Webhook;
use crate::receipts::{self, Receipts};
use crate::retry::RetryPolicy;
use crate::routing::{Chain, Routes};
use crate::store::{Store, redis_connection};
use crate::templates::Templates;
use crate::throttle::{self, Throttle};

pub struct Application {
    http_addr: SocketAddr,
    server: actix_web::dev::Server,
    consumer: Arc<Consumer>,
    feedback: FeedbackConsumer,
    shutdown: CancellationToken,
}

impl Application {
    /// Loads templates, opens providers and binds the HTTP port. Nothing is consumed until [`run`].
    ///
    /// [`run`]: Application::run
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        // Cancels the consumer and the background chores below.
        let shutdown = CancellationToken::new();
        for warning in config.warnings() {
            tracing::warn!(key = %warning.key, "{}", warning.message);
        }
        let http_limits = crate::http::limits::at_start(&config);
        let templates = Arc::new(
            Templates::load_with_vars(
                &config.templates.dir,
                &config.templates.default_locale,
                &config.templates.vars,
            )
            .with_context(|| format!("loading templates from {}", config.templates.dir.display()))?,
        );
        for warning in templates.warnings() {
            tracing::warn!(%warning, "template");
        }
        let routes = build_routes(&config)?;
        let retry = RetryPolicy::new(config.retry.schedule.waits().to_vec()).with_validity(config.retry.validity.0);
        let metrics = Arc::new(Metrics::new());
        let redis = if config.redis.url.is_empty() {
            None
        } else {
            Some(redis_connection(config.redis.url.expose())?)
        };
        let namespace = &config.amqp.jobs_queue;
        let store = Arc::new(
            match &redis {
                None => Store::local(&config.state.path, metrics.store_errors.clone())?,
                Some(conn) => Store::redis(
                    conn.clone(),
                    namespace,
                    claim_lease(&config),
                    metrics.store_errors.clone(),
                ),
            }
            .stopping_with(shutdown.clone())
            .counting_held(metrics.store_held.clone()),
        );
        let guard = Arc::new(match &redis {
            None => Guard::local(
                fraud::Settings::from_config(&config),
                fraud::system_clock(),
                Some(metrics.guard.clone()),
            ),
            Some(conn) => Guard::redis(
                fraud::Settings::from_config(&config),
                fraud::Redis::new(conn.clone(), namespace),
                Some(metrics.guard.clone()),
            ),
        });
        guard.log_start_up();
        let receipts = Arc::new(
            Receipts::new(
                &config,
                match &redis {
                    None => receipts::State::local(receipts::LOCAL_CAPACITY),
                    Some(conn) => receipts::State::redis(conn.clone(), namespace),
                },
                metrics.registry(),
            )
            // Undelivered and failed receipts settle their codes as unverified for the guard (docs/fraud-and-limits.md,
            // docs/receipts.md).
            .with_sink(Arc::new(fraud::ReceiptsToGuard(guard.clone())))
            // Workflow steps' receipts, for their checks (docs/workflows.md).
            .with_sink(Arc::new(crate::workflow::ReceiptsToWorkflows(store.clone()))),
        );
        let throttle = Arc::new(Throttle::new(
            &config.throttle,
            redis.map(|conn| throttle::Redis::new(conn, namespace)),
            Some(metrics.throttle_fallbacks.clone()),
        ));
        let dispatcher = Arc::new(
            Dispatcher::new(templates.clone(), routes, retry, throttle.clone())
                .with_guard(guard.clone())
                .counting_ambiguous(metrics.provider_ambiguous.clone()),
        );
        let ready = Arc::new(AtomicBool::new(false));
        let listener =
            TcpListener::bind(config.http.addr).with_context(|| format!("binding http.addr {}", config.http.addr))?;
        let http_addr = listener.local_addr()?;
        let server = crate::http::serve(
            listener,
            crate::http::HttpState {
                metrics: metrics.clone(),
                ready: ready.clone(),
                receipts: Some(receipts.clone()),
                webhook_ids: crate::http::receipts::SeenIds::default(),
                store: Some(store.clone()),
            },
            crate::http::admin::AdminState {
                templates: templates.clone(),
                token: config.admin.token.clone(),
                token_name: config.admin.token_name.clone(),
                audit: Arc::new(Audit::new(config.amqp.clone())),
                guard: guard.clone(),
                auth: crate::http::auth::AuthLimiter::default(),
                auth_failures: metrics.http.admin_auth_failures.clone(),
                whatsapp: crate::http::admin::WhatsappTemplates::of(&config),
            },
            http_limits,
        )?;
        // Background chores start only now that nothing below can fail: a start that fails (a port in use)
        // must not leave them running.
        let sweeper = throttle;
        let swept_guard = guard.clone();
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = stopping.cancelled() => return,
                }
                sweeper.local().sweep();
                swept_guard.sweep();
            }
        });
        let feedback = FeedbackConsumer::new(
            config.amqp.clone(),
            guard,
            metrics.guard.clone(),
            metrics.dead_lettered.clone(),
        )
        .with_store(store.clone());
        // Replicas share templates.dir: pick up each other's edits within seconds.
        let watched = templates.clone();
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            let mut seen = watched.fingerprint();
            let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = stopping.cancelled() => return,
                }
                let now = watched.fingerprint();
                if now != seen {
                    seen = now;
                    // Blocking: reads files and waits for a save in progress (on any replica) to finish.
                    let reloading = watched.clone();
                    match tokio::task::spawn_blocking(move || reloading.reload()).await {
                        Ok(Ok(())) => tracing::info!("templates reloaded from templates.dir"),
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "templates.dir changed but does not load; keeping the templates in use")
                        }
                        Err(e) => tracing::error!(error = %e, "templates reload stopped; keeping the templates in use"),
                    }
                }
            }
        });
        // Receipt records Redis could not take when their messages were sent, written once it is back.
        tokio::spawn(receipts.clone().keep_writing(shutdown.clone()));
        let consumer = Arc::new(Consumer::new(&config, dispatcher, store, metrics, ready).with_receipts(receipts));
        Ok(Application {
            http_addr,
            server,
            consumer,
            feedback,
            shutdown,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Cancel this token to stop: consumption stops, in-flight deliveries finish, then HTTP closes.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub async fn run(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let http = tokio::spawn(self.server);
        tracing::info!(addr = %self.http_addr, "http listening");
        let feedback = tokio::spawn(self.feedback.run(self.shutdown.clone()));
        // On a runtime worker, not the caller's thread (`main`'s block_on): deliveries it spawns then go
        // to that worker's own queue instead of waking another thread through the global one.
        tokio::spawn(self.consumer.run(self.shutdown.clone()))
            .await
            .context("consumer task")?;
        feedback.await.context("feedback consumer task")?;
        handle.stop(true).await;
        http.await.context("http server task")?.context("http server")?;
        Ok(())
    }
}

/// How long a job id stays claimed across replicas if its holder dies: a little longer than the worst
/// delivery, every provider of the longest chain timing out in turn.
fn claim_lease(config: &Config) -> std::time::Duration {
    let longest = config
        .chains()
        .iter()
        .map(|(_, _, chain)| chain.len())
        .max()
        .unwrap_or(1)
        .max(1);
    config.retry.provider_timeout.0 * longest as u32 + std::time::Duration::from_secs(10)
}

/// A newcomer without providers configured gets every message in the outbox file: say so, and where it is.
fn log_outbox_use(config: &Config) {
    let keys: Vec<String> = config
        .chains()
        .into_iter()
        .filter(|(_, _, kinds)| kinds.contains(&ProviderKind::Outbox))
        .map(|(key, _, _)| key)
        .collect();
    if !keys.is_empty() {
        tracing::info!(
            "{} use the outbox: messages are appended to {} (docs/providers/README.md)",
            keys.join(", "),
            config.outbox.path.display()
        );
    }
}

fn build_routes(config: &Config) -> anyhow::Result<Routes> {
    // One HTTP client for every provider call: one connection pool, TLS set up once. It follows no
    // redirect and retries nothing itself (retries are herald's own schedule, `herald.retry`); it only
    // takes another pooled connection when a kept-alive one turns out closed before anything was written.
    crate::providers::connector::log_proxy_settings();
    let client = HttpClient::new(config.retry.provider_timeout.0, usize::from(config.amqp.prefetch.get()))
        .context("building the HTTP client")?;
    // A provider named in several chains is one instance (one connection pool, one open outbox file).
    let mut built: HashMap<ProviderKind, Arc<dyn Provider>> = HashMap::new();
    let mut provider = |kind: ProviderKind, key: &str| -> anyhow::Result<Arc<dyn Provider>> {
        if let Some(p) = built.get(&kind) {
            return Ok(p.clone());
        }
        let p: Arc<dyn Provider> = match kind {
            ProviderKind::Twilio => Arc::new(Twilio::new(
                &config.twilio,
                &config.templates.default_locale,
                client.clone(),
            )?),
            ProviderKind::Outbox => Arc::new(
                Outbox::open(&config.outbox.path)
                    .with_context(|| format!("opening outbox.path {}", config.outbox.path.display()))?,
            ),
            ProviderKind::Smtp => Arc::new(Smtp::new(
                config.smtp.target(),
                config.smtp.from.clone(),
                config.smtp.hello(),
                config.retry.provider_timeout.0,
                usize::from(config.amqp.prefetch.get()).min(64),
            )),
            ProviderKind::Webhook => {
                let (url, key) = config.webhook.endpoint(key)?;
                Arc::new(Webhook::new(
                    url.as_url().clone(),
                    key.as_bytes().to_vec(),
                    config.templates.default_locale.as_str(),
                    client.clone(),
                ))
            }
            ProviderKind::Vonage => Arc::new(Vonage::new(&config.vonage, client.clone())?),
            ProviderKind::Plivo => Arc::new(Plivo::new(&config.plivo, client.clone())?),
            ProviderKind::Meta => Arc::new(crate::providers::meta::Meta::new(
                &config.meta,
                &config.templates.default_locale,
                client.clone(),
            )?),
            ProviderKind::Infobip => Arc::new(Infobip::new(
                &config.infobip,
                &config.templates.default_locale,
                client.clone(),
            )?),
            ProviderKind::Sns => Arc::new(Sns::new(&config.sns, client.clone())?),
        };
        built.insert(kind, p.clone());
        Ok(p)
    };
    log_outbox_use(config);
    let mut default = PerChannel::<Chain>::default();
    let mut by_destination = PerChannel::<Vec<(Destination, Chain)>>::default();
    for channel in Channel::ALL {
        let key = chain_key(channel);
        *default.get_mut(channel) = config
            .chain(channel)
            .into_iter()
            .map(|kind| provider(kind, &key))
            .collect::<anyhow::Result<Chain>>()?;
        for (code, kinds) in config.routing.routes(channel).into_iter().flatten() {
            let key = route_key(channel, code);
            let chain = kinds
                .iter()
                .map(|kind| provider(*kind, &key))
                .collect::<anyhow::Result<Chain>>()?;
            by_destination.get_mut(channel).push((code.clone(), chain));
        }
    }
    let by_destination =
        PerChannel::from_fn(|channel| std::mem::take(by_destination.get_mut(channel)).into_iter().collect());
    Ok(Routes::new(default, by_destination))
}
