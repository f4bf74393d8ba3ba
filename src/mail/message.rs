//! Builds the MIME message for one delivery: multipart/alternative with a
//! plain-text and an HTML part, both quoted-printable with CRLF line endings
//! (so no content can end the SMTP data early), a Message-ID derived from the
//! delivery id, `Auto-Submitted: auto-generated` and
//! `X-Auto-Response-Suppress: All`, and, when bounces are
//! tagged, `X-Notifier-Tag` (docs/bounces.md).

use super::MailError;
use crate::domain::ids::smtp_form;
use crate::templates::RenderedMail;
use lettre::message::header::{
    ContentTransferEncoding, ContentType, Header, HeaderName, HeaderValue,
};
use lettre::message::{Body, Mailbox, MultiPart, SinglePart};

/// A header whose value never changes.
macro_rules! fixed_header {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $value:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        struct $ty;

        impl Header for $ty {
            fn name() -> HeaderName {
                HeaderName::new_from_ascii_str($name)
            }
            fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
                Ok(Self)
            }
            fn display(&self) -> HeaderValue {
                HeaderValue::new(Self::name(), $value.into())
            }
        }
    };
}

fixed_header!(
    /// `Auto-Submitted: auto-generated` (RFC 3834): tells auto-responders not to answer.
    AutoSubmitted,
    "Auto-Submitted",
    "auto-generated"
);

fixed_header!(
    /// `X-Auto-Response-Suppress: All`: the same for Exchange and Outlook,
    /// which do not read `Auto-Submitted` (out-of-office, read receipts).
    AutoResponseSuppress,
    "X-Auto-Response-Suppress",
    "All"
);

/// `X-Notifier-Tag: TAG`: the delivery's signed bounce tag, so that a bounce
/// that quotes the original headers can be matched even when the envelope
/// sender was rewritten on the way.
#[derive(Debug, Clone)]
struct NotifierTag(String);

impl Header for NotifierTag {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("X-Notifier-Tag")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.trim().to_owned()))
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// Normalises every line ending to CRLF (bare LF and bare CR included).
pub fn crlf(s: &str) -> String {
    let unified = s.replace("\r\n", "\n").replace('\r', "\n");
    unified.replace('\n', "\r\n")
}

/// The formatted bytes of a mail, ready for the SMTP data.
pub fn build(
    from: &Mailbox,
    to: &str,
    mail: &RenderedMail,
    message_id: &str,
) -> Result<Vec<u8>, MailError> {
    build_tagged(from, to, mail, message_id, None)
}

/// Like [`build`], with the header `X-Notifier-Tag: TAG` when `tag` is given.
pub fn build_tagged(
    from: &Mailbox,
    to: &str,
    mail: &RenderedMail,
    message_id: &str,
    tag: Option<&str>,
) -> Result<Vec<u8>, MailError> {
    // The header fields carry the addresses as the envelope does: an ASCII
    // local part at an international domain with the domain's A-label (so
    // the message stays ASCII), a non-ASCII local part as UTF-8 (RFC 6532;
    // such a mail only goes to a relay that offers SMTPUTF8).
    let to: Mailbox = smtp_form(to).text.parse().map_err(|e| {
        MailError::Build(format!(
            "recipient address rejected by the mail builder: {e}"
        ))
    })?;
    let from = Mailbox::new(
        from.name.clone(),
        smtp_form(from.email.as_ref()).text.parse().map_err(|e| {
            MailError::Build(format!("smtp.from rejected by the mail builder: {e}"))
        })?,
    );
    let part = |ct: ContentType, body: &str| {
        SinglePart::builder().header(ct).body(
            Body::new_with_encoding(crlf(body), ContentTransferEncoding::QuotedPrintable)
                .expect("quoted-printable takes any text"),
        )
    };
    let mut builder = lettre::Message::builder()
        .from(from)
        .to(to)
        .subject(mail.subject.clone())
        .message_id(Some(format!("<{message_id}>")))
        .header(AutoSubmitted)
        .header(AutoResponseSuppress);
    if let Some(tag) = tag {
        builder = builder.header(NotifierTag(tag.to_owned()));
    }
    let message = builder
        .multipart(
            MultiPart::alternative()
                .singlepart(part(ContentType::TEXT_PLAIN, &mail.text))
                .singlepart(part(ContentType::TEXT_HTML, &mail.html)),
        )
        .map_err(|e| MailError::Build(e.to_string()))?;
    Ok(message.formatted())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_ends_crlf_and_headers_are_set() {
        let m = RenderedMail {
            subject: "Onderwerp met é".into(),
            html: "<p>a</p>\n.\nb".into(),
            text: "regel 1\n.\r\nregel 3\rregel 4".into(),
        };
        let bytes = build(
            &"Portal <noreply@zip.example.nl>".parse().unwrap(),
            "a@b.nl",
            &m,
            "id-1@x",
        )
        .unwrap();
        let s = String::from_utf8(bytes).unwrap();
        assert!(!s.replace("\r\n", "").contains('\n'), "bare LF found");
        // A lone "." line may remain here: with every line ending CRLF, the
        // SMTP codec's dot-stuffing covers it (checked end to end in tests/it).
        assert!(s.contains("Message-ID: <id-1@x>"));
        assert!(s.contains("Auto-Submitted: auto-generated"));
        assert!(s.contains("\r\nX-Auto-Response-Suppress: All\r\n"));
        assert!(s.contains("quoted-printable"));
        assert!(!s.contains("X-Notifier-Tag"));
        let tagged = build_tagged(
            &"Portal <noreply@zip.example.nl>".parse().unwrap(),
            "a@b.nl",
            &m,
            "id-1@x",
            Some("0190b3c45d6e7f809a1b2c3d4e5f6a7b.0123456789abcdef"),
        )
        .unwrap();
        let t = String::from_utf8(tagged).unwrap();
        assert!(
            t.contains("\r\nX-Notifier-Tag: 0190b3c45d6e7f809a1b2c3d4e5f6a7b.0123456789abcdef\r\n")
        );
        assert!(t.contains("Message-ID: <id-1@x>"));
    }

    #[test]
    fn addresses_in_the_header_are_written_as_in_the_envelope() {
        let m = RenderedMail {
            subject: "S".into(),
            html: "<p>a</p>".into(),
            text: "a".into(),
        };
        let from = "Portal <noreply@zip.example.nl>".parse().unwrap();
        let s = |to: &str| String::from_utf8(build(&from, to, &m, "id@x").unwrap()).unwrap();
        assert!(
            s("J.deVries@Fysio-Noord.example")
                .contains("\r\nTo: J.deVries@Fysio-Noord.example\r\n")
        );
        let idn = s("Info@Bücher.example");
        assert!(
            idn.contains("\r\nTo: Info@xn--bcher-kva.example\r\n"),
            "{idn}"
        );
        assert!(idn.is_ascii());
        assert!(s("jörg@bücher.example").contains("\r\nTo: jörg@bücher.example\r\n"));
    }
}
