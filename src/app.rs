//! Wiring: builds every part from a [`Config`] and runs them until shutdown.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::audit::Audit;
use crate::config::{Config, ProviderKind, chain_key};
use crate::consumer::Consumer;
use crate::dispatch::Dispatcher;
use crate::job::{Channel, PerChannel};
use crate::metrics::Metrics;
use crate::providers::Provider;
use crate::providers::outbox::Outbox;
use crate::providers::smtp::Smtp;
use crate::providers::twilio::Twilio;
use crate::providers::webhook::Webhook;
use crate::receipts::{self, Receipts};
use crate::retry::RetryPolicy;
use crate::store::{Store, redis_connection};
use crate::templates::Templates;
use crate::throttle::{Shared, Throttle};

pub struct Application {
    http_addr: SocketAddr,
    server: actix_web::dev::Server,
    consumer: Arc<Consumer>,
    shutdown: CancellationToken,
}

impl Application {
    /// Loads templates, opens providers and binds the HTTP port. Nothing is consumed until [`run`].
    ///
    /// [`run`]: Application::run
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        // Cancels the consumer and the background chores below.
        let shutdown = CancellationToken::new();
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
        let chains = build_chains(&config)?;
        let retry = RetryPolicy::new(config.retry.schedule.iter().map(|d| d.0).collect());
        let metrics = Arc::new(Metrics::new());
        let redis = if config.redis.url.is_empty() {
            None
        } else {
            Some(redis_connection(config.redis.url.expose()).map_err(anyhow::Error::msg)?)
        };
        let namespace = &config.amqp.jobs_queue;
        let store = Arc::new(match &redis {
            None => Store::local(&config.state.path, metrics.store_errors.clone())?,
            Some(conn) => Store::redis(
                conn.clone(),
                namespace,
                claim_lease(&config),
                metrics.store_errors.clone(),
            ),
        });
        let receipts = Arc::new(Receipts::new(
            &config,
            match &redis {
                None => receipts::State::local(receipts::LOCAL_CAPACITY),
                Some(conn) => receipts::State::redis(conn.clone(), namespace),
            },
            metrics.registry(),
        ));
        let throttle = Arc::new(Throttle::new(
            &config.throttle,
            redis.map(|conn| Shared::new(conn, namespace)),
            Some(metrics.throttle_fallbacks.clone()),
        ));
        let dispatcher = Arc::new(Dispatcher::new(templates.clone(), chains, retry, throttle.clone()));
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
            },
            crate::http::admin::AdminState {
                templates: templates.clone(),
                token: config.admin.token.clone(),
                token_name: config.admin.token_name.clone(),
                audit: Arc::new(Audit::new(config.amqp.clone())),
            },
        )?;
        // Background chores start only now that nothing below can fail: a start that fails (a port in use)
        // must not leave them running.
        let sweeper = throttle;
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = stopping.cancelled() => return,
                }
                sweeper.local().sweep();
            }
        });
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
        let retry_waits: Vec<_> = config.retry.schedule.iter().map(|d| d.0).collect();
        let consumer = Arc::new(
            Consumer::new(
                config.amqp.clone(),
                dispatcher,
                config.templates.default_locale.clone(),
                store,
                metrics,
                ready,
                &retry_waits,
            )
            .with_receipts(receipts),
        );
        Ok(Application {
            http_addr,
            server,
            consumer,
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
        // On a runtime worker, not the caller's thread (`main`'s block_on): deliveries it spawns then go
        // to that worker's own queue instead of waking another thread through the global one.
        tokio::spawn(self.consumer.run(self.shutdown.clone()))
            .await
            .context("consumer task")?;
        handle.stop(true).await;
        http.await.context("http server task")?.context("http server")?;
        Ok(())
    }
}

/// How long a job id stays claimed across replicas if its holder dies: a little longer than the worst
/// delivery, every provider of the longest chain timing out in turn.
fn claim_lease(config: &Config) -> std::time::Duration {
    let longest = Channel::ALL
        .iter()
        .map(|c| config.chain(*c).len())
        .max()
        .unwrap_or(1)
        .max(1);
    config.retry.provider_timeout.0 * longest as u32 + std::time::Duration::from_secs(10)
}

fn build_chains(config: &Config) -> anyhow::Result<PerChannel<Vec<Arc<dyn Provider>>>> {
    // One HTTP client for every provider call: one connection pool, TLS set up once.
    let client = reqwest::Client::builder()
        .timeout(config.retry.provider_timeout.0)
        .connect_timeout(config.retry.provider_timeout.0)
        .redirect(reqwest::redirect::Policy::none())
        // Retries are herald's own schedule (`herald.retry`). reqwest's default policy only ever retries
        // HTTP/2 refusals, which this HTTP/1.1 client never sees, yet it copied every request in case.
        .retry(reqwest::retry::never().max_retries_per_request(0))
        .pool_max_idle_per_host(usize::from(config.amqp.prefetch))
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")?;
    let mut twilio: Option<Arc<dyn Provider>> = None;
    let mut outbox: Option<Arc<dyn Provider>> = None;
    let mut smtp: Option<Arc<dyn Provider>> = None;
    let mut webhook: Option<Arc<dyn Provider>> = None;
    let chain = |channel: Channel| -> anyhow::Result<Vec<Arc<dyn Provider>>> {
        config
            .chain(channel)
            .into_iter()
            .map(|kind| -> anyhow::Result<Arc<dyn Provider>> {
                match kind {
                    ProviderKind::Twilio => built_once(&mut twilio, || {
                        Ok(Arc::new(Twilio::new(&config.twilio, client.clone())?))
                    }),
                    ProviderKind::Outbox => built_once(&mut outbox, || {
                        Ok(Arc::new(Outbox::open(&config.outbox.path).with_context(|| {
                            format!("opening outbox.path {}", config.outbox.path.display())
                        })?))
                    }),
                    ProviderKind::Smtp => built_once(&mut smtp, || {
                        Ok(Arc::new(Smtp::new(
                            config.smtp.target(),
                            config.smtp.from.clone(),
                            config.retry.provider_timeout.0,
                            usize::from(config.amqp.prefetch).min(64),
                        )))
                    }),
                    ProviderKind::Webhook => built_once(&mut webhook, || {
                        let (url, key) = config.webhook.endpoint(&chain_key(channel))?;
                        Ok(Arc::new(Webhook::new(
                            url.as_url().clone(),
                            key.as_bytes().to_vec(),
                            config.templates.default_locale.as_str(),
                            client.clone(),
                        )))
                    }),
                }
            })
            .collect()
    };
    PerChannel::try_from_fn(chain)
}

/// The provider in `slot`, built by `make` the first time: a provider named in several chains is one
/// instance (one connection pool, one open outbox file).
fn built_once(
    slot: &mut Option<Arc<dyn Provider>>,
    make: impl FnOnce() -> anyhow::Result<Arc<dyn Provider>>,
) -> anyhow::Result<Arc<dyn Provider>> {
    if let Some(p) = slot {
        return Ok(p.clone());
    }
    Ok(slot.insert(make()?).clone())
}
