//! Pure domain types and rules: no I/O, no clocks except where passed in.
//!
//! - [`ids`]: AgbCode, Gebruikersnummer, EmailAddress, EventId.
//! - [`event`]: the portal contract, parsing and validation.
//! - [`directory`]: users, links, rights, the `versie` rule.
//! - [`recipients`]: who gets which mail, and why.
//! - [`delivery`]: mail kinds, delivery states, attempt outcomes, retries.
//! - [`calendar`]: the Dutch calendar day, Dutch dates, days to a deadline.
//! - [`bounce`]: signed bounce tags (VERP).
//! - [`dsn`]: what a message read back says, and what it is taken for.
//! - [`retention`]: what of a stored event, notice or text survives a purge.

pub mod bounce;
pub mod calendar;
pub mod delivery;
pub mod directory;
pub mod dsn;
pub mod event;
pub mod ids;
pub mod recipients;
pub mod retention;
