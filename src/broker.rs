//! RabbitMQ plumbing: connecting, declaring the topology of docs/jobs-and-events.md "Topology", and publishing with
//! publisher confirms.

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

use std::time::Duration;

use crate::config::{AmqpConfig, QueueType};

/// lapin's own `Display` already includes its error's source, so herald words a lapin error itself and does
/// not chain it as a source: shown with its causes (`herald: …` at exit), the same text would print two or
/// three times.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker: {}", in_words(.0))]
    Amqp(lapin::Error),
    /// The broker could not be reached or refused the login; `at` is [`address`], without the password.
    #[error("cannot connect to the broker at {at}: {}", in_words(.cause))]
    Connect { at: String, cause: lapin::Error },
    /// A queue exists with other arguments than herald declares (docs/configuration.md "Queue names").
    #[error(
        "queue `{queue}` exists with other arguments than herald declares for it ({}); {hint}",
        in_words(.cause)
    )]
    Declare {
        queue: String,
        hint: &'static str,
        cause: lapin::Error,
    },
    #[error("broker refused (nacked) a publish to {0}")]
    Nacked(String),
    #[error("broker: {0}")]
    Closed(String),
}

impl From<lapin::Error> for BrokerError {
    fn from(error: lapin::Error) -> BrokerError {
        BrokerError::Amqp(error)
    }
}

impl BrokerError {
    /// The lapin error under this one, if any.
    pub fn lapin(&self) -> Option<&lapin::Error> {
        match self {
            BrokerError::Amqp(e) | BrokerError::Connect { cause: e, .. } | BrokerError::Declare { cause: e, .. } => {
                Some(e)
            }
            BrokerError::Nacked(_) | BrokerError::Closed(_) => None,
        }
    }
}

/// A lapin error once, in the broker's or the system's words: the AMQP reply text (`ACCESS_REFUSED - Login
/// was refused …`) or the I/O error (`Connection refused (os error 111)`).
fn in_words(error: &lapin::Error) -> String {
    match error.kind() {
        lapin::ErrorKind::IOError(e) => e.to_string(),
        lapin::ErrorKind::ProtocolError(e) => match e.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => format!(
                "the broker refused the user name or password ({})",
                e.get_message().as_str()
            ),
            _ => e.get_message().as_str().to_owned(),
        },
        _ => error.to_string(),
    }
}

/// Where herald connects, as an operator reads it: `amqp://host:port/vhost (user guest)`, never the password.
pub fn address(config: &AmqpConfig) -> String {
    let uri = config.url.uri();
    let scheme = match uri.scheme {
        lapin::uri::AMQPScheme::AMQP => "amqp",
        lapin::uri::AMQPScheme::AMQPS => "amqps",
    };
    let vhost = uri.vhost.replace('%', "%25").replace('/', "%2f");
    format!(
        "{scheme}://{}:{}/{vhost} (user {})",
        uri.authority.host, uri.authority.port, uri.authority.userinfo.username
    )
}

pub async fn connect(config: &AmqpConfig, name: &str) -> Result<Connection, BrokerError> {
    connect_framed(config, name, &FrameMax::default()).await
}

/// [`connect`] asking for the frames `frame_max` says: a consumer's, which a delivery larger than a frame
/// raises (see [`FrameMax`]).
pub async fn connect_framed(config: &AmqpConfig, name: &str, frame_max: &FrameMax) -> Result<Connection, BrokerError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let mut uri = config.url.uri().clone();
    // A `frame_max` or `heartbeat` in the URL wins, unless a frame larger than it came already.
    let asked = uri.query.frame_max.unwrap_or(FRAME_MAX);
    uri.query.frame_max = Some(if frame_max.is_raised() {
        asked.max(RAISED_FRAME_MAX)
    } else {
        asked
    });
    uri.query.heartbeat.get_or_insert(HEARTBEAT);
    Connection::connect_uri(uri, props)
        .await
        .map_err(|cause| BrokerError::Connect {
            at: address(config),
            cause,
        })
}

/// The AMQP heartbeat herald asks for, in seconds (the broker may lower it). A broker that sends nothing
/// for two intervals is given up and reconnected to (`herald_broker_stalls_total`): with RabbitMQ's 60 s
/// default a stalled broker paused herald for two minutes before anything noticed.
const HEARTBEAT: u16 = 10;

