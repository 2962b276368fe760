//! The out-of-band (SMS, voice, email) flows of an MFA API, with delivery handed to herald over AMQP.
//!
//! It is an example, kept small: users, tokens and challenges live in memory, tokens are opaque random
//! strings, any username/password "logs in". What it shows as it should be done: codes from the OS random
//! generator, single use, expiring, compared in constant time, locked after too many wrong tries; and a
//! delivery that herald throttled or could not make becomes an error for the caller, not a silent success.
//!
//! Routes (shapes of the Auth0 MFA API):
//! - `POST /oauth/token` `grant_type=password` → 403 `mfa_required` with an `mfa_token`;
//!   `grant_type=http://auth0.com/oauth/grant-type/mfa-oob` → the access token once the code is right.
//! - `POST /mfa/associate` (Bearer mfa_token) → enrolls a phone (sms/voice) or email, sends a code.
//! - `GET /mfa/authenticators` (Bearer mfa_token) → the user's authenticators.
//! - `POST /mfa/challenge` → sends a code to an enrolled authenticator.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures_util::StreamExt;
use herald::job::{EmailAddress, PhoneNumber};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// How long a code (and the `oob_code` naming it) can be used.
const CODE_TTL: Duration = Duration::from_secs(300);
/// Wrong codes before a challenge is locked.
const MAX_WRONG_CODES: u32 = 5;
const MFA_TOKEN_TTL: Duration = Duration::from_secs(600);
const MFA_OOB_GRANT: &str = "http://auth0.com/oauth/grant-type/mfa-oob";

pub struct Settings {
    pub addr: SocketAddr,
    pub amqp_url: String,
    pub jobs_queue: String,
    /// Where verified codes are reported (herald's `amqp.feedback_queue`): its toll-fraud guard budgets
    /// each destination by the codes that get used.
    pub feedback_queue: String,
    pub client_id: String,
    pub client_secret: String,
    pub friendly_name: String,
    pub reply_timeout: Duration,
    /// A herald workflow (docs/workflows.md) that SMS codes go out through instead of the `sms` channel,
    /// e.g. WhatsApp, then SMS, then a voice call: the answer waits for its first step only.
    pub sms_workflow: Option<String>,
}

pub struct Server {
    pub addr: SocketAddr,
    server: actix_web::dev::Server,
}

impl Server {
    pub async fn run(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// Connects to the broker, binds the listener (port 0 works), and returns the server ready to run.
pub async fn start(settings: Settings) -> anyhow::Result<Server> {
    let herald = Herald::connect(&settings.amqp_url, &settings.jobs_queue).await?;
    let listener = TcpListener::bind(settings.addr)?;
    let addr = listener.local_addr()?;
    let state = web::Data::new(State {
        settings,
        herald,
        store: Mutex::new(Store::default()),
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(
                web::JsonConfig::default()
                    .error_handler(|e, _| oauth_error(400, "invalid_request", &e.to_string()).into()),
            )
            .route("/oauth/token", web::post().to(token))
            .route("/mfa/associate", web::post().to(associate))
            .route("/mfa/authenticators", web::get().to(authenticators))
            .route("/mfa/challenge", web::post().to(challenge))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(Server { addr, server })
}

struct State {
    settings: Settings,
    herald: Herald,
    store: Mutex<Store>,
}

impl State {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct Store {
    /// mfa_token → session.
    sessions: HashMap<String, Session>,
    /// user id → enrolled authenticators.
    users: HashMap<String, User>,
    /// oob_code → a code sent and not yet used.
    challenges: HashMap<String, Challenge>,
}

struct Session {
    user_id: String,
    expires: Instant,
    /// True once this login passed an MFA challenge: only then may it enroll a further authenticator.
    verified: bool,
}

#[derive(Default)]
struct User {
    /// Enrolled destinations; a phone is one device with two authenticators, `sms|<id>` and `voice|<id>`.
    devices: Vec<Device>,
    /// (authenticator id, code). An example: the code is kept only to show where it would be checked.
    recovery_code: Option<(String, String)>,
}

struct Device {
    id: String,
    kind: DeviceKind,
    /// Masked, for listing.
    name: String,
    /// Where herald sends codes (never listed or logged).
    to: String,
    active: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DeviceKind {
    Phone,
    Email,
}

struct Challenge {
    user_id: String,
    device_id: String,
    code: String,
    expires: Instant,
    wrong: u32,
    /// The herald job that delivered the code: named in the feedback once the code is verified.
    job_id: Option<String>,
}

/// An OAuth-style error answer: `{"error", "error_description"}` with its HTTP status.
#[derive(Debug)]
struct OAuthError {
    status: actix_web::http::StatusCode,
    error: &'static str,
    description: String,
}

fn oauth_error(status: u16, error: &'static str, description: &str) -> OAuthError {
    OAuthError {
        status: actix_web::http::StatusCode::from_u16(status).unwrap_or_default(),
        error,
        description: description.to_owned(),
    }
}

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error, self.description)
    }
}

impl actix_web::ResponseError for OAuthError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(json!({"error": self.error, "error_description": self.description}))
    }
}

type Answer = Result<HttpResponse, OAuthError>;

/// Random bytes from the OS generator (uuid v4 reads them through getrandom).
fn random_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// A random 6-digit code. A v4 UUID fixes only 6 bits (in bytes 6 and 8); its first 6 bytes, the low 48
/// bits here, are random, so `n mod 10^6` is uniform to within 10^6 / 2^48.
fn random_code() -> String {
    let n = u128::from_le_bytes(*uuid::Uuid::new_v4().as_bytes());
    format!("{:06}", n % 1_000_000)
}

/// The session behind `Authorization: Bearer <mfa_token>`.
fn bearer_user(req: &HttpRequest, store: &Store) -> Result<(String, bool), OAuthError> {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| oauth_error(401, "unauthorized", "Authorization: Bearer <mfa_token> is required."))?;
    session_user(token, store).ok_or_else(|| oauth_error(401, "invalid_token", "The mfa_token is invalid or expired."))
}

