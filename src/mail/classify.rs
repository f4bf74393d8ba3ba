//! Turns what the relay (or the network) said at each step of an SMTP
//! transaction into an [`AttemptOutcome`]. The table is in docs/delivery.md.

use crate::domain::delivery::AttemptOutcome;

/// The step of the SMTP transaction an error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// TCP connect, greeting, EHLO, STARTTLS, AUTH.
    Connect,
    Mail,
    Rcpt,
    /// The DATA command (before any message byte).
    Data,
    /// Sending the message and waiting for the final reply.
    Message,
}

/// Relay replies often quote the recipient (`<naam@praktijk.nl>: Recipient
/// address rejected`): for logs, readiness and metrics every word with an `@`
/// is replaced. The attempts table keeps the full text for operators.
pub fn redact_addresses(text: &str) -> String {
    text.split(' ')
        .map(|w| if w.contains('@') { "<address>" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The enhanced status code (`5.1.1`) at the start of a reply text, if any.
pub fn enhanced_code(text: &str) -> Option<String> {
    let word = text.split_whitespace().find(|w| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    })?;
    matches!(word.as_bytes()[0], b'2' | b'4' | b'5').then(|| word.to_owned())
}

/// Classifies a negative SMTP reply `code` (with its text) at `step`.
pub fn classify_reply(step: Step, code: u16, text: &str) -> AttemptOutcome {
    use AttemptOutcome::*;
    let enhanced = enhanced_code(text).unwrap_or_default();
    let class = code / 100;
    if class == 2 || class == 3 {
        return Sent;
    }
    if class == 4 {
        return Transient;
    }
    // 5xx from here.
    let auth = code == 535 || code == 530;
    let policy = enhanced.starts_with("5.7.") || auth;
    let protocol = (500..=504).contains(&code);
    match step {
        Step::Connect | Step::Mail => RelayFault,
        _ if protocol => RelayFault,
        _ if auth => RelayFault,
        Step::Rcpt => {
            if code == 552 || enhanced == "5.2.2" {
                Transient
            } else {
                // A 5.7.x here is about this recipient (see
                // `is_recipient_policy`); many of them in a row are the relay
                // refusing us, which the breaker tells apart.
                Permanent
            }
        }
        Step::Data => {
            if policy {
                RelayFault
            } else {
                Permanent
            }
        }
        // After the data every refusal is about this message (content,
        // size, the sender's policy for it): the relay works.
        Step::Message => Permanent,
    }
}

/// A 5.7.x refusal at RCPT other than an authentication demand: a policy
/// about this recipient (`Recipient address rejected: Access denied`). It is
/// retried a few times before it counts as permanent, and when several
/// distinct recipients in a row get one the relay is refusing us instead.
pub fn is_recipient_policy(step: Step, code: u16, text: &str) -> bool {
    step == Step::Rcpt
        && code / 100 == 5
        && code != 530
        && code != 535
        && enhanced_code(text).is_some_and(|e| e.starts_with("5.7."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use AttemptOutcome::*;

    #[test]
    fn classification_table() {
        let cases = [
            (Step::Rcpt, 550, "5.1.1 No such user", Permanent),
            (Step::Rcpt, 551, "5.1.6 moved", Permanent),
            (Step::Rcpt, 553, "5.1.3 bad address syntax", Permanent),
            (Step::Rcpt, 552, "5.2.2 Mailbox full", Transient),
            (Step::Rcpt, 550, "5.2.2 Mailbox full", Transient),
            (Step::Rcpt, 554, "5.7.1 Relay access denied", Permanent),
            (
                Step::Rcpt,
                550,
                "5.7.1 <a@x.nl>: Recipient address rejected: Access denied",
                Permanent,
            ),
            (Step::Rcpt, 530, "5.7.0 Authentication required", RelayFault),
            (Step::Rcpt, 450, "4.2.0 Greylisted", Transient),
            (Step::Rcpt, 451, "4.7.1 try later", Transient),
            (Step::Rcpt, 452, "4.2.2 full", Transient),
            (Step::Mail, 421, "4.3.0 shutting down", Transient),
            (Step::Mail, 530, "5.7.0 Authentication required", RelayFault),
            (Step::Connect, 535, "5.7.8 bad credentials", RelayFault),
            (Step::Connect, 554, "5.7.1 go away", RelayFault),
            (Step::Rcpt, 502, "5.5.1 command not implemented", RelayFault),
            (Step::Message, 554, "5.6.0 content rejected", Permanent),
            (Step::Message, 552, "5.3.4 Message too big", Permanent),
            (Step::Message, 451, "4.3.0 local error", Transient),
            (Step::Message, 550, "5.7.1 policy", Permanent),
            (Step::Message, 554, "5.7.1 spam content", Permanent),
            (
                Step::Message,
                535,
                "5.7.8 authentication expired",
                RelayFault,
            ),
            (Step::Data, 554, "5.7.1 no valid recipients", RelayFault),
            (Step::Message, 250, "2.0.0 Ok", Sent),
        ];
        for (step, code, text, want) in cases {
            assert_eq!(
                classify_reply(step, code, text),
                want,
                "{step:?} {code} {text}"
            );
        }
    }

    #[test]
    fn recipient_policy_is_a_5_7_at_rcpt_only() {
        let text = "5.7.1 <a@x.nl>: Recipient address rejected: Access denied";
        assert!(is_recipient_policy(Step::Rcpt, 550, text));
        assert!(!is_recipient_policy(
            Step::Rcpt,
            530,
            "5.7.0 Authentication required"
        ));
        assert!(!is_recipient_policy(Step::Rcpt, 550, "5.1.1 No such user"));
        assert!(!is_recipient_policy(Step::Message, 550, text));
        assert!(!is_recipient_policy(Step::Rcpt, 450, "4.7.1 try later"));
    }

    #[test]
    fn addresses_are_redacted_for_logs() {
        assert_eq!(
            redact_addresses("550 5.1.1 <p.jansen@x.nl>: Recipient address rejected"),
            "550 5.1.1 <address> Recipient address rejected"
        );
    }

    #[test]
    fn enhanced_codes_are_found() {
        assert_eq!(
            enhanced_code("5.1.1 No such user").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(enhanced_code("Ok: queued as 12").as_deref(), None);
    }
}
