//! Wake instead of poll: whoever commits deliveries that are due now tells
//! the dispatchers, so that a mail goes out within milliseconds of its
//! event's commit instead of after `dispatch.idle_poll`.
//!
//! In the process it is a [`Notify`]; on PostgreSQL every instance also
//! `LISTEN`s on [`CHANNEL`] and the committer sends `NOTIFY`, so the instance
//! that ingested is not the only one to start sending. A lost notification
//! (a listener reconnecting) costs at most `dispatch.idle_poll`, which stays
//! as the fallback.

use crate::store::{Backend, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The PostgreSQL notification channel for "deliveries are due".
pub const CHANNEL: &str = "notifier_due";

/// Tells the dispatchers that deliveries are due now.
#[derive(Clone)]
pub struct DueSignal {
    local: Arc<Notify>,
    store: Store,
}

impl DueSignal {
    /// A signal that wakes `local` (this process's dispatcher) and, on
    /// PostgreSQL, every instance listening on `store`'s database.
    pub fn new(local: Arc<Notify>, store: Store) -> Self {
        Self { local, store }
    }

    /// Deliveries were committed that are due now.
    pub async fn due_now(&self) {
        self.local.notify_one();
        if self.store.backend() == Backend::Postgres {
            let sql = format!("NOTIFY {CHANNEL}");
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(self.store.pool())
                .await
            {
                // Others then find the work after dispatch.idle_poll.
                debug!(error = %e, "cannot notify other instances of due deliveries");
            }
        }
    }
}

/// On PostgreSQL: wakes `local` for every notification on [`CHANNEL`] until
/// `shutdown`; reconnects after a lost connection. On SQLite it returns at
/// once (one instance per database file; the local signal suffices).
pub async fn listen(store: Store, local: Arc<Notify>, shutdown: CancellationToken) {
    if store.backend() != Backend::Postgres {
        return;
    }
    // Said once per outage, not once per try.
    let mut failing = false;
    while !shutdown.is_cancelled() {
        match subscribe(&store).await {
            Ok(mut listener) => {
                failing = false;
                loop {
                    tokio::select! {
                        n = listener.recv() => match n {
                            Ok(_) => local.notify_one(),
                            Err(e) => {
                                warn!(error = %e, "lost the database connection that listens for due deliveries: reconnecting (meanwhile dispatch polls every dispatch.idle_poll)");
                                break;
                            }
                        },
                        () = shutdown.cancelled() => return,
                    }
                }
            }
            Err(e) if !failing => {
                warn!(error = %e, "cannot listen for due deliveries: dispatch polls every dispatch.idle_poll until it can");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn subscribe(store: &Store) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut l = sqlx::postgres::PgListener::connect(store.url()).await?;
    l.listen(CHANNEL).await?;
    Ok(l)
}