fn session_user(token: &str, store: &Store) -> Option<(String, bool)> {
    store
        .sessions
        .get(token)
        .filter(|s| s.expires > Instant::now())
        .map(|s| (s.user_id.clone(), s.verified))
}

/// The IP herald's per-IP limits should count: the caller's address.
fn client_ip(req: &HttpRequest) -> Option<String> {
    req.peer_addr().map(|a| a.ip().to_string())
}

/// The first language of `Accept-Language`, for herald's template choice.
fn locale(req: &HttpRequest) -> Option<String> {
    let header = req.headers().get("accept-language")?.to_str().ok()?;
    let tag = header.split(',').next()?.split(';').next()?.trim();
    (!tag.is_empty() && tag != "*").then(|| tag.to_owned())
}

#[derive(Deserialize)]
struct AssociateRequest {
    authenticator_types: Vec<String>,
    #[serde(default)]
    oob_channels: Vec<String>,
    phone_number: Option<String>,
    email: Option<String>,
}

async fn associate(req: HttpRequest, state: web::Data<State>, body: web::Json<AssociateRequest>) -> Answer {
    let body = body.into_inner();
    if body.authenticator_types != ["oob"] {
        return Err(oauth_error(
            400,
            "unsupported_challenge_type",
            "Only authenticator_types [\"oob\"] is supported.",
        ));
    }
    let channel = match body.oob_channels.as_slice() {
        [c] if matches!(c.as_str(), "sms" | "voice" | "email") => c.clone(),
        _ => {
            return Err(oauth_error(
                400,
                "invalid_request",
                "oob_channels must be one of [\"sms\"], [\"voice\"], [\"email\"].",
            ));
        }
    };
    let (kind, to, name) = if channel == "email" {
        match body.email.as_deref().map(EmailAddress::parse) {
            Some(Ok(email)) => (DeviceKind::Email, email.expose().to_owned(), email.masked()),
            _ => {
                return Err(oauth_error(
                    400,
                    "invalid_request",
                    "A valid email is required for the email channel.",
                ));
            }
        }
    } else {
        match body.phone_number.as_deref().map(PhoneNumber::parse) {
            Some(Ok(phone)) => (DeviceKind::Phone, phone.expose().to_owned(), phone.masked()),
            _ => {
                return Err(oauth_error(
                    400,
                    "invalid_request",
                    "phone_number must be an E.164 number like +14155550123.",
                ));
            }
        }
    };

    let (user_id, device_id, first) = {
        let mut store = state.store();
        let (user_id, verified) = bearer_user(&req, &store)?;
        let user = store.users.entry(user_id.clone()).or_default();
        // With an active authenticator, a further one needs a login that passed MFA (Auth0's rule too).
        if user.devices.iter().any(|d| d.active) && !verified {
            return Err(oauth_error(403, "access_denied", "User is already enrolled."));
        }
        // An enrollment never confirmed is replaced by the new one.
        user.devices.retain(|d| d.active);
        let first = user.devices.is_empty();
        let device_id = format!("dev_{}", &random_token()[..16]);
        user.devices.push(Device {
            id: device_id.clone(),
            kind,
            name,
            to: to.clone(),
            active: false,
        });
        (user_id, device_id, first)
    };

    let (oob_code, code) = new_challenge(&state, &user_id, &device_id);
    match deliver(&req, &state, &channel, &to, &code, "enrollment", &user_id).await {
        Ok(job_id) => sent_by(&state, &oob_code, job_id),
        Err(response) => {
            state.store().challenges.remove(&oob_code);
            return Err(response);
        }
    }
    let mut answer = json!({
        "authenticator_type": "oob",
        "binding_method": "prompt",
        "oob_channel": channel,
        "oob_channels": [channel],
        "oob_code": oob_code,
    });
    if first {
        let recovery = random_token()[..24].to_uppercase();
        if let Some(user) = state.store().users.get_mut(&user_id) {
            user.recovery_code = Some((format!("dev_{}", &random_token()[..16]), recovery.clone()));
        }
        answer["recovery_codes"] = json!([recovery]);
    }
    Ok(HttpResponse::Ok().json(answer))
}

