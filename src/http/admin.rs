//! Template administration (docs/templates.md "Template administration"): `/admin/api/…` behind the admin bearer token,
//! and the editor page at `/admin/`.

use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::audit::{Audit, TEMPLATE_CHANGED, TemplateChanged};
use crate::config::Secret;
use crate::fraud::Guard;
use crate::job::{Action, Channel, Locale};
use crate::templates::Part;
use crate::templates::{Previewed, Rendered, Sources, TemplateError, TemplateId, TemplateProblem, Templates};

/// Largest request body the admin API reads.
pub const MAX_BODY: usize = 64 * 1024;
/// Twilio refuses TwiML longer than this (a voice template that renders longer is refused).
pub const TWIML_LIMIT: usize = crate::templates::MAX_TWIML_CHARS;

pub struct AdminState {
    pub templates: Arc<Templates>,
    pub token: Secret,
    pub token_name: String,
    pub audit: Arc<Audit>,
    /// For `GET /admin/api/guard`: why the fraud guard lets a destination through or not.
    pub guard: Arc<Guard>,
    /// Slows and counts wrong tokens.
    pub auth: super::auth::AuthLimiter,
    /// `herald_admin_auth_failures_total{reason}`.
    pub auth_failures: prometheus::IntCounterVec,
    /// What WhatsApp sends: Meta-approved templates, nothing herald edits (`whatsapp` of the list).
    pub whatsapp: WhatsappTemplates,
}

/// The approved WhatsApp templates the configuration names, shown read-only (docs/providers/meta.md).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WhatsappTemplates {
    /// `meta.template`; `""` when unset.
    pub meta_template: String,
    /// `meta.template_languages`, as Meta writes them.
    pub meta_languages: Vec<String>,
    /// `twilio.whatsapp_content_sid`; `""` when unset.
    pub twilio_content_sid: String,
}

impl WhatsappTemplates {
    pub fn of(config: &crate::config::Config) -> WhatsappTemplates {
        WhatsappTemplates {
            meta_template: config.meta.template.clone(),
            meta_languages: config
                .meta
                .template_languages
                .iter()
                .map(|l| l.as_str().to_owned())
                .collect(),
            twilio_content_sid: config.twilio.whatsapp_content_sid.clone(),
        }
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/admin",
        web::get().to(|| async {
            HttpResponse::PermanentRedirect()
                .insert_header((header::LOCATION, "/admin/"))
                .finish()
        }),
    )
    .route("/admin/", web::get().to(page))
    .service(
        // The token is checked before anything else, bodies included.
        web::scope("/admin/api")
            .wrap(from_fn(require_token))
            .route("/templates", web::get().to(list))
            .route("/templates/{channel}/{action}/{locale}", web::get().to(read))
            .route("/templates/{channel}/{action}/{locale}", web::put().to(replace))
            .route("/templates/{channel}/{action}/{locale}", web::delete().to(revert))
            .route("/preview", web::post().to(preview))
            .route("/guard", web::get().to(explain_guard)),
    );
}

async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let denied = match req.app_data::<web::Data<AdminState>>().cloned() {
        Some(state) => admit(req.request(), &state).await.err(),
        None => Some(ApiError::Unauthorized("the admin API is not configured")),
    };
    match denied {
        Some(e) => Ok(req
            .into_response(actix_web::ResponseError::error_response(&e))
            .map_into_right_body()),
        None => next.call(req).await.map(ServiceResponse::map_into_left_body),
    }
}

