//! Property tests: no value from outside (an event, a directory line, a
//! relay reply, a text that reaches a template) panics, and what is built
//! from arbitrary text stays safe (HTML escaped, one-line subject, no extra
//! header). Arbitrary inputs, shrunk to the smallest failing one.

use notifier::domain::delivery::{MailKind, RetryPolicy, retry_hint};
use notifier::domain::event::{
    EventBody, EventType, MAX_BODY_BYTES, ValidationRules, envelope_hint, parse_event,
    parse_user_record,
};
use notifier::mail::classify::{Step, classify_reply, enhanced_code, is_recipient_policy};
use proptest::prelude::*;
use std::time::Duration;

fn rules() -> ValidationRules {
    ValidationRules {
        allowed_link_hosts: vec!["zip.example.nl".into()],
    }
}

fn voorstel() -> serde_json::Value {
    crate::support::sample("contract.voorstel_aangeboden")
}

/// Any string, with the characters that break things well represented.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[<>&\"'\\r\\n\\t\\u{0}\\u{202e}a-z=:;.@ ]{0,40}",
        Just("<script>alert(1)</script>".to_owned()),
        Just("x\r\nBcc: evil@example.org".to_owned()),
        Just("{{naam}}".to_owned()),
    ]
}

const PLACES: &[&[&str]] = &[
    &["id"],
    &["type"],
    &["source"],
    &["time"],
    &["datacontenttype"],
    &["specversion"],
    &["data", "agb_code"],
    &["data", "url"],
    &["data", "contract_id"],
    &["data", "contract_naam"],
    &["data", "uiterste_acceptatiedatum"],
    &["data", "zorgverzekeraar", "naam"],
    &["data", "zorgverzekeraar", "uzovi"],
];

