//! The recipient rules of the contract, as pure functions: an event and a
//! directory snapshot in, the deliveries to create (one per kind and distinct
//! address) with the reason for each out.

use super::delivery::MailKind;
use super::directory::{AgbSnapshot, DirectoryUser, Member, Recht};
use super::event::{EventState, EventType, ModuleEvent};
use super::ids::{EmailAddress, Gebruikersnummer};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Why a user is a recipient: the contract's set names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// U(r): active users of the AGB code with right r.
    U(Recht),
    /// T: U(contracteren) that are tekenbevoegd.
    T,
    /// CP: the contact persons of the AGB code.
    Cp,
    /// ACTOR: the user named in the event.
    Actor,
    /// The user the mail is about, at its own current address.
    User,
    /// A literal address (the security notice to an old address).
    Address,
}

impl Rule {
    /// Parses [`Self::label`] (the stored form).
    pub fn parse(label: &str) -> Option<Self> {
        Some(match label {
            "T" => Self::T,
            "CP" => Self::Cp,
            "ACTOR" => Self::Actor,
            "USER" => Self::User,
            "ADDRESS" => Self::Address,
            _ => Self::U(Recht::parse(label.strip_prefix("U(")?.strip_suffix(')')?)?),
        })
    }

    /// The rule as shown to operators: `U(contracteren)`, `T`, `CP`, `ACTOR`, ...
    pub fn label(self) -> String {
        match self {
            Self::U(r) => format!("U({})", r.as_str()),
            Self::T => "T".into(),
            Self::Cp => "CP".into(),
            Self::Actor => "ACTOR".into(),
            Self::User => "USER".into(),
            Self::Address => "ADDRESS".into(),
        }
    }
}

/// A user a delivery serves, with the directory version it was chosen at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub gebruikersnummer: Gebruikersnummer,
    pub versie: i64,
    pub rule: Rule,
}

/// One mail to create: a kind to one address, serving one or more users.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedDelivery {
    pub kind: MailKind,
    pub address: EmailAddress,
    /// Every rule that chose this address, deduplicated, in order.
    pub rules: Vec<Rule>,
    /// Empty only for [`Rule::Address`].
    pub users: Vec<Served>,
    /// Distinguishes several notices of one kind for one event (e.g. the user
    /// an `beheer.onbestelbaar` is about); empty otherwise.
    pub about: String,
    /// Extra template context for notices (`notice.*`).
    pub notice: Option<Value>,
}

impl PlannedDelivery {
    /// Rules joined for display, e.g. `U(contracteren)+ACTOR`.
    pub fn rule_label(&self) -> String {
        Rules::label_of(&self.rules)
    }
}

/// Why a mail reached its address, as the mail itself says it: the rules
/// that chose the address and how many users it serves (a shared address
/// is told so, without naming the others).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressee {
    /// Deduplicated, in the delivery's order.
    pub rules: Vec<Rule>,
    pub users: usize,
}

impl Addressee {
    /// The addressee of a delivery planned with `rules` for `users` users.
    pub fn planned(rules: &Rules, users: usize) -> Self {
        Self {
            rules: rules.0.clone(),
            users,
        }
    }

    /// The addressee of a delivery planned with `planned` rules once some
    /// of its users were dropped or moved: the users still at the address
    /// have the stored `rules` (one per user, the first that chose them),
    /// and `actor_here` says whether the event's actor is one of them.
    /// Rules are kept in the planned order.
    pub fn of_users(planned: &Rules, rules: &[Rule], actor_here: bool) -> Self {
        let applies = |r: &Rule| rules.contains(r) || (*r == Rule::Actor && actor_here);
        let mut kept: Vec<Rule> = planned.0.iter().copied().filter(applies).collect();
        for r in rules {
            if !kept.contains(r) {
                kept.push(*r);
            }
        }
        Self {
            rules: kept,
            users: rules.len(),
        }
    }

    /// The template context `ontvanger`: `redenen` (one `{regel, recht}` per
    /// rule, `recht` the right's title for U) and `gedeeld` (the number of
    /// users sharing the address, or null when it serves one).
    pub fn context(&self) -> Value {
        let redenen: Vec<Value> = self
            .rules
            .iter()
            .map(|r| match r {
                Rule::U(recht) => json!({ "regel": "U", "recht": recht.title() }),
                other => json!({ "regel": other.label(), "recht": null }),
            })
            .collect();
        json!({
            "redenen": redenen,
            "gedeeld": (self.users > 1).then_some(self.users),
        })
    }
}

/// Every rule that chose a delivery's address, as the delivery stores them
/// (joined by `+`: `U(onderhandelen)+ACTOR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules(pub Vec<Rule>);

