//! Publishes receipt events with broker confirms over a connection of its own (opened on first use and
//! again after a failure). Callbacks publish concurrently: the lock is held only to find the channel.

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use tokio::sync::Mutex;

use crate::broker::{self, BrokerError, Publisher as ConfirmChannel};
use crate::config::AmqpConfig;

/// How long one publish waits for its connection and confirm: the provider waits for herald's answer
/// (Twilio gives up after 15 s), and a 503 in time lets it retry.
const CONFIRM_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Publisher {
    amqp: AmqpConfig,
    link: Mutex<Option<(lapin::Connection, ConfirmChannel)>>,
}

impl Publisher {
    pub fn new(amqp: AmqpConfig) -> Publisher {
        Publisher {
            amqp,
            link: Mutex::new(None),
        }
    }

    /// Publishes `json` to `exchange` with routing key `kind` and waits for the broker's confirm; one
    /// reconnect on a failure.
    pub async fn publish(&self, exchange: &str, kind: &str, job_id: &str, json: &[u8]) -> Result<(), BrokerError> {
        let mut last = None;
        for _ in 0..2 {
            let attempt = tokio::time::timeout(CONFIRM_WAIT, self.try_publish(exchange, kind, job_id, json));
            let result = attempt
                .await
                .unwrap_or_else(|_| Err(BrokerError::Closed("no confirm from the broker in time".into())));
            match result {
                Ok(()) => return Ok(()),
                Err(e) => {
                    *self.link.lock().await = None;
                    last = Some(e);
                }
            }
        }
        Err(last.expect("tried"))
    }

    async fn try_publish(&self, exchange: &str, kind: &str, job_id: &str, json: &[u8]) -> Result<(), BrokerError> {
        let channel = {
            let mut link = self.link.lock().await;
            let usable = link
                .as_ref()
                .is_some_and(|(c, p)| c.status().connected() && p.channel().status().connected());
            if !usable {
                let connection = broker::connect(&self.amqp, "herald-receipts").await?;
                let publisher = ConfirmChannel::new(&connection).await?;
                *link = Some((connection, publisher));
            }
            link.as_ref().expect("just connected").1.channel().clone()
        };
        let mut properties = broker::json_properties().with_type(broker::short(kind).unwrap_or_default());
        if let Some(id) = broker::short(job_id) {
            properties = properties.with_message_id(id);
        }
        let routing = ShortString::try_new(kind).map_err(|_| BrokerError::Nacked(kind.to_owned()))?;
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing,
                BasicPublishOptions::default(),
                json,
                properties,
            )
            .await?
            .await?;
        if confirm.is_nack() {
            return Err(BrokerError::Nacked(exchange.to_owned()));
        }
        Ok(())
    }
}
