//! RabbitMQ plumbing: connecting, declaring the topology of docs/jobs-and-events.md "Topology", and publishing with
//! publisher confirms.

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
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
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let mut uri = config.url.uri().clone();
    // A `frame_max` or `heartbeat` in the URL wins.
    uri.query.frame_max.get_or_insert(FRAME_MAX);
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

/// Adds `x-herald-error` to a message's headers, keeping the others.
pub fn with_error_header(properties: &BasicProperties, reason: &str) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert("x-herald-error".into(), text(reason));
    properties.clone().with_headers(headers).with_delivery_mode(2)
}
