//! Everything that turns a delivery into bytes at a relay: building the MIME
//! message, the SMTP connection pool, classifying each attempt, protecting
//! the relay (circuit breaker, rate limit), and the `.eml` outbox used when
//! no relay is configured.

pub mod classify;
pub mod context;
pub mod message;
pub mod outbox;
pub mod relay;
pub mod smtp;

use crate::config::SmtpSettings;
use crate::domain::delivery::AttemptOutcome;
use std::time::Duration;

/// A mail-side problem that is not the outcome of an attempt.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid SMTP URL: {0}")]
    Url(String),
    #[error("cannot build the message: {0}")]
    Build(String),
}

/// How to reach the relay, from `smtp.url`.
#[derive(Clone)]
pub struct SmtpTarget {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub credentials: Option<(String, String)>,
}

/// Transport security towards the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain SMTP (a relay on localhost or a trusted network).
    None,
    /// STARTTLS, and refuse to send without it.
    StartTlsRequired,
    /// STARTTLS when offered.
    StartTlsOpportunistic,
    /// TLS from the first byte (smtps, port 465).
    Implicit,
}

impl SmtpTarget {
    /// Parses `smtp://host:port[?tls=required|opportunistic]` or `smtps://[user:pass@]host:port`.
    pub fn parse(s: &SmtpSettings) -> Result<Self, MailError> {
        let u = url::Url::parse(&s.url).map_err(|_| {
            MailError::Url("expected smtp://host:port, smtp://host:port?tls=required or smtps://user:pass@host:465".into())
        })?;
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| MailError::Url("missing host".into()))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned();
        let tls_param = u
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let (tls, default_port) = match (u.scheme(), tls_param.as_deref()) {
            ("smtps", _) => (TlsMode::Implicit, 465),
            ("smtp", None | Some("none")) => (TlsMode::None, 25),
            ("smtp", Some("required")) => (TlsMode::StartTlsRequired, 587),
            ("smtp", Some("opportunistic")) => (TlsMode::StartTlsOpportunistic, 25),
            ("smtp", Some(other)) => {
                return Err(MailError::Url(format!(
                    "tls={other}: expected required, opportunistic or none"
                )));
            }
            (other, _) => {
                return Err(MailError::Url(format!(
                    "scheme {other}: expected smtp or smtps"
                )));
            }
        };
        let from_url = (!u.username().is_empty()).then(|| {
            let dec = |x: &str| percent_decode(x);
            (dec(u.username()), dec(u.password().unwrap_or_default()))
        });
        let from_settings =
            (!s.username.is_empty()).then(|| (s.username.clone(), s.password.clone()));
        Ok(Self {
            host,
            port: u.port().unwrap_or(default_port),
            tls,
            credentials: from_settings.or(from_url),
        })
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The result of one send attempt, classified.
#[derive(Debug, Clone, PartialEq)]
pub struct SendReport {
    pub outcome: AttemptOutcome,
    pub smtp_code: Option<u16>,
    pub enhanced_code: Option<String>,
    /// The relay's reply text or the error (never contains the recipient address).
    pub detail: String,
    /// The relay could not be reached at all (counts toward the breaker).
    pub connect_failed: bool,
    /// A "try again in N" from the relay.
    pub retry_hint: Option<Duration>,
    /// A 5.7.x refusal of this recipient at RCPT
    /// ([`classify::is_recipient_policy`]).
    pub recipient_policy: bool,
    /// The relay did not answer within `smtp.timeout` (a relay that greets
    /// and then hangs): counts toward the circuit breaker.
    pub timed_out: bool,
}

impl SendReport {
    /// A report of an attempt that got no SMTP reply to classify.
    pub fn without_reply(outcome: AttemptOutcome, detail: String) -> Self {
        Self {
            outcome,
            smtp_code: None,
            enhanced_code: None,
            detail,
            connect_failed: false,
            retry_hint: None,
            recipient_policy: false,
            timed_out: false,
        }
    }

    /// A report for a mail refused for good before any relay saw it.
    pub fn permanent(detail: String) -> Self {
        Self::without_reply(AttemptOutcome::Permanent, detail)
    }

    /// A report for an attempt that succeeded.
    pub fn sent(code: u16, detail: String) -> Self {
        Self {
            outcome: AttemptOutcome::Sent,
            smtp_code: Some(code),
            enhanced_code: classify::enhanced_code(&detail),
            detail,
            connect_failed: false,
            retry_hint: None,
            recipient_policy: false,
            timed_out: false,
        }
    }
}

/// Where mails go: a relay, or `.eml` files.
pub enum Mailer {
    Smtp(Box<smtp::SmtpPool>),
    Outbox(outbox::Outbox),
}

impl Mailer {
    /// Builds the mailer `smtp.*` asks for.
    pub fn from_settings(s: &SmtpSettings) -> Result<Self, MailError> {
        if s.url.is_empty() {
            Ok(Self::Outbox(outbox::Outbox::new(&s.outbox_dir)))
        } else {
            Ok(Self::Smtp(Box::new(smtp::SmtpPool::new(
                SmtpTarget::parse(s)?,
                s,
            ))))
        }
    }

    /// Sends one message to one recipient.
    pub async fn send(&self, from: &str, to: &str, delivery_id: &str, bytes: &[u8]) -> SendReport {
        match self {
            Self::Smtp(p) => p.send(from, to, bytes).await,
            Self::Outbox(o) => o.write(delivery_id, bytes).await,
        }
    }

    /// Closes idle connections (shutdown).
    pub async fn close(&self) {
        if let Self::Smtp(p) = self {
            p.close().await;
        }
    }
}
