//! HTTP surface (contract §8): metrics, health probes, the template administration and the providers'
//! status callbacks (§13).

pub mod admin;
pub mod receipts;

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::dev::Server;
use actix_web::{App, HttpResponse, HttpServer, web};

use crate::metrics::Metrics;

pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    /// The status callback routes' state; `None`: they answer 404.
    pub receipts: Option<Arc<crate::receipts::Receipts>>,
    /// The outcome store: `/readyz` is false once its state files are gone from `state.path`.
    pub store: Option<Arc<crate::store::Store>>,
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
    if state.ready.load(Ordering::SeqCst) {
        HttpResponse::Ok().content_type("text/plain").body("ready\n")
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("not connected to the broker\n")
    }
}

/// Serves on an already bound listener (bind first, so tests can use port 0 and read the port back).
pub fn serve(listener: TcpListener, state: HttpState, admin: admin::AdminState) -> std::io::Result<Server> {
    let state = web::Data::new(state);
    let admin = web::Data::new(admin);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(admin.clone())
            .app_data(admin::json_config())
            .route("/metrics", web::get().to(metrics))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .configure(admin::routes)
            .configure(receipts::routes)
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}
