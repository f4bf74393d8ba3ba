//! The SMTP side: a small pool of relay connections that this worker keeps
//! itself, with `TCP_NODELAY` set (lettre 0.11.23's pooled transport never
//! sets it and waits for the relay's delayed ACK on every mail, ~23 mails/s per
//! connection), and a transaction driven step by step (MAIL, RCPT, DATA,
//! message) so every failure is classified by the step it happened in.
//!
//! International addresses (RFC 6531): an address is sent in its SMTP form
//! ([`smtp_form`]); one whose local part is not ASCII goes only to a relay
//! whose EHLO offers SMTPUTF8, with `MAIL FROM:<…> SMTPUTF8`. To a relay
//! without it nothing is sent: the delivery fails as permanent. (lettre's
//! own `send` refuses such an envelope too, but this pool drives the
//! commands itself and must check.)

use super::classify::{Step, classify_reply, enhanced_code, is_recipient_policy};
use super::{SendReport, SmtpTarget, TlsMode};
use crate::domain::delivery::{AttemptOutcome, retry_hint};
use crate::domain::ids::smtp_form;
use crate::tls::CaFile;
use lettre::Address;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use std::error::Error as _;
use std::time::Duration;
use tokio::sync::{Mutex, Semaphore};

/// Connections to one relay, at most `smtp.concurrency` at a time.
pub struct SmtpPool {
    target: SmtpTarget,
    hello: ClientId,
    idle: Mutex<Vec<AsyncSmtpConnection>>,
    slots: Semaphore,
    timeout: Duration,
    connect_timeout: Duration,
    accept_invalid_certs: bool,
    ca: Option<CaFile>,
}

/// How the pool talks to its relay (from `smtp.*`).
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// The name in EHLO.
    pub hello_name: String,
    /// Connections at most.
    pub concurrency: usize,
    /// The longest wait for any one reply.
    pub timeout: Duration,
    /// The longest wait for a connection and its greeting.
    pub connect_timeout: Duration,
    pub accept_invalid_certs: bool,
    /// `smtp.ca_file`: trusted next to the system's roots.
    pub ca: Option<CaFile>,
}

impl SmtpPool {
    /// A pool for `target`; connects lazily.
    pub fn new(target: SmtpTarget, o: PoolOptions) -> Self {
        Self {
            target,
            hello: ClientId::Domain(o.hello_name),
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(o.concurrency.max(1)),
            timeout: o.timeout,
            connect_timeout: o.connect_timeout,
            accept_invalid_certs: o.accept_invalid_certs,
            ca: o.ca,
        }
    }

    /// The relay's certificate is checked against the system's roots plus
    /// `smtp.ca_file`, for the host name in `smtp.url`.
    fn tls_parameters(&self) -> Result<TlsParameters, SendReport> {
        let cannot = |e: lettre::transport::smtp::Error| {
            relay_fault(format!("cannot set up TLS for the relay: {e}"))
        };
        let mut b = TlsParameters::builder(self.target.host.clone())
            .dangerous_accept_invalid_certs(self.accept_invalid_certs);
        if let Some(ca) = &self.ca {
            b = b.add_root_certificate(Certificate::from_pem(ca.pem().as_bytes()).map_err(cannot)?);
        }
        b.build_rustls().map_err(cannot)
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, SendReport> {
        let t = &self.target;
        let fut = async {
            let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
                .await
                .map_err(|e| connection_failed(format!("cannot connect to the relay: {e}")))?;
            // The point of owning the pool: without it every mail waits ~40 ms
            // for the relay's delayed ACK, with or without TLS.
            let _ = tcp.set_nodelay(true);
            let mut conn = match t.tls {
                TlsMode::Implicit => {
                    let tls = implicit_tls(tcp, self.tls_parameters()?)
                        .await
                        .map_err(|e| connect_error(&e))?;
                    AsyncSmtpConnection::connect_with_transport(Box::new(tls), &self.hello)
                        .await
                        .map_err(|e| connect_error(&e))?
                }
                _ => {
                    let mut conn =
                        AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello)
                            .await
                            .map_err(|e| connect_error(&e))?;
                    let wants_tls = match t.tls {
                        TlsMode::StartTlsRequired => {
                            if !conn.can_starttls() {
                                conn.abort().await;
                                return Err(relay_fault(
                                    "smtp.url requires TLS (tls=required) but the relay does not offer STARTTLS".into(),
                                ));
                            }
                            true
                        }
                        TlsMode::StartTlsOpportunistic => conn.can_starttls(),
                        _ => false,
                    };
                    if wants_tls {
                        let params = self.tls_parameters()?;
                        conn.starttls(params, &self.hello)
                            .await
                            .map_err(|e| connect_error(&e))?;
                    }
                    conn
                }
            };
            if let Some((user, pass)) = &t.credentials {
                conn.auth(
                    &[Mechanism::Plain, Mechanism::Login],
                    &Credentials::new(user.clone(), pass.clone()),
                )
                .await
                .map_err(|e| {
                    let mut r = connect_error(&e);
                    if r.outcome != AttemptOutcome::Transient {
                        r.outcome = AttemptOutcome::RelayFault;
                        r.detail = format!("authentication at the relay failed: {}", r.detail);
                    }
                    r
                })?;
            }
            Ok(conn)
        };
        match tokio::time::timeout(self.connect_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(connection_failed(format!(
                "no greeting from the relay within smtp.connect_timeout ({}s)",
                self.connect_timeout.as_secs()
            ))),
        }
    }