/// Whether a broker error means the broker stopped answering (no heartbeat), not that it closed.
pub fn is_stall(error: &BrokerError) -> bool {
    matches!(
        error.lapin().map(lapin::Error::kind),
        Some(lapin::ErrorKind::MissingHeartbeatError)
    )
}

/// The largest AMQP frame herald asks for. lapin keeps 32 frames of buffer each way per connection, so
/// RabbitMQ's default of 128 KiB held 8 MiB of herald's memory per connection, and 32 KiB 2 MiB. A job
/// (at most 16 KiB) or an event larger than a frame is split into more body frames, which costs nothing
/// measurable: `herald bench` gave the same ratios at 8 and 32 KiB, and 1.1-1.5 MiB less peak RSS
/// (BENCHMARKS.md). AMQP's smallest is 4 KiB.
const FRAME_MAX: u32 = 8 * 1024;

/// What a consumer asks for once a delivery came in a frame larger than [`FRAME_MAX`]: RabbitMQ's default
/// `frame_max`, the largest frame a publisher can send it (negotiation takes the smaller of the two sides').
const RAISED_FRAME_MAX: u32 = 128 * 1024;

/// The frames a consuming connection asks for, kept across its reconnects. A message's content header (its
/// properties and headers) is one frame that cannot be split, and the broker delivers it as the publisher
/// sent it, up to the broker's own `frame_max`; lapin refuses a frame larger than the one negotiated by
/// closing the whole connection, which would come back with the same message every time. So the first such
/// loss raises the frames to [`RAISED_FRAME_MAX`] for the life of the process; the message then arrives and
/// is refused for its headers ([`MAX_HEADERS`]).
#[derive(Debug, Default)]
pub struct FrameMax {
    raised: std::sync::atomic::AtomicBool,
}

impl FrameMax {
    fn is_raised(&self) -> bool {
        self.raised.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// After a session ended with `error`: whether its connection was lost to a frame larger than asked
    /// (`error` itself, or an error the connection reported on `events`), in which case the frames are raised
    /// for the next connections (said once, in a WARN line). `consumer` names who says it.
    pub fn raise_after(
        &self,
        error: &BrokerError,
        events: &mut (impl futures_util::Stream<Item = lapin::Event> + Unpin),
        consumer: &str,
    ) -> bool {
        use futures_util::{FutureExt, StreamExt};
        let mut too_large = error.lapin().is_some_and(is_frame_too_large);
        // The connection's events come without waiting: the loss was reported before the session saw it.
        while let Some(Some(event)) = events.next().now_or_never() {
            if let lapin::Event::Error(e) = event {
                too_large |= is_frame_too_large(&e);
            }
        }
        if too_large && !self.raised.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "{consumer}: a delivery came in an AMQP frame larger than the {} KiB herald asks for (its headers \
                 and properties are one frame); reconnecting with frames of up to {} KiB for the rest of this \
                 process: lapin's buffers then hold about {} MiB per connection instead of {} KiB",
                FRAME_MAX / 1024,
                RAISED_FRAME_MAX / 1024,
                buffered(RAISED_FRAME_MAX) / (1024 * 1024),
                buffered(FRAME_MAX) / 1024,
            );
        }
        too_large
    }
}

/// What lapin's buffers hold per connection with frames of `frame_max`: 32 frames each way.
fn buffered(frame_max: u32) -> u32 {
    2 * 32 * frame_max
}

/// lapin's error for a frame larger than the connection's `frame_max` (it closes the connection with it).
fn is_frame_too_large(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Hard(AMQPHardError::FRAMEERROR))
            && e.get_message().as_str().starts_with("frame too large"))
}

/// The most a message's headers may take, encoded as AMQP's field table, for herald to take it
/// (docs/jobs-and-events.md "Jobs"): herald's frames are 8 KiB and a content header is one frame, so this
/// leaves room for the other properties (at most ten short strings, 2.6 KiB), the header herald adds
/// (`x-herald-attempt`, `x-herald-error`) and the broker's bookkeeping when a retry comes back from its delay
/// queue (`x-death`, `x-first-death-*`, `x-last-death-*`). A message over it is refused and dead-lettered
/// without its headers.
pub const MAX_HEADERS: usize = 4096;

