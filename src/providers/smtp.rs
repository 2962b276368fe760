//! Email over SMTP: multipart text + HTML built with lettre, sent over pooled connections to
//! `smtp://` (plain), `smtp://…?tls=required` (STARTTLS), `smtps://` (implicit TLS), with
//! `user:pass@` for AUTH (docs/configuration.md).
//!
//! The pool is herald's own, over lettre's `AsyncSmtpConnection`, so that the provider timeout bounds
//! the whole exchange *and* a connection caught mid-command by it is closed, never reused: a reused
//! half-finished SMTP transaction could add the next recipient to the previous message.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::Message;
use lettre::address::Envelope;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use tokio::sync::Semaphore;

use super::{Class, Provider, ProviderCode, ProviderError, Receipt, Validity};
use crate::config::smtp::{HelloName, Security, Target};
use crate::job::{Job, Recipient};
use crate::sync::lock;
use crate::templates::Rendered;

struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
}

pub struct Smtp {
    target: Target,
    from: Mailbox,
    timeout: Duration,
    hello: ClientId,
    idle: Mutex<Vec<Idle>>,
    /// Caps connections open at once (the relay's limit matters more than ours).
    slots: Semaphore,
}

/// Idle connections older than this are checked with NOOP before reuse.
const CHECK_AFTER: Duration = Duration::from_secs(10);