impl Rules {
    /// `rules` joined for display and storage.
    pub fn label_of(rules: &[Rule]) -> String {
        rules
            .iter()
            .map(|r| r.label())
            .collect::<Vec<_>>()
            .join("+")
    }

    /// The stored form.
    pub fn label(&self) -> String {
        Self::label_of(&self.0)
    }

    /// Parses the stored form; `None` when any part is not a rule.
    pub fn parse(label: &str) -> Option<Self> {
        label
            .split('+')
            .map(Rule::parse)
            .collect::<Option<Vec<_>>>()
            .map(Self)
    }

    /// A literal address (no users to re-check).
    pub fn is_address(&self) -> bool {
        self.0 == [Rule::Address]
    }
}

/// The send-time re-check's decision for a delivery planned for one
/// address, from the addresses its served users (still active) have now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressCheck {
    /// Nobody it served is active any more: the delivery is cancelled.
    NobodyLeft,
    /// Send to `address`: the planned one while any served user still has
    /// it. Users who shared it and no longer do are at `others`, each to get
    /// a delivery of its own.
    Send {
        address: String,
        others: Vec<String>,
    },
}

/// Decides [`AddressCheck`] for a delivery planned for `planned` whose
/// active served users now have the addresses `active`.
pub fn recheck_addresses<'a>(
    planned: &str,
    active: impl IntoIterator<Item = &'a str>,
) -> AddressCheck {
    let mut addresses: Vec<&str> = active.into_iter().collect();
    addresses.sort_unstable();
    addresses.dedup();
    if let Some(pos) = addresses.iter().position(|a| *a == planned) {
        let kept = addresses.remove(pos);
        addresses.insert(0, kept);
    }
    let mut it = addresses.into_iter().map(str::to_owned);
    match it.next() {
        None => AddressCheck::NobodyLeft,
        Some(address) => AddressCheck::Send {
            address,
            others: it.collect(),
        },
    }
}

/// How an event's resolution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// At least one module mail.
    Routed,
    /// Nobody had the right: the contact persons were told instead.
    NoRecipientNotice,
    /// Nobody at all, not even a contact person: recorded and alerted.
    Unroutable,
}

impl Routing {
    /// The outcome as logs and reports name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Routed => "routed",
            Self::NoRecipientNotice => "no_recipient_notice",
            Self::Unroutable => "unroutable",
        }
    }

    /// The event state stored for this outcome.
    pub fn event_state(self) -> EventState {
        match self {
            Self::Routed | Self::NoRecipientNotice => EventState::Accepted,
            Self::Unroutable => EventState::Unroutable,
        }
    }
}

/// The result of resolving one module event.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    pub deliveries: Vec<PlannedDelivery>,
    pub routing: Routing,
    /// Things worth recording that did not produce a mail (unknown actor, ...).
    pub notes: Vec<String>,
    /// A notice was due but the AGB has no active contact person to get it.
    pub unroutable_notice: bool,
}

/// Groups (user, rule) pairs by address into planned deliveries of one kind.
///
/// Addresses group by their lower-cased form. A shared address registered
/// in several casings is sent to as the user with the lowest
/// gebruikersnummer registered it (the send-time re-check picks the same
/// way), so the choice does not depend on which rule saw whom first.
#[derive(Default)]
struct Grouper {
    by_key: BTreeMap<(String, String), usize>,
    out: Vec<PlannedDelivery>,
    /// Per planned delivery: whose registered form its address has.
    form_of: Vec<Gebruikersnummer>,
}

impl Grouper {
    fn add(&mut self, kind: MailKind, who: Who<'_>, rule: Rule, notice: Option<&Value>) {
        let (address, served) = match who {
            Who::Member(m) => (
                m.email.clone(),
                Some(Served {
                    gebruikersnummer: m.gebruikersnummer.clone(),
                    versie: m.versie,
                    rule,
                }),
            ),
            Who::User(u) => (
                u.email.clone(),
                Some(Served {
                    gebruikersnummer: u.gebruikersnummer.clone(),
                    versie: u.versie,
                    rule,
                }),
            ),
        };
        let key = (kind.as_str().to_owned(), address.as_str().to_owned());
        let nr = match who {
            Who::Member(m) => &m.gebruikersnummer,
            Who::User(u) => &u.gebruikersnummer,
        };
        let idx = match self.by_key.get(&key) {
            Some(&idx) => {
                if *nr < self.form_of[idx] {
                    self.out[idx].address = address;
                    self.form_of[idx] = nr.clone();
                }
                idx
            }
            None => {
                self.out.push(PlannedDelivery {
                    kind,
                    address,
                    rules: vec![],
                    users: vec![],
                    about: String::new(),
                    notice: notice.cloned(),
                });
                self.form_of.push(nr.clone());
                self.by_key.insert(key, self.out.len() - 1);
                self.out.len() - 1
            }
        };
        let d = &mut self.out[idx];
        if !d.rules.contains(&rule) {
            d.rules.push(rule);
        }
        if let Some(s) = served
            && !d
                .users
                .iter()
                .any(|u| u.gebruikersnummer == s.gebruikersnummer)
        {
            d.users.push(s);
        }
    }
}

