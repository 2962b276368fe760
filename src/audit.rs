//! Audit events for template changes: one JSON line on stdout and one message on the events exchange
//! (routing key `herald_template_changed`). They say who, what and when; never the token.

use serde::Serialize;
use tokio::sync::Mutex;

use crate::broker::{self, BrokerError, Publisher};
use crate::config::AmqpConfig;

pub const TEMPLATE_CHANGED: &str = "herald_template_changed";

#[derive(Debug, Clone, Serialize)]
pub struct TemplateChanged {
    pub date: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub description: &'static str,
    /// The name of the admin token used.
    pub who: String,
    /// `replace` or `revert`.
    pub change: &'static str,
    pub channel: &'static str,
    pub action: &'static str,
    pub locale: String,
    /// ETag of the template after the change (absent when a revert removed it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// Publishes audit events over a connection of its own, opened on first use and again after a failure.
pub struct Audit {
    amqp: AmqpConfig,
    link: Mutex<Option<(lapin::Connection, Publisher)>>,
}

impl Audit {
    pub fn new(amqp: AmqpConfig) -> Audit {
        Audit {
            amqp,
            link: Mutex::new(None),
        }
    }

    /// Prints the event and publishes it with a broker confirm. The change itself is already made:
    /// a broker failure is logged (the stdout line remains), not returned to the admin.
    pub async fn emit(&self, event: &TemplateChanged) {
        let json = serde_json::to_vec(event).unwrap_or_default();
        crate::events::print(&json);
        for _ in 0..2 {
            match self.publish(&json).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "audit event not published; reconnecting");
                    *self.link.lock().await = None;
                }
            }
        }
    }

    async fn publish(&self, json: &[u8]) -> Result<(), BrokerError> {
        let mut link = self.link.lock().await;
        if link.is_none() {
            let connection = broker::connect(&self.amqp, "herald-audit").await?;
            let publisher = Publisher::new(&connection).await?;
            *link = Some((connection, publisher));
        }
        let (_, publisher) = link.as_ref().expect("just connected");
        let props = broker::json_properties().with_type(TEMPLATE_CHANGED.into());
        publisher
            .publish(&self.amqp.events_exchange, TEMPLATE_CHANGED, json, props)
            .await
    }
}
