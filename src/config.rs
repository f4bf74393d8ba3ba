//! Settings: the embedded `config/default.toml`, then an optional file
//! (`--config`), then `NOTIFIER_<SECTION>__<KEY>` environment variables.
//! A bad value is reported as one line naming the key.

use crate::domain::bounce::{BounceAddress, BounceKey};
use crate::mail::smtp::PoolOptions;
use crate::mail::target::{Relay, SmtpTarget, TlsMode};
use crate::tls::CaFile;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use lettre::message::Mailbox;
use serde::{Deserialize, Deserializer};
use std::path::Path;
use std::time::Duration;

/// The defaults, documented in place.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// A configuration problem: exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration error: {0}")]
    Invalid(String),
}

/// A duration written as `500ms`, `30s`, `2m`, `4h` or `3d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parses `<digits><unit>` with unit ms, s, m, h or d.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("expected a duration like 30s, 2m or 4h, got {s:?}"))?;
        let factor: u64 = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(format!("expected a duration like 30s, 2m or 4h, got {s:?}")),
        };
        // Bounded so that adding any setting to a timestamp cannot overflow.
        const MAX_MS: u64 = 36_500 * 86_400_000;
        match n.checked_mul(factor) {
            Some(ms) if ms <= MAX_MS => Ok(Self(Duration::from_millis(ms))),
            _ => Err(format!("{s:?} is too long: at most 36500d")),
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// All settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub database: DatabaseSettings,
    pub smtp: SmtpSettings,
    pub dispatch: DispatchSettings,
    pub retry: RetrySettings,
    pub breaker: BreakerSettings,
    pub recipients: RecipientSettings,
    pub portal: PortalSettings,
    pub mail: MailSettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    pub shutdown: ShutdownSettings,
    pub bounces: BounceSettings,
}

/// Reading delivery status notifications from a mailbox folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BounceSettings {
    /// A maildir (`new/`, `cur/`) that `run` reads bounces from; empty: none.
    pub maildir: String,
    /// How often `run` looks into `maildir`.
    pub poll_interval: HumanDuration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    pub url: String,
    pub exchange: String,
    pub queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub delivery_limit: u32,
    pub prefetch: u16,
    /// A batch stops growing once its bodies add up to this many bytes.
    pub batch_max_bytes: usize,
    pub reconnect_min: HumanDuration,
    pub reconnect_max: HumanDuration,
    /// A PEM file with the CA(s) of an `amqps://` broker, trusted next to
    /// the system's roots; empty: the system's roots only.
    pub ca_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    pub migrate_on_start: bool,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    /// Parsed once, here; an empty `smtp.url` is [`Relay::Outbox`].
    pub url: Relay,
    pub outbox_dir: String,
    pub username: String,
    pub password: String,
    #[serde(deserialize_with = "mailbox")]
    pub from: Mailbox,
    pub hello_name: String,
    pub concurrency: usize,
    pub max_rate: u32,
    pub timeout: HumanDuration,
    pub connect_timeout: HumanDuration,
    pub danger_accept_invalid_certs: bool,
    /// A PEM file with the CA(s) of the relay, trusted next to the system's
    /// roots; empty: the system's roots only.
    pub ca_file: String,
    /// Where bounces go (VERP): `local@domain`, empty for none.
    #[serde(deserialize_with = "bounce_address")]
    pub bounce_address: Option<BounceAddress>,
    /// The secret that signs the bounce tags; required with `bounce_address`.
    pub bounce_key: String,
}

