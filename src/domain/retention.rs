//! Data minimisation after `retention.keep`: what of a stored event, notice
//! or free text survives a purge. Pure functions; the store applies them
//! (`store::retention`).
//!
//! Everything is kept by an allowlist, not a blocklist: a field this version
//! does not know (a newer portal, or a hostile publisher smuggling a name
//! into an extra field) is dropped, never kept by accident. What stays is
//! what an audit needs to count and trace (ids, types, codes, dates,
//! numbers); names, addresses, user numbers and free text go.

use serde_json::{Map, Value};

/// Envelope attributes of a CloudEvent that are kept: no personal data.
const ENVELOPE_KEPT: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "datacontenttype",
];

/// `data` fields of the contract that are kept: ids of portal objects,
/// the AGB code of the practice, dates, numbers and fixed vocabularies.
/// Dropped, among others: `vragenlijst_naam`, `contract_naam`,
/// `toelichting`, `onderwerp` (free text), `url`, `actor_gebruikersnummer`,
/// `gebruikersnummer`, `ingetrokken_door` (they identify a person), `naam`,
/// `email`, `oud_email`, `nieuw_email`, `koppelingen` (directory events) and
/// `zorgverzekeraar.naam` (the UZOVI code, kept, names the insurer).
const DATA_KEPT: &[&str] = &[
    "agb_code",
    "vragenlijst_id",
    "contract_id",
    "onderhandeling_id",
    "verzoek_id",
    "periode",
    "sluitingsdatum",
    "uiterste_acceptatiedatum",
    "uiterste_datum",
    "dagen_resterend",
    "jaar",
    "segment",
    "resultaat",
    "status",
    "versie",
];

/// Keys of a delivery's notice context (`deliveries.notice`) that are kept.
/// Dropped: `gebruiker_naam`, `gebruikersnummer`, `contract_naam`,
/// `zorgverzekeraar_naam` and anything else.
const NOTICE_KEPT: &[&str] = &[
    "event_id",
    "event_type",
    "event_label",
    "module",
    "recht",
    "agb_code",
    "uiterste_acceptatiedatum",
    "reden",
];

/// A stored event payload with only the fields of [`ENVELOPE_KEPT`] and
/// [`DATA_KEPT`] (and `zorgverzekeraar.uzovi`). A payload that is not a
/// JSON object becomes `{}`.
pub fn minimise_payload(payload: &str) -> String {
    let Ok(Value::Object(env)) = serde_json::from_str::<Value>(payload) else {
        return "{}".into();
    };
    let mut out = keep(&env, ENVELOPE_KEPT);
    if let Some(Value::Object(data)) = env.get("data") {
        let mut kept = keep(data, DATA_KEPT);
        if let Some(Value::Object(zv)) = data.get("zorgverzekeraar") {
            kept.insert(
                "zorgverzekeraar".into(),
                Value::Object(keep(zv, &["uzovi"])),
            );
        }
        out.insert("data".into(), Value::Object(kept));
    }
    Value::Object(out).to_string()
}

/// A delivery's notice context with only the keys of [`NOTICE_KEPT`];
/// anything that is not a JSON object becomes `{}`.
pub fn minimise_notice(notice: &str) -> String {
    match serde_json::from_str::<Value>(notice) {
        Ok(Value::Object(n)) => Value::Object(keep(&n, NOTICE_KEPT)).to_string(),
        _ => "{}".into(),
    }
}

