//! Replies to a job's `reply_to` (docs/operations.md, "Replies"): the address checked when the job is
//! parsed, and the publishing of replies on a connection of their own once their job has committed.
//!
//! A reply is published to whatever the publisher named, and some names make the broker close the whole
//! connection: on RabbitMQ 3.10 a malformed direct reply-to name (`amq.rabbitmq.reply-to.abc.def`, or a
//! well-formed one naming a node the broker does not know) ends it with 541 INTERNAL_ERROR, and a queue the
//! user may not write to closes the channel with 403. Inside the jobs' batch transaction one such reply
//! took every job of the batch down with it, again on each reconnect. So the names that can be told bad
//! are refused with their job, and the rest go out here: after the commit, on a separate connection with
//! publisher confirms, where a reply the broker refuses costs only itself.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Connection};
use prometheus::IntCounterVec;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::{self, BrokerError};
use crate::config::AmqpConfig;
use crate::job::ReplyToError;
use crate::receipts::RateLimitedWarning;
use crate::sync::lock;

/// RabbitMQ's direct reply-to pseudo-queue; the broker hands its consumers names below it.
const DIRECT: &str = "amq.rabbitmq.reply-to";

/// A `reply_to` herald may publish a reply to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    name: ShortString,
    /// For a direct reply-to name, the node its pid names: what decides whether the broker can deliver it
    /// or closes the connection (see [`Replies::send`]).
    node: Option<Arc<[u8]>>,
}

/// The queues herald consumes from or keeps its state in: a reply there would be read as a job, as
/// feedback, as a dead letter or as a commit marker.
#[derive(Debug, Clone)]
pub struct OwnQueues {
    names: Vec<String>,
    prefixes: Vec<String>,
}

impl OwnQueues {
    pub fn new(config: &AmqpConfig) -> OwnQueues {
        OwnQueues {
            names: vec![
                config.jobs_queue.clone(),
                config.retry_queue.clone(),
                config.dead_queue.clone(),
                config.feedback_queue.clone(),
            ],
            // The retry delay queues and the commit-marker queues (broker.rs names them).
            prefixes: vec![
                format!("{}.", config.retry_queue),
                format!("{}.commits.", config.jobs_queue),
            ],
        }
    }

    fn holds(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name) || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }
}

impl ReplyTo {
    /// Any queue name but herald's own; below `amq.rabbitmq.reply-to`, only the shape the broker issues.
    pub fn parse(raw: &str, own: &OwnQueues) -> Result<ReplyTo, ReplyToError> {
        if own.holds(raw) {
            return Err(ReplyToError::OwnQueue);
        }
        let node = if raw == DIRECT || raw.starts_with("amq.rabbitmq.reply-to.") {
            Some(direct_reply_to_node(&raw[DIRECT.len()..]).ok_or(ReplyToError::DirectReplyTo)?)
        } else {
            None
        };
        // A reply_to property is a short string already: at most 255 bytes.
        let name = ShortString::try_new(raw.to_owned()).map_err(|_| ReplyToError::DirectReplyTo)?;
        Ok(ReplyTo {
            name,
            node: node.map(Arc::from),
        })
    }

    pub fn as_str(&self) -> &str {
        self.name.as_str()
    }
}

/// `.<pid>.<key>` (RabbitMQ up to 4.1) or `.<pid>` (4.2 on), where `<pid>` is the base64 of an Erlang
/// external-format process id. RabbitMQ splits the name on dots, ignoring empty parts, and decodes the
/// first part as a term: anything else crashes its channel (measured on 3.10.8, docs/operations.md).
/// The pid's node, when the name has that shape.
fn direct_reply_to_node(rest: &str) -> Option<Vec<u8>> {
    let parts: Vec<&str> = rest.split('.').filter(|p| !p.is_empty()).collect();
    let (pid, key) = match parts.as_slice() {
        [pid] => (*pid, None),
        [pid, key] => (*pid, Some(*key)),
        _ => return None,
    };
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let key_ok = key.is_none_or(|k| {
        k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    });
    if !key_ok {
        return None;
    }
    pid_node(&engine.decode(pid).ok()?).map(<[u8]>::to_vec)
}

