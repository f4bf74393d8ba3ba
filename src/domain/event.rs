//! The portal's event contract (CloudEvents 1.0, structured JSON): event types,
//! the envelope, and validation of each type's `data` into domain values.
//!
//! Everything here is pure: bytes in, a [`PortalEvent`] or a [`Rejection`] with
//! a reason an operator can read out.

use super::delivery::DeliveryStatus;
use super::directory::{Koppeling, Recht, UserRecord, UserStatus};
use super::ids::{AgbCode, EmailAddress, EventId, Gebruikersnummer};
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Map, Value};

/// The largest message body accepted (the contract's 64 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The longest free text (toelichting, names) accepted, in characters.
pub const MAX_TEXT_CHARS: usize = 2_000;

/// Why an incoming message is bad input; kept with the message in quarantine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Rejection {
    /// Human-readable: names the field and what was expected.
    pub reason: String,
}

impl Rejection {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// What became of a stored event (the `events.state` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventState {
    /// A module event with deliveries (or notices) planned.
    Accepted,
    /// A module event nobody could be told about, not even a contact person.
    Unroutable,
    /// A directory event whose change was applied.
    Applied,
    /// A directory event older than what the directory holds: skipped.
    Stale,
    /// A directory event about a user the directory does not know.
    Ignored,
}

impl EventState {
    /// Every state.
    pub const ALL: [EventState; 5] = [
        Self::Accepted,
        Self::Unroutable,
        Self::Applied,
        Self::Stale,
        Self::Ignored,
    ];

    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Unroutable => "unroutable",
            Self::Applied => "applied",
            Self::Stale => "stale",
            Self::Ignored => "ignored",
        }
    }

    /// Parses the stored word.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Parses an operator's `--state` word, saying which words there are.
    pub fn parse_arg(s: &str) -> Result<Self, String> {
        Self::parse(s).ok_or_else(|| {
            let words: Vec<&str> = Self::ALL.iter().map(|x| x.as_str()).collect();
            format!("{s}: expected one of {}", words.join(", "))
        })
    }

    /// The event's final state as operators read it (`events show`), from
    /// its own state and its deliveries' statuses.
    pub fn final_state(self, statuses: &[DeliveryStatus]) -> &'static str {
        use DeliveryStatus::*;
        if self == Self::Unroutable {
            return "unroutable";
        }
        if statuses.is_empty() {
            return match self {
                Self::Stale => "stale (ignored)",
                Self::Ignored => "ignored",
                _ => "done (no mail)",
            };
        }
        if statuses.iter().any(|s| matches!(s, Pending | Sending)) {
            "in progress"
        } else if statuses.iter().any(|s| matches!(s, Failed | Bounced)) {
            "done with failures"
        } else {
            "done"
        }
    }
}

impl std::fmt::Display for EventState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for EventState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Where a quarantined message is: waiting for an operator, or redriven
/// (ingested again by `notifier quarantine redrive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuarantineState {
    Open,
    Redriven,
}

impl QuarantineState {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Redriven => "redriven",
        }
    }

    /// Parses the stored word.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Open, Self::Redriven]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

impl std::fmt::Display for QuarantineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for QuarantineState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Every event type of contract v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    VragenlijstKlaargezet,
    HerinneringSluitingsdatum,
    AanvullingGevraagd,
    UitvraagBeoordeeld,
    VoorstelAangeboden,
    HerinneringAcceptatie,
    ContractGeaccepteerd,
    AdministratiefVastgelegd,
    OnderhandelingVoorstelGedaan,
    OnderhandelingGeaccordeerd,
    OnderhandelingAfgerond,
    Aanleververzoek,
    GebruikerBijgewerkt,
    EmailadresGewijzigd,
    CertificaatIngetrokken,
    OrganisatieBijgewerkt,
}

impl EventType {
    /// All types, module events first.
    pub const ALL: [EventType; 16] = [
        Self::VragenlijstKlaargezet,
        Self::HerinneringSluitingsdatum,
        Self::AanvullingGevraagd,
        Self::UitvraagBeoordeeld,
        Self::VoorstelAangeboden,
        Self::HerinneringAcceptatie,
        Self::ContractGeaccepteerd,
        Self::AdministratiefVastgelegd,
        Self::OnderhandelingVoorstelGedaan,
        Self::OnderhandelingGeaccordeerd,
        Self::OnderhandelingAfgerond,
        Self::Aanleververzoek,
        Self::GebruikerBijgewerkt,
        Self::EmailadresGewijzigd,
        Self::CertificaatIngetrokken,
        Self::OrganisatieBijgewerkt,
    ];