/// [`authorize`], within the client address's budget of failed tries: an empty budget is a 429 before the
/// token is looked at; a wrong token costs a try and is answered after [`FAILURE_DELAY`] (longer while
/// every address together is past its budget); every refusal is counted and warned about once per burst.
///
/// [`FAILURE_DELAY`]: super::auth::FAILURE_DELAY
async fn admit(req: &HttpRequest, state: &AdminState) -> Result<(), ApiError> {
    if state.token.is_empty() {
        return Err(ApiError::Unauthorized("the admin API is disabled: set admin.token"));
    }
    let peer = req.peer_addr().map(|a| a.ip());
    let now = std::time::Instant::now();
    let reason = match state.auth.check(peer, now) {
        Err(wait) => {
            state.auth_failures.with_label_values(&["throttled"]).inc();
            warn_once_per_burst(state, peer);
            return Err(ApiError::Throttled(wait));
        }
        Ok(()) => match authorize(req, state) {
            Ok(()) => return Ok(()),
            Err(reason) => reason,
        },
    };
    state.auth_failures.with_label_values(&[reason]).inc();
    warn_once_per_burst(state, peer);
    // Only a presented token is a guess: a request without one (a browser before its login, a scanner)
    // costs no try and no wait.
    if reason == "wrong" {
        let delay = state.auth.failed(peer, now);
        tokio::time::sleep(delay).await;
    }
    Err(ApiError::Unauthorized("missing or wrong bearer token"))
}

fn warn_once_per_burst(state: &AdminState, peer: Option<std::net::IpAddr>) {
    if let Some(refused) = state.auth.warning.hit() {
        tracing::warn!(
            refused,
            peer = peer.map(|ip| ip.to_string()).unwrap_or_default(),
            // Past the budget of every address together: a guess from many addresses.
            many_addresses = state.auth.busy(std::time::Instant::now()),
            "admin API requests with a missing or wrong bearer token refused (one warning per 10 s; \
             herald_admin_auth_failures_total counts them)"
        );
    }
}

/// JSON bodies: capped, a wrong content type is a 415 naming the right one, and every parse error is a
/// 400 with a message.
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default().limit(MAX_BODY).error_handler(|err, _| {
        let response = match &err {
            actix_web::error::JsonPayloadError::ContentType => actix_web::ResponseError::error_response(
                &ApiError::UnsupportedMediaType("send application/json".into()),
            ),
            _ => bad_request(&err.to_string()),
        };
        actix_web::error::InternalError::from_response(err, response).into()
    })
}

/// Every refusal of the admin API, rendered as JSON `{"error": …}` with its status.
#[derive(Debug)]
enum ApiError {
    BadRequest(String),
    Unauthorized(&'static str),
    NotFound(&'static str),
    Invalid(Vec<TemplateProblem>),
    /// The request is fine but other files in templates.dir are not: nothing was written.
    Conflict(Vec<TemplateProblem>),
    UnsupportedMediaType(String),
    Stale(Option<String>),
    Internal(String),
    /// Too many failed tokens from this client or from everyone: try again after this long.
    Throttled(std::time::Duration),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::BadRequest(m) | ApiError::Internal(m) => f.write_str(m),
            ApiError::UnsupportedMediaType(m) => write!(f, "unsupported content type: {m}"),
            ApiError::Conflict(problems) => write!(
                f,
                "templates.dir has problems outside this template, nothing was written: {}",
                problems.first().map(ToString::to_string).unwrap_or_default()
            ),
            ApiError::Unauthorized(m) | ApiError::NotFound(m) => f.write_str(m),
            ApiError::Invalid(problems) => {
                write!(
                    f,
                    "invalid template: {}",
                    problems.first().map(ToString::to_string).unwrap_or_default()
                )
            }
            ApiError::Throttled(_) => f.write_str("too many requests with a wrong bearer token: try again later"),
            ApiError::Stale(_) => f.write_str(
                "the template changed since you read it (If-Match does not match its ETag): reload it and edit again",
            ),
        }
    }
}