async fn authenticators(req: HttpRequest, state: web::Data<State>) -> Answer {
    let store = state.store();
    let (user_id, _) = bearer_user(&req, &store)?;
    let Some(user) = store.users.get(&user_id) else {
        return Ok(HttpResponse::Ok().json(json!([])));
    };
    let mut list = Vec::new();
    if let Some((id, _)) = &user.recovery_code {
        list.push(
            json!({"id": format!("recovery-code|{id}"), "authenticator_type": "recovery-code",
            "active": user.devices.iter().any(|d| d.active)}),
        );
    }
    for d in &user.devices {
        let channels: &[&str] = match d.kind {
            DeviceKind::Phone => &["sms", "voice"],
            DeviceKind::Email => &["email"],
        };
        for channel in channels {
            list.push(json!({"id": format!("{channel}|{}", d.id), "authenticator_type": "oob",
                "oob_channel": channel, "name": d.name, "active": d.active}));
        }
    }
    Ok(HttpResponse::Ok().json(list))
}

#[derive(Deserialize)]
struct ChallengeRequest {
    client_id: String,
    client_secret: String,
    challenge_type: String,
    authenticator_id: String,
    mfa_token: String,
}

async fn challenge(req: HttpRequest, state: web::Data<State>, body: web::Json<ChallengeRequest>) -> Answer {
    if !client_ok(&state, &body.client_id, &body.client_secret) {
        return Err(oauth_error(401, "invalid_client", "Client authentication failed."));
    }
    if !body.challenge_type.split(' ').any(|t| t == "oob") {
        return Err(oauth_error(
            400,
            "unsupported_challenge_type",
            "Only the oob challenge type is supported.",
        ));
    }
    let found = {
        let store = state.store();
        let Some((user_id, _)) = session_user(&body.mfa_token, &store) else {
            return Err(oauth_error(
                401,
                "invalid_grant",
                "The mfa_token is invalid or expired.",
            ));
        };
        let (channel, device_id) = body.authenticator_id.split_once('|').unwrap_or(("", ""));
        store.users.get(&user_id).and_then(|u| {
            u.devices
                .iter()
                .find(|d| d.id == device_id && d.active)
                .filter(|d| match d.kind {
                    DeviceKind::Phone => matches!(channel, "sms" | "voice"),
                    DeviceKind::Email => channel == "email",
                })
                .map(|d| (user_id.clone(), d.id.clone(), channel.to_owned(), d.to.clone()))
        })
    };
    let Some((user_id, device_id, channel, to)) = found else {
        return Err(oauth_error(
            404,
            "authenticator_not_found",
            "No active authenticator with this id.",
        ));
    };
    let (oob_code, code) = new_challenge(&state, &user_id, &device_id);
    match deliver(
        &req,
        &state,
        &channel,
        &to,
        &code,
        "second-factor-authentication",
        &user_id,
    )
    .await
    {
        Ok(job_id) => sent_by(&state, &oob_code, job_id),
        Err(response) => {
            state.store().challenges.remove(&oob_code);
            return Err(response);
        }
    }
    Ok(HttpResponse::Ok().json(json!({"challenge_type": "oob", "oob_code": oob_code, "binding_method": "prompt"})))
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: String,
    username: Option<String>,
    mfa_token: Option<String>,
    oob_code: Option<String>,
    binding_code: Option<String>,
}

