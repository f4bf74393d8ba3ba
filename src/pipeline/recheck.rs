//! The send-time re-check, read in groups: once a delivery is rendered and
//! holds a relay connection, right before it is sent, the users it serves
//! are read again (a revocation or an address change committed since the
//! claim must count), and the reads of the deliveries that get there within
//! 0.2 ms of each other are one statement, up to four at once. The answer is as fresh as a read of its own, within that
//! moment, without a statement per mail.

use crate::store::deliveries::{self as dl, ServedNow};
use crate::store::{Store, StoreError};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

/// How many deliveries one read covers at most.
const GROUP: usize = 128;

/// How long the first request of a group waits for others to join it
/// (each waiter holds a relay connection meanwhile).
const LINGER: Duration = Duration::from_micros(200);

/// Reads run side by side: while one waits for the database, the requests
/// of the connections that got free meanwhile are read by the next, so the
/// relay connections do not queue behind one read at a time.
const READERS: usize = 4;

type Answer = Result<Checked, String>;

/// The users a delivery serves as the directory had them at `at_ms`.
pub struct Checked {
    pub served: Vec<ServedNow>,
    /// Taken before the read began: every change committed before this
    /// moment is in `served` (it is recorded with the attempt).
    pub at_ms: i64,
}

struct Request {
    delivery_id: String,
    reply: oneshot::Sender<Answer>,
}

/// The handle the deliveries of a round re-check through.
pub struct Rechecker {
    tx: mpsc::UnboundedSender<Request>,
}

impl Rechecker {
    /// A re-checker reading from `store`, and the future that serves it:
    /// run it beside the round; it ends when every handle is dropped.
    pub fn new(store: Store) -> (Self, impl std::future::Future<Output = ()> + Send) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, serve(rx, store))
    }

    /// The users `delivery_id` serves, as the directory has them now.
    pub async fn served_now(&self, delivery_id: &str) -> Result<Checked, StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            delivery_id: delivery_id.to_owned(),
            reply,
        };
        if self.tx.send(request).is_err() {
            return Err(StoreError::Corrupt(
                "the send-time re-check stopped before the round ended".into(),
            ));
        }
        match answer.await {
            Ok(Ok(served)) => Ok(served),
            Ok(Err(e)) => Err(StoreError::Corrupt(format!(
                "the send-time re-check of the directory failed: {e}"
            ))),
            Err(_) => Err(StoreError::Corrupt(
                "the send-time re-check dropped a request without an answer".into(),
            )),
        }
    }
}

async fn serve(rx: mpsc::UnboundedReceiver<Request>, store: Store) {
    super::group::serve_groups(rx, GROUP, LINGER, READERS, move |group| {
        let store = store.clone();
        async move {
            let began = std::time::Instant::now();
            let n = group.len();
            read(&store, group).await;
            debug!(
                deliveries = n,
                took_us = began.elapsed().as_micros() as u64,
                "directory re-checked"
            );
        }
    })
    .await;
}

async fn read(store: &Store, group: Vec<Request>) {
    let ids: Vec<&str> = group.iter().map(|r| r.delivery_id.as_str()).collect();
    let mut at_ms = 0;
    let read: Result<HashMap<String, Vec<ServedNow>>, StoreError> = async {
        let mut conn = store.pool().acquire().await?;
        at_ms = crate::store::ms(chrono::Utc::now());
        dl::served_users_of(&mut conn, &ids).await
    }
    .await;
    match read {
        Ok(mut by_delivery) => {
            for r in group {
                let served = by_delivery.remove(&r.delivery_id).unwrap_or_default();
                let _ = r.reply.send(Ok(Checked { served, at_ms }));
            }
        }
        Err(e) => {
            let e = e.to_string();
            for r in group {
                let _ = r.reply.send(Err(e.clone()));
            }
        }
    }
}
