//! Settings: the embedded `config/default.toml`, then an optional file
//! (`--config`), then `NOTIFIER_<SECTION>__<KEY>` environment variables.
//! A bad value is reported as one line naming the key.
//!
//! Secrets (`smtp.password`, `smtp.bounce_key`, and the URLs `amqp.url` and
//! `database.url`, which carry passwords) may also come from a file named by
//! the same key with `_file` (`smtp.password_file`,
//! `NOTIFIER_SMTP__PASSWORD_FILE`, ...), e.g. a systemd credential. They are
//! held in types whose `Debug` and `Display` never show them
//! ([`SecretString`], [`SecretUrl`]); the real value is taken out with
//! `expose_secret()` only where a connection is made or a tag is signed.

use crate::domain::bounce::{BounceAddress, BounceKey};
use crate::mail::smtp::PoolOptions;
use crate::mail::target::{Relay, SmtpTarget, TlsMode};
use crate::tls::CaFile;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use lettre::message::Mailbox;
pub use secrecy::{ExposeSecret, SecretString};
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

impl std::fmt::Display for HumanDuration {
    /// In the largest unit that divides it: `90d`, `36h`, `1500ms`, `0s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, factor) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms.is_multiple_of(factor) {
                return write!(f, "{}{unit}", ms / factor);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A connection URL that may carry a password (`amqp.url`, `database.url`).
/// `Debug` and `Display` show it with the password replaced by `***`, so it
/// can be named in messages (its host, port, database) without leaking;
/// [`SecretUrl::expose_secret`] gives the real one, for connecting.
#[derive(Clone, Deserialize)]
#[serde(from = "String")]
pub struct SecretUrl(SecretString);

impl SecretUrl {
    /// The URL as given.
    pub fn new(url: impl Into<String>) -> Self {
        Self(SecretString::from(url.into()))
    }

    /// The URL with any password replaced by `***` (see [`redact_url`]).
    pub fn redacted(&self) -> String {
        redact_url(self.0.expose_secret())
    }

    /// The URL with its password: only for making the connection.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> Self {
        Self::new(url)
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.redacted(), f)
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Each secret with the key that names a file holding it instead.
pub const SECRET_FILE_KEYS: [(&str, &str); 4] = [
    ("smtp.password", "smtp.password_file"),
    ("smtp.bounce_key", "smtp.bounce_key_file"),
    ("amqp.url", "amqp.url_file"),
    ("database.url", "database.url_file"),
];

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
    pub retention: RetentionSettings,
}

