//! The one integration-test binary: the real service against the real
//! RabbitMQ, a SQLite file and an SMTP server over TCP.

mod cli;
mod delivery;
mod ops;
mod pipeline;
mod recipients;
mod support;
