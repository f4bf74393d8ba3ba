//! RabbitMQ: the topology the worker owns, the consumer that feeds ingest
//! (acking only after commit, reconnecting with capped backoff), and a
//! publisher for tests and tools. `amqps://` verifies the broker's
//! certificate against the system's roots plus `amqp.ca_file`.

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

/// The TLS settings for `amqps://`: lapin's own (rustls, the system's roots,
/// the host name in `amqp.url`) plus the CA(s) in `amqp.ca_file`. Refuses an
/// unusable file, and a file with `amqp://`, where it would never be used.
pub fn tls_config(
    s: &crate::config::AmqpSettings,
) -> Result<lapin::tcp::OwnedTLSConfig, crate::config::ConfigError> {
    use crate::config::ConfigError;
    let ca = crate::tls::CaFile::load_optional("amqp.ca_file", &s.ca_file)
        .map_err(ConfigError::Invalid)?;
    if ca.is_some() && !s.url.expose_secret().starts_with("amqps://") {
        return Err(ConfigError::Invalid(
            "amqp.ca_file: is set but amqp.url is not amqps://, so no certificate is ever checked: use amqps://HOST:5671/VHOST, or leave amqp.ca_file empty".into(),
        ));
    }
    Ok(lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: ca.map(|c| c.pem().to_owned()),
    })
}

/// What to tell an operator about a failed session: TLS failures (an
/// unknown CA, a certificate for another name) say what to check.
pub fn session_error_hint(e: &BrokerError) -> &'static str {
    let text = e.to_string().to_ascii_lowercase();
    // rustls' words: a certificate it refused, an alert from the peer, or
    // a peer that does not speak TLS at all (e.g. amqps:// to port 5672).
    let tls = [
        "certificate",
        "tls",
        "handshake",
        "alert",
        "corrupt message",
    ];
    if tls.iter().any(|w| text.contains(w)) {
        "TLS with the broker failed: it must speak TLS on the port in amqp.url (usually 5671), with a certificate for the host in amqp.url signed by a CA in the system's roots or in amqp.ca_file"
    } else {
        "check that the broker at amqp.url is up"
    }
}
