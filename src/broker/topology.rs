//! Declares, idempotently, what the worker needs: the portal's topic
//! exchange, the worker's durable quorum queue bound with `#` (every event
//! reaches it, so an unknown type is quarantined, never dropped unseen), and a
//! dead-letter exchange and queue for messages past `x-delivery-limit`.

use crate::config::AmqpSettings;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

/// Declares the exchange, queues and bindings.
pub async fn declare(ch: &Channel, s: &AmqpSettings) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        s.exchange.as_str().into(),
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        s.dead_letter_exchange.as_str().into(),
        ExchangeKind::Fanout,
        durable,
        FieldTable::default(),
    )
    .await?;
    let queue_opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut dead_args = FieldTable::default();
    dead_args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(s.dead_letter_queue.as_str().into(), queue_opts, dead_args)
        .await?;
    ch.queue_bind(
        s.dead_letter_queue.as_str().into(),
        s.dead_letter_exchange.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;

    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(s.delivery_limit as i32),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(s.dead_letter_exchange.as_str().into()),
    );
    // Quorum-queue dead-lettering is at-most-once unless both of these are set.
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    ch.queue_declare(s.queue.as_str().into(), queue_opts, args)
        .await?;
    ch.queue_bind(
        s.queue.as_str().into(),
        s.exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}
