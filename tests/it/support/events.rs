//! Test input: the contract's sample events and directory, and generated
//! users and practices.

/// The contract's example of `type` (copied into templates/samples/events).
pub fn sample(event_type: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(format!(
        "{}/templates/samples/events/{event_type}.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("sample event");
    serde_json::from_str(&text).unwrap()
}

/// The sample event with a fresh id.
pub fn fresh(event_type: &str) -> serde_json::Value {
    let mut v = sample(event_type);
    v["id"] = uuid::Uuid::new_v4().to_string().into();
    // Deadlines run from the event time: a fresh event happened now.
    v["time"] = chrono::Utc::now().to_rfc3339().into();
    v
}

/// The sample event of `event_type`, fresh, about `agb`.
pub fn fresh_for(event_type: &str, agb: &str) -> serde_json::Value {
    let mut e = fresh(event_type);
    e["data"]["agb_code"] = agb.into();
    e
}

/// A module event for `agb` that every user of [`many_users`] receives.
pub fn event_for(agb: &str) -> serde_json::Value {
    fresh_for("uitvraag.vragenlijst_klaargezet", agb)
}

/// The sample directory (JSON lines): practice `04123456` with five users.
pub fn sample_directory() -> String {
    std::fs::read_to_string(format!(
        "{}/templates/samples/directory.jsonl",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// A directory of `n` active users of `agb` with every right, each with its own address.
pub fn many_users(agb: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            serde_json::json!({
                "gebruikersnummer": format!("2{i:013}"),
                "naam": format!("Gebruiker {i}"),
                "email": format!("user{i}@praktijk{agb}.example"),
                "status": "actief",
                "koppelingen": [{"agb_code": agb, "rechten": ["uitvragen", "contracteren", "onderhandelen", "naleving"],
                                 "tekenbevoegd": i == 0, "contactpersoon": i == 0}],
                "versie": 1
            })
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One `gebruiker.bijgewerkt` data object: links are (agb, rights, tekenbevoegd, contactpersoon).
pub fn user(
    nr: &str,
    email: &str,
    active: bool,
    links: &[(&str, &[&str], bool, bool)],
    versie: i64,
) -> serde_json::Value {
    serde_json::json!({
        "gebruikersnummer": nr,
        "naam": format!("Gebruiker {}", &nr[10..]),
        "email": email,
        "status": if active { "actief" } else { "ingetrokken" },
        "koppelingen": links.iter().map(|(agb, rechten, teken, cp)| serde_json::json!({
            "agb_code": agb, "rechten": rechten, "tekenbevoegd": teken, "contactpersoon": cp
        })).collect::<Vec<_>>(),
        "versie": versie,
    })
}

/// What a user is at a practice besides its rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Member,
    Tekenbevoegd,
    Contactpersoon,
    /// Tekenbevoegd and contactpersoon.
    Both,
}

/// An active user (`versie` 1) with `rights` at one practice, as `role`.
pub fn active_user(
    nr: &str,
    email: &str,
    agb: &str,
    rights: &[&str],
    role: Role,
) -> serde_json::Value {
    let tekenbevoegd = matches!(role, Role::Tekenbevoegd | Role::Both);
    let contactpersoon = matches!(role, Role::Contactpersoon | Role::Both);
    user(
        nr,
        email,
        true,
        &[(agb, rights, tekenbevoegd, contactpersoon)],
        1,
    )
}

/// A `gebruiker.bijgewerkt` event carrying `data`.
pub fn user_event(data: serde_json::Value) -> serde_json::Value {
    let mut e = fresh("gebruiker.bijgewerkt");
    e["data"] = data;
    e
}