    /// The `type` string (also the AMQP routing key).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VragenlijstKlaargezet => "uitvraag.vragenlijst_klaargezet",
            Self::HerinneringSluitingsdatum => "uitvraag.herinnering_sluitingsdatum",
            Self::AanvullingGevraagd => "uitvraag.aanvulling_gevraagd",
            Self::UitvraagBeoordeeld => "uitvraag.beoordeeld",
            Self::VoorstelAangeboden => "contract.voorstel_aangeboden",
            Self::HerinneringAcceptatie => "contract.herinnering_acceptatie",
            Self::ContractGeaccepteerd => "contract.geaccepteerd",
            Self::AdministratiefVastgelegd => "contract.administratief_vastgelegd",
            Self::OnderhandelingVoorstelGedaan => "onderhandeling.voorstel_gedaan",
            Self::OnderhandelingGeaccordeerd => "onderhandeling.geaccordeerd",
            Self::OnderhandelingAfgerond => "onderhandeling.afgerond",
            Self::Aanleververzoek => "naleving.aanleververzoek",
            Self::GebruikerBijgewerkt => "gebruiker.bijgewerkt",
            Self::EmailadresGewijzigd => "gebruiker.emailadres_gewijzigd",
            Self::CertificaatIngetrokken => "certificaat.ingetrokken",
            Self::OrganisatieBijgewerkt => "organisatie.bijgewerkt",
        }
    }

    /// Looks a `type` string up; `None` for a type this version does not know.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The module right whose holders get this event's mail (`None` for directory events).
    pub fn right(self) -> Option<Recht> {
        use EventType::*;
        match self {
            VragenlijstKlaargezet
            | HerinneringSluitingsdatum
            | AanvullingGevraagd
            | UitvraagBeoordeeld => Some(Recht::Uitvragen),
            VoorstelAangeboden
            | HerinneringAcceptatie
            | ContractGeaccepteerd
            | AdministratiefVastgelegd => Some(Recht::Contracteren),
            OnderhandelingVoorstelGedaan | OnderhandelingGeaccordeerd | OnderhandelingAfgerond => {
                Some(Recht::Onderhandelen)
            }
            Aanleververzoek => Some(Recht::Naleving),
            GebruikerBijgewerkt
            | EmailadresGewijzigd
            | CertificaatIngetrokken
            | OrganisatieBijgewerkt => None,
        }
    }

    /// True for events that mail the users of an AGB code.
    pub fn is_module(self) -> bool {
        self.right().is_some()
    }

    /// Dutch one-line description, used in notices ("what happened").
    pub fn label(self) -> &'static str {
        use EventType::*;
        match self {
            VragenlijstKlaargezet => "Er is een vragenlijst voor u klaargezet",
            HerinneringSluitingsdatum => {
                "Herinnering: de sluitingsdatum van een vragenlijst nadert"
            }
            AanvullingGevraagd => "De zorgverzekeraar vraagt om een aanvulling op een vragenlijst",
            UitvraagBeoordeeld => "Een vragenlijst is beoordeeld",
            VoorstelAangeboden => "Er is een contractvoorstel aangeboden",
            HerinneringAcceptatie => "Herinnering: een contractvoorstel wacht op acceptatie",
            ContractGeaccepteerd => "Een contract is geaccepteerd",
            AdministratiefVastgelegd => "Een contract is administratief vastgelegd",
            OnderhandelingVoorstelGedaan => "Er is een voorstel gedaan in een onderhandeling",
            OnderhandelingGeaccordeerd => "Een onderhandeling is geaccordeerd",
            OnderhandelingAfgerond => "Een onderhandeling is afgerond",
            Aanleververzoek => "Er is een verzoek om gegevens aan te leveren",
            GebruikerBijgewerkt => "Gebruiker bijgewerkt",
            EmailadresGewijzigd => "E-mailadres gewijzigd",
            CertificaatIngetrokken => "Certificaat ingetrokken",
            OrganisatieBijgewerkt => "Organisatie bijgewerkt",
        }
    }

    fn data_spec(self) -> &'static [(&'static str, Field)] {
        use EventType::*;
        use Field::*;
        match self {
            VragenlijstKlaargezet => &[
                ("vragenlijst_id", Id),
                ("vragenlijst_naam", Text),
                ("sluitingsdatum", Date),
            ],
            HerinneringSluitingsdatum => &[
                ("vragenlijst_id", Id),
                ("vragenlijst_naam", Text),
                ("sluitingsdatum", Date),
                ("dagen_resterend", Count),
            ],
            AanvullingGevraagd => &[
                ("vragenlijst_id", Id),
                ("vragenlijst_naam", Text),
                ("toelichting", Text),
            ],
            UitvraagBeoordeeld => &[("vragenlijst_id", Id), ("vragenlijst_naam", Text)],
            VoorstelAangeboden => &[
                ("contract_id", Id),
                ("contract_naam", Text),
                ("jaar", Year),
                ("uiterste_acceptatiedatum", Date),
            ],
            HerinneringAcceptatie => &[
                ("contract_id", Id),
                ("contract_naam", Text),
                ("uiterste_acceptatiedatum", Date),
                ("dagen_resterend", Count),
            ],
            ContractGeaccepteerd => &[
                ("contract_id", Id),
                ("contract_naam", Text),
                ("actor_gebruikersnummer", OptionalUser),
            ],
            AdministratiefVastgelegd => {
                &[("contract_id", Id), ("contract_naam", Text), ("jaar", Year)]
            }
            OnderhandelingVoorstelGedaan | OnderhandelingGeaccordeerd => &[
                ("onderhandeling_id", Id),
                ("segment", OneOf(&["MSZ", "DGSF", "GGZ", "VenV"])),
                ("actor_gebruikersnummer", OptionalUser),
            ],
            OnderhandelingAfgerond => &[
                ("onderhandeling_id", Id),
                ("segment", OneOf(&["MSZ", "DGSF", "GGZ", "VenV"])),
                ("resultaat", OneOf(&["contract", "prijslijst"])),
            ],
            Aanleververzoek => &[
                ("verzoek_id", Id),
                ("onderwerp", Text),
                ("periode", Id),
                ("uiterste_datum", Date),
            ],
            GebruikerBijgewerkt
            | EmailadresGewijzigd
            | CertificaatIngetrokken
            | OrganisatieBijgewerkt => &[],
        }
    }
}

