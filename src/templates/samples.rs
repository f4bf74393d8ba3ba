//! Sample data for every mail kind, built into the binary: the contract's
//! example of every event (`templates/samples/events/`), the notices the
//! planner makes from them, and a small directory. `templates check`,
//! `preview` and `send-test` render from it, in three variants: as in the
//! contract, with every optional field absent, and hostile (markup, CRLF,
//! bidi overrides, zero-width characters and 2,000-character strings in
//! every free-text and name field).

use crate::domain::delivery::MailKind;
use crate::domain::directory::Recht;
use crate::domain::event::{EventBody, EventType, ModuleEvent, ValidationRules, parse_event};
use crate::domain::recipients::{Addressee, Rule};
use crate::mail::context::{self, Common};
use chrono::NaiveDate;
use serde_json::{Value, json};

macro_rules! samples {
    ($($name:literal),* $(,)?) => {
        &[$(include_str!(concat!("../../templates/samples/events/", $name, ".json"))),*]
    };
}

/// The contract's example of every event type.
pub const SAMPLE_EVENTS: &[&str] = samples!(
    "uitvraag.vragenlijst_klaargezet",
    "uitvraag.herinnering_sluitingsdatum",
    "uitvraag.aanvulling_gevraagd",
    "uitvraag.beoordeeld",
    "contract.voorstel_aangeboden",
    "contract.herinnering_acceptatie",
    "contract.geaccepteerd",
    "contract.administratief_vastgelegd",
    "onderhandeling.voorstel_gedaan",
    "onderhandeling.geaccordeerd",
    "onderhandeling.afgerond",
    "naleving.aanleververzoek",
    "gebruiker.bijgewerkt",
    "gebruiker.emailadres_gewijzigd",
    "certificaat.ingetrokken",
    "organisatie.bijgewerkt",
);

/// A small directory for AGB 04123456 (shared address, uppercase address, a revoked user, two AGB codes).
pub const SAMPLE_DIRECTORY: &str = include_str!("../../templates/samples/directory.jsonl");

/// The day the samples are rendered on: the day of the sample events, so
/// that their deadlines lie ahead as they did when the events happened.
pub fn sample_today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 10, 14).expect("a valid date")
}

/// The practice name the samples use (from `organisatie.bijgewerkt`).
pub const SAMPLE_PRAKTIJK: &str = "Fysiotherapie Noord";

/// Which sample data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The contract's examples, one user at the address.
    Sample,
    /// Every optional field absent (and the practice name unknown).
    Minimal,
    /// Hostile text in every free-text and name field; an address shared by three users.
    Hostile,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Sample, Variant::Minimal, Variant::Hostile];

    /// The suffix of preview files (`KIND.hostile.html`); empty for the sample.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Sample => "",
            Self::Minimal => ".minimal",
            Self::Hostile => ".hostile",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sample => "sample",
            Self::Minimal => "minimal",
            Self::Hostile => "hostile",
        }
    }
}

/// A text with every hostile case at once, exactly 2,000 characters (the
/// contract's maximum): markup, a CRLF with a header after it, a
/// right-to-left override, zero-width characters, and one long word.
pub fn hostile_text() -> String {
    let head = "<b>vet</b><script>alert(1)</script><img src=x onerror=alert(1)> &amp; \
                \r\nBcc: slachtoffer@example.com\r\n\u{202E}fdp.exe\u{200B}\u{FEFF}\u{2066} ";
    let mut s: String = head.to_owned();
    let pad = 2000 - s.chars().count();
    s.extend(std::iter::repeat_n('W', pad));
    s
}

/// Hostile text for an identifier: no control characters, at most 128.
fn hostile_id() -> String {
    let mut s = "<i>x</i>\u{202E}\u{200B}".to_owned();
    let pad = 128 - s.chars().count();
    s.extend(std::iter::repeat_n('9', pad));
    s
}

/// One kind's rendering input.
#[derive(Debug, Clone)]
pub struct SampleMail {
    pub kind: MailKind,
    pub context: Value,
}

