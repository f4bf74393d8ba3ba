//! TLS endpoints made in the test: [`TestCa`], a certificate authority of
//! the test's own (its certificate written to a file, for `smtp.ca_file`
//! and `amqp.ca_file`) that signs server certificates for any names, and
//! [`TlsProxy`], a TLS-terminating proxy in front of the machine's RabbitMQ
//! (the shared broker itself is never reconfigured).
#![allow(dead_code)]

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// A certificate authority of the test's own.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCa {
    /// A new CA; its certificate is written as PEM to [`Self::ca_file`].
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "notifier test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("test-ca.pem");
        std::fs::write(&file, issuer.pem()).unwrap();
        Self {
            issuer,
            file,
            _dir: dir,
        }
    }

    /// The PEM file with this CA's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.file
    }

    /// A TLS server set-up with a certificate for `names` (DNS names or IP
    /// addresses) signed by this CA.
    pub fn acceptor(&self, names: &[&str]) -> TlsAcceptor {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

/// A TLS-terminating proxy: TLS on a local port (with the certificate of
/// the acceptor it was given), plain TCP to `target`.
pub struct TlsProxy {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    /// Terminates TLS on `127.0.0.1:<port>` and forwards to `target`.
    pub async fn start(acceptor: TlsAcceptor, target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends here.
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                });
            }
        });
        Self { addr, task }
    }

    /// In front of the machine's RabbitMQ.
    pub async fn rabbitmq(acceptor: TlsAcceptor) -> Self {
        Self::start(acceptor, "127.0.0.1:5672".parse().unwrap()).await
    }

    /// The local port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `amqps://guest:guest@HOST:PORT/%2f` through this proxy.
    pub fn amqps_url(&self, host: &str) -> String {
        format!("amqps://guest:guest@{host}:{}/%2f", self.port())
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
