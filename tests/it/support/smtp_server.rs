//! A scriptable in-process SMTP server for integration tests.
//!
//! Start it with [`TestSmtpServer::start`], point the service under test at
//! [`TestSmtpServer::url`], then inspect [`TestSmtpServer::messages`] or await
//! [`TestSmtpServer::wait_for_count`]. Faults (per-recipient or per-command
//! replies, dropped or stalled connections, refused connections, a closed
//! listener) can be scripted at any time and affect subsequent commands.
//!
//! Only `tokio` and the standard library are used.
#![allow(dead_code)]

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One message received in a completed `DATA` transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMail {
    /// Reverse path from `MAIL FROM:<..>`, without the angle brackets.
    pub from: String,
    /// Accepted recipients from `RCPT TO:<..>`, without angle brackets, in order.
    pub rcpt_to: Vec<String>,
    /// Raw message after dot-unstuffing: every line terminated by CRLF
    /// (also for lines the client ended with a bare LF); the final `.` is excluded.
    pub data: Vec<u8>,
    /// 1-based number of the TCP connection that carried the message
    /// (the same numbering as [`TestSmtpServer::connections`]).
    pub connection: u64,
}

impl ReceivedMail {
    /// `data` as a (lossy) UTF-8 string, for convenient assertions.
    pub fn data_str(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// A scripted reply, optionally limited to the first `remaining` matches.
struct Rule {
    /// Lower-cased address substring, or upper-cased verb.
    key: String,
    reply: String,
    /// `None` = applies forever.
    remaining: Option<usize>,
}

/// The fault script; see the setter methods on [`TestSmtpServer`].
#[derive(Default)]
struct Script {
    rcpt_rules: Vec<Rule>,
    command_rules: Vec<Rule>,
    /// How many more messages to drop after DATA; `usize::MAX` = all.
    drop_after_data: usize,
    stall_after_data: Option<Duration>,
    stall_greeting: Option<Duration>,
    /// Waits this long before answering a command with this verb.
    stall_command: Option<(String, Duration)>,
    refuse_connections: bool,
}

/// Adds or replaces the rule with this key; `times == Some(0)` just removes it.
fn set_rule(rules: &mut Vec<Rule>, key: String, reply: &str, times: Option<usize>) {
    rules.retain(|r| r.key != key);
    if times != Some(0) {
        rules.push(Rule {
            key,
            reply: reply.to_string(),
            remaining: times,
        });
    }
}

/// Returns the reply of the first matching rule and consumes one use of it.
fn take_rule(rules: &mut Vec<Rule>, matches: impl Fn(&str) -> bool) -> Option<String> {
    let idx = rules.iter().position(|r| matches(&r.key))?;
    let reply = rules[idx].reply.clone();
    if let Some(n) = rules[idx].remaining.as_mut() {
        *n -= 1;
        if *n == 0 {
            rules.remove(idx);
        }
    }
    Some(reply)
}

/// Recorded results.
#[derive(Default)]
struct State {
    accepted: Vec<ReceivedMail>,
    /// When the final 250 for each accepted message was sent (monotonic).
    accepted_at: Vec<Instant>,
    dropped: Vec<ReceivedMail>,
    connections: u64,
    /// User and password of each `AUTH PLAIN`, in order.
    logins: Vec<(String, String)>,
}

/// TLS the server offers.
#[derive(Clone)]
enum Tls {
    None,
    /// `STARTTLS` advertised in EHLO and honoured.
    Upgrade(tokio_rustls::TlsAcceptor),
    /// TLS from the first byte (smtps).
    Implicit(tokio_rustls::TlsAcceptor),
}

/// Any stream a session can run on: plain TCP, or TLS over it.
trait Stream: tokio::io::AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A self-signed certificate for `localhost` and `127.0.0.1` (a client that
/// verifies certificates must refuse it).
fn self_signed_acceptor() -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls;
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("test certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .expect("TLS server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

struct Shared {
    tls: Tls,
    state: Mutex<State>,
    script: Mutex<Script>,
    /// Number of accepted messages, for `wait_for_count`.
    count_tx: watch::Sender<usize>,
    /// Number of messages whose data was read in full (before any scripted
    /// drop, stall or reply), for `wait_for_data`.
    data_tx: watch::Sender<usize>,
    /// Live connection tasks, so `stop_listening`/`Drop` can close them.
    conns: Mutex<Vec<JoinHandle<()>>>,
    started: Instant,
}

/// Locks a mutex, ignoring poisoning (a panicking test must not cascade).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn script(&self) -> MutexGuard<'_, Script> {
        lock(&self.script)
    }
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// A scriptable SMTP server on `127.0.0.1` with a fixed port for its lifetime.
///
/// Dropping it stops the listener and closes all client connections.
pub struct TestSmtpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl TestSmtpServer {
    /// Binds `127.0.0.1:0` and starts accepting connections (one task each).
    pub async fn start() -> TestSmtpServer {
        Self::start_with(Tls::None).await
    }

    /// Like [`TestSmtpServer::start`], offering STARTTLS with a self-signed certificate.
    pub async fn start_starttls() -> TestSmtpServer {
        Self::start_with(Tls::Upgrade(self_signed_acceptor())).await
    }

    /// Like [`TestSmtpServer::start`], speaking TLS from the first byte (smtps).
    pub async fn start_implicit_tls() -> TestSmtpServer {
        Self::start_with(Tls::Implicit(self_signed_acceptor())).await
    }

    async fn start_with(tls: Tls) -> TestSmtpServer {
        let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .expect("test SMTP server: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("test SMTP server: local_addr");
        let shared = Arc::new(Shared {
            tls,
            state: Mutex::new(State::default()),
            script: Mutex::new(Script::default()),
            count_tx: watch::channel(0).0,
            data_tx: watch::channel(0).0,
            conns: Mutex::new(Vec::new()),
            started: Instant::now(),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        TestSmtpServer {
            addr,
            shared,
            accept_task: Mutex::new(Some(task)),
        }
    }

    /// The listening address (stable across `stop_listening`/`start_listening`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `smtp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.addr.port())
    }

    /// A view of what this server received that outlives it (for checks
    /// after the service under test, which owns the server, has stopped).
    pub fn observer(&self) -> SmtpObserver {
        SmtpObserver {
            shared: self.shared.clone(),
        }
    }

    /// All accepted messages (those answered with a 2xx after DATA), in order.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.shared.state().accepted.clone()
    }

    /// Accepted messages with the moment the final 250 was sent.
    pub fn messages_with_times(&self) -> Vec<(ReceivedMail, Instant)> {
        let st = self.shared.state();
        st.accepted
            .iter()
            .cloned()
            .zip(st.accepted_at.iter().copied())
            .collect()
    }

    /// Number of accepted messages.
    pub fn count(&self) -> usize {
        self.shared.state().accepted.len()
    }

    /// Messages whose data was fully read but whose connection was then closed
    /// without a reply because of [`drop_after_data`](Self::drop_after_data).
    pub fn dropped_after_data(&self) -> Vec<ReceivedMail> {
        self.shared.state().dropped.clone()
    }

    /// User and password of each `AUTH PLAIN` so far (answered 235 unless
    /// scripted otherwise with `reply_for_command("AUTH", ...)`). AUTH is
    /// offered only over TLS, as a relay should.
    pub fn logins(&self) -> Vec<(String, String)> {
        self.shared.state().logins.clone()
    }

    /// Total TCP connections accepted so far (including refused ones).
    pub fn connections(&self) -> u64 {
        self.shared.state().connections
    }

    /// Waits (without polling) until at least `n` messages were accepted and
    /// returns all accepted messages, or an error saying how many arrived.
    pub async fn wait_for_count(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<ReceivedMail>, String> {
        let mut rx = self.shared.count_tx.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await {
            Ok(Ok(_)) => Ok(self.messages()),
            _ => Err(format!(
                "timed out after {timeout:?} waiting for {n} message(s); {} accepted",
                self.count()
            )),
        }
    }

    /// Waits until at least `n` messages' data was read in full (the client
    /// has sent it; a stall or a drop may follow), or says how many were.
    pub async fn wait_for_data(&self, n: usize, timeout: Duration) -> Result<(), String> {
        let mut rx = self.shared.data_tx.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(format!(
                "timed out after {timeout:?} waiting for the data of {n} message(s); {} read",
                *self.shared.data_tx.borrow()
            )),
        }
    }

    /// Accepted messages per second since the server started (index = second).
    pub fn accepted_per_second(&self) -> Vec<usize> {
        let state = self.shared.state();
        let mut buckets = Vec::new();
        for t in &state.accepted_at {
            let sec = t.duration_since(self.shared.started).as_secs() as usize;
            if buckets.len() <= sec {
                buckets.resize(sec + 1, 0);
            }
            buckets[sec] += 1;
        }
        buckets
    }

    /// The largest number of acceptances whose instants fit in any sliding
    /// window of length `window` (instants `t` with `first <= t < first + window`).
    pub fn max_accepted_in_any_window(&self, window: Duration) -> usize {
        let times = self.shared.state().accepted_at.clone();
        let (mut best, mut i) = (0, 0);
        for j in 0..times.len() {
            while i <= j && times[j].duration_since(times[i]) >= window {
                i += 1;
            }
            best = best.max(j + 1 - i);
        }
        best
    }

    /// Answers `reply` (a full reply line, e.g. `"550 5.1.1 No such user"`)
    /// to every `RCPT TO` whose address contains `address_substring`
    /// (case-insensitive). A non-2xx reply does not add the recipient.
    pub fn reply_for_rcpt(&self, address_substring: &str, reply: &str) {
        let key = address_substring.to_lowercase();
        set_rule(&mut self.shared.script().rcpt_rules, key, reply, None);
    }

    /// Like [`reply_for_rcpt`](Self::reply_for_rcpt) but only for the first
    /// `times` matching RCPTs; afterwards they get 250 again (greylisting).
    pub fn reply_for_rcpt_times(&self, address_substring: &str, reply: &str, times: usize) {
        let key = address_substring.to_lowercase();
        set_rule(
            &mut self.shared.script().rcpt_rules,
            key,
            reply,
            Some(times),
        );
    }

    /// Answers `reply` to every command with this verb (case-insensitive),
    /// e.g. `("MAIL", "421 4.3.0 try later")`. Special verbs: `"DATA_END"` is
    /// the reply after the message data, `"GREETING"` replaces the banner.
    /// A 2xx/3xx reply keeps the command's normal effect (only the text
    /// changes); other replies leave the session state unchanged.
    /// Any `421` reply closes the connection after it is sent.
    pub fn reply_for_command(&self, verb: &str, reply: &str) {
        set_rule(
            &mut self.shared.script().command_rules,
            verb.to_uppercase(),
            reply,
            None,
        );
    }

    /// Like [`reply_for_command`](Self::reply_for_command) but only for the
    /// next `times` uses of that verb.
    pub fn reply_for_command_times(&self, verb: &str, reply: &str, times: usize) {
        set_rule(
            &mut self.shared.script().command_rules,
            verb.to_uppercase(),
            reply,
            Some(times),
        );
    }

    /// While on, after reading a complete message the connection is closed
    /// without replying; the message goes to [`dropped_after_data`](Self::dropped_after_data).
    pub fn drop_after_data(&self, on: bool) {
        self.shared.script().drop_after_data = if on { usize::MAX } else { 0 };
    }

    /// Drops the connection after data for the next `times` messages only.
    pub fn drop_after_data_times(&self, times: usize) {
        self.shared.script().drop_after_data = times;
    }

    /// Waits this long after reading a message before the final reply (the
    /// message counts as accepted only when the 250 is sent). A huge duration
    /// such as `Duration::MAX` stalls forever. `None` disables.
    pub fn stall_after_data(&self, delay: Option<Duration>) {
        self.shared.script().stall_after_data = delay;
    }

    /// Waits this long after accepting a connection before the greeting.
    pub fn stall_greeting(&self, delay: Option<Duration>) {
        self.shared.script().stall_greeting = delay;
    }

    /// Waits `delay` before answering every command with this verb (e.g. a
    /// relay that greets and then hangs at `MAIL`). `None` disables.
    pub fn stall_command(&self, verb: &str, delay: Option<Duration>) {
        self.shared.script().stall_command = delay.map(|d| (verb.to_uppercase(), d));
    }

    /// While true, accepted TCP connections are closed at once, without greeting.
    pub fn refuse_connections(&self, on: bool) {
        self.shared.script().refuse_connections = on;
    }

    /// Clears all scripted faults (recorded messages are kept).
    pub fn reset_script(&self) {
        *self.shared.script() = Script::default();
    }

    /// Closes the listening socket (new connections get ECONNREFUSED) and all
    /// open client connections. When this returns, all sockets are closed.
    pub async fn stop_listening(&self) {
        let task = lock(&self.accept_task).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await; // the listener is dropped once this resolves
        }
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for conn in &conns {
            conn.abort();
        }
        for conn in conns {
            let _ = conn.await;
        }
    }

    /// Listens again on the same port after [`stop_listening`](Self::stop_listening)
    /// (no-op if already listening). Retries the bind for up to 2 s, then panics.
    pub async fn start_listening(&self) {
        if lock(&self.accept_task).is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let listener = loop {
            match bind(self.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() >= deadline => {
                    panic!("test SMTP server: rebind {} failed: {e}", self.addr)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let task = tokio::spawn(accept_loop(listener, self.shared.clone()));
        *lock(&self.accept_task) = Some(task);
    }
}

/// What a [`TestSmtpServer`] received, readable after it is gone.
pub struct SmtpObserver {
    shared: Arc<Shared>,
}

impl SmtpObserver {
    /// All accepted messages, in order.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.shared.state().accepted.clone()
    }
}

impl Drop for TestSmtpServer {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.accept_task).take() {
            task.abort();
        }
        for conn in lock(&self.shared.conns).drain(..) {
            conn.abort();
        }
    }
}

/// Binds a listener with `SO_REUSEADDR`, so the port can be re-bound later.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(5)).await; // e.g. EMFILE
            continue;
        };
        let id = {
            let mut state = shared.state();
            state.connections += 1;
            state.connections
        };
        if shared.script().refuse_connections {
            drop(stream);
            continue;
        }
        let task = tokio::spawn(serve_connection(stream, id, shared.clone()));
        let mut conns = lock(&shared.conns);
        conns.retain(|t| !t.is_finished());
        conns.push(task);
    }
}