/// The node of an Erlang external term holding exactly one pid: version 131, `NEW_PID_EXT` (88) or
/// `PID_EXT` (103), a node atom `name@host`, then id, serial and creation, and nothing after.
fn pid_node(term: &[u8]) -> Option<&[u8]> {
    let [131, tag, rest @ ..] = term else {
        return None;
    };
    let tail = match tag {
        88 => 12,
        103 => 9,
        _ => return None,
    };
    let (node, rest) = match rest {
        // ATOM_UTF8_EXT, ATOM_EXT: two length bytes.
        [118 | 100, hi, lo, rest @ ..] => {
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            match rest.get(..len) {
                Some(node) => (node, &rest[len..]),
                None => return None,
            }
        }
        // SMALL_ATOM_UTF8_EXT, SMALL_ATOM_EXT: one.
        [119 | 115, len, rest @ ..] => {
            let len = usize::from(*len);
            match rest.get(..len) {
                Some(node) => (node, &rest[len..]),
                None => return None,
            }
        }
        _ => return None,
    };
    let at = node.iter().position(|&b| b == b'@');
    (at.is_some_and(|at| at > 0 && at + 1 < node.len()) && rest.len() == tail).then_some(node)
}

/// One reply: the outcome event, to `reply_to`, with the job's `correlation_id`.
pub struct Reply {
    pub to: ReplyTo,
    pub correlation_id: Option<ShortString>,
    /// The event type, the message's AMQP `type`.
    pub kind: ShortString,
    pub body: Arc<Vec<u8>>,
}

/// Replies waiting for the replier at most; more are dropped (and counted): a broker that refuses new
/// connections must not grow herald's memory without bound. Their events are on `herald.events`.
const BACKLOG: usize = 10_000;
/// Replies published together before their confirms are awaited.
const BATCH: usize = 256;
/// How long replies still waiting at shutdown may take to go out.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Replies to direct reply-to nodes not yet seen to work wait here at most (see [`Replies::send`]).
const PROBATION_BACKLOG: usize = 1_000;
/// Nodes remembered as working, or as refused; past this many, a set starts over.
const NODES_REMEMBERED: usize = 1_024;
/// After the broker refused a reply on probation (and closed that connection), the probation lane waits
/// this long before its next one: a flood of such names costs the broker at most 20 connections a second.
const PROBATION_PAUSE: Duration = Duration::from_millis(50);

/// Direct reply-to nodes, by what publishing to them did.
#[derive(Default)]
struct Nodes {
    /// A reply to them was confirmed: the broker knows them.
    working: HashSet<Arc<[u8]>>,
    /// A reply to them closed the connection.
    refused: HashSet<Arc<[u8]>>,
}

/// Where committed jobs hand their replies; see the module docs. Cloned by every lane.
///
/// Two replier connections: one for replies that cannot close a connection (ordinary queues, and direct
/// reply-to names of nodes a reply already reached), batched; one on probation for direct reply-to names
/// of nodes not seen yet, one reply at a time. A publisher flooding names of nodes that do not exist
/// (each closes the connection it is published on) then only delays and drops replies on probation:
/// the replies of every caller whose node works go out as before.
#[derive(Clone)]
pub struct Replies {
    tx: mpsc::Sender<Reply>,
    probation: mpsc::Sender<Reply>,
    nodes: Arc<Mutex<Nodes>>,
    /// `herald_replies_total{result}`.
    results: IntCounterVec,
}