async fn token(state: web::Data<State>, form: web::Form<TokenRequest>) -> Answer {
    let form = form.into_inner();
    match form.grant_type.as_str() {
        // Stands in for the first factor: any username "logs in" and MFA is required.
        "password" => {
            let Some(username) = form.username.filter(|u| !u.is_empty()) else {
                return Err(oauth_error(400, "invalid_request", "username is required."));
            };
            let mfa_token = random_token();
            state.store().sessions.insert(
                mfa_token.clone(),
                Session {
                    user_id: format!("auth0|{username}"),
                    expires: Instant::now() + MFA_TOKEN_TTL,
                    verified: false,
                },
            );
            Ok(HttpResponse::Forbidden().json(json!({"error": "mfa_required",
                "error_description": "Multifactor authentication required", "mfa_token": mfa_token})))
        }
        MFA_OOB_GRANT => verify_oob(&state, form),
        _ => Err(oauth_error(400, "unsupported_grant_type", "Unsupported grant_type.")),
    }
}

fn verify_oob(state: &State, form: TokenRequest) -> Answer {
    let (Some(mfa_token), Some(oob_code), Some(binding_code)) = (form.mfa_token, form.oob_code, form.binding_code)
    else {
        return Err(oauth_error(
            400,
            "invalid_request",
            "mfa_token, oob_code and binding_code are required.",
        ));
    };
    let mut store = state.store();
    let Some((user_id, _)) = session_user(&mfa_token, &store) else {
        return Err(oauth_error(403, "invalid_grant", "Malformed mfa_token"));
    };
    let Some(challenge) = store.challenges.get_mut(&oob_code).filter(|c| c.user_id == user_id) else {
        return Err(oauth_error(403, "invalid_grant", "Invalid oob_code."));
    };
    if challenge.expires <= Instant::now() {
        store.challenges.remove(&oob_code);
        return Err(oauth_error(403, "expired_token", "The oob_code has expired."));
    }
    if challenge.wrong >= MAX_WRONG_CODES {
        return Err(oauth_error(
            429,
            "too_many_attempts",
            "Too many wrong codes: request a new one.",
        ));
    }
    let right: bool = subtle::ConstantTimeEq::ct_eq(challenge.code.as_bytes(), binding_code.as_bytes()).into();
    if !right {
        challenge.wrong += 1;
        return Err(oauth_error(403, "invalid_grant", "Invalid binding_code."));
    }
    // Single use: the code is gone whatever happens next.
    let Some(challenge) = store.challenges.remove(&oob_code) else {
        return Err(oauth_error(403, "invalid_grant", "Invalid oob_code."));
    };
    if let Some(device) = store
        .users
        .get_mut(&user_id)
        .and_then(|u| u.devices.iter_mut().find(|d| d.id == challenge.device_id))
    {
        device.active = true; // confirms an enrollment; no change for a challenge
    }
    if let Some(session) = store.sessions.get_mut(&mfa_token) {
        session.verified = true;
    }
    // Both grants that use a code (confirming an enrollment, answering a challenge) end here: tell herald
    // the code was used.
    if let Some(job_id) = challenge.job_id {
        state.herald.verified(&state.settings.feedback_queue, job_id);
    }
    Ok(HttpResponse::Ok().json(
        json!({"access_token": random_token(), "token_type": "Bearer", "expires_in": 86400,
        "scope": "openid"}),
    ))
}

fn client_ok(state: &State, id: &str, secret: &str) -> bool {
    let s = &state.settings;
    let id_ok: bool = subtle::ConstantTimeEq::ct_eq(id.as_bytes(), s.client_id.as_bytes()).into();
    let secret_ok: bool = subtle::ConstantTimeEq::ct_eq(secret.as_bytes(), s.client_secret.as_bytes()).into();
    id_ok & secret_ok
}

/// Remembers which herald job delivered the code of `oob_code`.
fn sent_by(state: &State, oob_code: &str, job_id: String) {
    if let Some(challenge) = state.store().challenges.get_mut(oob_code) {
        challenge.job_id = Some(job_id);
    }
}

/// A fresh code for `device_id`; returns the `oob_code` naming it and the code itself.
fn new_challenge(state: &State, user_id: &str, device_id: &str) -> (String, String) {
    let oob_code = random_token();
    let code = random_code();
    state.store().challenges.insert(
        oob_code.clone(),
        Challenge {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            code: code.clone(),
            expires: Instant::now() + CODE_TTL,
            wrong: 0,
            job_id: None,
        },
    );
    (oob_code, code)
}