/// The shape a `data` field must have.
#[derive(Debug, Clone, Copy)]
enum Field {
    /// A portal identifier: 1..=128 printable characters.
    Id,
    /// Free text or a name: 1..=2,000 characters, never trusted as HTML.
    Text,
    /// `YYYY-MM-DD`.
    Date,
    /// An integer >= 0.
    Count,
    /// A year, 2000..=2100.
    Year,
    /// One of a fixed set of strings.
    OneOf(&'static [&'static str]),
    /// An optional gebruikersnummer.
    OptionalUser,
}

/// The insurer named in a module event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Zorgverzekeraar {
    pub uzovi: String,
    pub naam: String,
}

/// A validated module event: what the recipient rules and the templates need.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleEvent {
    pub event_type: EventType,
    pub agb_code: AgbCode,
    pub zorgverzekeraar: Zorgverzekeraar,
    /// The call-to-action link; `https` on an allowed host.
    pub url: String,
    /// `data.actor_gebruikersnummer`, where the type has one.
    pub actor: Option<Gebruikersnummer>,
    /// The whole validated `data` object, as the templates see it.
    pub data: Value,
}

/// What an event means to the notifier.
#[derive(Debug, Clone, PartialEq)]
pub enum EventBody {
    Module(ModuleEvent),
    GebruikerBijgewerkt(UserRecord),
    EmailadresGewijzigd {
        gebruikersnummer: Gebruikersnummer,
        oud_email: EmailAddress,
        nieuw_email: EmailAddress,
        versie: i64,
    },
    CertificaatIngetrokken {
        gebruikersnummer: Gebruikersnummer,
        ingetrokken_door: Option<Gebruikersnummer>,
        versie: i64,
    },
    OrganisatieBijgewerkt {
        agb_code: AgbCode,
        naam: String,
        versie: i64,
    },
}

/// A validated portal event.
#[derive(Debug, Clone, PartialEq)]
pub struct PortalEvent {
    pub id: EventId,
    pub event_type: EventType,
    pub source: String,
    pub time: DateTime<Utc>,
    pub body: EventBody,
}

impl PortalEvent {
    /// The AGB code the event is about, where it has one.
    pub fn agb_code(&self) -> Option<&AgbCode> {
        match &self.body {
            EventBody::Module(m) => Some(&m.agb_code),
            EventBody::OrganisatieBijgewerkt { agb_code, .. } => Some(agb_code),
            _ => None,
        }
    }
}