impl Replies {
    /// Starts the repliers: each connects when its first reply comes, and ends once `finish` fires and
    /// every reply handed to it is out (or [`SHUTDOWN_GRACE`] later).
    pub fn start(
        config: AmqpConfig,
        results: IntCounterVec,
        finish: CancellationToken,
    ) -> (Replies, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(BACKLOG);
        let (probation, probation_rx) = mpsc::channel(PROBATION_BACKLOG);
        let nodes = Arc::new(Mutex::new(Nodes::default()));
        let warnings = Arc::new(RateLimitedWarning::default());
        let replier = |rx, on_probation| Replier {
            config: config.clone(),
            results: results.clone(),
            rx,
            finish: finish.clone(),
            on_probation,
            nodes: nodes.clone(),
            warnings: warnings.clone(),
        };
        let main = tokio::spawn(replier(rx, false).run());
        let probation_task = tokio::spawn(replier(probation_rx, true).run());
        let both = tokio::spawn(async move {
            let _ = main.await;
            let _ = probation_task.await;
        });
        (
            Replies {
                tx,
                probation,
                nodes,
                results,
            },
            both,
        )
    }

    /// Queues a committed job's reply; never waits.
    pub fn send(&self, reply: Reply) {
        let lane = match &reply.to.node {
            None => &self.tx,
            Some(node) => {
                let nodes = lock(&self.nodes);
                if nodes.refused.contains(node) {
                    drop(nodes);
                    self.results.with_label_values(&["refused"]).inc();
                    return;
                }
                if nodes.working.contains(node) {
                    &self.tx
                } else {
                    &self.probation
                }
            }
        };
        if lane.try_send(reply).is_err() {
            self.results.with_label_values(&["dropped"]).inc();
        }
    }
}

/// Logs a refused reply: at most one line per 10 s with the count since the last (a flood of bad addresses
/// must not become a flood of log lines).
fn refused(warning: &RateLimitedWarning) {
    if let Some(count) = warning.hit() {
        tracing::warn!(
            refused = count,
            "the broker refused replies to jobs' reply_to; dropped (their events are on the events exchange)"
        );
    }
}

struct Replier {
    config: AmqpConfig,
    results: IntCounterVec,
    rx: mpsc::Receiver<Reply>,
    finish: CancellationToken,
    /// The probation lane: one reply at a time, and what each did to the connection is remembered of its
    /// node.
    on_probation: bool,
    nodes: Arc<Mutex<Nodes>>,
    warnings: Arc<RateLimitedWarning>,
}

/// How one publish of a reply ended.
enum Published {
    Confirmed,
    /// Nacked, or its channel or connection closed by the broker with an error: this reply's fault.
    Refused,
}

