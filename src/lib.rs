//! zorginkoop-notifier: the e-mail notification worker of the
//! Zorginkoopportaal.
//!
//! ```text
//! RabbitMQ → broker::consumer → pipeline::ingest → store (events, deliveries)
//!                                  domain::recipients ┘        │
//!            SMTP ← mail::smtp ← pipeline::dispatch ←──────────┘
//! ```

pub mod app;
pub mod broker;
pub mod cli;
pub mod config;
pub mod domain;
pub mod mail;
pub mod ops;
pub mod pipeline;
pub mod store;
pub mod templates;
pub mod tls;
