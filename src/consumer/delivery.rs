//! herald's own view of a broker delivery, built from lapin's in one place: what the rest of the consumer
//! reads of a message, so that [`super::plan`] and [`super::inbound`] (and their tests) need no broker.

use std::sync::Arc;

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};

use crate::broker;
use crate::decision;

/// A message as herald takes it from the broker: all that herald reads of a delivery.
pub(super) struct Inbound {
    /// What the delivery's ack names.
    pub(super) delivery_tag: u64,
    /// What the broker says of this copy: its redelivered flag, and `x-delivery-count` on a redelivery
    /// only (on a first delivery the header can only be the publisher's).
    pub(super) redelivery: decision::Redelivery,
    /// Shared by the job, its retry and its dead letter: never copied.
    pub(super) body: Arc<Vec<u8>>,
    /// As published: herald reads `content_type`, `reply_to` and `correlation_id`, and a retry or a dead
    /// letter carries them on, headers included; without headers when they were over
    /// [`broker::MAX_HEADERS`] (`oversized_headers`).
    pub(super) properties: BasicProperties,
    /// The encoded size of headers over [`broker::MAX_HEADERS`]: the message is refused for it, and its
    /// headers are not carried into its dead letter, which they could make larger than herald's frames.
    pub(super) oversized_headers: Option<usize>,
}

impl Inbound {
    pub(super) fn new(delivery_tag: u64, redelivered: bool, properties: BasicProperties, body: Vec<u8>) -> Inbound {
        let redelivery = decision::Redelivery::new(redelivered, header_u64(&properties, "x-delivery-count"));
        let size = broker::carried_headers_size(&properties);
        let (properties, oversized_headers) = if size > broker::MAX_HEADERS {
            (properties.with_headers(FieldTable::default()), Some(size))
        } else {
            (properties, None)
        };
        Inbound {
            delivery_tag,
            redelivery,
            body: Arc::new(body),
            properties,
            oversized_headers,
        }
    }
}

impl From<Delivery> for Inbound {
    fn from(delivery: Delivery) -> Inbound {
        Inbound::new(
            delivery.delivery_tag,
            delivery.redelivered,
            delivery.properties,
            delivery.data,
        )
    }
}

fn header_u64(props: &BasicProperties, name: &str) -> Option<u64> {
    let value = props.headers().as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongString(s) => s.to_string().parse().ok(),
        _ => None,
    }
}