impl Replier {
    async fn run(mut self) {
        // Taken from the queue and not yet confirmed, oldest first.
        let mut pending: VecDeque<Reply> = VecDeque::new();
        // After a failed batch, this many of `pending` go one at a time: the one the broker refuses is
        // dropped, the others still go out.
        let mut one_by_one = 0usize;
        // Failures of the oldest pending reply, alone on a fresh connection, that the broker did not name as
        // its refusal: after `STRIKES`, it is taken as refused anyway (a broker that is down fails the
        // connect instead, which is no strike).
        let mut strikes = 0u32;
        let mut backoff = Duration::from_millis(100);
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut connection: Option<(Connection, Channel)> = None;
        loop {
            // Seen here too, not only while idle: a lane with a long backlog must still stop in time.
            if deadline.is_none() && self.finish.is_cancelled() {
                deadline = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
            }
            if pending.is_empty() {
                let mut taken = Vec::with_capacity(BATCH);
                if deadline.is_some() {
                    // Finishing: only what is queued already is waited for.
                    while taken.len() < BATCH
                        && let Ok(reply) = self.rx.try_recv()
                    {
                        taken.push(reply);
                    }
                    if taken.is_empty() {
                        break;
                    }
                } else {
                    tokio::select! {
                        n = self.rx.recv_many(&mut taken, BATCH) => if n == 0 { break },
                        _ = self.finish.cancelled() => {
                            deadline = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                            continue;
                        }
                    }
                }
                pending.extend(taken);
                if self.on_probation {
                    one_by_one = pending.len();
                }
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                break;
            }
            let channel = match &connection {
                Some((c, ch)) if c.status().connected() => ch.clone(),
                _ => match self.open().await {
                    Ok(opened) => {
                        let channel = opened.1.clone();
                        connection = Some(opened);
                        channel
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, replies = pending.len(), "cannot open the replies connection");
                        self.pause(&mut backoff, deadline).await;
                        continue;
                    }
                },
            };
            if one_by_one > 0 {
                let Some(reply) = pending.front() else {
                    one_by_one = 0;
                    continue;
                };
                match publish(&channel, reply).await {
                    Ok(published) => {
                        self.count(&published, 1);
                        self.learn(reply, &published);
                        if matches!(published, Published::Refused) {
                            refused(&self.warnings);
                            // The broker may have closed the channel or the connection with it.
                            discard(&mut connection);
                            if self.on_probation {
                                tokio::time::sleep(PROBATION_PAUSE).await;
                            }
                        }
                        pending.pop_front();
                        one_by_one -= 1;
                        strikes = 0;
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) => {
                        discard(&mut connection);
                        strikes += 1;
                        if strikes >= STRIKES {
                            self.count(&Published::Refused, 1);
                            self.learn(reply, &Published::Refused);
                            refused(&self.warnings);
                            pending.pop_front();
                            one_by_one -= 1;
                            strikes = 0;
                        } else {
                            tracing::warn!(error = %e, "replies connection lost");
                            self.pause(&mut backoff, deadline).await;
                        }
                    }
                }
                continue;
            }
            let results = publish_all(&channel, &pending).await;
            let mut failed = None;
            let mut kept = VecDeque::new();
            for (reply, result) in pending.drain(..).zip(results) {
                match result {
                    Ok(published) => self.count(&published, 1),
                    Err(e) => {
                        failed.get_or_insert(e);
                        kept.push_back(reply);
                    }
                }
            }
            pending = kept;
            match failed {
                None => backoff = Duration::from_millis(100),
                Some(e) => {
                    // Those not confirmed go again, one at a time: the one the broker refuses is found and
                    // dropped. (Those confirmed as the connection went, up to a batch, can go twice.)
                    tracing::warn!(error = %e, replies = pending.len(), "a batch of replies failed; publishing them one at a time");
                    one_by_one = pending.len();
                    discard(&mut connection);
                }
            }
        }
        let left = pending.len() + std::iter::from_fn(|| self.rx.try_recv().ok()).count();
        if left > 0 {
            tracing::warn!(
                replies = left,
                "replies not published before shutdown (their events are out)"
            );
            self.results.with_label_values(&["dropped"]).inc_by(left as u64);
        }
        if let Some((connection, _)) = connection {
            let _ = connection.close(200, "shutdown".into()).await;
        }
    }

    /// What a reply on probation says of its node.
    fn learn(&self, reply: &Reply, published: &Published) {
        let (true, Some(node)) = (self.on_probation, &reply.to.node) else {
            return;
        };
        let mut nodes = lock(&self.nodes);
        let set = match published {
            Published::Confirmed => &mut nodes.working,
            Published::Refused => &mut nodes.refused,
        };
        if set.len() >= NODES_REMEMBERED {
            set.clear();
        }
        set.insert(node.clone());
    }

    fn count(&self, published: &Published, n: u64) {
        let result = match published {
            Published::Confirmed => "sent",
            Published::Refused => "refused",
        };
        self.results.with_label_values(&[result]).inc_by(n);
    }

    async fn open(&self) -> Result<(Connection, Channel), BrokerError> {
        let name = if self.on_probation {
            "herald-replies-probation"
        } else {
            "herald-replies"
        };
        let connection = broker::connect(&self.config, &format!("{name}:{}", self.config.jobs_queue)).await?;
        if !self.on_probation {
            // The node herald is connected to is one its callers' direct reply-to names can name: known to
            // work from the start, so that a single broker's callers never wait behind probation.
            match own_node(&connection).await {
                Ok(Some(node)) => {
                    lock(&self.nodes).working.insert(node);
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "could not read the broker node's direct reply-to name"),
            }
        }
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok((connection, channel))
    }

    async fn pause(&self, backoff: &mut Duration, deadline: Option<tokio::time::Instant>) {
        let until = tokio::time::Instant::now() + *backoff;
        let until = deadline.map_or(until, |d| until.min(d));
        tokio::time::sleep_until(until).await;
        *backoff = (*backoff * 2).min(Duration::from_secs(5));
    }
}