    /// Sends one message to one recipient and classifies what happened.
    pub async fn send(&self, from: &str, to: &str, bytes: &[u8]) -> SendReport {
        let _slot = self.slots.acquire().await.expect("semaphore never closed");
        let (from, to) = (smtp_form(from), smtp_form(to));
        let envelope = match (from.text.parse::<Address>(), to.text.parse::<Address>()) {
            (Ok(f), Ok(t)) => Envelope {
                from: f,
                to: t,
                from_needs_smtputf8: from.needs_smtputf8,
                to_needs_smtputf8: to.needs_smtputf8,
            },
            (Err(_), _) => return relay_fault("smtp.from is not a valid address".into()),
            (_, Err(_)) => {
                return SendReport::permanent("the recipient address is not valid for SMTP".into());
            }
        };
        // A pooled connection may have been closed by the relay while idle:
        // one failure on a reused connection before MAIL was accepted is
        // retried once on a fresh connection, without counting as an attempt.
        let reused = self.idle.lock().await.pop();
        let was_reused = reused.is_some();
        let conn = match reused {
            Some(c) => c,
            None => match self.connect().await {
                Ok(c) => c,
                Err(r) => return r,
            },
        };
        let (report, conn) = self.transaction(conn, &envelope, bytes).await;
        if was_reused && report.connect_failed {
            let conn = match self.connect().await {
                Ok(c) => c,
                Err(r) => return r,
            };
            let (report, conn) = self.transaction(conn, &envelope, bytes).await;
            self.give_back(conn).await;
            return report;
        }
        self.give_back(conn).await;
        report
    }

    async fn give_back(&self, conn: Option<AsyncSmtpConnection>) {
        if let Some(c) = conn
            && !c.has_broken()
        {
            self.idle.lock().await.push(c);
        }
    }

