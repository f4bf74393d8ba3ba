//! Where mail goes, as `smtp.url` says: the relay's address, its transport
//! security and the credentials in the URL. A leaf: the settings parse into
//! these types once, and the mail side takes them as they are.

use serde::Deserialize;

/// `smtp.url` parsed: a relay, or (empty) the `.eml` outbox folder.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "String")]
pub enum Relay {
    /// No relay: mails are written to `smtp.outbox_dir`.
    Outbox,
    Smtp(SmtpTarget),
}

impl TryFrom<String> for Relay {
    type Error = String;

    fn try_from(url: String) -> Result<Self, String> {
        if url.is_empty() {
            Ok(Self::Outbox)
        } else {
            SmtpTarget::parse(&url).map(Self::Smtp)
        }
    }
}

impl Relay {
    /// The `smtp.url` that parses into this value (with its credentials:
    /// for handing the setting on, never for printing).
    pub fn url(&self) -> String {
        let Self::Smtp(t) = self else {
            return String::new();
        };
        let (scheme, query) = match t.tls {
            TlsMode::Implicit => ("smtps", ""),
            TlsMode::None => ("smtp", ""),
            TlsMode::StartTlsRequired => ("smtp", "?tls=required"),
            TlsMode::StartTlsOpportunistic => ("smtp", "?tls=opportunistic"),
        };
        let mut u = url::Url::parse(&format!("{scheme}://relay{query}")).expect("a valid URL");
        let host = if t.host.contains(':') {
            format!("[{}]", t.host)
        } else {
            t.host.clone()
        };
        let _ = u.set_host(Some(&host));
        let _ = u.set_port(Some(t.port));
        if let Some((user, pass)) = &t.credentials {
            let _ = u.set_username(user);
            let _ = u.set_password(Some(pass));
        }
        u.to_string()
    }
}

/// How to reach the relay.
#[derive(Clone)]
pub struct SmtpTarget {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// User and password, from the URL or from `smtp.username`/`smtp.password`.
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for SmtpTarget {
    // The password is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("credentials", &self.credentials.as_ref().map(|_| "…"))
            .finish()
    }
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

impl TlsMode {
    /// Every connection is encrypted (or nothing is sent).
    pub fn always_tls(self) -> bool {
        matches!(self, Self::StartTlsRequired | Self::Implicit)
    }
}

impl SmtpTarget {
    /// Parses `smtp://host:port[?tls=required|opportunistic|none]` or
    /// `smtps://[user:pass@]host:port`; the error says what to write instead.
    pub fn parse(url: &str) -> Result<Self, String> {
        let u = url::Url::parse(url).map_err(|_| {
            "expected smtp://host:port, smtp://host:port?tls=required or smtps://user:pass@host:465"
                .to_owned()
        })?;
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("missing host")?
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
                return Err(format!(
                    "tls={other}: expected required, opportunistic or none"
                ));
            }
            (other, _) => return Err(format!("scheme {other}: expected smtp or smtps")),
        };
        let credentials = if u.username().is_empty() {
            None
        } else {
            Some((
                percent_decode(u.username())?,
                percent_decode(u.password().unwrap_or_default())?,
            ))
        };
        Ok(Self {
            host,
            port: u.port().unwrap_or(default_port),
            tls,
            credentials,
        })
    }
}

/// Decodes the URL's user or password as lettre's own URL parser does:
/// `%XX` only. Not as a form: `+` stays a plus and `&` is part of it.
fn percent_decode(s: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|v| v.into_owned())
        .map_err(|_| "the user or password is not UTF-8 once percent-decoded".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_host_port_tls_and_credentials() {
        let t = SmtpTarget::parse("smtps://us%40er:p%3Ass@relay.example").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.tls),
            ("relay.example", 465, TlsMode::Implicit)
        );
        assert_eq!(t.credentials, Some(("us@er".into(), "p:ss".into())));
        let t = SmtpTarget::parse("smtp://relay:2525?tls=required").unwrap();
        assert_eq!(
            (t.port, t.tls, t.credentials),
            (2525, TlsMode::StartTlsRequired, None)
        );
        assert!(
            SmtpTarget::parse("smtp://relay?tls=maybe")
                .unwrap_err()
                .contains("tls=maybe")
        );
        assert!(
            SmtpTarget::parse("http://relay")
                .unwrap_err()
                .contains("scheme http")
        );
        assert!(matches!(Relay::try_from(String::new()), Ok(Relay::Outbox)));
    }

    #[test]
    fn a_relay_gives_back_a_url_that_parses_into_it() {
        for url in [
            "smtp://127.0.0.1:2525",
            "smtp://relay.example:587?tls=required",
            "smtps://us%40er:p%3Ass@relay.example:465",
            "smtp://[::1]:25?tls=opportunistic",
        ] {
            let relay = Relay::try_from(url.to_owned()).unwrap();
            let again = Relay::try_from(relay.url()).unwrap();
            assert_eq!(format!("{relay:?}"), format!("{again:?}"), "{url}");
            let (Relay::Smtp(a), Relay::Smtp(b)) = (relay, again) else {
                panic!()
            };
            assert_eq!(a.credentials, b.credentials);
        }
        assert_eq!(Relay::Outbox.url(), "");
    }

    #[test]
    fn user_info_is_percent_decoded_not_form_decoded() {
        let t = SmtpTarget::parse("smtps://user:a+b&c@relay").unwrap();
        assert_eq!(t.credentials, Some(("user".into(), "a+b&c".into())));
        let t = SmtpTarget::parse("smtps://us%2Ber:a%20b%25@relay").unwrap();
        assert_eq!(t.credentials, Some(("us+er".into(), "a b%".into())));
        let relay = Relay::try_from("smtps://user:a+b&c@relay".to_owned()).unwrap();
        let Relay::Smtp(again) = Relay::try_from(relay.url()).unwrap() else {
            panic!()
        };
        assert_eq!(again.credentials, Some(("user".into(), "a+b&c".into())));
        assert!(
            SmtpTarget::parse("smtps://user:%FF@relay")
                .unwrap_err()
                .contains("not UTF-8")
        );
    }

    #[test]
    fn debug_output_hides_the_password() {
        let t = SmtpTarget::parse("smtps://user:geheim@relay.example").unwrap();
        assert!(!format!("{t:?}").contains("geheim"));
    }
}