/// What validation needs from the configuration.
#[derive(Debug, Clone)]
pub struct ValidationRules {
    /// Hosts that links in mails may point to (lower case).
    pub allowed_link_hosts: Vec<String>,
}

/// The envelope fields that can be read even from an event that fails
/// validation, so quarantine can show them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvelopeHint {
    pub id: Option<String>,
    pub event_type: Option<String>,
}

/// Reads what it can of the envelope of a possibly bad message. A body over
/// the contract's limit is never parsed (that is what makes a 40 MB message
/// cost memory): its id and type are looked for in the first bytes only.
pub fn envelope_hint(body: &[u8]) -> EnvelopeHint {
    if body.len() > MAX_BODY_BYTES {
        let head = &body[..MAX_BODY_BYTES];
        return EnvelopeHint {
            id: scan_string_member(head, "id"),
            event_type: scan_string_member(head, "type"),
        };
    }
    let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(body) else {
        return EnvelopeHint::default();
    };
    let s = |k: &str| {
        o.get(k)
            .and_then(Value::as_str)
            .map(|v| v.chars().take(128).collect())
    };
    EnvelopeHint {
        id: s("id"),
        event_type: s("type"),
    }
}

/// Parses and validates one message body as the contract says.
pub fn parse_event(body: &[u8], rules: &ValidationRules) -> Result<PortalEvent, Rejection> {
    if body.len() > MAX_BODY_BYTES {
        return Err(Rejection::new(format!(
            "body is {} bytes, more than the 64 KiB the contract allows",
            body.len()
        )));
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| Rejection::new(format!("body is not valid UTF-8 ({e})")))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Rejection::new(format!("body is not valid JSON ({e})")))?;
    let Value::Object(env) = value else {
        return Err(Rejection::new("body is JSON but not an object"));
    };
    // PostgreSQL cannot store U+0000 in text, and no field of the contract
    // needs it: refuse the whole event, naming where it was found.
    if let Some(path) = nul_path(&env, "") {
        return Err(Rejection::new(format!(
            "{path}: contains a NUL character (\\u0000), which no field of the contract allows"
        )));
    }
    let specversion = req_str(&env, "", "specversion")?;
    if specversion != "1.0" {
        return Err(Rejection::new(format!(
            "specversion: expected \"1.0\", got {specversion:?}"
        )));
    }
    let id = EventId::parse(req_str(&env, "", "id")?).map_err(|e| field_err("", "id", e.0))?;
    let type_str = req_str(&env, "", "type")?;
    let event_type = EventType::parse(type_str).ok_or_else(|| {
        Rejection::new(format!(
            "type: unknown event type {:?} (not in contract v1)",
            type_str.chars().take(80).collect::<String>()
        ))
    })?;
    let source = req_str(&env, "", "source")?.to_owned();
    let time_str = req_str(&env, "", "time")?;
    let time = DateTime::parse_from_rfc3339(time_str)
        .map_err(|_| {
            field_err(
                "",
                "time",
                format!("expected an RFC 3339 instant, got {time_str:?}"),
            )
        })?
        .with_timezone(&Utc);
    if let Some(ct) = env.get("datacontenttype") {
        let ct = ct
            .as_str()
            .ok_or_else(|| field_err("", "datacontenttype", "expected a string".into()))?;
        check_media_type(ct).map_err(|e| field_err("", "datacontenttype", e))?;
    }
    let Some(Value::Object(data)) = env.get("data") else {
        return Err(Rejection::new("data: missing, or not an object"));
    };
    let body = parse_body(event_type, data, rules)?;
    Ok(PortalEvent {
        id,
        event_type,
        source,
        time,
        body,
    })
}

fn parse_body(
    event_type: EventType,
    data: &Map<String, Value>,
    rules: &ValidationRules,
) -> Result<EventBody, Rejection> {
    use EventType::*;
    let p = "data.";
    match event_type {
        GebruikerBijgewerkt => Ok(EventBody::GebruikerBijgewerkt(parse_user_record(data, p)?)),
        EmailadresGewijzigd => Ok(EventBody::EmailadresGewijzigd {
            gebruikersnummer: req_user(data, p, "gebruikersnummer")?,
            oud_email: req_email(data, p, "oud_email")?,
            nieuw_email: req_email(data, p, "nieuw_email")?,
            versie: req_versie(data, p)?,
        }),
        CertificaatIngetrokken => Ok(EventBody::CertificaatIngetrokken {
            gebruikersnummer: req_user(data, p, "gebruikersnummer")?,
            ingetrokken_door: opt_user(data, p, "ingetrokken_door")?,
            versie: req_versie(data, p)?,
        }),
        OrganisatieBijgewerkt => Ok(EventBody::OrganisatieBijgewerkt {
            agb_code: req_agb(data, p)?,
            naam: req_text(data, p, "naam")?.to_owned(),
            versie: req_versie(data, p)?,
        }),
        _ => parse_module(event_type, data, rules).map(EventBody::Module),
    }
}

