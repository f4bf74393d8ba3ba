//! Identifiers and addresses from the portal contract, as newtypes that can only
//! hold valid values: parse once at the edge, trust them inside.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a value from outside did not parse; the text names the expected format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn all_digits(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit())
}

macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            /// The value as the contract writes it.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// An AGB code: exactly eight digits, kept as a string (leading zeros matter).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgbCode(String);
string_newtype!(AgbCode);

impl AgbCode {
    /// Parses `^[0-9]{8}$`.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if all_digits(s, 8) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ParseError(format!(
                "expected an AGB code of exactly 8 digits, got {}",
                quoted(s)
            )))
        }
    }
}

/// A portal user (certificate) number: exactly fourteen digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gebruikersnummer(String);
string_newtype!(Gebruikersnummer);

impl Gebruikersnummer {
    /// Parses `^[0-9]{14}$`.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if all_digits(s, 14) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ParseError(format!(
                "expected a gebruikersnummer of exactly 14 digits, got {}",
                quoted(s)
            )))
        }
    }
}

/// A CloudEvents `id`: 1 to 128 printable characters; the deduplication key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(String);
string_newtype!(EventId);

impl EventId {
    /// Parses an event id (1..=128 characters, no control characters).
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let n = s.chars().count();
        if n == 0 || n > 128 || s.chars().any(char::is_control) {
            Err(ParseError(format!(
                "expected an event id of 1 to 128 printable characters, got {} characters",
                n
            )))
        } else {
            Ok(Self(s.to_owned()))
        }
    }
}

/// An e-mail address as the directory keeps it: the lower-cased form that
/// every comparison uses (the contract's rule for shared practice
/// addresses: one mail per address, whatever its case), and the form as
/// registered, which is what a mail is sent to (a local part may be
/// case-sensitive, RFC 5321 §2.4).
///
/// Equality, ordering and hashing use the lower-cased form only; `as_str`
/// and `Display` give that form, [`EmailAddress::registered`] the other.
///
/// Only a deliberately plain syntax is accepted: one `@`, a non-empty local
/// part without spaces, quotes or angle brackets, and a domain with a dot.
/// Anything that could smuggle a second recipient or a header is refused.
/// Non-ASCII letters are allowed (`jörg@bücher.example`); how such an
/// address goes over SMTP is [`smtp_form`]'s business.
#[derive(Clone)]
pub struct EmailAddress {
    key: String,
    registered: String,
}

impl fmt::Debug for EmailAddress {
    // Addresses are personal data: a stray `{:?}` in a log must not leak one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EmailAddress(<redacted>)")
    }
}

impl PartialEq for EmailAddress {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for EmailAddress {}

impl std::hash::Hash for EmailAddress {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl PartialOrd for EmailAddress {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EmailAddress {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

impl AsRef<str> for EmailAddress {
    fn as_ref(&self) -> &str {
        &self.key
    }
}

impl Serialize for EmailAddress {
    // As the contract writes it: the registered form.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.registered)
    }
}

impl<'de> Deserialize<'de> for EmailAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        EmailAddress::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl EmailAddress {
    /// An address read back from the directory tables: `email` (the
    /// lower-cased column) and `registered` (`NULL` in rows written before
    /// migration 0007). It passed the rules of the version that wrote it,
    /// which may have been looser than [`EmailAddress::parse`] now: reading
    /// it must not fail (that would stall everything about its practice);
    /// dispatch checks it again before it sends. A registered form that is
    /// not the same address as `email` (a row changed by hand) is not used.
    pub fn stored(email: String, registered: Option<String>) -> Self {
        let registered = registered
            .filter(|r| r.to_lowercase() == email)
            .unwrap_or_else(|| email.clone());
        Self {
            key: email,
            registered,
        }
    }

    /// The lower-cased form: what addresses are compared, grouped and
    /// stored in deliveries by.
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The address as registered (surrounding white space removed): what
    /// RCPT TO and the `To:` header carry.
    pub fn registered(&self) -> &str {
        &self.registered
    }

    /// Parses an address; keeps it as given and lower-cased.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError("expected a plain e-mail address like naam@praktijk.nl".into());
        let s = s.trim();
        if s.len() > 254 || s.is_empty() {
            return Err(bad());
        }
        let (local, domain) = s.split_once('@').ok_or_else(bad)?;
        let forbidden =
            |c: char| c.is_whitespace() || c.is_control() || "<>\"(),:;[]\\@".contains(c);
        if local.is_empty()
            || local.len() > 64
            || local.chars().any(forbidden)
            || domain.len() < 3
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
            || !domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '.')
        {
            return Err(bad());
        }
        // The sender's own rules as well: an address the directory keeps
        // must be one a mail can be built for (`a..b@x.nl`, `.a@x.nl` and
        // `a@-x.nl` pass the rules above but not these).
        if s.parse::<lettre::Address>().is_err() {
            return Err(ParseError(
                "not an address mail can be sent to (dots or hyphens out of place?)".into(),
            ));
        }
        Ok(Self {
            key: s.to_lowercase(),
            registered: s.to_owned(),
        })
    }
}

/// How an address is written in an SMTP envelope (MAIL FROM, RCPT TO) and
/// in the `From:`/`To:` header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpForm {
    /// The address to write.
    pub text: String,
    /// The local part is not ASCII: only a relay that offers SMTPUTF8
    /// (RFC 6531) may be given it, with `MAIL FROM:<…> SMTPUTF8`.
    pub needs_smtputf8: bool,
}

