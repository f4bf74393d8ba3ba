//! The fault suite: streams of thousands of events through the real
//! `notifier run` binary under injected faults, reconciled end to end
//! (published, the database through the CLI, what the SMTP server accepted)
//! into one row of figures per scenario. `#[ignore]`d: run it with
//! `tests/faults/run [--tier short|long] [--scenario NAME]` (see
//! docs/reliability.md for the guarantees, the scenarios and the figures).

mod harness;
mod model;
mod scenarios;
