//! Publishes portal events the way the portal does (persistent, confirmed,
//! routing key = type). Used by tests and for tooling; the service itself
//! never publishes.

use super::BrokerError;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

/// A confirmed publisher on one channel.
pub struct Publisher {
    _conn: Connection,
    ch: Channel,
    exchange: String,
}

impl Publisher {
    /// Connects and enables publisher confirms.
    pub async fn connect(url: &str, exchange: &str) -> Result<Self, BrokerError> {
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self {
            _conn: conn,
            ch,
            exchange: exchange.to_owned(),
        })
    }

    /// Publishes one body under `routing_key` and waits for the broker's confirm.
    pub async fn publish(
        &self,
        routing_key: &str,
        message_id: Option<&str>,
        body: &[u8],
    ) -> Result<(), BrokerError> {
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/cloudevents+json"));
        if let Some(id) = message_id {
            props = props.with_message_id(ShortString::from(id));
        }
        let confirm = self
            .ch
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await?
            .await?;
        if confirm.is_ack() {
            Ok(())
        } else {
            Err(BrokerError::NotConfirmed)
        }
    }
}