/// Hands the code to herald and waits for its outcome event; any failure becomes the HTTP answer.
async fn deliver(
    req: &HttpRequest,
    state: &State,
    channel: &str,
    to: &str,
    code: &str,
    action: &str,
    user_id: &str,
) -> Result<String, OAuthError> {
    let expires_at = chrono::Utc::now() + CODE_TTL;
    let id = uuid::Uuid::new_v4().to_string();
    let mut job = json!({
        "id": id,
        "channel": channel,
        "to": to,
        "code": code,
        "action": action,
        "user_id": user_id,
        "friendly_name": state.settings.friendly_name,
        // A code nobody can use any more is not worth sending late.
        "expires_at": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    if let Some(ip) = client_ip(req) {
        job["ip"] = json!(ip);
    }
    if let (Some(workflow), "sms") = (&state.settings.sms_workflow, channel) {
        job["workflow"] = json!(workflow);
        job.as_object_mut().map(|j| j.remove("channel"));
    }
    if let Some(locale) = locale(req) {
        job["locale"] = json!(locale);
    }
    let event = match state.herald.send(&job, state.settings.reply_timeout).await {
        Ok(event) => event,
        Err(e) => return Err(oauth_error(503, "temporarily_unavailable", &e)),
    };
    match event["error"]["code"].as_str() {
        None => Ok(id),
        Some("throttled") => Err(oauth_error(
            429,
            "too_many_requests",
            "Too many codes were sent; try again later.",
        )),
        Some("blocked_destination") => Err(oauth_error(
            400,
            "unsupported_destination",
            "Codes cannot be sent to this destination.",
        )),
        Some("provider_rejected") => Err(oauth_error(
            400,
            "invalid_destination",
            "The provider refused this destination.",
        )),
        Some(other) => Err(oauth_error(
            503,
            "delivery_failed",
            &format!("The code could not be delivered ({other})."),
        )),
    }
}

/// herald over AMQP: jobs to its queue with `reply_to` = our own exclusive queue, outcome events back by
/// `correlation_id`.
struct Herald {
    channel: lapin::Channel,
    jobs_queue: String,
    reply_queue: String,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>,
    _connection: Connection,
}

impl Herald {
    async fn connect(url: &str, jobs_queue: &str) -> anyhow::Result<Herald> {
        let props = ConnectionProperties::default().with_connection_name("mfa-server-example".into());
        let connection = Connection::connect(url, props).await?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        // Herald's replies come to a private queue of this process, as they do for `herald send --wait`.
        let (reply_queue, mut replies) = herald::broker::private_queue(&channel, "mfa-replies", None).await?;
        let waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>> = Arc::default();
        let routes = waiting.clone();
        tokio::spawn(async move {
            while let Some(Ok(reply)) = replies.next().await {
                let Some(id) = reply.properties.correlation_id().as_ref().map(|c| c.to_string()) else {
                    continue;
                };
                let waiter = routes.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                if let (Some(waiter), Ok(event)) = (waiter, serde_json::from_slice(&reply.data)) {
                    let _ = waiter.send(event);
                }
            }
        });
        Ok(Herald {
            channel,
            jobs_queue: jobs_queue.to_owned(),
            reply_queue: reply_queue.to_string(),
            waiting,
            _connection: connection,
        })
    }

    /// Reports a verified code on herald's feedback queue (docs/fraud-and-limits.md "Adaptive guard"), in the
    /// background: the user's login does not wait for it, and a lost report only makes herald's guard a little
    /// stricter.
    fn verified(&self, feedback_queue: &str, job_id: String) {
        let channel = self.channel.clone();
        let queue = feedback_queue.to_owned();
        tokio::spawn(async move {
            let body = json!({
                "job_id": job_id,
                "verified": true,
                "verified_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            });
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            let published = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    body.to_string().as_bytes(),
                    props,
                )
                .await;
            if let Err(e) = match published {
                Ok(confirm) => confirm.await.map(|_| ()),
                Err(e) => Err(e),
            } {
                eprintln!("feedback to herald not published: {e}");
            }
        });
    }

    /// Publishes `job` (persistent, confirmed, mandatory) and waits up to `timeout` for its outcome event.
    async fn send(&self, job: &Value, timeout: Duration) -> Result<Value, String> {
        let id = job["id"].as_str().unwrap_or_default().to_owned();
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), tx);
        let forget = || {
            self.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        };
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(id.as_str().into());
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.jobs_queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                job.to_string().as_bytes(),
                props,
            )
            .await;
        let confirmation = match confirm {
            Ok(c) => c.await,
            Err(e) => Err(e),
        };
        match confirmation {
            Ok(lapin::Confirmation::Ack(None)) => {}
            Ok(_) => {
                forget();
                return Err(format!(
                    "the broker did not take the job: is herald running on `{}`?",
                    self.jobs_queue
                ));
            }
            Err(e) => {
                forget();
                return Err(format!("broker: {e}"));
            }
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(event)) => Ok(event),
            _ => {
                forget();
                Err("herald did not report the delivery in time".into())
            }
        }
    }
}