impl std::fmt::Debug for SmtpSettings {
    // Secrets never printed: the URL may carry a password too.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("url", &self.url)
            .field("concurrency", &self.concurrency)
            .field("max_rate", &self.max_rate)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchSettings {
    /// `false`: `run` ingests and serves HTTP but sends nothing (a backlog
    /// builds up in the database for another instance or a later start).
    pub enabled: bool,
    pub batch_size: u32,
    pub lease: HumanDuration,
    pub idle_poll: HumanDuration,
    /// Reconciliation: a delivery overdue by more than this makes its event stuck.
    pub stuck_after: HumanDuration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    pub schedule: Vec<HumanDuration>,
    pub repeat: HumanDuration,
    pub jitter: f64,
    pub deadline: HumanDuration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSettings {
    pub failure_threshold: u32,
    pub open_for: HumanDuration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientSettings {
    pub late_directory_window: HumanDuration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalSettings {
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailSettings {
    pub allowed_link_hosts: Vec<String>,
    pub templates_dir: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: std::net::SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    pub grace: HumanDuration,
}

impl Settings {
    /// Loads defaults, then `file` (if given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!(
                    "--config {}: file not found",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(Env::prefixed("NOTIFIER_").split("__"));
        Self::from_figment(fig)
    }

    /// Extracts and checks settings from a prepared figment (tests build their own).
    pub fn from_figment(fig: Figment) -> Result<Self, ConfigError> {
        let s: Settings = fig.extract().map_err(|e| {
            let e = e.into_iter().next().expect("figment error has one entry");
            let key = if e.path.is_empty() {
                String::new()
            } else {
                format!("{}: ", e.path.join("."))
            };
            ConfigError::Invalid(format!("{key}{}", e.kind))
        })?;
        s.validate()?;
        Ok(s)
    }

    /// The built-in defaults alone.
    pub fn defaults() -> Self {
        Self::from_figment(Figment::from(Toml::string(DEFAULT_TOML))).expect("defaults are valid")
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, what: String| Err(ConfigError::Invalid(format!("{key}: {what}")));
        match url::Url::parse(&self.portal.url) {
            Ok(u) if u.scheme() == "https" && u.host_str().is_some() => {}
            _ => {
                return bad(
                    "portal.url",
                    format!("expected an https URL, got {:?}", self.portal.url),
                );
            }
        }
        if !(self.amqp.url.starts_with("amqp://") || self.amqp.url.starts_with("amqps://")) {
            return bad(
                "amqp.url",
                "expected amqp://user:pass@host:port/vhost or amqps://...".into(),
            );
        }
        if !(self.database.url.starts_with("sqlite:")
            || self.database.url.starts_with("postgres://")
            || self.database.url.starts_with("postgresql://"))
        {
            return bad(
                "database.url",
                format!(
                    "expected sqlite://FILE or postgres://..., got {:?}",
                    redact_url(&self.database.url)
                ),
            );
        }
        if self.smtp.bounce_address.is_some()
            && let Err(e) = BounceKey::parse(&self.smtp.bounce_key)
        {
            return bad(
                "smtp.bounce_key",
                format!("required with smtp.bounce_address: {e}"),
            );
        }
        if self.smtp.concurrency == 0 {
            return bad("smtp.concurrency", "must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.retry.jitter) {
            return bad(
                "retry.jitter",
                "expected a fraction from 0 up to (not including) 1".into(),
            );
        }
        if self.amqp.prefetch == 0 {
            return bad("amqp.prefetch", "must be at least 1".into());
        }
        if self.dispatch.lease.0 < Duration::from_secs(3) {
            return bad(
                "dispatch.lease",
                format!(
                    "must be at least 3s, got {:?} (a lease is renewed every lease/3 while its send is in flight; shorter leases expire under a slow database)",
                    self.dispatch.lease.0
                ),
            );
        }
        if self.dispatch.batch_size == 0 {
            return bad("dispatch.batch_size", "must be at least 1".into());
        }
        Ok(())
    }

    /// Link hosts allowed in mails: the configured list, or the portal's host.
    pub fn allowed_link_hosts(&self) -> Vec<String> {
        if self.mail.allowed_link_hosts.is_empty() {
            let host = url::Url::parse(&self.portal.url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
                .unwrap_or_default();
            vec![host]
        } else {
            self.mail
                .allowed_link_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect()
        }
    }

    /// The domain's retry policy from these settings.
    pub fn retry_policy(&self) -> crate::domain::delivery::RetryPolicy {
        crate::domain::delivery::RetryPolicy {
            schedule: self.retry.schedule.iter().map(|d| d.0).collect(),
            repeat: self.retry.repeat.0,
            jitter: self.retry.jitter,
        }
    }
}

fn bounce_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BounceAddress>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    BounceAddress::parse(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn mailbox<'de, D: Deserializer<'de>>(d: D) -> Result<Mailbox, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "expected a mailbox like \"Naam <adres@domein.nl>\", got {s:?}"
        ))
    })
}

impl SmtpSettings {
    /// The relay to send to, with `smtp.username`/`smtp.password` (when
    /// set) in place of the URL's credentials; `None`: the outbox.
    pub fn target(&self) -> Option<SmtpTarget> {
        let Relay::Smtp(t) = &self.url else {
            return None;
        };
        let mut t = t.clone();
        if !self.username.is_empty() {
            t.credentials = Some((self.username.clone(), self.password.clone()));
        }
        Some(t)
    }

    /// The bounce address with its key, when bounces are tagged.
    pub fn bounce_tagging(&self) -> Option<(BounceAddress, BounceKey)> {
        let address = self.bounce_address.clone()?;
        let key = BounceKey::parse(&self.bounce_key).ok()?;
        Some((address, key))
    }

    /// The relay connection pool's options, with `smtp.ca_file` loaded,
    /// after [`Self::check_transport_security`]: what every command that
    /// talks to the relay builds its pool from.
    pub fn pool_options(&self) -> Result<PoolOptions, ConfigError> {
        self.check_transport_security()?;
        let ca = match &self.url {
            Relay::Smtp(_) => CaFile::load_optional("smtp.ca_file", &self.ca_file)
                .map_err(ConfigError::Invalid)?,
            Relay::Outbox => None,
        };
        Ok(PoolOptions {
            hello_name: self.hello_name.clone(),
            concurrency: self.concurrency,
            timeout: self.timeout.0,
            connect_timeout: self.connect_timeout.0,
            accept_invalid_certs: self.danger_accept_invalid_certs,
            ca,
        })
    }

    /// Credentials never cross the network unencrypted or to a server whose
    /// certificate was not verified: they need `tls=required` or `smtps://`
    /// with certificate checks on. A stripped STARTTLS (`tls=opportunistic`)
    /// would otherwise hand the password to whoever sits on the path.
    pub fn check_transport_security(&self) -> Result<(), ConfigError> {
        let Some(t) = self.target() else {
            return Ok(());
        };
        let bad = |key: &str, what: &str| Err(ConfigError::Invalid(format!("{key}: {what}")));
        if t.credentials.is_some() {
            match t.tls {
                TlsMode::None => {
                    return bad(
                        "smtp.url",
                        "credentials are set (in smtp.url or smtp.username/smtp.password) but smtp.url has no TLS, so the password would cross the network in clear text: use smtp://HOST:587?tls=required or smtps://HOST:465, or remove the credentials",
                    );
                }
                TlsMode::StartTlsOpportunistic => {
                    return bad(
                        "smtp.url",
                        "credentials are set (in smtp.url or smtp.username/smtp.password) but tls=opportunistic sends them in clear text whenever the relay does not offer STARTTLS, and anyone on the path can strip that offer: use tls=required or smtps://",
                    );
                }
                TlsMode::StartTlsRequired | TlsMode::Implicit => {}
            }
            if self.danger_accept_invalid_certs {
                return bad(
                    "smtp.danger_accept_invalid_certs",
                    "is true while credentials are set: any server that answers in the relay's place would get the password; trust the relay's CA with smtp.ca_file instead and set danger_accept_invalid_certs = false",
                );
            }
        }
        if !self.ca_file.is_empty() {
            if self.danger_accept_invalid_certs {
                return bad(
                    "smtp.ca_file",
                    "is set together with smtp.danger_accept_invalid_certs = true, which turns every certificate check off, this CA's included: set danger_accept_invalid_certs = false",
                );
            }
            if t.tls == TlsMode::None {
                return bad(
                    "smtp.ca_file",
                    "is set but smtp.url uses no TLS: add ?tls=required or use smtps://, or leave smtp.ca_file empty",
                );
            }
        }
        Ok(())
    }
}

/// A URL with any password replaced, for messages.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable URL>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load() {
        let s = Settings::defaults();
        assert_eq!(s.amqp.queue, "notifier.events");
        assert_eq!(s.allowed_link_hosts(), vec!["zip.example.nl".to_string()]);
        assert_eq!(s.retry.schedule[0].0, Duration::from_secs(30));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(
            HumanDuration::parse("500ms").unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!(
            HumanDuration::parse("4h").unwrap().0,
            Duration::from_secs(14_400)
        );
        assert!(HumanDuration::parse("4 hours").is_err());
        assert!(HumanDuration::parse("36500d").is_ok());
        assert!(
            HumanDuration::parse("36501d")
                .unwrap_err()
                .contains("too long")
        );
        assert!(HumanDuration::parse("99999999999999999999d").is_err());
        assert!(HumanDuration::parse("18446744073709551615h").is_err());
    }

    #[test]
    fn bad_values_name_the_key() {
        let fig = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Toml::string("[dispatch]\nlease = \"soon\""));
        let e = Settings::from_figment(fig).unwrap_err().to_string();
        assert!(e.contains("dispatch.lease"), "{e}");
        let fig = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Toml::string("[portal]\nurl = \"http://x\""));
        assert!(
            Settings::from_figment(fig)
                .unwrap_err()
                .to_string()
                .contains("portal.url")
        );
    }

    #[test]
    fn a_lease_under_three_seconds_is_refused() {
        let fig = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Toml::string("[dispatch]\nlease = \"2s\""));
        let e = Settings::from_figment(fig).unwrap_err().to_string();
        assert!(e.contains("dispatch.lease: must be at least 3s"), "{e}");
    }

    fn smtp(toml: &str) -> SmtpSettings {
        let fig = Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(toml));
        Settings::from_figment(fig).unwrap().smtp
    }

    #[test]
    fn credentials_need_tls_that_is_required_and_verified() {
        for (toml, key, why) in [
            ("[smtp]\nurl = \"smtp://u:p@relay\"", "smtp.url:", "no TLS"),
            (
                "[smtp]\nurl = \"smtp://relay?tls=none\"\nusername = \"u\"",
                "smtp.url:",
                "no TLS",
            ),
            (
                "[smtp]\nurl = \"smtp://u:p@relay?tls=opportunistic\"",
                "smtp.url:",
                "tls=opportunistic",
            ),
            (
                "[smtp]\nurl = \"smtps://u:p@relay\"\ndanger_accept_invalid_certs = true",
                "smtp.danger_accept_invalid_certs:",
                "smtp.ca_file",
            ),
            (
                "[smtp]\nurl = \"smtps://relay\"\nca_file = \"/x.pem\"\ndanger_accept_invalid_certs = true",
                "smtp.ca_file:",
                "danger_accept_invalid_certs = false",
            ),
            (
                "[smtp]\nurl = \"smtp://relay\"\nca_file = \"/x.pem\"",
                "smtp.ca_file:",
                "no TLS",
            ),
        ] {
            let s = smtp(toml);
            let e = s.check_transport_security().unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(why), "{toml}: {e}");
            assert!(s.pool_options().is_err(), "{toml}");
        }
        for ok in [
            "[smtp]\nurl = \"smtp://u:p@relay?tls=required\"",
            "[smtp]\nurl = \"smtps://relay\"\nusername = \"u\"\npassword = \"p\"",
            "[smtp]\nurl = \"smtp://relay?tls=opportunistic\"",
            "[smtp]\nurl = \"smtp://relay\"",
            "[smtp]\nurl = \"smtps://relay\"\ndanger_accept_invalid_certs = true",
            "[smtp]\nusername = \"u\"",
        ] {
            assert!(smtp(ok).pool_options().is_ok(), "{ok}");
        }
    }

    #[test]
    fn an_unreadable_ca_file_names_the_key() {
        let e = smtp("[smtp]\nurl = \"smtps://relay\"\nca_file = \"/nonexistent/ca.pem\"")
            .pool_options()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("smtp.ca_file: cannot read /nonexistent/ca.pem"),
            "{e}"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("smtps://u:secret@h:465"), "smtps://u:***@h:465");
    }
}
