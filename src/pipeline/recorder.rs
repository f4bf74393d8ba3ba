//! Group commit of dispatch outcomes: the finishes of a round's deliveries
//! (their attempt rows and next states) are written many to a transaction,
//! so that a commit (one fsync on SQLite, one WAL flush on PostgreSQL) is
//! shared by every mail that reached the relay in the same few milliseconds.
//!
//! A sender waits for the commit of its group before it goes on: nothing is
//! acknowledged to the rest of the dispatcher (or, through the lease, to
//! other instances) before it is durable.

use crate::store::deliveries::{self as dl, Finish};
use crate::store::{Store, StoreError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// How many finishes one transaction holds at most.
pub const GROUP: usize = 128;

/// How long the first finish of a group waits for others to join it.
pub const LINGER: Duration = Duration::from_millis(2);

/// Groups written at once: while one commits (an fsync), the next is
/// already being written, so a send waits for about one commit at most.
pub const WRITERS: usize = 2;

struct Request {
    finish: Finish,
    reply: oneshot::Sender<Result<bool, StoreError>>,
}

/// The handle the deliveries of a round record through.
pub struct Recorder {
    tx: mpsc::UnboundedSender<Request>,
}

impl Recorder {
    /// A recorder for `owner`'s leases, and the future that writes its
    /// groups: run it beside the round; it ends once every [`Recorder`]
    /// handle is dropped and the last group is written.
    pub fn new(
        store: Store,
        owner: String,
    ) -> (Self, impl std::future::Future<Output = ()> + Send) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, write_groups(rx, store, owner))
    }

    /// Records one finish with the group it joins; `Ok(false)` when the
    /// lease was lost (another dispatcher owns the delivery now).
    pub async fn record(&self, finish: Finish) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Request { finish, reply }).is_err() {
            return Err(StoreError::Corrupt(
                "the outcome recorder stopped before the round ended".into(),
            ));
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Corrupt(
                "the outcome recorder dropped a finish without an answer".into(),
            ))
        })
    }
}

async fn write_groups(rx: mpsc::UnboundedReceiver<Request>, store: Store, owner: String) {
    super::group::serve_groups(rx, GROUP, LINGER, WRITERS, move |group| {
        let (store, owner) = (store.clone(), owner.clone());
        async move {
            let (n, began) = (group.len(), std::time::Instant::now());
            write(&store, &owner, group).await;
            debug!(
                finishes = n,
                took_ms = began.elapsed().as_millis() as u64,
                "group committed"
            );
        }
    })
    .await;
}

/// Writes one group in one transaction. When that fails, each finish is
/// written on its own, so that one bad row (a data error) fails only its
/// own delivery and the others are recorded.
async fn write(store: &Store, owner: &str, group: Vec<Request>) {
    let items: Vec<Finish> = group.iter().map(|r| r.finish.clone()).collect();
    match commit(store, owner, &items).await {
        Ok(kept) => {
            for (r, k) in group.into_iter().zip(kept) {
                let _ = r.reply.send(Ok(k));
            }
        }
        Err(e) if group.len() == 1 => {
            let _ = group.into_iter().next().map(|r| r.reply.send(Err(e)));
        }
        Err(e) => {
            warn!(error = %e, finishes = group.len(), "recording a group of outcomes failed: recording them one by one");
            for r in group {
                let one = commit(store, owner, std::slice::from_ref(&r.finish))
                    .await
                    .map(|k| k.first().copied().unwrap_or(false));
                let _ = r.reply.send(one);
            }
        }
    }
}

async fn commit(store: &Store, owner: &str, items: &[Finish]) -> Result<Vec<bool>, StoreError> {
    let mut tx = store.begin().await?;
    let kept = dl::finish_many(&mut tx, owner, items).await?;
    tx.commit().await?;
    Ok(kept)
}
