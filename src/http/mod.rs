//! HTTP surface (docs/http-and-metrics.md "HTTP"): metrics, health probes, the template administration and the
//! providers' status callbacks (docs/receipts.md).
//!
//! The status routes face the internet, so the server holds what a slow or hostile client can take: at
//! most `http.max_connections` connections (sized below the descriptor limit, so that the broker, Redis,
//! the providers and the template files always find descriptors), one request per connection, a deadline
//! from accept to the request's last byte, and the socket shut down 1 s past that deadline whatever the
//! connection is still doing (docs/operations.md, "HTTP limits").

pub mod admin;
pub mod auth;
pub mod limits;
pub mod meta;
pub mod receipts;
pub mod reports;

use std::cell::Cell;
use std::mem::ManuallyDrop;
use std::net::{Shutdown, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::rc::{Rc, Weak};
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
use prometheus::{IntCounter, IntGauge};

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

/// Kept with each connection (actix's `on_connect` data): when it was accepted, its socket, and its place in
/// the open-connections gauge, given back when the connection is dropped.
struct Accepted {
    at: Instant,
    conn: Rc<Conn>,
    /// Cuts the connection past its deadline (see [`cut_at_deadline`]); aborted when the connection is dropped.
    timer: actix_web::rt::task::JoinHandle<()>,
    open: IntGauge,
    /// `at` + `http.request_timeout`.
    deadline: Instant,
    timeouts: IntCounter,
}

impl Drop for Accepted {
    fn drop(&mut self) {
        // A connection dropped at its deadline without a request taken: its head did not arrive in time
        // (actix answered 408 itself) or it sent nothing. Counted here, as no handler saw it. actix's head
        // timer starts from a clock it refreshes every 500 ms, so its 408 can come up to that much before
        // `deadline`.
        if !self.conn.served.get() && Instant::now() + HEAD_TIMER_SLACK >= self.deadline {
            self.conn.count_timeout(&self.timeouts);
        }
        self.conn.open.set(false);
        self.timer.abort();
        self.open.dec();
    }
}

/// A connection's socket, reached from outside actix's dispatcher: nothing in actix bounds a connection whose
/// request head has arrived (a body no route reads is drained for as long as it comes, so that the client,
/// still sending, does not get a reset in place of its answer), so herald shuts the socket down itself 1 s
/// past the deadline (docs/operations.md, "HTTP limits").
struct Conn {
    fd: RawFd,
    peer: Option<std::net::SocketAddr>,
    /// False once actix dropped the connection: `fd` may then be any other descriptor of the process.
    open: Cell<bool>,
    /// A request was taken: the connection serves no other.
    served: Cell<bool>,
    /// Counted in `herald_http_request_timeouts_total` already.
    timed_out: Cell<bool>,
}

impl Conn {
    /// Shuts the socket down: actix then reads EOF (or fails its writes), ends the request and drops the
    /// connection. Only while actix still holds the socket, and only if it is still this peer's.
    fn shutdown(&self, how: Shutdown) {
        if !self.open.get() {
            return;
        }
        // SAFETY: `open` is true, so actix still owns `fd`: `Accepted` is dropped with the connection (actix's
        // request pool lets go of the connection data with each request), on this same worker thread, so no
        // close can come between the check and the call; `ManuallyDrop` leaves `fd` open.
        let socket = ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(self.fd) });
        // And in case a request outlived its connection: the descriptor must still be this peer's socket.
        if socket.peer_addr().ok() == self.peer {
            let _ = socket.shutdown(how);
        }
    }

    /// Counts the connection in `herald_http_request_timeouts_total` once.
    fn count_timeout(&self, timeouts: &IntCounter) {
        if !self.timed_out.replace(true) {
            timeouts.inc();
        }
    }
}

/// How much earlier than herald's `deadline` actix's own head timer may fire: it reads a clock actix refreshes
/// every 500 ms (actix-http's date service).
const HEAD_TIMER_SLACK: Duration = Duration::from_millis(600);