/// Whether a header is the broker's bookkeeping (or herald's own attempt number) rather than the
/// publisher's: not counted against [`MAX_HEADERS`], and not carried into what herald publishes (a retry,
/// a dead letter): the broker writes its own again, and a publisher's forged copy is not herald's to carry.
pub fn is_bookkeeping(key: &str) -> bool {
    matches!(key, "x-delivery-count" | "x-death" | ATTEMPT_HEADER | CHECK_HEADER)
        || key.starts_with("x-first-death-")
        || key.starts_with("x-last-death-")
}

/// The encoded size of the headers herald carries on (all but [`is_bookkeeping`] ones), as AMQP's field
/// table is framed: its 4-byte length and its entries. 0 without headers. Counted, never encoded: no
/// allocation.
pub fn carried_headers_size(properties: &BasicProperties) -> usize {
    properties.headers().as_ref().map_or(0, |headers| {
        table_size(headers.inner().iter().filter(|(k, _)| !is_bookkeeping(k.as_str())))
    })
}

/// The headers herald carries on into what it publishes of a message (a retry, a check, a dead letter): the
/// publisher's, without the broker's bookkeeping ([`is_bookkeeping`]).
pub fn carried_headers(properties: &BasicProperties) -> FieldTable {
    let mut headers = FieldTable::default();
    for (k, v) in properties.headers().iter().flat_map(|h| h.inner()) {
        if !is_bookkeeping(k.as_str()) {
            headers.insert(k.clone(), v.clone());
        }
    }
    headers
}

/// A field table's encoded size (amq_protocol's `gen_field_table`) from its entries.
fn table_size<'a>(entries: impl Iterator<Item = (&'a ShortString, &'a AMQPValue)>) -> usize {
    4 + entries
        .map(|(k, v)| 1 + k.as_str().len() + value_size(v))
        .sum::<usize>()
}

/// A field's encoded size, its type byte included (amq_protocol's `gen_value`).
fn value_size(value: &AMQPValue) -> usize {
    1 + match value {
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
        AMQPValue::ByteArray(a) => 4 + a.len(),
        AMQPValue::FieldArray(a) => 4 + a.as_slice().iter().map(value_size).sum::<usize>(),
        AMQPValue::FieldTable(t) => table_size(t.inner().iter()),
        AMQPValue::Void => 0,
    }
}

/// The broker address without credentials, for logs.
pub fn redacted_url(config: &AmqpConfig) -> String {
    let url = config.url.expose();
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}***@{}", &url[..scheme + 3], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// A private queue named by the broker (exclusive, gone with the connection), consumed without acks:
/// where `herald send --wait` hears its reply, and where the bench and tests watch events. With
/// `events_exchange`, every event is routed into it too. Returns the queue's name and its consumer.
pub async fn private_queue(
    channel: &Channel,
    consumer_tag: &str,
    events_exchange: Option<&str>,
) -> Result<(ShortString, Consumer), BrokerError> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    if let Some(exchange) = events_exchange {
        bind_all(channel, queue.name().as_str(), exchange).await?;
    }
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            consumer_tag.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((queue.name().clone(), consumer))
}

/// Routes everything published to topic exchange `exchange` into `queue`.
pub async fn bind_all(channel: &Channel, queue: &str, exchange: &str) -> Result<(), BrokerError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Arguments of herald's queues: the configured queue type, and where expired or rejected messages go.
fn queue_args(config: &AmqpConfig, dead_letter_to: Option<&str>) -> FieldTable {
    let mut args = FieldTable::default();
    if config.queue_type == QueueType::Quorum {
        args.insert("x-queue-type".into(), text("quorum"));
    }
    if let Some(target) = dead_letter_to {
        args.insert("x-dead-letter-exchange".into(), text(""));
        args.insert("x-dead-letter-routing-key".into(), text(target));
        if config.queue_type == QueueType::Quorum {
            // Dead-lettering must not drop messages: at-least-once needs reject-publish overflow.
            args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
            args.insert("x-overflow".into(), text("reject-publish"));
        }
    }
    args
}

