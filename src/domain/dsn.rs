//! What a message read back from the bounce mailbox says, and what it is
//! taken for: the per-recipient fields of a delivery status notification
//! (RFC 3464) or of a plain-text bounce, the signs of an auto-reply
//! (RFC 3834), which delivery it is about (by its signed tag), and the
//! verdict: hard bounce, delay, auto-reply, unmatched, forged or
//! unparseable. Pure: the MIME parsing and the database are elsewhere.

use super::bounce::{self, BounceKey, TagCheck};
use super::delivery::DeliveryStatus;

/// What a message read back was found to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BounceOutcome {
    /// The recipient's server refused the mail for good (`Action: failed`, 5.x.x).
    Hard,
    /// The mail is delayed (4.x.x); the reporting server keeps trying.
    Delayed,
    /// An automatic answer (out of office), not a bounce.
    AutoReply,
    /// No delivery of ours, or not about the delivery's address.
    Unmatched,
    /// A tag whose MAC does not verify.
    Forged,
    /// Not a message that can be read.
    Unparseable,
}

impl BounceOutcome {
    /// All outcomes.
    pub const ALL: [BounceOutcome; 6] = [
        Self::Hard,
        Self::Delayed,
        Self::AutoReply,
        Self::Unmatched,
        Self::Forged,
        Self::Unparseable,
    ];

    /// The stored word (also the metrics label and the CLI's value).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hard => "hard",
            Self::Delayed => "delayed",
            Self::AutoReply => "auto_reply",
            Self::Unmatched => "unmatched",
            Self::Forged => "forged",
            Self::Unparseable => "unparseable",
        }
    }

    /// Parses the stored word.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl std::fmt::Display for BounceOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for BounceOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The fields reported about one recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecipientReport {
    /// `Action`, lowercase (`failed`, `delayed`, `delivered`, ...).
    pub action: Option<String>,
    /// `Status`, an enhanced status code such as `5.1.1`.
    pub status: Option<String>,
    /// The address of `Final-Recipient`, without its type.
    pub final_recipient: Option<String>,
    /// The address of `Original-Recipient`, without its type.
    pub original_recipient: Option<String>,
    /// `Diagnostic-Code`, without its type.
    pub diagnostic: Option<String>,
}

impl RecipientReport {
    /// True when this report is about `address` (compared without case,
    /// and a domain by its A-label: a mail to `info@bücher.example` went
    /// out as `info@xn--bcher-kva.example`).
    fn is_about(&self, address: &str) -> bool {
        [&self.final_recipient, &self.original_recipient]
            .into_iter()
            .flatten()
            .any(|a| super::ids::same_mailbox(a, address))
    }

    fn status_class(&self) -> Option<char> {
        self.status.as_deref().and_then(|s| s.chars().next())
    }

    fn is_hard(&self) -> bool {
        self.action.as_deref() == Some("failed") && self.status_class() == Some('5')
    }

    fn is_delay(&self) -> bool {
        self.action.as_deref() == Some("delayed") || self.status_class() == Some('4')
    }
}

/// What was read from one message, before it is matched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Per-recipient reports (from a delivery-status part, or a plain-text bounce).
    pub recipients: Vec<RecipientReport>,
    /// The message carries a sign of an automatic answer.
    pub auto_reply: bool,
}

/// The per-recipient groups of a `message/delivery-status` body. The first
/// group (per-message fields) and groups naming no recipient are skipped.
pub fn parse_delivery_status(text: &str) -> Vec<RecipientReport> {
    let mut out = Vec::new();
    for group in groups(text) {
        let mut r = RecipientReport::default();
        for (name, value) in group {
            match name.as_str() {
                "action" => r.action = first_word(&value).map(|w| w.to_ascii_lowercase()),
                "status" => r.status = first_word(&value).filter(|s| is_status_code(s)),
                "final-recipient" => r.final_recipient = typed_address(&value),
                "original-recipient" => r.original_recipient = typed_address(&value),
                "diagnostic-code" => r.diagnostic = Some(untyped(&value).to_owned()),
                _ => {}
            }
        }
        if r.final_recipient.is_some() || r.original_recipient.is_some() {
            out.push(r);
        }
    }
    out
}

/// The fields of each blank-line separated group, names lowercase,
/// continuation lines unfolded.
fn groups(text: &str) -> Vec<Vec<(String, String)>> {
    let mut all = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                all.push(std::mem::take(&mut current));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = current.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            current.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    if !current.is_empty() {
        all.push(current);
    }
    all
}

