//! The machine's RabbitMQ: each test declares its own exchange and queues
//! and removes them afterwards.

use notifier::config::AmqpSettings;

/// The machine's RabbitMQ (guest/guest), as the tests reach it.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Declares the test's exchange and queues, so events published before any
/// worker runs are queued.
pub async fn declare_topology(a: &AmqpSettings) {
    let conn = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    notifier::broker::topology::declare(&ch, a).await.unwrap();
    let _ = conn.close(200, "ok".into()).await;
}

/// Deletes a test's queues and exchanges (quorum queues are not free on the broker).
pub async fn delete_topology(a: &AmqpSettings) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let Ok(conn) =
        lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        for q in [&a.queue, &a.dead_letter_queue] {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for e in [&a.exchange, &a.dead_letter_exchange] {
            let _ = ch
                .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = conn.close(200, "test done".into()).await;
}

/// Deletes a test's queues and exchanges when dropped, also when the test
/// fails half-way (quorum queues left behind cost the broker memory).
pub struct TopologyGuard(pub AmqpSettings);

impl Drop for TopologyGuard {
    fn drop(&mut self) {
        let a = self.0.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(delete_topology(&a));
        })
        .join();
    }
}
