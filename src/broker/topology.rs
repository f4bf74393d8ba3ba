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
    bound_queue(
        ch,
        &s.dead_letter_queue,
        quorum(),
        &s.dead_letter_exchange,
        "",
    )
    .await?;

    let mut args = quorum();
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
    bound_queue(ch, &s.queue, args, &s.exchange, "#").await?;
    Ok(())
}

/// Queue arguments of a quorum queue.
fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

/// Declares the durable queue `name` with `args` and binds it to `exchange`
/// with `key`.
async fn bound_queue(
    ch: &Channel,
    name: &str,
    args: FieldTable,
    exchange: &str,
    key: &str,
) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(name.into(), durable, args).await?;
    ch.queue_bind(
        name.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}
