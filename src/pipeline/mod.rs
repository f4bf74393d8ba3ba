//! The two loops around the database: [`ingest`] (events in, effects
//! committed) and [`dispatch`] (due deliveries out to the relay).

pub mod dispatch;
pub mod group;
pub mod ingest;
pub mod plan;
pub mod recheck;
pub mod recorder;
pub mod wake;