enum Who<'a> {
    Member(&'a Member),
    User(&'a DirectoryUser),
}

fn active_with(dir: &AgbSnapshot, right: Recht) -> impl Iterator<Item = &Member> {
    dir.members
        .iter()
        .filter(move |m| m.is_active() && m.rechten.contains(&right))
}

fn signers(dir: &AgbSnapshot) -> impl Iterator<Item = &Member> {
    active_with(dir, Recht::Contracteren).filter(|m| m.tekenbevoegd)
}

/// Active contact persons of the AGB code.
pub fn contact_persons(dir: &AgbSnapshot) -> impl Iterator<Item = &Member> {
    dir.members
        .iter()
        .filter(|m| m.is_active() && m.contactpersoon)
}

/// Resolves the recipients of a module event.
///
/// `actor` is the directory entry of `data.actor_gebruikersnummer`, if the
/// event names one and the directory knows it (any AGB code).
pub fn resolve_module(
    event: &ModuleEvent,
    event_id: &str,
    dir: &AgbSnapshot,
    actor: Option<&DirectoryUser>,
) -> Resolution {
    use EventType::*;
    let mut g = Grouper::default();
    let mut notes = Vec::new();
    add_rights_holders(&mut g, event.event_type, dir);
    if matches!(
        event.event_type,
        ContractGeaccepteerd | OnderhandelingVoorstelGedaan | OnderhandelingGeaccordeerd
    ) && let Some(number) = &event.actor
    {
        add_actor_copy(&mut g, event.event_type, number, actor, &mut notes);
    }

    let module_mails = g.out.len();
    let needs_signer = matches!(event.event_type, VoorstelAangeboden | HerinneringAcceptatie);
    let no_signer = needs_signer && signers(dir).next().is_none();
    let reminder_has_contracteren_users = event.event_type == HerinneringAcceptatie
        && active_with(dir, Recht::Contracteren).next().is_some();
    let routing = if module_mails == 0 && !reminder_has_contracteren_users {
        add_no_recipient_notice(&mut g, event, event_id, dir)
    } else if no_signer {
        add_no_signer_notice(&mut g, event, event_id, dir, module_mails, &mut notes)
    } else {
        Routing::Routed
    };

    let unroutable_notice =
        routing != Routing::Unroutable && no_signer && contact_persons(dir).next().is_none();
    Resolution {
        deliveries: g.out,
        routing,
        notes,
        unroutable_notice,
    }
}

/// The module mail for everyone the event type's rule names: the signers
/// for an acceptance reminder, both rights for a finished negotiation, the
/// module's right otherwise.
fn add_rights_holders(g: &mut Grouper, event_type: EventType, dir: &AgbSnapshot) {
    let kind = MailKind::Module(event_type);
    match event_type {
        EventType::HerinneringAcceptatie => {
            for m in signers(dir) {
                g.add(kind, Who::Member(m), Rule::T, None);
            }
        }
        EventType::OnderhandelingAfgerond => {
            for r in [Recht::Onderhandelen, Recht::Contracteren] {
                for m in active_with(dir, r) {
                    g.add(kind, Who::Member(m), Rule::U(r), None);
                }
            }
        }
        _ => {
            let right = event_type.right().expect("module event has a right");
            for m in active_with(dir, right) {
                g.add(kind, Who::Member(m), Rule::U(right), None);
            }
        }
    }
}

/// The copy for the user who performed the action, when the directory has
/// them active; a note says why there is none otherwise.
fn add_actor_copy(
    g: &mut Grouper,
    event_type: EventType,
    number: &Gebruikersnummer,
    actor: Option<&DirectoryUser>,
    notes: &mut Vec<String>,
) {
    match actor {
        Some(u) if u.status == super::directory::UserStatus::Actief => {
            g.add(
                MailKind::Module(event_type),
                Who::User(u),
                Rule::Actor,
                None,
            );
        }
        Some(_) => notes.push(format!("actor {number} is revoked: no copy")),
        None => notes.push(format!(
            "actor {number} is unknown to the directory: no copy"
        )),
    }
}

/// Nobody has the right: the contact persons hear of it
/// (`beheer.geen_ontvanger`); without them the event is unroutable.
fn add_no_recipient_notice(
    g: &mut Grouper,
    event: &ModuleEvent,
    event_id: &str,
    dir: &AgbSnapshot,
) -> Routing {
    let right = event.event_type.right().expect("module event has a right");
    let notice = json!({
        "event_id": event_id,
        "event_type": event.event_type.as_str(),
        "event_label": event.event_type.label(),
        "module": right.module(),
        "recht": right.as_str(),
        "agb_code": event.agb_code.as_str(),
        "zorgverzekeraar_naam": event.zorgverzekeraar.naam,
    });
    for m in contact_persons(dir) {
        g.add(
            MailKind::GeenOntvanger,
            Who::Member(m),
            Rule::Cp,
            Some(&notice),
        );
    }
    if g.out.is_empty() {
        Routing::Unroutable
    } else {
        Routing::NoRecipientNotice
    }
}

/// An offer or reminder for a practice without an active signer: the
/// contact persons (and, for a reminder, the users with `contracteren`)
/// get `beheer.geen_tekenbevoegde`.
fn add_no_signer_notice(
    g: &mut Grouper,
    event: &ModuleEvent,
    event_id: &str,
    dir: &AgbSnapshot,
    module_mails: usize,
    notes: &mut Vec<String>,
) -> Routing {
    let notice = json!({
        "event_id": event_id,
        "event_type": event.event_type.as_str(),
        "event_label": event.event_type.label(),
        "contract_naam": event.data["contract_naam"],
        "zorgverzekeraar_naam": event.zorgverzekeraar.naam,
        "uiterste_acceptatiedatum": event.data["uiterste_acceptatiedatum"],
        "agb_code": event.agb_code.as_str(),
    });
    let before = g.out.len();
    if event.event_type == EventType::HerinneringAcceptatie {
        // T is empty: the reminder turns into the notice for U(contracteren) and CP.
        for m in active_with(dir, Recht::Contracteren) {
            g.add(
                MailKind::GeenTekenbevoegde,
                Who::Member(m),
                Rule::U(Recht::Contracteren),
                Some(&notice),
            );
        }
    }
    for m in contact_persons(dir) {
        g.add(
            MailKind::GeenTekenbevoegde,
            Who::Member(m),
            Rule::Cp,
            Some(&notice),
        );
    }
    if contact_persons(dir).next().is_none() {
        notes.push(format!(
            "{} not sent: no active contact person",
            MailKind::GeenTekenbevoegde.as_str()
        ));
    }
    if module_mails > 0 {
        Routing::Routed
    } else if g.out.len() > before {
        Routing::NoRecipientNotice
    } else {
        Routing::Unroutable
    }
}

/// Contact-person notices for a revoked user, per AGB code it was linked to:
/// the confirmation, and the warning when it was the last active signer.
///
/// `dir` is the snapshot of one of the user's AGB codes taken *after* the
/// revocation was applied.
pub fn revocation_notices(
    revoked: &DirectoryUser,
    was_signer_here: bool,
    dir: &AgbSnapshot,
) -> Vec<PlannedDelivery> {
    let mut g = Grouper::default();
    let notice = json!({
        "gebruiker_naam": revoked.naam,
        "gebruikersnummer": revoked.gebruikersnummer.as_str(),
        "agb_code": dir.agb_code.as_str(),
    });
    for m in contact_persons(dir) {
        g.add(
            MailKind::CertificaatIngetrokken,
            Who::Member(m),
            Rule::Cp,
            Some(&notice),
        );
    }
    if was_signer_here && signers(dir).next().is_none() {
        for m in contact_persons(dir) {
            g.add(
                MailKind::LaatsteTekenbevoegdeIngetrokken,
                Who::Member(m),
                Rule::Cp,
                Some(&notice),
            );
        }
    }
    for d in &mut g.out {
        d.about = format!("{}:{}", dir.agb_code, revoked.gebruikersnummer);
    }
    g.out
}

/// The two mails of an address change: a confirmation to the user's new
/// address, and a security notice to the address the directory held before.
pub fn address_change_mails(
    user_after: &DirectoryUser,
    old_address: &EmailAddress,
) -> Vec<PlannedDelivery> {
    let notice = json!({ "gebruiker_naam": user_after.naam });
    let mut out = vec![PlannedDelivery {
        kind: MailKind::EmailGewijzigd,
        address: user_after.email.clone(),
        rules: vec![Rule::User],
        users: vec![Served {
            gebruikersnummer: user_after.gebruikersnummer.clone(),
            versie: user_after.versie,
            rule: Rule::User,
        }],
        about: String::new(),
        notice: Some(notice.clone()),
    }];
    if *old_address != user_after.email {
        out.push(PlannedDelivery {
            kind: MailKind::EmailGewijzigdOudAdres,
            address: old_address.clone(),
            rules: vec![Rule::Address],
            users: vec![],
            about: String::new(),
            notice: Some(notice),
        });
    }
    out
}

/// The escalation when a module mail to a user ended failed: a
/// `beheer.onbestelbaar` notice to the AGB's contact persons, naming the user
/// (never the address).
pub fn undeliverable_notices(
    dir: &AgbSnapshot,
    user: &DirectoryUser,
    event_id: &str,
    event_type: EventType,
    reden: &str,
) -> Vec<PlannedDelivery> {
    let mut g = Grouper::default();
    let notice = json!({
        "gebruiker_naam": user.naam,
        "gebruikersnummer": user.gebruikersnummer.as_str(),
        "event_id": event_id,
        "event_type": event_type.as_str(),
        "event_label": event_type.label(),
        "reden": reden,
        "agb_code": dir.agb_code.as_str(),
    });
    for m in contact_persons(dir) {
        g.add(
            MailKind::Onbestelbaar,
            Who::Member(m),
            Rule::Cp,
            Some(&notice),
        );
    }
    for d in &mut g.out {
        d.about = user.gebruikersnummer.to_string();
    }
    g.out
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_addressee_keeps_the_planned_order_and_tells_a_shared_address() {
        let planned = Rules(vec![Rule::U(Recht::Onderhandelen), Rule::Actor]);
        let a = Addressee::planned(&planned, 2);
        assert_eq!(
            a.context(),
            json!({
                "redenen": [{"regel": "U", "recht": "Onderhandelen"}, {"regel": "ACTOR", "recht": null}],
                "gedeeld": 2,
            })
        );
        // The actor moved away: the one user left was chosen by U only.
        let left = Addressee::of_users(&planned, &[Rule::U(Recht::Onderhandelen)], false);
        assert_eq!(left.rules, vec![Rule::U(Recht::Onderhandelen)]);
        assert_eq!(left.context()["gedeeld"], Value::Null);
        // The actor stayed; its stored rule is U (the first that chose it).
        let actor = Addressee::of_users(&planned, &[Rule::U(Recht::Onderhandelen)], true);
        assert_eq!(actor.rules, planned.0);
        assert_eq!(
            Addressee::planned(&Rules(vec![Rule::Address]), 0).context()["gedeeld"],
            Value::Null
        );
    }
    #[test]
    fn the_recheck_keeps_the_planned_address_while_anyone_has_it() {
        let send = |address: &str, others: &[&str]| AddressCheck::Send {
            address: address.into(),
            others: others.iter().map(|o| (*o).to_owned()).collect(),
        };
        let table: [(&str, &[&str], AddressCheck); 5] = [
            ("a@x.nl", &[], AddressCheck::NobodyLeft),
            ("a@x.nl", &["a@x.nl", "a@x.nl"], send("a@x.nl", &[])),
            (
                "b@x.nl",
                &["a@x.nl", "c@x.nl", "b@x.nl"],
                send("b@x.nl", &["a@x.nl", "c@x.nl"]),
            ),
            ("old@x.nl", &["new@x.nl"], send("new@x.nl", &[])),
            (
                "old@x.nl",
                &["z@x.nl", "m@x.nl", "z@x.nl"],
                send("m@x.nl", &["z@x.nl"]),
            ),
        ];
        for (planned, active, want) in table {
            assert_eq!(
                recheck_addresses(planned, active.iter().copied()),
                want,
                "{planned} {active:?}"
            );
        }
    }

    #[test]
    fn a_rule_parses_from_its_label() {
        let mut rules = vec![Rule::T, Rule::Cp, Rule::Actor, Rule::User, Rule::Address];
        rules.extend(
            [
                Recht::Uitvragen,
                Recht::Contracteren,
                Recht::Onderhandelen,
                Recht::Naleving,
            ]
            .map(Rule::U),
        );
        for r in rules {
            assert_eq!(Rule::parse(&r.label()), Some(r));
        }
        for bad in ["U(iets)", "U(contracteren", "address", ""] {
            assert_eq!(Rule::parse(bad), None, "{bad}");
        }
        let both = Rules::parse("U(onderhandelen)+ACTOR").unwrap();
        assert_eq!(both.0, [Rule::U(Recht::Onderhandelen), Rule::Actor]);
        assert_eq!(both.label(), "U(onderhandelen)+ACTOR");
        assert!(!both.is_address() && Rules::parse("ADDRESS").unwrap().is_address());
        assert_eq!(Rules::parse("T+"), None);
    }

    use super::*;
    use crate::domain::directory::UserStatus;
    use crate::domain::event::{EventType, ModuleEvent, Zorgverzekeraar};
    use crate::domain::ids::AgbCode;

    fn member(
        nr: &str,
        email: &str,
        rechten: &[Recht],
        teken: bool,
        cp: bool,
        active: bool,
    ) -> Member {
        Member {
            gebruikersnummer: Gebruikersnummer::parse(nr).unwrap(),
            naam: format!("Gebruiker {nr}"),
            email: EmailAddress::parse(email).unwrap(),
            status: if active {
                UserStatus::Actief
            } else {
                UserStatus::Ingetrokken
            },
            versie: 1,
            rechten: rechten.iter().copied().collect(),
            tekenbevoegd: teken,
            contactpersoon: cp,
        }
    }

    fn dir(members: Vec<Member>) -> AgbSnapshot {
        AgbSnapshot {
            agb_code: AgbCode::parse("04123456").unwrap(),
            naam: None,
            members,
        }
    }

    fn event(t: EventType, actor: Option<&str>) -> ModuleEvent {
        ModuleEvent {
            event_type: t,
            agb_code: AgbCode::parse("04123456").unwrap(),
            zorgverzekeraar: Zorgverzekeraar {
                uzovi: "3311".into(),
                naam: "ZN".into(),
            },
            url: "https://zip.example.nl/x".into(),
            actor: actor.map(|a| Gebruikersnummer::parse(a).unwrap()),
            data: serde_json::json!({"contract_naam": "C", "uiterste_acceptatiedatum": "2026-11-12"}),
        }
    }

    fn summary(r: &Resolution) -> Vec<(String, String, String)> {
        let mut v: Vec<_> = r
            .deliveries
            .iter()
            .map(|d| {
                (
                    d.kind.as_str().to_owned(),
                    d.address.to_string(),
                    d.rule_label(),
                )
            })
            .collect();
        v.sort();
        v
    }

    use Recht::*;
    const A: &str = "10000000000001";
    const B: &str = "10000000000002";
    const C: &str = "10000000000003";

    #[test]
    fn a_shared_address_in_two_casings_is_one_mail_sent_as_the_lowest_number_registered_it() {
        // C (the higher number) comes first.
        let d = dir(vec![
            member(C, "gedeeld@p.nl", &[Onderhandelen], false, false, true),
            member(B, "Gedeeld@P.nl", &[Onderhandelen], false, true, true),
        ]);
        let actor = DirectoryUser {
            gebruikersnummer: Gebruikersnummer::parse(C).unwrap(),
            naam: "C".into(),
            email: EmailAddress::parse("gedeeld@p.nl").unwrap(),
            status: UserStatus::Actief,
            versie: 1,
        };
        for actor in [None, Some(&actor)] {
            let r = resolve_module(
                &event(EventType::OnderhandelingGeaccordeerd, Some(C)),
                "e",
                &d,
                actor,
            );
            assert_eq!(r.deliveries.len(), 1);
            assert_eq!(r.deliveries[0].address.as_str(), "gedeeld@p.nl");
            assert_eq!(r.deliveries[0].address.registered(), "Gedeeld@P.nl");
            assert_eq!(r.deliveries[0].users.len(), 2);
        }
    }

    #[test]
    fn rules_per_event_type() {
        let d = dir(vec![
            member(A, "a@p.nl", &[Uitvragen, Contracteren], true, true, true),
            member(
                B,
                "Gedeeld@P.nl",
                &[Contracteren, Onderhandelen],
                false,
                false,
                true,
            ),
            member(
                C,
                "gedeeld@p.nl",
                &[Onderhandelen, Naleving],
                false,
                false,
                true,
            ),
            member(
                "10000000000009",
                "weg@p.nl",
                &[Uitvragen, Contracteren, Onderhandelen, Naleving],
                true,
                true,
                false,
            ),
        ]);
        let k = |t: EventType| t.as_str().to_owned();
        // Every module row of the contract: U(r) by the event's module, T for the
        // acceptance reminder, U(onderhandelen) ∪ U(contracteren) for afgerond.
        // The revoked user (…09) has every right and never appears.
        let u_uit = vec![("a@p.nl", "U(uitvragen)")];
        let u_con = vec![
            ("a@p.nl", "U(contracteren)"),
            ("gedeeld@p.nl", "U(contracteren)"),
        ];
        let u_ond = vec![("gedeeld@p.nl", "U(onderhandelen)")];
        let cases: Vec<(EventType, Vec<(&str, &str)>)> = vec![
            (EventType::VragenlijstKlaargezet, u_uit.clone()),
            (EventType::HerinneringSluitingsdatum, u_uit.clone()),
            (EventType::AanvullingGevraagd, u_uit.clone()),
            (EventType::UitvraagBeoordeeld, u_uit),
            (EventType::VoorstelAangeboden, u_con.clone()),
            (EventType::HerinneringAcceptatie, vec![("a@p.nl", "T")]),
            (EventType::ContractGeaccepteerd, u_con.clone()),
            (EventType::AdministratiefVastgelegd, u_con),
            (EventType::OnderhandelingVoorstelGedaan, u_ond.clone()),
            (EventType::OnderhandelingGeaccordeerd, u_ond),
            (
                EventType::OnderhandelingAfgerond,
                vec![
                    ("a@p.nl", "U(contracteren)"),
                    ("gedeeld@p.nl", "U(onderhandelen)+U(contracteren)"),
                ],
            ),
            (
                EventType::Aanleververzoek,
                vec![("gedeeld@p.nl", "U(naleving)")],
            ),
        ];
        assert_eq!(
            cases.len(),
            EventType::ALL.iter().filter(|t| t.is_module()).count()
        );
        for (t, want) in cases {
            let r = resolve_module(&event(t, None), "e1", &d, None);
            let want: Vec<_> = want
                .into_iter()
                .map(|(a, rule)| (k(t), a.to_owned(), rule.to_owned()))
                .collect();
            assert_eq!(summary(&r), want, "{t:?}");
            assert_eq!(r.routing, Routing::Routed);
        }
    }

    #[test]
    fn actor_gets_one_copy_and_revoked_or_unknown_actors_none() {
        let d = dir(vec![member(
            A,
            "a@p.nl",
            &[Onderhandelen],
            false,
            true,
            true,
        )]);
        let actor_same = DirectoryUser {
            gebruikersnummer: Gebruikersnummer::parse(A).unwrap(),
            naam: "A".into(),
            email: EmailAddress::parse("A@p.nl").unwrap(),
            status: UserStatus::Actief,
            versie: 1,
        };
        let r = resolve_module(
            &event(EventType::OnderhandelingGeaccordeerd, Some(A)),
            "e",
            &d,
            Some(&actor_same),
        );
        assert_eq!(r.deliveries.len(), 1);
        assert_eq!(r.deliveries[0].rule_label(), "U(onderhandelen)+ACTOR");
        let mut other = actor_same.clone();
        other.gebruikersnummer = Gebruikersnummer::parse(C).unwrap();
        other.email = EmailAddress::parse("elders@q.nl").unwrap();
        let r = resolve_module(
            &event(EventType::OnderhandelingGeaccordeerd, Some(C)),
            "e",
            &d,
            Some(&other),
        );
        assert_eq!(r.deliveries.len(), 2);
        other.status = UserStatus::Ingetrokken;
        let r = resolve_module(
            &event(EventType::OnderhandelingGeaccordeerd, Some(C)),
            "e",
            &d,
            Some(&other),
        );
        assert_eq!(r.deliveries.len(), 1);
        assert!(r.notes[0].contains("revoked"));
        let r = resolve_module(
            &event(EventType::OnderhandelingGeaccordeerd, Some(C)),
            "e",
            &d,
            None,
        );
        assert!(r.notes[0].contains("unknown"));
        // Events without an actor field ignore one (contract.administratief_vastgelegd has none).
        let r = resolve_module(
            &event(EventType::AdministratiefVastgelegd, Some(C)),
            "e",
            &d,
            Some(&other),
        );
        assert!(r.deliveries.iter().all(|x| !x.rules.contains(&Rule::Actor)));
    }

    #[test]
    fn revocation_notices_warn_only_when_the_last_signer_goes() {
        let revoked = DirectoryUser {
            gebruikersnummer: Gebruikersnummer::parse(B).unwrap(),
            naam: "B".into(),
            email: EmailAddress::parse("b@p.nl").unwrap(),
            status: UserStatus::Ingetrokken,
            versie: 2,
        };
        let cp = member(A, "cp@p.nl", &[Uitvragen], false, true, true);
        let other_signer = member(C, "c@p.nl", &[Contracteren], true, false, true);
        let r = revocation_notices(&revoked, true, &dir(vec![cp.clone()]));
        let kinds: Vec<_> = r.iter().map(|d| d.kind.as_str()).collect();
        assert_eq!(
            kinds,
            vec![
                "certificaat.ingetrokken",
                "beheer.laatste_tekenbevoegde_ingetrokken"
            ]
        );
        let r = revocation_notices(&revoked, true, &dir(vec![cp.clone(), other_signer]));
        assert_eq!(r.len(), 1, "another signer remains: confirmation only");
        let r = revocation_notices(&revoked, false, &dir(vec![cp]));
        assert_eq!(r.len(), 1, "was no signer: confirmation only");
        let r = revocation_notices(&revoked, true, &dir(vec![]));
        assert!(
            r.is_empty(),
            "no contact person: nothing to plan (the caller records it)"
        );
    }

    #[test]
    fn address_change_mails_go_to_new_and_old() {
        let after = DirectoryUser {
            gebruikersnummer: Gebruikersnummer::parse(B).unwrap(),
            naam: "B".into(),
            email: EmailAddress::parse("nieuw@p.nl").unwrap(),
            status: UserStatus::Actief,
            versie: 5,
        };
        let r = address_change_mails(&after, &EmailAddress::parse("Oud@P.nl").unwrap());
        let v: Vec<_> = r
            .iter()
            .map(|d| (d.kind.as_str(), d.address.as_str(), d.rule_label()))
            .collect();
        assert_eq!(
            v,
            vec![
                (
                    "gebruiker.emailadres_gewijzigd",
                    "nieuw@p.nl",
                    "USER".to_string()
                ),
                (
                    "gebruiker.emailadres_gewijzigd.oud_adres",
                    "oud@p.nl",
                    "ADDRESS".to_string()
                ),
            ]
        );
        assert!(
            r[1].users.is_empty(),
            "the notice to the old address serves nobody: it is not re-checked"
        );
        let same = address_change_mails(&after, &EmailAddress::parse("NIEUW@p.nl").unwrap());
        assert_eq!(same.len(), 1, "only a case change: one confirmation");
    }

    #[test]
    fn undeliverable_notices_name_the_user_and_go_to_contact_persons() {
        let user = DirectoryUser {
            gebruikersnummer: Gebruikersnummer::parse(B).unwrap(),
            naam: "P. Jansen".into(),
            email: EmailAddress::parse("b@p.nl").unwrap(),
            status: UserStatus::Actief,
            versie: 1,
        };
        let d = dir(vec![
            member(A, "cp@p.nl", &[], false, true, true),
            member(C, "x@p.nl", &[], false, false, true),
        ]);
        let r = undeliverable_notices(&d, &user, "e1", EventType::UitvraagBeoordeeld, "geweigerd");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].address.as_str(), "cp@p.nl");
        assert_eq!(r[0].about, B);
        let n = r[0].notice.as_ref().unwrap();
        assert_eq!(n["gebruiker_naam"], "P. Jansen");
        assert!(!n.to_string().contains("b@p.nl"), "never the address");
    }

    #[test]
    fn no_signer_and_no_recipient_notices() {
        // Contracteren but nobody may sign: module mail plus geen_tekenbevoegde to CP.
        let d = dir(vec![member(
            A,
            "a@p.nl",
            &[Contracteren],
            false,
            true,
            true,
        )]);
        let r = resolve_module(&event(EventType::VoorstelAangeboden, None), "e", &d, None);
        assert_eq!(
            summary(&r),
            vec![
                (
                    "beheer.geen_tekenbevoegde".into(),
                    "a@p.nl".into(),
                    "CP".into()
                ),
                (
                    "contract.voorstel_aangeboden".into(),
                    "a@p.nl".into(),
                    "U(contracteren)".into()
                ),
            ]
        );
        // The reminder without signers becomes the notice for U(contracteren) and CP.
        let r = resolve_module(
            &event(EventType::HerinneringAcceptatie, None),
            "e",
            &d,
            None,
        );
        assert_eq!(
            summary(&r),
            vec![(
                "beheer.geen_tekenbevoegde".into(),
                "a@p.nl".into(),
                "U(contracteren)+CP".into()
            )]
        );
        assert_eq!(r.routing, Routing::NoRecipientNotice);
        // Nobody with the right: geen_ontvanger to CP (also for the reminder).
        let d = dir(vec![member(A, "a@p.nl", &[Naleving], false, true, true)]);
        for t in [
            EventType::VoorstelAangeboden,
            EventType::HerinneringAcceptatie,
            EventType::UitvraagBeoordeeld,
        ] {
            let r = resolve_module(&event(t, None), "e", &d, None);
            assert_eq!(
                summary(&r),
                vec![("beheer.geen_ontvanger".into(), "a@p.nl".into(), "CP".into())],
                "{t:?}"
            );
        }
        // Nobody, not even an active contact person: unroutable.
        let d = dir(vec![member(A, "a@p.nl", &[Naleving], false, true, false)]);
        let r = resolve_module(&event(EventType::UitvraagBeoordeeld, None), "e", &d, None);
        assert!(r.deliveries.is_empty());
        assert_eq!(r.routing, Routing::Unroutable);
    }
}