fn parse_module(
    event_type: EventType,
    data: &Map<String, Value>,
    rules: &ValidationRules,
) -> Result<ModuleEvent, Rejection> {
    let p = "data.";
    let agb_code = req_agb(data, p)?;
    let zorgverzekeraar = parse_zorgverzekeraar(data)?;
    let url = check_link(req_str(data, p, "url")?, rules).map_err(|e| field_err(p, "url", e))?;
    let mut actor = None;
    for (name, field) in event_type.data_spec() {
        if let Field::OptionalUser = field {
            actor = opt_user(data, p, name)?;
        } else {
            check_field(data, name, field)?;
        }
    }
    // Templates see exactly the validated fields: unknown extras never reach a mail.
    let mut clean = Map::new();
    clean.insert("agb_code".into(), Value::String(agb_code.to_string()));
    clean.insert("url".into(), Value::String(url.clone()));
    for (name, _) in event_type.data_spec() {
        if let Some(v) = data.get(*name) {
            clean.insert((*name).into(), v.clone());
        }
    }
    Ok(ModuleEvent {
        event_type,
        agb_code,
        zorgverzekeraar,
        url,
        actor,
        data: Value::Object(clean),
    })
}

/// `data.zorgverzekeraar`: a UZOVI code of four digits and a name.
fn parse_zorgverzekeraar(data: &Map<String, Value>) -> Result<Zorgverzekeraar, Rejection> {
    let p = "data.zorgverzekeraar.";
    let Some(Value::Object(zv)) = data.get("zorgverzekeraar") else {
        return Err(Rejection::new(
            "data.zorgverzekeraar: missing, or not an object",
        ));
    };
    let uzovi = req_str(zv, p, "uzovi")?;
    if !(uzovi.len() == 4 && uzovi.bytes().all(|b| b.is_ascii_digit())) {
        return Err(field_err(
            p,
            "uzovi",
            format!("expected 4 digits, got {uzovi:?}"),
        ));
    }
    Ok(Zorgverzekeraar {
        uzovi: uzovi.to_owned(),
        naam: req_text(zv, p, "naam")?.to_owned(),
    })
}

/// Checks one field of an event type's data against its kind (the
/// optional actor is read by the caller).
fn check_field(data: &Map<String, Value>, name: &str, field: &Field) -> Result<(), Rejection> {
    let p = "data.";
    match field {
        Field::Id => {
            let v = req_str(data, p, name)?;
            if v.is_empty() || v.chars().count() > 128 || v.chars().any(char::is_control) {
                return Err(field_err(
                    p,
                    name,
                    "expected an identifier of 1 to 128 printable characters".into(),
                ));
            }
        }
        Field::Text => {
            req_text(data, p, name)?;
        }
        Field::Date => {
            let v = req_str(data, p, name)?;
            if NaiveDate::parse_from_str(v, "%Y-%m-%d").is_err() || v.len() != 10 {
                return Err(field_err(
                    p,
                    name,
                    format!("expected a date YYYY-MM-DD, got {v:?}"),
                ));
            }
        }
        Field::Count => match data.get(name).and_then(Value::as_i64) {
            Some(n) if n >= 0 => {}
            _ => return Err(field_err(p, name, "expected an integer >= 0".into())),
        },
        Field::Year => match data.get(name).and_then(Value::as_i64) {
            Some(n) if (2000..=2100).contains(&n) => {}
            _ => {
                return Err(field_err(
                    p,
                    name,
                    "expected a year (integer 2000..2100)".into(),
                ));
            }
        },
        Field::OneOf(options) => {
            let v = req_str(data, p, name)?;
            if !options.contains(&v) {
                return Err(field_err(
                    p,
                    name,
                    format!("expected one of {options:?}, got {v:?}"),
                ));
            }
        }
        Field::OptionalUser => {}
    }
    Ok(())
}

