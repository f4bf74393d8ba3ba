//! RabbitMQ: the topology the worker owns, the consumer that feeds ingest
//! (acking only after commit, reconnecting with capped backoff), and a
//! publisher for tests and tools.

pub mod consumer;
pub mod publisher;
pub mod topology;

/// A broker problem.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ cancelled the consumer (was the queue deleted?)")]
    Cancelled,
    #[error("RabbitMQ did not confirm the publish")]
    NotConfirmed,
}