/// Declares queues and exchange. Idempotent: the same arguments every time, so a restart (or a second
/// replica) re-declares without a PRECONDITION_FAILED.
pub async fn declare_topology(channel: &Channel, config: &AmqpConfig) -> Result<(), BrokerError> {
    declare_queue(channel, config, &config.dead_queue).await?;
    let mut jobs_args = queue_args(config, Some(&config.dead_queue));
    if config.queue_type == QueueType::Quorum {
        // Poison messages (docs/guarantees.md "Poison"): the quorum queue stops redelivering after this many.
        jobs_args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(config.delivery_limit)),
        );
    }
    declare_durable(channel, &config.jobs_queue, jobs_args.clone()).await?;
    // Declared like the jobs queue (docs/jobs-and-events.md "Topology"): same type, same poison limit, same dead
    // letters.
    declare_durable(channel, &config.feedback_queue, jobs_args).await?;
    declare_durable(
        channel,
        &config.retry_queue,
        queue_args(config, Some(&config.jobs_queue)),
    )
    .await?;
    declare_topic_exchange(channel, &config.events_exchange).await
}

/// The queues [`declare_topology`] declares, for whoever must delete a deployment's topology (the bench,
/// tests): jobs, retry, dead and feedback.
pub fn topology_queues(config: &AmqpConfig) -> [&str; 4] {
    [
        &config.jobs_queue,
        &config.retry_queue,
        &config.dead_queue,
        &config.feedback_queue,
    ]
}

/// A durable topic exchange, the kind `herald.events` is (docs/jobs-and-events.md "Topology").
pub async fn declare_topic_exchange(channel: &Channel, name: &str) -> Result<(), BrokerError> {
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// A durable queue of the configured type and nothing more (no dead-lettering): a queue for events, or
/// the bench's own.
pub async fn declare_queue(channel: &Channel, config: &AmqpConfig, name: &str) -> Result<(), BrokerError> {
    declare_durable(channel, name, queue_args(config, None)).await
}

/// Every queue herald declares is durable; `args` say the rest.
async fn declare_durable(channel: &Channel, name: &str, args: FieldTable) -> Result<(), BrokerError> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    match channel.queue_declare(name.into(), durable, args).await {
        Ok(_) => Ok(()),
        Err(cause) if is_precondition_failed(&cause) => Err(BrokerError::Declare {
            queue: name.to_owned(),
            hint: RENAME_TOGETHER,
            cause,
        }),
        Err(e) => Err(e.into()),
    }
}

/// What to do about a queue declared with other arguments, most often a renamed jobs queue whose retry
/// queue still dead-letters to the old name.
const RENAME_TOGETHER: &str = "the retry queue and its delay queues dead-letter to `amqp.jobs_queue`, and the jobs and \
    feedback queues to `amqp.dead_queue`, so change `amqp.jobs_queue`, `retry_queue`, `dead_queue` and \
    `feedback_queue` together, or delete the old queue once it is empty; `amqp.queue_type` and \
    `amqp.delivery_limit` are part of the arguments too (docs/configuration.md \"Queue names\")";

fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e)
        if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)))
}

/// Declares the delay queues that [`AmqpConfig::delay_queues`] named: like `herald.retry`, each dead-letters expired
/// messages back to `herald.jobs`. `herald.retry` itself stays declared, so that messages an older herald
/// left there still come back when they expire.
pub async fn declare_delay_queues(
    channel: &Channel,
    config: &AmqpConfig,
    queues: &[(Duration, String)],
) -> Result<(), BrokerError> {
    for (_, name) in queues {
        declare_durable(channel, name, queue_args(config, Some(&config.jobs_queue))).await?;
    }
    Ok(())
}

/// How long a commit-marker queue outlives its last declaration: a reconnect comes back well within it.
pub const MARKER_EXPIRES: Duration = Duration::from_secs(15 * 60);
/// How often a consuming herald declares its marker queue again. Publishing to a queue does not count as
/// using it (RabbitMQ's `x-expires` counts only consumers, `basic.get` and declarations).
pub const MARKER_REFRESH: Duration = Duration::from_secs(60);

/// A process's commit-marker queue: keeps only the newest message (the sequence number of the last commit),
/// and is deleted by the broker `expires` after its process last declared it.
pub async fn declare_marker_queue(channel: &Channel, name: &str, expires: Duration) -> Result<(), BrokerError> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("classic"));
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    args.insert("x-overflow".into(), text("drop-head"));
    args.insert("x-expires".into(), AMQPValue::LongLongInt(expires.as_millis() as i64));
    declare_durable(channel, name, args).await
}

