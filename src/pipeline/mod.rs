//! The two loops around the database: [`ingest`] (events in, effects
//! committed) and [`dispatch`] (due deliveries out to the relay); the
//! [`plan`]ner both use; [`recovery`], the operations that make them try
//! again after an incident; and [`retention`], the purge of personal data
//! after `retention.keep`.

pub mod bounces;
pub mod dispatch;
pub mod escalation;
pub mod group;
pub mod ingest;
pub mod plan;
pub mod recheck;
pub mod recorder;
pub mod recovery;
pub mod retention;
pub mod wake;
