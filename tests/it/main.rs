//! The one integration-test binary: the real service against the real
//! RabbitMQ, a SQLite file and an SMTP server over TCP.

mod backends;
mod bounces;
mod cli;
mod delivery;
mod dispatch_faults;
mod faults;
mod ingest_faults;
mod instances;
mod mails;
mod ops;
mod outages;
mod pipeline;
mod privileges;
mod properties;
mod recipients;
mod relay_faults;
mod reresolution;
mod retention;
mod secrets;
mod security;
mod store_contract;
mod support;
mod transfer;
