//! A TCP proxy for outage tests: the service talks to RabbitMQ or PostgreSQL
//! through it, and a test cuts it (every connection closed, new ones dropped)
//! and restores it, without touching the machine's shared servers.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The machine's RabbitMQ.
const RABBITMQ: &str = "127.0.0.1:5672";
/// The machine's PostgreSQL (the default of [`super::pg_server`]).
const POSTGRES: &str = "127.0.0.1:5432";

/// A proxy from a local port to `target`.
pub struct TcpProxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding `127.0.0.1:<port>` to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if *cut_rx.borrow() {
                    drop(client);
                    continue;
                }
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Self { addr, cut, task }
    }

    /// A proxy to the machine's RabbitMQ ([`super::AMQP_URL`]).
    pub async fn rabbitmq() -> Self {
        Self::start(RABBITMQ.parse().unwrap()).await
    }

    /// A proxy to the machine's PostgreSQL.
    pub async fn postgres() -> Self {
        Self::start(POSTGRES.parse().unwrap()).await
    }

    /// `amqp.url` for the machine's RabbitMQ through this proxy.
    pub fn amqp_url(&self) -> String {
        super::AMQP_URL.replace(RABBITMQ, &format!("127.0.0.1:{}", self.port()))
    }

    /// `url`, a test database on the machine's PostgreSQL, through this proxy.
    pub fn database_url(&self, url: &str) -> String {
        let through = url.replace(POSTGRES, &format!("127.0.0.1:{}", self.port()));
        assert_ne!(
            through, url,
            "a database behind a proxy needs TEST_PG_SERVER at {POSTGRES}"
        );
        through
    }

    /// The local port to connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every connection and drops new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }

    /// Forwards again.
    pub fn restore(&self) {
        let _ = self.cut.send(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