/// A channel in confirm mode: every publish resolves only once the broker has taken the message.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn new(connection: &Connection) -> Result<Publisher, BrokerError> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Publisher { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let routing: ShortString = ShortString::try_new(routing_key)
            .map_err(|_| BrokerError::Nacked(format!("routing key longer than 255 bytes ({exchange})")))?;
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing,
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?
            .await?;
        if confirm.is_nack() {
            return Err(BrokerError::Nacked(if exchange.is_empty() {
                routing_key.to_owned()
            } else {
                exchange.to_owned()
            }));
        }
        Ok(())
    }
}

/// Properties of a persistent JSON message.
pub fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

/// `ShortString` for values that come from outside (a job id can be 128 characters of UTF-8, more than
/// AMQP's 255 bytes): `None` instead of a panic when it does not fit.
pub fn short(s: &str) -> Option<ShortString> {
    ShortString::try_new(s).ok()
}

/// An event's properties as herald publishes it on `herald.events` (docs/jobs-and-events.md "Events"): JSON,
/// persistent, `type` the event type, `message_id` the job id when it has one that fits.
pub fn event_properties(kind: &str, job_id: Option<&str>) -> BasicProperties {
    let properties = json_properties().with_type(short(kind).unwrap_or_default());
    match job_id.and_then(short) {
        Some(id) => properties.with_message_id(id),
        None => properties,
    }
}

/// Header showing the attempt number of a retried job, for operators reading a delay queue. Informational
/// only: herald takes attempt numbers from its outcome store, never from a header a publisher can write.
pub const ATTEMPT_HEADER: &str = "x-herald-attempt";
/// Header of a workflow's check (docs/workflows.md): the token of the check chain herald's record names.
/// It only lets a check that is due later re-arm itself; a copy whose token is not the record's does nothing.
pub const CHECK_HEADER: &str = "x-herald-check";
/// Header with the reason a message was dead-lettered.
pub const ERROR_HEADER: &str = "x-herald-error";

/// A dead letter's properties: the message's, with its publisher's headers (not the broker's bookkeeping,
/// [`is_bookkeeping`]) and `x-herald-error`; without the publisher's headers when they are over
/// [`MAX_HEADERS`], which could make the dead letter larger than herald's own frames.
pub fn with_error_header(properties: &BasicProperties, reason: &str) -> BasicProperties {
    let mut headers = if carried_headers_size(properties) <= MAX_HEADERS {
        carried_headers(properties)
    } else {
        FieldTable::default()
    };
    headers.insert(ERROR_HEADER.into(), text(bounded(reason, MAX_REASON)));
    properties.clone().with_headers(headers).with_delivery_mode(2)
}

/// The most of a reason `x-herald-error` carries, so that a dead letter fits herald's frames whatever the
/// reason says.
const MAX_REASON: usize = 512;

