//! The suite's own model of the portal: a generated directory and the mails
//! the contract's recipient rules demand for each event. Written from the
//! contract (`docs/recipients.md`), not from the worker's code, so that a
//! wrong rule in the worker shows as lost or wrong-recipient mails.

use std::collections::BTreeSet;

/// A small deterministic generator (xorshift64*): the same seed gives the
/// same directory and event stream, so a failing run can be repeated.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

pub const RIGHTS: [&str; 4] = ["uitvragen", "contracteren", "onderhandelen", "naleving"];

/// The module events the streams are made of, with unambiguous rules.
pub const MODULE_TYPES: [&str; 4] = [
    "uitvraag.vragenlijst_klaargezet",
    "contract.voorstel_aangeboden",
    "onderhandeling.afgerond",
    "naleving.aanleververzoek",
];

#[derive(Clone, Debug)]
pub struct Link {
    pub agb: String,
    pub rights: Vec<&'static str>,
    pub tekenbevoegd: bool,
    pub contactpersoon: bool,
}

#[derive(Clone, Debug)]
pub struct User {
    pub nr: String,
    pub email: String,
    pub active: bool,
    pub links: Vec<Link>,
    pub versie: i64,
}

impl User {
    /// The `gebruiker.bijgewerkt` data object (also a directory import line).
    pub fn data(&self) -> serde_json::Value {
        serde_json::json!({
            "gebruikersnummer": self.nr,
            "naam": format!("Gebruiker {}", &self.nr[8..]),
            "email": self.email,
            "status": if self.active { "actief" } else { "ingetrokken" },
            "koppelingen": self.links.iter().map(|l| serde_json::json!({
                "agb_code": l.agb, "rechten": l.rights,
                "tekenbevoegd": l.tekenbevoegd, "contactpersoon": l.contactpersoon,
            })).collect::<Vec<_>>(),
            "versie": self.versie,
        })
    }
}

/// The directory: practices and their users.
#[derive(Clone, Debug)]
pub struct Directory {
    pub agbs: Vec<String>,
    pub users: Vec<User>,
}

impl Directory {
    /// `n` practices with 1-4 users each: random rights, some without a
    /// tekenbevoegde, some sharing a general address (in mixed case), some
    /// users linked to two practices, some practices with every user revoked.
    pub fn generate(rng: &mut Rng, n: usize) -> Self {
        let agbs: Vec<String> = (0..n).map(|i| format!("9{:07}", i + 1)).collect();
        let mut users = Vec::new();
        for agb in &agbs {
            let all_revoked = rng.chance(0.03);
            let count = 1 + rng.below(4) as usize;
            for k in 0..count {
                let nr = format!("{}{:06}", &agb[..8], k);
                let rights: Vec<&'static str> =
                    RIGHTS.iter().copied().filter(|_| rng.chance(0.7)).collect();
                let shared = k > 0 && rng.chance(0.15);
                let email = if shared {
                    format!("Praktijk@P{agb}.example")
                } else {
                    format!("u{nr}@p{agb}.example")
                };
                let mut links = vec![Link {
                    agb: agb.clone(),
                    tekenbevoegd: rights.contains(&"contracteren") && rng.chance(0.5),
                    contactpersoon: k == 0 || (k == 1 && rng.chance(0.3)),
                    rights,
                }];
                if rng.chance(0.05) {
                    let other = &agbs[rng.below(agbs.len() as u64) as usize];
                    if other != agb {
                        links.push(Link {
                            agb: other.clone(),
                            rights: vec!["uitvragen", "naleving"],
                            tekenbevoegd: false,
                            contactpersoon: false,
                        });
                    }
                }
                users.push(User {
                    nr: format!("{nr:0>14}"),
                    email,
                    active: !all_revoked && !rng.chance(0.05),
                    links,
                    versie: 1,
                });
            }
        }
        Self { agbs, users }
    }