impl actix_web::ResponseError for ApiError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        use actix_web::http::StatusCode;
        match self {
            ApiError::BadRequest(_) | ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Stale(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = json!({ "error": self.to_string() });
        match self {
            ApiError::Invalid(problems) | ApiError::Conflict(problems) => {
                body["problems"] = problems
                    .iter()
                    .map(|p| json!({"file": p.file, "line": p.line, "column": p.column, "message": p.message}))
                    .collect();
            }
            ApiError::Stale(etag) => body["etag"] = json!(etag),
            ApiError::Internal(e) => tracing::error!(error = %e, "template store"),
            _ => {}
        }
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Unauthorized(_)) {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"herald admin\""));
        }
        if let ApiError::Throttled(wait) = self {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response.insert_header((header::RETRY_AFTER, seconds.max(1).to_string()));
        }
        response.json(body)
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// A refused save: the template's own problems are the client's (400), other files' are a conflict
/// (409), and a disk that cannot be read or written is the server's (500).
fn store_error(id: &TemplateId, e: TemplateError) -> ApiError {
    match e {
        TemplateError::Invalid(problems) if problems.iter().all(|p| id.owns(p)) => ApiError::Invalid(problems),
        TemplateError::Invalid(problems) => ApiError::Conflict(problems),
        other => internal(other),
    }
}

/// File work (and waiting for another replica's save) off the HTTP worker.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    web::block(f).await.map_err(internal)?
}

fn bad_request(message: &str) -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::BadRequest(message.to_owned()))
}

/// Bearer token check in constant time (its length aside); `Err` names the failure as counted
/// (`missing`, `wrong`).
fn authorize(req: &HttpRequest, state: &AdminState) -> Result<(), &'static str> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        // The scheme is case-insensitive (RFC 9110 §11.1).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim());
    if presented.is_empty() {
        return Err("missing");
    }
    let expected = state.token.expose().as_bytes();
    if bool::from(presented.as_bytes().ct_eq(expected)) {
        Ok(())
    } else {
        Err("wrong")
    }
}

/// Channel, action and locale from the path (or a body), each checked: nothing unchecked reaches a
/// file name, so `../`, absolute paths and NUL cannot.
fn template_id(channel: &str, action: &str, locale: &str) -> Result<TemplateId, ApiError> {
    let channel = Channel::parse(channel)
        .filter(|c| *c != Channel::Whatsapp)
        .ok_or_else(|| {
            if channel == Channel::Whatsapp.as_str() {
                return ApiError::BadRequest(
                    "whatsapp messages are templates Meta approved (meta.template): herald has none to edit".into(),
                );
            }
            ApiError::BadRequest(format!(
                "unknown channel `{}` (sms, voice or email)",
                channel.escape_debug()
            ))
        })?;
    let action = Action::parse(action).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "unknown action `{}` (enrollment or second-factor-authentication)",
            action.escape_debug()
        ))
    })?;
    let locale = Locale::parse(locale).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(TemplateId {
        channel,
        action,
        locale,
    })
}