/// Checks that a link is absolute `https` on an allowed host.
pub fn check_link(raw: &str, rules: &ValidationRules) -> Result<String, String> {
    let parsed = url::Url::parse(raw)
        .map_err(|_| format!("expected an absolute https link, got {:?}", short(raw)))?;
    if parsed.scheme() != "https" {
        return Err(format!(
            "expected an https link, got scheme {:?}",
            parsed.scheme()
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("a link must not carry credentials".into());
    }
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    if !rules.allowed_link_hosts.contains(&host) {
        return Err(format!(
            "link host {host:?} is not in mail.allowed_link_hosts"
        ));
    }
    Ok(parsed.to_string())
}

/// Parses one `gebruiker.bijgewerkt` data object (also one line of a directory import).
pub fn parse_user_record(data: &Map<String, Value>, p: &str) -> Result<UserRecord, Rejection> {
    let gebruikersnummer = req_user(data, p, "gebruikersnummer")?;
    let naam = req_text(data, p, "naam")?.to_owned();
    let email = req_email(data, p, "email")?;
    let status = match req_str(data, p, "status")? {
        "actief" => UserStatus::Actief,
        "ingetrokken" => UserStatus::Ingetrokken,
        other => {
            return Err(field_err(
                p,
                "status",
                format!("expected \"actief\" or \"ingetrokken\", got {other:?}"),
            ));
        }
    };
    let Some(Value::Array(links)) = data.get("koppelingen") else {
        return Err(field_err(p, "koppelingen", "missing, or not a list".into()));
    };
    let mut koppelingen = Vec::with_capacity(links.len());
    for (i, link) in links.iter().enumerate() {
        let lp = format!("{p}koppelingen[{i}].");
        let Value::Object(l) = link else {
            return Err(Rejection::new(format!("{lp}: expected an object")));
        };
        let agb_code = req_agb(l, &lp)?;
        let Some(Value::Array(rechten_raw)) = l.get("rechten") else {
            return Err(field_err(&lp, "rechten", "missing, or not a list".into()));
        };
        let mut rechten = std::collections::BTreeSet::new();
        for r in rechten_raw {
            let r = r.as_str().and_then(Recht::parse).ok_or_else(|| {
                field_err(&lp, "rechten", format!("unknown right {r}; expected uitvragen, contracteren, onderhandelen or naleving"))
            })?;
            rechten.insert(r);
        }
        koppelingen.push(Koppeling {
            agb_code,
            rechten,
            tekenbevoegd: req_bool(l, &lp, "tekenbevoegd")?,
            contactpersoon: req_bool(l, &lp, "contactpersoon")?,
        });
    }
    Ok(UserRecord {
        gebruikersnummer,
        naam,
        email,
        status,
        koppelingen,
        versie: req_versie(data, p)?,
    })
}

/// The first place (`data.naam`, `data.koppelingen[0].agb_code`, a key) where
/// a string holds U+0000.
fn nul_path(m: &Map<String, Value>, prefix: &str) -> Option<String> {
    fn walk(v: &Value, path: String) -> Option<String> {
        match v {
            Value::String(s) => s.contains('\0').then_some(path),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, x)| walk(x, format!("{path}[{i}]"))),
            Value::Object(m) => nul_path(m, &format!("{path}.")),
            _ => None,
        }
    }
    m.iter().find_map(|(k, v)| {
        let path = format!("{prefix}{}", k.replace('\0', "\\u0000"));
        if k.contains('\0') {
            return Some(format!("{path} (a key)"));
        }
        walk(v, path)
    })
}

/// `application/json`, case-insensitive, with at most a `charset=utf-8`
/// parameter (RFC 9110 media type syntax; the value may be quoted).
fn check_media_type(ct: &str) -> Result<(), String> {
    let shown = short(ct);
    let mut parts = ct.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(format!("expected \"application/json\", got {shown:?}"));
    }
    for param in parts {
        let param = param.trim();
        if param.is_empty() {
            continue;
        }
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        let value = value.trim().trim_matches('"');
        if !name.trim().eq_ignore_ascii_case("charset") {
            return Err(format!(
                "only a charset parameter is allowed after application/json, got {shown:?}"
            ));
        }
        if !value.eq_ignore_ascii_case("utf-8") {
            return Err(format!(
                "the body must be UTF-8 (charset=utf-8), got {shown:?}"
            ));
        }
    }
    Ok(())
}