/// `s` cut to at most `max` bytes, at a character boundary.
fn bounded(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{ByteArray, DecimalValue, FieldArray, ShortString};

    /// Every kind of field, nested tables and arrays included.
    fn every_kind() -> FieldTable {
        let mut inner = FieldTable::default();
        inner.insert("n".into(), AMQPValue::LongLongInt(7));
        inner.insert("s".into(), AMQPValue::LongString("é".into()));
        let array = FieldArray::from(vec![
            AMQPValue::Boolean(true),
            AMQPValue::FieldTable(inner.clone()),
            AMQPValue::ShortString(ShortString::from("q")),
        ]);
        let mut table = FieldTable::default();
        let fields = [
            AMQPValue::Boolean(false),
            AMQPValue::ShortShortInt(-1),
            AMQPValue::ShortShortUInt(1),
            AMQPValue::ShortInt(-2),
            AMQPValue::ShortUInt(2),
            AMQPValue::LongInt(-3),
            AMQPValue::LongUInt(3),
            AMQPValue::LongLongInt(-4),
            AMQPValue::Float(1.5),
            AMQPValue::Double(2.5),
            AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 314 }),
            AMQPValue::ShortString("short".into()),
            AMQPValue::LongString("x".repeat(300).into()),
            AMQPValue::FieldArray(array),
            AMQPValue::Timestamp(1_700_000_000),
            AMQPValue::FieldTable(inner),
            AMQPValue::ByteArray(ByteArray::from(vec![1u8, 2, 3])),
            AMQPValue::Void,
        ];
        for (i, value) in fields.into_iter().enumerate() {
            table.insert(format!("field-{i}").as_str().into(), value);
        }
        table
    }

    fn encoded(table: &FieldTable) -> usize {
        let generate = lapin::types::generation::gen_field_table(table);
        cookie_factory::gen_simple(generate, Vec::new()).unwrap().len()
    }

    #[test]
    fn headers_are_counted_as_amqp_encodes_them_without_the_brokers_bookkeeping() {
        let table = every_kind();
        let with = |t: FieldTable| BasicProperties::default().with_headers(t);
        assert_eq!(carried_headers_size(&with(table.clone())), encoded(&table));
        assert_eq!(carried_headers_size(&BasicProperties::default()), 0);
        assert_eq!(carried_headers_size(&with(FieldTable::default())), 4);
        let mut booked = table.clone();
        for key in [
            "x-death",
            "x-first-death-queue",
            "x-last-death-reason",
            "x-delivery-count",
        ] {
            booked.insert(key.into(), AMQPValue::LongString("y".repeat(2000).into()));
        }
        booked.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(2));
        assert_eq!(carried_headers_size(&with(booked)), encoded(&table));
    }

    #[test]
    fn a_dead_letter_carries_the_publishers_headers_only_within_the_bound() {
        let headers = |p: &BasicProperties| {
            let mut keys: Vec<String> = p
                .headers()
                .as_ref()
                .unwrap()
                .inner()
                .keys()
                .map(|k| k.to_string())
                .collect();
            keys.sort();
            keys
        };
        let mut table = FieldTable::default();
        table.insert("x-trace".into(), AMQPValue::LongString("t-1".into()));
        table.insert("x-death".into(), AMQPValue::LongString("queue herald.retry.5s".into()));
        let small = BasicProperties::default()
            .with_headers(table.clone())
            .with_correlation_id("c-1".into());
        let dead = with_error_header(&small, "invalid_job: reason");
        assert_eq!(headers(&dead), ["x-herald-error", "x-trace"]);
        assert_eq!(dead.correlation_id(), &Some("c-1".into()));

        table.insert("x-big".into(), AMQPValue::LongString("e".repeat(MAX_HEADERS).into()));
        let big = small.with_headers(table);
        let dead = with_error_header(&big, &"r".repeat(5000));
        assert_eq!(headers(&dead), ["x-herald-error"]);
        assert_eq!(dead.correlation_id(), &Some("c-1".into()), "the other properties stay");
        let reason = &dead.headers().as_ref().unwrap().inner()["x-herald-error"];
        assert!(matches!(reason, AMQPValue::LongString(s) if s.as_bytes().len() == MAX_REASON));
        assert_eq!(bounded("aé", 2), "a", "cut at a character boundary");
    }

    #[test]
    fn only_a_frame_too_large_raises_the_frames_and_for_good() {
        let protocol = |kind: AMQPErrorKind, text: &str| {
            BrokerError::Amqp(
                lapin::ErrorKind::ProtocolError(lapin::protocol::AMQPError::new(kind, text.into())).into(),
            )
        };
        let frame = FrameMax::default();
        let mut nothing = futures_util::stream::empty::<lapin::Event>();
        let heartbeat = protocol(
            AMQPHardError::FRAMEERROR.into(),
            "heartbeat frame received on channel 1",
        );
        assert!(!frame.raise_after(&heartbeat, &mut nothing, "test"));
        assert!(!frame.raise_after(&BrokerError::Closed("gone".into()), &mut nothing, "test"));
        assert!(!frame.is_raised());
        // Reported by the connection while the session failed on something else.
        let lost = lapin::ErrorKind::ProtocolError(lapin::protocol::AMQPError::new(
            AMQPHardError::FRAMEERROR.into(),
            "frame too large: 9120 bytes".into(),
        ));
        let mut reported = futures_util::stream::iter([lapin::Event::Connected, lapin::Event::Error(lost.into())]);
        assert!(frame.raise_after(
            &BrokerError::Closed("commit loop stopped".into()),
            &mut reported,
            "test"
        ));
        assert!(frame.is_raised());
        let too_large = protocol(AMQPHardError::FRAMEERROR.into(), "frame too large: 9120 bytes");
        assert!(frame.raise_after(&too_large, &mut nothing, "test"));
        assert!(frame.is_raised());
    }
}