/// The context of every kind in `variant`, rendered on `today`.
/// Fails only when a sample event does not pass `rules` (a
/// `mail.allowed_link_hosts` that leaves out the samples' host).
pub fn sample_mails(
    rules: &ValidationRules,
    portal_url: &str,
    today: NaiveDate,
    variant: Variant,
) -> Result<Vec<SampleMail>, String> {
    MailKind::all()
        .into_iter()
        .map(|kind| {
            let context = match kind {
                MailKind::Module(t) => {
                    let event = sample_event(t, rules, variant)?;
                    let addressee = addressee(kind, variant);
                    let common = Common::at_date(today, portal_url, &addressee);
                    let praktijk = praktijk(variant).unwrap_or(event.agb_code.as_str().to_owned());
                    context::module_context(kind.as_str(), &event, &praktijk, &common)
                }
                _ => {
                    let addressee = addressee(kind, variant);
                    let common = Common::at_date(today, portal_url, &addressee);
                    let notice = notice(kind, variant);
                    let agb = notice_agb(kind);
                    let praktijk = praktijk(variant);
                    context::notice_context(
                        kind.as_str(),
                        agb,
                        praktijk.as_deref(),
                        &notice,
                        &common,
                    )
                }
            };
            Ok(SampleMail { kind, context })
        })
        .collect()
}

/// The addressee the planner gives `kind`'s mail, for one user.
pub fn planned_addressee(kind: MailKind) -> Addressee {
    addressee(kind, Variant::Sample)
}

fn praktijk(variant: Variant) -> Option<String> {
    match variant {
        Variant::Sample => Some(SAMPLE_PRAKTIJK.to_owned()),
        Variant::Minimal => None,
        Variant::Hostile => Some(hostile_text()),
    }
}

/// Who the sample mail of `kind` is addressed to: the rule the planner
/// uses for it; the hostile variant adds the actor and a shared address.
fn addressee(kind: MailKind, variant: Variant) -> Addressee {
    let rule = match kind {
        MailKind::Module(EventType::HerinneringAcceptatie) => Rule::T,
        MailKind::Module(t) => Rule::U(t.right().unwrap_or(Recht::Contracteren)),
        MailKind::EmailGewijzigd => Rule::User,
        MailKind::EmailGewijzigdOudAdres => Rule::Address,
        _ => Rule::Cp,
    };
    match variant {
        Variant::Hostile if !matches!(rule, Rule::User | Rule::Address) => Addressee {
            rules: vec![rule, Rule::Actor],
            users: 3,
        },
        _ => Addressee {
            rules: vec![rule],
            users: usize::from(rule != Rule::Address),
        },
    }
}

/// The sample event of type `t` in `variant`, as the parser accepts it.
fn sample_event(
    t: EventType,
    rules: &ValidationRules,
    variant: Variant,
) -> Result<ModuleEvent, String> {
    let raw = SAMPLE_EVENTS
        .iter()
        .filter_map(|s| serde_json::from_str::<Value>(s).ok())
        .find(|v| v["type"] == t.as_str())
        .ok_or_else(|| format!("no sample event of type {}", t.as_str()))?;
    let parses = |v: &Value| -> Option<ModuleEvent> {
        match parse_event(v.to_string().as_bytes(), rules).ok()?.body {
            EventBody::Module(m) => Some(m),
            _ => None,
        }
    };
    if parses(&raw).is_none() {
        return Err(format!(
            "the sample {} does not pass validation (does mail.allowed_link_hosts include zip.example.nl?)",
            t.as_str()
        ));
    }
    let mut v = raw;
    let keys: Vec<String> = v["data"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    for key in keys {
        match variant {
            Variant::Sample => {}
            // Optional is what the parser lets go.
            Variant::Minimal => {
                let mut without = v.clone();
                without["data"].as_object_mut().map(|o| o.remove(&key));
                if parses(&without).is_some() {
                    v = without;
                }
            }
            // Free text is what takes hostile text; an identifier takes
            // hostile characters; dates, codes, links and enums take neither.
            Variant::Hostile => {
                for hostile in [hostile_text(), hostile_id()] {
                    let mut with = v.clone();
                    match &mut with["data"][&key] {
                        Value::String(s) => *s = hostile,
                        Value::Object(o) if o.contains_key("naam") => {
                            o.insert("naam".into(), hostile.into());
                        }
                        _ => break,
                    }
                    if parses(&with).is_some() {
                        v = with;
                        break;
                    }
                }
            }
        }
    }
    parses(&v).ok_or_else(|| {
        format!(
            "the {} variant of {} does not parse",
            variant.as_str(),
            t.as_str()
        )
    })
}

fn notice_agb(kind: MailKind) -> Option<&'static str> {
    match kind {
        MailKind::EmailGewijzigd | MailKind::EmailGewijzigdOudAdres => None,
        _ => Some("04123456"),
    }
}

