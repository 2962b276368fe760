//! HTTP surface (contract §8): metrics, health probes, the template administration and the providers'
//! status callbacks (§13).
//!
//! The status routes face the internet, so the server holds what a slow or hostile client can take: at
//! most `http.max_connections` connections (sized below the descriptor limit, so that the broker, Redis,
//! the providers and the template files always find descriptors), one request per connection, and a
//! deadline from accept to the request's last byte (docs/operations.md, "HTTP limits").

pub mod admin;
pub mod auth;
pub mod limits;
pub mod receipts;

use std::net::TcpListener;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, Server, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::KeepAlive;
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpMessage, HttpResponse, HttpServer, web};
use prometheus::IntGauge;

use crate::metrics::Metrics;
pub use limits::Limits;

pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    /// The status callback routes' state; `None`: they answer 404.
    pub receipts: Option<Arc<crate::receipts::Receipts>>,
    /// `webhook-id`s of the webhook status callbacks taken within their timestamp window.
    pub webhook_ids: receipts::SeenIds,
    /// The outcome store: `/readyz` is false once its state files are gone from `state.path`.
    pub store: Option<Arc<crate::store::Store>>,
}

/// Kept with each connection (actix's `on_connect` data): when it was accepted, and its place in the
/// open-connections gauge, given back when the connection is dropped.
struct Accepted {
    at: Instant,
    open: IntGauge,
}

impl Drop for Accepted {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// The request's body, cut at `deadline`: past it the handler reads an error, and [`deadline`] answers 408.
struct DeadlinePayload {
    inner: Payload,
    sleep: Pin<Box<tokio::time::Sleep>>,
    expired: Rc<std::cell::Cell<bool>>,
    done: bool,
}

impl futures_util::Stream for DeadlinePayload {
    type Item = Result<web::Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            if item.is_none() {
                self.done = true;
            }
            return Poll::Ready(item);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.done = true;
            self.expired.set(true);
            return Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request body not received within http.request_timeout",
            )))));
        }
        Poll::Pending
    }
}

/// Whether a body read failed on the request deadline (the route then leaves the answer to [`deadline`]).
pub fn timed_out(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// Gives the request's body the rest of the connection's deadline (actix's `client_request_timeout` covers
/// the head only), and answers 408 when it ran out.
async fn deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<HttpState>>().cloned() else {
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    };
    let timeout = req
        .app_data::<web::Data<Limits>>()
        .map_or(Duration::from_secs(10), |l| l.request_timeout);
    let accepted = req.conn_data::<Accepted>().map_or_else(Instant::now, |a| a.at);
    let expired = Rc::new(std::cell::Cell::new(false));
    let inner = req.take_payload();
    let body: Pin<Box<dyn futures_util::Stream<Item = Result<web::Bytes, PayloadError>>>> = Box::pin(DeadlinePayload {
        inner,
        sleep: Box::pin(tokio::time::sleep_until((accepted + timeout).into())),
        expired: expired.clone(),
        done: false,
    });
    req.set_payload(Payload::from(body));
    let response = next.call(req).await?;
    if expired.get() {
        state.metrics.http.request_timeouts.inc();
        let timeout = HttpResponse::RequestTimeout()
            .insert_header((actix_web::http::header::CONNECTION, "close"))
            .content_type("text/plain")
            .body("request not received in time\n");
        return Ok(response.into_response(timeout).map_into_right_body());
    }
    Ok(response.map_into_left_body())
}

async fn metrics(state: web::Data<HttpState>) -> HttpResponse {
    let mut body = state.metrics.render();
    // Counted by the log layer (actix-http would log each at ERROR), so outside the registry.
    let errors = crate::logging::HTTP_CONNECTION_ERRORS.load(Ordering::Relaxed);
    body.push_str(&format!(
        "# HELP herald_http_connection_errors_total HTTP connections closed on a malformed request or a \
         connection error (not logged).\n# TYPE herald_http_connection_errors_total counter\n\
         herald_http_connection_errors_total {errors}\n"
    ));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body)
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(state: web::Data<HttpState>) -> HttpResponse {
    if state.store.as_ref().is_some_and(|s| s.lost_file().is_some()) {
        // Loud until a restart: every record written now is lost at the next start (docs/operations.md).
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("outcome store files deleted from state.path (see the log); restart herald\n");
    }
    let writes_failing = state.store.as_ref().is_some_and(|s| s.writes_failing());
    let held = state.metrics.store_held.get() > 0;
    if state.ready.load(Ordering::SeqCst) && !writes_failing {
        HttpResponse::Ok().content_type("text/plain").body("ready\n")
    } else if writes_failing || held {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("jobs held: the outcome store does not answer\n")
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("not connected to the broker\n")
    }
}

/// Serves on an already bound listener (bind first, so tests can use port 0 and read the port back), within
/// `limits`.
pub fn serve(
    listener: TcpListener,
    state: HttpState,
    admin: admin::AdminState,
    limits: Limits,
) -> std::io::Result<Server> {
    let open = state.metrics.http.connections.clone();
    let limit_reached = state.metrics.http.limit_reached.clone();
    let cap = i64::try_from(limits.max_connections).unwrap_or(i64::MAX);
    let state = web::Data::new(state);
    let admin = web::Data::new(admin);
    let request_timeout = limits.request_timeout;
    let shared_limits = web::Data::new(limits);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(admin.clone())
            .app_data(shared_limits.clone())
            .app_data(admin::json_config())
            .wrap(from_fn(deadline))
            .route("/metrics", web::get().to(metrics))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .configure(admin::routes)
            .configure(receipts::routes)
    })
    .on_connect(move |_, extensions| {
        open.inc();
        if open.get() >= cap {
            limit_reached.inc();
        }
        extensions.insert(Accepted {
            at: Instant::now(),
            open: open.clone(),
        });
    })
    // One worker: its connection cap is the whole server's.
    .workers(1)
    .max_connections(usize::try_from(cap).unwrap_or(usize::MAX))
    // The head's part of the deadline; the body's is `deadline`'s.
    .client_request_timeout(request_timeout)
    // One request per connection: actix times the head of a connection's first request only, so a kept-alive
    // connection could trickle its next head for ever.
    .keep_alive(KeepAlive::Disabled)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}