async fn serve_connection(stream: TcpStream, id: u64, shared: Arc<Shared>) {
    let stream: Box<dyn Stream> = match &shared.tls {
        Tls::Implicit(acceptor) => match acceptor.accept(stream).await {
            Ok(tls) => Box::new(tls),
            Err(_) => return, // the client refused the certificate
        },
        _ => Box::new(stream),
    };
    let _ = session(stream, id, &shared).await;
}

fn is_positive(reply: &str) -> bool {
    reply.starts_with('2') || reply.starts_with('3')
}

/// Reads one line without its terminator (CRLF or bare LF); `None` at EOF.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    if r.read_until(b'\n', &mut line).await? == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(line))
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, reply: &str) -> io::Result<()> {
    w.write_all(format!("{reply}\r\n").as_bytes()).await?;
    w.flush().await
}

/// Extracts the address from `FROM:<a@b> PARAMS` / `TO:<a@b>`, without brackets.
fn parse_path(arg: &str, prefix: &str) -> Option<String> {
    let head = arg.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = arg[prefix.len()..].trim_start();
    match rest.strip_prefix('<') {
        Some(inner) => inner.find('>').map(|end| inner[..end].to_string()),
        None => rest.split_whitespace().next().map(str::to_string),
    }
}

/// Runs one SMTP session; returns when the client quits or disconnects.
async fn session(stream: Box<dyn Stream>, id: u64, shared: &Shared) -> io::Result<()> {
    // One buffered stream for both directions, so STARTTLS can take it apart and wrap it.
    let mut io = BufReader::new(stream);
    let mut tls_active = matches!(shared.tls, Tls::Implicit(_));

    let stall = shared.script().stall_greeting;
    if let Some(d) = stall {
        tokio::time::sleep(d).await;
    }
    let greeting = take_rule(&mut shared.script().command_rules, |k| k == "GREETING");
    let greeting = greeting.unwrap_or_else(|| "220 test-smtp ESMTP".to_string());
    send(&mut io, &greeting).await?;
    if greeting.starts_with("421") {
        return Ok(());
    }

    let mut from: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();
    loop {
        let Some(line) = read_line(&mut io).await? else {
            return Ok(());
        };
        let text = String::from_utf8_lossy(&line).into_owned();
        let text = text.trim();
        let verb = text
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let arg = text[verb.len()..].trim();
        let stall = shared
            .script()
            .stall_command
            .as_ref()
            .filter(|(v, _)| *v == verb)
            .map(|(_, d)| *d);
        if let Some(d) = stall {
            tokio::time::sleep(d).await;
        }

        let forced = take_rule(&mut shared.script().command_rules, |k| k == verb);
        // A negative scripted reply replaces the command entirely.
        let reply = match forced {
            Some(f) if !is_positive(&f) => f,
            forced => {
                let pick = |normal: &str| forced.clone().unwrap_or_else(|| normal.to_string());
                match verb.as_str() {
                    "EHLO" => {
                        (from, rcpts) = (None, Vec::new());
                        if matches!(shared.tls, Tls::Upgrade(_)) && !tls_active {
                            pick("250-test-smtp\r\n250-STARTTLS\r\n250-SMTPUTF8\r\n250 8BITMIME")
                        } else if tls_active {
                            pick("250-test-smtp\r\n250-AUTH PLAIN\r\n250-SMTPUTF8\r\n250 8BITMIME")
                        } else {
                            pick("250-test-smtp\r\n250-SMTPUTF8\r\n250 8BITMIME")
                        }
                    }
                    "STARTTLS" => match (&shared.tls, tls_active) {
                        (Tls::Upgrade(acceptor), false) => {
                            send(&mut io, "220 2.0.0 Ready to start TLS").await?;
                            let plain = io.into_inner();
                            let Ok(tls) = acceptor.accept(plain).await else {
                                return Ok(()); // the client refused the certificate
                            };
                            io = BufReader::new(Box::new(tls) as Box<dyn Stream>);
                            tls_active = true;
                            (from, rcpts) = (None, Vec::new());
                            continue;
                        }
                        _ => "454 4.7.0 TLS not available".to_string(),
                    },
                    "HELO" => {
                        (from, rcpts) = (None, Vec::new());
                        pick("250 test-smtp")
                    }
                    "MAIL" => match parse_path(arg, "FROM:") {
                        Some(addr) => {
                            (from, rcpts) = (Some(addr), Vec::new());
                            pick("250 2.1.0 Ok")
                        }
                        None => "501 5.5.4 Syntax: MAIL FROM:<address>".to_string(),
                    },
                    "RCPT" => match parse_path(arg, "TO:") {
                        _ if from.is_none() => "503 5.5.1 need MAIL first".to_string(),
                        Some(addr) => {
                            let lower = addr.to_lowercase();
                            let scripted =
                                take_rule(&mut shared.script().rcpt_rules, |k| lower.contains(k));
                            let reply = scripted.unwrap_or_else(|| pick("250 2.1.5 Ok"));
                            if reply.starts_with('2') {
                                rcpts.push(addr);
                            }
                            reply
                        }
                        None => "501 5.5.4 Syntax: RCPT TO:<address>".to_string(),
                    },
                    "DATA" if from.is_none() => "503 5.5.1 need MAIL first".to_string(),
                    "DATA" if rcpts.is_empty() => "554 5.5.1 no valid recipients".to_string(),
                    "DATA" => {
                        send(&mut io, &pick("354 go ahead")).await?;
                        let mut data = Vec::new();
                        loop {
                            let Some(line) = read_line(&mut io).await? else {
                                return Ok(());
                            };
                            if line == b"." {
                                break;
                            }
                            // Undo dot-stuffing (RFC 5321 4.5.2).
                            let body = if line.first() == Some(&b'.') {
                                &line[1..]
                            } else {
                                &line[..]
                            };
                            data.extend_from_slice(body);
                            data.extend_from_slice(b"\r\n");
                        }
                        let mail = ReceivedMail {
                            from: from.take().unwrap_or_default(),
                            rcpt_to: std::mem::take(&mut rcpts),
                            data,
                            connection: id,
                        };
                        shared.data_tx.send_modify(|n| *n += 1);
                        let (drop_it, stall) = {
                            let mut script = shared.script();
                            let drop_it = script.drop_after_data > 0;
                            if drop_it && script.drop_after_data != usize::MAX {
                                script.drop_after_data -= 1;
                            }
                            (drop_it, script.stall_after_data)
                        };
                        if drop_it {
                            shared.state().dropped.push(mail);
                            return Ok(());
                        }
                        if let Some(d) = stall {
                            tokio::time::sleep(d).await;
                        }
                        let end =
                            take_rule(&mut shared.script().command_rules, |k| k == "DATA_END");
                        match end {
                            Some(reply) if !reply.starts_with('2') => reply,
                            end => {
                                // Record before sending, so a client that got the
                                // 250 always finds the message already counted.
                                let n = {
                                    let mut state = shared.state();
                                    state.accepted.push(mail);
                                    state.accepted_at.push(Instant::now());
                                    state.accepted.len()
                                };
                                shared.count_tx.send_replace(n);
                                end.unwrap_or_else(|| format!("250 2.0.0 Ok: queued as {n}"))
                            }
                        }
                    }
                    // PLAIN with the initial response (RFC 4616), as lettre sends it.
                    "AUTH" if tls_active => {
                        use base64::Engine;
                        let decoded = arg
                            .strip_prefix("PLAIN ")
                            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                            .map(|b| String::from_utf8_lossy(&b).into_owned());
                        let parts: Vec<&str> = decoded
                            .as_deref()
                            .map(|d| d.split('\0').collect())
                            .unwrap_or_default();
                        match parts.as_slice() {
                            [_, user, pass] => {
                                shared
                                    .state()
                                    .logins
                                    .push(((*user).to_owned(), (*pass).to_owned()));
                                pick("235 2.7.0 Authentication successful")
                            }
                            _ => "501 5.5.2 expected AUTH PLAIN <base64>".to_string(),
                        }
                    }
                    "RSET" => {
                        (from, rcpts) = (None, Vec::new());
                        pick("250 2.0.0 Ok")
                    }
                    "NOOP" => pick("250 2.0.0 Ok"),
                    "QUIT" => {
                        send(&mut io, &pick("221 bye")).await?;
                        return Ok(());
                    }
                    _ => "500 5.5.2 unrecognised".to_string(),
                }
            }
        };
        send(&mut io, &reply).await?;
        if reply.starts_with("421") {
            return Ok(());
        }
    }
}
