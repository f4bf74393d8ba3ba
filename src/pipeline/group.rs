//! Grouping requests that arrive close together, so that one statement
//! serves all of them: the send-time re-check ([`super::recheck`]) and the
//! group commit ([`super::recorder`]) both wait this way.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

/// `first` and whatever else arrives on `rx` within `linger` of it, up to
/// `max` in all.
pub async fn collect<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    first: T,
    max: usize,
    linger: Duration,
) -> Vec<T> {
    let mut group = vec![first];
    let until = Instant::now() + linger;
    while group.len() < max {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(r)) => group.push(r),
            Ok(None) | Err(_) => break,
        }
    }
    group
}

/// Serves `rx` in groups ([`collect`]), running `serve` on up to `at_once`
/// groups side by side; requests that arrive while all are busy wait in
/// the channel and join the next group. Ends when every sender is dropped
/// and the last group is served.
pub async fn serve_groups<T, F, Fut>(
    mut rx: mpsc::UnboundedReceiver<T>,
    max: usize,
    linger: Duration,
    at_once: usize,
    serve: F,
) where
    T: Send + 'static,
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(at_once.max(1)));
    let mut running = tokio::task::JoinSet::new();
    while let Some(first) = rx.recv().await {
        let group = collect(&mut rx, first, max, linger).await;
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let work = serve(group);
        running.spawn(async move {
            work.await;
            drop(slot);
        });
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}