    /// Runs one transaction under `smtp.timeout`. Returns the connection when
    /// it can be reused.
    async fn transaction(
        &self,
        mut conn: AsyncSmtpConnection,
        envelope: &Envelope,
        bytes: &[u8],
    ) -> (SendReport, Option<AsyncSmtpConnection>) {
        let parameters = match mail_parameters(&conn, envelope, bytes) {
            Ok(p) => p,
            // Nothing was said: the connection stays as it was.
            Err(report) => return (report, Some(conn)),
        };
        let mut step = Step::Mail;
        let result = tokio::time::timeout(self.timeout, async {
            step = Step::Mail;
            conn.command(Mail::new(Some(envelope.from.clone()), parameters))
                .await?;
            step = Step::Rcpt;
            conn.command(Rcpt::new(envelope.to.clone(), vec![])).await?;
            step = Step::Data;
            conn.command(Data).await?;
            step = Step::Message;
            conn.message(bytes).await
        })
        .await;
        match result {
            Ok(Ok(resp)) => {
                let text = resp.message().collect::<Vec<_>>().join(" ");
                (SendReport::sent(u16::from(resp.code()), text), Some(conn))
            }
            Ok(Err(e)) => {
                let report = attempt_error(step, &e);
                // After a negative reply the relay keeps the session: reset it and reuse.
                let reusable =
                    e.status().is_some() && report.smtp_code != Some(421) && !conn.has_broken();
                if reusable
                    && conn
                        .command(lettre::transport::smtp::commands::Rset)
                        .await
                        .is_ok()
                {
                    (report, Some(conn))
                } else {
                    conn.abort().await;
                    (report, None)
                }
            }
            Err(_) => {
                // The connection is in an unknown state: never reuse it.
                let outcome = if step == Step::Message {
                    AttemptOutcome::Unknown
                } else {
                    AttemptOutcome::Transient
                };
                let report = SendReport {
                    outcome,
                    smtp_code: None,
                    enhanced_code: None,
                    detail: format!(
                        "no reply from the relay within smtp.timeout ({}s) at step {step:?}",
                        self.timeout.as_secs()
                    ),
                    connect_failed: false,
                    retry_hint: None,
                    recipient_policy: false,
                    timed_out: true,
                    no_smtputf8: false,
                };
                drop(conn);
                (report, None)
            }
        }
    }

    /// Closes idle connections politely.
    pub async fn close(&self) {
        let conns: Vec<_> = std::mem::take(&mut *self.idle.lock().await);
        for mut c in conns {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.quit()).await;
        }
    }
}

/// The sender and the recipient of one transaction, in their SMTP forms.
struct Envelope {
    from: Address,
    to: Address,
    from_needs_smtputf8: bool,
    to_needs_smtputf8: bool,
}

/// The detail (last_error) of a delivery whose address needs SMTPUTF8.
pub const NO_SMTPUTF8: &str = "the relay does not support international addresses (no SMTPUTF8); the address needs an ASCII form or a relay that offers SMTPUTF8";

/// The parameters of `MAIL FROM` for `envelope` on `conn`, or why the
/// transaction cannot start: an address that needs SMTPUTF8 at a relay
/// whose EHLO did not offer it is never sent (RFC 6531 §3.2).
fn mail_parameters(
    conn: &AsyncSmtpConnection,
    envelope: &Envelope,
    bytes: &[u8],
) -> Result<Vec<MailParameter>, SendReport> {
    let info = conn.server_info();
    let mut parameters = Vec::new();
    if envelope.from_needs_smtputf8 || envelope.to_needs_smtputf8 {
        if !info.supports_feature(Extension::SmtpUtfEight) {
            if envelope.from_needs_smtputf8 {
                return Err(relay_fault(
                    "the envelope sender (smtp.from or smtp.bounce_address) has a non-ASCII local part and the relay does not offer SMTPUTF8; use an ASCII sender address or a relay that offers SMTPUTF8".into(),
                ));
            }
            return Err(SendReport {
                no_smtputf8: true,
                ..SendReport::permanent(NO_SMTPUTF8.into())
            });
        }
        parameters.push(MailParameter::SmtpUtfEight);
    }
    // The bodies are quoted-printable; only UTF-8 header fields (an
    // international address in To:) make the message 8-bit.
    if !bytes.is_ascii() && info.supports_feature(Extension::EightBitMime) {
        parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    Ok(parameters)
}

fn reply_text(e: &lettre::transport::smtp::Error) -> String {
    e.source()
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.to_string())
}