/// The scalar members of `m` named in `names` (objects and arrays are
/// never kept whole: they could hold anything).
fn keep(m: &Map<String, Value>, names: &[&str]) -> Map<String, Value> {
    m.iter()
        .filter(|(k, v)| names.contains(&k.as_str()) && !v.is_object() && !v.is_array())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// An operator-facing text (an event's detail, a relay reply, a bounce's
/// diagnostic, a quarantine reason) without what identifies a person:
/// every word with an `@` becomes `<address>`, every run of ten or more
/// digits (a gebruikersnummer has 14) becomes `<number>`. Codes (`550`,
/// `5.1.1`), AGB codes (8 digits) and the wording stay.
pub fn scrub_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.contains('@') {
            out.push_str("<address>");
        } else {
            out.push_str(&scrub_numbers(word));
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// `word` with each run of ten or more ASCII digits replaced by `<number>`.
fn scrub_numbers(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if digits.len() >= 10 {
            out.push_str("<number>");
        } else {
            out.push_str(digits);
        }
        digits.clear();
    };
    for c in word.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            out.push(c);
        }
    }
    flush(&mut digits, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_module_event_keeps_ids_codes_and_dates_only() {
        let payload = json!({
            "specversion": "1.0", "id": "e1", "source": "/zip", "type": "uitvraag.aanvulling_gevraagd",
            "time": "2026-10-14T08:05:00Z", "datacontenttype": "application/json",
            "extension": "Jan Jansen",
            "data": {
                "agb_code": "04123456",
                "zorgverzekeraar": {"uzovi": "3311", "naam": "Zorgverzekeraar Noord", "extra": "x"},
                "url": "https://zip.example.nl/uitvraag/42?naam=Jan",
                "vragenlijst_id": "42", "vragenlijst_naam": "Vragenlijst van dr. Jansen",
                "toelichting": "Bel Jan op 0612345678", "sluitingsdatum": "2026-11-01",
                "actor_gebruikersnummer": "30000000000001",
                "smuggled": "p.jansen@praktijk.nl",
                "dagen_resterend": 3,
                "koppelingen": [{"agb_code": "04123456"}]
            }
        })
        .to_string();
        let out: Value = serde_json::from_str(&minimise_payload(&payload)).unwrap();
        assert_eq!(
            out,
            json!({
                "specversion": "1.0", "id": "e1", "source": "/zip", "type": "uitvraag.aanvulling_gevraagd",
                "time": "2026-10-14T08:05:00Z", "datacontenttype": "application/json",
                "data": {
                    "agb_code": "04123456", "zorgverzekeraar": {"uzovi": "3311"},
                    "vragenlijst_id": "42", "sluitingsdatum": "2026-11-01", "dagen_resterend": 3
                }
            })
        );
    }

    #[test]
    fn a_directory_event_loses_the_person() {
        let payload = json!({
            "id": "d1", "type": "gebruiker.emailadres_gewijzigd",
            "data": {"gebruikersnummer": "30000000000001", "oud_email": "a@b.nl",
                     "nieuw_email": "c@d.nl", "naam": "Jan", "versie": 7, "status": "actief"}
        })
        .to_string();
        let out = minimise_payload(&payload);
        for gone in ["30000000000001", "a@b.nl", "c@d.nl", "Jan"] {
            assert!(!out.contains(gone), "{gone} in {out}");
        }
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["data"], json!({"versie": 7, "status": "actief"}));
    }

    #[test]
    fn what_is_not_a_json_object_becomes_empty() {
        assert_eq!(minimise_payload("not json Jan Jansen"), "{}");
        assert_eq!(minimise_payload("[\"Jan\"]"), "{}");
        assert_eq!(minimise_notice("\"Jan\""), "{}");
    }

    #[test]
    fn a_notice_keeps_the_event_and_the_reason() {
        let notice = json!({
            "gebruiker_naam": "Jan Jansen", "gebruikersnummer": "30000000000001",
            "event_id": "e1", "event_type": "contract.geaccepteerd", "event_label": "x",
            "reden": "het adres werd door de ontvangende mailserver geweigerd",
            "agb_code": "04123456", "contract_naam": "Contract Jansen", "zorgverzekeraar_naam": "ZN"
        })
        .to_string();
        let v: Value = serde_json::from_str(&minimise_notice(&notice)).unwrap();
        assert_eq!(
            v,
            json!({
                "event_id": "e1", "event_type": "contract.geaccepteerd", "event_label": "x",
                "reden": "het adres werd door de ontvangende mailserver geweigerd",
                "agb_code": "04123456"
            })
        );
    }

    #[test]
    fn texts_lose_addresses_and_user_numbers_but_keep_codes() {
        assert_eq!(
            scrub_text("550 5.1.1 <p.jansen@x.nl>: Recipient address rejected"),
            "550 5.1.1 <address> Recipient address rejected"
        );
        assert_eq!(
            scrub_text("actor 30000000000001 is revoked: no copy; AGB 04123456"),
            "actor <number> is revoked: no copy; AGB 04123456"
        );
        assert_eq!(
            scrub_text("user=30000000000001,\tnext\nline"),
            "user=<number>,\tnext\nline"
        );
        assert_eq!(scrub_text(""), "");
    }
}