    /// One practice with one user who has every right, for probe events.
    pub fn add_probe_practice(&mut self) -> String {
        let agb = "98000000".to_owned();
        self.agbs.push(agb.clone());
        self.users.push(User {
            nr: "98000000000001".into(),
            email: "probe@probe.example".into(),
            active: true,
            links: vec![Link {
                agb: agb.clone(),
                rights: RIGHTS.to_vec(),
                tekenbevoegd: true,
                contactpersoon: true,
            }],
            versie: 1,
        });
        agb
    }

    /// The bulk import text (one data object a line).
    pub fn jsonl(&self) -> String {
        self.users
            .iter()
            .map(|u| u.data().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn user_mut(&mut self, nr: &str) -> &mut User {
        self.users.iter_mut().find(|u| u.nr == nr).expect("user")
    }

    fn links_of<'a>(&'a self, agb: &'a str) -> impl Iterator<Item = (&'a User, &'a Link)> + 'a {
        self.users.iter().filter(|u| u.active).flat_map(move |u| {
            u.links
                .iter()
                .filter(move |l| l.agb == agb)
                .map(move |l| (u, l))
        })
    }

    /// U(r): addresses (lower case) of the active users of `agb` with right `r`.
    pub fn u(&self, agb: &str, right: &str) -> BTreeSet<String> {
        self.links_of(agb)
            .filter(|(_, l)| l.rights.contains(&right))
            .map(|(u, _)| u.email.to_lowercase())
            .collect()
    }

    /// T: U(contracteren) that are tekenbevoegd.
    pub fn t(&self, agb: &str) -> BTreeSet<String> {
        self.links_of(agb)
            .filter(|(_, l)| l.rights.contains(&"contracteren") && l.tekenbevoegd)
            .map(|(u, _)| u.email.to_lowercase())
            .collect()
    }

    /// CP: the active contact persons of `agb`.
    pub fn cp(&self, agb: &str) -> BTreeSet<String> {
        self.links_of(agb)
            .filter(|(_, l)| l.contactpersoon)
            .map(|(u, _)| u.email.to_lowercase())
            .collect()
    }
}

/// The rights whose holders get a module event's own mail.
pub fn rights_for(event_type: &str) -> &'static [&'static str] {
    match event_type {
        "uitvraag.vragenlijst_klaargezet" | "uitvraag.aanvulling_gevraagd" => &["uitvragen"],
        "naleving.aanleververzoek" => &["naleving"],
        "contract.voorstel_aangeboden" => &["contracteren"],
        "onderhandeling.afgerond" => &["onderhandelen", "contracteren"],
        other => panic!("no model for {other}"),
    }
}

/// The mails (kind, lower-case address) the contract demands for a module
/// event of `event_type` about `agb`, given the directory when it is accepted.
pub fn mails_for(dir: &Directory, event_type: &str, agb: &str) -> Vec<(String, String)> {
    let mut u = BTreeSet::new();
    for r in rights_for(event_type) {
        u.extend(dir.u(agb, r));
    }
    let cp = dir.cp(agb);
    let mut out = Vec::new();
    if u.is_empty() {
        // No recipient: the contact persons hear of it (none: unroutable).
        out.extend(
            cp.iter()
                .map(|a| ("beheer.geen_ontvanger".to_owned(), a.clone())),
        );
        return out;
    }
    out.extend(u.iter().map(|a| (event_type.to_owned(), a.clone())));
    if event_type == "contract.voorstel_aangeboden" && dir.t(agb).is_empty() {
        out.extend(
            cp.iter()
                .map(|a| ("beheer.geen_tekenbevoegde".to_owned(), a.clone())),
        );
    }
    out
}

/// A module event of `event_type` about `agb`, from the contract's example.
pub fn module_event(event_type: &str, agb: &str, n: usize) -> serde_json::Value {
    let mut e = crate::support::fresh(event_type);
    e["data"]["agb_code"] = agb.into();
    for field in ["vragenlijst_naam", "contract_naam", "onderwerp"] {
        if e["data"].get(field).is_some() {
            e["data"][field] = format!("Fault suite {n}").into();
        }
    }
    e
}
