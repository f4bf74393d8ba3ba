//! Bounces read back.