/// The node of the broker `connection` is on, as its direct reply-to names carry it: herald asks for a
/// name of its own (consumes `amq.rabbitmq.reply-to`, publishes to a private queue with that `reply_to`,
/// and reads the name the broker wrote in its place).
async fn own_node(connection: &Connection) -> Result<Option<Arc<[u8]>>, BrokerError> {
    use lapin::options::BasicConsumeOptions;
    let channel = connection.create_channel().await?;
    let found = async {
        // Kept until the name is read: a dropped consumer is cancelled, and the broker then refuses the
        // publish ("fast reply consumer does not exist").
        let _consumer = channel
            .basic_consume(
                DIRECT.into(),
                "herald-own-node".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await?;
        let (queue, mut own) = broker::private_queue(&channel, "herald-own-node-queue", None).await?;
        channel
            .basic_publish(
                "".into(),
                queue,
                BasicPublishOptions::default(),
                b"",
                BasicProperties::default().with_reply_to(DIRECT.into()),
            )
            .await?;
        use futures_util::StreamExt;
        if let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(1), own.next()).await {
            let named = message.properties.reply_to().as_ref().map(|r| r.to_string());
            return Ok::<_, BrokerError>(
                named.and_then(|n| direct_reply_to_node(&n[DIRECT.len().min(n.len())..]).map(Arc::from)),
            );
        }
        Ok(None)
    }
    .await;
    let _ = channel.close(200, "done".into()).await;
    found
}

/// See `strikes` in [`Replier::run`].
const STRIKES: u32 = 3;

/// Closes a connection given up on, in the background: dropping a lapin connection does not close it.
fn discard(connection: &mut Option<(Connection, Channel)>) {
    if let Some((connection, _)) = connection.take() {
        tokio::spawn(async move {
            let _ = connection.close(200, "reconnecting".into()).await;
        });
    }
}

fn properties(reply: &Reply) -> BasicProperties {
    let mut properties = broker::json_properties().with_type(reply.kind.clone());
    if let Some(correlation_id) = &reply.correlation_id {
        properties = properties.with_correlation_id(correlation_id.clone());
    }
    properties
}

/// Publishes every reply, then awaits their confirms; one result per reply. An `Err` is a reply not
/// confirmed because the channel or connection failed on the way: the broker does not say which reply
/// caused it.
async fn publish_all(channel: &Channel, replies: &VecDeque<Reply>) -> Vec<Result<Published, lapin::Error>> {
    let publishes = replies.iter().map(|reply| async {
        Ok(match confirmed(channel, reply).await? {
            Confirmation::Nack(_) => Published::Refused,
            _ => Published::Confirmed,
        })
    });
    futures_util::future::join_all(publishes).await
}

/// Publishes one reply and waits for the broker's confirm.
async fn confirmed(channel: &Channel, reply: &Reply) -> Result<Confirmation, lapin::Error> {
    channel
        .basic_publish(
            "".into(),
            reply.to.name.clone(),
            BasicPublishOptions::default(),
            &reply.body,
            properties(reply),
        )
        .await?
        .await
}