/// The form of `address` for SMTP. An ASCII address is sent as it is. An
/// ASCII local part at a non-ASCII domain (`info@bücher.example`) is sent
/// with the domain's A-label (`info@xn--bcher-kva.example`, RFC 5890): the
/// same address, deliverable through any relay, no SMTPUTF8 needed. A
/// non-ASCII local part has no ASCII form at all: the address is sent as
/// registered, and only with SMTPUTF8.
pub fn smtp_form(address: &str) -> SmtpForm {
    let as_is = |needs_smtputf8| SmtpForm {
        text: address.to_owned(),
        needs_smtputf8,
    };
    if address.is_ascii() {
        return as_is(false);
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return as_is(true);
    };
    if !local.is_ascii() {
        return as_is(true);
    }
    match idna::domain_to_ascii_strict(domain) {
        Ok(ascii) => SmtpForm {
            text: format!("{local}@{ascii}"),
            needs_smtputf8: false,
        },
        // Not a domain name IDNA can write in ASCII: only SMTPUTF8 can carry it.
        Err(_) => as_is(true),
    }
}

/// True when `a` and `b` name the same mailbox as far as this worker tells
/// addresses apart: local parts compared without case, domains by their
/// A-label (so a bounce that reports `info@xn--bcher-kva.example` is about
/// `info@bücher.example`).
pub fn same_mailbox(a: &str, b: &str) -> bool {
    let norm = |s: &str| -> String {
        let s = s.trim();
        match s.rsplit_once('@') {
            Some((local, domain)) => {
                let domain =
                    idna::domain_to_ascii(domain).unwrap_or_else(|_| domain.to_lowercase());
                format!("{}@{domain}", local.to_lowercase())
            }
            None => s.to_lowercase(),
        }
    };
    norm(a) == norm(b)
}

fn quoted(s: &str) -> String {
    let short: String = s.chars().take(40).collect();
    format!("{short:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agb_code_needs_exactly_eight_digits() {
        assert!(AgbCode::parse("04123456").is_ok());
        for bad in ["4123456", "041234567", "0412345a", "", " 04123456"] {
            assert!(AgbCode::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gebruikersnummer_needs_fourteen_digits() {
        assert!(Gebruikersnummer::parse("10000000000001").is_ok());
        assert!(Gebruikersnummer::parse("1000000000001").is_err());
    }

    #[test]
    fn email_is_lowercased_and_plain() {
        let a = EmailAddress::parse(" Praktijk@Fysio-Noord.example").unwrap();
        assert_eq!(a.as_str(), "praktijk@fysio-noord.example");
        assert_eq!(a.registered(), "Praktijk@Fysio-Noord.example");
        assert_eq!(
            a,
            EmailAddress::parse("praktijk@fysio-noord.example").unwrap()
        );
        for bad in [
            "a@b",
            "no-at.example",
            "a b@c.nl",
            "a@b.nl>,<evil@x.nl",
            "a@b.nl\r\nBcc: x@y.nl",
            "\"q\"@x.nl",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(format!("{a:?}"), "EmailAddress(<redacted>)");
    }

    #[test]
    fn event_id_bounds() {
        assert!(EventId::parse("x").is_ok());
        assert!(EventId::parse(&"x".repeat(128)).is_ok());
        assert!(EventId::parse(&"x".repeat(129)).is_err());
        assert!(EventId::parse("").is_err());
    }

    #[test]
    fn addresses_the_sender_refuses_are_refused_here() {
        for bad in ["a..b@x.nl", ".a@x.nl", "a.@x.nl", "a@-x.nl"] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad}");
        }
        assert!(EmailAddress::parse("p.jansen@fysio-noord.example").is_ok());
    }

    #[test]
    fn a_stored_registered_form_is_used_only_for_the_same_address() {
        let a = EmailAddress::stored("j.devries@x.nl".into(), Some("J.deVries@X.nl".into()));
        assert_eq!(a.registered(), "J.deVries@X.nl");
        let old_row = EmailAddress::stored("j.devries@x.nl".into(), None);
        assert_eq!(old_row.registered(), "j.devries@x.nl");
        let changed_by_hand =
            EmailAddress::stored("a..b@x.nl".into(), Some("j.devries@x.nl".into()));
        assert_eq!(changed_by_hand.registered(), "a..b@x.nl");
    }

    #[test]
    fn international_addresses_are_kept_and_lower_cased() {
        let a = EmailAddress::parse("Jörg@Bücher.example").unwrap();
        assert_eq!(a.as_str(), "jörg@bücher.example");
        assert_eq!(a.registered(), "Jörg@Bücher.example");
    }

    #[test]
    fn the_smtp_form_needs_smtputf8_only_for_a_non_ascii_local_part() {
        let f = smtp_form("J.deVries@Fysio-Noord.example");
        assert_eq!(
            (f.text.as_str(), f.needs_smtputf8),
            ("J.deVries@Fysio-Noord.example", false)
        );
        let f = smtp_form("Info@Bücher.example");
        assert_eq!(
            (f.text.as_str(), f.needs_smtputf8),
            ("Info@xn--bcher-kva.example", false)
        );
        let f = smtp_form("jörg@bücher.example");
        assert_eq!(
            (f.text.as_str(), f.needs_smtputf8),
            ("jörg@bücher.example", true)
        );
        assert!(smtp_form("jörg@example.nl").needs_smtputf8);
    }

    #[test]
    fn mailboxes_compare_without_case_and_by_a_label() {
        assert!(same_mailbox(
            "Info@Bücher.example",
            "info@xn--bcher-kva.example"
        ));
        assert!(same_mailbox("JÖRG@bücher.example", "jörg@BÜCHER.example"));
        assert!(same_mailbox(" P.Jansen@X.nl", "p.jansen@x.nl"));
        assert!(!same_mailbox("p.jansen@x.nl", "j.jansen@x.nl"));
    }
}