fn etag(sources: &Sources) -> String {
    let mut hash = Sha256::new();
    for (name, text) in sources {
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update(text.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    format!(
        "\"{}\"",
        digest[..12].iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn describe(id: &TemplateId, sources: &Sources) -> Value {
    let shipped = Templates::shipped(id);
    json!({
        "channel": id.channel.as_str(),
        "action": id.action.as_str(),
        "locale": id.locale.as_str(),
        "parts": sources,
        "etag": etag(sources),
        "has_default": shipped.is_some(),
        "is_default": shipped.as_ref() == Some(sources),
    })
}

/// The page itself holds no data (it asks for the token), so it needs no Authorization header; it is
/// 401 like the API while the admin API is disabled.
async fn page(state: web::Data<AdminState>) -> HttpResponse {
    if state.token.is_empty() {
        return actix_web::ResponseError::error_response(&ApiError::Unauthorized(
            "the admin API is disabled: set admin.token",
        ));
    }
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            "Content-Security-Policy",
            "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
        ))
        .body(include_str!("admin.html"))
}

#[derive(Deserialize)]
struct GuardQuery {
    /// A number or number prefix in E.164 form: `+8821654`.
    to: String,
    ip: Option<String>,
}

/// `GET /admin/api/guard?to=+8821654[&ip=203.0.113.7]`: the fraud guard's counts and budgets for the
/// destination's range and country (and the IP), and whether one more unverified code fits.
async fn explain_guard(state: web::Data<AdminState>, query: web::Query<GuardQuery>) -> Result<HttpResponse, ApiError> {
    // `?to=+8821654` as typed: an unencoded `+` in a query string arrives as a space.
    let digits = query
        .to
        .strip_prefix('+')
        .or_else(|| query.to.strip_prefix(' '))
        .filter(|d| (1..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| ApiError::BadRequest("`to` must be `+` and 1 to 15 digits: a number or its prefix".into()))?;
    let ip = match &query.ip {
        None => None,
        Some(ip) => Some(
            ip.parse()
                .map_err(|_| ApiError::BadRequest("`ip` is not an IPv4 or IPv6 address".into()))?,
        ),
    };
    let levels = state
        .guard
        .explain(digits, ip)
        .await
        .map_err(|e| ApiError::Internal(format!("fraud guard state unavailable: {e}")))?
        .ok_or_else(|| ApiError::BadRequest("`to` does not start with a country calling code".into()))?;
    let settings = state.guard.settings();
    Ok(HttpResponse::Ok().json(json!({
        "mode": settings.mode.as_str(),
        "enforcing": state.guard.is_enforcing(),
        "ratio": settings.ratio,
        "levels": levels,
    })))
}

async fn list(state: web::Data<AdminState>) -> Result<HttpResponse, ApiError> {
    let templates = state.templates.clone();
    let out = blocking(move || {
        let ids = templates.list().map_err(internal)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Ok(Some(sources)) = templates.read(&id) {
                let mut entry = describe(&id, &sources);
                entry.as_object_mut().map(|o| o.remove("parts"));
                out.push(entry);
            }
        }
        Ok(out)
    })
    .await?;
    let w = &state.whatsapp;
    Ok(HttpResponse::Ok().json(json!({
        "templates": out,
        "default_locale": state.templates.default_locale().as_str(),
        "whatsapp": {
            "editable": false,
            "note": "WhatsApp messages are templates Meta approved: herald sends the code into them and has nothing to edit",
            "meta": { "template": w.meta_template, "languages": w.meta_languages },
            "twilio": { "content_sid": w.twilio_content_sid },
        },
    })))
}

/// The template as it is on disk, read off the HTTP worker.
async fn current(state: &AdminState, id: &TemplateId) -> Result<Option<Sources>, ApiError> {
    let (templates, id) = (state.templates.clone(), id.clone());
    blocking(move || templates.read(&id).map_err(internal)).await
}

async fn read(
    path: web::Path<(String, String, String)>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    let id = template_id(&path.0, &path.1, &path.2)?;
    let sources = current(&state, &id).await?.ok_or(ApiError::NotFound(
        "no such template (lookups fall back to the language or the default locale)",
    ))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, etag(&sources)))
        .json(describe(&id, &sources)))
}

/// A `PUT` body: `{"parts": …}`, or the whole representation `GET` returns, so that a read can be
/// edited and sent back. Its `channel`, `action` and `locale` must name the template of the path, its
/// `etag` must be the current one (like `If-Match`); `has_default`, `is_default` and `warnings` are
/// read-only and ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Replace {
    parts: std::collections::BTreeMap<String, String>,
    channel: Option<String>,
    action: Option<String>,
    locale: Option<String>,
    etag: Option<String>,
    #[serde(rename = "has_default")]
    _has_default: Option<Value>,
    #[serde(rename = "is_default")]
    _is_default: Option<Value>,
    #[serde(rename = "warnings")]
    _warnings: Option<Value>,
}

/// The content types a `PUT` takes.
const PUT_TYPES: &str = "application/json, or text/plain for a one-part (sms or voice) template";