fn first_word(s: &str) -> Option<String> {
    s.split_whitespace().next().map(str::to_owned)
}

/// `rfc822; user@example.org` → `user@example.org`.
fn typed_address(value: &str) -> Option<String> {
    let a = untyped(value).trim_matches(|c: char| c == '<' || c == '>' || c.is_whitespace());
    a.contains('@').then(|| a.to_owned())
}

fn untyped(value: &str) -> &str {
    value.split_once(';').map_or(value, |(_, v)| v).trim()
}

/// An enhanced status code: `class.subject.detail` (RFC 3463).
fn is_status_code(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The recipient report of a plain-text bounce (no delivery-status part):
/// the first `<address>` and the first enhanced status code in the text
/// before the quoted original headers begin.
pub fn parse_plain_text(text: &str) -> Option<RecipientReport> {
    let mut address = None;
    let mut status: Option<(String, String)> = None;
    for line in text.lines() {
        let l = line.trim_start_matches(['>', ' ']);
        if looks_like_header(l) {
            break;
        }
        if address.is_none() {
            address = bracketed_address(l);
        }
        if status.is_none() {
            status = status_code_in(l).map(|s| (s, line.trim().to_owned()));
        }
    }
    let address = address?;
    let (status, diagnostic) = status?;
    let action = if status.starts_with('5') {
        "failed"
    } else if status.starts_with('4') {
        "delayed"
    } else {
        "delivered"
    };
    Some(RecipientReport {
        action: Some(action.to_owned()),
        status: Some(status),
        final_recipient: Some(address),
        original_recipient: None,
        diagnostic: Some(diagnostic),
    })
}

/// `Name: value` with a name of letters, digits and hyphens: the start of
/// the quoted headers in a plain-text bounce.
fn looks_like_header(line: &str) -> bool {
    let Some((name, _)) = line.split_once(": ") else {
        return false;
    };
    !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn bracketed_address(line: &str) -> Option<String> {
    let start = line.find('<')?;
    let end = start + line[start..].find('>')?;
    let a = &line[start + 1..end];
    (a.contains('@') && !a.contains(' ')).then(|| a.to_owned())
}

fn status_code_in(line: &str) -> Option<String> {
    line.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|w| w.trim_matches('.'))
        .find(|w| is_status_code(w))
        .map(str::to_owned)
}

/// Which delivery a message is about, by its tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagMatch {
    /// A verified tag: this delivery id.
    Delivery(String),
    /// A tag whose MAC does not verify.
    Forged,
    /// No tag.
    None,
}

/// Matches by the tag of the address the message was sent to, and
/// otherwise by an `X-Notifier-Tag` in the returned headers. A forged tag
/// anywhere, with no verified one before it, makes the message forged.
pub fn find_delivery(envelope_tag: Option<&str>, returned: &[String], key: &BounceKey) -> TagMatch {
    let mut forged = false;
    for tag in envelope_tag
        .into_iter()
        .chain(returned.iter().map(String::as_str))
    {
        match bounce::check(tag, key) {
            TagCheck::Delivery(id) if !forged => return TagMatch::Delivery(id),
            TagCheck::Delivery(_) => {}
            TagCheck::Forged => forged = true,
            TagCheck::Malformed => {}
        }
    }
    if forged {
        TagMatch::Forged
    } else {
        TagMatch::None
    }
}

/// The delivery a tag named, as stored.
#[derive(Debug, Clone, Copy)]
pub struct Tagged<'a> {
    /// The address the mail was sent to.
    pub address: &'a str,
    pub status: DeliveryStatus,
}

/// What a message read back is, and what it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: BounceOutcome,
    /// The reported status code, e.g. `5.1.1`.
    pub status: Option<String>,
    /// The reported diagnostic.
    pub diagnostic: Option<String>,
    /// Why, for operators (never an address).
    pub detail: String,
    pub effect: Effect,
}

/// What a message read back changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The delivery becomes `bounced`, gets a log entry, and the contact persons are told.
    Bounce,
    /// The delivery gets a log entry.
    Delay,
    /// Only the message is recorded.
    Nothing,
}