/// Classifies an error from a transaction step.
fn attempt_error(step: Step, e: &lettre::transport::smtp::Error) -> SendReport {
    if let Some(code) = e.status() {
        let code = u16::from(code);
        let text = reply_text(e);
        let outcome = classify_reply(step, code, &text);
        return SendReport {
            outcome,
            smtp_code: Some(code),
            enhanced_code: enhanced_code(&text),
            retry_hint: (outcome == AttemptOutcome::Transient)
                .then(|| retry_hint(&text))
                .flatten(),
            recipient_policy: is_recipient_policy(step, code, &text),
            timed_out: false,
            no_smtputf8: false,
            // 421 means the relay is closing the connection: a relay-level condition.
            connect_failed: code == 421,
            detail: format!("{code} {text}"),
        };
    }
    let detail = e.to_string();
    match step {
        // The data may have reached the relay: it may have accepted the mail.
        Step::Message => SendReport {
            outcome: AttemptOutcome::Unknown,
            smtp_code: None,
            enhanced_code: None,
            detail: format!("connection lost after the data was sent: {detail}"),
            connect_failed: false,
            retry_hint: None,
            recipient_policy: false,
            timed_out: false,
            no_smtputf8: false,
        },
        _ if is_tls_failure(e) => relay_fault(format!("TLS with the relay failed: {detail}")),
        _ => connection_failed(format!(
            "connection to the relay failed at {step:?}: {detail}"
        )),
    }
}

/// Classifies an error while connecting (greeting, EHLO, STARTTLS, AUTH).
fn connect_error(e: &lettre::transport::smtp::Error) -> SendReport {
    if let Some(code) = e.status() {
        let code = u16::from(code);
        let text = reply_text(e);
        let outcome = classify_reply(Step::Connect, code, &text);
        return SendReport {
            outcome,
            smtp_code: Some(code),
            enhanced_code: enhanced_code(&text),
            detail: format!("relay refused the session: {code} {text}"),
            connect_failed: outcome == AttemptOutcome::Transient,
            retry_hint: None,
            recipient_policy: false,
            timed_out: false,
            no_smtputf8: false,
        };
    }
    if is_tls_failure(e) {
        return relay_fault(format!(
            "TLS with the relay failed (certificate or protocol): {e}; the relay's certificate must be for the host in smtp.url and signed by a CA in the system's roots or in smtp.ca_file"
        ));
    }
    connection_failed(format!("cannot talk to the relay: {e}"))
}

/// lettre reports a failed TLS upgrade (e.g. a certificate that fails
/// verification) as a connection error: look at the cause as well.
fn is_tls_failure(e: &lettre::transport::smtp::Error) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    e.is_tls() || text.contains("certificate") || text.contains("handshake")
}

/// TLS from the first byte over a socket the pool opened itself (so that
/// it has `TCP_NODELAY`), with lettre's own TLS set-up and certificate
/// checks. lettre 0.11 opens an smtps socket only inside
/// `connect_tokio1`, which sets no `TCP_NODELAY`; its `AsyncNetworkStream`
/// is public but deprecated ("not meant to be public") and is the one way
/// to run that TLS set-up on a socket of our own.
#[allow(deprecated)]
async fn implicit_tls(
    tcp: tokio::net::TcpStream,
    params: TlsParameters,
) -> Result<TlsSocket, lettre::transport::smtp::Error> {
    use lettre::transport::smtp::client::AsyncNetworkStream;
    use tokio_util::compat::FuturesAsyncReadCompatExt;
    let mut stream = AsyncNetworkStream::use_existing_tokio1(Box::new(tcp));
    stream.upgrade_tls(params).await?;
    Ok(TlsSocket(stream.compat()))
}

/// An encrypted relay socket, as lettre takes a transport of its own.
#[allow(deprecated)]
#[derive(Debug)]
struct TlsSocket(tokio_util::compat::Compat<lettre::transport::smtp::client::AsyncNetworkStream>);

impl tokio::io::AsyncRead for TlsSocket {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsSocket {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl lettre::transport::smtp::client::AsyncTokioStream for TlsSocket {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().peer_addr()
    }
}

fn connection_failed(detail: String) -> SendReport {
    SendReport {
        connect_failed: true,
        ..SendReport::without_reply(AttemptOutcome::Transient, detail)
    }
}

fn relay_fault(detail: String) -> SendReport {
    SendReport::without_reply(AttemptOutcome::RelayFault, detail)
}