/// The body of a `PUT`, read up to [`MAX_BODY`], as parts plus the ETag it was read with, if any.
async fn replace_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    id: &TemplateId,
) -> Result<(std::collections::BTreeMap<String, String>, Option<String>), ApiError> {
    use futures_util::StreamExt;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let json = mime == "application/json" || mime.ends_with("+json");
    if !json && mime != "text/plain" {
        return Err(ApiError::UnsupportedMediaType(format!(
            "`{}`; send {PUT_TYPES}",
            content_type.escape_debug()
        )));
    }
    if !json && Part::of(id.channel).len() > 1 {
        return Err(ApiError::UnsupportedMediaType(format!(
            "an {} template has several parts: send them as application/json",
            id.channel.as_str()
        )));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(ApiError::BadRequest(format!(
                "the body is larger than allowed ({MAX_BODY} bytes)"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    if !json {
        let text = String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::BadRequest("a text/plain body must be UTF-8".into()))?;
        return Ok(([(Part::Body.name().to_owned(), text)].into(), None));
    }
    let replace: Replace =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    let named = |field: &str, given: &Option<String>, want: &str, same: bool| match given {
        Some(g) if !same => Err(ApiError::BadRequest(format!(
            "`{field}` is `{}` but the path names `{want}`",
            g.escape_debug()
        ))),
        _ => Ok(()),
    };
    named(
        "channel",
        &replace.channel,
        id.channel.as_str(),
        replace.channel.as_deref() == Some(id.channel.as_str()),
    )?;
    named(
        "action",
        &replace.action,
        id.action.as_str(),
        replace.action.as_deref() == Some(id.action.as_str()),
    )?;
    named(
        "locale",
        &replace.locale,
        id.locale.as_str(),
        replace.locale.as_deref().map(Locale::parse) == Some(Ok(id.locale.clone())),
    )?;
    Ok((replace.parts, replace.etag))
}

/// The part names of the request, as the template's own (`&'static str`) names; unknown ones stay
/// for `validate` to report.
fn sources_of(id: &TemplateId, parts: std::collections::BTreeMap<String, String>) -> Result<Sources, ApiError> {
    let mut sources = Sources::new();
    for (name, text) in parts {
        let Some(part) = Part::of(id.channel).iter().find(|p| p.name() == name) else {
            return Err(ApiError::BadRequest(format!(
                "`{}` is not a part of a {} template ({})",
                name.escape_debug(),
                id.channel.as_str(),
                Part::of(id.channel)
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        if text.contains('\0') {
            return Err(ApiError::BadRequest("templates cannot contain NUL characters".into()));
        }
        sources.insert(part.name(), text);
    }
    Ok(sources)
}

/// `If-Match` (or the body's `etag`) against the current version: `Err(412)` on a stale edit.
fn check_if_match(req: &HttpRequest, body_etag: Option<&str>, current: Option<&Sources>) -> Result<(), ApiError> {
    let header = req.headers().get(header::IF_MATCH).and_then(|v| v.to_str().ok());
    let Some(wanted) = header.or(body_etag) else {
        return Ok(());
    };
    let wanted = wanted.trim();
    let matches = match current {
        Some(sources) => wanted == "*" || wanted.split(',').any(|t| t.trim() == etag(sources)),
        None => false,
    };
    if matches {
        Ok(())
    } else {
        Err(ApiError::Stale(current.map(etag)))
    }
}

async fn replace(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    payload: web::Payload,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    let id = template_id(&path.0, &path.1, &path.2)?;
    let (parts, body_etag) = replace_body(&req, payload, &id).await?;
    let sources = sources_of(&id, parts)?;
    let previewed = state.templates.preview(&id, &sources).map_err(ApiError::Invalid)?;
    let now = current(&state, &id).await?;
    check_if_match(&req, body_etag.as_deref(), now.as_ref())?;
    let (templates, save_id, saved) = (state.templates.clone(), id.clone(), sources.clone());
    blocking(move || templates.save(&save_id, &saved).map_err(|e| store_error(&save_id, e))).await?;
    let tag = etag(&sources);
    state
        .audit
        .emit(&change(&state, &id, "replace", Some(tag.clone())))
        .await;
    let mut out = describe(&id, &sources);
    out["warnings"] = json!(warnings(&previewed));
    Ok(HttpResponse::Ok().insert_header((header::ETAG, tag)).json(out))
}

async fn revert(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    let id = template_id(&path.0, &path.1, &path.2)?;
    let now = current(&state, &id)
        .await?
        .ok_or(ApiError::NotFound("no such template"))?;
    check_if_match(&req, None, Some(&now))?;
    let (templates, revert_id) = (state.templates.clone(), id.clone());
    let now = blocking(move || templates.revert(&revert_id).map_err(|e| store_error(&revert_id, e))).await?;
    state
        .audit
        .emit(&change(&state, &id, "revert", now.as_ref().map(etag)))
        .await;
    Ok(match now {
        Some(sources) => HttpResponse::Ok()
            .insert_header((header::ETAG, etag(&sources)))
            .json(describe(&id, &sources)),
        None => HttpResponse::Ok().json(json!({
            "channel": id.channel.as_str(), "action": id.action.as_str(), "locale": id.locale.as_str(), "removed": true,
        })),
    })
}

fn change(state: &AdminState, id: &TemplateId, what: &'static str, etag: Option<String>) -> TemplateChanged {
    TemplateChanged {
        date: crate::clock::now_rfc3339(),
        kind: TEMPLATE_CHANGED,
        description: "Template changed",
        who: state.token_name.clone(),
        change: what,
        channel: id.channel.as_str(),
        action: id.action.as_str(),
        locale: id.locale.to_string(),
        etag,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Preview {
    channel: String,
    #[serde(default = "default_action")]
    action: String,
    /// Default: `templates.default_locale`, the locale a job without one gets.
    locale: Option<String>,
    parts: std::collections::BTreeMap<String, String>,
}

fn default_action() -> String {
    "second-factor-authentication".into()
}

async fn preview(body: web::Json<Preview>, state: web::Data<AdminState>) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let locale = body
        .locale
        .unwrap_or_else(|| state.templates.default_locale().to_string());
    let id = template_id(&body.channel, &body.action, &locale)?;
    let sources = sources_of(&id, body.parts)?;
    let previewed = state.templates.preview(&id, &sources).map_err(ApiError::Invalid)?;
    Ok(HttpResponse::Ok().json(describe_rendered(&previewed, &id, state.templates.default_locale())))
}

fn describe_rendered(previewed: &Previewed, id: &TemplateId, default_locale: &crate::job::Locale) -> Value {
    let mut out = match &previewed.rendered {
        Rendered::Sms { body } => json!({ "text": body, "sms": crate::sms::segments(body) }),
        Rendered::Voice { text, language } => {
            let twiml = crate::templates::twiml::twiml_in(text, language, default_locale);
            json!({
                "text": text.replace(crate::templates::PAUSE, " … "),
                "voice": { "twiml": twiml, "twiml_length": twiml.chars().count(), "twiml_limit": TWIML_LIMIT },
            })
        }
        Rendered::Email { subject, text, html } => {
            json!({ "email": { "subject": subject, "text": text, "html": html } })
        }
        // Never previewed: `template_id` refuses the channel.
        Rendered::Whatsapp => json!({}),
    };
    out["channel"] = id.channel.as_str().into();
    out["locale"] = id.locale.as_str().into();
    out["warnings"] = json!(warnings(previewed));
    out
}

/// What a save should hear about: the checks' warnings (variables that are neither built in nor declared,
/// an SMS in several segments) and an SMS with a link in it. (A message over its channel's length limit is refused by the
/// checks, not warned about.)
fn warnings(previewed: &Previewed) -> Vec<String> {
    let mut out: Vec<String> = previewed.warnings.iter().map(ToString::to_string).collect();
    match &previewed.rendered {
        Rendered::Sms { body } => {
            if has_url(body) {
                out.push(
                    "the SMS contains a URL: carriers filter SMS with links, and a link next to a code is what \
                     phishing looks like; prefer a code alone (or a WebOTP `@domain #code` line)"
                        .into(),
                );
            }
        }
        Rendered::Voice { .. } | Rendered::Email { .. } | Rendered::Whatsapp => {}
    }
    out
}

/// `http://`, `https://` or `www.` anywhere, in any case.
fn has_url(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    ["http://", "https://", "www."].iter().any(|p| lower.contains(p))
}