/// One reply alone on the channel: if the broker closes the channel or connection now, with an error
/// code, this reply caused it. An I/O error says nothing about the reply (the broker went away).
async fn publish(channel: &Channel, reply: &Reply) -> Result<Published, lapin::Error> {
    match confirmed(channel, reply).await {
        Ok(Confirmation::Nack(_)) => Ok(Published::Refused),
        Ok(_) => Ok(Published::Confirmed),
        // 320 CONNECTION_FORCED: the broker is closing every connection (a restart), not this reply's doing.
        Err(e) if matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() != 320) => {
            Ok(Published::Refused)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> OwnQueues {
        OwnQueues {
            names: vec![
                "herald.jobs".into(),
                "herald.retry".into(),
                "herald.dead".into(),
                "herald.feedback".into(),
            ],
            prefixes: vec!["herald.retry.".into(), "herald.jobs.commits.".into()],
        }
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// A NEW_PID_EXT term as RabbitMQ 3.10 encodes a direct reply-to consumer (read off a live broker).
    fn pid(node: &[u8], tail: usize) -> Vec<u8> {
        let mut term = vec![131, 88, 118, 0, node.len() as u8];
        term.extend_from_slice(node);
        term.extend(std::iter::repeat_n(7u8, tail));
        term
    }

    #[test]
    fn reply_addresses_herald_accepts_and_refuses() {
        let live = "amq.rabbitmq.reply-to.g1h2AA1yZXBseUA5MjQ4ODg0AAADCwAAAABrFgPD.xrYkzSj22CV64GeLlZJ3Yw==";
        let good_pid = b64(&pid(b"reply@9248884", 12));
        let cases: Vec<(String, Result<(), ReplyToError>)> = vec![
            (live.into(), Ok(())),
            // RabbitMQ 4.2 drops the key part.
            (format!("amq.rabbitmq.reply-to.{good_pid}"), Ok(())),
            (
                format!("amq.rabbitmq.reply-to.{}", good_pid.trim_end_matches('=')),
                Ok(()),
            ),
            ("amq.gen-JzTY20BRgKO-HjmUJj0wLg".into(), Ok(())),
            ("mfa.replies".into(), Ok(())),
            ("herald.jobs.replies".into(), Ok(())),
            ("herald.feedback".into(), Err(ReplyToError::OwnQueue)),
            ("herald.jobs".into(), Err(ReplyToError::OwnQueue)),
            ("herald.dead".into(), Err(ReplyToError::OwnQueue)),
            ("herald.retry".into(), Err(ReplyToError::OwnQueue)),
            ("herald.retry.30s".into(), Err(ReplyToError::OwnQueue)),
            ("herald.jobs.commits.01jabc".into(), Err(ReplyToError::OwnQueue)),
            // What closed herald's connection with 541 on RabbitMQ 3.10.8.
            ("amq.rabbitmq.reply-to.abc.def".into(), Err(ReplyToError::DirectReplyTo)),
            (
                format!("amq.rabbitmq.reply-to.{good_pid}.zzz.x"),
                Err(ReplyToError::DirectReplyTo),
            ),
            (
                format!(
                    "amq.rabbitmq.reply-to.{}.key",
                    b64(&[pid(b"reply@1", 12), vec![0]].concat())
                ),
                Err(ReplyToError::DirectReplyTo),
            ),
            (
                format!("amq.rabbitmq.reply-to.{}.key", b64(&pid(b"reply@1", 11))),
                Err(ReplyToError::DirectReplyTo),
            ),
            (
                format!("amq.rabbitmq.reply-to.{}.key", b64(&pid(b"nohost", 12))),
                Err(ReplyToError::DirectReplyTo),
            ),
            (
                format!("amq.rabbitmq.reply-to.{}.key", b64(b"\x83h\x02a\x01a\x02")),
                Err(ReplyToError::DirectReplyTo),
            ),
            (
                format!("amq.rabbitmq.reply-to.{good_pid}.k*y"),
                Err(ReplyToError::DirectReplyTo),
            ),
            ("amq.rabbitmq.reply-to".into(), Err(ReplyToError::DirectReplyTo)),
            ("amq.rabbitmq.reply-to.".into(), Err(ReplyToError::DirectReplyTo)),
            ("amq.rabbitmq.reply-to.!!!.key".into(), Err(ReplyToError::DirectReplyTo)),
        ];
        for (raw, expected) in cases {
            assert_eq!(ReplyTo::parse(&raw, &own()).map(|_| ()), expected, "{raw}");
        }
        // PID_EXT (older brokers) and a SMALL_ATOM_UTF8_EXT node.
        let mut old = vec![131, 103, 119, 8];
        old.extend_from_slice(b"rabbit@h");
        old.extend([0; 9]);
        assert!(ReplyTo::parse(&format!("amq.rabbitmq.reply-to.{}.k", b64(&old)), &own()).is_ok());
    }
}