fn set(v: &mut serde_json::Value, path: &[&str], to: serde_json::Value) {
    let mut cur = v;
    for key in &path[..path.len() - 1] {
        cur = &mut cur[*key];
    }
    cur[path[path.len() - 1]] = to;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_event_parser_never_panics_on_bytes(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_event(&body, &rules());
        let _ = envelope_hint(&body);
    }

    /// One field of a valid event replaced by anything: accepted or
    /// rejected with a reason, never a panic; what is accepted is clean.
    #[test]
    fn the_event_parser_judges_any_field_value(place in 0..PLACES.len(), value in nasty(), as_number in any::<bool>()) {
        let mut v = voorstel();
        let to = if as_number { serde_json::json!(value.len()) } else { serde_json::json!(value) };
        set(&mut v, PLACES[place], to);
        match parse_event(v.to_string().as_bytes(), &rules()) {
            Ok(e) => {
                let EventBody::Module(m) = e.body else { panic!("a voorstel is a module event") };
                prop_assert!(m.url.starts_with("https://zip.example.nl"));
                prop_assert!(!v.to_string().contains("\\u0000"));
            }
            Err(r) => prop_assert!(!r.reason.is_empty()),
        }
    }

    #[test]
    fn an_oversized_body_is_refused_on_its_size(extra in 1usize..4096) {
        let mut body = voorstel().to_string().into_bytes();
        body.resize(MAX_BODY_BYTES + extra, b' ');
        let r = parse_event(&body, &rules()).unwrap_err();
        prop_assert!(r.reason.contains("64 KiB"));
    }

    /// A directory line with any values: a record or a reason; an accepted
    /// address is one mail can be sent to.
    #[test]
    fn the_directory_line_parser_never_panics(
        nr in "[0-9]{12,16}|.{0,20}",
        email in nasty(),
        naam in nasty(),
        agb in "[0-9]{7,9}|.{0,10}",
        recht in "uitvragen|contracteren|x|.{0,8}",
        versie in any::<i64>(),
    ) {
        let line = serde_json::json!({
            "gebruikersnummer": nr, "naam": naam, "email": email, "status": "actief",
            "koppelingen": [{"agb_code": agb, "rechten": [recht], "tekenbevoegd": true, "contactpersoon": false}],
            "versie": versie,
        });
        if let Ok(rec) = parse_user_record(line.as_object().unwrap(), "") {
            prop_assert!(rec.email.as_str().parse::<lettre::Address>().is_ok());
            prop_assert_eq!(rec.koppelingen[0].agb_code.as_str().len(), 8);
        }
    }

    #[test]
    fn addresses_accepted_by_the_directory_are_sendable(local in "[a-z0-9.+_-]{1,20}", domain in "[a-z0-9.-]{1,20}") {
        let s = format!("{local}@{domain}");
        if let Ok(a) = notifier::domain::ids::EmailAddress::parse(&s) {
            prop_assert!(a.as_str().parse::<lettre::Address>().is_ok(), "{}", s);
        }
    }

    /// Any reply code and text at any step: an outcome, never a panic; a
    /// relay's wait, however large, never schedules past the deadline.
    #[test]
    fn relay_replies_are_classified_and_their_waits_bounded(
        code in 0u16..1000,
        text in nasty(),
        n in any::<u64>(),
        unit in "sec|seconds|s|min|minutes|hours|days",
        step in 0usize..5,
    ) {
        let step = [Step::Connect, Step::Mail, Step::Rcpt, Step::Data, Step::Message][step];
        let _ = classify_reply(step, code, &text);
        let _ = enhanced_code(&text);
        let _ = is_recipient_policy(step, code, &text);
        let reply = format!("{code} 4.7.1 {text} try again in {n} {unit}");
        let hint = retry_hint(&reply);
        let policy = RetryPolicy {
            schedule: vec![Duration::from_secs(30)],
            repeat: Duration::from_secs(3600),
            jitter: 0.2,
        };
        let now = chrono::Utc::now();
        let deadline = now + chrono::Duration::hours(72);
        if let Some(due) = policy.next_due(0, now, deadline, hint, 0.5) {
            prop_assert!(due <= deadline && due >= now);
        }
    }

    /// Arbitrary text in every field a template shows: HTML escapes it, the
    /// subject stays one line, and the built message has exactly the headers
    /// the worker sets.
    #[test]
    fn templates_keep_arbitrary_text_harmless(
        naam in nasty(),
        verzekeraar in nasty(),
        praktijk in nasty(),
    ) {
        let mut v = voorstel();
        v["data"]["contract_naam"] = naam.clone().into();
        v["data"]["zorgverzekeraar"]["naam"] = verzekeraar.clone().into();
        // What the parser refuses never reaches a template.
        let Ok(e) = parse_event(v.to_string().as_bytes(), &rules()) else { return Ok(()) };
        let EventBody::Module(m) = e.body else { panic!("module event") };
        let templates = notifier::templates::Templates::load(None).unwrap();
        let kind = MailKind::Module(EventType::VoorstelAangeboden);
        let addressee = notifier::templates::samples::planned_addressee(kind);
        let common = notifier::mail::context::Common::at(chrono::Utc::now(), "https://zip.example.nl", &addressee);
        let ctx = notifier::mail::context::module_context(kind.as_str(), &m, &praktijk, &common);
        let mail = templates.render(kind, &ctx).unwrap();
        prop_assert!(!mail.subject.contains('\n') && !mail.subject.contains('\r'));
        // The same mail with plain values: a raw text that the template's
        // own markup contains anyway (a lone "<") proves nothing.
        let mut plain = voorstel();
        plain["data"]["contract_naam"] = "X".into();
        plain["data"]["zorgverzekeraar"]["naam"] = "X".into();
        let p = parse_event(plain.to_string().as_bytes(), &rules()).unwrap();
        let EventBody::Module(pm) = p.body else { panic!("module event") };
        let baseline = templates
            .render(kind, &notifier::mail::context::module_context(kind.as_str(), &pm, "X", &common))
            .unwrap();
        for raw in [&naam, &verzekeraar, &praktijk] {
            if raw.contains('<') && !baseline.html.contains(raw.as_str()) {
                prop_assert!(!mail.html.contains(raw.as_str()), "unescaped in the HTML: {:?}", raw);
            }
        }
        let from: lettre::message::Mailbox = "Zorginkoopportaal <noreply@zip.example.nl>".parse().unwrap();
        let bytes = notifier::mail::message::build(&from, "p.jansen@fysio-noord.example", &mail, "id-1@notifier").unwrap();
        let parsed = mail_parser::MessageParser::default().parse(&bytes).unwrap();
        let mut names: Vec<String> = parsed
            .headers()
            .iter()
            .map(|h| h.name().to_ascii_lowercase())
            .collect();
        names.sort();
        prop_assert_eq!(
            names,
            ["auto-submitted", "content-type", "date", "from", "message-id", "mime-version", "subject", "to", "x-auto-response-suppress"]
                .map(String::from)
                .to_vec()
        );
    }
}
