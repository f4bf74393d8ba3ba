//! Settings: the embedded `config/default.toml`, then an optional file
//! (`--config`), then `NOTIFIER_<SECTION>__<KEY>` environment variables.
//! A bad value is reported as one line naming the key.

use crate::domain::bounce::{BounceAddress, BounceKey};
use crate::mail::smtp::PoolOptions;
use crate::mail::target::{Relay, SmtpTarget};
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

    /// The relay connection pool's options.
    pub fn pool_options(&self) -> PoolOptions {
        PoolOptions {
            hello_name: self.hello_name.clone(),
            concurrency: self.concurrency,
            timeout: self.timeout.0,
            connect_timeout: self.connect_timeout.0,
            accept_invalid_certs: self.danger_accept_invalid_certs,
        }
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

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("smtps://u:secret@h:465"), "smtps://u:***@h:465");
    }
}