/// The notice the planner makes for `kind` (the same fields; see
/// `domain::recipients`), from the sample events.
fn notice(kind: MailKind, variant: Variant) -> Value {
    let name = |sample: &str| match variant {
        Variant::Hostile => hostile_text(),
        _ => sample.to_owned(),
    };
    let voorstel = EventType::VoorstelAangeboden;
    let mut notice = match kind {
        MailKind::GeenOntvanger => json!({
            "event_id": "9b2f4c1e-3a57-4c6f-9d0e-000000000001",
            "event_type": "uitvraag.vragenlijst_klaargezet",
            "event_label": EventType::VragenlijstKlaargezet.label(),
            "module": Recht::Uitvragen.module(),
            "recht": Recht::Uitvragen.as_str(),
            "agb_code": "04123456",
            "zorgverzekeraar_naam": name("Zorgverzekeraar Noord"),
        }),
        MailKind::GeenTekenbevoegde => json!({
            "event_id": "9b2f4c1e-3a57-4c6f-9d0e-000000000005",
            "event_type": voorstel.as_str(),
            "event_label": voorstel.label(),
            "contract_naam": name("Overeenkomst fysiotherapie 2027"),
            "zorgverzekeraar_naam": name("Zorgverzekeraar Noord"),
            "uiterste_acceptatiedatum": "2026-11-12",
            "agb_code": "04123456",
        }),
        MailKind::LaatsteTekenbevoegdeIngetrokken | MailKind::CertificaatIngetrokken => json!({
            "gebruiker_naam": name("J. de Vries"),
            "gebruikersnummer": "10000000000001",
            "agb_code": "04123456",
        }),
        MailKind::Onbestelbaar => json!({
            "gebruiker_naam": name("P. Jansen"),
            "gebruikersnummer": "10000000000002",
            "event_id": "9b2f4c1e-3a57-4c6f-9d0e-000000000005",
            "event_type": voorstel.as_str(),
            "event_label": voorstel.label(),
            "reden": "het adres werd door de ontvangende mailserver geweigerd",
            "agb_code": "04123456",
        }),
        MailKind::EmailGewijzigd | MailKind::EmailGewijzigdOudAdres => {
            json!({ "gebruiker_naam": name("J. de Vries") })
        }
        MailKind::Module(_) => Value::Null,
    };
    if variant == Variant::Minimal
        && let Some(o) = notice.as_object_mut()
    {
        // Notices stored by versions before these fields existed.
        if kind == MailKind::GeenOntvanger {
            o.remove("zorgverzekeraar_naam");
        }
        if matches!(
            kind,
            MailKind::GeenOntvanger | MailKind::GeenTekenbevoegde | MailKind::Onbestelbaar
        ) {
            o.remove("agb_code");
        }
    }
    notice
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> ValidationRules {
        ValidationRules {
            allowed_link_hosts: vec!["zip.example.nl".into()],
        }
    }

    #[test]
    fn hostile_text_is_the_contracts_maximum() {
        assert_eq!(hostile_text().chars().count(), 2000);
        assert_eq!(hostile_id().chars().count(), 128);
    }

    #[test]
    fn every_variant_has_every_kind() {
        for v in Variant::ALL {
            let mails =
                sample_mails(&rules(), "https://zip.example.nl", sample_today(), v).unwrap();
            assert_eq!(mails.len(), MailKind::all().len());
        }
    }

    #[test]
    fn the_minimal_variant_drops_the_optional_actor_and_the_hostile_one_fills_names() {
        let find = |v: Variant| {
            sample_mails(&rules(), "https://zip.example.nl", sample_today(), v)
                .unwrap()
                .into_iter()
                .find(|m| m.kind == MailKind::Module(EventType::ContractGeaccepteerd))
                .unwrap()
                .context
        };
        assert!(
            find(Variant::Sample)["data"]
                .get("actor_gebruikersnummer")
                .is_some()
        );
        assert!(
            find(Variant::Minimal)["data"]
                .get("actor_gebruikersnummer")
                .is_none()
        );
        let hostile = find(Variant::Hostile);
        assert_eq!(hostile["data"]["contract_naam"], hostile_text());
        assert_eq!(hostile["zorgverzekeraar"]["naam"], hostile_text());
        // An identifier takes what an identifier may hold, not free text.
        assert_eq!(hostile["data"]["contract_id"], hostile_id());
    }
}