/// A top-level-looking `"name": "value"` in a JSON prefix, without parsing
/// the rest (values with escapes are not read: this is a hint, not a parser).
fn scan_string_member(head: &[u8], name: &str) -> Option<String> {
    let key = format!("\"{name}\"");
    let text = String::from_utf8_lossy(head);
    let mut rest = text.as_ref();
    while let Some(at) = rest.find(&key) {
        rest = &rest[at + key.len()..];
        let Some(after_colon) = rest.trim_start().strip_prefix(':') else {
            continue;
        };
        let value = after_colon.trim_start().strip_prefix('"')?;
        let end = value.find(['"', '\\'])?;
        return Some(value[..end].chars().take(128).collect());
    }
    None
}

fn field_err(prefix: &str, name: &str, what: String) -> Rejection {
    Rejection::new(format!("{prefix}{name}: {what}"))
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

fn req_str<'a>(m: &'a Map<String, Value>, p: &str, name: &str) -> Result<&'a str, Rejection> {
    match m.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(field_err(p, name, "expected a string".into())),
        None => Err(field_err(p, name, "missing".into())),
    }
}

fn req_text<'a>(m: &'a Map<String, Value>, p: &str, name: &str) -> Result<&'a str, Rejection> {
    let s = req_str(m, p, name)?;
    let n = s.chars().count();
    if s.trim().is_empty() {
        return Err(field_err(p, name, "must not be empty".into()));
    }
    if n > MAX_TEXT_CHARS {
        return Err(field_err(
            p,
            name,
            format!("{n} characters, more than the {MAX_TEXT_CHARS} allowed"),
        ));
    }
    if s.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
    {
        return Err(field_err(p, name, "contains control characters".into()));
    }
    Ok(s)
}

fn req_bool(m: &Map<String, Value>, p: &str, name: &str) -> Result<bool, Rejection> {
    m.get(name)
        .and_then(Value::as_bool)
        .ok_or_else(|| field_err(p, name, "expected true or false".into()))
}

fn req_versie(m: &Map<String, Value>, p: &str) -> Result<i64, Rejection> {
    match m.get("versie").and_then(Value::as_i64) {
        Some(v) if v >= 0 => Ok(v),
        _ => Err(field_err(p, "versie", "expected an integer >= 0".into())),
    }
}

fn req_agb(m: &Map<String, Value>, p: &str) -> Result<AgbCode, Rejection> {
    AgbCode::parse(req_str(m, p, "agb_code")?).map_err(|e| field_err(p, "agb_code", e.0))
}

fn req_user(m: &Map<String, Value>, p: &str, name: &str) -> Result<Gebruikersnummer, Rejection> {
    Gebruikersnummer::parse(req_str(m, p, name)?).map_err(|e| field_err(p, name, e.0))
}

fn opt_user(
    m: &Map<String, Value>,
    p: &str,
    name: &str,
) -> Result<Option<Gebruikersnummer>, Rejection> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => req_user(m, p, name).map(Some),
    }
}