/// Decides what a message is. `report` is `None` for a message that
/// could not be read; `delivery` is what `tag` named, when it exists.
pub fn judge(report: Option<&Report>, tag: &TagMatch, delivery: Option<Tagged<'_>>) -> Verdict {
    let verdict = |outcome, detail: &str| Verdict {
        outcome,
        status: None,
        diagnostic: None,
        detail: detail.to_owned(),
        effect: Effect::Nothing,
    };
    let Some(report) = report else {
        return verdict(BounceOutcome::Unparseable, "not a readable message");
    };
    if report.recipients.is_empty() && report.auto_reply {
        return verdict(
            BounceOutcome::AutoReply,
            "an automatic answer, not a bounce",
        );
    }
    let delivery = match (tag, delivery) {
        (TagMatch::Forged, _) => {
            return verdict(
                BounceOutcome::Forged,
                "a tag whose signature does not verify",
            );
        }
        (TagMatch::None, _) => {
            return verdict(BounceOutcome::Unmatched, "no tag of ours in the message");
        }
        (TagMatch::Delivery(_), None) => {
            return verdict(
                BounceOutcome::Unmatched,
                "the tagged delivery does not exist",
            );
        }
        (TagMatch::Delivery(_), Some(d)) => d,
    };
    if report.recipients.is_empty() {
        return verdict(
            BounceOutcome::Unmatched,
            "no delivery status in the message",
        );
    }
    let about: Vec<&RecipientReport> = report
        .recipients
        .iter()
        .filter(|r| r.is_about(delivery.address))
        .collect();
    let with = |outcome, r: &RecipientReport, detail: String, effect| Verdict {
        outcome,
        status: r.status.clone(),
        diagnostic: r.diagnostic.clone(),
        detail,
        effect,
    };
    if let Some(r) = about.iter().find(|r| r.is_hard()) {
        return if delivery.status.may_bounce() {
            with(
                BounceOutcome::Hard,
                r,
                "the delivery bounced".into(),
                Effect::Bounce,
            )
        } else {
            let detail = format!("the delivery is {}: unchanged", delivery.status);
            with(BounceOutcome::Hard, r, detail, Effect::Nothing)
        };
    }
    if let Some(r) = about.iter().find(|r| r.is_delay()) {
        return with(
            BounceOutcome::Delayed,
            r,
            "the delivery is delayed".into(),
            Effect::Delay,
        );
    }
    if about.is_empty() {
        return verdict(
            BounceOutcome::Unmatched,
            "the reported recipient is not the delivery's address",
        );
    }
    verdict(BounceOutcome::Unmatched, "no failure or delay reported")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DSN: &str = "Reporting-MTA: dns; mx.praktijk.example\n\
        Arrival-Date: Mon, 12 Oct 2026 08:00:00 +0200\n\
        \n\
        Final-Recipient: rfc822; Jan@Praktijk.example\n\
        Original-Recipient: rfc822;jan@praktijk.example\n\
        Action: failed\n\
        Status: 5.1.1\n\
        Diagnostic-Code: smtp; 550 5.1.1 <jan@praktijk.example>: Recipient address\n\
        \x20   rejected: User unknown\n";

    fn key() -> BounceKey {
        BounceKey::parse("0123456789abcdef0123456789abcdef").unwrap()
    }

    const ID: &str = "0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b";

    fn sent() -> Tagged<'static> {
        Tagged {
            address: "jan@praktijk.example",
            status: DeliveryStatus::Sent,
        }
    }

    fn report(text: &str) -> Report {
        Report {
            recipients: parse_delivery_status(text),
            auto_reply: false,
        }
    }

    #[test]
    fn the_per_recipient_fields_are_read_unfolded_and_without_their_types() {
        let r = parse_delivery_status(DSN);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].action.as_deref(), Some("failed"));
        assert_eq!(r[0].status.as_deref(), Some("5.1.1"));
        assert_eq!(
            r[0].final_recipient.as_deref(),
            Some("Jan@Praktijk.example")
        );
        assert_eq!(
            r[0].diagnostic.as_deref(),
            Some("550 5.1.1 <jan@praktijk.example>: Recipient address rejected: User unknown")
        );
    }

    #[test]
    fn a_hard_bounce_for_the_delivery_s_address_bounces_a_sent_delivery_only() {
        let tag = TagMatch::Delivery(ID.into());
        let v = judge(Some(&report(DSN)), &tag, Some(sent()));
        assert_eq!((v.outcome, v.effect), (BounceOutcome::Hard, Effect::Bounce));
        assert_eq!(v.status.as_deref(), Some("5.1.1"));
        let failed = Tagged {
            status: DeliveryStatus::Failed,
            ..sent()
        };
        let v = judge(Some(&report(DSN)), &tag, Some(failed));
        assert_eq!(
            (v.outcome, v.effect),
            (BounceOutcome::Hard, Effect::Nothing)
        );
    }

    #[test]
    fn a_bounce_that_reports_the_a_label_is_about_the_international_address() {
        let dsn = DSN
            .replace("Jan@Praktijk.example", "Info@xn--bcher-kva.example")
            .replace(
                "rfc822;jan@praktijk.example",
                "rfc822;info@xn--bcher-kva.example",
            );
        let idn = Tagged {
            address: "info@bücher.example",
            ..sent()
        };
        let v = judge(
            Some(&report(&dsn)),
            &TagMatch::Delivery(ID.into()),
            Some(idn),
        );
        assert_eq!((v.outcome, v.effect), (BounceOutcome::Hard, Effect::Bounce));
    }

    #[test]
    fn a_hard_bounce_about_another_address_changes_nothing() {
        let other = Tagged {
            address: "piet@praktijk.example",
            ..sent()
        };
        let v = judge(
            Some(&report(DSN)),
            &TagMatch::Delivery(ID.into()),
            Some(other),
        );
        assert_eq!(
            (v.outcome, v.effect),
            (BounceOutcome::Unmatched, Effect::Nothing)
        );
    }

    #[test]
    fn a_delay_adds_a_log_entry_only() {
        let text = DSN
            .replace("Action: failed", "Action: delayed")
            .replace("5.1.1", "4.2.2");
        let v = judge(
            Some(&report(&text)),
            &TagMatch::Delivery(ID.into()),
            Some(sent()),
        );
        assert_eq!(
            (v.outcome, v.effect),
            (BounceOutcome::Delayed, Effect::Delay)
        );
    }

    #[test]
    fn forged_untagged_unknown_and_unreadable_messages_change_nothing() {
        let r = report(DSN);
        let cases = [
            (
                Some(&r),
                TagMatch::Forged,
                Some(sent()),
                BounceOutcome::Forged,
            ),
            (Some(&r), TagMatch::None, None, BounceOutcome::Unmatched),
            (
                Some(&r),
                TagMatch::Delivery(ID.into()),
                None,
                BounceOutcome::Unmatched,
            ),
            (
                None,
                TagMatch::Delivery(ID.into()),
                Some(sent()),
                BounceOutcome::Unparseable,
            ),
        ];
        for (report, tag, d, outcome) in cases {
            let v = judge(report, &tag, d);
            assert_eq!((v.outcome, v.effect), (outcome, Effect::Nothing), "{tag:?}");
        }
    }

    #[test]
    fn an_auto_reply_without_a_report_is_never_a_bounce() {
        let r = Report {
            recipients: vec![],
            auto_reply: true,
        };
        let v = judge(Some(&r), &TagMatch::Delivery(ID.into()), Some(sent()));
        assert_eq!(
            (v.outcome, v.effect),
            (BounceOutcome::AutoReply, Effect::Nothing)
        );
    }

    #[test]
    fn the_envelope_tag_wins_and_a_forged_one_is_not_overruled() {
        let good = bounce::tag(ID, &key());
        let forged = format!("{}.0000000000000000", &good[..32]);
        let m = |env: Option<&str>, ret: &[String]| find_delivery(env, ret, &key());
        assert_eq!(m(Some(&good), &[]), TagMatch::Delivery(ID.into()));
        assert_eq!(
            m(None, std::slice::from_ref(&good)),
            TagMatch::Delivery(ID.into())
        );
        assert_eq!(
            m(Some("not-a-tag"), std::slice::from_ref(&good)),
            TagMatch::Delivery(ID.into())
        );
        assert_eq!(
            m(Some(&forged), std::slice::from_ref(&good)),
            TagMatch::Forged
        );
        assert_eq!(m(None, &[]), TagMatch::None);
    }

    #[test]
    fn a_plain_text_bounce_gives_its_address_and_status_before_the_quoted_headers() {
        let text = "Hi. This is the qmail-send program at mx.praktijk.example.\n\
            I'm afraid I wasn't able to deliver your message to the following addresses.\n\
            \n\
            <jan@praktijk.example>:\n\
            Sorry, no mailbox here by that name. (#5.1.1)\n\
            \n\
            --- Below this line is a copy of the message.\n\
            \n\
            Return-Path: <bounces+x@zip.example>\n\
            To: <piet@praktijk.example>\n";
        let r = parse_plain_text(text).unwrap();
        assert_eq!(r.final_recipient.as_deref(), Some("jan@praktijk.example"));
        assert_eq!(r.status.as_deref(), Some("5.1.1"));
        assert_eq!(r.action.as_deref(), Some("failed"));
        assert_eq!(
            parse_plain_text("Return-Path: <a@b>\n550 5.1.1 <a@b>"),
            None
        );
    }
}