/// Time left after the deadline for the answer (a 408 most often) to be written before the socket is shut.
const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// Shuts the connection down at `deadline` + [`ANSWER_GRACE`] if it is still open: whatever it is still
/// sending or not reading, it ends then (counted as a timeout).
async fn cut_at_deadline(conn: Weak<Conn>, deadline: Instant, timeouts: IntCounter) {
    actix_web::rt::time::sleep_until((deadline + ANSWER_GRACE).into()).await;
    if let Some(conn) = conn.upgrade()
        && conn.open.get()
    {
        conn.count_timeout(&timeouts);
        conn.shutdown(Shutdown::Both);
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

/// Serves one request per connection (a pipelined one is a 400), gives its body the rest of the connection's
/// deadline (actix's `client_request_timeout` covers the head only) and answers 408 when it ran out.
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
    let (accepted, conn) = match req.conn_data::<Accepted>() {
        Some(a) => (a.at, Some(a.conn.clone())),
        None => (Instant::now(), None),
    };
    if let Some(conn) = &conn
        && conn.served.replace(true)
    {
        // A pipelined request (keep-alive is off, but actix still reads what came with the first).
        let refused = HttpResponse::BadRequest()
            .insert_header((actix_web::http::header::CONNECTION, "close"))
            .content_type("text/plain")
            .body("one request per connection\n");
        return Ok(req.into_response(refused).map_into_right_body());
    }
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
        match &conn {
            Some(conn) => conn.count_timeout(&state.metrics.http.request_timeouts),
            None => state.metrics.http.request_timeouts.inc(),
        }
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
    let timeouts = state.metrics.http.request_timeouts.clone();
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
            .configure(reports::routes)
            .configure(meta::routes)
    })
    .on_connect(move |io, extensions| {
        // `listen` takes TCP listeners only.
        let Some(socket) = io.downcast_ref::<actix_web::rt::net::TcpStream>() else {
            tracing::error!("http connection of an unknown kind: no deadline can cut it");
            return;
        };
        open.inc();
        if open.get() >= cap {
            limit_reached.inc();
        }
        let at = Instant::now();
        let conn = Rc::new(Conn {
            fd: socket.as_raw_fd(),
            peer: socket.peer_addr().ok(),
            open: Cell::new(true),
            served: Cell::new(false),
            timed_out: Cell::new(false),
        });
        // on_connect runs on the connection's worker thread, within its runtime.
        let timer = actix_web::rt::spawn(cut_at_deadline(
            Rc::downgrade(&conn),
            at + request_timeout,
            timeouts.clone(),
        ));
        extensions.insert(Accepted {
            at,
            conn,
            timer,
            open: open.clone(),
            deadline: at + request_timeout,
            timeouts: timeouts.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A connected pair: herald's end as actix holds it, and the client's.
    fn pair() -> (actix_web::rt::net::TcpStream, std::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (actix_web::rt::net::TcpStream::from_std(server).unwrap(), client)
    }

    fn conn(socket: &actix_web::rt::net::TcpStream) -> Rc<Conn> {
        Rc::new(Conn {
            fd: socket.as_raw_fd(),
            peer: socket.peer_addr().ok(),
            open: Cell::new(true),
            served: Cell::new(false),
            timed_out: Cell::new(false),
        })
    }

    /// A connection still open past its deadline and grace (a client not reading its answer, a handler that
    /// hangs) is shut down and counted, once; one actix dropped is left alone (its descriptor may be another's).
    #[tokio::test]
    async fn the_deadline_shuts_an_open_connection_down_and_leaves_a_dropped_one_alone() {
        let timeouts = IntCounter::new("t", "t").unwrap();
        let (server, mut client) = pair();
        let open = conn(&server);
        let deadline = Instant::now() - ANSWER_GRACE;
        cut_at_deadline(Rc::downgrade(&open), deadline, timeouts.clone()).await;
        assert_eq!(client.read(&mut [0u8; 8]).unwrap(), 0, "the client reads EOF");
        assert_eq!(timeouts.get(), 1);
        open.count_timeout(&timeouts);
        assert_eq!(timeouts.get(), 1, "counted once");

        let (server, mut client) = pair();
        let dropped = conn(&server);
        dropped.open.set(false);
        cut_at_deadline(Rc::downgrade(&dropped), deadline, timeouts.clone()).await;
        assert_eq!(timeouts.get(), 1);
        client.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let still_open = client.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(still_open.kind(), std::io::ErrorKind::WouldBlock);

        // Another socket now at the descriptor (another peer): left alone too.
        let (other, mut other_client) = pair();
        let reused = Conn {
            fd: other.as_raw_fd(),
            ..Rc::into_inner(conn(&server)).unwrap()
        };
        reused.shutdown(Shutdown::Both);
        other_client.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        assert_eq!(
            other_client.read(&mut [0u8; 8]).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
    }
}