fn req_email(m: &Map<String, Value>, p: &str, name: &str) -> Result<EmailAddress, Rejection> {
    EmailAddress::parse(req_str(m, p, name)?).map_err(|e| field_err(p, name, e.0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_events_final_state_reads_from_its_state_and_its_deliveries() {
        use super::super::delivery::DeliveryStatus::*;
        use EventState::*;
        let table: [(EventState, &[DeliveryStatus], &str); 9] = [
            (Unroutable, &[], "unroutable"),
            (Unroutable, &[Sent], "unroutable"),
            (Stale, &[], "stale (ignored)"),
            (Ignored, &[], "ignored"),
            (Applied, &[], "done (no mail)"),
            (Accepted, &[Sent, Sending], "in progress"),
            (Accepted, &[Failed, Pending], "in progress"),
            (Accepted, &[Sent, Failed, Cancelled], "done with failures"),
            (Accepted, &[Sent, Cancelled], "done"),
        ];
        for (state, statuses, want) in table {
            assert_eq!(state.final_state(statuses), want, "{state:?} {statuses:?}");
        }
        for state in EventState::ALL {
            assert_eq!(EventState::parse(state.as_str()), Some(state));
        }
        assert_eq!(EventState::parse("Accepted"), None);
    }

    use super::*;

    fn rules() -> ValidationRules {
        ValidationRules {
            allowed_link_hosts: vec!["zip.example.nl".into()],
        }
    }

    fn voorstel() -> Value {
        serde_json::json!({
            "specversion": "1.0", "id": "e1", "source": "/x", "type": "contract.voorstel_aangeboden",
            "time": "2026-10-14T08:05:00Z", "datacontenttype": "application/json",
            "data": {"agb_code": "04123456", "zorgverzekeraar": {"uzovi": "3311", "naam": "ZN"},
                "url": "https://zip.example.nl/contract/C-1", "contract_id": "C-1",
                "contract_naam": "Overeenkomst", "jaar": 2027, "uiterste_acceptatiedatum": "2026-11-12"}
        })
    }

    fn reject(v: &Value) -> String {
        parse_event(v.to_string().as_bytes(), &rules())
            .unwrap_err()
            .reason
    }

    #[test]
    fn valid_module_event_parses() {
        let e = parse_event(voorstel().to_string().as_bytes(), &rules()).unwrap();
        assert_eq!(e.event_type, EventType::VoorstelAangeboden);
        let EventBody::Module(m) = e.body else {
            panic!()
        };
        assert_eq!(m.agb_code.as_str(), "04123456");
        assert_eq!(m.data["jaar"], 2027);
    }

    #[test]
    fn rejections_name_the_field() {
        let mut v = voorstel();
        v["data"]["url"] = "https://evil.example/x".into();
        assert!(reject(&v).contains("data.url"));
        let mut v = voorstel();
        v["data"]["url"] = "http://zip.example.nl/x".into();
        assert!(reject(&v).contains("https"));
        let mut v = voorstel();
        v["data"]["agb_code"] = "123".into();
        assert!(reject(&v).starts_with("data.agb_code"));
        let mut v = voorstel();
        v["data"]["uiterste_acceptatiedatum"] = "12-11-2026".into();
        assert!(reject(&v).contains("YYYY-MM-DD"));
        let mut v = voorstel();
        v["type"] = "contract.nieuw_iets".into();
        assert!(reject(&v).contains("unknown event type"));
        let mut v = voorstel();
        v["specversion"] = "0.3".into();
        assert!(reject(&v).contains("specversion"));
        let mut v = voorstel();
        v["data"]["contract_naam"] = "x".repeat(2001).into();
        assert!(reject(&v).contains("2000"));
        let mut v = voorstel();
        v.as_object_mut().unwrap().remove("time");
        assert!(reject(&v).contains("time: missing"));
    }

    #[test]
    fn bad_bytes_are_rejected() {
        assert!(
            parse_event(b"{not json", &rules())
                .unwrap_err()
                .reason
                .contains("JSON")
        );
        assert!(
            parse_event(&[0xff, 0xfe], &rules())
                .unwrap_err()
                .reason
                .contains("UTF-8")
        );
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        assert!(
            parse_event(&big, &rules())
                .unwrap_err()
                .reason
                .contains("64 KiB")
        );
    }

    #[test]
    fn extra_fields_do_not_reach_templates() {
        let mut v = voorstel();
        v["data"]["sneaky"] = "<script>".into();
        let e = parse_event(v.to_string().as_bytes(), &rules()).unwrap();
        let EventBody::Module(m) = e.body else {
            panic!()
        };
        assert!(m.data.get("sneaky").is_none());
    }

    #[test]
    fn a_nul_anywhere_is_rejected_with_its_place() {
        let mut v = voorstel();
        v["data"]["zorgverzekeraar"]["naam"] = "a\u{0}b".into();
        assert!(
            reject(&v).starts_with("data.zorgverzekeraar.naam: contains a NUL"),
            "{}",
            reject(&v)
        );
        let mut v = voorstel();
        v["source"] = "\u{0}".into();
        assert!(reject(&v).starts_with("source: contains a NUL"));
    }

    #[test]
    fn media_types_are_parsed() {
        for ok in [
            "application/json",
            "APPLICATION/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert_eq!(check_media_type(ok), Ok(()), "{ok}");
        }
        assert!(
            check_media_type("text/json")
                .unwrap_err()
                .contains("expected")
        );
        assert!(
            check_media_type("application/json; charset=latin1")
                .unwrap_err()
                .contains("charset=utf-8")
        );
        assert!(
            check_media_type("application/json; q=1")
                .unwrap_err()
                .contains("only a charset")
        );
    }

    #[test]
    fn an_oversized_body_gives_its_hint_from_the_prefix() {
        let mut body =
            br#"{"specversion":"1.0","id":"abc-1","type":"contract.x","data":""#.to_vec();
        body.resize(MAX_BODY_BYTES * 2, b'x');
        let hint = envelope_hint(&body);
        assert_eq!(hint.id.as_deref(), Some("abc-1"));
        assert_eq!(hint.event_type.as_deref(), Some("contract.x"));
    }
}
