//! Bounce tags (VERP): the envelope sender of each mail names its delivery,
//! signed, so that a delivery status notification sent back to it can be
//! matched to the delivery, and a forged one for a guessed id is refused.
//!
//! A tag is the delivery id as 32 lowercase hex digits, a `.`, and the first
//! 16 hex digits of an HMAC-SHA256 over that id keyed by `smtp.bounce_key`.
//! The envelope sender is `local+TAG@domain` for `smtp.bounce_address`
//! `local@domain`.

use ring::hmac;

/// The most characters the bounce address's local part may have: with
/// `+`, a 49-character tag and the 64-octet limit of a local part
/// (RFC 5321 4.5.3.1.1), 14 are left.
pub const MAX_LOCAL_PART: usize = 14;

/// The fewest characters `smtp.bounce_key` may have.
pub const MIN_KEY_LEN: usize = 32;

/// The secret that signs tags. Never printed.
#[derive(Clone)]
pub struct BounceKey(hmac::Key);

impl BounceKey {
    /// A key from `smtp.bounce_key`; it must be at least [`MIN_KEY_LEN`] characters.
    pub fn parse(secret: &str) -> Result<Self, String> {
        if secret.chars().count() < MIN_KEY_LEN {
            return Err(format!(
                "must be at least {MIN_KEY_LEN} characters (a random string, e.g. `openssl rand -hex 32`)"
            ));
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())))
    }

    fn mac(&self, id_hex: &str) -> String {
        let tag = hmac::sign(&self.0, id_hex.as_bytes());
        hex16(tag.as_ref())
    }
}

impl std::fmt::Debug for BounceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BounceKey(…)")
    }
}

/// `smtp.bounce_address` parsed: where bounces go, as `local@domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BounceAddress {
    local: String,
    domain: String,
}

impl BounceAddress {
    /// Parses `local@domain`; the local part has at most [`MAX_LOCAL_PART`]
    /// characters and no `+` of its own.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (local, domain) = s
            .rsplit_once('@')
            .filter(|(l, d)| !l.is_empty() && !d.is_empty())
            .ok_or_else(|| format!("expected local@domain, got {s:?}"))?;
        if local.len() > MAX_LOCAL_PART {
            return Err(format!(
                "the local part {local:?} has {} characters, at most {MAX_LOCAL_PART} leave room for the 50-character tag within the 64 a mailbox name may have",
                local.len()
            ));
        }
        if local.contains('+') || !local.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!(
                "the local part {local:?} may not contain '+' (the tag follows it) or spaces"
            ));
        }
        if s.parse::<lettre::Address>().is_err() {
            return Err(format!("{s:?} is not an address mail can be sent to"));
        }
        Ok(Self {
            local: local.to_owned(),
            domain: domain.to_ascii_lowercase(),
        })
    }

    /// The envelope sender for `tag`: `local+TAG@domain`.
    pub fn sender(&self, tag: &str) -> String {
        format!("{}+{tag}@{}", self.local, self.domain)
    }

    /// The tag in `address` when it is this bounce address with a tag
    /// (`local+TAG@domain`, compared case-insensitively as MTAs do).
    pub fn tag_in<'a>(&self, address: &'a str) -> Option<&'a str> {
        let address = address.trim().trim_matches(|c| c == '<' || c == '>');
        let (local, domain) = address.rsplit_once('@')?;
        let (base, tag) = local.split_once('+')?;
        (base.eq_ignore_ascii_case(&self.local) && domain.eq_ignore_ascii_case(&self.domain))
            .then_some(tag)
    }
}

/// What a tag says once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagCheck {
    /// The tag is ours: the delivery id (hyphenated, as stored).
    Delivery(String),
    /// It has the shape of a tag but its MAC does not verify.
    Forged,
    /// Not a tag at all.
    Malformed,
}

/// The tag for `delivery_id` (a UUID, with or without hyphens).
pub fn tag(delivery_id: &str, key: &BounceKey) -> String {
    let id_hex: String = delivery_id
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    format!("{id_hex}.{}", key.mac(&id_hex))
}

/// Checks a tag found in a returned message.
pub fn check(tag: &str, key: &BounceKey) -> TagCheck {
    let tag = tag.trim().to_ascii_lowercase();
    let Some((id_hex, mac)) = tag.split_once('.') else {
        return TagCheck::Malformed;
    };
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(id_hex, 32) || !hex(mac, 16) {
        return TagCheck::Malformed;
    }
    // Constant-time, as for any MAC: compare the whole expected value.
    let expected = key.mac(id_hex);
    let same = expected
        .bytes()
        .zip(mac.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0;
    if !same {
        return TagCheck::Forged;
    }
    TagCheck::Delivery(format!(
        "{}-{}-{}-{}-{}",
        &id_hex[0..8],
        &id_hex[8..12],
        &id_hex[12..16],
        &id_hex[16..20],
        &id_hex[20..32]
    ))
}

fn hex16(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> BounceKey {
        BounceKey::parse("0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn a_tag_names_its_delivery_and_only_the_key_makes_one() {
        let id = "0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b";
        let t = tag(id, &key());
        assert_eq!(t.len(), 49);
        assert!(t.starts_with("0190b3c45d6e7f809a1b2c3d4e5f6a7b."));
        assert_eq!(check(&t, &key()), TagCheck::Delivery(id.into()));
        assert_eq!(
            check(&t.to_uppercase(), &key()),
            TagCheck::Delivery(id.into())
        );
        let other = BounceKey::parse("another key of at least thirty-two chars").unwrap();
        assert_eq!(check(&tag(id, &other), &key()), TagCheck::Forged);
        let guessed = format!("{}.0000000000000000", &t[..32]);
        assert_eq!(check(&guessed, &key()), TagCheck::Forged);
        for bad in ["", "abc", "0190b3c45d6e7f809a1b2c3d4e5f6a7b", &t[..40]] {
            assert_eq!(check(bad, &key()), TagCheck::Malformed, "{bad}");
        }
    }

    #[test]
    fn the_envelope_sender_fits_a_mailbox_name_and_gives_its_tag_back() {
        let b = BounceAddress::parse("bounces-notify@zip.example.nl").unwrap();
        let t = tag("0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b", &key());
        let sender = b.sender(&t);
        assert!(sender.split('@').next().unwrap().len() <= 64);
        assert!(sender.parse::<lettre::Address>().is_ok());
        assert_eq!(b.tag_in(&sender), Some(t.as_str()));
        assert_eq!(
            b.tag_in(&format!("<{}>", sender.to_uppercase()))
                .map(str::to_lowercase),
            Some(t.clone())
        );
        assert_eq!(b.tag_in("bounces-notify@zip.example.nl"), None);
        assert_eq!(b.tag_in(&format!("other+{t}@zip.example.nl")), None);
        assert!(BounceAddress::parse("fifteen-chars-x@zip.example.nl").is_err());
        assert!(BounceAddress::parse("a+b@zip.example.nl").is_err());
        assert!(BounceAddress::parse("zip.example.nl").is_err());
    }

    #[test]
    fn a_short_key_is_refused_and_never_printed() {
        assert!(BounceKey::parse("too short").is_err());
        assert_eq!(format!("{:?}", key()), "BounceKey(…)");
    }
}
