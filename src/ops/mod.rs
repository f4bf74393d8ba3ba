//! Operations: health state, Prometheus metrics and the HTTP endpoints.

pub mod health;
pub mod http;
pub mod metrics;