/// How long personal data is kept (`notifier purge`, and the periodic
/// purge of `run`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Finished events (and bounces, quarantined messages) older than this
    /// lose their personal data; at least 1s.
    pub keep: HumanDuration,
    /// How often `run` purges; `0s`: never (only `notifier purge`).
    pub interval: HumanDuration,
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
    /// May carry the broker password: printed redacted.
    pub url: SecretUrl,
    /// A file holding `url` (read at load; empty: unused).
    pub url_file: String,
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
    /// May carry the database password: printed redacted.
    pub url: SecretUrl,
    /// A file holding `url` (read at load; empty: unused).
    pub url_file: String,
    pub max_connections: u32,
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    /// Parsed once, here; an empty `smtp.url` is [`Relay::Outbox`].
    pub url: Relay,
    pub outbox_dir: String,
    pub username: String,
    pub password: SecretString,
    /// A file holding `password` (read at load; empty: unused).
    pub password_file: String,
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
    pub bounce_key: SecretString,
    /// A file holding `bounce_key` (read at load; empty: unused).
    pub bounce_key_file: String,
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
        let secrets: Vec<&str> = SECRET_FILE_KEYS.iter().map(|(key, _)| *key).collect();
        let env = Env::prefixed("NOTIFIER_").split("__");
        fig = fig.merge(env.clone().ignore(&secrets));
        // Secrets from the environment are taken as the string they are:
        // figment would read `12345` as a number, `[x` as an array, and its
        // type error would then print the value.
        for (key, value) in env.only(&secrets).iter() {
            fig = fig.merge(Serialized::default(key.as_str(), value));
        }
        Self::from_figment(fig)
    }

    /// Extracts and checks settings from a prepared figment (tests build their own).
    pub fn from_figment(fig: Figment) -> Result<Self, ConfigError> {
        let fig = read_secret_files(fig)?;
        let s: Settings = fig.extract().map_err(|e| {
            let e = e.into_iter().next().expect("figment error has one entry");
            let path = e.path.join(".");
            // figment's type errors quote the value (`found unsigned int
            // `12345``): not for a secret.
            if SECRET_FILE_KEYS.iter().any(|(key, _)| *key == path) {
                return ConfigError::Invalid(format!(
                    "{path}: expected a string (the value is not shown: it is a secret)"
                ));
            }
            let key = if path.is_empty() {
                String::new()
            } else {
                format!("{path}: ")
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
        let amqp_url = self.amqp.url.expose_secret();
        if !(amqp_url.starts_with("amqp://") || amqp_url.starts_with("amqps://")) {
            return bad(
                "amqp.url",
                "expected amqp://user:pass@host:port/vhost or amqps://...".into(),
            );
        }
        let database_url = self.database.url.expose_secret();
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return bad(
                "database.url",
                format!(
                    "expected sqlite://FILE or postgres://..., got {:?}",
                    self.database.url.redacted()
                ),
            );
        }
        if self.smtp.bounce_address.is_some()
            && let Err(e) = BounceKey::parse(self.smtp.bounce_key.expose_secret())
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
        if let Err(e) = check_log_filter(&self.log.level) {
            return bad("log.level", e);
        }
        if self.retention.keep.0 < Duration::from_secs(1) {
            return bad(
                "retention.keep",
                "must be at least 1s (to keep data longer, raise it; to stop the periodic purge, set retention.interval = \"0s\")".into(),
            );
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

/// Puts the content of each file named by a `*_file` key
/// ([`SECRET_FILE_KEYS`]) in place of its secret. A secret set both ways
/// (a value other than its default, and a file) is refused: which one wins
/// would be a guess. The file's trailing line break (`\n` or `\r\n`, as
/// `echo` and editors leave it) is not part of the secret. Errors name the
/// key and the path, never the content.
fn read_secret_files(mut fig: Figment) -> Result<Figment, ConfigError> {
    let defaults = Figment::from(Toml::string(DEFAULT_TOML));
    for (key, file_key) in SECRET_FILE_KEYS {
        // Not a string: left to the extraction, which names the type error.
        let Some(path) = fig
            .find_value(file_key)
            .ok()
            .and_then(|v| v.into_string())
            .filter(|p| !p.is_empty())
        else {
            continue;
        };
        let value = fig.find_value(key).ok();
        if value.is_some() && value != defaults.find_value(key).ok() {
            return Err(ConfigError::Invalid(format!(
                "{key} and {file_key} are both set: set one of them (the secret itself, or the file that holds it)"
            )));
        }
        let bytes = std::fs::read(&path)
            .map_err(|e| ConfigError::Invalid(format!("{file_key}: cannot read {path}: {e}")))?;
        let content = String::from_utf8(bytes)
            .map_err(|_| ConfigError::Invalid(format!("{file_key}: {path} is not UTF-8 text")))?;
        let secret = content
            .strip_suffix("\r\n")
            .or_else(|| content.strip_suffix('\n'))
            .unwrap_or(&content);
        if secret.is_empty() {
            return Err(ConfigError::Invalid(format!("{file_key}: {path} is empty")));
        }
        fig = fig.merge(Serialized::default(key, secret));
    }
    Ok(fig)
}

/// Checks a tracing filter the way `log.level` promises: comma-separated
/// directives, each a level or `target=level` (`target[span{field}]=level`
/// too). tracing itself reads a lone `inf0` as a target name at level
/// trace, so a typo would silently log nothing.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let is_level = |s: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s));
    let mut any = false;
    // No trimming: tracing takes " info" as a target, so a space is an error too.
    for directive in filter.split(',').filter(|d| !d.is_empty()) {
        any = true;
        let ok = match directive.rsplit_once('=') {
            Some((target, level)) => !target.is_empty() && is_level(level),
            None => is_level(directive),
        };
        if !ok {
            return Err(format!(
                "{directive:?} is neither a level ({}) nor target=level (no spaces), e.g. \"info,notifier=debug\"",
                LEVELS.join(", ")
            ));
        }
    }
    if !any {
        return Err("empty: expected a level such as \"info\"".into());
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|e| format!("{filter:?} is not a valid filter: {e}"))
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
            t.credentials = Some((
                self.username.clone(),
                self.password.expose_secret().to_owned(),
            ));
        }
        Some(t)
    }

    /// The bounce address with its key, when bounces are tagged.
    pub fn bounce_tagging(&self) -> Option<(BounceAddress, BounceKey)> {
        let address = self.bounce_address.clone()?;
        let key = BounceKey::parse(self.bounce_key.expose_secret()).ok()?;
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

/// A URL with any password replaced by `***`, for messages: the one in the
/// user info, and a `password=` (PostgreSQL) query parameter.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut u) = url::Url::parse(raw) else {
        return "<unparseable URL>".into();
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    let secret_param = |k: &str| k.to_ascii_lowercase().contains("password");
    if u.query_pairs().any(|(k, _)| secret_param(&k)) {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret_param(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
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
    fn durations_print_in_their_largest_unit() {
        for s in ["90d", "36h", "2m", "1s", "1500ms", "0s"] {
            assert_eq!(HumanDuration::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(HumanDuration::parse("24h").unwrap().to_string(), "1d");
    }

    #[test]
    fn retention_keeps_at_least_a_second() {
        let s = Settings::defaults();
        assert_eq!(s.retention.keep.0, Duration::from_secs(90 * 86_400));
        assert_eq!(s.retention.interval.0, Duration::from_secs(3600));
        let fig = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Toml::string("[retention]\nkeep = \"0s\""));
        let e = Settings::from_figment(fig).unwrap_err().to_string();
        assert!(e.contains("retention.keep: must be at least 1s"), "{e}");
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
        assert_eq!(
            redact_url("postgres://db.example/notifier?sslmode=verify-full&password=secret"),
            "postgres://db.example/notifier?sslmode=verify-full&password=***"
        );
        assert_eq!(redact_url("sqlite://notifier.db"), "sqlite://notifier.db");
        assert_eq!(redact_url("not a url: secret"), "<unparseable URL>");
    }

    fn with(toml: &str) -> Result<Settings, String> {
        Settings::from_figment(Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(toml)))
            .map_err(|e| e.to_string())
    }

    const SMTP_PASSWORD: &str = "s3cr3t-smtp-unit-Zq9";
    const BOUNCE_KEY: &str = "s3cr3t-bounce-unit-Zq9-0123456789abcdef";
    const AMQP_PASSWORD: &str = "s3cr3t-amqp-unit-Zq9";
    const DB_PASSWORD: &str = "s3cr3t-db-unit-Zq9";

    #[test]
    fn secrets_never_show_in_debug_or_display() {
        let s = with(&format!(
            "[smtp]\nurl = \"smtps://relay.example\"\nusername = \"mailer\"\npassword = \"{SMTP_PASSWORD}\"\n\
             bounce_address = \"bounces@zip.example.nl\"\nbounce_key = \"{BOUNCE_KEY}\"\n\
             [amqp]\nurl = \"amqps://notifier:{AMQP_PASSWORD}@mq.example:5671/zip\"\n\
             [database]\nurl = \"postgres://notifier:{DB_PASSWORD}@db.example/notifier\""
        ))
        .unwrap();
        let printed = format!("{s:?}\n{s:#?}\n{}\n{}", s.amqp.url, s.database.url);
        for secret in [SMTP_PASSWORD, BOUNCE_KEY, AMQP_PASSWORD, DB_PASSWORD] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(
            printed.contains("amqps://notifier:***@mq.example:5671/zip"),
            "{printed}"
        );
        assert!(printed.contains("postgres://notifier:***@db.example/notifier"));
        // The real values are there for whoever connects.
        assert!(s.amqp.url.expose_secret().contains(AMQP_PASSWORD));
        assert_eq!(s.smtp.password.expose_secret(), SMTP_PASSWORD);
        let (_, pass) = s.smtp.target().unwrap().credentials.unwrap();
        assert_eq!(pass, SMTP_PASSWORD);
        assert!(s.smtp.bounce_tagging().is_some());
    }

    fn secret_file(dir: &Path, name: &str, content: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    }

    #[test]
    fn each_secret_can_come_from_a_file_without_its_line_break() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let smtp = secret_file(d, "smtp", &format!("{SMTP_PASSWORD}\n"));
        let key = secret_file(d, "key", &format!("{BOUNCE_KEY}\r\n"));
        let amqp = secret_file(
            d,
            "amqp",
            &format!("amqp://n:{AMQP_PASSWORD}@mq:5672/%2f\n"),
        );
        let db = secret_file(d, "db", &format!("postgres://n:{DB_PASSWORD}@db/n"));
        let s = with(&format!(
            "[smtp]\npassword_file = \"{smtp}\"\nbounce_key_file = \"{key}\"\n\
             bounce_address = \"bounces@zip.example.nl\"\n\
             [amqp]\nurl_file = \"{amqp}\"\n[database]\nurl_file = \"{db}\""
        ))
        .unwrap();
        assert_eq!(s.smtp.password.expose_secret(), SMTP_PASSWORD);
        assert_eq!(s.smtp.bounce_key.expose_secret(), BOUNCE_KEY);
        assert_eq!(
            s.amqp.url.expose_secret(),
            format!("amqp://n:{AMQP_PASSWORD}@mq:5672/%2f")
        );
        assert_eq!(
            s.database.url.expose_secret(),
            format!("postgres://n:{DB_PASSWORD}@db/n")
        );
        // Only the last line break goes: a password may end in spaces.
        let spaced = secret_file(d, "spaced", "pass word \n\n");
        let s = with(&format!("[smtp]\npassword_file = \"{spaced}\"")).unwrap();
        assert_eq!(s.smtp.password.expose_secret(), "pass word \n");
    }

    #[test]
    fn a_secret_set_both_ways_is_refused_naming_both_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = secret_file(dir.path(), "p", SMTP_PASSWORD);
        for (toml, keys) in [
            (
                format!("[smtp]\npassword = \"other\"\npassword_file = \"{file}\""),
                "smtp.password and smtp.password_file are both set",
            ),
            (
                format!("[amqp]\nurl = \"amqp://a:b@h/%2f\"\nurl_file = \"{file}\""),
                "amqp.url and amqp.url_file are both set",
            ),
            (
                format!("[database]\nurl = \"sqlite://x.db\"\nurl_file = \"{file}\""),
                "database.url and database.url_file are both set",
            ),
            (
                format!("[smtp]\nbounce_key = \"k\"\nbounce_key_file = \"{file}\""),
                "smtp.bounce_key and smtp.bounce_key_file are both set",
            ),
        ] {
            let e = with(&toml).unwrap_err();
            assert!(e.contains(keys), "{e}");
            assert!(!e.contains(SMTP_PASSWORD), "{e}");
        }
        // The default value and a file: the file is the one setting.
        let url = secret_file(dir.path(), "u", "amqp://n:p@mq/%2f");
        assert!(with(&format!("[amqp]\nurl_file = \"{url}\"")).is_ok());
    }

    #[test]
    fn an_unreadable_or_empty_secret_file_names_key_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing").display().to_string();
        let e = with(&format!("[smtp]\npassword_file = \"{missing}\"")).unwrap_err();
        assert!(e.contains("smtp.password_file: cannot read"), "{e}");
        assert!(e.contains(&missing), "{e}");
        let empty = secret_file(dir.path(), "empty", "\n");
        let e = with(&format!("[database]\nurl_file = \"{empty}\"")).unwrap_err();
        assert!(
            e.contains("database.url_file:") && e.contains("is empty"),
            "{e}"
        );
        // A file that holds a bad URL: named by its key, shown redacted.
        let bad = secret_file(dir.path(), "bad", &format!("mysql://u:{DB_PASSWORD}@h/db"));
        let e = with(&format!("[database]\nurl_file = \"{bad}\"")).unwrap_err();
        assert!(e.contains("database.url: expected"), "{e}");
        assert!(!e.contains(DB_PASSWORD), "{e}");
    }

    #[test]
    fn log_level_must_be_levels_or_target_equals_level() {
        for good in [
            "info",
            "INFO",
            "warn,notifier=debug",
            "info,lapin=warn,",
            "off",
            "notifier::pipeline[dispatch]=trace",
        ] {
            assert!(
                check_log_filter(good).is_ok(),
                "{good}: {:?}",
                check_log_filter(good)
            );
        }
        for bad in [
            "inf0",
            "notifier",
            "info,notifier=verbose",
            "=info",
            "",
            ",",
            "info, lapin=warn",
        ] {
            assert!(check_log_filter(bad).is_err(), "{bad} passed");
        }
        let e = with("[log]\nlevel = \"inf0\"").unwrap_err();
        assert!(e.contains("log.level") && e.contains("\"inf0\""), "{e}");
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_not_quoted() {
        let e = with("[smtp]\npassword = 40961234").unwrap_err();
        assert!(e.contains("smtp.password: expected a string"), "{e}");
        assert!(!e.contains("40961234"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = with("[smtp]\npasword = \"x\"").unwrap_err();
        assert!(e.contains("pasword"), "{e}");
        let e = with("[smpt]\nurl = \"\"").unwrap_err();
        assert!(e.contains("smpt"), "{e}");
    }
}