impl Smtp {
    /// `target`, `from` and `hello` come parsed from `smtp.url`, `smtp.from` and `smtp.hello_name`
    /// ([`crate::config::SmtpConfig::hello`]); without `hello`, lettre's default: the host name.
    pub fn new(
        target: Target,
        from: Mailbox,
        hello: Option<HelloName>,
        timeout: Duration,
        max_connections: usize,
    ) -> Smtp {
        Smtp {
            target,
            from,
            timeout,
            hello: hello.map_or_else(ClientId::default, |h| ClientId::Domain(h.as_str().to_owned())),
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(max_connections.max(1)),
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, lettre::transport::smtp::Error> {
        let t = &self.target;
        let tls = || TlsParameters::new(t.host().to_owned());
        let wrapper = match t.security() {
            Security::Implicit => Some(tls()?),
            _ => None,
        };
        let mut conn =
            AsyncSmtpConnection::connect_tokio1((t.host(), t.port()), Some(self.timeout), &self.hello, wrapper, None)
                .await?;
        if t.security() == Security::StartTls {
            conn.starttls(tls()?, &self.hello).await?;
        }
        if let Some((user, password)) = t.credentials() {
            conn.auth(
                &[Mechanism::Plain, Mechanism::Login],
                &Credentials::new(user.clone(), password.clone()),
            )
            .await?;
        }
        Ok(conn)
    }

    /// A pooled connection that still answers, or a new one.
    async fn checkout(&self) -> Result<AsyncSmtpConnection, lettre::transport::smtp::Error> {
        loop {
            let idle = lock(&self.idle).pop();
            match idle {
                Some(Idle { conn, since }) if since.elapsed() < CHECK_AFTER => return Ok(conn),
                Some(Idle { mut conn, .. }) => {
                    if conn.test_connected().await {
                        return Ok(conn);
                    }
                    conn.abort().await;
                }
                None => return self.connect().await,
            }
        }
    }

    async fn exchange(&self, envelope: &Envelope, email: &[u8]) -> Result<(), Failure> {
        let mut conn = self.checkout().await.map_err(Failure::Connecting)?;
        // On an error lettre aborts the connection itself; only a clean exchange goes back to the pool.
        conn.send(envelope, email).await.map_err(Failure::Sending)?;
        lock(&self.idle).push(Idle {
            conn,
            since: Instant::now(),
        });
        Ok(())
    }
}

/// Where an exchange failed: lettre's client errors mean different things before and after the
/// connection is up.
#[derive(Debug)]
enum Failure {
    /// Connecting, STARTTLS, AUTH: about the server or the configuration.
    Connecting(lettre::transport::smtp::Error),
    /// On a working connection: an SMTP reply, or lettre refusing this message for this server (a
    /// non-ASCII address without SMTPUTF8, non-ASCII content without 8BITMIME), which no retry changes.
    Sending(lettre::transport::smtp::Error),
}

/// An RFC 3463 enhanced status code, `class.subject.detail` (`5.7.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enhanced {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl Enhanced {
    /// The enhanced code a reply's text starts with (RFC 3463 §2, RFC 2034 §4), if its class is the
    /// reply code's first digit as RFC 3463 requires; any other first word is no enhanced code.
    pub fn of_reply(reply: u16, text: &str) -> Option<Enhanced> {
        let mut parts = text.split_whitespace().next()?.split('.');
        let number = |p: Option<&str>, max: usize| {
            p.filter(|p| (1..=max).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u16>().ok())
        };
        let class = number(parts.next(), 1)?;
        let enhanced = Enhanced {
            class: u8::try_from(class).ok()?,
            subject: number(parts.next(), 3)?,
            detail: number(parts.next(), 3)?,
        };
        (parts.next().is_none() && u16::from(enhanced.class) == reply / 100).then_some(enhanced)
    }
}

impl std::fmt::Display for Enhanced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// How an SMTP refusal is taken (docs/providers/smtp.md): by its reply code (RFC 5321 §4.2: 4xx transient,
/// 5xx permanent) and its enhanced status code (RFC 3463), where the server ties a permanent refusal to the
/// sender (authentication, relaying, policy: 5.7.x; the sender's address: 5.1.7, 5.1.8) rather than to the
/// recipient or the message. `connecting`: the refusal came before the message (greeting, EHLO, STARTTLS,
/// AUTH), which no recipient or message causes.
pub fn class_of(reply: u16, enhanced: Option<Enhanced>, connecting: bool) -> Class {
    let subject_detail = enhanced.map(|e| (e.subject, e.detail));
    match reply {
        // RFC 4954 §6: "A password transition is needed" (4.7.12): the operator must act.
        432 => Class::NextProvider,
        400..=499 => Class::Transient,
        _ if connecting => Class::NextProvider,
        // RFC 4954: authentication required (5.7.0), mechanism too weak (5.7.9), credentials invalid
        // (5.7.8), encryption required (5.7.11).
        530 | 534 | 535 | 538 => Class::NextProvider,
        // RFC 5321 §4.5.3.1.10: "too many recipients" is to be taken as temporary.
        552 if subject_detail == Some((5, 3)) => Class::Transient,
        _ => match subject_detail {
            // Security or policy status: relaying denied, delivery not authorized (5.7.1), the sender's
            // SPF, DKIM or DMARC (5.7.20–5.7.26), its account disabled (5.7.13), …
            Some((7, _)) => Class::NextProvider,
            // Bad sender's mailbox address syntax (5.1.7), bad sender's system address (5.1.8).
            Some((1, 7 | 8)) => Class::NextProvider,
            // The recipient (5.1.1 no such user, 5.2.2 mailbox full, 5.1.10 null MX), the message
            // (5.3.4 too big, 5.6.x content), the destination's routing (5.4.x): the same with any sender.
            _ => Class::Permanent,
        },
    }
}

fn classify(failure: &Failure) -> ProviderError {
    let (e, connecting) = match failure {
        Failure::Sending(e) if e.is_client() && e.status().is_none() => {
            return ProviderError::Permanent {
                message: format!(
                    "the smtp server cannot take this address or message: {}",
                    crate::privacy::scrub(&e.to_string())
                ),
                provider_code: None,
            };
        }
        Failure::Connecting(e) => (e, true),
        Failure::Sending(e) => (e, false),
    };
    if let Some(status) = e.status() {
        // lettre's reply code is three digits by construction; checked all the same, as every provider's is.
        let reply = status.to_string().parse::<u16>().unwrap_or(0);
        let text = std::error::Error::source(e)
            .map(ToString::to_string)
            .unwrap_or_default();
        let enhanced = Enhanced::of_reply(reply, &text);
        let provider_code = match enhanced {
            Some(enhanced) => ProviderCode::smtp(&format!("{reply} {enhanced}")),
            None => ProviderCode::smtp(&reply.to_string()),
        };
        let message = format!(
            "smtp server answered {}",
            provider_code.as_deref().unwrap_or("an SMTP error")
        );
        return ProviderError::of(class_of(reply, enhanced, connecting), message, provider_code, None);
    }
    // No SMTP reply: refused or reset connection, TLS failure, unreadable answer.
    let what = if e.is_tls() {
        "TLS failed"
    } else if e.is_client() {
        "client error"
    } else if e.is_response() {
        "answer could not be read"
    } else {
        "connection failed"
    };
    ProviderError::Transient {
        message: format!("smtp {what}: {}", crate::privacy::scrub(&e.to_string())),
        provider_code: None,
        retry_after: None,
    }
}

#[async_trait::async_trait]
impl Provider for Smtp {
    fn name(&self) -> super::ProviderKind {
        super::ProviderKind::Smtp
    }

