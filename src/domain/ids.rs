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

/// An e-mail address, normalised to lower case so that addresses compare
/// case-insensitively (the contract's rule for shared practice addresses).
///
/// Only a deliberately plain syntax is accepted: one `@`, a non-empty local
/// part without spaces, quotes or angle brackets, and a domain with a dot.
/// Anything that could smuggle a second recipient or a header is refused.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EmailAddress(String);
string_newtype!(EmailAddress);

impl fmt::Debug for EmailAddress {
    // Addresses are personal data: a stray `{:?}` in a log must not leak one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EmailAddress(<redacted>)")
    }
}

impl EmailAddress {
    /// An address read back from the directory tables. It passed the rules
    /// of the version that wrote it, which may have been looser than
    /// [`EmailAddress::parse`] now: reading it must not fail (that would
    /// stall everything about its practice); dispatch checks it again
    /// before it sends.
    pub fn stored(s: String) -> Self {
        Self(s)
    }

    /// Parses and lower-cases an address.
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
        Ok(Self(s.to_lowercase()))
    }
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
        let a = EmailAddress::parse("Praktijk@Fysio-Noord.example").unwrap();
        assert_eq!(a.as_str(), "praktijk@fysio-noord.example");
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
}
