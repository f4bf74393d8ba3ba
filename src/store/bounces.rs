//! The `bounces` table: every message read back from the bounce mailbox,
//! once (by the SHA-256 of its raw bytes).
