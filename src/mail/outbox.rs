//! The embedded default when no relay is configured: each mail is written as
//! `<outbox>/<delivery id>.eml`, complete with headers, for inspection or a
//! later hand-off.

use super::SendReport;
use crate::domain::delivery::AttemptOutcome;
use std::path::PathBuf;

/// A folder of `.eml` files.
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    /// An outbox in `dir` (created on first write).
    pub fn new(dir: &str) -> Self {
        Self {
            dir: PathBuf::from(dir),
        }
    }

    /// Writes one message; the rename makes a half-written file impossible.
    pub async fn write(&self, delivery_id: &str, bytes: &[u8]) -> SendReport {
        let result = async {
            tokio::fs::create_dir_all(&self.dir).await?;
            let tmp = self.dir.join(format!(".{delivery_id}.eml.tmp"));
            let dst = self.dir.join(format!("{delivery_id}.eml"));
            tokio::fs::write(&tmp, bytes).await?;
            tokio::fs::rename(&tmp, &dst).await
        }
        .await;
        match result {
            Ok(()) => SendReport::sent(250, format!("written to outbox {}", self.dir.display())),
            Err(e) => SendReport {
                outcome: AttemptOutcome::Transient,
                smtp_code: None,
                enhanced_code: None,
                detail: format!("cannot write to outbox {}: {e}", self.dir.display()),
                connect_failed: true,
                retry_hint: None,
                recipient_policy: false,
                timed_out: false,
                no_smtputf8: false,
            },
        }
    }
}