    async fn send(&self, job: &Job, message: &Rendered, _validity: Validity) -> Result<Receipt, ProviderError> {
        let (Rendered::Email { subject, text, html }, Recipient::Email(to)) = (message, &job.to) else {
            return Err(ProviderError::Permanent {
                message: "smtp delivers email only".into(),
                provider_code: None,
            });
        };
        let to = to.expose().parse::<Mailbox>().map_err(|_| ProviderError::Permanent {
            message: "recipient is not an address the SMTP client accepts".into(),
            provider_code: None,
        })?;
        let email = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject.as_str())
            // lettre's default is `<…@host name>`; the sender's domain is what receiving servers expect.
            .message_id(Some(format!(
                "<{}@{}>",
                ulid::Ulid::generate(),
                self.from.email.domain()
            )))
            .multipart(MultiPart::alternative_plain_html(text.clone(), html.clone()))
            .map_err(|e| ProviderError::Permanent {
                message: format!("cannot build the email: {e}"),
                provider_code: None,
            })?;
        let message_id = email
            .headers()
            .get_raw("Message-ID")
            .map(|id| id.trim().trim_matches(|c| c == '<' || c == '>').to_owned());
        let envelope = email.envelope().clone();
        let bytes = email.formatted();

        let _slot = self.slots.acquire().await.map_err(|_| ProviderError::Transient {
            message: "smtp provider closed".into(),
            provider_code: None,
            retry_after: None,
        })?;
        // The whole exchange, connecting included, within the provider timeout. A connection dropped here
        // is closed with the future, never returned to the pool.
        match tokio::time::timeout(self.timeout, self.exchange(&envelope, &bytes)).await {
            Ok(Ok(())) => Ok(Receipt::sent(message_id)),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(ProviderError::Transient {
                message: "smtp timed out".into(),
                provider_code: None,
                retry_after: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_codes_are_read_from_the_reply_text() {
        let e = |c, s, d| {
            Some(Enhanced {
                class: c,
                subject: s,
                detail: d,
            })
        };
        assert_eq!(Enhanced::of_reply(550, "5.7.1 Relay access denied"), e(5, 7, 1));
        assert_eq!(Enhanced::of_reply(451, "4.3.0 Try again later"), e(4, 3, 0));
        assert_eq!(Enhanced::of_reply(550, "5.1.10 Recipient has a null MX"), e(5, 1, 10));
        assert_eq!(Enhanced::of_reply(550, "4.7.1 class differs from the reply"), None);
        assert_eq!(Enhanced::of_reply(550, "No such user here"), None);
        assert_eq!(Enhanced::of_reply(550, "5.7 incomplete"), None);
        assert_eq!(Enhanced::of_reply(550, "5.7.1.2 too long"), None);
        assert_eq!(Enhanced::of_reply(550, "5.1234.1 subject too long"), None);
        assert_eq!(Enhanced::of_reply(550, ""), None);
        assert_eq!(e(5, 7, 1).unwrap().to_string(), "5.7.1");
    }

    /// Every row of docs/providers/smtp.md's table.
    #[test]
    fn every_documented_reply_has_its_class() {
        use Class::{NextProvider as Next, Permanent as Perm, Transient as Tran};
        // (reply, enhanced, before the message, class)
        let rows: &[(u16, &str, bool, Class)] = &[
            (421, "4.4.2", false, Tran),
            (421, "", true, Tran),
            (450, "4.2.1", false, Tran),
            (451, "4.3.0", false, Tran),
            (451, "4.7.1", false, Tran),
            (452, "4.2.2", false, Tran),
            (452, "4.3.1", false, Tran),
            (454, "4.7.0", true, Tran),
            (432, "4.7.12", true, Next),
            (530, "5.7.0", true, Next),
            (530, "", false, Next),
            (534, "5.7.9", true, Next),
            (535, "5.7.8", true, Next),
            (538, "5.7.11", true, Next),
            (554, "", true, Next),
            (550, "5.7.1", false, Next),
            (554, "5.7.1", false, Next),
            (550, "5.7.0", false, Next),
            (550, "5.7.13", false, Next),
            (550, "5.7.26", false, Next),
            (553, "5.1.7", false, Next),
            (550, "5.1.8", false, Next),
            (550, "5.1.1", false, Perm),
            (550, "", false, Perm),
            (551, "5.1.6", false, Perm),
            (553, "5.1.3", false, Perm),
            (550, "5.1.10", false, Perm),
            (552, "5.2.2", false, Perm),
            (552, "5.3.4", false, Perm),
            (552, "5.5.3", false, Tran),
            (554, "5.6.0", false, Perm),
            (554, "5.4.4", false, Perm),
            (556, "5.1.10", false, Perm),
            (500, "5.5.2", false, Perm),
        ];
        for (reply, enhanced, connecting, class) in rows {
            let parsed = Enhanced::of_reply(*reply, enhanced);
            assert_eq!(parsed.is_some(), !enhanced.is_empty(), "{reply} {enhanced}");
            assert_eq!(
                class_of(*reply, parsed, *connecting),
                *class,
                "{reply} {enhanced} {connecting}"
            );
        }
    }
}
